#!/usr/bin/env python3
"""Independent reference for the *valid* zip-format files: decodes data.pkl with a restricted
Unpickler (find_class returns inert stubs, nothing is imported or called) and gathers each
tensor through offset/shape/stride. Emits the same canonical summary as the Rust binaries
(key -> [dtype, shape, fnv1a64 of LE bytes, nbytes]). Used only for files that hold no
hostile content (valid/*.pth)."""

import collections
import io
import pickle
import struct
import sys
import zipfile

DT = {"FloatStorage": ("float32", "<f", 4), "DoubleStorage": ("float64", "<d", 8),
      "HalfStorage": ("float16", "<e", 2), "BFloat16Storage": ("bfloat16", "<H", 2),
      "LongStorage": ("int64", "<q", 8), "IntStorage": ("int32", "<i", 4),
      "ByteStorage": ("uint8", "<B", 1), "BoolStorage": ("bool", "<B", 1)}


def fnv(b):
    h = 0xCBF29CE484222325
    for x in b:
        h ^= x
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


class Stub:
    def __init__(self, m, n):
        self.m, self.n = m, n

    def __call__(self, *a):
        if self.n in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            st, off, size, stride = a[0], a[1], a[2], a[3]
            return ("T", st, off, tuple(size), tuple(stride))
        if self.n == "_rebuild_parameter":
            return a[0]
        return ("OPAQUE", self.m, self.n)


def read_zip(path):
    z = zipfile.ZipFile(path)
    pk = [n for n in z.namelist() if n.endswith("/data.pkl")][0]
    top = pk[: -len("data.pkl")]

    class U(pickle.Unpickler):
        def find_class(self, m, n):
            if (m, n) == ("collections", "OrderedDict"):
                return collections.OrderedDict
            return Stub(m, n)

        def persistent_load(self, pid):
            _, cls, key, _, numel = pid[:5]
            return (cls.n, z.read(top + "data/" + key), numel)

    d = U(io.BytesIO(z.read(pk))).load()
    out = {}
    for k, v in d.items():
        if not (isinstance(v, tuple) and v and v[0] == "T"):
            continue
        (cls, raw, numel), off, size, stride = v[1:]
        name, fmt, es = DT[cls]
        n = 1
        for s in size:
            n *= s
        idx = []
        def rec(dim, base):
            if dim == len(size):
                idx.append(base)
                return
            for j in range(size[dim]):
                rec(dim + 1, base + j * stride[dim])
        if n:
            rec(0, off)
        b = b"".join(raw[i * es:(i + 1) * es] for i in idx)
        if cls == "BoolStorage":
            b = bytes(1 if x else 0 for x in b)
        out[k] = [name, ",".join(map(str, size)), fnv(b), len(b)]
    return out


if __name__ == "__main__":
    for k, v in sorted(read_zip(sys.argv[1]).items()):
        print(k, *v)
