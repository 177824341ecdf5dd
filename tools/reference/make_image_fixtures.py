"""Write the tiny images that test the Rust image I/O module (`sae-model/src/image_io.rs`).

Output: <repo>/crates/sae-model/tests/fixtures/images/ (about 14 KB in all)

  rgb.png, gray.png, gray_alpha.png, rgba.png, palette.png
        5x4 8-bit images whose pixels follow `pattern()` below, so the Rust test can recompute
        them. For every one the script asserts that PIL's `Image.open(p).convert('RGB')` gives
        the expected RGB values (alpha dropped, gray replicated), i.e. the same thing
        `load_rgb` must return.
  rgb16.png, rgba16.png, gray_alpha16.png
        3x2 16-bit PNGs written byte by byte (PIL cannot save 16-bit colour). The 16-bit
        samples are listed in `SAMPLES16`; PIL's `convert('RGB')` keeps the high byte
        (`v >> 8`) of each, which the script asserts and the Rust test checks.
  gray16.png
        the same 3x2 samples (first channel) as a 16-bit grayscale PNG. PIL opens it as
        mode "I;16" and its `convert('RGB')` *clips* every value above 255 to 255 (the script
        asserts that, to document it); the Rust loader deliberately keeps the high byte
        instead, like the colour 16-bit case, rather than return an almost white image.
  photo.jpg, photo.jpg.pil.png
        a 16x16 JPEG (quality 90, PIL's default 4:2:0 subsampling) and PIL/libjpeg's decode of
        it stored losslessly. The Rust decoder (zune-jpeg) is compared to it with a tolerance.
  bicubic_src.png
        a 37x29 RGB image: gradients, hard edges and seeded noise, to stress resampling.
  bicubic_<case>.png
        PIL's output of the official test transform (data/base_dataset.py: the preprocess resize,
        then __make_power_2(base=16), both Image.BICUBIC) for each case in `CASES`.
  mask.png
        an 8x6 grayscale mask (`mask_pattern()`), for `load_mask`.

Run: /work/venv-ref/bin/python tools/reference/make_image_fixtures.py   (needs numpy, Pillow 11)
Everything is deterministic.
"""

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

OUT = Path(__file__).resolve().parents[2] / "crates" / "sae-model" / "tests" / "fixtures" / "images"

# 16-bit samples (R, G, B) of the 3x2 16-bit fixtures, row-major; chosen around byte boundaries.
SAMPLES16 = [
    [(0, 255, 256), (383, 384, 65535), (32767, 32768, 32895)],
    [(32896, 65279, 65280), (100, 200, 300), (65534, 1, 128)],
]
ALPHA16 = 1234

# (file suffix, preprocess) pairs; the Rust test maps them to `Preprocess` variants.
CASES = [
    ("none", ("none", 0)),  # 37x29 -> make_power_2 -> 32x32 (downscale both sides)
    ("shortside40", ("scale_shortside", 40)),  # -> 51x40 (upscale) -> 48x32
    ("shortside20", ("scale_shortside", 20)),  # -> 26x20 (downscale) -> 32x16
    ("width50", ("scale_width", 50)),  # -> 50x39 -> 48x32
    ("resize16", ("resize", 16)),  # -> 16x16, a 2.3x/1.8x antialiased downscale only
    ("resize24", ("resize", 24)),  # -> 24x24 -> 32x32 (round(1.5) = 2)
]


def pattern(x, y, c):
    """The 8-bit value of channel c at (x, y) in the 5x4 fixtures (the Rust test repeats it)."""
    return (x * 50 + y * 13 + c * 80) % 256


def alpha_pattern(x, y):
    return (x * y * 40 + 7) % 256


def mask_pattern(x, y):
    return (x * 36 + y * 51) % 256


def png_bytes(width, height, bit_depth, color_type, rows):
    """A minimal PNG (filter 0 on every row), for the 16-bit colour cases PIL cannot save."""

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + r for r in rows)
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def check_pil_rgb(path, expected):
    got = np.asarray(Image.open(path).convert("RGB"))
    assert got.shape == expected.shape and (got == expected).all(), (path, got, expected)


def small_8bit():
    h, w = 4, 5
    rgb = np.array([[[pattern(x, y, c) for c in range(3)] for x in range(w)] for y in range(h)], np.uint8)
    gray = rgb[..., 0]
    alpha = np.array([[alpha_pattern(x, y) for x in range(w)] for y in range(h)], np.uint8)

    Image.fromarray(rgb).save(OUT / "rgb.png", optimize=True)
    check_pil_rgb(OUT / "rgb.png", rgb)

    Image.fromarray(gray).save(OUT / "gray.png", optimize=True)
    check_pil_rgb(OUT / "gray.png", np.repeat(gray[..., None], 3, axis=2))

    Image.fromarray(np.stack([gray, alpha], axis=2)).save(OUT / "gray_alpha.png", optimize=True)
    check_pil_rgb(OUT / "gray_alpha.png", np.repeat(gray[..., None], 3, axis=2))

    Image.fromarray(np.concatenate([rgb, alpha[..., None]], axis=2)).save(OUT / "rgba.png", optimize=True)
    check_pil_rgb(OUT / "rgba.png", rgb)

    # A palette image holding exactly the 20 colours, so quantisation loses nothing.
    pal = Image.fromarray(rgb).quantize(colors=20, method=Image.Quantize.MAXCOVERAGE, dither=Image.Dither.NONE)
    pal.save(OUT / "palette.png", optimize=True)
    check_pil_rgb(OUT / "palette.png", rgb)


