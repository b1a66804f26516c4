"""A reduced-resolution copy of an image folder, for the loader path's reduced batches.

    timm-trd-reduced-copy SRC DST [--scale 2] [--quality 90] [--workers N]

Writes every image of ``SRC`` (timm's image folder layout, e.g. ``/data/imagenet/train``) to the same relative
path under ``DST``, ``scale`` times smaller on each side (Lanczos), in its own format (JPEG at ``--quality``).
Resumable (files already written are kept; each is written under a temporary name and renamed), parallel, with
a progress bar. A manifest ``DST/trd_reduced_copy.json`` is written last: until it exists, the copy is
incomplete. Train with ``--trd-reduced-copy DST``: reduced batches read the copy (the same crop, in the copy's
pixels, see :mod:`timm_trd.decode`), full batches read the original. :func:`check_copy` refuses a copy whose
files do not match the training folder.
"""

import argparse
import hashlib
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import List, Optional, Sequence, Tuple

from PIL import Image

MANIFEST = 'trd_reduced_copy.json'


def image_files(root: str) -> List[str]:
    """The image files under ``root`` as timm's folder reader finds them, relative to ``root``, sorted."""
    from timm.data.readers.img_extensions import get_img_extensions
    types = get_img_extensions(as_set=True)
    found = []
    for folder, _, files in os.walk(root, followlinks=True):
        for name in files:
            if os.path.splitext(name)[1].lower() in types:
                found.append(os.path.relpath(os.path.join(folder, name), root))
    return sorted(found)


def tree_digest(relpaths: Sequence[str]) -> str:
    return hashlib.sha1('\n'.join(sorted(relpaths)).encode()).hexdigest()


def reduce_image(src: str, dst: str, scale: float, quality: int) -> int:
    """Write ``src`` ``scale`` times smaller to ``dst`` (same format); returns the bytes written."""
    with Image.open(src) as img:
        fmt = img.format or 'JPEG'
        size = (max(1, round(img.size[0] / scale)), max(1, round(img.size[1] / scale)))
        if img.mode not in ('RGB', 'L', 'RGBA', 'LA', 'CMYK'):
            img = img.convert('RGBA' if 'transparency' in img.info else 'RGB')
        small = img.resize(size, Image.Resampling.LANCZOS)
    options = {'quality': quality} if fmt == 'JPEG' else {}
    tmp = f'{dst}.tmp{os.getpid()}'
    small.save(tmp, format=fmt, **options)
    os.replace(tmp, dst)
    return os.path.getsize(dst)


def _job(item):
    src, dst, scale, quality = item
    try:
        return reduce_image(src, dst, scale, quality), None
    except (OSError, ValueError) as e:
        return 0, f'{src}: {e}'


def make_copy(src: str, dst: str, scale: float = 2.0, quality: int = 90, workers: Optional[int] = None,
              progress: bool = True) -> dict:
    """Write the reduced copy of ``src`` to ``dst`` (see the module docstring); returns its manifest."""
    if scale <= 1:
        raise ValueError(f'--scale must be > 1, got {scale}')
    if not 1 <= quality <= 100:
        raise ValueError(f'--quality must lie in [1, 100], got {quality}')
    start = time.time()
    relpaths = image_files(src)
    if not relpaths:
        raise ValueError(f'{src} holds no images')
    manifest_path = os.path.join(dst, MANIFEST)
    if os.path.exists(manifest_path):
        os.remove(manifest_path)  # incomplete again until this run finishes
    todo = []
    for rel in relpaths:
        out = os.path.join(dst, rel)
        if os.path.exists(out) and os.path.getsize(out) > 0 and os.path.getmtime(out) >= os.path.getmtime(
                os.path.join(src, rel)):
            continue  # written by an earlier run
        os.makedirs(os.path.dirname(out), exist_ok=True)
        todo.append((os.path.join(src, rel), out, scale, quality))
    bar = _progress(len(relpaths), len(relpaths) - len(todo), progress)
    errors = []
    with ProcessPoolExecutor(workers or os.cpu_count()) as pool:
        for _, error in pool.map(_job, todo, chunksize=16):
            if error:
                errors.append(error)
            bar.update(1)
    bar.close()
    if errors:
        raise OSError(f'{len(errors)} images could not be copied, e.g. {errors[0]}; rerun to resume')
    src_bytes = sum(os.path.getsize(os.path.join(src, r)) for r in relpaths)
    dst_bytes = sum(os.path.getsize(os.path.join(dst, r)) for r in relpaths)
    manifest = dict(source=os.path.abspath(src), scale=scale, quality=quality, files=len(relpaths),
                    digest=tree_digest(relpaths), source_bytes=src_bytes, copy_bytes=dst_bytes,
                    seconds_this_run=round(time.time() - start, 1), written_this_run=len(todo))
    with open(manifest_path, 'w') as f:
        json.dump(manifest, f, indent=1)
    return manifest


