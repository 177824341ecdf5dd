"""Writes the small procedural demo images in assets/images/ (stdlib only, deterministic).

Two scenes with the same kind of layout (a horizon, a disc, a block) but different colour
schemes, so that a trained model's swap visibly keeps one's layout and takes the other's colours.
    python3 tools/make_demo_images.py
"""
import math
import struct
import zlib
from pathlib import Path

SIZE = 128
OUT = Path(__file__).resolve().parent.parent / "assets" / "images"


def png(path, rows):
    raw = b"".join(b"\x00" + bytes(v for px in row for v in px) for row in rows)

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", len(rows[0]), len(rows), 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def scene(horizon, disc, block, sky, ground, sun, wall, stripes):
    rows = []
    for y in range(SIZE):
        row = []
        for x in range(SIZE):
            if (x - disc[0]) ** 2 + (y - disc[1]) ** 2 < disc[2] ** 2:
                c = sun
            elif block[0] <= x < block[2] and block[1] <= y < block[3]:
                c = wall if (x // stripes) % 2 == 0 else tuple(int(v * 0.8) for v in wall)
            elif y < horizon + 4 * math.sin(x / 9):
                t = y / horizon
                c = tuple(int(a * (1 - t) + b * t) for a, b in zip(sky, ground))
            else:
                c = tuple(max(0, v - (y - horizon) // 3) for v in ground)
            row.append(c)
        rows.append(row)
    return rows


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    png(OUT / "scene_a.png", scene(70, (30, 30, 14), (70, 40, 110, 100), (90, 150, 230), (60, 140, 60), (250, 230, 120), (180, 80, 60), 6))
    png(OUT / "scene_b.png", scene(50, (95, 25, 10), (20, 60, 60, 115), (240, 140, 80), (150, 110, 70), (255, 250, 240), (70, 70, 140), 4))
    png(OUT / "scene_c.png", scene(85, (64, 40, 18), (80, 20, 120, 90), (30, 30, 70), (40, 60, 90), (230, 230, 255), (200, 200, 210), 8))


if __name__ == "__main__":
    main()
