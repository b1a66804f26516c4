"""Say once when reduced steps wait for data: TRD's saving is then lost to the data loader, not the accelerator.

A reduced step computes about a quarter of a full one (112 of 224 px), so the data loader has to deliver its
batches about four times as fast. When it cannot, the training loop waits in ``next(loader)`` and the wall-clock
saving goes. :class:`DataWaitCheck` looks at what :class:`~timm_trd.data.loader.TRDLoader` measured per batch: the time
spent waiting for the inner loader (not the device path's move and resize) and the time the training loop spent
with the batch until it asked for the next one.

It warns when **the reduced steps spend more than 25% of their wall time waiting** (wait / (wait + step) > 0.25):
each reduced step then takes at least 4/3 of its compute, which at ``--trd-prob 0.5 --trd-size 112`` (ideal compute
0.625) already costs a ninth of the saving (wall 0.667 instead of 0.625 of a full-size run), and the loss grows with
the wait. Compute-bound runs wait a few per cent of a step (2-5% measured on a busy 2-core CPU, ResNet-18/50 on
small images, one worker: handing over a ready batch costs a few ms), far from 25%. The first batch of each epoch
(worker start-up, an empty queue) is left out, and the check needs at least :data:`MIN_BATCHES` reduced batches
after it, so one stalled batch cannot trigger it. The mean, not the median, is judged: with several workers a
starved loader makes one batch in ``workers`` wait long and the others not at all.

On an accelerator the step time is what the Python loop spends (kernel launches, blocking when the launch queue
is full), so the share is the share of the loop's wall time spent waiting for data: the share the accelerator
can stand idle. Only the primary process warns, once per run, with its own figures.
"""

import math
from dataclasses import dataclass
from typing import Optional, Tuple

from .loader import EpochStats

THRESHOLD = 0.25
"""Warn when reduced steps spend more than this share of their wall time waiting for data."""

MIN_BATCHES = 8
"""Reduced batches (after each epoch's first batch) an epoch needs before it is judged."""


@dataclass
class StepTimes:
    """Mean per-batch figures at one size: waiting for data and the rest of the step, in milliseconds."""
    batches: int
    wait_ms: float
    step_ms: float

    @property
    def wait_share(self) -> float:
        total = self.wait_ms + self.step_ms
        return self.wait_ms / total if total > 0 else 0.0


def step_times(stats: EpochStats, hw: Tuple[int, int]) -> Optional[StepTimes]:
    """Mean wait and step of the batches of size ``hw``, the epoch's first batch left out; None without any."""
    pairs = [(w, s) for i, (size, w, s) in enumerate(zip(stats.order, stats.wait_s, stats.step_s))
             if i > 0 and size == hw]
    if not pairs:
        return None
    n = len(pairs)
    return StepTimes(n, 1e3 * sum(w for w, _ in pairs) / n, 1e3 * sum(s for _, s in pairs) / n)


def workers_to_keep_up(reduced: StepTimes, workers: int) -> int:
    """Workers per process that would deliver a reduced batch per reduced step, from the measured figures.

    Loader-bound, ``workers`` processes deliver one batch per (wait + step), so one worker needs ``workers`` times
    that per batch (the main process itself, at ``--workers 0``, needs the wait); a batch per step needs that time
    divided by the step. An estimate: full steps in between give the workers some slack."""
    per_batch_ms = reduced.wait_ms if workers == 0 else workers * (reduced.wait_ms + reduced.step_ms)
    return max(workers + 1, math.ceil(per_batch_ms / max(reduced.step_ms, 1e-6)))


class DataWaitCheck:
    """Judge each epoch's figures until the warning has been given once."""

    def __init__(self, workers: int, path: str, reduced_copy: Optional[str] = None):
        self.workers, self.path, self.reduced_copy = int(workers or 0), path, reduced_copy
        self.warned = False

    def __call__(self, stats: Optional[EpochStats], full_hw, reduced_hw) -> Optional[str]:
        """The warning for this epoch, or None (always None once it has been given)."""
        if self.warned or stats is None:
            return None
        reduced = step_times(stats, tuple(reduced_hw))
        if reduced is None or reduced.batches < MIN_BATCHES or reduced.wait_share <= THRESHOLD:
            return None
        self.warned = True
        return self.message(stats.epoch, reduced, step_times(stats, tuple(full_hw)), reduced_hw)

    def message(self, epoch: int, reduced: StepTimes, full: Optional[StepTimes], reduced_hw) -> str:
        rh, rw = reduced_hw
        line = (f'TRD: data-bound at {rh}x{rw}: in epoch {epoch} reduced steps waited {reduced.wait_ms:.1f} ms for '
                f'data per batch against {reduced.step_ms:.1f} ms of compute ({100 * reduced.wait_share:.0f}% of '
                f'their time, more than {100 * THRESHOLD:.0f}%)')
        if full is not None:
            line += f'; full-size steps waited {full.wait_ms:.1f} ms against {full.step_ms:.1f} ms'
            if full.wait_share > THRESHOLD:
                line += f' ({100 * full.wait_share:.0f}%: the run is data-bound at full size too)'
        line += (f' (rank 0). The saving of the reduced steps is lost to data loading: raise --workers (now '
                 f'{self.workers}; about {workers_to_keep_up(reduced, self.workers)} per process by these figures)')
        if self.path == 'loader' and not self.reduced_copy:
            line += (', or read reduced images from a pre-shrunk copy (timm-trd-reduced-copy TRAIN_DIR COPY_DIR, '
                     'then --trd-reduced-copy COPY_DIR)')
        elif self.path == 'device':
            line += (', or make reduced images small while loading them: the loader path (--trd-mode loader, a '
                     'map-style dataset) decodes them at a reduced scale, and reads them from --trd-reduced-copy')
        return line + '. Said once.'
