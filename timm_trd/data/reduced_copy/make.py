"""A reduced-resolution copy of an image folder, for the loader path's reduced batches.

    timm-trd-reduced-copy SRC DST [--scale 2] [--quality 90] [--input-img-mode RGB] [--workers N]

Writes every image of ``SRC`` (timm's image folder layout, e.g. ``/data/imagenet/train``) to the same relative
path under ``DST``, ``scale`` times smaller on each side: converted first exactly as timm's ``ImageDataset``
converts it (``img.convert(input_img_mode)``, train.py's ``--input-img-mode``, RGB by default, so an RGBA PNG
keeps the colours under its transparency, as train.py sees them), then Lanczos; JPEG sources as JPEG at
``--quality``, all others as PNG (lossless). Parallel, with a progress bar.

The copy records, per file, the size, time and content digest of the source it was made from and of the file
it wrote (:mod:`timm_trd.data.reduced_copy.index`). A rerun makes the copy right whatever happened to it: it re-reads every
source and every copied file, keeps a copied file only when both digests match the record (a resumed run writes
only what is missing), rewrites the stale, cut, replaced or foreign ones (a copy of another folder with the same
file names), deletes images that are not in ``SRC`` and temporary files of a killed run, and rewrites everything
when the settings changed. Sources that cannot be read (a truncated JPEG, a zero-byte file) are skipped, as
train.py skips them, and named; the copy stays usable (reduced batches read their original, which train.py's
loader skips as usual). Workers end with the tool, even when it is killed. :func:`timm_trd.data.reduced_copy.check.check_copy`
checks the copy against the training folder when training starts with ``--trd-reduced-copy DST``.
"""

import argparse
import io
import os
import sys
import threading
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from typing import List, Optional

from PIL import Image, UnidentifiedImageError

from . import index as ci
from .index import JOURNAL, MANIFEST, Entry

UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
SHOWN = 5  # unreadable images named in the warning


def image_extensions():
    from timm.data.readers.img_extensions import get_img_extensions
    return get_img_extensions(as_set=True)


def image_files(root: str) -> List[str]:
    """The image files under ``root`` as timm's folder reader finds them, relative to ``root``, sorted."""
    return ci.scan_tree(root, image_extensions())[0]


def reduce_picture(data: bytes, scale: float, quality: int, mode: str):
    """(source mode, written format, bytes of the reduced file, the source's (width, height)) for a source file's
    bytes; raises what Pillow raises for an unreadable one."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # e.g. Pillow's note on palette transparency: the tool reports modes itself
        with Image.open(io.BytesIO(data)) as img:
            source_mode, source_format = img.mode, img.format
            picture = img.convert(mode)  # timm's ImageDataset: img.convert(input_img_mode), before any resizing
    size = (max(1, round(picture.size[0] / scale)), max(1, round(picture.size[1] / scale)))
    small = picture.resize(size, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if source_format == 'JPEG' and small.mode in ('RGB', 'L', 'CMYK'):
        small.save(out, format='JPEG', quality=quality)
        written = 'JPEG'
    else:
        small.save(out, format='PNG', compress_level=1)
        written = 'PNG'
    return source_mode, written, out.getvalue(), picture.size


def copy_one(src: str, dst: str, rel: str, previous: Optional[Entry], scale: float, quality: int, mode: str):
    """Make ``dst`` the reduced copy of ``src``; returns (entry, 'written' | 'kept' | 'skipped', source mode, format).

    An existing ``dst`` is kept only when the record says it was made from these very source bytes and its own
    bytes are still the ones written."""
    with open(src, 'rb') as f:
        st = os.fstat(f.fileno())
        data = f.read()
    source = (rel, st.st_size, st.st_mtime_ns, ci.digest(data))
    if previous is not None and not previous.skipped and previous.digest == source[3] and os.path.isfile(dst):
        with open(dst, 'rb') as f:
            cst = os.fstat(f.fileno())
            kept = ci.digest(f.read()) == previous.copy_digest
        if kept:
            with Image.open(io.BytesIO(data)) as img:
                source_mode, size = img.mode, img.size
            with Image.open(dst) as img:
                written = img.format
            return Entry(*source, cst.st_size, cst.st_mtime_ns, previous.copy_digest, '', *size), 'kept', \
                source_mode, written
    try:
        source_mode, written, out, size = reduce_picture(data, scale, quality, mode)
    except UNREADABLE as e:
        if os.path.lexists(dst):
            os.remove(dst)  # a copy of what this source once was
        reason = 'empty file' if not data else (
            'not an image Pillow can identify' if isinstance(e, UnidentifiedImageError) else f'{type(e).__name__}: {e}')
        return Entry(*source, reason=reason), 'skipped', None, None
    tmp = ci.temp_path(dst)
    with open(tmp, 'wb') as f:
        f.write(out)
    os.replace(tmp, dst)
    cst = os.stat(dst)
    return Entry(*source, cst.st_size, cst.st_mtime_ns, ci.digest(out), '', *size), 'written', source_mode, written


def _job(item):
    return copy_one(*item)


def _exit_with_parent():
    """Worker initialiser: end this worker as soon as the process that started it is gone (even by SIGKILL,
    which the pool never hears of): it polls its parent id, which changes when the parent dies."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def _nested(a: str, b: str) -> bool:
    a, b = os.path.realpath(a), os.path.realpath(b)
    return a == b or a.startswith(b + os.sep) or b.startswith(a + os.sep)


