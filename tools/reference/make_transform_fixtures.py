"""Write the tiny images that test the Rust training transform (`sae-data/src/transform.rs`).

Output: <repo>/crates/sae-data/tests/fixtures/transforms/ (about 25 KB in all)

  src.png
        a 41x29 RGB image: gradients, a sine, a hard-edged block and seeded noise, to stress
        resampling (41 and 29 are odd and coprime, so no case is an integer scale).
  <case>.png
        PIL's output of the official *training* transform (data/base_dataset.py::get_transform
        with isTrain=True) for each case in `CASES`, before ToTensor/Normalize: the preprocess
        resize, the crop, __make_power_2(base=16) and the horizontal flip, all Image.BICUBIC.
        The random choices are fixed per case (crop offsets, flip), so the Rust test replays
        them with `TrainTransform::apply_with`.
  cases.json
        the cases: name, preprocess, load_size, crop_size, crop_x, crop_y, flip, and the
        output width and height.

The torchvision steps are written with the PIL calls they make (torchvision is not needed):
`transforms.Resize([s, s], BICUBIC)` is `img.resize((s, s), BICUBIC)`; `RandomCrop(c)` with
its drawn offsets (top i, left j) is `F.crop(img, i, j, c, c)` = `img.crop((j, i, j + c, i + c))`;
`RandomHorizontalFlip` when it fires is `img.transpose(FLIP_LEFT_RIGHT)`.

Run: /work/venv-ref/bin/python tools/reference/make_transform_fixtures.py   (needs numpy, Pillow 11)
Everything is deterministic.
"""

import json
from pathlib import Path

import numpy as np
from PIL import Image

OUT = Path(__file__).resolve().parents[2] / "crates" / "sae-data" / "tests" / "fixtures" / "transforms"

# (name, preprocess, load_size, crop_size, crop_x, crop_y, flip). Sizes are for the 41x29 source.
CASES = [
    # 40x40 -> crop 32 at (7, 2): a pure downscale, then a multiple of 16 already.
    ("resize_and_crop", "resize_and_crop", 40, 32, 7, 2, False),
    # 32x32 -> crop 24 -> make_power_2 24 -> 32 (round(1.5) = 2): a second, upscaling resize.
    ("resize_and_crop_24", "resize_and_crop", 32, 24, 5, 3, True),
    # short side 29 -> 32: 45x32 (upscale), crop 32 at the far right edge.
    ("scale_shortside_and_crop", "scale_shortside_and_crop", 32, 32, 13, 0, False),
    # 42x30 -> crop 20 at (3, 9) -> make_power_2 20 -> 16.
    ("scale_shortside_and_crop_20", "scale_shortside_and_crop", 30, 20, 3, 9, True),
    # 48x int(48*29/41) = 48x33 -> crop 32 at (16, 1).
    ("scale_width_and_crop", "scale_width_and_crop", 48, 32, 16, 1, True),
    # 34x24 -> centre square 24 at (5, 0) -> make_power_2 -> 32x32.
    ("scale_shortside_and_centercrop", "scale_shortside_and_centercrop", 24, 0, 0, 0, True),
    # 20x20 -> make_power_2 -> 16x16.
    ("resize", "resize", 20, 0, 0, 0, False),
    # 40x28 -> make_power_2 -> 32x32 (round(2.5) = 2, round(1.75) = 2).
    ("scale_width", "scale_width", 40, 0, 0, 0, True),
    # 28x20 -> make_power_2 -> 32x16.
    ("scale_shortside", "scale_shortside", 20, 0, 0, 0, True),
    # no resize: crop 16 at (20, 7) straight from the source.
    ("crop", "crop", 0, 16, 20, 7, False),
    # centre square 29 at (6, 0) -> make_power_2 -> 32x32.
    ("centercrop", "centercrop", 0, 0, 0, 0, False),
    # make_power_2 only: 41x29 -> 48x32.
    ("none", "none", 0, 0, 0, 0, True),
]


def make_power_2(img, base=16):
    # data/base_dataset.py::__make_power_2, verbatim logic.
    ow, oh = img.size
    h = int(round(oh / base) * base)
    w = int(round(ow / base) * base)
    if h == oh and w == ow:
        return img
    return img.resize((w, h), Image.BICUBIC)


def official_train_transform(img, preprocess, load_size, crop_size, crop_x, crop_y, flip):
    """get_transform(opt) with isTrain=True and no_flip=False, the random draws given."""
    if "resize" in preprocess:
        img = img.resize((load_size, load_size), Image.BICUBIC)
    elif "scale_width" in preprocess:
        ow, oh = img.size
        if not (ow == load_size and oh >= crop_size):
            img = img.resize((load_size, int(load_size * oh / ow)), Image.BICUBIC)
    elif "scale_shortside" in preprocess:
        ow, oh = img.size
        scale = load_size / min(ow, oh)
        img = img.resize((round(ow * scale), round(oh * scale)), Image.BICUBIC)

    if "centercrop" in preprocess:
        ow, oh = img.size
        s = min(ow, oh)
        img = img.crop(((ow - s) // 2, (oh - s) // 2, (ow + s) // 2, (oh + s) // 2))
    elif "crop" in preprocess:
        w, h = img.size
        # RandomCrop draws i in [0, h - c] and j in [0, w - c]; these are the fixed draws.
        assert 0 <= crop_x <= w - crop_size and 0 <= crop_y <= h - crop_size, (preprocess, img.size)
        img = img.crop((crop_x, crop_y, crop_x + crop_size, crop_y + crop_size))

    img = make_power_2(img)
    if flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return img


def source():
    rng = np.random.RandomState(1)
    h, w = 29, 41
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 / (w - 1), 255 - yy * 255 / (h - 1), 128 + 110 * np.sin(xx / 2.5 - yy / 4.0)], axis=2)
    img[6:18, 9:22] = [245, 20, 40]  # hard edges: overshoot, clipping at 0/255
    img[:, 33:] = rng.randint(0, 256, size=(h, w - 33, 3))  # noise: worst case for rounding
    img[22:, :8] = rng.randint(0, 256, size=(h - 22, 8, 3))
    return Image.fromarray(np.clip(np.round(img), 0, 255).astype(np.uint8))


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    src = source()
    src.save(OUT / "src.png", optimize=True)
    listed = []
    for name, preprocess, load_size, crop_size, crop_x, crop_y, flip in CASES:
        out = official_train_transform(src, preprocess, load_size, crop_size, crop_x, crop_y, flip)
        out.save(OUT / f"{name}.png", optimize=True)
        listed.append(
            {
                "name": name,
                "preprocess": preprocess,
                "load_size": load_size,
                "crop_size": crop_size,
                "crop_x": crop_x,
                "crop_y": crop_y,
                "flip": flip,
                "width": out.size[0],
                "height": out.size[1],
            }
        )
    (OUT / "cases.json").write_text(json.dumps({"source": "src.png", "cases": listed}, indent=1) + "\n")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(list(OUT.iterdir()))} files, {total} bytes, to {OUT}")


if __name__ == "__main__":
    main()
