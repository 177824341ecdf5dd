"""Write the small `torch.save` checkpoints that test the Rust `.pth` reader (`sae-model/src/pth.rs`).

Output: <repo>/crates/sae-pth/tests/fixtures/pth/
  small_zip.pth          the dict below, zip format (torch >= 1.6 default), pickle protocol 2
  small_zip_proto4.pth   the same dict, zip format, pickle protocol 4 (FRAME, MEMOIZE,
                         SHORT_BINUNICODE, STACK_GLOBAL: what a `pickle_protocol=4` save writes)
  small_legacy.pth       the same dict, `_use_new_zipfile_serialization=False` (legacy format)
  forbidden_global.pth   a zip-format file whose data.pkl calls `builtins.eval`; the pickle is
                         assembled byte by byte here and never unpickled
  small_expected.json    every tensor key of the dict, in order, with shape, dtype, the flattened
                         values (row-major, as `tensor.flatten()` gives them) and their exact bit
                         patterns (`bits`: the IEEE bits of float values as unsigned integers, the
                         integer values themselves otherwise), plus the keys that are not tensors

The dict is a real module `state_dict()` (so it carries the `_metadata` attribute that the
pickle sets with BUILD) extended with entries that exercise every layout the reader handles:
non-contiguous views, views sharing one storage at different offsets, a stride-0 expanded
view, 0-d and empty tensors, a Parameter, every storage dtype, and a non-tensor value.

Run: /work/venv-ref/bin/python tools/reference/make_pth_fixtures.py
Everything is seeded; only `small_legacy.pth` changes from run to run (its storage keys are
memory addresses), and it still matches `small_expected.json`.
"""

import io
import json
import pickle
import struct
import zipfile
from pathlib import Path

import torch

OUT_DIR = Path(__file__).resolve().parents[2] / "crates" / "sae-pth" / "tests" / "fixtures" / "pth"


def build_dict():
    torch.manual_seed(20240607)
    # A real state_dict, so that the OrderedDict has `_metadata` (pickled with BUILD).
    module = torch.nn.Sequential(torch.nn.Linear(3, 2))
    d = module.state_dict()  # keys '0.weight' [2,3] float32, '0.bias' [2] float32
    d["w5d"] = torch.randn(1, 2, 3, 1, 1)
    d["count"] = torch.tensor([7], dtype=torch.int64)
    # float16: normal, negative, smallest normal, largest finite, a subnormal, zero, -0.
    d["half"] = torch.tensor([1.5, -2.0, 6.103515625e-05, 65504.0, 5.960464477539063e-08, 0.0, -0.0],
                             dtype=torch.float16)
    # float64 values that float32 cannot hold exactly.
    d["dbl"] = torch.tensor([0.1, -1.0 / 3.0, 1e300], dtype=torch.float64).reshape(3, 1)
    # Non-contiguous: a transposed, strided slice (offset 5, strides (2, 5)) of a 4x5 storage.
    d["view_t"] = torch.arange(20, dtype=torch.float32).reshape(4, 5)[1:3, ::2].t()
    # Two entries sharing one storage, at different offsets.
    base = torch.randn(10)
    d["shared_a"] = base[1:4]
    d["shared_b"] = base[5:9].view(2, 2)
    # Stride-0 view: 3 storage elements materialise as 6.
    d["expanded"] = torch.tensor([1.0, 2.0, 3.0]).expand(2, 3)
    d["scalar"] = torch.tensor(-4.25)
    d["empty"] = torch.zeros(0, 3)
    d["param"] = torch.nn.Parameter(torch.tensor([0.5, 0.25]))
    d["bf16"] = torch.tensor([1.0, -3.5, 1e30], dtype=torch.bfloat16)
    d["i32"] = torch.tensor([[-1, 2], [2147483647, -2147483648]], dtype=torch.int32)
    d["u8"] = torch.tensor([0, 1, 255], dtype=torch.uint8)
    d["flags"] = torch.tensor([True, False, True])
    d["big_i64"] = torch.tensor([-(2**62), 2**62 + 1], dtype=torch.int64)
    # Not a tensor: the reader skips it (old training loops stored counters like this).
    d["iter"] = 5
    return d


