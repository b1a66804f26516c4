"""BatchNorm recalibration at full size (``--trd-bn-recal N``, ``--trd-bn-recal-every K``, ``--trd-bn-recal-last E``).

During TRD training the BatchNorm running statistics are a moving average over full-size and reduced
batches, while validation (and the checkpoint train.py keeps as best) runs at full size. :class:`BNRecalibrator`
recomputes them over ``N`` full-size training batches, counted over all processes (each process does
``ceil(N / processes)`` of them): torch's ``update_bn`` (train-mode forward passes, plain average, no gradients,
under train.py's autocast, as its validation) on the bare model, then, under DDP, the average over the ranks with
timm's ``distribute_bn``, so every rank validates and saves the same model.

When it runs (:func:`recal_due`): always after the last epoch, before train.py validates it and writes its last
checkpoint; before the validation of every K-th epoch (``--trd-bn-recal-every K``, default 1: every validation;
0: none) and of the last E epochs (``--trd-bn-recal-last E``). Other validations see the training statistics. A
model that has not trained since its last recalibration is not recomputed again.

It must not change the training run:

- a map-style dataset is read by one loader built at the first recalibration with timm's ``create_loader``
  (train.py's settings at the full size, no mixup, on a shallow copy of the training dataset) whose worker
  processes persist (``min(--workers, batches per process)`` of them), so a recalibration forks no process: each
  call hands the sampler exactly ``batches x batch`` keys, ``(image, seed)``, and the loader is run to its end, so
  no batch is loaded that is not used;
- the images are a new sample each time, drawn by :func:`sample_indices` from ``(seed, epoch)``: reproducible,
  the same plan on every rank (disjoint images per rank), the same for the model and its EMA in one epoch; each
  image's augmentation (train.py's, at the full size) is seeded from ``(seed, epoch, image)`` in whichever process
  loads it, so recalibrating a saved model again on the same sample gives the statistics saved with it;
- a streamed (iterable) dataset gets a loader of its own per call (train.py's number of workers, not persistent:
  its reader is told the epoch with ``set_epoch``) and its first batches are used;
- every RNG it could touch (torch on CPU and the accelerator, Python's ``random``, NumPy) is restored afterwards.
"""

import contextlib
import copy
import itertools
import logging
import math
import random
import time
from typing import List

import numpy as np
import torch

from ..data.dataset_view import OwnTransform
from ..plan.rng import preserved_rng

_logger = logging.getLogger('timm_trd')


