"""``timm-trd-eval``'s inputs, checked before the model is built: one line that names the fix for each.

Without these checks a wrong input ends in a traceback, or worse, in a plausible answer to another question:

- a ``--data-dir`` that does not exist (timm's bare ``assert os.path.exists``);
- a data folder without the test split: timm's dataset factory then falls back to the whole folder, so the
  training images were evaluated and reported as ``val``; likewise the BatchNorm recalibration's training split;
- a ``--checkpoint`` that is missing or cannot be read (a bare ``FileNotFoundError`` / ``OSError`` without the path);
- a checkpoint of another model or another class count (a ``state_dict`` traceback): train.py's checkpoints hold
  its args, so the line says which model and class count the checkpoint holds; a bare state dict is told by its
  classifier's shape;
- a ``--num-classes`` inferred from the test folder that does not match the checkpoint (the line says it was
  inferred, and from which folder);
- the test size: the model's default (224 for a ResNet-50) is not the size a checkpoint trained at 112 or 32 was
  validated at; train.py's args in the checkpoint hold it (``--input-size`` / ``--img-size``, and ``--crop-pct``),
  so that is the default, ``--img-size`` overrides it, and the report says which (:func:`test_size`).
"""

import argparse
import os
from typing import Optional, Tuple

from ..errors import TRDConfigError


def split_folder(data_dir: str, split: str) -> Optional[str]:
    """The folder timm's dataset factory reads for ``split`` in ``data_dir`` (its own search, synonyms included:
    ``val``, ``validation``, ...), or None where it would fall back to ``data_dir`` itself."""
    from timm.data.dataset_factory import _search_split
    if not os.path.isdir(data_dir):
        return data_dir  # a tar file: timm reads it whole
    found = _search_split(data_dir, split)
    return None if os.path.normpath(found) == os.path.normpath(data_dir) and split not in ('.', '') else found


def check_data(data_dir: str, split: str, train_split: Optional[str]) -> str:
    """The test folder timm will read; raises TRDConfigError for a missing data dir or split folder.
    ``train_split`` None: no recalibration, so no training split needed."""
    if not os.path.exists(data_dir):
        raise TRDConfigError(f'--data-dir {data_dir} does not exist; pass the folder that holds the test split '
                             f'({split}/)')
    test = split_folder(data_dir, split)
    if test is None:
        raise TRDConfigError(
            f'{data_dir} has no {split}/ folder to test on (without it timm would read every image under '
            f'{data_dir}, training images included); pass --split FOLDER for the test folder inside it '
            f'(--split . for {data_dir} itself)')
    if train_split is not None and split_folder(data_dir, train_split) is None:
        raise TRDConfigError(
            f'{data_dir} has no {train_split}/ folder for the BatchNorm recalibration batches; pass --train-split '
            f'FOLDER, or --recal-batches 0 to skip the recalibration')
    return test


def folder_classes(data_dir: str, split: str) -> int:
    """The classes timm's image-folder reader finds in the test split."""
    from timm.data import create_dataset
    reader = getattr(create_dataset('', root=str(data_dir), split=split), 'reader', None)
    return len(getattr(reader, 'class_to_idx', {}) or {})


def read_checkpoint(path: str) -> dict:
    """The checkpoint's entries, tensors memory-mapped (timm's ``load_checkpoint_metadata``); raises TRDConfigError
    naming the file for one that is missing, truncated or not a checkpoint."""
    from timm.utils import load_checkpoint_metadata
    if not os.path.isfile(path):
        raise TRDConfigError(f'--checkpoint {path} does not exist; pass train.py\'s last.pth.tar or '
                             f'model_best.pth.tar (or a saved state dict)')
    try:
        checkpoint = load_checkpoint_metadata(path)
    except Exception as e:  # noqa: BLE001 - truncated zip, random bytes, pickle errors: all the same advice
        reason = ' '.join(str(e).split())[:160] or type(e).__name__
        raise TRDConfigError(f'--checkpoint {path} cannot be read ({type(e).__name__}: {reason}); the file is '
                             f'damaged or not a PyTorch checkpoint: pass a complete one') from None
    if not isinstance(checkpoint, dict):
        raise TRDConfigError(f'--checkpoint {path} holds a {type(checkpoint).__name__}, not a checkpoint or a '
                             f'state dict; pass train.py\'s last.pth.tar or model_best.pth.tar')
    return checkpoint


def _arch(name) -> Optional[str]:
    """A timm model name without its pretrained tag (``resnet50.a1_in1k`` -> ``resnet50``); None for hub names."""
    from timm.models import get_arch_name
    name = str(name)
    if ':' in name or '/' in name:
        return None
    return get_arch_name(name)