def _progress(total: int, done: int, enabled: bool):
    try:
        from tqdm import tqdm
        return tqdm(total=total, initial=done, unit='img', disable=not enabled, desc='reduced copy')
    except ImportError:
        class _Quiet:
            def update(self, n):
                pass

            def close(self):
                pass
        return _Quiet()


def check_copy(reader, copy_dir: str) -> Tuple[str, float]:
    """The copy of timm's folder ``reader``'s root (``copy_dir`` or a folder in it), and the copy's scale.

    ``copy_dir`` is the copy of the reader's folder, or of the folder above it (the ``--data-dir`` that holds
    ``train/``). Raises :class:`~timm_trd.config.TRDConfigError` unless the copy is complete and holds exactly
    the reader's images."""
    from .config import TRDConfigError
    root = getattr(reader, 'root', None)
    samples = getattr(reader, 'samples', None)
    if root is None or samples is None:
        raise TRDConfigError(f'--trd-reduced-copy needs an image folder dataset, not a {type(reader).__name__}; '
                             f'drop --trd-reduced-copy')
    for candidate in (copy_dir, os.path.join(copy_dir, os.path.basename(os.path.normpath(root)))):
        if os.path.isfile(os.path.join(candidate, MANIFEST)):
            copy_dir = candidate
            break
    else:
        raise TRDConfigError(f'--trd-reduced-copy {copy_dir} is not a finished reduced copy (no {MANIFEST}); '
                             f'run timm-trd-reduced-copy {root} {copy_dir} (it resumes)')
    with open(os.path.join(copy_dir, MANIFEST)) as f:
        manifest = json.load(f)
    relpaths = [os.path.relpath(path, root) for path, _ in samples]
    copied = set(image_files(copy_dir))
    missing = [r for r in relpaths if r not in copied]
    extra = copied.difference(relpaths)
    if missing or extra or manifest.get('digest') != tree_digest(relpaths):
        what = (f'{len(missing)} training images missing there (e.g. {missing[0]})' if missing else
                f'{len(extra)} images not in the training folder (e.g. {sorted(extra)[0]})' if extra else
                'its manifest lists other files')
        raise TRDConfigError(f'--trd-reduced-copy {copy_dir} does not match the training folder {root}: {what}; '
                             f'rerun timm-trd-reduced-copy {root} {copy_dir}')
    return copy_dir, float(manifest['scale'])


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog='timm-trd-reduced-copy', description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help='the training image folder, e.g. /data/imagenet/train')
    parser.add_argument('dst', help='where the copy goes (same tree, same file names)')
    parser.add_argument('--scale', type=float, default=2.0, help='each side is divided by this (default: 2)')
    parser.add_argument('--quality', type=int, default=90, help='JPEG quality of the copy (default: 90)')
    parser.add_argument('--workers', type=int, default=None, help='parallel processes (default: all cores)')
    args = parser.parse_args(argv)
    try:
        m = make_copy(args.src, args.dst, scale=args.scale, quality=args.quality, workers=args.workers)
    except (OSError, ValueError) as e:
        print(f'timm-trd-reduced-copy: error: {e}', file=sys.stderr)
        sys.exit(2)
    print(f'{m["files"]} images, {m["written_this_run"]} written in {m["seconds_this_run"]:.1f} s; '
          f'{m["copy_bytes"] / 2**20:.1f} MiB, {m["copy_bytes"] / m["source_bytes"]:.2f} of the original '
          f'{m["source_bytes"] / 2**20:.1f} MiB; scale 1/{m["scale"]:g}, JPEG quality {m["quality"]}')


if __name__ == '__main__':
    main()
