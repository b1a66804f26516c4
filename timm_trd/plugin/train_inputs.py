"""train.py inputs that would end in a traceback of timm's, checked at parse time, before the model is built.

Whether TRD is on or off, two of train.py's own settings fail late and without the fix in the message:

- a ``--data-dir`` that does not exist (timm's image-folder dataset stops on a bare ``assert os.path.exists``);
- ``--aug-repeats N`` (the "ResNet strikes back" A1/A2 recipes set 3) in a single process: train.py hands it to
  ``create_loader``, whose only sampler for it is the distributed ``RepeatAugSampler``, so a one-process run
  stops on timm's ``RepeatAugment not currently supported in non-distributed ...`` assertion;
- an ``--output`` folder that cannot be written (read-only, or another user's): train.py's saver stops on an
  ``OSError`` from ``os.makedirs`` after the model and data are set up; checked by creating (and removing) a file
  in the nearest folder that exists, as permission bits alone do not tell a read-only file system from root's
  rights;
- ``--device cuda`` (train.py's default) on a machine where torch sees no CUDA device: timm's device setup
  fails on an assertion. The line names ``--device cpu`` (the run is not moved to the CPU behind the user's
  back: on a GPU node whose driver failed that would be a very slow run nobody asked for).

Each becomes one :class:`~timm_trd.errors.TRDConfigError` line that names the fix.
"""

import argparse
import os
import tempfile
from typing import Optional

from ..errors import TRDConfigError


def _image_folder_dataset(args: argparse.Namespace) -> bool:
    """Whether train.py builds timm's folder/tar ``ImageDataset``: a ``--dataset`` name without a ``prefix/``
    (``torch/``, ``hfds/``, ``tfds/``, ``wds/`` ... read or download elsewhere)."""
    return '/' not in str(getattr(args, 'dataset', '') or '')


def check_data_dir(args: argparse.Namespace) -> None:
    """An image-folder dataset needs an existing ``--data-dir`` (train.py also takes the old positional DATA)."""
    if not _image_folder_dataset(args) or not hasattr(args, 'data_dir'):
        return
    root = args.data_dir or getattr(args, 'data', None)
    if root and not os.path.exists(root):
        raise TRDConfigError(f'--data-dir {root} does not exist; pass the folder that holds train/ and val/ '
                             f'(or a .tar of it)')


def distributed_launch() -> bool:
    """Whether this process is one of several (timm's own test, the one train.py's device setup uses)."""
    from timm.utils.distributed import is_distributed_env
    return is_distributed_env()


def check_aug_repeats(args: argparse.Namespace, recipe: dict = None) -> None:
    """``--aug-repeats`` > 0 works only in a distributed run (timm's ``RepeatAugSampler``)."""
    repeats = getattr(args, 'aug_repeats', 0) or 0
    if repeats and not distributed_launch():
        source = ' (set by the -c recipe)' if recipe and recipe.get('aug_repeats') == repeats else ''
        raise TRDConfigError(
            f'--aug-repeats {repeats:g}{source} needs several processes (timm repeats augmentations with its '
            f'distributed RepeatAugSampler); add --aug-repeats 0 for a single process, or launch with torchrun '
            f'--nproc-per-node N (N >= 2)')


def check_device(args: argparse.Namespace, recipe: dict = None) -> None:
    """A CUDA ``--device`` (given, or train.py's default) needs a CUDA device torch can see."""
    import torch
    device = str(getattr(args, 'device', '') or '')
    if device.startswith('cuda') and not torch.cuda.is_available():
        given = ' (set by the -c recipe)' if recipe and recipe.get('device') == device else ''
        raise TRDConfigError(
            f'--device {device}{given}, but torch sees no CUDA device on this machine (torch.cuda.is_available() is '
            f'False; train.py\'s --device defaults to cuda); add --device cpu for a CPU run')


def _writable(folder: str) -> Optional[str]:
    """None when a file can be created in ``folder`` (the nearest existing ancestor is tried), else the reason."""
    folder = os.path.abspath(folder)
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    try:
        handle, probe = tempfile.mkstemp(prefix='.timm-trd-write-check-', dir=folder)
        os.close(handle)
        os.remove(probe)
    except OSError as e:
        return f'{folder}: {e.strerror or e}'
    return None


def check_output(args: argparse.Namespace) -> None:
    """train.py's ``--output`` (``./output/train`` when empty) must be writable by the process that saves."""
    if not hasattr(args, 'output') or args.output is None:
        return  # a script that saves nothing without --output
    from timm.utils.distributed import world_info_from_env
    if world_info_from_env()[1] != 0:
        return  # only the primary process writes
    output = args.output or os.path.join('.', 'output', 'train')
    problem = _writable(output)
    if problem:
        raise TRDConfigError(f'--output {output} cannot be written ({problem}); pass --output DIR in a folder you '
                             f'can write')


def check_train_inputs(args: argparse.Namespace, recipe: dict = None) -> None:
    check_data_dir(args)
    check_output(args)
    check_device(args, recipe)
    check_aug_repeats(args, recipe)
