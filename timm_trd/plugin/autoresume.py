"""A restarted job continues its run: ``--trd-auto-resume``, and no run that silently writes over its own checkpoints.

Clusters preempt, hit time limits, lose ranks and requeue jobs; SLURM and torchrun then start the same command line
again. train.py has no resume of its own unless ``--resume PATH`` is typed, and with a fixed ``--experiment`` a
restarted job would train from epoch 0 into the folder that holds the run's checkpoints. This module decides, while
train.py's arguments are parsed (before anything is built or written):

- with ``--trd-auto-resume``: the latest *complete* checkpoint in ``<output>/<experiment>/`` (``last.pth.tar``,
  ``checkpoint-N.pth.tar``, ``recovery-E-B.pth.tar``; each one read before it is trusted, one cut off mid-write is
  skipped with a line that names it) becomes ``--resume``; no checkpoint yet: training starts at epoch 0;
- without it (and without ``--resume``): a folder that already holds checkpoints stops the run with one line that
  names both ways out, ``--trd-auto-resume`` (or ``--resume PATH``) and another ``--experiment``; TRD on or off.

A run that continues in the folder it resumes from keeps the run's records as one (:class:`Continuation`, handed
the ``CheckpointSaver`` and ``update_summary`` calls of train.py's ``utils`` by the plugin): the saver gets back the
checkpoint history and best metric the checkpoint recorded (so ``model_best.pth.tar`` stays the best of all
epochs), ``summary.csv`` keeps the rows of the epochs before the resume and gets each later epoch once, under the
one header, and with ``--log-wandb`` the wandb run id kept in the folder (``wandb_run_id.txt``) makes the restarted
job log into the same wandb run.

What a restart loses: the epoch in flight when the job stopped (it trains again from its start), or with train.py's
``--recovery-interval`` the rest of the epoch the recovery checkpoint was written in: timm resumes a
``recovery-E-B`` checkpoint at epoch E + 1 (see :mod:`timm_trd.plugin.resume` for how TRD counts that epoch).
"""

import argparse
import csv
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

from ..errors import TRDConfigError
from .resume import read_checkpoint

_logger = logging.getLogger('timm_trd')

OPTION = '--trd-auto-resume'
WANDB_ID_FILE = 'wandb_run_id.txt'
_CHECKPOINT = re.compile(r'^(last|model_best|checkpoint-(\d+)|recovery-(\d+)-(\d+))\.pth\.tar$')


def experiment_dir(args: argparse.Namespace) -> Optional[Path]:
    """The folder train.py writes this run's checkpoints to: ``<--output or ./output/train>/<--experiment>``;
    None without ``--experiment`` (train.py then names a new, timestamped folder each time)."""
    experiment = getattr(args, 'experiment', None)
    if not experiment:
        return None
    return Path(getattr(args, 'output', None) or './output/train') / experiment


@dataclass(frozen=True)
class Found:
    """A checkpoint that can be resumed from: ``epoch`` as saved (timm resumes at ``epoch + 1``), ``batch`` the last
    update of a recovery checkpoint (None for the end of an epoch)."""
    path: Path
    epoch: int
    batch: Optional[int] = None

    @property
    def progress(self) -> Tuple[int, int]:
        """How far training had come: a recovery checkpoint of epoch E lies between the ends of epochs E-1 and E."""
        return (self.epoch, self.batch) if self.batch is not None else (self.epoch, 1 << 62)

    def describe(self) -> str:
        where = f'epoch {self.epoch}' + (f', update {self.batch} (a recovery checkpoint)' if self.batch is not None
                                         else '')
        return f'{self.path} ({where})'


