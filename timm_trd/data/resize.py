"""The device path: shrink an already collated batch to the reduced size.

An antialiased bilinear resize (``F.interpolate(..., antialias=True)``), so the small image keeps the
shapes and loses the fine texture, as a camera at lower resolution would see it. It runs on the device train.py
trains on: after timm's prefetcher the batch is there already; without the prefetcher (``--no-prefetcher``)
:func:`to_training_device` moves it there first, as train.py would have done right after, so an accelerator run
never shrinks batches on the CPU in its main process (250 ms per 256x3x224x224 batch). Only a run that trains on
the CPU resizes on the CPU.

Normalisation commutes with this resize (both are per-pixel affine or convex), so it does not matter
that the prefetcher normalised the batch first.
"""

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F


def downsample(images: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Resize an ``N x C x H x W`` float batch to ``size = (h, w)`` with antialiasing.

    The result keeps the input's dtype and memory format. Half-precision batches are resized in
    float32, since the antialiased kernels are not implemented for every reduced-precision dtype.
    """
    if images.ndim != 4:
        raise ValueError(f'expected an N x C x H x W batch, got shape {tuple(images.shape)}')
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    dtype = images.dtype
    work = images if dtype in (torch.float32, torch.float64) else images.float()
    out = F.interpolate(work, size=tuple(size), mode='bilinear', align_corners=False, antialias=True)
    if images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last)
    return out.to(dtype)


def resize_device(batch_device: torch.device, train_device: Optional[Union[str, torch.device]]) -> torch.device:
    """Where a batch on ``batch_device`` is shrunk when training runs on ``train_device``: on the training device
    when the batch still lives on the CPU (train.py would move it there next), else where the batch already is."""
    if train_device is None:
        return batch_device
    train_device = torch.device(train_device)
    if batch_device.type == 'cpu' and train_device.type != 'cpu':
        return train_device
    return batch_device


def to_training_device(batch_input: torch.Tensor, target, train_device) -> tuple:
    """``(input, target)`` on the device :func:`resize_device` chooses, moved as train.py moves them without the
    prefetcher (``.to(device)``, non-blocking: synchronous from pageable memory, asynchronous from pinned memory).
    dtype and memory format are left to train.py, which converts them right after, as it always did."""
    device = resize_device(batch_input.device, train_device)
    if device == batch_input.device:
        return batch_input, target
    if isinstance(target, torch.Tensor):
        target = target.to(device, non_blocking=True)
    return batch_input.to(device, non_blocking=True), target