def recalibrate_bn(model: torch.nn.Module, batches, num_batches: int, channels_last: bool = False,
                   autocast=contextlib.nullcontext) -> int:
    """Replace the BatchNorm running statistics of ``model`` (DDP / compile / EMA wrappers are unwrapped) by
    their average over the first ``num_batches`` inputs of ``batches`` (``(input, target)`` pairs or inputs),
    the forward passes run under ``autocast()`` (train.py's ``amp_autocast``).

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
    with torch.no_grad(), (autocast or contextlib.nullcontext)():
        update_bn(inputs(), bare)
    bare.train(was_training)
    return used


def recal_due(epoch: int, total_epochs: int, every: int, last: int) -> bool:
    """Whether the validation after ``epoch`` (0-based) of a ``total_epochs`` run is preceded by a recalibration:
    always for the last epoch; for every ``every``-th epoch (epoch + 1 a multiple of it; 0: none); for the last
    ``last`` epochs. Counted on the epoch number, so a resumed run keeps the same schedule."""
    return (epoch >= total_epochs - max(last, 1)) or (every > 0 and (epoch + 1) % every == 0)


def sample_indices(length: int, per_rank: int, world_size: int, rank: int, seed: int, epoch: int) -> List[int]:
    """The dataset indices ``rank`` recalibrates on in ``epoch``: its slice of one permutation drawn from
    ``(seed, epoch)``, the same on every rank; ``per_rank`` images each, fewer when the dataset is smaller."""
    per_rank = min(per_rank, length // max(world_size, 1))
    order = np.random.default_rng([abs(int(seed)), int(epoch)]).permutation(length)
    return order[rank * per_rank:(rank + 1) * per_rank].tolist()


def _seed_value(*parts) -> int:
    return int(np.random.SeedSequence([abs(int(p)) for p in parts]).generate_state(1)[0])


def _seed_all(value: int, device: torch.device = torch.device('cpu')) -> None:
    torch.random.default_generator.manual_seed(value)
    if device.type == 'cuda':
        torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()] \
            .manual_seed(value)
    random.seed(value)
    np.random.seed(value)


class _SeededImages(OwnTransform):
    """The training dataset read by ``(index, seed)`` keys: the random streams are seeded with ``seed`` before the
    image is loaded and augmented, so its augmentation does not depend on the process (or worker) that loads it,
    nor on what that process loaded before (the persistent workers keep their streams between calls)."""

    def __getitem__(self, key):
        index, seed = key
        _seed_all(seed)
        return self.dataset[index]


class _Keys(torch.utils.data.Sampler):
    """The sampler of the persistent loader: the keys of the current recalibration, set before each run."""

    def __init__(self):
        self.keys = []

    def __iter__(self):
        return iter(list(self.keys))

    def __len__(self):
        return len(self.keys)


def _close(iterator) -> None:
    """End a loader iterator now, with its worker processes (a generator, e.g. timm's PrefetchLoader, is closed,
    which drops the DataLoader iterator inside it)."""
    for name in ('close', '_shutdown_workers'):
        end = getattr(iterator, name, None)
        if callable(end):
            end()


class BNRecalibrator:
    """Recompute BatchNorm statistics at full size before the validations :func:`recal_due` names and after the
    last epoch.

    Args:
        create_loader: timm's ``create_loader`` (train.py's module-level one, before the plugin wrapped it).
        dataset, args, kwargs: what train.py passed for its training loader.
        num_batches: batches over all processes (each does ``ceil(num_batches / world_size)``).
        distributed, world_size, rank: train.py's DDP settings (``distributed``: average the statistics over the
            ranks; ``world_size`` and ``rank`` choose this process's slice of the sample).
        seed: the seed of the samples (with the epoch).
        every, last: the schedule before validations (:func:`recal_due`).
    """

    def __init__(self, create_loader, dataset, args, kwargs, num_batches: int, distributed: bool = False,
                 world_size: int = 1, channels_last: bool = False, primary: bool = True, rank: int = 0, seed: int = 0,
                 every: int = 1, last: int = 0):
        self.num_batches, self.every, self.last = num_batches, every, last
        self.distributed, self.rank = distributed and world_size > 1, rank
        self.world_size = max(int(world_size), 1) if self.distributed else 1
        self.per_rank = math.ceil(num_batches / self.world_size)
        self.channels_last, self.primary, self.seed = channels_last, primary, seed
        self.create_loader, self.args = create_loader, args
        self.dataset = dataset
        self.batch_size = int(kwargs.get('batch_size', 1))
        self.iterable = isinstance(dataset, torch.utils.data.IterableDataset)
        # a streamed dataset's reader is shared with the training dataset (shallow copy) and create_loader tells it
        # the worker count: keep train.py's; a map-style sample needs no more workers than batches per process
        workers = int(kwargs.get('num_workers', 0) or 0)
        self.workers = workers if self.iterable else min(workers, self.per_rank)
        self.kwargs = dict(kwargs, collate_fn=None,  # no mixup / CutMix: the statistics of the images validation sees
                           distributed=False,  # each rank loads its own slice of one sample (sample_indices)
                           num_aug_repeats=0, use_multi_epochs_loader=False,
                           num_workers=self.workers, persistent_workers=not self.iterable)
        self.full_hw = tuple(kwargs.get('input_size', args[0] if args else (0, 0, 0))[-2:])
        self._fresh = set()  # ids of the bare models recalibrated since the last training step
        self._loader, self._keys = None, None  # the persistent loader of a map-style dataset, built on first use
        self.calls = 0  # recalibrations run (models recomputed), for the record

    def due(self, epoch: int, total_epochs: int) -> bool:
        return recal_due(epoch, total_epochs, self.every, self.last)

    def _persistent_loader(self):
        """The map-style loader, built once: create_loader's DataLoader with its sampler swapped for :class:`_Keys`."""
        if self._loader is None:
            loader = self.create_loader(_SeededImages(self.dataset), *self.args, **self.kwargs)
            inner = getattr(loader, 'loader', loader)
            batch_sampler = getattr(inner, 'batch_sampler', None)
            if batch_sampler is None or not hasattr(batch_sampler, 'sampler'):
                raise RuntimeError(f'timm-trd: create_loader returned a {type(inner).__name__} without a batch '
                                   f'sampler; --trd-bn-recal cannot use it')
            self._keys = _Keys()
            batch_sampler.sampler = self._keys
            self._loader = loader
        return self._loader

    def build_loader(self, epoch: int):
        """The loader of one recalibration: ``per_rank`` batches of this rank's sample for ``epoch``."""
        if self.iterable:
            dataset = copy.copy(self.dataset)
            if hasattr(dataset, 'set_epoch'):
                dataset.set_epoch(epoch)
            return self.create_loader(dataset, *self.args, **self.kwargs)
        loader = self._persistent_loader()
        indices = sample_indices(len(self.dataset), self.per_rank * self.batch_size, self.world_size, self.rank,
                                 self.seed, epoch)
        self._keys.keys = [(i, _seed_value(self.seed, epoch, i)) for i in indices]
        return loader

    def trained(self) -> None:
        """The models train again: the next call recomputes."""
        self._fresh.clear()

    def __call__(self, model: torch.nn.Module, label: str = '', epoch: int = 0,
                 why: str = 'before validation', autocast=None) -> float:
        """Recalibrate ``model`` on the sample of ``epoch`` under ``autocast`` (train.py's ``amp_autocast``);
        returns the seconds it took (0 when it was fresh)."""
        from timm.utils import unwrap_model
        key = id(unwrap_model(model))
        if key in self._fresh:
            return 0.0
        start = time.perf_counter()
        device = next(model.parameters()).device
        with preserved_rng(device):
            _seed_all(_seed_value(self.seed, epoch, self.rank), device)  # a streamed dataset's augmentation
            iterator = iter(self.build_loader(epoch))
            try:
                used = recalibrate_bn(model, iterator, self.per_rank, self.channels_last, autocast)
                if not self.iterable:
                    for _ in iterator:  # none left (the sampler holds exactly the batches): ends the epoch
                        pass
            finally:
                if self.iterable:
                    _close(iterator)
            del iterator
            if self.distributed:
                from timm.utils import distribute_bn
                distribute_bn(model, self.world_size, reduce=True)
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        self._fresh.add(key)
        self.calls += 1
        if self.primary:
            total = used * self.world_size
            ranks = f' ({used} per process on {self.world_size} processes, averaged)' if self.distributed else ''
            _logger.info(
                f'TRD: BatchNorm statistics{label} recomputed at {self.full_hw[0]}x{self.full_hw[1]} on {total} '
                f'training batches{ranks} in {seconds:.1f} s ({why}; sample of epoch {epoch})')
        return seconds

    def schedule_text(self) -> str:
        parts = []
        if self.every == 1:
            parts.append('before every validation')
        elif self.every > 1:
            parts.append(f'before the validation of every {self.every}th epoch')
        if self.last > 1 and self.every != 1:
            parts.append(f'before the validations of the last {self.last} epochs')
        return ', '.join(parts + ['after the last epoch'])

    def plan_line(self, validation: bool, ema_on_cpu: bool = False) -> str:
        """What ``--trd-bn-recal`` will do in this run, said once at start."""
        split = (f'{self.per_rank} per process on {self.world_size} processes' if self.distributed
                 else 'one process')
        pool = ('a new loader each time' if self.iterable else
                f'{self.workers} persistent worker{"s" if self.workers != 1 else ""}, started once')
        line = (f'TRD: --trd-bn-recal {self.num_batches}: BatchNorm statistics recomputed at {self.full_hw[0]}x'
                f'{self.full_hw[1]} on {self.num_batches} training batches ({split}; a new sample each time; {pool})')
        if validation:
            line += (f' {self.schedule_text()}, so the last checkpoint has them (other validations, and the '
                     f'checkpoints written after them, see the training statistics)' if self.every != 1 else
                     ' before each validation and after the last epoch, so every end-of-epoch checkpoint train.py '
                     'writes has them')
        else:
            line += (' once, after the last epoch: this run has no validation loader (--val-split \'\'), so only '
                     'the last checkpoint has them; earlier checkpoints (and a model_best chosen by train loss before '
                     'the last epoch) keep the mixed statistics')
        if ema_on_cpu:
            line += ('; the EMA kept on the CPU (--model-ema-force-cpu) is not recalibrated, as train.py does not '
                     'validate it')
        return line
