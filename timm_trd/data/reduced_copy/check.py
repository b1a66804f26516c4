"""The start-up check of ``--trd-reduced-copy``: the copy serves the training folder's pictures and no others.

Checked against the copy's own record (:mod:`timm_trd.data.reduced_copy.index`), at a cost meant for ImageNet's 1.28 M files:

- always, for every file: the copy is complete (its manifest is there), made with the run's image mode, and holds
  exactly the training folder's images (none missing, none extra, no temporary file of a killed run); every
  training image has the size and modification time (to the nanosecond, or to the second for a folder staged
  with tar, ``cp -a`` or ``rsync -a`` onto a filesystem that keeps whole seconds) of the source its copy was
  made from (a copy of another folder with the same file names, or an original replaced since, fails here);
  every copied file has the size and time it was written with (a cut or replaced file fails);
- on a sample (``sample`` files, 100 by default, the same in every rank): the content digests of source and copy.

Under torchrun (or Slurm), one process per node checks (local rank 0) and writes its verdict to a node-local
file that the node's other processes wait for (:func:`check_copy_once`): a copy on a shared filesystem is walked
once per node, not once per process, and a bad copy stops every process with the same line.

Reading every byte is left to ``timm-trd-reduced-copy`` itself: its rerun verifies every digest and fixes what it
finds. Images the tool could not read are accepted: reduced batches read their original (train.py then skips
them with a warning, as without the copy).
"""

import hashlib
import json
import os
import random
import tempfile
import time
from typing import FrozenSet, NamedTuple, Optional

import numpy as np

from . import index as ci
from .index import MANIFEST

SAMPLE = 100
STAGED_NS = 10 ** 9  # whole seconds: the resolution tar and coarse filesystems keep
WAIT_S = 3600.0  # how long the other processes of a node wait for the check of the first
SHOWN = 1  # examples named per kind of mismatch


class CheckedCopy(NamedTuple):
    dir: str  # the copy of the training folder
    scale: float
    skipped: FrozenSet[str]  # training images (relative paths) the tool could not read: read from the original
    sizes: Optional[np.ndarray] = None  # (width, height) of each training image (reader.samples order); 0: unknown


def _stat_state(path: str, size: int, mtime_ns: int):
    """'gone' when ``path`` cannot be stat'ed, 'changed' when its size or mtime differ from the record, else None.

    A time on a whole second within 2 s of the record is the record's time staged by a tool or filesystem that
    keeps whole seconds (GNU tar, rsync/cp -a onto such a filesystem; FAT's 2 s): accepted, and content decides
    (the sampled digests). Any other time is another file."""
    try:
        st = os.stat(path)
    except OSError:
        return 'gone'
    if st.st_size != size:
        return 'changed'
    if st.st_mtime_ns == mtime_ns or (st.st_mtime_ns % STAGED_NS == 0 and abs(st.st_mtime_ns - mtime_ns) < 2 * STAGED_NS):
        return None
    return 'changed'

def _find(copy_dir: str, root: str) -> str:
    """``copy_dir`` or its folder named as the training folder (the copy of the ``--data-dir`` holding it)."""
    for candidate in (copy_dir, os.path.join(copy_dir, os.path.basename(os.path.normpath(root)))):
        if os.path.isfile(os.path.join(candidate, MANIFEST)):
            return candidate
    return ''


def rerun_command(root: str, copy_dir: str, manifest: dict, img_mode: str) -> str:
    options = ''
    if float(manifest.get('scale', 2.0)) != 2.0:
        options += f' --scale {manifest["scale"]:g}'
    if manifest.get('quality', 90) != 90:
        options += f' --quality {manifest["quality"]}'
    if img_mode != 'RGB':
        options += f' --input-img-mode {img_mode}'
    return f'timm-trd-reduced-copy {root} {copy_dir}{options}'


def own_copy_dir(copy_dir: str, root: str) -> str:
    """A folder beside ``copy_dir`` for a copy of ``root``: ``COPY-<parent>-<name>`` of the training folder."""
    root = os.path.normpath(os.path.abspath(root))
    tag = '-'.join(part for part in (os.path.basename(os.path.dirname(root)), os.path.basename(root)) if part)
    return f'{os.path.normpath(copy_dir)}-{tag}'


