#!/usr/bin/env python3
"""Writes a labelled folder of JPEGs for benchmarks: ROOT/class_K/NNNNNNN.jpg, IMAGES in all
over 10 classes, each a smooth random colour field (an upscaled 8x6 noise grid, tinted by its
class) with a few rectangles, at sizes between 128x96 and 176x132, quality 90; seeded, so the
same command writes the same folder. Needs numpy and Pillow (the PyTorch venv has both).

Usage: make-jpeg-folder.py ROOT IMAGES
"""
import os
import sys

import numpy as np
from PIL import Image, ImageDraw


def main():
    root, n = sys.argv[1], int(sys.argv[2])
    rng = np.random.default_rng(0)
    classes = 10
    tints = rng.uniform(0.4, 1.0, (classes, 3))
    for k in range(classes):
        os.makedirs(os.path.join(root, f"class_{k}"), exist_ok=True)
    for i in range(n):
        k = i % classes
        w = int(rng.integers(128, 177))
        h = w * 3 // 4
        grid = (rng.uniform(0, 255, (6, 8, 3)) * tints[k]).astype(np.uint8)
        img = Image.fromarray(grid).resize((w, h), Image.BICUBIC)
        d = ImageDraw.Draw(img)
        for _ in range(3):
            x0, y0 = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
            x1, y1 = x0 + int(rng.integers(4, w // 3)), y0 + int(rng.integers(4, h // 3))
            d.rectangle([x0, y0, x1, y1], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        img.save(os.path.join(root, f"class_{k}", f"{i:07d}.jpg"), quality=90)
        if (i + 1) % 10000 == 0:
            print(f"{i + 1} images", file=sys.stderr)


if __name__ == "__main__":
    main()
