"""The device path: shrink an already collated batch to the reduced size.

An antialiased bilinear resize (``F.interpolate(..., antialias=True)``), so the small image keeps the
shapes and loses the fine texture, as a camera at lower resolution would see it. It runs wherever the
batch lives: on the accelerator after timm's prefetcher, on the CPU in the main process without it.
Normalisation commutes with this resize (both are per-pixel affine or convex), so it does not matter
that the prefetcher normalised the batch first.
"""

from typing import Tuple

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
