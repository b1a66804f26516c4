"""The loader path: data workers crop straight to the reduced size.

Built on timm's scheduled batching (timm >= 1.0.29): ``create_loader(input_size_choices=...)`` wraps
the dataset in ``ScheduledTransformDataset`` (one transform per size) and batches it with a
``ScheduledBatchSampler``, whose batches carry the index of the transform to apply. timm draws each
batch's size at random; :class:`TRDBatchSampler` keeps everything else of timm's sampler and replaces
only that draw with the TRD plan, so an epoch holds exactly the planned reduced batches, in the
planned positions, on every rank.
"""

import contextlib
from typing import Optional

from ..plan.rng import preserved_rng
from ..plan.schedule import TRDSchedule

try:
    import timm.data.loader as _timm_loader
    from timm.data.scheduled_sampler import ScheduledBatchSampler
except ImportError:  # timm < 1.0.29
    _timm_loader = None
    ScheduledBatchSampler = None

FULL, REDUCED = 0, 1  # transform choice indices, in the order we pass input_size_choices


def loader_path_unavailable() -> Optional[str]:
    """Why the installed timm cannot run the loader path, or None when it can."""
    if ScheduledBatchSampler is None:
        import timm
        return f'timm {timm.__version__} has no ScheduledBatchSampler (it came with timm 1.0.29)'
    if not hasattr(ScheduledBatchSampler, '_create_schedule') or not hasattr(_timm_loader, 'ScheduledBatchSampler'):
        import timm
        return f'timm {timm.__version__} changed its ScheduledBatchSampler in a way timm-trd does not know'
    return None


if ScheduledBatchSampler is not None:
    class TRDBatchSampler(ScheduledBatchSampler):
        """timm's ``ScheduledBatchSampler`` whose per-epoch size choices follow a :class:`TRDSchedule`.

        Choice 0 is the full size, choice 1 the reduced size. The schedule is not shuffled again:
        the plan already places the reduced batches at random positions. timm's ``create_loader`` builds it
        with its own arguments, so the plan comes from the class (see :func:`trd_batch_sampler`) unless given.
        """
        default_schedule: Optional[TRDSchedule] = None

        def __init__(self, sampler, *, trd_schedule: Optional[TRDSchedule] = None, **kwargs):
            kwargs['shuffle_schedule'] = False
            super().__init__(sampler, **kwargs)
            if len(self.batch_sizes) != 2:
                raise ValueError('TRDBatchSampler expects exactly two choices: full size, reduced size')
            self.trd_schedule = trd_schedule or self.default_schedule
            if self.trd_schedule is None:
                raise ValueError('TRDBatchSampler needs a TRD schedule')

        def _create_schedule(self, epoch: int):
            plan = self.trd_schedule.plan(epoch, len(self))
            return tuple((REDUCED if reduced else FULL, self.batch_sizes[REDUCED if reduced else FULL])
                         for reduced in plan)
else:
    TRDBatchSampler = None


@contextlib.contextmanager
def trd_batch_sampler(schedule: TRDSchedule):
    """Make timm's ``create_loader`` build a :class:`TRDBatchSampler` following ``schedule`` while the block runs.

    What stands in timm's module for ``ScheduledBatchSampler`` is a class (a subclass of timm's), so
    ``isinstance`` checks against it keep working.
    """
    original = _timm_loader.ScheduledBatchSampler
    _timm_loader.ScheduledBatchSampler = type('TRDBatchSampler', (TRDBatchSampler,), {'default_schedule': schedule})
    try:
        yield
    finally:
        _timm_loader.ScheduledBatchSampler = original


def sampler_mismatch(batch_sampler, schedule: TRDSchedule, epoch: int = 0) -> Optional[str]:
    """Start-up self-check of the loader path: walk one epoch of the batch sampler (indices only, no image is
    loaded) and compare the transform choice of every batch, and the count, with the plan.

    Returns what differs, or None. The walk does not disturb the training run: RNG states are restored.
    """
    if TRDBatchSampler is None or not isinstance(batch_sampler, TRDBatchSampler):
        return f'timm built a {type(batch_sampler).__name__}, not the TRD batch sampler'
    planned = schedule.plan(epoch, len(batch_sampler)).tolist()
    with preserved_rng():
        previous = getattr(batch_sampler, 'epoch', None)
        batch_sampler.set_epoch(epoch)
        served = [batch[0][1] == REDUCED for batch in batch_sampler if batch]
        if previous is not None:
            batch_sampler.set_epoch(previous)
    if len(served) != len(planned):
        return f'timm\'s scheduled sampler served {len(served)} batches where the plan has {len(planned)}'
    if served != planned:
        return 'timm\'s scheduled sampler did not follow the TRD plan in epoch 0'
    return None
