#!/usr/bin/env python3
"""The start-up check of ``--trd-reduced-copy`` on many files: its time and peak memory, per checking process.

Writes ``--files`` zero-byte stand-ins for training images (``--classes`` folders) and as many for their copy,
with an index and manifest as ``timm-trd-reduced-copy`` writes them (the check reads sizes, times and the index,
and digests a sample of 100 files: zero-byte files cost it nothing there, which is what a real copy's 100 small
reads add), runs :func:`timm_trd.data.reduced_copy.check.check_copy` once for the time and once under tracemalloc
for the peak of Python allocations, prints both with the figures scaled linearly to 1.28 M images, and removes the
files. With ``--trd-reduced-copy`` one process per node runs this check (the others wait for its verdict).

    python experiments/copy_check_scale.py --files 200000 --dir /tmp/copy_check_scale
"""

import argparse
import hashlib
import os
import resource
import shutil
import time
import tracemalloc
from types import SimpleNamespace

from timm_trd.data.reduced_copy import index as ci
from timm_trd.data.reduced_copy.check import check_copy

IMAGENET = 1_281_167


def build(base: str, files: int, classes: int):
    train, copy = os.path.join(base, 'train'), os.path.join(base, 'copy')
    samples, entries = [], []
    empty = ci.digest(b'')
    for c in range(classes):
        for folder in (train, copy):
            os.makedirs(os.path.join(folder, f'n{c:08d}'), exist_ok=True)
    for i in range(files):
        rel = os.path.join(f'n{i % classes:08d}', f'{i:08d}.JPEG')
        src, dst = os.path.join(train, rel), os.path.join(copy, rel)
        open(src, 'wb').close()
        open(dst, 'wb').close()
        s, d = os.stat(src), os.stat(dst)
        samples.append((src, i % classes))
        entries.append(ci.Entry(rel, s.st_size, s.st_mtime_ns, empty, d.st_size, d.st_mtime_ns, empty))
    settings = dict(version=ci.VERSION, scale=2.0, quality=90, input_img_mode='RGB')
    digest = ci.write_index(os.path.join(copy, ci.INDEX), settings, entries)
    ci.write_manifest(copy, dict(settings, source=os.path.abspath(train), index_sha256=digest, images=files))
    return SimpleNamespace(root=train, samples=sorted(samples)), copy


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--files', type=int, default=200_000)
    parser.add_argument('--classes', type=int, default=1000)
    parser.add_argument('--dir', default='/tmp/copy_check_scale')
    parser.add_argument('--keep', action='store_true', help='keep the files')
    args = parser.parse_args(argv)
    if os.path.exists(args.dir):
        raise SystemExit(f'{args.dir} exists; remove it or pick another --dir')
    try:
        start = time.perf_counter()
        reader, copy = build(args.dir, args.files, args.classes)
        print(f'{args.files:,} stand-ins and their copy written in {time.perf_counter() - start:.0f} s')
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        check_copy(reader, copy)
        seconds = time.perf_counter() - start
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        tracemalloc.start()
        check_copy(reader, copy)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        scale = IMAGENET / args.files
        print(f'check of {args.files:,} files: {seconds:.1f} s, peak Python allocations {peak / 2**20:.0f} MiB '
              f'(max RSS grew {(rss - rss0) / 1024:.0f} MiB); 2 stat per image and one walk of the copy')
        print(f'scaled to {IMAGENET:,} images: ~{seconds * scale:.0f} s and ~{peak * scale / 2**20:.0f} MiB per '
              f'checking process, one per node (cold metadata caches on a shared filesystem are slower)')
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == '__main__':
    main()