def _tidy(dst: str, relpaths: List[str]):
    """Remove the copy's temporary files and the images that are not in the source; returns their counts."""
    images, temps = ci.scan_tree(dst, image_extensions())
    wanted = set(relpaths)
    extra = [r for r in images if r not in wanted]
    for rel in temps + extra:
        os.remove(os.path.join(dst, rel))
    return len(extra), len(temps)


def make_copy(src: str, dst: str, scale: float = 2.0, quality: int = 90, img_mode: str = 'RGB',
              workers: Optional[int] = None, progress: bool = True) -> dict:
    """Write or repair the reduced copy of ``src`` in ``dst`` (see the module docstring); returns its manifest."""
    if scale <= 1:
        raise ValueError(f'--scale must be > 1, got {scale}')
    if not 1 <= quality <= 100:
        raise ValueError(f'--quality must lie in [1, 100], got {quality}')
    if not os.path.isdir(src):
        raise ValueError(f'{src} is not a folder; give the training image folder, e.g. /data/imagenet/train')
    if _nested(src, dst):
        raise ValueError(f'{dst} and {src} overlap; give the copy a folder of its own, e.g. {src.rstrip("/")}-half')
    start = time.time()
    relpaths = image_files(src)
    if not relpaths:
        raise ValueError(f'{src} holds no images')
    odd = next((r for r in relpaths if '\t' in r or '\n' in r), None)
    if odd is not None:
        raise ValueError(f'{src}: a file name holds a tab or a line break ({odd!r}); rename it')
    ours = any(os.path.exists(os.path.join(dst, n)) for n in (MANIFEST, ci.INDEX, JOURNAL))
    if not ours and os.path.isdir(dst) and image_files(dst):
        raise ValueError(f'{dst} holds images and is not a reduced copy (no {MANIFEST}, {ci.INDEX} or {JOURNAL}); '
                         f'give a new or empty folder')
    settings = dict(version=ci.VERSION, scale=float(scale), quality=quality, input_img_mode=img_mode)
    index_path, journal_path = os.path.join(dst, ci.INDEX), os.path.join(dst, JOURNAL)
    earlier = [s for s in map(ci.read_settings, (index_path, journal_path)) if s is not None]
    previous = ci.read_entries(index_path, settings)
    previous.update(ci.read_entries(journal_path, settings))
    os.makedirs(dst, exist_ok=True)
    if os.path.exists(os.path.join(dst, MANIFEST)):
        os.remove(os.path.join(dst, MANIFEST))  # incomplete again until this run finishes
    removed, temps = _tidy(dst, relpaths)
    for folder in sorted({os.path.dirname(r) for r in relpaths}):
        os.makedirs(os.path.join(dst, folder), exist_ok=True)
    jobs = [(os.path.join(src, r), os.path.join(dst, r), r, previous.get(r), float(scale), quality, img_mode)
            for r in relpaths]
    entries, counts, modes, formats = _run(jobs, ci.open_journal(journal_path, settings), workers, progress)
    index_digest = ci.write_index(index_path, settings, entries)
    os.remove(journal_path)
    skipped = sorted((e.rel, e.reason) for e in entries if e.skipped)
    manifest = dict(settings, source=os.path.abspath(src), images=len(entries), copied=len(entries) - len(skipped),
                    skipped=len(skipped), skipped_examples=skipped[:100], source_modes=modes, formats=formats,
                    source_bytes=sum(e.size for e in entries),
                    copy_bytes=sum(e.copy_size for e in entries if not e.skipped), index_sha256=index_digest,
                    seconds_this_run=round(time.time() - start, 1), written_this_run=counts['written'],
                    kept_this_run=counts['kept'], removed_this_run=removed, temporary_removed_this_run=temps,
                    settings_changed_from=next((s for s in earlier if s != settings), None))
    ci.write_manifest(dst, manifest)
    return manifest


