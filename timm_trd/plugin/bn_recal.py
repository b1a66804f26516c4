"""BatchNorm recalibration at full size (``--trd-bn-recal N``).

During TRD training the BatchNorm running statistics are a moving average over full-size and reduced
batches, while validation (and the checkpoint train.py keeps as best) runs at full size. Before each
validation, and after the last epoch (so that ``last.pth.tar`` has them, also in a run without validation),
:class:`BNRecalibrator` recomputes them over ``N`` full-size training batches per process: torch's ``update_bn``
(train-mode forward passes, plain average, no gradients) on the bare model, then, under DDP, the average over the
ranks with timm's ``distribute_bn``, so every rank validates and saves the same model. A model that has not
trained since its last recalibration (the last epoch's validation, after the recalibration for the checkpoint)
is not recomputed again.

It must not change the training run and holds nothing between calls:

- each call builds its own loader with timm's ``create_loader`` (train.py's settings at the full size, no mixup,
  on a shallow copy of the training dataset) over exactly ``N x batch`` images per process, so no batch is loaded
  that is not used, and its worker processes (train.py's ``--workers``, at most ``N``; not persistent) end with the
  call, so nothing (processes, shared memory) is held between recalibrations;
- the images are a new sample each time, drawn by :func:`sample_indices` from ``(seed, epoch)``: reproducible,
  the same plan on every rank (disjoint images per rank), and the same for the model and its EMA in one epoch;
  their augmentation (train.py's, at the full size) is seeded from ``(seed, epoch, rank)`` too, so recalibrating
  a saved model again on the same sample gives the statistics saved with it;
  a streamed (iterable) dataset is told the epoch with its ``set_epoch`` (the value train.py gave it for this
  epoch) and its first ``N`` batches are used, read by train.py's number of workers (its reader, shared with the
  training dataset, is configured for it), which may read ahead up to two batches each, dropped;
- every RNG it could touch (torch on CPU and the accelerator, Python's ``random``, NumPy) is restored afterwards.
"""

import copy
import itertools
import logging
import random
import time
from typing import List

import numpy as np
import torch

from ..data.dataset_view import DatasetView
from ..plan.rng import preserved_rng

_logger = logging.getLogger('timm_trd')

def recalibrate_bn(model: torch.nn.Module, batches, num_batches: int, channels_last: bool = False) -> int:
    """Replace the BatchNorm running statistics of ``model`` (DDP / compile / EMA wrappers are unwrapped) by
    their average over the first ``num_batches`` inputs of ``batches`` (``(input, target)`` pairs or inputs).

    Returns the number of batches used. RNG states are not touched here; see :class:`BNRecalibrator`.
    """
    from timm.utils import unwrap_model
    from torch.optim.swa_utils import update_bn

    bare = unwrap_model(model)
    param = next(bare.parameters())
    used = 0

    def inputs():
        nonlocal used
        for item in itertools.islice(batches, num_batches):
            x = item[0] if isinstance(item, (list, tuple)) else item
            x = x.to(device=param.device, dtype=param.dtype if param.dtype.is_floating_point else None)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            used += 1
            yield x

    was_training = bare.training
    with torch.no_grad():
        update_bn(inputs(), bare)
    bare.train(was_training)
    return used


def sample_indices(length: int, per_rank: int, world_size: int, rank: int, seed: int, epoch: int) -> List[int]:
    """The dataset indices ``rank`` recalibrates on in ``epoch``: its slice of one permutation drawn from
    ``(seed, epoch)``, the same on every rank; ``per_rank`` images each, fewer when the dataset is smaller."""
    per_rank = min(per_rank, length // max(world_size, 1))
    order = np.random.default_rng([abs(int(seed)), int(epoch)]).permutation(length)
    return order[rank * per_rank:(rank + 1) * per_rank].tolist()


def _seed_augmentation(seed: int, epoch: int, rank: int, device: torch.device) -> None:
    """Seed the random streams the recalibration loader draws from (its augmentation, its workers' seeds) from
    ``(seed, epoch, rank)``, so a recalibration is reproducible; the caller restores the run's streams after."""
    value = int(np.random.SeedSequence([abs(int(seed)), int(epoch), int(rank)]).generate_state(1)[0])
    torch.random.default_generator.manual_seed(value)
    if device.type == 'cuda':
        torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()] \
            .manual_seed(value)
    random.seed(value)
    np.random.seed(value)


def _close(iterator) -> None:
    """End a loader iterator now, with its worker processes (a generator, e.g. timm's PrefetchLoader, is closed,
    which drops the DataLoader iterator inside it)."""
    for name in ('close', '_shutdown_workers'):
        end = getattr(iterator, name, None)
        if callable(end):
            end()