DTYPES = {
    torch.float32: ("float32", "<u4", "f"),
    torch.float64: ("float64", "<u8", "d"),
    torch.float16: ("float16", "<u2", "e"),
    torch.bfloat16: ("bfloat16", "<u2", None),
    torch.int64: ("int64", None, None),
    torch.int32: ("int32", None, None),
    torch.uint8: ("uint8", None, None),
    torch.bool: ("bool", None, None),
}


def expected(d):
    tensors, skipped = [], []
    for key, t in d.items():
        if not isinstance(t, torch.Tensor):
            skipped.append(key)
            continue
        t = t.detach()
        name, _, _ = DTYPES[t.dtype]
        flat = t.contiguous().flatten()
        if t.dtype in (torch.float32, torch.float64, torch.float16):
            values = flat.double().tolist()
            view = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16}[t.dtype]
            width = {torch.float32: 32, torch.float64: 64, torch.float16: 16}[t.dtype]
            bits = [b & ((1 << width) - 1) for b in flat.view(view).tolist()]
        elif t.dtype == torch.bfloat16:
            values = flat.float().double().tolist()
            bits = [b & 0xFFFF for b in flat.view(torch.int16).tolist()]
        elif t.dtype == torch.bool:
            values = [bool(v) for v in flat.tolist()]
            bits = [int(v) for v in values]
        else:
            values = flat.tolist()
            bits = values
        tensors.append({"key": key, "shape": list(t.shape), "dtype": name, "values": values, "bits": bits})
    return {"tensors": tensors, "skipped": skipped}


def forbidden_pickle():
    """`builtins.eval('1+1')` as a protocol-2 pickle. Written by hand; never loaded."""
    p = io.BytesIO()
    p.write(b"\x80\x02")  # PROTO 2
    p.write(b"cbuiltins\neval\n")  # GLOBAL 'builtins eval'
    s = "__import__('os').system('echo pwned')".encode()
    p.write(b"X" + struct.pack("<I", len(s)) + s)  # BINUNICODE
    p.write(b"\x85")  # TUPLE1
    p.write(b"R")  # REDUCE
    p.write(b".")  # STOP
    return p.getvalue()


def write_forbidden(path):
    records = [
        ("forbidden_global/data.pkl", forbidden_pickle()),
        ("forbidden_global/byteorder", b"little"),
        ("forbidden_global/version", b"3\n"),
    ]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        for name, data in records:
            # A fixed timestamp keeps the file byte-identical across runs.
            z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)


def main():
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    d = build_dict()
    torch.save(d, OUT_DIR / "small_zip.pth")
    torch.save(d, OUT_DIR / "small_zip_proto4.pth", pickle_protocol=4)
    torch.save(d, OUT_DIR / "small_legacy.pth", _use_new_zipfile_serialization=False)
    write_forbidden(OUT_DIR / "forbidden_global.pth")

    # Check the files round-trip through torch before writing the expectations.
    for name in ("small_zip.pth", "small_zip_proto4.pth", "small_legacy.pth"):
        # torch's own weights_only unpickler rejects FRAME (protocol 4); the file is ours.
        back = torch.load(OUT_DIR / name, map_location="cpu", weights_only="proto4" not in name)
        assert list(back.keys()) == list(d.keys()), name
        for k, v in d.items():
            if isinstance(v, torch.Tensor):
                assert back[k].dtype == v.dtype and torch.equal(back[k], v.detach()), (name, k)
    # torch's own safe loader must refuse it too (it never runs the global).
    try:
        torch.load(OUT_DIR / "forbidden_global.pth", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError):
        pass
    else:
        raise SystemExit("forbidden_global.pth loaded under weights_only=True")

    with open(OUT_DIR / "small_expected.json", "w") as f:
        json.dump(expected(d), f, indent=1)
        f.write("\n")
    for p in sorted(OUT_DIR.iterdir()):
        print(f"{p.stat().st_size:8d}  {p.name}")


if __name__ == "__main__":
    main()
