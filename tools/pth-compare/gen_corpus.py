#!/usr/bin/env python3
"""Seeded generator of the bad-input corpus for the burn-store vs our-reader comparison.

Writes under corpus/:
  valid/      copied by hand (small_legacy, small_zip, small_zip_proto4, tiny_full_official,
              tiny_eg_checkpoint); not touched here
  trunc/      every proper prefix (0 .. len-1 bytes) of small_zip.pth and small_legacy.pth
  bitflip/    300 seeded single-bit flips of each valid file
  indel/      100 seeded byte insertions/deletions (1..16 bytes) of each valid file
  hostile/    handmade hostile pickles / containers (forbidden_global.pth copied by hand);
              a `gen_control_*` file is a *valid* file written by this generator's own
              writer, to show that the writer itself produces readable files
Nothing here needs torch: pickles are assembled from raw opcodes.
Run: python3 gen_corpus.py   (deterministic; SEED below)
"""

import os
import random
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

SEED = 20250101
ROOT = Path(__file__).resolve().parent / "corpus"
VALID = ["small_legacy.pth", "small_zip.pth", "small_zip_proto4.pth",
         "tiny_full_official.pth", "tiny_eg_checkpoint.pth"]


# ------------------------------------------------------------------ pickle emitter
class P:
    def __init__(self, proto=2):
        self.b = bytearray()
        if proto is not None:
            self.b += bytes([0x80, proto])

    def op(self, raw):
        self.b += raw
        return self

    def glob(self, mod, name):
        return self.op(b"c" + mod.encode() + b"\n" + name.encode() + b"\n")

    def s(self, text):
        e = text.encode()
        return self.op(b"X" + struct.pack("<I", len(e)) + e)

    def i(self, n):
        if 0 <= n < 256:
            return self.op(b"K" + bytes([n]))
        if -(2**31) <= n < 2**31:
            return self.op(b"J" + struct.pack("<i", n))
        nb = (n.bit_length() + 8) // 8
        return self.op(b"\x8a" + bytes([nb]) + n.to_bytes(nb, "little", signed=True))

    def mark(self):
        return self.op(b"(")

    def tuple(self):
        return self.op(b"t")

    def ints_tuple(self, xs):
        self.mark()
        for x in xs:
            self.i(x)
        return self.tuple()

    def stop(self):
        return self.op(b".")

    def bytes(self):
        return bytes(self.b)


def emit_tensor(p, key, numel, offset, shape, stride, cls="FloatStorage", legacy=False,
                rebuild=("torch._utils", "_rebuild_tensor_v2")):
    """Pushes one tensor: rebuild(persid(storage), offset, shape, stride, False, OrderedDict())."""
    p.glob(*rebuild)
    p.mark()
    p.mark().s("storage").glob("torch", cls).s(key).s("cpu").i(numel)
    if legacy:
        p.op(b"N")
    p.tuple().op(b"Q")
    p.i(offset).ints_tuple(shape).ints_tuple(stride)
    p.op(b"\x89")  # NEWFALSE
    p.glob("collections", "OrderedDict").op(b")R")
    p.tuple().op(b"R")


def state_dict_pickle(entries, legacy=False, extra=None):
    """entries: list of (name, key, numel, offset, shape, stride, cls). extra(p) may push
    more key/value pairs inside the SETITEMS mark."""
    p = P()
    p.glob("collections", "OrderedDict").op(b")R")
    p.mark()
    for name, key, numel, offset, shape, stride, cls in entries:
        p.s(name)
        emit_tensor(p, key, numel, offset, shape, stride, cls, legacy)
    if extra:
        extra(p)
    p.op(b"u").stop()  # SETITEMS
    return p.bytes()


def zip_file(path, top, pkl, storages, extra_records=()):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        def add(name, data):
            zi = zipfile.ZipInfo(f"{top}/{name}", date_time=(2020, 1, 1, 0, 0, 0))
            z.writestr(zi, data)
        add("data.pkl", pkl)
        add("byteorder", b"little")
        for k, data in storages.items():
            add(f"data/{k}", data)
        add("version", b"3\n")
        for name, data in extra_records:
            add(name, data)