def _run(jobs, journal, workers: Optional[int], progress: bool):
    """Run :func:`copy_one` on every job in worker processes, each result recorded in the journal as it comes;
    returns (entries, counts by outcome, source modes, written formats)."""
    entries, counts, modes, formats = [], dict(written=0, kept=0, skipped=0), {}, {}
    bar = _progress(len(jobs), progress)
    with journal, ProcessPoolExecutor(workers or os.cpu_count(), initializer=_exit_with_parent) as pool:
        for entry, status, mode, fmt in pool.map(_job, jobs, chunksize=4):
            journal.write(ci.format_entry(entry))
            entries.append(entry)
            counts[status] += 1
            if mode is not None:
                modes[mode] = modes.get(mode, 0) + 1
                formats[fmt] = formats.get(fmt, 0) + 1
            bar.update(1)
    bar.close()
    return entries, counts, modes, formats


def _progress(total: int, enabled: bool):
    try:
        from tqdm import tqdm
        return tqdm(total=total, unit='img', disable=not enabled, desc='reduced copy')
    except ImportError:
        class _Quiet:
            def update(self, n):
                pass

            def close(self):
                pass
        return _Quiet()


def summary(m: dict) -> List[str]:
    """What a run did and what the copy holds, as the tool prints it."""
    lines = [f'{m["images"]} images: {m["written_this_run"]} written, {m["kept_this_run"]} kept (same source and '
             f'copy bytes as recorded), {m["skipped"]} unreadable (skipped); {m["removed_this_run"]} images not in '
             f'the source and {m["temporary_removed_this_run"]} leftover temporary files removed; '
             f'{m["seconds_this_run"]:.1f} s']
    kinds = {'JPEG': f'JPEG quality {m["quality"]} (from JPEG sources)', 'PNG': 'PNG (lossless, from other formats)'}
    formats = ', '.join(f'{n} {kinds[fmt]}' for fmt, n in sorted(m['formats'].items()))
    ratio = m['copy_bytes'] / m['source_bytes'] if m['source_bytes'] else 0
    lines.append(f'copy: {m["copy_bytes"] / 2**20:.1f} MiB, {ratio:.2f} of the original '
                 f'{m["source_bytes"] / 2**20:.1f} MiB; scale 1/{m["scale"]:g}; {formats or "no images"}')
    changed = m.get('settings_changed_from')
    if changed:
        lines.append('settings changed (' + ', '.join(f'{k} {changed.get(k)} -> {m[k]}' for k in sorted(changed)
                                                     if changed.get(k) != m.get(k)) + '): every image rewritten')
    mode = m['input_img_mode']
    converted = {k: v for k, v in sorted(m['source_modes'].items()) if k != mode}
    if converted:
        lines.append(f'converted to {mode} before resizing, as timm\'s ImageDataset does (--input-img-mode '
                     f'{mode}): ' + ', '.join(f'{n} {k}' for k, n in converted.items()))
    return lines


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog='timm-trd-reduced-copy', description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help='the training image folder, e.g. /data/imagenet/train')
    parser.add_argument('dst', help='where the copy goes (same tree, same file names)')
    parser.add_argument('--scale', type=float, default=2.0, help='each side is divided by this (default: 2)')
    parser.add_argument('--quality', type=int, default=90, help='JPEG quality of the copy (default: 90)')
    parser.add_argument('--input-img-mode', default='RGB',
                        help="the mode train.py reads images in (its --input-img-mode; default: RGB)")
    parser.add_argument('--workers', type=int, default=None, help='parallel processes (default: all cores)')
    args = parser.parse_args(argv)
    try:
        m = make_copy(args.src, args.dst, scale=args.scale, quality=args.quality, img_mode=args.input_img_mode,
                      workers=args.workers)
    except (OSError, ValueError) as e:
        print(f'timm-trd-reduced-copy: error: {e}', file=sys.stderr)
        sys.exit(2)
    print('\n'.join(summary(m)))
    if m['skipped']:
        shown = '; '.join(f'{rel} ({reason})' for rel, reason in m['skipped_examples'][:SHOWN])
        print(f'timm-trd-reduced-copy: warning: {m["skipped"]} unreadable images skipped, as train.py skips them '
              f'(reduced batches read their original): {shown}' + (' ...' if m['skipped'] > SHOWN else ''),
              file=sys.stderr)


if __name__ == '__main__':
    main()
