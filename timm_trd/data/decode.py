"""Cheap reduced images on the loader path: decode JPEGs at a reduced DCT scale, or read a reduced copy.

On the loader path a reduced batch is cropped straight to the small size, but timm's ``ImageDataset`` still
decodes every JPEG at full resolution, which on real photos is about 40% of an image's loading time. libjpeg
can decode at 1/2, 1/4 or 1/8 scale for much less (``Image.draft``), so a reduced image is opened lazily
(the header gives its size), its crop is drawn first, and the JPEG is decoded at the largest scale that still
leaves that crop at least as many pixels as the reduced size needs (:func:`crop_scale`). The crop is then
cut from the smaller picture at the same place (a sub-pixel box, so the region is exactly the one drawn) and
timm's own transform does everything after it (flip, colour jitter or RandAugment, tensor, normalisation,
random erasing). The same seed gives the same crop, interpolation, flip and jitter as timm's path; only the
resampling source differs, so the picture is the same (see the README for the PSNR).

The other rule, :func:`fixed_scale` (always decode at ``full / reduced``, e.g. 1/2 for 224 -> 112, then run
timm's transform unchanged), is what a half-resolution copy of the dataset gives: it is faster, but a small
crop then has fewer pixels than the reduced size and is upsampled, i.e. blurrier than today's reduced image.
It is kept as a function for the benchmark, not as an option.

With a reduced copy (:mod:`timm_trd.data.reduced_copy.make`), every reduced image is read from the copy (the same crop,
in the copy's pixels): that is what approaches a quarter of a full image's cost, at the price of the fixed
rule's picture (a crop smaller than twice the reduced size is upsampled). ``copy_rule='when-fits'`` (for the
benchmark) reads the copy only when the crop has enough pixels there and the original otherwise.

Full-size images, non-JPEG files (PNG, ...) and images already too small for any scale go through unchanged.
:func:`attach` is the one call the plugin makes after timm's ``create_loader`` built the loader-path loader.
"""

import logging
import os
import random
import time
from typing import Callable, FrozenSet, Optional, Sequence, Tuple

from PIL import Image

_logger = logging.getLogger('timm_trd')

try:
    from timm.data.scheduled_sampler import ScheduledTransformDataset
except ImportError:  # timm < 1.0.29: no loader path, nothing to attach to
    ScheduledTransformDataset = None
from timm.data.dataset import ImageDataset
from timm.data.transforms import RandomResizedCropAndInterpolation

from ..errors import TRDConfigError

SCALES = (8, 4, 2, 1)  # the DCT scales libjpeg decodes at (1/8 ... 1/1)
FULL, REDUCED = 0, 1


def crop_scale(crop_hw: Sequence[float], out_hw: Sequence[int], scales: Sequence[int] = SCALES) -> int:
    """The largest JPEG scale ``k`` (decode at 1/k) that leaves a ``crop_hw`` crop at least ``out_hw`` pixels."""
    for k in scales:
        if crop_hw[0] / k >= out_hw[0] and crop_hw[1] / k >= out_hw[1]:
            return k
    return 1


def fixed_scale(full_hw: Sequence[int], reduced_hw: Sequence[int], scales: Sequence[int] = SCALES) -> int:
    """The largest JPEG scale no larger than full / reduced (1/2 for 224 -> 112): timm's transform on a picture
    downscaled by the same factor as the training size, i.e. what a half-resolution copy gives."""
    ratio = min(full_hw[0] / reduced_hw[0], full_hw[1] / reduced_hw[1])
    return next((k for k in scales if k <= ratio), 1)


