"""Streamed (iterable) datasets: what timm's readers do with shards, ranks and workers, and what TRD needs of it.

timm's webdataset reader (``--dataset wds/...``) hands each data worker of each rank its own shards: global worker
``g = rank x W + w`` of ``R x W`` reads shards ``g, g + R W, ...`` of the split, and repeats them until it has served
``ceil(N / (R W))`` samples (rounded up to whole batches in training). A worker that gets no shard serves nothing,
so with fewer shards than ``R x W`` the ranks load different numbers of batches: under DDP the rank that runs out
first waits in a collective the others never reach (a hang until the process group's timeout), in training and in
validation (train.py all-reduces every validation batch). :func:`shard_shortage` sees it coming from the split's
file list, before any worker starts.

For the loader path on an iterable dataset, a worker must know which batch of the epoch each of its samples lands
in. torch's ``DataLoader`` takes ``batch_size`` consecutive samples from one worker's iterator per batch and asks the
workers in turn (worker 0 first, each epoch, in order), so worker ``w``'s ``s``-th sample lands in batch
``w + (s // b) x W`` as long as every worker serves the same number of whole batches: true for timm's wds reader in
training when every worker has a shard, and for its Hugging Face streaming reader (``hfids/``, each worker serves a
whole-batch count). :func:`batch_boundaries_unknown` says when that is not known to hold.
"""

import copy
from typing import Optional, Tuple

import torch

from ..errors import TRDConfigError
from .shard_decode import shard_decoding

try:
    from timm.data.dataset import IterableImageDataset
except ImportError:  # pragma: no cover - timm always has it
    IterableImageDataset = None


def _reader_kind(reader) -> str:
    """'wds', 'hfids', 'tfds' or the reader's class name, without importing optional packages."""
    name = type(reader).__name__
    return {'ReaderWds': 'wds', 'ReaderHfids': 'hfids', 'ReaderTfds': 'tfds'}.get(name, name)


def _count(n: int, noun: str) -> str:
    return f'{n} {noun}{"s" if n != 1 else ""}'


def is_streamed(dataset) -> bool:
    return isinstance(dataset, torch.utils.data.IterableDataset)


def shard_shortage(dataset, num_workers: int, is_training: bool, one_rank: bool = False) -> Optional[str]:
    """Why the ranks of this run would load different numbers of batches from this webdataset split, or None.

    ``num_workers`` is what train.py hands ``create_loader`` for this loader. Only timm's wds reader is known here;
    any other dataset gives None. With one rank nothing can hang (the workers without a shard sit idle and the epoch
    is shorter than ``len(loader)`` says): reported only with ``one_rank`` (TRD plans over ``len(loader)``)."""
    reader = getattr(dataset, 'reader', None)
    if reader is None or _reader_kind(reader) != 'wds':
        return None
    shards = len(reader.split_info.filenames)
    ranks = max(1, int(getattr(reader, 'dist_num_replicas', 1) or 1))
    workers = max(1, int(num_workers or 0))
    if shards >= ranks * workers or (ranks == 1 and not one_rank):
        return None
    split = 'training' if is_training else 'validation'
    who = f'{ranks} processes x {_count(workers, "loader worker")}' if ranks > 1 else _count(workers, 'loader worker')
    consequence = ('the ranks would load different numbers of batches and wait for each other until the process '
                   'group times out' if ranks > 1 else 'an epoch would be shorter than the loader\'s length says')
    fixes = [f'write the {split} split in at least {ranks * workers} shards']
    if shards >= ranks:
        note = '; train.py validates streamed data with min(2, --workers) under DDP' if not is_training else ''
        fixes.append(f'use fewer --workers (at most {shards // ranks}{note})')
    else:
        fixes[0] += ' (or use fewer processes)'
    if not is_training:
        fixes.append("skip validation with --val-split ''")
    fixes[-1] = 'or ' + fixes[-1]
    idle = ranks * workers - shards
    return (f'the {split} split in {reader.root} has {_count(shards, "shard")} for {who}, so {idle} of the '
            f'{ranks * workers} readers {"gets" if idle == 1 else "get"} no shard and {consequence}; {", ".join(fixes)}')


def batch_boundaries_unknown(dataset) -> Optional[str]:
    """Why a data worker of this streamed training dataset cannot know which batch of the epoch it is filling
    (so the loader path cannot run on it), or None when it can."""
    if IterableImageDataset is None or not isinstance(dataset, IterableImageDataset):
        return (f'the training dataset is iterable (a {type(dataset).__name__}, not timm\'s IterableImageDataset) and '
                f'its workers\' batch boundaries are unknown')
    kind = _reader_kind(dataset.reader)
    if kind not in ('wds', 'hfids'):
        return (f'the training dataset is iterable (timm\'s {kind} reader), and its workers may serve unequal numbers '
                f'of batches (the loader path knows wds/ and hfids/)')
    return None


