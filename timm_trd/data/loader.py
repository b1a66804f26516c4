"""The training loader train.py iterates, with TRD attached.

:class:`TRDLoader` wraps the loader that timm's ``create_loader`` built (a ``PrefetchLoader`` or a plain
``DataLoader``) and stands in for it everywhere train.py looks: ``len()``, ``sampler``,
``batch_sampler``, ``dataset``, ``mixup_enabled``. On the device path it shrinks the batches that the
plan marks as reduced, on the training device (a CPU batch is moved there first, see :mod:`timm_trd.data.resize`);
on the loader path the workers already made them small. On both it measures what was really served: batches
per size, images per second of step time per size, data wait (per batch, for :mod:`timm_trd.data.data_wait`).

Step time is the wall time between handing a batch to train.py and its request for the next one. On an
accelerator that is mostly kernel launches (the work runs asynchronously), so the step rate is only
reported for batches that live on the CPU; the data wait is reported everywhere.
"""

import hashlib
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

from .resize import downsample, to_training_device
from ..errors import TRDConfigError
from ..plan.schedule import TRDSchedule


@dataclass
class SizeStats:
    batches: int = 0
    images: int = 0
    step_s: float = 0.0  # time the training loop spent between receiving a batch and asking for the next
    data_s: float = 0.0  # time spent waiting for the batch (and moving and resizing it, on the device path)


@dataclass
class EpochStats:
    """What one pass over the loader served, by spatial size ``(h, w)``."""
    epoch: int
    sizes: Dict[Tuple[int, int], SizeStats] = field(default_factory=dict)
    order: List[Tuple[int, int]] = field(default_factory=list)  # the size of each batch, in order
    on_cpu: bool = True  # every batch was a CPU tensor, so step times are real compute times
    wait_s: List[float] = field(default_factory=list)  # per batch: waiting for the inner loader only
    step_s: List[float] = field(default_factory=list)  # per batch: the training loop's time with it

    def record(self, hw: Tuple[int, int], images: int) -> SizeStats:
        self.order.append(hw)
        stats = self.sizes.setdefault(hw, SizeStats())
        stats.batches += 1
        stats.images += images
        return stats

    def batches(self, hw: Optional[Tuple[int, int]] = None) -> int:
        if hw is not None:
            return self.sizes[hw].batches if hw in self.sizes else 0
        return sum(s.batches for s in self.sizes.values())

    def fingerprint(self) -> str:
        """A short digest of the sizes served, in order: equal on ranks that served the same sequence."""
        return hashlib.sha1(repr(self.order).encode()).hexdigest()[:16]

    def data_ms_per_batch(self, hw: Tuple[int, int]) -> Optional[float]:
        """Mean data wait per batch of this size; None when no batch of it was served."""
        stats = self.sizes.get(hw)
        return 1e3 * stats.data_s / stats.batches if stats and stats.batches else None

    def images_per_s(self, hw: Tuple[int, int]) -> Optional[float]:
        """Images per second of step time at this size; None without batches or off the CPU (see above)."""
        stats = self.sizes.get(hw)
        if not self.on_cpu or not stats or stats.step_s <= 0:
            return None
        return stats.images / stats.step_s


def _input_hw(batch_input) -> Tuple[int, int]:
    return tuple(batch_input.shape[-2:])


