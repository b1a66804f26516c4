"""The record a reduced copy keeps of itself: which source each copied file was made from, and what was written.

Beside its images, a reduced copy ``DST`` holds

- ``trd_reduced_copy.tsv``, the index: a settings line, then one line per training image, sorted by path,
  ``path  source_size  source_mtime_ns  source_digest  copy_size  copy_mtime_ns  copy_digest  width  height``
  (the source picture's size, so the loader need not open the original; absent in copies written before); for a source that
  could not be read (skipped, as train.py skips it) ``path  size  mtime_ns  digest  -  -  reason``;
- ``trd_reduced_copy.json``, the manifest, written last: the settings, the counts and the index's digest. Until it
  exists the copy is incomplete;
- while ``timm-trd-reduced-copy`` runs, ``trd_reduced_copy.journal.tsv``: the same lines, appended as files are
  done, so that a killed run resumes without rewriting what it had finished.

A digest is the first 128 bits of SHA-256 of the file's bytes: sure for telling files apart, and the fastest sure
hash in ``hashlib`` where the CPU has SHA instructions (current x86 and ARM). Files being written carry
``.trd-tmp-PID`` in their name until they are renamed into place; the tool removes any it finds.
"""

import hashlib
import json
import os
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple

MANIFEST = 'trd_reduced_copy.json'
INDEX = 'trd_reduced_copy.tsv'
JOURNAL = 'trd_reduced_copy.journal.tsv'
TEMP_MARK = '.trd-tmp-'
VERSION = 2


class Entry(NamedTuple):
    """One training image: its source's size, time and digest; its copy's (``copy_size`` None: skipped)."""
    rel: str
    size: int
    mtime_ns: int
    digest: str
    copy_size: Optional[int] = None
    copy_mtime_ns: Optional[int] = None
    copy_digest: str = ''
    reason: str = ''
    width: int = 0  # the source picture's size in pixels (0: not recorded, a copy written before it was)
    height: int = 0

    @property
    def skipped(self) -> bool:
        return self.copy_size is None


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def file_digest(path: str) -> str:
    with open(path, 'rb') as f:
        return digest(f.read())


def temp_path(path: str) -> str:
    return f'{path}{TEMP_MARK}{os.getpid()}'


def settings_line(settings: dict) -> str:
    return '# ' + json.dumps(settings, sort_keys=True) + '\n'


def format_entry(e: Entry) -> str:
    if e.skipped:
        reason = ' '.join(e.reason.split())  # one line, no tabs
        return f'{e.rel}\t{e.size}\t{e.mtime_ns}\t{e.digest}\t-\t-\t{reason}\n'
    size = f'\t{e.width}\t{e.height}' if e.width else ''
    return f'{e.rel}\t{e.size}\t{e.mtime_ns}\t{e.digest}\t{e.copy_size}\t{e.copy_mtime_ns}\t{e.copy_digest}{size}\n'


def parse_entry(line: str) -> Entry:
    fields = line.rstrip('\n').split('\t')
    rel, size, mtime, dig, copy_size, copy_mtime, last = fields[:7]
    if copy_size == '-':
        return Entry(rel, int(size), int(mtime), dig, reason=last)
    if len(fields) == 9:
        return Entry(rel, int(size), int(mtime), dig, int(copy_size), int(copy_mtime), last, '', int(fields[7]),
                     int(fields[8]))
    if len(fields) != 7:
        raise ValueError(f'an index line has 7 or 9 fields, this one {len(fields)}')
    return Entry(rel, int(size), int(mtime), dig, int(copy_size), int(copy_mtime), last)


def read_settings(path: str) -> Optional[dict]:
    """The settings an index or journal was written with, or None (absent, or not one)."""
    try:
        with open(path) as f:
            first = f.readline()
        return json.loads(first[2:]) if first.startswith('# ') else None
    except (OSError, ValueError):
        return None


def open_journal(path: str, settings: dict):
    """The journal, for appending: the one there when it was written with ``settings``, else a new one."""
    if read_settings(path) == settings:
        f = open(path, 'a', buffering=1)
        with open(path, 'rb') as tail:
            tail.seek(-1, os.SEEK_END)
            if tail.read(1) != b'\n':
                f.write('\n')  # a line cut short by a killed run stays a line of its own
        return f
    f = open(path, 'w', buffering=1)  # a line per finished file, on disk when the run is killed
    f.write(settings_line(settings))
    return f


def read_entries(path: str, settings: dict) -> Dict[str, Entry]:
    """The entries of an index or journal written with ``settings`` (none if it is absent or had others); a line
    cut short by a killed run is left out."""
    if not os.path.isfile(path):
        return {}
    entries = {}
    with open(path) as f:
        if f.readline() != settings_line(settings):
            return {}
        for line in f:
            try:
                entry = parse_entry(line)
            except ValueError:
                continue
            entries[entry.rel] = entry
    return entries


def write_index(path: str, settings: dict, entries: List[Entry]) -> str:
    """Write the index (sorted by path) under a temporary name, then rename it; returns its digest."""
    text = settings_line(settings) + ''.join(format_entry(e) for e in sorted(entries))
    tmp = temp_path(path)
    with open(tmp, 'w') as f:
        f.write(text)
    os.replace(tmp, path)
    return hashlib.sha256(text.encode()).hexdigest()


def iter_index(path: str) -> Iterator[Tuple[str, Optional[Entry]]]:
    """The index's lines: (raw line, entry), the settings line first with entry None, so a caller can hash it."""
    with open(path) as f:
        for n, line in enumerate(f):
            yield line, (None if n == 0 else parse_entry(line))


def scan_tree(root: str, extensions) -> Tuple[List[str], List[str]]:
    """The image files (by extension) and the leftover temporary files under ``root``, relative to it."""
    images, temps = [], []
    for folder, _, files in os.walk(root, followlinks=True):
        base = os.path.relpath(folder, root)  # once per folder: relpath is the slow part for 1 M files
        for name in files:
            rel = name if base == '.' else os.path.join(base, name)
            if TEMP_MARK in name:
                temps.append(rel)
            elif os.path.splitext(name)[1].lower() in extensions:
                images.append(rel)
    return sorted(images), sorted(temps)


def load_manifest(copy_dir: str) -> dict:
    with open(os.path.join(copy_dir, MANIFEST)) as f:
        return json.load(f)


def write_manifest(copy_dir: str, manifest: dict) -> None:
    path = os.path.join(copy_dir, MANIFEST)
    tmp = temp_path(path)
    with open(tmp, 'w') as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, path)