def _worker() -> Tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


if IterableImageDataset is not None:
    class PlannedStream(IterableImageDataset):
        """timm's ``IterableImageDataset`` whose samples get the full or the reduced transform by the batch of the
        epoch they land in: worker ``w`` of ``W`` puts its ``s``-th sample in batch ``w + (s // b) x W`` (see
        above), which the epoch's plan, published by the main process in shared memory (:meth:`publish`) before
        the workers start the epoch, marks as reduced or not. Made from the dataset timm's ``create_loader``
        built the loader on (:meth:`adopt`), which keeps its length, ``set_epoch`` and reader."""

        trd_reduced_transform = None
        trd_batch_size = 1
        trd_plan: Optional[torch.Tensor] = None
        trd_decoding = None  # fast decode of the reduced samples (shard_decode.ShardDecoding), or None

        @classmethod
        def adopt(cls, dataset: 'IterableImageDataset', reduced_transform, batch_size: int,
                  batches: int) -> 'PlannedStream':
            dataset.__class__ = cls
            dataset.trd_reduced_transform = reduced_transform
            dataset.trd_batch_size = int(batch_size)
            dataset.trd_plan = torch.zeros(max(1, int(batches)), dtype=torch.uint8).share_memory_()
            return dataset

        def publish(self, plan) -> None:
            """The plan of the epoch the next pass serves (main process; the workers read it)."""
            plan = torch.as_tensor(plan, dtype=torch.uint8)
            if plan.numel() != self.trd_plan.numel():
                raise TRDConfigError(f'the streamed dataset\'s epoch has {self.trd_plan.numel()} batches and the plan '
                                     f'{plan.numel()}; use --trd-mode device')
            self.trd_plan.copy_(plan)

        def __copy__(self) -> 'IterableImageDataset':
            """A shallow copy is timm's dataset again, every sample at the transform timm's loader gives it: what
            BatchNorm recalibration copies the training dataset for (full-size images), never the plan."""
            clone = IterableImageDataset.__new__(IterableImageDataset)
            clone.__dict__.update(self.__dict__)
            return clone

        def attach_fast_decode(self, fast_decode: bool) -> str:
            """Fast decode of the reduced samples in the shard reader (:mod:`~timm_trd.data.shard_decode`) when
            ``fast_decode`` and the reader allows; returns the line for the log."""
            self.trd_decoding, line = shard_decoding(self, fast_decode)
            return line

        def __iter__(self):
            worker, workers = _worker()
            plan, batch = self.trd_plan, self.trd_batch_size
            decoding = self.trd_decoding
            decode = decoding.install(self.reader) if decoding is not None else None  # fast decode (shard_decode)
            samples = iter(self.reader)
            served = 0
            try:
                while True:
                    index = worker + (served // batch) * workers
                    reduced = index < plan.numel() and bool(plan[index])
                    if decode is not None:
                        decode.reduced = reduced  # read by the decode of the sample pulled next, and only by it
                    try:
                        img, target = next(samples)
                    except StopIteration:
                        return
                    served += 1
                    if decoding is not None and isinstance(img, decoding.picture_type):
                        img = decoding.finish(img)  # decoded at a reduced scale, its crop drawn: the rest
                    else:
                        transform = self.trd_reduced_transform if reduced else self.transform
                        if transform is not None:
                            img = transform(img)
                    if self.target_transform is not None:
                        target = self.target_transform(target)
                    yield img, target
            finally:
                if decode is not None:
                    decode.reduced = False
else:  # pragma: no cover
    PlannedStream = None


def planned_stream_loader(create_loader, dataset, args, kwargs, reduced_size):
    """The loader path on a streamed dataset: ``(loader, dataset)``, the loader timm's ``create_loader`` builds
    with train.py's arguments, over ``dataset`` turned into a :class:`PlannedStream`.

    The reduced transform is timm's own for ``reduced_size`` ``(C, H, W)``: ``create_loader`` is asked once more,
    with that size, for a throwaway loader on a shallow copy of the dataset (no worker starts), so it has exactly
    train.py's augmentation options."""
    probe = copy.copy(dataset)
    if args:
        create_loader(probe, tuple(reduced_size), *args[1:], **kwargs)
    else:
        create_loader(probe, **dict(kwargs, input_size=tuple(reduced_size)))
    reduced_transform = probe.transform
    loader = create_loader(dataset, *args, **kwargs)
    batch = int(kwargs.get('batch_size', args[1] if len(args) > 1 else 1))
    PlannedStream.adopt(dataset, reduced_transform, batch, len(loader))
    return loader, dataset
