"""A resumed run against the checkpoint it resumes: what changed in the TRD plan, and what the past epochs served.

train.py resumes with ``--resume PATH`` and saves its parsed args in every checkpoint (timm's ``CheckpointSaver``
pickles the very Namespace train.py parsed, which is the one the plugin configures). That seam serves twice:

- at parse time :func:`resume_state` reads the checkpoint's ``trd_*`` settings (timm's
  ``load_checkpoint_metadata``: tensors memory-mapped, nothing loaded) and, where the plan differs (the share,
  the size, the seed, the granularity, the full-size tail, and the scheduled epochs where they move the plan),
  logs one line: what changed, and what the epochs from the resume on run now against what the checkpoint's
  settings had them run;
- after each epoch the plugin writes what every epoch so far served into those args (:data:`SERVED`: epoch ->
  compute share, plain numbers), so each checkpoint carries the record of the epochs behind it. A resumed run reads
  it back and ``train_trd_saved_cum`` stays the share saved over the epochs as they ran, not as the new plan
  would have run them.

The checkpoint is the surest place for the record: it is exactly the state the resumed run continues from and
travels with the weights, whereas summary.csv lies in an output folder a resumed run need not share (train.py
names a new one unless ``--experiment`` repeats) and may hold rows of epochs after the checkpoint. A checkpoint
trained without TRD (no ``trd_*`` args, or ``trd_prob`` 0) served full size. One from an earlier timm-trd (TRD
settings but no record) is taken at its plan when the plan is unchanged; when it changed, the cumulative figure
restarts at the resume, and the line says so.
"""

import argparse
import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ..errors import TRDConfigError
from .config import config_from_args, training_size
from ..plan.epochs import planned_epochs
from ..plan.schedule import TRDSchedule

_logger = logging.getLogger('timm_trd')

SERVED = 'trd_served'
"""The train.py args attribute (so the checkpoints' ``args``) holding ``{epoch: compute share served}``."""

PARTIAL = 'trd_served_partial'
"""The same for an epoch a recovery checkpoint (train.py's ``--recovery-interval``) cut: ``{epoch: [compute share
of the batches served, share of the epoch's batches served]}``. timm resumes a ``recovery-E-B`` checkpoint at epoch
E + 1, so the rest of epoch E is never trained: the accounting counts the batches of E that were served, weighted
by their share of the epoch, rather than re-planning or pretending the epoch was whole."""


@dataclass
class ResumeState:
    """What a resumed run knows of the epochs before it: ``served`` holds the compute share each known epoch
    served; an epoch not in it counts at the plan when ``past_at_plan`` (the plan did not change), else not at all."""
    start_epoch: int
    served: Dict[int, float] = field(default_factory=dict)
    past_at_plan: bool = False
    partial: Dict[int, List[float]] = field(default_factory=dict)  # epoch -> [share, weight] (see PARTIAL)


@dataclass(frozen=True)
class _Plan:
    prob: float
    size: str
    seed: int
    granularity: str
    full_res_epochs: int
    epochs: int

    def schedule(self) -> Optional[TRDSchedule]:
        try:
            return TRDSchedule(prob=self.prob, total_epochs=self.epochs, full_res_epochs=self.full_res_epochs,
                               granularity=self.granularity, seed=self.seed)
        except ValueError:
            return None


def _plan(args: argparse.Namespace, epochs: Optional[int] = None) -> _Plan:
    """The plan settings of parsed train.py args (the run's, or a checkpoint's); raises TRDConfigError."""
    args = argparse.Namespace(**{**vars(args), 'trd_reduced_copy': None})  # a copy's folder is not the plan
    config = config_from_args(args)
    full_hw = training_size(args)
    if full_hw:
        size = 'x'.join(str(d) for d in config.reduced_hw(full_hw))
    elif config.size is None:
        size = 'half the training size'
    else:
        size = f'{config.size[0]} px (shorter side)' if config.short_side else f'{config.size[0]}x{config.size[1]}'
    seed = config.seed if config.seed is not None else int(getattr(args, 'seed', 0) or 0)
    if epochs is None:
        try:
            epochs = planned_epochs(args)
        except (AttributeError, TypeError, ValueError):
            epochs = int(getattr(args, 'epochs', 0) or 0)
    return _Plan(config.prob, size, seed, config.granularity, config.full_res_epochs, int(epochs))


def _changes(old: _Plan, new: _Plan) -> List[str]:
    names = [('prob', '--trd-prob'), ('size', '--trd-size'), ('seed', 'the TRD seed'),
             ('granularity', '--trd-granularity'), ('full_res_epochs', '--trd-full-res-epochs')]
    if new.prob == 0 or old.prob == 0:
        names = names[:1]  # TRD turned on or off: the other settings had no plan on one side
    changes = [f'{option} {getattr(old, name):g} -> {getattr(new, name):g}' if name == 'prob'
               else f'{option} {getattr(old, name)} -> {getattr(new, name)}'
               for name, option in names if getattr(old, name) != getattr(new, name)]
    moves_plan = 'epoch' in (old.granularity, new.granularity) or old.full_res_epochs or new.full_res_epochs
    if old.epochs != new.epochs and moves_plan and old.prob and new.prob:
        changes.append(f'scheduled epochs {old.epochs} -> {new.epochs}')
    return changes


def plan_from(schedule: Optional[TRDSchedule], size: str, start: int) -> str:
    """What the epochs from ``start`` on run under ``schedule``, in words."""
    if schedule is None or schedule.prob == 0 or start >= schedule.window_epochs:
        return 'all at full size'
    if schedule.granularity == 'epoch':
        reduced = [e for e in schedule.reduced_epochs() if e >= start]
        listed = ', '.join(str(e) for e in reduced[:8]) + (', ...' if len(reduced) > 8 else '')
        return f'{len(reduced)} whole epochs at {size}' + (f' ({listed})' if reduced else '')
    last = schedule.total_epochs - 1
    tail = f', full size in {schedule.window_epochs}-{last}' if schedule.window_epochs <= last else ''
    return f'{schedule.prob:g} of the batches at {size} in epochs {start}-{schedule.window_epochs - 1}{tail}'