class BNRecalibrator:
    """Recompute BatchNorm statistics at full size before each validation train.py runs and after the last epoch.

    Args:
        create_loader: timm's ``create_loader`` (train.py's module-level one, before the plugin wrapped it).
        dataset, args, kwargs: what train.py passed for its training loader.
        num_batches: batches per process.
        distributed, world_size, rank: train.py's DDP settings (``distributed``: average the statistics over the
            ranks; ``world_size`` and ``rank`` choose this process's slice of the sample).
        seed: the seed of the samples (with the epoch).
    """

    def __init__(self, create_loader, dataset, args, kwargs, num_batches: int, distributed: bool = False,
                 world_size: int = 1, channels_last: bool = False, primary: bool = True, rank: int = 0, seed: int = 0):
        self.num_batches = num_batches
        self.distributed, self.world_size, self.rank = distributed and world_size > 1, max(int(world_size), 1), rank
        self.channels_last, self.primary, self.seed = channels_last, primary, seed
        self.create_loader, self.args = create_loader, args
        # a shallow copy: timm's create_loader sets the transform on the dataset it gets, and the training loader
        # keeps using its own
        self.dataset = copy.copy(dataset)
        self.batch_size = int(kwargs.get('batch_size', 1))
        self.iterable = isinstance(dataset, torch.utils.data.IterableDataset)
        # a streamed dataset's reader is shared with the training dataset (shallow copy) and create_loader tells it
        # the worker count: keep train.py's; a map-style sample needs no more workers than batches
        workers = int(kwargs.get('num_workers', 0) or 0)
        self.workers = workers if self.iterable else min(workers, num_batches)
        self.kwargs = dict(kwargs, collate_fn=None,  # no mixup / CutMix: the statistics of the images validation sees
                           distributed=False,  # each rank loads its own slice of one sample (sample_indices)
                           num_aug_repeats=0, use_multi_epochs_loader=False,  # samplers that would hold workers
                           num_workers=self.workers, persistent_workers=False)
        self.full_hw = tuple(kwargs.get('input_size', args[0] if args else (0, 0, 0))[-2:])
        self._fresh = set()  # ids of the bare models recalibrated since the last training step

    def build_loader(self, epoch: int):
        """The loader of one recalibration: ``num_batches`` batches of this rank's sample for ``epoch``."""
        if self.iterable:
            dataset = copy.copy(self.dataset)
            if hasattr(dataset, 'set_epoch'):
                dataset.set_epoch(epoch)
        else:
            dataset = DatasetView(self.dataset, sample_indices(len(self.dataset), self.num_batches * self.batch_size,
                                                           self.world_size, self.rank, self.seed, epoch))
        return self.create_loader(dataset, *self.args, **self.kwargs)

    def trained(self) -> None:
        """The models train again: the next call recomputes."""
        self._fresh.clear()

    def __call__(self, model: torch.nn.Module, label: str = '', epoch: int = 0,
                 why: str = 'before validation') -> float:
        """Recalibrate ``model`` on the sample of ``epoch``; returns the seconds it took (0 when it was fresh)."""
        from timm.utils import unwrap_model
        key = id(unwrap_model(model))
        if key in self._fresh:
            return 0.0
        start = time.perf_counter()
        device = next(model.parameters()).device
        with preserved_rng(device):
            _seed_augmentation(self.seed, epoch, self.rank, device)
            iterator = iter(self.build_loader(epoch))
            try:
                used = recalibrate_bn(model, iterator, self.num_batches, self.channels_last)
            finally:
                _close(iterator)
            del iterator
            if self.distributed:
                from timm.utils import distribute_bn
                distribute_bn(model, self.world_size, reduce=True)
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        self._fresh.add(key)
        if self.primary:
            ranks = f' per process, averaged over {self.world_size} processes' if self.distributed else ''
            _logger.info(
                f'TRD: BatchNorm statistics{label} recomputed at {self.full_hw[0]}x{self.full_hw[1]} on {used} '
                f'training batches{ranks} in {seconds:.1f} s ({why}; sample of epoch {epoch})')
        return seconds

    def plan_line(self, validation: bool, ema_on_cpu: bool = False) -> str:
        """What ``--trd-bn-recal`` will do in this run, said once at start."""
        line = (f'TRD: --trd-bn-recal {self.num_batches}: BatchNorm statistics recomputed at {self.full_hw[0]}x'
                f'{self.full_hw[1]} on {self.num_batches} training batches per process (a new sample each time, '
                f'{self.workers} worker{"s" if self.workers != 1 else ""} started per recalibration)')
        if validation:
            line += (' before each validation and after the last epoch, so every end-of-epoch checkpoint train.py '
                     'writes has them')
        else:
            line += (' once, after the last epoch: this run has no validation loader (--val-split \'\'), so only '
                     'the last checkpoint has them; earlier checkpoints (and a model_best chosen by train loss before '
                     'the last epoch) keep the mixed statistics')
        if ema_on_cpu:
            line += ('; the EMA kept on the CPU (--model-ema-force-cpu) is not recalibrated, as train.py does not '
                     'validate it')
        return line
