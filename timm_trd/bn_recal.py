"""BatchNorm recalibration at full size (``--trd-bn-recal N``).

During TRD training the BatchNorm running statistics are a moving average over full-size and reduced
batches, while validation (and the checkpoint train.py keeps as best) runs at full size. Before each
validation, :class:`BNRecalibrator` recomputes them over ``N`` full-size training batches: torch's
``update_bn`` (train-mode forward passes, plain average, no gradients) on the bare model, then, under DDP,
the average over the ranks with timm's ``distribute_bn``, so every rank validates the same model.

It must not change the training run: the batches come from a loader of their own (a shallow copy of the
training dataset, train.py's loader settings at the full size, without mixup), and every RNG it could
touch (torch on CPU and the accelerator, Python's ``random``, NumPy) is restored afterwards.
"""

import copy
import itertools
import logging
import time

import torch

from .rng import preserved_rng

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


class BNRecalibrator:
    """Recompute BatchNorm statistics at full size before each validation train.py runs.

    Args:
        create_loader: timm's ``create_loader`` (train.py's module-level one, before the plugin wrapped it).
        dataset, args, kwargs: what train.py passed for its training loader.
        num_batches: batches per process.
        distributed, world_size: train.py's DDP settings.
    """

    def __init__(self, create_loader, dataset, args, kwargs, num_batches: int, distributed: bool = False,
                 world_size: int = 1, channels_last: bool = False, primary: bool = True):
        self.num_batches = num_batches
        self.distributed, self.world_size = distributed and world_size > 1, world_size
        self.channels_last, self.primary = channels_last, primary
        kwargs = dict(kwargs)
        kwargs['collate_fn'] = None  # no mixup / CutMix: the statistics of the images validation sees
        # a shallow copy: timm's create_loader sets the transform on the dataset it gets, and the training loader
        # keeps using its own
        self._build = lambda: create_loader(copy.copy(dataset), *args, **kwargs)
        self._loader = None
        self.full_hw = tuple(kwargs.get('input_size', args[0] if args else (0, 0, 0))[-2:])

    def __call__(self, model: torch.nn.Module, label: str = '') -> float:
        """Recalibrate ``model``; returns the seconds it took."""
        start = time.perf_counter()
        device = next(model.parameters()).device
        with preserved_rng(device):
            if self._loader is None:
                self._loader = self._build()
            used = recalibrate_bn(model, iter(self._loader), self.num_batches, self.channels_last)
            if self.distributed:
                from timm.utils import distribute_bn
                distribute_bn(model, self.world_size, reduce=True)
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        if self.primary:
            ranks = f' per process, averaged over {self.world_size} processes' if self.distributed else ''
            _logger.info(
                f'TRD: BatchNorm statistics{label} recomputed at {self.full_hw[0]}x{self.full_hw[1]} on {used} '
                f'training batches{ranks} in {seconds:.1f} s')
        return seconds