def colour_scale(img: Image.Image) -> int:
    """The largest DCT scale that keeps the colour of this (opened) JPEG: 8 when its chroma is subsampled alike
    both ways (4:4:4, 4:2:0, greyscale), 2 when one way twice as much as the other (4:2:2, 4:4:0), 1 (no scaling)
    for anything more lopsided (4:1:1).

    libjpeg scales a chroma block up by its IDCT only by the same factor both ways, so unequal subsampling keeps
    the chroma at its own reduced resolution and upsamples it; the picture, then only 1-2 times the crop's output
    size, lacks colour detail that timm's full decode has. Measured against timm's reduced image (worst crop of
    100 ImageNet photos re-encoded, 32 px): 4:2:2 28.1 dB at any scale, 34.0 dB at 1/2 at most; 4:1:1 24.3 dB,
    still 27.7 dB at 1/2 at 56 px; 4:4:4 and 4:2:0 31 dB at any scale (``experiments/bench_loader.py
    --subsampling-images``)."""
    layers = getattr(img, 'layer', None) or []
    if len(layers) < 2:
        return 8
    h_max, v_max = max(layer[1] for layer in layers), max(layer[2] for layer in layers)
    lopsided = max(max(h_max * layer[2], v_max * layer[1]) / min(h_max * layer[2], v_max * layer[1])
                   for layer in layers)
    return 8 if lopsided == 1 else 2 if lopsided == 2 else 1


