#!/usr/bin/env python3
"""Runs every corpus file through our reader and burn-store (two entry points), one child
process per file and reader, under `ulimit -v 4000000` and `timeout 10`, and classifies.

  python3 run_all.py [--only SUBSTR] [--readers ours,store,reader]
Writes results.jsonl (one record per file x reader) and summary.md (tables).
"""

import argparse
import json
import os
import resource
import signal
import struct
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
BINS = {
    "ours": [str(HERE / "target/release/oursrd")],
    "store": [str(HERE / "target/release/burnrd"), "store"],
    "storeraw": [str(HERE / "target/release/burnrd"), "storeraw"],
    "reader": [str(HERE / "target/release/burnrd"), "reader"],
}
CLASSES = ["valid", "trunc", "bitflip", "indel", "hostile"]
MEM_KB = 4_000_000
BLOWUP_KB = 1_000_000  # peak RSS above this counts as a memory blowup even if it finished


def limit():
    resource.setrlimit(resource.RLIMIT_AS, (MEM_KB * 1024, MEM_KB * 1024))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_one(reader, path):
    """Returns (returncode, stdout, stderr, seconds, peak RSS in KiB of the reader process)."""
    import tempfile
    cmd = ["timeout", "10"] + BINS[reader] + [str(path)]
    t0 = time.monotonic()
    with tempfile.TemporaryFile() as fo, tempfile.TemporaryFile() as fe:
        p = subprocess.Popen(cmd, stdout=fo, stderr=fe, preexec_fn=limit)
        # wait4 on `timeout`: its rusage covers the reader it reaped
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read(), fe.read()
    dt = time.monotonic() - t0
    return p.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), dt, ru.ru_maxrss


def parse(rc, out, err):
    lines = out.splitlines()
    hook = [l.split("\t", 1)[1] for l in lines if l.startswith("HOOKPANIC\t")]
    rec = {"rc": rc, "hookpanics": hook}
    ok = [l for l in lines if l.startswith("OK ")]
    if rc == 0 and ok:
        rec["status"] = "ok"
        rec["tensors"] = {}
        for l in lines:
            if l.startswith("T\t"):
                _, k, d, s, h, n = l.split("\t")
                rec["tensors"][k] = [d, s, h, int(n)]
        return rec
    if rc == 2:
        e = [l for l in lines if l.startswith("ERR\t")]
        rec["status"] = "error"
        rec["msg"] = e[0][4:] if e else out[-300:]
        return rec
    if rc == 3:
        e = [l for l in lines if l.startswith("PANIC\t")]
        rec["status"] = "panic"
        rec["msg"] = e[0][6:] if e else out[-300:]
        return rec
    if rc == 124:
        rec["status"] = "timeout"
        return rec
    tail = err.strip()[-300:]
    if "memory allocation of" in err:
        rec["status"] = "oom-abort"
    elif "overflowed its stack" in err:
        rec["status"] = "stack-overflow"
    elif rc < 0 or rc >= 128:
        rec["status"] = "crash"
    else:
        rec["status"] = "other"
    rec["msg"] = f"rc={rc} stderr: {tail}"
    return rec


def expected_tensors():
    d = json.load(open(CORPUS / "small_expected.json"))
    fmt = {"float32": "I", "float64": "Q", "float16": "H", "bfloat16": "H", "int64": "q",
           "int32": "i", "uint8": "B", "bool": "B"}
    out = {}
    for t in d["tensors"]:
        vals = t.get("bits", t["values"])
        vals = [int(v) for v in vals]
        b = struct.pack("<%d%s" % (len(vals), fmt[t["dtype"]]), *vals)
        h = 0xCBF29CE484222325
        for x in b:
            h ^= x
            h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
        out[t["key"]] = [t["dtype"], ",".join(map(str, t["shape"])), "%016x" % h, len(b)]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="")
    ap.add_argument("--readers", default="ours,store,storeraw,reader")
    ap.add_argument("--out", default=str(HERE / "results.jsonl"))
    a = ap.parse_args()
    readers = a.readers.split(",")
    files = []
    for c in CLASSES:
        for f in sorted((CORPUS / c).glob("*.pth")):
            if a.only in str(f):
                files.append((c, f))
    # before any run: no PWNED marker may exist
    for m in HERE.glob("PWNED*"):
        m.unlink()
    t0 = time.monotonic()
    with open(a.out, "w") as fo:
        for i, (c, f) in enumerate(files):
            for r in readers:
                rc, out, err, dt, rss = run_one(r, f)
                rec = parse(rc, out, err)
                rec.update({"class": c, "file": f.name, "reader": r, "secs": round(dt, 3),
                            "maxrss_kb": rss})
                fo.write(json.dumps(rec) + "\n")
            if i % 500 == 0:
                print(f"{i}/{len(files)} {time.monotonic() - t0:.0f}s", flush=True)
    print("done", time.monotonic() - t0)
    print("PWNED markers:", [m.name for m in HERE.glob("PWNED*")])


if __name__ == "__main__":
    main()
