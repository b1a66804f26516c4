"""What train.py would do silently with an image folder, said or stopped before training.

train.py reads ``--data-dir`` with timm's image-folder reader (``ImageDataset``), whose classes are the folders that
hold images, and builds the model before it reads a single image. Four cases then train something other than what
the user has, without a word:

- no ``--num-classes``: the model's default head (1000 classes for ImageNet models) for a folder of, say, 10
  classes. The count is taken from the folder instead (one log line says so);
- a ``--num-classes`` that differs from the folder's classes (an empty class folder is no class for timm), or a
  single class folder: stop with one line;
- no ``val/`` folder (timm's dataset factory then falls back to ``--data-dir`` itself): train.py validates on the
  training images, so its top-1 is a training score: one warning line;
- images much smaller than the training size (a folder of 16x16 images trained at 224): timm's crop upsamples
  them; one warning line names the size of the images and ``--img-size``.

Only folders are looked at (a ``.tar`` or a ``--dataset`` with a ``prefix/`` are left to timm), and only cheaply: the
class folders are listed and each is read up to its first image; the image sizes come from a few image headers.
"""

import argparse
import os
from typing import List, Optional, Sequence, Tuple

from ..errors import TRDConfigError

UPSAMPLE_WARN = 2.0
"""Warn when the largest sampled image side is this many times smaller than the training size, or more."""


def _image_types() -> set:
    from timm.data.readers.img_extensions import get_img_extensions
    return get_img_extensions(as_set=True)


def split_root(data_dir: str, split: str) -> Optional[str]:
    """The folder timm's dataset factory reads for ``split`` (its own search, synonyms included), or None where
    it falls back to ``data_dir`` itself."""
    from timm.data.dataset_factory import _search_split
    found = _search_split(data_dir, split)
    return None if os.path.normpath(found) == os.path.normpath(data_dir) else found


def class_folders(folder: str) -> Tuple[Optional[List[str]], List[str]]:
    """(the class folders timm's reader finds in ``folder``, the folders it skips as empty); (None, []) for a
    layout this cheap look cannot count (images in nested folders, or directly in ``folder``)."""
    types = _image_types()
    classes, empty = [], []
    with os.scandir(folder) as top:
        entries = sorted(top, key=lambda e: e.name)
    for entry in entries:
        if not entry.is_dir():
            if os.path.splitext(entry.name)[1].lower() in types:
                return None, []  # images beside the class folders: a layout timm labels otherwise
            continue
        has_image = has_folder = False
        with os.scandir(entry.path) as inner:
            for item in inner:
                if item.is_dir():
                    has_folder = True
                elif os.path.splitext(item.name)[1].lower() in types:
                    has_image = True
                    break
        if has_image:
            classes.append(entry.name)
        elif has_folder:
            return None, []
        else:
            empty.append(entry.name)
    return classes, empty


def _reads_folder(args: argparse.Namespace) -> Optional[str]:
    """train.py's data folder when it is one timm's image-folder reader reads, else None."""
    if '/' in str(getattr(args, 'dataset', '') or ''):
        return None
    root = getattr(args, 'data_dir', None) or getattr(args, 'data', None)
    return root if root and os.path.isdir(root) else None


def check_classes(args: argparse.Namespace) -> Optional[str]:
    """Set ``args.num_classes`` from the training folder when not given (returns the line that says so); stop
    when given and different, or when the folder has a single class."""
    root = _reads_folder(args)
    if root is None or not hasattr(args, 'num_classes') or getattr(args, 'class_map', ''):
        return None
    train = split_root(root, getattr(args, 'train_split', 'train') or 'train') or root
    classes, empty = class_folders(train)
    if classes is None:
        return None
    skipped = (f' ({", ".join(empty[:3])}{" ..." if len(empty) > 3 else ""} holds no image, so timm\'s reader '
               f'has no such class)') if empty else ''
    if len(classes) < 2:
        raise TRDConfigError(
            f'{train} has {len(classes)} class folder{"" if len(classes) == 1 else "s"} with images{skipped}: a '
            f'classifier needs two or more (one folder per class, train/<class>/<image>)')
    given = args.num_classes
    if given is None:
        args.num_classes = len(classes)
        return (f'timm-trd: --num-classes {len(classes)}, the class folders of {train}{skipped} (no --num-classes '
                f'given: train.py would build the model\'s default head)')
    if int(given) != len(classes):
        raise TRDConfigError(
            f'--num-classes {given}, but {train} has {len(classes)} class folders with images{skipped}; pass '
            f'--num-classes {len(classes)} (or leave it out: timm-trd then counts the folders)')
    return None


def val_folder_warning(args: argparse.Namespace) -> Optional[str]:
    """A line when train.py's validation split falls back to the data folder itself (the training images)."""
    root = _reads_folder(args)
    split = getattr(args, 'val_split', None)
    if root is None or not split or split_root(root, split) is not None:
        return None
    return (f'timm-trd: {root} has no {split}/ folder (nor val/), so train.py validates on every image under {root}, '
            f'the training images included: its top-1 is a training score; add {root}/val/ (a folder per class) '
            f'or pass --val-split \'\' to train without validation')


def check_folder(args: argparse.Namespace) -> Tuple[Optional[str], Optional[str]]:
    """Check (and complete) ``args`` for the image folder; returns (an info line, a warning line) to log once
    the other checks have passed too (a run that stops prints its one line only)."""
    return check_classes(args), val_folder_warning(args)


def _sample_paths(dataset, count: int = 8) -> List[str]:
    samples = getattr(getattr(dataset, 'reader', None), 'samples', None)
    if not samples:
        return []
    step = max(1, len(samples) // count)
    return [str(sample[0]) for sample in list(samples[::step])[:count]]


def small_images_warning(dataset, full_hw: Sequence[int]) -> Optional[str]:
    """One line when the training images (a few sampled) are much smaller than the training size, else None."""
    from PIL import Image
    sizes = []
    for path in _sample_paths(dataset):
        try:
            with Image.open(path) as image:
                sizes.append(image.size)
        except OSError:
            continue
    if not sizes:
        return None
    largest = max(max(size) for size in sizes)
    if largest * UPSAMPLE_WARN > min(full_hw):
        return None
    w, h = max(sizes, key=max)
    return (f'timm-trd: the training images are at most {w}x{h} ({len(sizes)} sampled) and train.py trains at '
            f'{full_hw[0]}x{full_hw[1]}: its crop upsamples them {min(full_hw) / largest:.0f}x, adding no detail; '
            f'pass --img-size {largest} (or a size near it) to train at the images\' own size')