def draft(img: Image.Image, scale: int) -> int:
    """Ask a lazily opened JPEG to decode at 1/``scale`` (at most :func:`colour_scale`); returns the scale it took
    (1: unchanged).

    Anything but a not-yet-decoded JPEG is left as it is. libjpeg's picture at 1/k maps pixel ``x`` to the
    original's ``[k x, k (x + 1))`` exactly (the last one partly), whatever the rounding of its size."""
    if scale <= 1 or getattr(img, 'format', None) != 'JPEG' or not hasattr(img, 'draft'):
        return 1
    scale = min(scale, colour_scale(img))
    if scale <= 1:
        return 1
    w, h = img.size
    if w // scale < 1 or h // scale < 1:
        return 1
    drafted = img.draft(None, (w // scale, h // scale))
    if drafted is None:
        return 1
    return int(round(w / drafted[1][2]))


def _pil_resample(interpolation) -> int:
    if isinstance(interpolation, int):
        return interpolation
    from torchvision.transforms.functional import pil_modes_mapping
    return pil_modes_mapping[interpolation]


class PlannedCrop:
    """timm's ``RandomResizedCropAndInterpolation`` split in two: :meth:`draw` draws the crop on an image that
    is only opened (its header gives the size), :meth:`apply` cuts it from the decoded, possibly smaller,
    picture. The random draws are timm's, in timm's order (crop, then interpolation)."""

    def __init__(self, rrc: RandomResizedCropAndInterpolation):
        self.rrc = rrc

    @property
    def out_hw(self) -> Tuple[int, int]:
        return tuple(self.rrc.size)

    def draw(self, img: Image.Image) -> Tuple[int, int, int, int]:
        return self.rrc.get_params(img, self.rrc.scale, self.rrc.ratio)

    def apply(self, img: Image.Image, params, scale: Tuple[float, float] = (1.0, 1.0)) -> Image.Image:
        """Cut the crop ``params`` (in the original's pixels) from ``img``, the original shrunk by ``scale`` (x, y)."""
        interpolation = self.rrc.interpolation
        if isinstance(interpolation, (tuple, list)):
            interpolation = random.choice(interpolation)
        i, j, h, w = params
        sx, sy = scale
        if sx == sy == 1:  # exactly timm's crop
            from torchvision.transforms import functional as F
            return F.resized_crop(img, i, j, h, w, list(self.rrc.size), interpolation)
        box = (j / sx, i / sy, min((j + w) / sx, img.size[0]), min((i + h) / sy, img.size[1]))
        return img.resize((self.rrc.size[1], self.rrc.size[0]), _pil_resample(interpolation), box=box)


def split_transform(transform) -> Tuple[Optional[PlannedCrop], Optional[Callable]]:
    """timm's training transform as (its random resized crop, the rest), or (None, None) when it does not start
    with one (``--no-aug``, ``--train-crop-mode rkrc``, a custom transform)."""
    steps = getattr(transform, 'transforms', None)
    if not steps or not isinstance(steps[0], RandomResizedCropAndInterpolation):
        return None, None
    from torchvision import transforms as T
    return PlannedCrop(steps[0]), T.Compose(list(steps[1:]))


class ReducedLoading:
    """How one reduced sample is loaded: decoded at the crop's scale (``fast_decode``), read from a reduced copy
    (``copy_dir``, holding the files of ``source_root`` ``copy_scale`` times smaller), or both.

    ``rule`` 'crop' (the one the plugin uses) decodes at :func:`crop_scale`, 'fixed' (for the benchmark) at
    :func:`fixed_scale`. ``copy_rule`` 'always' (the plugin's) reads every reduced image from the copy (and
    decodes it further only when the crop allows), 'when-fits' (for the benchmark) only those whose crop has
    the reduced size in pixels there. ``transform`` is timm's reduced training transform. ``skipped``: the
    source images (relative to ``source_root``) the copy does not hold, read from the original."""

    def __init__(self, transform, img_mode: str, fast_decode: bool = True, copy_dir: Optional[str] = None,
                 source_root: Optional[str] = None, copy_scale: float = 2.0, rule: str = 'crop', full_hw=None,
                 copy_rule: str = 'always', skipped: FrozenSet[str] = frozenset(), sizes=None):
        self.crop, self.rest = split_transform(transform)
        self.transform = transform
        self.img_mode = img_mode
        self.fast_decode = fast_decode
        self.copy_dir = copy_dir
        self.source_root = source_root
        self.copy_scale = float(copy_scale)
        self.skipped = frozenset(skipped)  # images the copy lacks (unreadable sources): read from the original
        self.sizes = sizes  # the originals' (width, height) by dataset index, from the copy's index (0: unknown)
        if rule not in ('crop', 'fixed'):
            raise ValueError(f"rule must be 'crop' or 'fixed', got {rule!r}")
        self.rule = rule
        if copy_rule not in ('always', 'when-fits'):
            raise ValueError(f"copy_rule must be 'always' or 'when-fits', got {copy_rule!r}")
        self.copy_rule = copy_rule
        self.fixed = fixed_scale(full_hw, self.crop.out_hw) if rule == 'fixed' and full_hw and self.crop else 1

    @property
    def active(self) -> bool:
        return self.crop is not None and (self.fast_decode or self.copy_dir is not None)

    def copy_path(self, source_path: str) -> Optional[str]:
        if self.copy_dir is None:
            return None
        rel = os.path.relpath(source_path, self.source_root)
        return None if rel in self.skipped else os.path.join(self.copy_dir, rel)

    def scale_for(self, crop_hw) -> int:
        """The JPEG scale to decode a crop of ``crop_hw`` pixels (of the picture at hand) at."""
        if self.rule == 'fixed':
            return self.fixed
        return crop_scale(crop_hw, self.crop.out_hw)

    def original_size(self, index: int) -> Optional[Tuple[int, int]]:
        """The original's (width, height) as the copy's index records it, or None (not recorded, or no copy)."""
        if self.sizes is None or self.copy_rule != 'always':
            return None
        width, height = (int(v) for v in self.sizes[index])
        return (width, height) if width > 0 else None

    def decode(self, fp, copy_path: Optional[str] = None, size=None):
        """The first half of :meth:`load`: ``(picture, crop, (sx, sy))``, the picture decoded (at the crop's scale
        with ``fast_decode``), the crop drawn with timm's random draws in the original's pixels, and how much
        smaller the picture is than the original (x, y). :meth:`finish` does the rest."""
        if size is not None and copy_path is not None:
            img = Image.Image()  # the original's size without opening it: all the crop's draw reads
            img._size = tuple(size)
        else:
            img = Image.open(fp)  # the header only: size and format
        params = self.crop.draw(img)  # in the original's pixels, with timm's random draws
        i, j, h, w = params
        sx = sy = 1.0
        from_copy = copy_path is not None and (self.copy_rule == 'always' or (
            h / self.copy_scale >= self.crop.out_hw[0] and w / self.copy_scale >= self.crop.out_hw[1]))
        if from_copy:
            copy = Image.open(copy_path)
            sx, sy = img.size[0] / copy.size[0], img.size[1] / copy.size[1]
            img = copy
        if self.fast_decode:
            k = crop_scale((h / sy, w / sx), self.crop.out_hw) if from_copy else self.scale_for((h, w))
            k = draft(img, k)
            sx, sy = sx * k, sy * k
        return img.convert(self.img_mode), params, (sx, sy)  # convert decodes, at the drafted scale

    def finish(self, img: Image.Image, params, scale, marks: Optional[list] = None):
        """The second half of :meth:`load`: the crop cut from the picture :meth:`decode` gave, then the rest of
        timm's transform (the crop's interpolation is drawn here, after the crop, as timm does)."""
        img = self.crop.apply(img, params, scale)
        if marks is not None:
            marks.append(time.perf_counter())
        return self.rest(img)

    def load(self, fp, copy_path: Optional[str] = None, marks: Optional[list] = None, size=None):
        """The transformed reduced image from an open file (what timm's reader gives), or from ``copy_path``;
        with the original's ``size`` (width, height) from the copy's index, ``fp`` is not needed (None).

        ``marks`` (for the benchmark) gets ``time.perf_counter()`` after the decode and after the crop."""
        img, params, scale = self.decode(fp, copy_path, size)
        if marks is not None:
            marks.append(time.perf_counter())
        return self.finish(img, params, scale, marks)


if ScheduledTransformDataset is not None:
    class ReducedDecodeDataset(ScheduledTransformDataset):
        """timm's ``ScheduledTransformDataset`` whose reduced samples are loaded by :class:`ReducedLoading`;
        full-size samples are timm's, unchanged. Made from the one timm's ``create_loader`` built
        (:meth:`adopt`), since the ``DataLoader`` holding it cannot take another dataset."""

        reduced: ReducedLoading

        @classmethod
        def adopt(cls, dataset: 'ScheduledTransformDataset', reduced: ReducedLoading) -> 'ReducedDecodeDataset':
            dataset.__class__ = cls
            dataset.reduced = reduced
            return dataset

        def __getitem__(self, scheduled_index):
            index, choice = scheduled_index
            if choice != REDUCED or not self.reduced.active:
                return super().__getitem__(scheduled_index)
            base = self.dataset  # timm's ImageDataset: its reader, retries, target transform, as in its __getitem__
            for _ in range(base._max_retries):
                try:
                    copy_path = self.reduced.copy_path(base.reader.samples[index][0]) if self.reduced.copy_dir else None
                    size = self.reduced.original_size(index) if copy_path else None
                    if size is not None:  # the copy's index has the original's size: the original is not opened
                        target, features = base.reader.samples[index][1], []
                    else:
                        fp, target, *features = base.reader[index]
                    image = self.reduced.load(None if size else fp, copy_path, size=size)
                    break
                except (IOError, OSError) as e:
                    _logger.warning(f'Skipped sample (index {index}). {e}')
                    index = (index + 1) % len(base.reader)
            else:
                raise RuntimeError(f'Failed to load {base._max_retries} consecutive samples')
            if target is None:
                target = -1
            elif base.target_transform is not None:
                target = base.target_transform(target)
            return (image, target) if base.additional_features is None else (image, target, *features)
else:
    ReducedDecodeDataset = None


def _scheduled_dataset(loader):
    inner = getattr(loader, 'loader', loader)  # timm's PrefetchLoader keeps the DataLoader as .loader
    return getattr(inner, 'dataset', None)


def unavailable(dataset) -> Optional[str]:
    """Why reduced loading cannot attach to this loader-path dataset, or None."""
    if ScheduledTransformDataset is None or not isinstance(dataset, ScheduledTransformDataset):
        return 'the loader is not timm\'s scheduled loader'
    base = dataset.dataset
    if type(base) is not ImageDataset:
        return f'the dataset is a {type(base).__name__}, not timm\'s ImageDataset'
    if base.load_bytes or not base.input_img_mode:
        return 'the dataset returns raw bytes (load_bytes / no input_img_mode)'
    if len(dataset.transforms) != 2 or split_transform(dataset.transforms[REDUCED])[0] is None:
        return 'the reduced transform does not start with timm\'s RandomResizedCrop (e.g. --no-aug)'
    return None


def attach(loader, fast_decode: bool = True, reduced_copy: Optional[str] = None, log: bool = True):
    """Make the reduced samples of a loader-path loader cheap to load; returns what it did, as one line.

    ``loader`` is what timm's ``create_loader`` returned for the loader path. Raises
    :class:`~timm_trd.errors.TRDConfigError` when ``reduced_copy`` does not match the training folder."""
    if not fast_decode and not reduced_copy:
        return 'TRD: reduced images are decoded at full size (--no-trd-fast-decode)'
    dataset = _scheduled_dataset(loader)
    why = unavailable(dataset)
    if why:
        if reduced_copy:
            raise TRDConfigError(f'--trd-reduced-copy cannot be used: {why}; drop --trd-reduced-copy')
        return f'TRD: reduced images are decoded at full size ({why})'
    copy_dir, copy_scale, skipped, reader = None, 2.0, frozenset(), dataset.dataset.reader
    if reduced_copy:
        from .reduced_copy.check import check_copy_once
        copy_dir, copy_scale, skipped, sizes = check_copy_once(reader, reduced_copy, dataset.dataset.input_img_mode)
    else:
        sizes = None
    reduced = ReducedLoading(dataset.transforms[REDUCED], dataset.dataset.input_img_mode, fast_decode=fast_decode,
                             copy_dir=copy_dir, source_root=getattr(reader, 'root', None), copy_scale=copy_scale,
                             skipped=skipped, sizes=sizes)
    ReducedDecodeDataset.adopt(dataset, reduced)
    parts = []
    if reduced_copy:
        unread = f'; {len(skipped)} images it could not read from the original' if skipped else ''
        parts.append(f'read from the reduced copy {copy_dir} (1/{copy_scale:g} size{unread})')
    if fast_decode:
        parts.append('JPEGs decoded at the largest DCT scale (1/2, 1/4, 1/8) that leaves the crop enough pixels '
                     'and keeps the colour (4:2:2 and 4:4:0 at 1/2 at most, 4:1:1 unscaled) '
                     '(--no-trd-fast-decode to turn off)')
    return 'TRD: reduced images: ' + '; '.join(parts)


def attach_reduced_loading(loader, path: str, config, streamed: bool = False) -> Optional[str]:
    """The plugin's one call after timm's ``create_loader``: on the loader path, :func:`attach` with the run's
    ``--trd-fast-decode`` / ``--trd-reduced-copy``; returns the line for the log (the plugin logs it once). On a
    streamed dataset's loader path, fast decode is :mod:`~timm_trd.data.shard_decode`'s. On the device path, and on a
    streamed dataset (no folder to copy), a reduced copy is refused."""
    if streamed:
        if config.reduced_copy:
            raise TRDConfigError('--trd-reduced-copy holds a copy of a training folder and this run streams its data '
                                 '(an iterable dataset such as wds/ or hfids/); drop --trd-reduced-copy')
        dataset = _scheduled_dataset(loader)
        if path == 'loader' and hasattr(dataset, 'attach_fast_decode'):  # a streams.PlannedStream
            return dataset.attach_fast_decode(config.fast_decode)
        return None
    if path != 'loader':
        if config.reduced_copy:
            raise TRDConfigError(f'--trd-reduced-copy needs the loader path and this run takes the {path} path; '
                                 f'drop --trd-reduced-copy (or make the loader path possible, see --trd-mode)')
        return None
    return attach(loader, fast_decode=config.fast_decode, reduced_copy=config.reduced_copy)
