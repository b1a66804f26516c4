"""Which of the two data paths makes the small batches: the loader path where it can run, else the device path.

The loader path needs timm's scheduled sampler (timm >= 1.0.29) and a map-style dataset, or a streamed one whose
workers' batch boundaries are known (timm's wds and hfids readers, :mod:`~timm_trd.data.streams`), and cannot
combine with AugMix splits or timm's multi-epoch loader. :func:`loader_obstacle` is the one place that says why not;
it is asked at parse time (what the arguments tell) and again when train.py builds the loader (the dataset).
"""

from typing import Optional, Tuple

import torch

from ..errors import TRDConfigError
from .sampler import loader_path_unavailable
from .streams import batch_boundaries_unknown


def loader_obstacle(dataset=None, aug_splits=0, multi_epochs=False) -> Optional[str]:
    """Why the loader path cannot run here, or None."""
    why = loader_path_unavailable()
    if why:
        return why
    if dataset is not None and isinstance(dataset, torch.utils.data.IterableDataset):
        why = batch_boundaries_unknown(dataset)
        if why:
            return why
    if aug_splits and aug_splits > 1:
        return 'AugMix splits (--aug-splits) are not supported by timm\'s scheduled loader'
    if multi_epochs:
        return '--use-multi-epochs-loader is not supported by timm\'s scheduled loader'
    return None


def choose_path(mode: str, obstacle: Optional[str], streamed: bool = False) -> Tuple[str, str]:
    """``(path, why)`` for ``--trd-mode`` and the obstacle found; a loader mode that cannot run raises."""
    if mode == 'device':
        return 'device', 'chosen with --trd-mode device'
    if mode == 'loader':
        if obstacle:
            raise TRDConfigError(f'--trd-mode loader cannot run: {obstacle}; use --trd-mode device (or auto)')
        return 'loader', 'chosen with --trd-mode loader'
    if obstacle:
        return 'device', f'auto: {obstacle}'
    if streamed:
        return 'loader', ('auto: the streamed dataset\'s data workers serve whole batches in turn '
                          '(timm\'s wds/hfids readers)')
    return 'loader', 'auto: timm\'s scheduled sampler and a map-style dataset allow it'
