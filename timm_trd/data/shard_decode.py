"""Fast decode on webdataset shards: a reduced sample's JPEG decoded at a reduced DCT scale, on the loader path.

timm's wds reader decodes every image in full (its ``_decode``: open, ``load()``, ``convert``) in a ``wds.map``
stage of the worker's pipeline; the stage runs when a sample is pulled, after the sample shuffle and before the
transform, so decoding in the transform (as :mod:`~timm_trd.data.decode` does for folders) comes too late. The seam
is that stage's function: :meth:`ShardDecoding.install` swaps timm's ``_decode`` in a worker's pipeline (once the
reader built it) for a :class:`ShardDecode` wrapping it. :class:`~timm_trd.data.streams.PlannedStream` knows the batch
its next sample lands in and says so (``reduced``) just before it pulls that sample; nothing in the pipeline after
the stage reads ahead, so the flag reaches exactly that sample's decode. Then

- a full-size sample goes through timm's ``_decode`` untouched (what full batches get does not change);
- a reduced one is opened (the header), its crop drawn (timm's random draws, in timm's order), the JPEG decoded at the
  scale :func:`~timm_trd.data.decode.crop_scale` allows within :func:`~timm_trd.data.decode.colour_scale`'s rules, in
  the same stage, so an unreadable image is skipped by timm's error handler as before; its target (and json) come
  from timm's ``_decode`` itself, run on the sample with a 1x1 placeholder instead of the image. The crop is cut from
  the smaller picture and the rest of timm's reduced transform applied where the transform runs
  (:meth:`ShardDecoding.finish`), as on a folder: the same picture as timm's reduced image.
"""

import io
from collections import Counter
from functools import partial
from typing import Optional

from PIL import Image

from .decode import ReducedLoading, split_transform

_PLACEHOLDER_KEY = '__trd_placeholder__'


def _placeholder() -> bytes:
    buf = io.BytesIO()
    Image.new('L', (1, 1)).save(buf, 'PNG')
    return buf.getvalue()


def _timm_decode():
    """timm's wds ``_decode`` function, or None (no webdataset / another timm)."""
    try:
        from timm.data.readers import reader_wds
    except ImportError:
        return None
    return getattr(reader_wds, '_decode', None) if getattr(reader_wds, 'wds', None) is not None else None


class ReducedPicture:
    """A reduced sample as the decode stage leaves it: the picture (decoded at ``scale`` (x, y) smaller than the
    original) and the crop drawn on the original."""

    __slots__ = ('img', 'params', 'scale')

    def __init__(self, img: Image.Image, params, scale):
        self.img, self.params, self.scale = img, params, scale


class ShardDecode:
    """The decode stage's function in one worker's pipeline: timm's ``_decode`` (a ``functools.partial`` with the
    reader's image key, mode and target settings) for full samples, :class:`ReducedLoading` for the next pulled
    sample when ``reduced`` is set (one sample: the flag is cleared when it is read)."""

    def __init__(self, timm_decode: partial, loading: ReducedLoading):
        self.timm_decode = timm_decode
        self.loading = loading
        self.image_key = timm_decode.keywords.get('image_key', 'jpg')
        self.placeholder = _placeholder()
        self.reduced = False
        self.scales = Counter()  # reduced samples by the JPEG scale they were decoded at (tests, benchmark)

    def __call__(self, sample):
        reduced, self.reduced = self.reduced, False
        if not reduced:
            return self.timm_decode(sample)
        from webdataset.filters import getfirst
        data = getfirst(sample, self.image_key)
        decoded = self.timm_decode(dict(sample, **{_PLACEHOLDER_KEY: self.placeholder}),
                                   image_key=_PLACEHOLDER_KEY, image_mode='')  # the target, timm's way
        if decoded is None:  # a skipped label: timm drops the sample before it decodes the image
            return None
        with io.BytesIO(data) as fp:
            img, params, scale = self.loading.decode(fp)
        self.scales[int(round(scale[0]))] += 1
        decoded['jpg'] = ReducedPicture(img, params, scale)
        return decoded


class ShardDecoding:
    """Fast decode for a :class:`~timm_trd.data.streams.PlannedStream` over timm's wds reader: built in the main
    process (:func:`shard_decoding`), carried to the workers with the dataset, installed in each worker's pipeline
    (:meth:`install`)."""

    picture_type = ReducedPicture

    def __init__(self, loading: ReducedLoading):
        self.loading = loading

    def install(self, reader) -> Optional[ShardDecode]:
        """The :class:`ShardDecode` in ``reader``'s pipeline (built here if the reader has not yet: timm builds it
        lazily, per worker), or None when the pipeline has no stage calling timm's ``_decode``."""
        if getattr(reader, 'ds', None) is None:
            if not hasattr(reader, '_lazy_init'):
                return None
            reader._lazy_init()
        timm_decode = _timm_decode()
        for stage in getattr(reader.ds, 'pipeline', ()):
            args = getattr(stage, 'args', None)
            if not args:
                continue
            if isinstance(args[0], ShardDecode):
                return args[0]
            if isinstance(args[0], partial) and args[0].func is timm_decode:
                decode = ShardDecode(args[0], self.loading)
                stage.args = (decode, *args[1:])
                return decode
        return None

    def finish(self, picture: ReducedPicture):
        return self.loading.finish(picture.img, picture.params, picture.scale)


def shard_decoding(dataset, fast_decode: bool):
    """``(ShardDecoding or None, the line for the log)`` for a loader-path :class:`PlannedStream`."""
    if not fast_decode:
        return None, 'TRD: reduced images are decoded at full size (--no-trd-fast-decode)'
    reader = getattr(dataset, 'reader', None)
    why = None
    if type(reader).__name__ != 'ReaderWds':
        why = f'the streamed reader ({type(reader).__name__}) decodes each image before its transform; fast ' \
              f'decode knows timm\'s wds reader'
    elif _timm_decode() is None:
        why = 'this timm\'s wds reader has no _decode stage to take over'
    elif not getattr(reader, 'input_img_mode', None):
        why = 'the reader returns raw bytes (no input_img_mode)'
    elif split_transform(getattr(dataset, 'trd_reduced_transform', None))[0] is None:
        why = 'the reduced transform does not start with timm\'s RandomResizedCrop (e.g. --no-aug)'
    if why:
        return None, f'TRD: reduced images are decoded at full size ({why})'
    loading = ReducedLoading(dataset.trd_reduced_transform, reader.input_img_mode, fast_decode=True)
    return ShardDecoding(loading), (
        'TRD: reduced images: JPEGs decoded in the shard reader at the largest DCT scale (1/2, 1/4, 1/8) that leaves '
        'the crop enough pixels and keeps the colour (4:2:2 and 4:4:0 at 1/2 at most, 4:1:1 unscaled) '
        '(--no-trd-fast-decode to turn off)')
