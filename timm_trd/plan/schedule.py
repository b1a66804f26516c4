"""Which training batches run at the reduced resolution: the TRD plan.

Pure logic, no I/O and no process state. Every answer is a function of the settings, the epoch and
the number of batches, so each DDP rank and each resumed run computes the same plan on its own:

- inside the TRD window (all epochs but the full-resolution tail), an epoch of ``n`` batches holds
  exactly ``round(prob * n)`` reduced batches (halves round up), not a random count;
- their positions are a random subset drawn from a generator seeded by ``(seed, epoch)`` alone;
- with ``granularity='epoch'`` whole epochs are reduced instead: ``round(prob * window)`` of them,
  drawn from a generator seeded by ``seed`` alone.
"""

import math
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

GRANULARITIES = ('batch', 'epoch')


def round_half_up(x: float) -> int:
    """Round to the nearest integer, halves up (Python's ``round`` sends 2.5 to 2)."""
    return int(math.floor(x + 0.5 + 1e-9))


def area_ratio(reduced_hw, full_hw) -> float:
    """Pixels of the reduced size over pixels of the full size: what a convolutional network's FLOPs follow."""
    return (reduced_hw[0] * reduced_hw[1]) / (full_hw[0] * full_hw[1])


def compute_share(prob: float, reduced_hw, full_hw) -> float:
    """The ideal compute of a TRD run relative to an all-full-size run: ``1 - p (1 - (s/S)^2)``."""
    return 1.0 - prob * (1.0 - area_ratio(reduced_hw, full_hw))


@dataclass(frozen=True)
class TRDSchedule:
    """The plan of reduced batches for a whole run.

    Args:
        prob: share of the batches (or epochs) inside the window that run at reduced size, in [0, 1].
        total_epochs: epochs the run trains for: the count train.py's scheduler runs
            (see :mod:`timm_trd.plan.epochs`).
        full_res_epochs: the last ``full_res_epochs`` epochs run entirely at full size.
        granularity: ``'batch'`` reduces single batches, ``'epoch'`` whole epochs.
        seed: the only source of randomness for the positions.
    """
    prob: float
    total_epochs: int
    full_res_epochs: int = 0
    granularity: str = 'batch'
    seed: int = 0

    def __post_init__(self):
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f'prob must lie in [0, 1], got {self.prob}')
        if self.total_epochs < 1:
            raise ValueError(f'total_epochs must be at least 1, got {self.total_epochs}')
        if not 0 <= self.full_res_epochs < self.total_epochs:
            raise ValueError(
                f'full_res_epochs must lie in [0, total_epochs={self.total_epochs}), got {self.full_res_epochs}')
        if self.granularity not in GRANULARITIES:
            raise ValueError(f'granularity must be one of {GRANULARITIES}, got {self.granularity!r}')
        if self.seed < 0:
            raise ValueError(f'seed must be non-negative, got {self.seed}')

    @property
    def window_epochs(self) -> int:
        """Epochs ``0 .. window_epochs - 1`` may hold reduced batches; the rest run at full size."""
        return self.total_epochs - self.full_res_epochs

    def reduced_epochs(self) -> List[int]:
        """With epoch granularity: the sorted epochs that run entirely at reduced size."""
        count = round_half_up(self.prob * self.window_epochs)
        order = np.random.default_rng([self.seed]).permutation(self.window_epochs)
        return sorted(int(e) for e in order[:count])

    def plan(self, epoch: int, num_batches: int) -> np.ndarray:
        """A boolean mask over the epoch's batches: True where the batch runs at reduced size."""
        if num_batches < 0:
            raise ValueError(f'num_batches must be non-negative, got {num_batches}')
        mask = np.zeros(num_batches, dtype=bool)
        if epoch >= self.window_epochs or self.prob == 0.0:
            return mask
        if self.granularity == 'epoch':
            mask[:] = epoch in self.reduced_epochs()
            return mask
        count = round_half_up(self.prob * num_batches)
        positions = np.random.default_rng([self.seed, epoch]).permutation(num_batches)[:count]
        mask[positions] = True
        return mask

    def reduced_count(self, epoch: int, num_batches: int) -> int:
        """How many of the epoch's ``num_batches`` batches run at reduced size."""
        return int(self.plan(epoch, num_batches).sum())


def epoch_share(schedule: TRDSchedule) -> float:
    """The share of the TRD window's epochs that run reduced (epoch granularity): ``prob`` rounded to whole epochs."""
    return len(schedule.reduced_epochs()) / schedule.window_epochs


def epoch_granularity_problem(schedule: TRDSchedule) -> Optional[str]:
    """With epoch granularity, a window too short for ``prob`` to alternate (all of it reduced, or none of it):
    the reason in one line, else None."""
    prob, window = schedule.prob, schedule.window_epochs
    if schedule.granularity != 'epoch' or prob in (0.0, 1.0):
        return None
    count = len(schedule.reduced_epochs())
    if 0 < count < window:
        return None
    need = next(n for n in range(window + 1, 100_000) if 0 < round_half_up(prob * n) < n)
    return (f'--trd-granularity epoch with --trd-prob {prob:g} reduces {count} of the {window} TRD epoch'
            f'{"s" if window != 1 else ""} (a share of {count / window:g}, not {prob:g}): use --trd-granularity batch, '
            f'or {need} or more TRD epochs')
