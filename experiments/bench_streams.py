#!/usr/bin/env python3
"""What reduced batches cost to load from webdataset shards, through timm's train.py: the data-time ratio.

    python experiments/bench_streams.py --train-script /path/to/train.py --photos /path/to/jpegs --work /tmp/bench

Writes shards (``webdataset.TarWriter``, with timm's ``_info.json``) from the JPEGs in ``--photos`` (e.g. the
ImageNet samples of EliSchwartz/imagenet-sample-images; never inside the repository), or, without ``--photos``,
from generated photo-like JPEGs (smooth colour fields with fine grain, 500x375, quality 90: the size of an ImageNet
photo, not its content), then trains one epoch of ``--trd-prob 0.5`` on the loader path with ``--workers 0`` and
``--no-prefetcher``, so that the data wait train.py sees per batch is that batch's loading itself (timm's
``PrefetchLoader`` loads batch i + 1 before it hands over batch i, so with it each batch's wait would be its
successor's loading), and reads timm-trd's epoch line: data wait per
batch at the full and at the reduced size. Runs ``--trd-fast-decode`` off and on (fast decode works in the shard
reader: :mod:`timm_trd.data.shard_decode`), alternating (off, on, off, on, ... ``--rounds`` times) so that both see
the same machine load; prints one row per run, then the mean of each arm.
"""

import argparse
import glob
import io
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image


def photo_like(rng, w=500, h=375) -> Image.Image:
    coarse = rng.integers(0, 256, size=(6, 8, 3)).astype(np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.float32)
    field += rng.normal(0, 12, size=(h, w, 3))
    return Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))


def write_shards(root, photos, count, per_shard, seed=0):
    import webdataset as wds
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for s in range(0, count, per_shard):
        name = f'bench-train-{s // per_shard:04d}.tar'
        with wds.TarWriter(os.path.join(root, name)) as writer:
            for i in range(s, min(count, s + per_shard)):
                if photos:
                    data = open(photos[i % len(photos)], 'rb').read()
                else:
                    buf = io.BytesIO()
                    photo_like(rng).save(buf, 'JPEG', quality=90)
                    data = buf.getvalue()
                writer.write({'__key__': f'{i:06d}', 'jpg': data, 'cls': str(i % 4).encode()})
        names.append(name)
    info = {'name': 'bench', 'splits': {'train': {'name': 'train', 'num_samples': count, 'filenames': names,
                                                  'shard_lengths': [per_shard] * len(names)}}}
    with open(os.path.join(root, '_info.json'), 'w') as f:
        json.dump(info, f)


def run(args, fast: bool, round_: int = 0):
    cmd = [sys.executable, '-m', 'timm_trd', '--train-script', args.train_script, '--dataset', 'wds/bench',
           '--data-dir', args.shards, '--val-split', '', '--model', 'resnet10t', '--num-classes', '4',
           '--img-size', str(args.size), '--trd-size', str(args.size // 2), '--trd-prob', '0.5', '--trd-mode', 'loader',
           '--trd-fast-decode' if fast else '--no-trd-fast-decode', '--epochs', '1', '-b', str(args.batch),
           '--workers', '0', '--no-prefetcher', '--device', 'cpu', '--lr', '0.01', '--log-interval', '1000',
           '--output', os.path.join(args.work, 'out'), '--experiment', f'fast{int(fast)}-round{round_}']
    env = {**os.environ, 'OMP_NUM_THREADS': str(args.threads), 'PYTHONWARNINGS': 'ignore'}
    log = subprocess.run(cmd, capture_output=True, text=True, env=env).stderr
    found = re.search(r'data wait per batch ([\d.]+) ms full, ([\d.]+) ms reduced', log)
    if not found:
        raise SystemExit(log[-3000:])
    return float(found.group(1)), float(found.group(2)), ' '.join(cmd)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--train-script', default=os.environ.get('TIMM_TRAIN_SCRIPT'), required=False)
    parser.add_argument('--photos', default=None, help='a folder of JPEGs (default: generated photo-like ones)')
    parser.add_argument('--work', default='/tmp/trd-bench-streams')
    parser.add_argument('--images', type=int, default=512)
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument('--batch', type=int, default=16)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--rounds', type=int, default=2, help='alternations of off and on (default 2: A B A B)')
    args = parser.parse_args()
    photos = sorted(glob.glob(os.path.join(args.photos, '**', '*.JPEG'), recursive=True)
                    + glob.glob(os.path.join(args.photos, '**', '*.jpg'), recursive=True)) if args.photos else []
    args.shards = os.path.join(args.work, 'shards')
    shutil.rmtree(os.path.join(args.work, 'out'), ignore_errors=True)  # this benchmark's own runs, from before
    if not os.path.exists(os.path.join(args.shards, '_info.json')):
        write_shards(args.shards, photos, args.images, per_shard=args.images // 4)
    print(f'{args.images} {"photos" if photos else "generated photo-like 500x375 JPEGs"} in 4 shards, '
          f'{args.size} -> {args.size // 2}, batch {args.batch}, --workers 0, --no-prefetcher '
          '(the data wait is the batch\'s loading)')
    rows = {False: [], True: []}
    for r in range(args.rounds):
        for fast in (False, True):
            full, reduced, cmd = run(args, fast, r)
            rows[fast].append((full, reduced))
            print(f'round {r + 1}, fast decode {"on " if fast else "off"}: data wait per batch {full:.1f} ms full, '
                  f'{reduced:.1f} ms reduced, ratio {reduced / full:.3f}', flush=True)
    for fast in (False, True):
        full = sum(f for f, _ in rows[fast]) / len(rows[fast])
        reduced = sum(r for _, r in rows[fast]) / len(rows[fast])
        print(f'mean, fast decode {"on " if fast else "off"}: {full:.1f} ms full, {reduced:.1f} ms reduced, '
              f'ratio {reduced / full:.3f}')
    off = sum(r for _, r in rows[False]) / len(rows[False])
    on = sum(r for _, r in rows[True]) / len(rows[True])
    print(f'reduced batch, fast decode on / off: {on / off:.3f}')
    print(f'command (last run): {cmd}')

if __name__ == '__main__':
    main()