def trained_as(checkpoint: dict) -> Tuple[Optional[str], Optional[int]]:
    """The model name and class count train.py's args in the checkpoint hold (None where unknown)."""
    args = checkpoint.get('args')
    if not isinstance(args, argparse.Namespace):
        return None, None
    classes = getattr(args, 'num_classes', None)
    return getattr(args, 'model', None), int(classes) if classes else None


def test_size(checkpoint: dict, kwargs: dict) -> str:
    """Fill ``kwargs['img_size']`` (and ``crop_pct``) from train.py's args in ``checkpoint`` where not given;
    returns where the test size comes from, in words."""
    if kwargs.get('img_size'):
        return f'{kwargs["img_size"]} px, from --img-size'
    args = checkpoint.get('args')
    input_size = getattr(args, 'input_size', None) if isinstance(args, argparse.Namespace) else None
    img_size = getattr(args, 'img_size', None) if isinstance(args, argparse.Namespace) else None
    if input_size:
        size, option = int(input_size[-1]), f'--input-size {" ".join(map(str, input_size))}'
    elif img_size:
        size, option = int(img_size), f'--img-size {img_size}'
    else:
        return 'the model\'s default (the checkpoint holds no train.py --img-size / --input-size; --img-size sets it)'
    kwargs['img_size'] = size
    crop = getattr(args, 'crop_pct', None)
    if crop and not kwargs.get('crop_pct'):
        kwargs['crop_pct'] = float(crop)
        option += f' --crop-pct {crop:g}'
    return f'{size} px, the size it was trained and validated at (train.py\'s {option} in the checkpoint; --img-size ' \
           f'overrides it)'


def check_inputs(checkpoint_path: str, data_dir: Optional[str], model_name: str, num_classes: Optional[int], split: str,
                 train_split: Optional[str]) -> Tuple[Optional[int], str]:
    """Check everything ``timm-trd-eval`` gets before a model is built; returns the class count to build with and
    where it came from (for the message of a checkpoint that still does not fit)."""
    if data_dir:  # None: only the shape-bias stimuli are evaluated (timm-trd-eval --cue-conflict-dir)
        check_data(data_dir, split, train_split)
    checkpoint = read_checkpoint(checkpoint_path)
    trained_model, trained_classes = trained_as(checkpoint)
    holds = f'--checkpoint {checkpoint_path} holds a {trained_model} with {trained_classes} classes (its train.py args)'
    if trained_model and _arch(trained_model) and _arch(model_name) and _arch(trained_model) != _arch(model_name):
        raise TRDConfigError(f'{holds}, not a {model_name}; pass --model {trained_model}')
    origin = '--num-classes'
    if num_classes is None and data_dir:
        found = folder_classes(data_dir, split)
        num_classes, origin = found or None, f'the {found} class folders of {split_folder(data_dir, split)}'
        if trained_classes and found and found != trained_classes:
            raise TRDConfigError(
                f'{holds}, but the test folder {split_folder(data_dir, split)} has {found} class folders (no '
                f'--num-classes given, so it was inferred from them); test on a folder with the training classes, '
                f'or pass --num-classes {trained_classes} if its classes are the first {found} of training (sorted '
                f'by name)')
    elif trained_classes and num_classes != trained_classes:
        raise TRDConfigError(f'{holds}, not {num_classes}; pass --num-classes {trained_classes}')
    return num_classes, origin


def load_weights(model, checkpoint_path: str, use_ema: bool, model_name: str, num_classes: Optional[int],
                 origin: str) -> None:
    """timm's ``load_checkpoint``; a state dict that does not fit the model becomes one line saying what does not
    fit and, for a bare state dict, how many classes its classifier holds."""
    from timm.models import load_checkpoint, load_state_dict
    try:
        load_checkpoint(model, str(checkpoint_path), use_ema=use_ema)
        return
    except RuntimeError as e:
        details = [line.strip() for line in str(e).splitlines()[1:] if line.strip()]
        first = (details[0] if details else str(e))[:200]
    classifier = (getattr(model, 'pretrained_cfg', None) or {}).get('classifier')
    held = ''
    if isinstance(classifier, str):
        weight = load_state_dict(str(checkpoint_path), use_ema).get(f'{classifier}.weight')
        if weight is not None and weight.ndim >= 1:
            held = f'; its classifier {classifier} holds {weight.shape[0]} classes'
    built = f'{num_classes} classes ({origin})' if num_classes else 'its default classes'
    raise TRDConfigError(f'--checkpoint {checkpoint_path} does not fit --model {model_name} with {built}: {first}'
                         f'{held}; pass the --model and --num-classes it was trained with')