class _Findings:
    """Mismatches by kind, with a count and the first examples of each."""

    def __init__(self):
        self.kinds = {}

    def add(self, kind: str, rel: str):
        count, examples = self.kinds.get(kind, (0, []))
        self.kinds[kind] = (count + 1, examples + [rel] if len(examples) < SHOWN else examples)

    def line(self) -> str:
        return '; '.join(f'{count} {kind} (e.g. {", ".join(examples)})'
                         for kind, (count, examples) in self.kinds.items())


def check_copy(reader, copy_dir: str, img_mode: str = 'RGB', sample: int = SAMPLE) -> CheckedCopy:
    """The copy of timm's folder ``reader``'s root (``copy_dir`` or a folder in it), checked as the module says.

    Raises :class:`~timm_trd.errors.TRDConfigError` (one line naming the rerun that fixes it) otherwise."""
    from ...errors import TRDConfigError
    root = getattr(reader, 'root', None)
    samples = getattr(reader, 'samples', None)
    if root is None or samples is None:
        raise TRDConfigError(f'--trd-reduced-copy needs an image folder dataset, not a {type(reader).__name__}; '
                             f'drop --trd-reduced-copy')
    found = _find(copy_dir, root)
    if not found:
        raise TRDConfigError(f'--trd-reduced-copy {copy_dir} is not a finished reduced copy (no {MANIFEST}); '
                             f'run timm-trd-reduced-copy {root} {copy_dir} (it resumes)')
    copy_dir = found
    manifest = ci.load_manifest(copy_dir)
    fix = rerun_command(root, copy_dir, manifest, img_mode)
    if manifest.get('version') != ci.VERSION:
        raise TRDConfigError(f'--trd-reduced-copy {copy_dir} was written by an older timm-trd-reduced-copy, which '
                             f'did not record the source of each file; rerun {fix}')
    if manifest['input_img_mode'] != img_mode:
        raise TRDConfigError(f'--trd-reduced-copy {copy_dir} holds {manifest["input_img_mode"]} pictures and this '
                             f'run reads {img_mode} (--input-img-mode); rerun {fix}')
    problems, skipped, sizes = _compare(root, samples, copy_dir, manifest, sample)
    if problems.kinds:
        source = manifest.get('source')
        if os.path.abspath(root) == source:
            raise TRDConfigError(f'--trd-reduced-copy {copy_dir} does not match the training folder {root}: '
                                 f'{problems.line()}; rerun {fix} (it fixes every mismatch)')
        # a copy of another folder (the full set, when training on a subset): a rerun into it would delete its
        # pictures of that folder, so the fix is a copy of its own
        own = own_copy_dir(copy_dir, root)
        raise TRDConfigError(f'--trd-reduced-copy {copy_dir} (made from {source}) does not match the training folder '
                             f'{root}: {problems.line()}; make a copy of the training folder in a folder of its own: '
                             f'{rerun_command(root, own, manifest, img_mode)} and pass --trd-reduced-copy {own} (a '
                             f'rerun into {copy_dir} would delete its copies of the images of {source})')
    return CheckedCopy(copy_dir, float(manifest['scale']), frozenset(skipped), sizes)


def _compare(root: str, samples, copy_dir: str, manifest: dict, sample: int):
    """Every check of the module docstring; returns (findings, the skipped training images, the pictures' sizes)."""
    prefix = os.path.join(root, '')
    order = {path: n for n, (path, *_) in enumerate(samples)}
    training = {path[len(prefix):] if path.startswith(prefix) else os.path.relpath(path, root): path
                for path, *_ in samples}
    sizes = np.zeros((len(samples), 2), dtype=np.int32)
    problems, copied, skipped, index_hash = _Findings(), [], [], hashlib.sha256()
    seen = set()
    for line, entry in ci.iter_index(os.path.join(copy_dir, ci.INDEX)):
        index_hash.update(line.encode())
        if entry is None:
            continue
        seen.add(entry.rel)
        path = training.get(entry.rel)
        if path is None:
            problems.add('images not in the training folder', entry.rel)
            continue
        state = _stat_state(path, entry.size, entry.mtime_ns)
        if state:
            problems.add('training images gone while checking' if state == 'gone' else
                         'training images that are not the ones the copy was made from (other size or time)',
                         entry.rel)
            continue
        if entry.skipped:
            skipped.append(entry.rel)
            continue
        state = _stat_state(os.path.join(copy_dir, entry.rel), entry.copy_size, entry.copy_mtime_ns)
        if state:
            problems.add('copied files missing' if state == 'gone' else
                         'copied files changed since they were written (other size or time: cut, replaced)',
                         entry.rel)
            continue
        copied.append(entry)
        sizes[order[path]] = (entry.width, entry.height)
    if index_hash.hexdigest() != manifest.get('index_sha256'):
        problems.add(f'index changed since the copy was finished ({ci.INDEX})', ci.INDEX)
    for rel in sorted(set(training).difference(seen)):
        problems.add('training images missing there', rel)
    images, temps = ci.scan_tree(copy_dir, _extensions())
    unread = set(skipped)
    for rel in images:
        if rel not in seen and rel not in training:
            problems.add('images not in the training folder', rel)
        elif rel in unread:
            problems.add('images the tool could not read, yet found in the copy', rel)
    for rel in temps:
        problems.add('leftover temporary files of a killed run', rel)
    if os.path.exists(os.path.join(copy_dir, ci.JOURNAL)):
        problems.add('journals of an unfinished run', ci.JOURNAL)
    for entry in random.Random(manifest.get('index_sha256')).sample(copied, min(sample, len(copied))):
        if ci.file_digest(training[entry.rel]) != entry.digest:
            problems.add('training images whose content differs from the source the copy was made from', entry.rel)
        elif ci.file_digest(os.path.join(copy_dir, entry.rel)) != entry.copy_digest:
            problems.add('copied files whose content differs from what was written', entry.rel)
    return problems, skipped, sizes


