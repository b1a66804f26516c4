"""What TRD says in the log: one line at start, one line per epoch, and the epoch's columns for summary.csv.

Only the primary process logs; every process computes the figures (they go into train.py's metrics).
A figure that has no batches behind it (no reduced batch this epoch, say) is left out rather than printed
as ``nan``; step rates are left out for batches on an accelerator (see :mod:`timm_trd.data.loader`).
"""

from typing import Optional

import torch

from ..data.loader import EpochStats, TRDLoader
from ..plan.schedule import compute_share, epoch_share


def start_line(config, schedule, path: str, why: str, full_hw, reduced_hw) -> str:
    """What the run serves: with epoch granularity, the whole epochs ``--trd-prob`` rounds to (the share of the
    window they are, and the ideal compute from that share, not from ``--trd-prob``)."""
    where = 'data workers crop to the small size' if path == 'loader' else 'antialiased downsample of the collated batch'
    if config.granularity == 'epoch':
        share = epoch_share(schedule)
        reduced = schedule.reduced_epochs()
        what = (f'{len(reduced)} of {schedule.window_epochs} epochs (share {share:.3g}; --trd-prob {config.prob:g} '
                f'in whole epochs: {", ".join(map(str, reduced))})')
    else:
        share, what = config.prob, f'{config.prob:g} of the batches'
    ideal = compute_share(share, reduced_hw, full_hw)
    return (
        f'TRD: {what} at {reduced_hw[0]}x{reduced_hw[1]} instead of {full_hw[0]}x{full_hw[1]} '
        f'({config.granularity} granularity, epochs 0-{schedule.window_epochs - 1} of {schedule.total_epochs}, '
        f'seed {schedule.seed}); {path} path ({where}; {why}); ideal compute {ideal:.3f} of full size')


def _pair(values, unit: str, fmt: str) -> Optional[str]:
    """'12.3 img/s full, 4.5 img/s reduced' with the missing ones left out; None if both are missing."""
    parts = [f'{value:{fmt}} {unit} {name}' for name, value in values if value is not None]
    return ', '.join(parts) if parts else None


def epoch_line(epoch: int, loader: TRDLoader, stats: Optional[EpochStats], reduced: int, batches: int,
               share: float, saved: float, agree: Optional[bool]) -> str:
    rh, rw = loader.reduced_hw
    line = (f'TRD: epoch {epoch}: {reduced}/{batches} batches at {rh}x{rw} ({loader.path} path), '
            f'compute {share:.3f} of full size, {100 * saved:.1f}% saved so far')
    if stats is not None:
        sizes = (('full', loader.full_hw), ('reduced', loader.reduced_hw))
        rate = _pair([(name, stats.images_per_s(hw)) for name, hw in sizes], 'img/s', '.1f')
        wait = _pair([(name, stats.data_ms_per_batch(hw)) for name, hw in sizes], 'ms', '.1f')
        if rate:
            line += f'; step rate {rate}'
        if wait:
            line += f'; data wait per batch {wait} (per process)'
        line += f'; order {stats.fingerprint()[:8]}'
    if agree:
        line += f'; all {torch.distributed.get_world_size()} ranks served the same sizes in the same order'
    return line


def ranks_agree(stats: Optional[EpochStats]) -> Optional[bool]:
    """Whether every DDP rank served the same sequence of sizes this epoch; None when not distributed."""
    dist = torch.distributed
    if stats is None or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    prints = [None] * dist.get_world_size()
    dist.all_gather_object(prints, stats.fingerprint())
    return len(set(prints)) == 1


def time_columns(stats: Optional[EpochStats], seconds: float, world_size: int = 1) -> dict:
    """The epoch's wall time (``train_one_epoch`` on this process, data loading included) and the job's training
    images per second (this process's images times the ranks, over that time): the saving in time, beside the
    compute columns (``train_trd_epoch_s``, ``train_trd_img_per_s`` in summary.csv)."""
    images = sum(size.images for size in stats.sizes.values()) if stats is not None else 0
    return {'trd_epoch_s': round(seconds, 3),
            'trd_img_per_s': round(images * world_size / seconds, 2) if seconds > 0 else 0.0}