def legacy_file(path, pkl, storages, counts=None):
    import pickle
    out = bytearray()
    out += pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
    out += pickle.dumps(1001, protocol=2)
    out += pickle.dumps({"protocol_version": 1001, "little_endian": True,
                         "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2)
    out += pkl
    out += pickle.dumps(list(storages.keys()), protocol=2)
    for k, data in storages.items():
        n = (counts or {}).get(k, len(data) // 4)
        out += struct.pack("<Q", n) + data
    path.write_bytes(bytes(out))


F4 = lambda *xs: struct.pack(f"<{len(xs)}f", *xs)


def hostile(d):
    h = {}
    six = F4(1, 2, 3, 4, 5, 6)

    # Controls: valid files from this writer (must read OK in both readers).
    zip_file(d / "gen_control_zip.pth", "gen_control_zip",
             state_dict_pickle([("w", "0", 6, 0, (2, 3), (3, 1), "FloatStorage")]), {"0": six})
    legacy_file(d / "gen_control_legacy.pth",
                state_dict_pickle([("w", "0", 6, 0, (2, 3), (3, 1), "FloatStorage")], legacy=True),
                {"0": six})

    def z(name, entries, storages, extra=None, records=()):
        zip_file(d / f"{name}.pth", name, state_dict_pickle(entries, extra=extra), storages,
                 records)

    def raw_zip(name, pkl, storages=None):
        zip_file(d / f"{name}.pth", name, pkl, storages or {})

    # --- stack / nesting bombs (inside a zip data.pkl and as a bare pickle file)
    N = 100_000
    bomb = P().op(b"]" * N).op(b"a" * (N - 1)).stop().bytes()
    raw_zip("stack_bomb_nested_list", bomb)
    (d / "stack_bomb_nested_list_bare.pth").write_bytes(bomb)
    raw_zip("stack_bomb_marks", P().op(b"(" * N).op(b"t" * N).stop().bytes())
    # dict nesting via EMPTY_DICT, key, EMPTY_DICT ..., SETITEM chain: {0:{0:{...}}}
    nd = P()
    for _ in range(N):
        nd.op(b"}K\x00")
    nd.op(b"}")
    nd.op(b"s" * N).stop()
    raw_zip("stack_bomb_dict_setitem", nd.bytes())
    # state dict whose value for 'x' is a 100k-deep nested list, next to a real tensor
    def deep_value(p):
        p.s("x").op(b"]" * N).op(b"a" * (N - 1))
    z("stack_bomb_in_state_dict", [("w", "0", 6, 0, (2, 3), (3, 1), "FloatStorage")],
      {"0": six}, extra=deep_value)
    # memo bomb: L0=[1]; Li=[L(i-1), L(i-1)] via BINGET, 40 levels (2^40 leaves if copied)
    mb2 = P().glob("collections", "OrderedDict").op(b")R").mark().s("bomb")
    mb2.op(b"]K\x01a" + b"q\x00" + b"0")
    for lvl in range(1, 41):
        mb2.op(b"](h" + bytes([lvl - 1]) + b"h" + bytes([lvl - 1]) + b"e" + b"q" + bytes([lvl]) + b"0")
    mb2.op(b"h" + bytes([40]))
    mb2.s("w")
    emit_tensor(mb2, "0", 6, 0, (2, 3), (3, 1))
    mb2.op(b"u").stop()
    raw_zip("memo_bomb_2pow40", mb2.bytes(), {"0": six})

    # the same bomb without POP (our reader has no POP): value = tuple(L0, ..., L40)
    mb3 = P().glob("collections", "OrderedDict").op(b")R").mark().s("bomb").mark()
    mb3.op(b"]K\x01a" + b"q\x00")
    for lvl in range(1, 41):
        mb3.op(b"](h" + bytes([lvl - 1]) + b"h" + bytes([lvl - 1]) + b"e" + b"q" + bytes([lvl]))
    mb3.tuple().s("w")
    emit_tensor(mb3, "0", 6, 0, (2, 3), (3, 1))
    mb3.op(b"u").stop()
    raw_zip("memo_bomb_2pow40_nopop", mb3.bytes(), {"0": six})

    # --- sizes
    z("storage_numel_2pow40", [("w", "0", 2**40, 0, (2**20,), (1,), "FloatStorage")], {"0": six})
    z("storage_numel_2pow40_full", [("w", "0", 2**40, 0, (2**40,), (1,), "FloatStorage")],
      {"0": six})
    z("storage_numel_2pow62", [("w", "0", 2**62, 0, (6,), (1,), "FloatStorage")], {"0": six})
    z("storage_numel_negative", [("w", "0", -6, 0, (6,), (1,), "FloatStorage")], {"0": six})
    z("shape_overflow_usize", [("w", "0", 6, 0, (2**32, 2**32, 16), (0, 0, 0), "FloatStorage")],
      {"0": six})
    z("shape_overflow_2pow63", [("w", "0", 6, 0, (2**63 - 1, 2), (1, 1), "FloatStorage")],
      {"0": six})
    z("shape_negative", [("w", "0", 6, 0, (-1, 6), (6, 1), "FloatStorage")], {"0": six})
    z("stride0_expand_4TB", [("w", "0", 1, 0, (2**20, 2**20), (0, 0), "FloatStorage")],
      {"0": F4(1)})
    z("stride0_expand_3_6GB", [("w", "0", 1, 0, (30000, 30000), (0, 0), "FloatStorage")],
      {"0": F4(1)})
    z("stride_negative", [("w", "0", 6, 5, (6,), (-1,), "FloatStorage")], {"0": six})
    z("stride_huge", [("w", "0", 6, 0, (2, 3), (2**40, 1), "FloatStorage")], {"0": six})
    z("stride_2pow63_overflow", [("w", "0", 6, 0, (3, 3), (2**62, 2**62), "FloatStorage")],
      {"0": six})
    z("offset_negative", [("w", "0", 6, -1, (6,), (1,), "FloatStorage")], {"0": six})
    z("offset_huge", [("w", "0", 6, 2**62, (1,), (1,), "FloatStorage")], {"0": six})
    z("offset_past_end", [("w", "0", 6, 5, (2,), (1,), "FloatStorage")], {"0": six})
    z("storage_record_short", [("w", "0", 600, 0, (600,), (1,), "FloatStorage")], {"0": six})
    z("storage_record_missing", [("w", "7", 6, 0, (6,), (1,), "FloatStorage")], {"0": six})
    z("storage_unknown_dtype", [("w", "0", 3, 0, (3,), (1,), "ComplexFloatStorage")],
      {"0": six})
    z("shape_ndim_mismatch", [("w", "0", 6, 0, (2, 3), (1,), "FloatStorage")], {"0": six})
    z("bool_byte_2", [("w", "0", 3, 0, (3,), (1,), "BoolStorage")], {"0": b"\x00\x01\x02"})

    # --- hostile globals / reduce
    def os_system(p):
        p.s("evil").glob("os", "system").mark().s("touch /tmp/sae-pth-compare-PWNED_os_system").tuple()
        p.op(b"R")
    z("reduce_os_system_in_dict", [("w", "0", 6, 0, (2, 3), (3, 1), "FloatStorage")],
      {"0": six}, extra=os_system)
    def posix_system(p):
        p.s("evil").glob("posix", "system").mark().s("touch /tmp/sae-pth-compare-PWNED_posix").tuple()
        p.op(b"R")
    z("reduce_posix_system_in_dict", [("w", "0", 6, 0, (2, 3), (3, 1), "FloatStorage")],
      {"0": six}, extra=posix_system)
    raw_zip("reduce_os_system_toplevel",
            P().glob("os", "system").mark().s("touch /tmp/sae-pth-compare-PWNED_top").tuple().op(b"R")
            .stop().bytes())
    def builtins_eval_stackglobal(p):
        p.s("evil").s("builtins").s("eval").op(b"\x93").mark().s("1+1").tuple().op(b"R")
    z("stack_global_eval_in_dict", [("w", "0", 6, 0, (2, 3), (3, 1), "FloatStorage")],
      {"0": six}, extra=builtins_eval_stackglobal)
    # tensor rebuilt by a non-whitelisted function (the storage is passed to os.system)
    p = P().glob("collections", "OrderedDict").op(b")R").mark().s("w")
    emit_tensor(p, "0", 6, 0, (2, 3), (3, 1), rebuild=("os", "system"))
    raw_zip("rebuild_via_os_system", p.op(b"u").stop().bytes(), {"0": six})
    # a BUILD on an arbitrary class (setstate-style gadget)
    def build_gadget(p):
        p.s("evil").glob("subprocess", "Popen").op(b")\x81")  # NEWOBJ
        p.op(b"}").s("args").s("id").op(b"s").op(b"b")     # BUILD
    z("newobj_build_subprocess", [("w", "0", 6, 0, (2, 3), (3, 1), "FloatStorage")],
      {"0": six}, extra=build_gadget)
    # INST / OBJ opcodes (protocol 0/1 style call of a global)
    def inst(p):
        p.s("evil").mark().s("touch /tmp/sae-pth-compare-PWNED_inst").op(b"ios\nsystem\n")
    z("inst_os_system_in_dict", [("w", "0", 6, 0, (2, 3), (3, 1), "FloatStorage")],
      {"0": six}, extra=inst)

    # --- memo
    def memo_missing(p):
        p.s("m").op(b"h\xc8")  # BINGET 200, never stored
    z("memo_get_missing", [("w", "0", 6, 0, (2, 3), (3, 1), "FloatStorage")], {"0": six},
      extra=memo_missing)
    def memo_missing_long(p):
        p.s("m").op(b"j" + struct.pack("<I", 0xFFFFFFFF))
    z("memo_long_get_missing", [("w", "0", 6, 0, (2, 3), (3, 1), "FloatStorage")], {"0": six},
      extra=memo_missing_long)
    def memo_put_huge(p):
        p.s("m").op(b"K\x01r" + struct.pack("<I", 0xFFFFFFF0))  # LONG_BINPUT 4G-16
    z("memo_long_put_huge_index", [("w", "0", 6, 0, (2, 3), (3, 1), "FloatStorage")],
      {"0": six}, extra=memo_put_huge)

    # --- pickle structure
    raw_zip("toplevel_list", P().op(b"]").stop().bytes())
    raw_zip("pickle_no_stop", P().glob("collections", "OrderedDict").op(b")R").bytes())
    raw_zip("stack_underflow", P().op(b"R").stop().bytes())
    raw_zip("unknown_opcode", P().op(b"\xff").stop().bytes())
    raw_zip("binunicode_len_huge", P().op(b"X" + struct.pack("<I", 0xFFFFFFFF) + b"abc").bytes())
    raw_zip("binbytes8_len_huge", P(4).op(b"\x8e" + struct.pack("<Q", 2**62) + b"abc").bytes())
    raw_zip("frame_len_huge", P(4).op(b"\x95" + struct.pack("<Q", 2**62) + b"}.").bytes())
    raw_zip("long4_len_huge", P().op(b"\x8b" + struct.pack("<i", 2**31 - 1) + b"\x01").bytes())
    raw_zip("invalid_utf8_key",
            P().op(b"}").op(b"X\x02\x00\x00\x00\xff\xfe").op(b"K\x01s").stop().bytes())
    zip_file(d / "non_string_key.pth", "non_string_key",
             state_dict_pickle([], extra=lambda p: (p.i(5), emit_tensor(p, "0", 6, 0, (6,), (1,)))),
             {"0": six})
    (d / "empty_0_bytes.pth").write_bytes(b"")
    (d / "one_byte_proto.pth").write_bytes(b"\x80")
    (d / "zip_magic_only.pth").write_bytes(b"PK\x03\x04")
    (d / "random_4k.pth").write_bytes(random.Random(SEED).randbytes(4096))

    # --- zip container tricks
    # (a) local + central header of data/0 declare a 4 GiB-1 uncompressed size (STORED, tiny data)
    def patch_sizes(src, dst, member_suffix, new_size, which=("local", "central")):
        b = bytearray(src.read_bytes())
        name = member_suffix.encode()
        i = 0
        while True:
            i = b.find(b"PK\x03\x04", i)
            if i < 0:
                break
            nlen = struct.unpack_from("<H", b, i + 26)[0]
            if b[i + 30:i + 30 + nlen].endswith(name) and "local" in which:
                struct.pack_into("<I", b, i + 18, new_size)  # compressed
                struct.pack_into("<I", b, i + 22, new_size)  # uncompressed
            i += 4
        i = 0
        while True:
            i = b.find(b"PK\x01\x02", i)
            if i < 0:
                break
            nlen = struct.unpack_from("<H", b, i + 28)[0]
            if b[i + 46:i + 46 + nlen].endswith(name) and "central" in which:
                struct.pack_into("<I", b, i + 20, new_size)
                struct.pack_into("<I", b, i + 24, new_size)
            i += 4
        dst.write_bytes(bytes(b))

    base = d / "gen_control_zip.pth"
    patch_sizes(base, d / "zip_storage_size_4GiB.pth", "data/0", 0xFFFFFFFE)
    patch_sizes(base, d / "zip_datapkl_size_4GiB.pth", "data.pkl", 0xFFFFFFFE)
    patch_sizes(base, d / "zip_datapkl_size_4GiB_central_only.pth", "data.pkl", 0xFFFFFFFE,
                which=("central",))
    # (b) zip64 extra field declaring a 2^60-byte data/0
    with zipfile.ZipFile(d / "zip64_huge_storage.pth", "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(zipfile.ZipInfo("zip64_huge_storage/data.pkl"),
                    state_dict_pickle([("w", "0", 6, 0, (2, 3), (3, 1), "FloatStorage")]))
        zi = zipfile.ZipInfo("zip64_huge_storage/data/0")
        zf.writestr(zi, six)
    b = bytearray((d / "zip64_huge_storage.pth").read_bytes())
    # rewrite data/0's sizes to 0xFFFFFFFF in central dir and append zip64 extra there
    # (done crudely: only the central directory entry is changed; offsets stay right)
    ci = b.find(b"PK\x01\x02", b.find(b"PK\x01\x02") + 4)
    nlen, elen, clen = struct.unpack_from("<HHH", b, ci + 28)
    struct.pack_into("<I", b, ci + 20, 0xFFFFFFFF)
    struct.pack_into("<I", b, ci + 24, 0xFFFFFFFF)
    extra = struct.pack("<HHQQ", 1, 16, 2**60, 2**60)
    insert_at = ci + 46 + nlen + elen
    b[insert_at:insert_at] = extra
    struct.pack_into("<H", b, ci + 30, elen + len(extra))
    eocd = b.rfind(b"PK\x05\x06")
    cd_size = struct.unpack_from("<I", b, eocd + 12)[0]
    struct.pack_into("<I", b, eocd + 12, cd_size + len(extra))
    (d / "zip64_huge_storage.pth").write_bytes(bytes(b))
    # (c) deflate bomb: data.pkl DEFLATED, 200 MB of zeros after a valid pickle
    pkl = state_dict_pickle([("w", "0", 6, 0, (2, 3), (3, 1), "FloatStorage")])
    with zipfile.ZipFile(d / "zip_deflate_bomb_datapkl.pth", "w") as zf:
        zf.writestr(zipfile.ZipInfo("bomb/data.pkl"), pkl + b"\x00" * 200_000_000,
                    compress_type=zipfile.ZIP_DEFLATED)
        zf.writestr(zipfile.ZipInfo("bomb/data/0"), six)
    # (d) deflate bomb in a storage record: declared numel 1.5e9 (6 GB) deflated zeros
    big = 50_000_000  # 200 MB storage, deflated to ~200 KB
    with zipfile.ZipFile(d / "zip_deflate_storage_200MB.pth", "w") as zf:
        zf.writestr(zipfile.ZipInfo("bomb/data.pkl"),
                    state_dict_pickle([("w", "0", big, 0, (big,), (1,), "FloatStorage")]))
        zf.writestr(zipfile.ZipInfo("bomb/data/0"), b"\x00" * (big * 4),
                    compress_type=zipfile.ZIP_DEFLATED)
    # (e) two data.pkl records; byteorder big; records with path traversal names
    zip_file(d / "zip_two_datapkl.pth", "a",
             state_dict_pickle([("w", "0", 6, 0, (2, 3), (3, 1), "FloatStorage")]), {"0": six},
             extra_records=[("../b/data.pkl", P().op(b"]").stop().bytes())])
    zip_file(d / "zip_byteorder_big.pth", "bo",
             state_dict_pickle([("w", "0", 6, 0, (2, 3), (3, 1), "FloatStorage")]), {"0": six})
    b = (d / "zip_byteorder_big.pth").read_bytes().replace(b"little", b"big\x00\x00\x00")
    (d / "zip_byteorder_big.pth").write_bytes(b)  # CRC now wrong too; both should refuse
    # (f) CRC mismatch of a storage used only through a partial view
    zip_file(d / "zip_crc_bad_partial_view.pth", "crc",
             state_dict_pickle([("w", "0", 6, 0, (2,), (1,), "FloatStorage")]),
             {"0": six})
    b = bytearray((d / "zip_crc_bad_partial_view.pth").read_bytes())
    j = b.find(six)
    b[j + 20] ^= 0x40  # element 5, outside the 2-element view
    (d / "zip_crc_bad_partial_view.pth").write_bytes(bytes(b))
    zip_file(d / "zip_crc_bad_in_view.pth", "crc2",
             state_dict_pickle([("w", "0", 6, 0, (2,), (1,), "FloatStorage")]),
             {"0": six})
    b = bytearray((d / "zip_crc_bad_in_view.pth").read_bytes())
    j = b.find(six)
    b[j] ^= 0x40  # element 0, inside the view: the value read differs
    (d / "zip_crc_bad_in_view.pth").write_bytes(bytes(b))

    # --- legacy container tricks
    lp = state_dict_pickle([("w", "0", 6, 0, (2, 3), (3, 1), "FloatStorage")], legacy=True)
    legacy_file(d / "legacy_count_2pow40.pth", lp, {"0": six}, counts={"0": 2**40})
    legacy_file(d / "legacy_count_2pow63.pth", lp, {"0": six}, counts={"0": 2**63 + 5})
    lp_big = state_dict_pickle([("w", "0", 2**40, 0, (6,), (1,), "FloatStorage")], legacy=True)
    legacy_file(d / "legacy_numel_2pow40.pth", lp_big, {"0": six})
    legacy_file(d / "legacy_keylist_missing_key.pth", lp, {"9": six})
    # nested dict of state_dicts, the layout the brief describes ({'E': {...}, 'G': {...}})
    p = P().op(b"}").mark()
    for net in ("E", "G"):
        p.s(net).glob("collections", "OrderedDict").op(b")R").mark()
        p.s("w")
        emit_tensor(p, net, 6, 0, (2, 3), (3, 1))
        p.op(b"u")
    p.op(b"u").stop()
    raw_zip("nested_dict_E_G", p.bytes(), {"E": six, "G": F4(6, 5, 4, 3, 2, 1)})
    return h


def main():
    rng = random.Random(SEED)
    for sub in ("trunc", "bitflip", "indel"):
        shutil.rmtree(ROOT / sub, ignore_errors=True)
        (ROOT / sub).mkdir(parents=True)
    hd = ROOT / "hostile"
    for f in hd.glob("*"):
        if f.name != "forbidden_global.pth":
            f.unlink()
    for name in ("small_zip.pth", "small_legacy.pth"):
        b = (ROOT / "valid" / name).read_bytes()
        for n in range(len(b)):
            (ROOT / "trunc" / f"{name[:-4]}.len{n:05d}.pth").write_bytes(b[:n])
    for name in VALID:
        b = (ROOT / "valid" / name).read_bytes()
        stem = name[:-4]
        for k in range(300):
            pos = rng.randrange(len(b) * 8)
            m = bytearray(b)
            m[pos // 8] ^= 1 << (pos % 8)
            (ROOT / "bitflip" / f"{stem}.flip{k:03d}.bit{pos}.pth").write_bytes(bytes(m))
        for k in range(100):
            pos = rng.randrange(len(b))
            n = rng.randint(1, 16)
            if k % 2 == 0:
                m = b[:pos] + rng.randbytes(n) + b[pos:]
                tag = f"ins{n}at{pos}"
            else:
                m = b[:pos] + b[pos + n:]
                tag = f"del{n}at{pos}"
            (ROOT / "indel" / f"{stem}.indel{k:03d}.{tag}.pth").write_bytes(m)
    hostile(hd)
    for sub in ("valid", "trunc", "bitflip", "indel", "hostile"):
        print(sub, len(list((ROOT / sub).glob("*.pth"))))


if __name__ == "__main__":
    main()
