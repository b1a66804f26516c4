"""A small generated image folder to try TRD without a dataset, and for the tests.

    timm-trd-toy-data DIR [--size 64] [--train-per-class 64] [--val-per-class 16]

Writes ``DIR/train/<class>/*.png`` and ``DIR/val/<class>/*.png`` (timm's folder layout, read with
``--data-dir DIR``). Each class is a shape (circle, square, triangle, cross) at a random place, scale and
colour, over a random striped or noisy texture: the label follows the shape, not the texture, which
is the cue TRD trains a network to use.
"""

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ('circle', 'square', 'triangle', 'cross')


def _texture(rng: np.random.Generator, size: int) -> Image.Image:
    base = rng.integers(0, 256, size=3)
    if rng.random() < 0.5:  # stripes at a random angle and period
        angle, period = rng.uniform(0, math.pi), rng.uniform(3, 9)
        yy, xx = np.mgrid[0:size, 0:size]
        wave = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period)
        pixels = base[None, None, :] + 50 * wave[..., None]
    else:  # coloured noise
        pixels = base[None, None, :] + rng.normal(0, 40, size=(size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def draw_sample(shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One image of ``shape`` on a random texture, ``size x size`` pixels."""
    image = _texture(rng, size)
    draw = ImageDraw.Draw(image)
    radius = rng.uniform(0.18, 0.34) * size
    cx, cy = rng.uniform(radius, size - radius, size=2)
    colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
    if shape == 'circle':
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour)
    elif shape == 'square':
        draw.regular_polygon((cx, cy, radius), 4, rotation=float(rng.uniform(0, 90)), fill=colour)
    elif shape == 'triangle':
        draw.regular_polygon((cx, cy, radius), 3, rotation=float(rng.uniform(0, 120)), fill=colour)
    elif shape == 'cross':
        w = radius / 3
        draw.rectangle([cx - radius, cy - w, cx + radius, cy + w], fill=colour)
        draw.rectangle([cx - w, cy - radius, cx + w, cy + radius], fill=colour)
    else:
        raise ValueError(f'unknown shape {shape!r}; one of {CLASSES}')
    return image


def make_image_folder(root, size: int = 64, train_per_class: int = 64, val_per_class: int = 16,
                      classes=CLASSES, seed: int = 0) -> Path:
    """Write the folder and return its path. The same arguments always give the same images."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in (('train', train_per_class), ('val', val_per_class)):
        for shape in classes:
            folder = root / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                draw_sample(shape, size, rng).save(folder / f'{shape}_{i:05d}.png')
    return root


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='timm-trd-toy-data', description='Write a small image folder (shapes on textures) for trying TRD.')
    parser.add_argument('root', help='folder to create; it gets train/ and val/')
    parser.add_argument('--size', type=int, default=64, help='image side in pixels (default: 64)')
    parser.add_argument('--train-per-class', type=int, default=64, help='training images per class (default: 64)')
    parser.add_argument('--val-per-class', type=int, default=16, help='validation images per class (default: 16)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the images (default: 0)')
    args = parser.parse_args(argv)
    if args.size < 8 or args.train_per_class < 1 or args.val_per_class < 0:
        print('timm-trd-toy-data: error: need --size >= 8, --train-per-class >= 1, --val-per-class >= 0',
              file=sys.stderr)
        sys.exit(2)
    root = make_image_folder(args.root, args.size, args.train_per_class, args.val_per_class, seed=args.seed)
    total = len(CLASSES) * (args.train_per_class + args.val_per_class)
    print(f'wrote {total} images of {args.size}x{args.size} in {len(CLASSES)} classes to {root}/train and {root}/val')


if __name__ == '__main__':
    main()