def _start_epoch(checkpoint: dict, args: argparse.Namespace) -> int:
    """The first epoch the resumed run trains, as train.py decides it (timm's resume rule, ``--start-epoch`` first)."""
    if getattr(args, 'start_epoch', None) is not None:
        return int(args.start_epoch)
    epoch = int(checkpoint.get('epoch', -1))
    return epoch + 1 if checkpoint.get('version', 1) > 1 else epoch


def read_checkpoint(path) -> dict:
    """A training checkpoint's entries other than tensors (memory-mapped, not loaded), as timm's
    ``load_checkpoint_metadata`` reads them (``torch.load`` on a timm without it); raises on a file cut off mid-write
    or one that is not a training checkpoint."""
    try:
        from timm.utils import load_checkpoint_metadata
    except ImportError:  # timm < 1.0.31
        load_checkpoint_metadata = None
    if load_checkpoint_metadata is not None:
        checkpoint = load_checkpoint_metadata(str(path))
    else:
        import torch
        checkpoint = torch.load(str(path), map_location='cpu', weights_only=False, mmap=True)
    if not isinstance(checkpoint, dict) or 'epoch' not in checkpoint:
        raise ValueError('not a training checkpoint (no epoch)')
    return checkpoint


def resume_state(args: argparse.Namespace, epochs: int, primary: bool) -> Optional[ResumeState]:
    """For a run with ``--resume``: compare the checkpoint's TRD plan with the run's (``args`` as the plugin checked
    them, ``epochs`` the run's scheduled count), log a change in one line (when ``primary``), and return what the
    epochs before the resume served. None without ``--resume``."""
    path = getattr(args, 'resume', None)
    if not path:
        return None
    new = _plan(args, epochs)
    try:
        checkpoint = read_checkpoint(path)
    except Exception as e:  # noqa: BLE001 - train.py's own resume reports an unreadable file; we only say what follows
        if new.prob and primary:
            _logger.warning(f'TRD: cannot read the TRD settings of --resume {path} ({type(e).__name__}: {e}); '
                            f'train_trd_saved_cum counts the epochs of this run only')
        return ResumeState(start_epoch=0)
    start = _start_epoch(checkpoint, args)
    saved = checkpoint.get('args')
    saved = saved if isinstance(saved, argparse.Namespace) else argparse.Namespace()
    record = getattr(saved, SERVED, None)
    trained_with_trd = float(getattr(saved, 'trd_prob', 0) or 0) > 0
    try:
        old = _plan(saved)
    except TRDConfigError:
        old = None
    changes = _changes(old, new) if old is not None else ['(settings the checkpoint holds are not readable)']

    if isinstance(record, dict):
        state = ResumeState(start, {int(e): float(v) for e, v in record.items() if int(e) < start}, not changes)
        known = len(state.served)
        past = (f'train_trd_saved_cum counts epochs 0-{start - 1} as the checkpoint records them' if known == start
                else f'the checkpoint records what {known} of epochs 0-{start - 1} served; train_trd_saved_cum '
                     f'counts those and the epochs from {start} on')
    elif not trained_with_trd:
        state = ResumeState(start, {e: 1.0 for e in range(start)})
        past = f'train_trd_saved_cum counts epochs 0-{start - 1} at full size, as the checkpoint trained them'
    else:  # an earlier timm-trd: no record; the plan is what those epochs served, if it is still the same plan
        state = ResumeState(start, past_at_plan=not changes)
        past = (f'the checkpoint does not record what epochs 0-{start - 1} served (an earlier timm-trd), so '
                f'train_trd_saved_cum restarts: it counts epochs {start} on only')
    partial = getattr(saved, PARTIAL, None)
    if isinstance(partial, dict) and isinstance(record, dict):
        state.partial = {int(e): [float(v[0]), float(v[1])] for e, v in partial.items()
                         if int(e) < start and int(e) not in state.served}
        cut = start - 1
        if cut in state.partial and primary and new.prob:
            _logger.info(f'TRD: --resume {path} is a recovery checkpoint of epoch {cut}, written after '
                         f'{state.partial[cut][1]:.0%} of its batches; timm goes on at epoch {start}, so the rest of '
                         f'epoch {cut} is not trained, and train_trd_saved_cum counts only the batches of it that '
                         f'were served')
    if changes and primary and start > 0:
        old_plan = plan_from(old.schedule(), old.size, start) if old is not None else 'unknown'
        new_plan = plan_from(new.schedule(), new.size, start)
        past = f'; {past}' if new.prob else ''  # TRD off: no TRD figures from there on
        _logger.info(f'TRD: --resume {path} goes on at epoch {start} with other TRD settings than it was trained '
                     f'with ({", ".join(changes)}); from there on: {new_plan}, where the checkpoint\'s settings had '
                     f'{old_plan}{past}')
    return state


def record_served(args: argparse.Namespace, served: Dict[int, float],
                  partial: Optional[Dict[int, List[float]]] = None) -> None:
    """Write the served compute shares (and those of epochs a recovery checkpoint cut) into train.py's args, where
    its next checkpoint picks them up."""
    setattr(args, SERVED, {int(e): round(float(s), 6) for e, s in sorted(served.items())})
    if partial:
        setattr(args, PARTIAL, {int(e): list(v) for e, v in sorted(partial.items())})