def checkpoint_files(folder: Path) -> List[Path]:
    """The checkpoints train.py's saver writes in ``folder`` (not its ``tmp`` files, which are never complete)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _CHECKPOINT.match(p.name))


def find_latest(folder: Path) -> Tuple[Optional[Found], List[str]]:
    """The furthest-trained complete checkpoint in ``folder``, and a note for each one skipped as unreadable."""
    found, skipped = [], []
    for path in checkpoint_files(folder):
        if path.name == 'model_best.pth.tar':
            continue  # a copy of an earlier last.pth.tar: never further than last or checkpoint-N
        try:
            checkpoint = read_checkpoint(path)
        except Exception as e:  # noqa: BLE001 - truncated zip, bad pickle, ...: not a checkpoint to resume from
            skipped.append(f'{path.name} ({type(e).__name__}: {" ".join(str(e).split())[:120]})')
            continue
        recovery_batch = _CHECKPOINT.match(path.name).group(4)
        found.append(Found(path, int(checkpoint['epoch']), int(recovery_batch) if recovery_batch else None))
    if not found:
        return None, skipped
    # the furthest; at equal progress last.pth.tar, the name a user expects
    best = max(found, key=lambda f: (f.progress, f.path.name == 'last.pth.tar'))
    return best, skipped


def prepare(args: argparse.Namespace, primary: bool) -> Optional[Path]:
    """At parse time: set ``args.resume`` for ``--trd-auto-resume``, or refuse to write over an experiment's
    checkpoints; returns the experiment folder when the run continues in it (for :class:`Continuation`)."""
    folder = experiment_dir(args)
    auto = bool(getattr(args, 'trd_auto_resume', False))
    if getattr(args, 'resume', None):
        resumed = Path(args.resume)
        return folder if folder is not None and resumed.parent.resolve() == folder.resolve() else None
    if auto:
        if folder is None:
            raise TRDConfigError(f'{OPTION} needs --experiment NAME: the folder a restarted job finds its checkpoints '
                                 f'in (without it train.py names a new, timestamped folder at every start)')
        latest, skipped = find_latest(folder)
        if skipped and primary:
            _logger.warning(f'TRD: auto-resume skipped {", ".join(skipped)}: cut off while it was written, or not '
                            f'a checkpoint')
        if latest is None:
            if primary:
                _logger.info(f'TRD: auto-resume: no complete checkpoint in {folder} yet; training starts at epoch 0')
            return folder
        args.resume = str(latest.path)
        if primary:
            _logger.info(f'TRD: auto-resume: continuing from {latest.describe()}; training goes on at epoch '
                         f'{latest.epoch + 1}')
        return folder
    if folder is not None:
        existing = [p.name for p in checkpoint_files(folder)]
        if existing:
            shown = ', '.join(existing[:4]) + (f' and {len(existing) - 4} more' if len(existing) > 4 else '')
            raise TRDConfigError(
                f'{folder} already holds checkpoints of this experiment ({shown}) and this run would write over them '
                f'from epoch 0: add {OPTION} to continue from the latest (or --resume PATH), or name another '
                f'--experiment')
    return None


@dataclass
class Continuation:
    """The run's records carried across a resume into its own folder, through the ``CheckpointSaver`` and
    ``update_summary`` of train.py's ``utils`` (the plugin hands them here)."""
    folder: Path
    resume: Optional[Path]  # None: a first start (auto-resume found no checkpoint)
    summary_checked: bool = field(default=False)

    def restore_saver(self, saver) -> None:
        """The checkpoint history and best metric as the resumed checkpoint recorded them (timm's own bookkeeping
        where the checkpoint has it), else as the checkpoint files in the folder hold them."""
        if self.resume is None or Path(getattr(saver, 'checkpoint_dir', '')).resolve() != self.folder.resolve():
            return
        restored = False
        if hasattr(saver, 'load_state_dict_from_checkpoint'):
            try:
                restored = bool(saver.load_state_dict_from_checkpoint(str(self.resume)))
            except Exception:  # noqa: BLE001 - fall back to the files
                restored = False
        if not restored:
            self._restore_from_files(saver)
        _logger.info(f'TRD: auto-resume: checkpoint history restored ({len(saver.checkpoint_files)} files), best '
                     f'metric {saver.best_metric} (epoch {saver.best_epoch})')

    def _restore_from_files(self, saver) -> None:
        until = int(read_checkpoint(self.resume)['epoch'])
        history = []
        for path in checkpoint_files(self.folder):
            match = _CHECKPOINT.match(path.name)
            if match.group(2) is None:
                continue
            try:
                checkpoint = read_checkpoint(path)
            except Exception:  # noqa: BLE001
                continue
            if int(checkpoint['epoch']) <= until:
                history.append((str(path), checkpoint.get('metric'), int(checkpoint['epoch'])))
        ranked = sorted((h for h in history if h[1] is not None), key=lambda h: h[1], reverse=not saver.decreasing)
        saver.checkpoint_files = [(p, m) for p, m, _ in ranked] + [(p, m) for p, m, _ in history if m is None]
        best_file = self.folder / 'model_best.pth.tar'
        try:
            best = read_checkpoint(best_file) if best_file.exists() else None
        except Exception:  # noqa: BLE001
            best = None
        if best is not None and best.get('metric') is not None and int(best['epoch']) <= until:
            saver.best_metric, saver.best_epoch = best['metric'], int(best['epoch'])
        elif ranked:
            saver.best_metric, saver.best_epoch = ranked[0][1], ranked[0][2]

    @staticmethod
    def trim_summary(filename: str, epoch: int) -> None:
        """Before the first summary row of the resumed run (``epoch``): drop the rows of ``epoch`` and later (an epoch
        in flight at the stop may have its row but no checkpoint): timm's ``trim_summary``, or the same on a timm
        without it (< 1.0.31)."""
        import timm.utils
        trim = getattr(timm.utils, 'trim_summary', None)
        if trim is not None:
            return trim(filename, epoch)
        path = Path(filename)
        if not path.exists():
            return
        with open(path, newline='') as f:
            rows = list(csv.reader(f))
        if not rows:
            return
        kept = [row for row in rows[1:] if row and row[0] != 'epoch' and int(float(row[0])) < epoch]
        if len(kept) != len(rows) - 1:
            tmp = path.with_name(path.name + '.tmp')
            with open(tmp, 'w', newline='') as f:
                csv.writer(f).writerows(([rows[0]] + kept) if kept else [])
            os.replace(tmp, path)

    def update_summary(self, update_summary, epoch, *a, **kw):
        """timm's ``update_summary`` for a continued run: the first call drops rows of ``epoch`` and later, and a
        header is written only into an empty file (train.py asks for one while its own best metric is unset)."""
        filename = kw.get('filename', a[2] if len(a) > 2 else None)
        if filename is not None:
            if not self.summary_checked:
                self.summary_checked = True
                self.trim_summary(filename, epoch)
            kw['write_header'] = not os.path.exists(filename) or os.path.getsize(filename) == 0
        return update_summary(epoch, *a, **kw)


def wandb_run_id(folder: Path, kwargs: dict) -> dict:
    """``wandb.init`` keyword arguments for a run that may be restarted: the id kept in the folder (written at the
    first start), and ``resume='allow'``; an id the user gave (``--wandb-resume-id``) is left as it is."""
    if kwargs.get('id'):
        return kwargs
    path = folder / WANDB_ID_FILE
    if path.exists() and path.read_text().strip():
        run_id = path.read_text().strip()
        _logger.info(f'TRD: auto-resume: wandb run {run_id} continues (its id kept in {path})')
    else:
        import secrets
        run_id = secrets.token_hex(4)
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(run_id + '\n')
    return {**kwargs, 'id': run_id, 'resume': 'allow'}