def _extensions():
    from .make import image_extensions
    return image_extensions()


def _verdict_path(env, root: str, copy_dir: str):
    """The node-local file where this launch's check verdict goes, or None when the launch has no id (one process
    per node, or a launcher this does not know: each process checks for itself)."""
    if env.get('TORCHELASTIC_RUN_ID'):  # torchrun: the node's processes share their agent, their parent
        launch = f'{env["TORCHELASTIC_RUN_ID"]}:{os.getppid()}'
    elif env.get('SLURM_JOB_ID'):
        launch = f'{env["SLURM_JOB_ID"]}:{env.get("SLURM_STEP_ID", "")}'
    else:
        return None
    key = hashlib.sha256(f'{launch}\0{os.path.abspath(root)}\0{os.path.abspath(copy_dir)}'.encode()).hexdigest()[:24]
    return os.path.join(tempfile.gettempdir(), f'timm-trd-copy-check-{key}.json')


def _write_verdict(path: str, verdict: dict) -> None:
    tmp = f'{path}.{os.getpid()}.part'
    with open(tmp, 'w') as f:
        json.dump(verdict, f)
    os.replace(tmp, path)


def check_copy_once(reader, copy_dir: str, img_mode: str = 'RGB', sample: int = SAMPLE, env=None,
                    wait_s: float = WAIT_S) -> CheckedCopy:
    """:func:`check_copy`, run by one process per node (local rank 0, from ``LOCAL_RANK`` / ``SLURM_LOCALID``);
    the node's other processes wait for its verdict and return it, or raise its error line."""
    from ...errors import TRDConfigError
    env = os.environ if env is None else env
    local_world = int(env.get('LOCAL_WORLD_SIZE', env.get('SLURM_NTASKS_PER_NODE', '1')) or 1)
    local_rank = int(env.get('LOCAL_RANK', env.get('SLURM_LOCALID', '0')) or 0)
    path = _verdict_path(env, getattr(reader, 'root', ''), copy_dir) if local_world > 1 else None
    if path is None:
        return check_copy(reader, copy_dir, img_mode, sample)
    if local_rank == 0:
        try:
            checked = check_copy(reader, copy_dir, img_mode, sample)
        except TRDConfigError as e:
            _write_verdict(path, {'error': str(e)})
            raise
        np.save(f'{path}.sizes.npy', checked.sizes)
        _write_verdict(path, {'dir': checked.dir, 'scale': checked.scale, 'skipped': sorted(checked.skipped)})
        return checked
    deadline = time.monotonic() + wait_s
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TRDConfigError(f'--trd-reduced-copy {copy_dir}: the check of local rank 0 wrote no verdict to '
                                 f'{path} in {wait_s:.0f} s; see its log (it may have stopped)')
        time.sleep(0.2)
    with open(path) as f:
        verdict = json.load(f)
    if 'error' in verdict:
        raise TRDConfigError(verdict['error'])
    return CheckedCopy(verdict['dir'], float(verdict['scale']), frozenset(verdict['skipped']),
                       np.load(f'{path}.sizes.npy'))