class TRDLoader:
    """Serve train.py's training batches following a :class:`TRDSchedule`.

    Args:
        loader: the loader timm's ``create_loader`` returned.
        schedule: the run's plan.
        full_hw, reduced_hw: the two spatial sizes.
        resize: True on the device path (shrink planned batches here), False on the loader path.
        device: the device train.py trains on; on the device path a CPU batch is moved there before it is shrunk.
    """

    def __init__(self, loader, schedule: TRDSchedule, full_hw, reduced_hw, resize: bool, device=None, stream=None):
        self.loader = loader
        self.stream = stream  # loader path on a streamed dataset: the PlannedStream its workers read the plan from
        self.device = device  # the device train.py trains on (None: resize wherever the batch is)
        self.schedule = schedule
        self.full_hw = tuple(full_hw)
        self.reduced_hw = tuple(reduced_hw)
        self.resize = resize
        self.epoch = 0
        self.last_stats: Optional[EpochStats] = None

    @property
    def path(self) -> str:
        return 'device' if self.resize else 'loader'

    def set_schedule(self, schedule: TRDSchedule) -> None:
        """Follow another plan from the next epoch on (the plugin replaces it once train.py's scheduler has
        said how many epochs run); on the loader path timm's batch sampler follows it too."""
        self.schedule = schedule
        batch_sampler = getattr(self.loader, 'batch_sampler', None)
        if hasattr(batch_sampler, 'trd_schedule'):
            batch_sampler.trd_schedule = schedule

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose plan the next pass follows (and tell timm's scheduled sampler)."""
        self.epoch = epoch
        batch_sampler = getattr(self.loader, 'batch_sampler', None)
        if not self.resize and hasattr(batch_sampler, 'set_epoch'):
            batch_sampler.set_epoch(epoch)
        if self.stream is not None:
            self.stream.publish(self.plan())

    def plan(self, epoch: Optional[int] = None):
        return self.schedule.plan(self.epoch if epoch is None else epoch, len(self.loader))

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        plan = self.plan()
        stats = EpochStats(self.epoch)
        self.last_stats = stats
        inner = iter(self.loader)
        index = 0
        while True:
            start = time.perf_counter()
            try:
                batch_input, target = next(inner)
            except StopIteration:
                self._check_complete(index)
                return
            received = time.perf_counter()
            if self.resize:
                batch_input, target = to_training_device(batch_input, target, self.device)
                if index < len(plan) and plan[index]:
                    batch_input = downsample(batch_input, self.reduced_hw)
            served = time.perf_counter()
            if self.stream is not None:
                self._check_planned(index, plan, _input_hw(batch_input))
            size_stats = stats.record(_input_hw(batch_input), int(batch_input.shape[0]))
            stats.on_cpu = stats.on_cpu and batch_input.device.type == 'cpu'
            size_stats.data_s += served - start
            stats.wait_s.append(received - start)
            yield batch_input, target
            step = time.perf_counter() - served
            size_stats.step_s += step
            stats.step_s.append(step)
            index += 1

    def _check_planned(self, index: int, plan, hw) -> None:
        """Loader path on a streamed dataset: the workers chose each batch's size from where they expect it to land
        (:mod:`timm_trd.data.streams`); a batch elsewhere would train silently off the plan, so it stops the run."""
        expected = self.reduced_hw if index < len(plan) and plan[index] else self.full_hw
        if tuple(hw) != tuple(expected):
            raise TRDConfigError(
                f'batch {index} of epoch {self.epoch} came at {hw[0]}x{hw[1]} where the plan has {expected[0]}x'
                f'{expected[1]}: the data workers did not serve whole batches in turn; use --trd-mode device')

    def _check_complete(self, served: int) -> None:
        """Under DDP, a rank whose loader ends before its length would leave the others waiting in their next
        step's collective until the process group times out: stop this rank with the reason instead (the launcher
        ends the others). Seen with streamed datasets whose workers serve unequal shares (see
        :mod:`timm_trd.data.streams`); a map-style loader always serves its length."""
        expected = len(self.loader)
        dist = torch.distributed
        if served >= expected or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        raise TRDConfigError(
            f'rank {dist.get_rank()}: the training loader ended after {served} of its {expected} batches in epoch '
            f'{self.epoch}, and the other ranks would wait for it in their next step; give every rank the same '
            f'number of batches (a streamed dataset: at least processes x --workers shards)')

    # train.py reads these from its loader; the setter matters for --mixup-off-epoch.
    @property
    def mixup_enabled(self):
        return getattr(self.loader, 'mixup_enabled', False)

    @mixup_enabled.setter
    def mixup_enabled(self, value):
        self.loader.mixup_enabled = value

    def __getattr__(self, name):
        # only called for attributes TRDLoader itself lacks: sampler, batch_sampler, dataset, ...
        if name == 'loader':
            raise AttributeError(name)
        return getattr(self.loader, name)