def small_16bit():
    a = np.array(SAMPLES16, dtype=">u2")
    h, w, _ = a.shape
    high = (a.astype(np.int64) >> 8).astype(np.uint8)

    (OUT / "rgb16.png").write_bytes(png_bytes(w, h, 16, 2, [r.tobytes() for r in a]))
    check_pil_rgb(OUT / "rgb16.png", high)

    rgba = np.concatenate([a, np.full((h, w, 1), ALPHA16, dtype=">u2")], axis=2).astype(">u2")
    (OUT / "rgba16.png").write_bytes(png_bytes(w, h, 16, 6, [r.tobytes() for r in rgba]))
    check_pil_rgb(OUT / "rgba16.png", high)

    la = rgba[..., [0, 3]].astype(">u2")
    (OUT / "gray_alpha16.png").write_bytes(png_bytes(w, h, 16, 4, [r.tobytes() for r in la]))
    check_pil_rgb(OUT / "gray_alpha16.png", np.repeat(high[..., :1], 3, axis=2))

    g = a[..., 0].astype(">u2")
    (OUT / "gray16.png").write_bytes(png_bytes(w, h, 16, 0, [r.tobytes() for r in g]))
    im = Image.open(OUT / "gray16.png")
    assert im.mode == "I;16", im.mode
    clipped = np.minimum(g.astype(np.int64), 255).astype(np.uint8)
    check_pil_rgb(OUT / "gray16.png", np.repeat(clipped[..., None], 3, axis=2))


def photo_jpeg():
    yy, xx = np.mgrid[0:16, 0:16]
    rgb = np.stack([xx * 16, yy * 16, 255 - (xx + yy) * 8], axis=2)
    rgb[4:12, 4:12] = [200, 40, 90]  # a hard-edged block exercises chroma upsampling
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=90)
    (OUT / "photo.jpg").write_bytes(buf.getvalue())
    Image.open(OUT / "photo.jpg").convert("RGB").save(OUT / "photo.jpg.pil.png", optimize=True)


def make_power_2(img, base=16):
    # data/base_dataset.py::__make_power_2, verbatim logic.
    ow, oh = img.size
    h = int(round(oh / base) * base)
    w = int(round(ow / base) * base)
    if h == oh and w == ow:
        return img
    return img.resize((w, h), Image.BICUBIC)


def official_test_transform(img, mode, load_size):
    # data/base_dataset.py::get_transform in the test phase (no crop, no flip), PIL steps only.
    if mode == "resize":
        img = img.resize((load_size, load_size), Image.BICUBIC)  # transforms.Resize([s, s])
    elif mode == "scale_width":
        ow, oh = img.size
        # The official skip test (`ow == load_size and oh >= crop_size`) cannot change the
        # result: with ow == load_size the new height int(load_size * oh / ow) is oh.
        if ow != load_size:
            img = img.resize((load_size, int(load_size * oh / ow)), Image.BICUBIC)
    elif mode == "scale_shortside":
        ow, oh = img.size
        scale = load_size / min(ow, oh)
        img = img.resize((round(ow * scale), round(oh * scale)), Image.BICUBIC)
    return make_power_2(img)


def bicubic():
    rng = np.random.RandomState(0)
    h, w = 29, 37
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 / (w - 1), yy * 255 / (h - 1), 128 + 100 * np.sin(xx / 3.0 + yy / 5.0)], axis=2)
    img[8:20, 10:24] = [250, 10, 30]  # hard edges: overshoot, clipping at 0/255
    img[:, 30:] = rng.randint(0, 256, size=(h, w - 30, 3))  # noise: worst case for rounding
    img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    src = Image.fromarray(img)
    src.save(OUT / "bicubic_src.png", optimize=True)
    for name, (mode, size) in CASES:
        official_test_transform(src, mode, size).save(OUT / f"bicubic_{name}.png", optimize=True)


def mask():
    m = np.array([[mask_pattern(x, y) for x in range(8)] for y in range(6)], np.uint8)
    Image.fromarray(m).save(OUT / "mask.png", optimize=True)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    small_8bit()
    small_16bit()
    photo_jpeg()
    bicubic()
    mask()
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(list(OUT.iterdir()))} files, {total} bytes, to {OUT}")


if __name__ == "__main__":
    main()
