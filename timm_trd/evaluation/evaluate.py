"""Evaluate a checkpoint the way the TRD paper argues (``timm-trd-eval``).

    timm-trd-eval --checkpoint PATH --data-dir DIR --model NAME [--num-classes N] [--img-size S] [--json FILE]

TRD claims that training on a share of reduced-resolution batches makes a network lean on shape rather than
texture, and keeps it accurate on smaller test images. For one checkpoint this measures, with timm's own model,
dataset, loader and accuracy code:

- top-1 at the full test size and at 1/2 and 3/4 of it (and any ``--sizes``);
- top-1 at full size after BatchNorm recalibration (:func:`timm_trd.plugin.bn_recal.recalibrate_bn`) on N training
  batches at full size, seeded;
- texture removed: top-1 on low-pass (Gaussian-blurred) test images at a few strengths;
- shape removed: top-1 on patch-shuffled test images (k x k tiles in a random order, per image);
- a low/high-frequency cue conflict: hybrid images, the low-pass of image A plus the high-pass of image B of
  another class (pairs fixed by a seed), and ``shape bias = #(prediction = class of A) / #(prediction in {A, B})``.
  It is a proxy for the stylised cue-conflict test of Geirhos et al. (2019), not that test: "shape" is the
  coarse, low-frequency content and "texture" the fine, high-frequency one.
- with ``--cue-conflict-dir``: that test itself, on the published stimuli (:mod:`timm_trd.evaluation.cue_conflict`).

The transforms (:func:`low_pass`, :func:`high_pass`, :func:`hybrid`, :func:`patch_shuffle`) are a small
functional core on batches of *normalised* tensors ``N x C x H x W``. Filtering normalised tensors is the same as
normalising filtered images: the Gaussian kernel sums to one and the normalisation is a per-channel affine map, so
``low_pass`` commutes with it, and the high-pass (``x - low_pass(x)``) only scales by ``1 / std``. Hybrids are not
clipped to the valid pixel range, so a hybrid's low band is exactly A's.

Blur strengths are fractions of the test image's side (sigma 0.01, 0.02, 0.04 of 112 px = 1.12, 2.24, 4.48 px),
so a setting means the same at every test size; the output also gives each one's sigma in pixels and the spatial
frequency (cycles per image) at which the filter keeps half the amplitude, ``sqrt(ln 2 / 2) / (pi * sigma_rel)``.

The probes (blur, shuffle, cue conflict) run on a seeded subset of ``--probe-images`` test images (all with 0) to
keep an evaluation of a small model on a CPU well under a minute; top-1 at every size and after recalibration use
every test image (or a seeded subset of ``--max-images``).
"""

import argparse
import copy
import functools
import json
import math
import random
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..data.dataset_view import DatasetView
from ..errors import TRDConfigError
from .bias_caveat import bias_caveat

CUE_CONFLICT_NAME = ('low/high-frequency cue conflict (hybrid images: low-pass of A + high-pass of B; '
                     'a proxy for the stylised cue-conflict test of Geirhos et al. 2019)')
DEFAULT_FRACTIONS = (0.5, 0.75)
DEFAULT_BLUR = (0.01, 0.02, 0.04)
DEFAULT_SHUFFLE = (2, 4)
DEFAULT_CONFLICT_SIGMA = 0.02


# -- functional core: transforms of a batch of normalised images ------------------------------------------------
def gaussian_kernel1d(sigma: float, radius: int) -> torch.Tensor:
    """A normalised 1-D Gaussian of ``2 * radius + 1`` taps."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).float()


@functools.lru_cache(maxsize=64)
def _blur_matrix(sigma: float, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The ``n x n`` matrix of a 1-D Gaussian blur with reflected borders (torch's ``'reflect'`` padding, folded
    as often as the kernel's reach needs): row ``i`` holds the weights of output pixel ``i``."""
    radius = int(math.ceil(3 * sigma))
    kernel = gaussian_kernel1d(sigma, radius)
    rows = torch.arange(n).repeat_interleave(2 * radius + 1)
    cols = (torch.arange(n).view(-1, 1) + torch.arange(-radius, radius + 1).view(1, -1)).reshape(-1)
    if n > 1:
        period = 2 * (n - 1)
        cols = cols % period
        cols = torch.where(cols >= n, period - cols, cols)
    else:
        cols = torch.zeros_like(cols)
    matrix = torch.zeros(n, n, dtype=torch.float64)
    matrix.index_put_((rows, cols), kernel.double().repeat(n), accumulate=True)
    return matrix.to(device=device, dtype=dtype)


def low_pass(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of ``images`` (``N x C x H x W``) with standard deviation ``sigma`` pixels.

    Separable, per channel, the kernel reaching 3 sigma, with reflected borders (a constant image stays
    constant). Done as two matrix products (``B_h @ x @ B_w^T``), a few times faster on a CPU than a depthwise
    convolution, with the same result. ``sigma <= 0`` returns the images unchanged."""
    if sigma <= 0:
        return images
    h, w = images.shape[-2:]
    return (_blur_matrix(float(sigma), h, images.dtype, images.device) @ images
            @ _blur_matrix(float(sigma), w, images.dtype, images.device).T)


def high_pass(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """What :func:`low_pass` removes: ``images - low_pass(images, sigma)``."""
    return images - low_pass(images, sigma)


def hybrid(low_source: torch.Tensor, high_source: torch.Tensor, sigma: float) -> torch.Tensor:
    """Hybrid images: the low band of ``low_source`` (image A, its shape) plus the high band of ``high_source``
    (image B, its texture), split at the same ``sigma``. Not clipped."""
    return low_pass(low_source, sigma) + high_pass(high_source, sigma)


def half_power_cycles(sigma_rel: float) -> float:
    """Spatial frequency, in cycles per image side, at which a Gaussian of ``sigma_rel`` x side keeps half the
    amplitude (its response is ``exp(-2 pi^2 sigma^2 f^2)``)."""
    return math.sqrt(math.log(2) / 2) / (math.pi * sigma_rel)


def random_tile_orders(count: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` permutations of the ``k * k`` tiles, none the identity (for k >= 2), drawn in order from
    ``generator``: the n-th image always gets the same order, whatever the batching."""
    tiles = k * k
    orders = []
    for _ in range(count):
        order = torch.randperm(tiles, generator=generator)
        while tiles > 1 and torch.equal(order, torch.arange(tiles)):
            order = torch.randperm(tiles, generator=generator)
        orders.append(order)
    return torch.stack(orders) if orders else torch.empty(0, tiles, dtype=torch.long)


def patch_shuffle(images: torch.Tensor, k: int, generator: Optional[torch.Generator] = None,
                  orders: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Cut each image into ``k x k`` tiles and put them back in a random order (one order per image, from
    ``orders`` or ``generator``). Local texture is kept, the global shape is broken.

    Tiles are ``H // k`` by ``W // k``; rows and columns beyond ``k`` whole tiles stay where they are, so every
    image keeps exactly its own pixel values (its histogram)."""
    n, c, h, w = images.shape
    th, tw = h // k, w // k
    if k < 1 or th == 0 or tw == 0:
        raise ValueError(f'cannot cut a {h}x{w} image into {k}x{k} tiles')
    if orders is None:
        orders = random_tile_orders(n, k, generator if generator is not None else torch.Generator())
    orders = orders.to(images.device)
    core = images[:, :, :th * k, :tw * k]
    tiles = core.reshape(n, c, k, th, k, tw).permute(0, 2, 4, 1, 3, 5).reshape(n, k * k, c, th, tw)
    tiles = torch.gather(tiles, 1, orders.view(n, k * k, 1, 1, 1).expand_as(tiles))
    core = tiles.reshape(n, k, k, c, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(n, c, th * k, tw * k)
    out = images.clone()
    out[:, :, :th * k, :tw * k] = core
    return out


def hybrid_partners(targets: Sequence[int], seed: int, indices: Optional[Sequence[int]] = None,
                    pool: Optional[Sequence[int]] = None) -> List[int]:
    """For each image index in ``indices`` (default: all), the index of its partner B: an image of ``pool``
    (default: all) of a different class, drawn uniformly with ``random.Random(seed)``. The same arguments always
    give the same pairs. Raises ``ValueError`` when an image has no image of another class to pair with."""
    indices = range(len(targets)) if indices is None else indices
    pool = range(len(targets)) if pool is None else pool
    by_class: Dict[int, List[int]] = {}
    for i in pool:
        by_class.setdefault(int(targets[i]), []).append(i)
    classes = sorted(by_class)
    rng = random.Random(seed)
    partners = []
    for i in indices:
        others = [c for c in classes if c != int(targets[i])]
        if not others:
            raise ValueError('the cue conflict needs test images of at least two classes')
        # a class first, then an image of it: each other class is as likely, whatever the class sizes
        partners.append(rng.choice(by_class[rng.choice(others)]))
    return partners


def cue_conflict_counts(predictions: torch.Tensor, targets_a: torch.Tensor, targets_b: torch.Tensor) -> Dict[str, int]:
    """How many hybrids were classified as A's class (low band: shape), as B's (high band: texture), neither."""
    shape = int((predictions == targets_a).sum())
    texture = int((predictions == targets_b).sum())
    return {'hybrids': int(predictions.numel()), 'low_band_class': shape, 'high_band_class': texture,
            'other': int(predictions.numel()) - shape - texture}


def shape_bias(counts: Dict[str, int]) -> float:
    """``#(prediction = class of A) / #(prediction in {A, B})``; NaN when no hybrid was counted."""
    counted = counts['low_band_class'] + counts['high_band_class']
    return counts['low_band_class'] / counted if counted else float('nan')


# -- on a dataset ---------------------------------------------------------------------------------------------
def dataset_targets(dataset) -> List[int]:
    """The labels of a timm dataset, without decoding images where the reader lists them (image folders)."""
    samples = getattr(getattr(dataset, 'reader', None), 'samples', None)
    if samples is not None:
        return [int(s[1]) for s in samples]
    view = DatasetView(dataset, range(len(dataset)))
    view.transform = None
    return [int(view[i][1]) for i in range(len(view))]


def _seeded_subset(indices: Sequence[int], count: Optional[int], seed: int) -> List[int]:
    indices = list(indices)
    if not count or count >= len(indices):
        return indices
    return sorted(random.Random(seed).sample(indices, count))


class _Evaluator:
    def __init__(self, model, dataset, data_config, batch_size, workers, device, channels_last):
        self.model, self.dataset, self.config = model, dataset, data_config
        self.batch_size, self.workers, self.device, self.channels_last = batch_size, workers, device, channels_last

    def loader(self, indices, size):
        from timm.data import create_loader
        return create_loader(
            DatasetView(self.dataset, indices), input_size=(self.config['input_size'][0], size, size),
            batch_size=self.batch_size, is_training=False, use_prefetcher=False,
            interpolation=self.config['interpolation'], mean=self.config['mean'], std=self.config['std'],
            crop_pct=self.config['crop_pct'], crop_mode=self.config.get('crop_mode'), num_workers=self.workers)

    def predict(self, model, images):
        images = images.to(self.device)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return model(images)


def _top1_correct(output: torch.Tensor, target: torch.Tensor) -> float:
    from timm.utils import accuracy
    top1, = accuracy(output, target.to(output.device), topk=(1,))
    return top1.item() * target.shape[0] / 100.0


def evaluate_model(model: torch.nn.Module, data_dir: str, img_size: Optional[int] = None,
                   sizes: Sequence[int] = (), fractions: Sequence[float] = DEFAULT_FRACTIONS,
                   recal_batches: int = 20, recal_batch_size: int = 64, scale=None,
                   blur: Sequence[float] = DEFAULT_BLUR, shuffle: Sequence[int] = DEFAULT_SHUFFLE,
                   conflict_sigma: float = DEFAULT_CONFLICT_SIGMA, probe_images: Optional[int] = 1000,
                   max_images: Optional[int] = None, seed: int = 0, batch_size: int = 128, workers: int = 1,
                   device='cpu', crop_pct: Optional[float] = None, split: str = 'val', train_split: str = 'train',
                   channels_last: bool = True) -> dict:
    """Every measurement of the module docstring for ``model`` (already loaded) on the image folder ``data_dir``.

    ``img_size`` is the full test size (default: the model's, from timm's data config); ``scale`` the
    RandomResizedCrop scale of the recalibration batches (train.py's ``--scale``). Returns a JSON-able dict."""
    from timm.data import create_dataset, create_loader, resolve_data_config
    from ..plugin.bn_recal import recalibrate_bn
    from ..plan.rng import preserved_rng

    start = time.perf_counter()
    device = torch.device(device)
    config = resolve_data_config({'img_size': img_size, 'crop_pct': crop_pct}, model=model)
    full = int(config['input_size'][-1])
    test_sizes = list(dict.fromkeys([full] + [int(round(full * f)) for f in fractions] + [int(s) for s in sizes]))
    model = model.to(device).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    dataset = create_dataset('', root=str(data_dir), split=split, is_training=False)
    targets = dataset_targets(dataset)
    indices = _seeded_subset(range(len(dataset)), max_images, seed)
    run = _Evaluator(model, dataset, config, batch_size, workers, device, channels_last)

    # BatchNorm recalibrated copy: full-size training batches, timm's training transforms, every RNG seeded
    recal = None
    if recal_batches > 0:
        recal_model = copy.deepcopy(model)
        train_set = create_dataset('', root=str(data_dir), split=train_split, is_training=True)
        with preserved_rng(device):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed)
            train_loader = create_loader(
                train_set, input_size=config['input_size'], batch_size=recal_batch_size, is_training=True,
                use_prefetcher=False, scale=tuple(scale) if scale else None, interpolation=config['interpolation'],
                mean=config['mean'], std=config['std'], num_workers=workers)
            used = recalibrate_bn(recal_model, iter(train_loader), recal_batches, channels_last)
        recal = {'model': recal_model.eval(), 'batches': used, 'correct': 0.0}

    result = {'data_dir': str(data_dir), 'split': split, 'images': len(indices), 'test_size': full,
              'crop_pct': config['crop_pct'], 'seed': seed, 'top1': {}}
    with torch.inference_mode():
        for size in test_sizes:
            correct, total = 0.0, 0
            for images, target in run.loader(indices, size):
                correct += _top1_correct(run.predict(model, images), target)
                if recal is not None and size == full:
                    recal['correct'] += _top1_correct(run.predict(recal['model'], images), target)
                total += target.shape[0]
            result['top1'][str(size)] = 100.0 * correct / max(total, 1)
        if recal is not None:
            result['bn_recal'] = {'size': full, 'batches': recal['batches'], 'batch_size': recal_batch_size,
                                  'top1': 100.0 * recal['correct'] / max(len(indices), 1)}
        result['probes'] = _probes(run, targets, indices, full, blur, shuffle, conflict_sigma, probe_images, seed)
    result['seconds'] = round(time.perf_counter() - start, 2)
    return result


def _probes(run: _Evaluator, targets, indices, full, blur, shuffle, conflict_sigma, probe_images, seed) -> dict:
    """Blur, patch shuffle and cue conflict on a seeded subset, at full size, in one pass over two loaders (the
    images A and their partners B, in the same order)."""
    probe = _seeded_subset(indices, probe_images, seed)
    partners = hybrid_partners(targets, seed, probe, pool=indices)
    generators = {k: torch.Generator().manual_seed(seed * 1000 + k) for k in shuffle}
    correct = {'clean': 0.0, **{('blur', s): 0.0 for s in blur}, **{('shuffle', k): 0.0 for k in shuffle}}
    counts = {'hybrids': 0, 'low_band_class': 0, 'high_band_class': 0, 'other': 0}
    for (images, target), (images_b, target_b) in zip(run.loader(probe, full), run.loader(partners, full)):
        correct['clean'] += _top1_correct(run.predict(run.model, images), target)
        for s in blur:
            correct[('blur', s)] += _top1_correct(run.predict(run.model, low_pass(images, s * full)), target)
        for k in shuffle:
            shuffled = patch_shuffle(images, k, orders=random_tile_orders(images.shape[0], k, generators[k]))
            correct[('shuffle', k)] += _top1_correct(run.predict(run.model, shuffled), target)
        mixed = hybrid(images, images_b, conflict_sigma * full)
        batch = cue_conflict_counts(run.predict(run.model, mixed).argmax(-1).cpu(), target, target_b)
        counts = {key: counts[key] + batch[key] for key in counts}
    n = max(len(probe), 1)
    classes = int(getattr(run.model, 'num_classes', 0) or 0)
    chance = 100.0 / classes if classes else None
    caveat = bias_caveat(counts['low_band_class'], counts['high_band_class'], 100.0 * correct['clean'] / n, chance,
                         'top-1 on the probe images')
    return {
        'images': len(probe),
        'top1_clean': 100.0 * correct['clean'] / n,
        'low_pass': [{'sigma_rel': s, 'sigma_px': round(s * full, 3), 'half_power_cycles': round(half_power_cycles(s), 2),
                      'top1': 100.0 * correct[('blur', s)] / n} for s in blur],
        'patch_shuffle': [{'k': k, 'tile_px': full // k, 'top1': 100.0 * correct[('shuffle', k)] / n} for k in shuffle],
        'cue_conflict': {'name': CUE_CONFLICT_NAME, 'sigma_rel': conflict_sigma,
                         'sigma_px': round(conflict_sigma * full, 3),
                         'half_power_cycles': round(half_power_cycles(conflict_sigma), 2), 'pair_seed': seed,
                         **counts, 'counted': counts['low_band_class'] + counts['high_band_class'],
                         'shape_bias': shape_bias(counts), 'caveat': caveat},
    }


def folder_classes(data_dir: str, split: str = 'val') -> Dict[str, int]:
    """The class names and indices of an image folder's split (timm's folder reader: sorted folder names)."""
    from timm.data import create_dataset
    reader = getattr(create_dataset('', root=str(data_dir), split=split), 'reader', None)
    return dict(getattr(reader, 'class_to_idx', {}) or {})


def evaluate_checkpoint(checkpoint: str, data_dir: Optional[str], model_name: str, num_classes: Optional[int] = None,
                        use_ema: bool = False, cue_conflict_dir: Optional[str] = None,
                        cue_conflict_map: Optional[str] = None, cue_conflict_only: bool = False, **kwargs) -> dict:
    """Build ``model_name`` with timm, load ``checkpoint`` (timm's ``load_checkpoint``) and :func:`evaluate_model`
    on ``data_dir``; with ``cue_conflict_dir``, also (or, with ``cue_conflict_only`` or no ``data_dir``, only) on
    Geirhos et al.'s stimuli (:mod:`timm_trd.evaluation.cue_conflict`, mapped by ``cue_conflict_map``; class names come from
    ``data_dir``'s class folders). ``num_classes`` defaults to the number of classes in the test folder. The inputs
    are checked first (:mod:`timm_trd.evaluation.eval_inputs`: raises TRDConfigError with the fix)."""
    from timm.models import create_model
    from . import cue_conflict
    from .eval_inputs import check_inputs, load_weights, read_checkpoint, test_size

    stimuli = cue_conflict.find_stimuli(cue_conflict_dir) if cue_conflict_dir else None
    raw_map = cue_conflict.read_map(cue_conflict_map) if stimuli else None
    evaluate_folder = bool(data_dir) and not cue_conflict_only
    recal = evaluate_folder and kwargs.get('recal_batches', 20) > 0  # its batches come from the training split
    train_split = kwargs.get('train_split', 'train') if recal else None
    num_classes, origin = check_inputs(str(checkpoint), str(data_dir) if data_dir else None, model_name,
                                       num_classes, kwargs.get('split', 'val'), train_split)
    class_to_idx = folder_classes(data_dir, kwargs.get('split', 'val')) if data_dir else None
    model = create_model(model_name, **({'num_classes': num_classes} if num_classes else {}))
    category_map = cue_conflict.resolve_map(raw_map, model.num_classes, class_to_idx) if stimuli else None
    load_weights(model, str(checkpoint), use_ema, model_name, num_classes, origin)
    kwargs = dict(kwargs)
    source = test_size(read_checkpoint(str(checkpoint)), kwargs)
    result = {'checkpoint': str(checkpoint), 'model': model_name, 'num_classes': num_classes, 'size_source': source}
    if evaluate_folder:
        result.update(evaluate_model(model, data_dir, **kwargs))
    if stimuli:
        keys = ('img_size', 'crop_pct', 'batch_size', 'workers', 'device')
        result['stimuli'] = cue_conflict.evaluate_stimuli(model, stimuli, category_map,
                                                          **{k: kwargs[k] for k in keys if k in kwargs})
    return result


def flatten(result: dict) -> dict:
    """One flat row of a result (what ``experiments/reproduce.py`` stores per run): ``top1`` at full size,
    ``top1_at_<size>``, ``top1_bn_recal``, ``top1_probe_clean``, ``top1_lowpass_<sigma_rel>``,
    ``top1_shuffle_<k>``, ``shape_bias`` and the cue conflict's counts (and ``geirhos_*``: the stimuli's)."""
    full = result['test_size']
    row = {'eval_test_size': full, 'eval_images': result['images'], 'top1': round(result['top1'][str(full)], 3)}
    for size, top1 in result['top1'].items():
        if int(size) != full:
            row[f'top1_at_{size}'] = round(top1, 3)
    if 'bn_recal' in result:
        row['top1_bn_recal'] = round(result['bn_recal']['top1'], 3)
    probes = result['probes']
    row['probe_images'] = probes['images']
    row['top1_probe_clean'] = round(probes['top1_clean'], 3)
    for p in probes['low_pass']:
        row[f'top1_lowpass_{p["sigma_rel"]:g}'] = round(p['top1'], 3)
    for p in probes['patch_shuffle']:
        row[f'top1_shuffle_{p["k"]}'] = round(p['top1'], 3)
    conflict = probes['cue_conflict']
    row.update(shape_bias=round(conflict['shape_bias'], 4), conflict_sigma_rel=conflict['sigma_rel'],
               conflict_hybrids=conflict['hybrids'], conflict_counted=conflict['counted'],
               eval_seconds=result['seconds'])
    if result.get('stimuli'):
        from .cue_conflict import flatten as stimuli_row
        row.update(stimuli_row(result['stimuli']))
    return row


def format_table(result: dict) -> str:
    """The result as a markdown table, with the settings each number was measured at."""
    full = result['test_size']
    probes, conflict = result['probes'], result['probes']['cue_conflict']
    head = (f'timm-trd-eval: {result.get("model", "model")} from {result.get("checkpoint", "(in memory)")}\n'
            f'test images: {result["images"]} of {result["data_dir"]}/{result["split"]}, full test size {full} px '
            f'(crop_pct {result["crop_pct"]}); probes on {probes["images"]} of them (seed {result["seed"]}); '
            f'{result["seconds"]:.1f} s\n')
    rows = ['| measurement | setting | top-1 (%) |', '|---|---|---|']
    for size, top1 in result['top1'].items():
        note = 'full size' if int(size) == full else f'{int(size) / full:.3g} of full size'
        rows.append(f'| clean | {size} px ({note}) | {top1:.2f} |')
    if 'bn_recal' in result:
        r = result['bn_recal']
        rows.append(f'| BatchNorm recalibrated | {r["size"]} px, statistics over {r["batches"]} training batches of '
                    f'{r["batch_size"]} | {r["top1"]:.2f} |')
    rows.append(f'| clean, probe images | {full} px, {probes["images"]} images | {probes["top1_clean"]:.2f} |')
    for p in probes['low_pass']:
        rows.append(f'| texture removed: low-pass | sigma {p["sigma_rel"]:g} of side = {p["sigma_px"]:g} px '
                    f'(half amplitude at {p["half_power_cycles"]:g} cycles/image) | {p["top1"]:.2f} |')
    for p in probes['patch_shuffle']:
        rows.append(f'| shape removed: patch shuffle | {p["k"]}x{p["k"]} tiles of {p["tile_px"]} px | {p["top1"]:.2f} |')
    rows += ['', f'{conflict["name"]}:',
             f'split at sigma {conflict["sigma_rel"]:g} of side = {conflict["sigma_px"]:g} px (half amplitude at '
             f'{conflict["half_power_cycles"]:g} cycles/image), pairs of different classes drawn with seed '
             f'{conflict["pair_seed"]}; {conflict["hybrids"]} hybrids, {conflict["counted"]} counted '
             f'(prediction = A\'s class {conflict["low_band_class"]}, = B\'s class {conflict["high_band_class"]}, '
             f'neither {conflict["other"]})',
             f'shape bias = #A / #(A or B) = {conflict["shape_bias"]:.3f}, from {conflict["counted"]} decisions']
    if conflict.get('caveat'):
        rows.append(conflict['caveat'])
    return head + '\n'.join(rows)


def format_report(result: dict) -> str:
    """:func:`format_table` and, where measured, the table of Geirhos et al.'s stimuli."""
    from .cue_conflict import format_table as stimuli_table
    parts = [format_table(result) if 'top1' in result else
             f'timm-trd-eval: {result.get("model", "model")} from {result.get("checkpoint", "(in memory)")}']
    if result.get('size_source'):
        parts[0] += f'\ntest size: {result["size_source"]}'
    if result.get('stimuli'):
        parts.append(stimuli_table(result['stimuli']))
    return '\n\n'.join(parts)


def run(argv=None) -> dict:
    """The command: parse ``argv``, evaluate, print the table (or the JSON); returns the result."""
    parser = argparse.ArgumentParser(
        prog='timm-trd-eval', description='Evaluate a checkpoint: top-1 at smaller test sizes, after BatchNorm '
        'recalibration, with texture removed (blur), with shape removed (patch shuffle), and a low/high-frequency '
        'cue-conflict shape bias; with --cue-conflict-dir, the shape bias on Geirhos et al.\'s stimuli.')
    parser.add_argument('--checkpoint', required=True, help='a checkpoint timm\'s load_checkpoint reads '
                        '(train.py\'s last.pth.tar / model_best.pth.tar, or a state dict)')
    parser.add_argument('--data-dir', default=None, help='image folder with the test split (and the training '
                        'split, for BatchNorm recalibration); optional with --cue-conflict-dir')
    parser.add_argument('--model', required=True, help='timm model name the checkpoint was trained as')
    parser.add_argument('--num-classes', type=int, default=None, help='default: the classes in the test folder')
    parser.add_argument('--img-size', type=int, default=None, help='full test size (default: the size the checkpoint '
                        'was trained and validated at, from its train.py args; else the model\'s)')
    parser.add_argument('--sizes', type=int, nargs='*', default=[], help='more test sizes besides 1/2 and 3/4')
    parser.add_argument('--crop-pct', type=float, default=None, help='test crop fraction (default: the model\'s)')
    parser.add_argument('--scale', type=float, nargs=2, default=None,
                        help='RandomResizedCrop scale of the recalibration batches (train.py\'s --scale)')
    parser.add_argument('--split', default='val', help='test folder inside --data-dir (default: val, or timm\'s '
                        'synonyms: validation, valid, eval; . for --data-dir itself)')
    parser.add_argument('--train-split', default='train', help='split the recalibration batches come from')
    parser.add_argument('--recal-batches', type=int, default=20, help='BatchNorm recalibration batches (0: off)')
    parser.add_argument('--recal-batch-size', type=int, default=64)
    parser.add_argument('--blur-sigmas', type=float, nargs='*', default=list(DEFAULT_BLUR),
                        help='low-pass sigmas as fractions of the test image side (default: 0.01 0.02 0.04)')
    parser.add_argument('--shuffle-grids', type=int, nargs='*', default=list(DEFAULT_SHUFFLE),
                        help='patch shuffle with k x k tiles, for each k (default: 2 4)')
    parser.add_argument('--conflict-sigma', type=float, default=DEFAULT_CONFLICT_SIGMA,
                        help='cue-conflict split sigma as a fraction of the side (default: 0.02)')
    parser.add_argument('--probe-images', type=int, default=1000,
                        help='test images the probes use, a seeded subset (default: 1000; 0: all)')
    parser.add_argument('--max-images', type=int, default=None, help='cap the test images (a seeded subset)')
    parser.add_argument('--seed', type=int, default=0, help='seeds the subsets, pairs, tile orders, recalibration')
    parser.add_argument('-b', '--batch-size', type=int, default=128)
    parser.add_argument('--workers', type=int, default=1, help='loader worker processes (default: 1)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--use-ema', action='store_true', help='load the checkpoint\'s EMA weights')
    parser.add_argument('--cue-conflict-dir', default=None, metavar='DIR', help='also measure the shape bias on '
                        'Geirhos et al.\'s stimuli: the stimuli/ folder of rgeirhos/texture-vs-shape (or its '
                        'style-transfer-preprocessed-512/); without --data-dir only these are evaluated')
    parser.add_argument('--cue-conflict-map', default=None, metavar='MAP', help='which classes stand for the 16 '
                        'categories: imagenet (default for 1000 classes), cifar10, a JSON/YAML file '
                        '{category: [class names or indices]} or category=class,... (names: --data-dir\'s folders)')
    parser.add_argument('--cue-conflict-only', action='store_true', help='evaluate only the stimuli (--data-dir '
                        'then only names the classes)')
    parser.add_argument('--json', default=None, metavar='FILE', help='also write the result as JSON ("-": print '
                        'the JSON instead of the table)')
    args = parser.parse_args(argv)
    if args.probe_images < 0 or args.recal_batches < 0 or any(s <= 0 for s in args.blur_sigmas) \
            or args.conflict_sigma <= 0 or any(k < 2 for k in args.shuffle_grids):
        parser.error('need --probe-images >= 0, --recal-batches >= 0, sigmas > 0 and shuffle grids >= 2')
    if not args.data_dir and not args.cue_conflict_dir:
        parser.error('give --data-dir (the test images), --cue-conflict-dir (the shape-bias stimuli) or both')
    if (args.cue_conflict_map or args.cue_conflict_only) and not args.cue_conflict_dir:
        parser.error('--cue-conflict-map and --cue-conflict-only need --cue-conflict-dir')

    try:
        result = evaluate_checkpoint(
            args.checkpoint, args.data_dir, args.model, num_classes=args.num_classes, use_ema=args.use_ema,
            img_size=args.img_size, sizes=args.sizes, recal_batches=args.recal_batches,
            recal_batch_size=args.recal_batch_size, scale=args.scale, blur=args.blur_sigmas, shuffle=args.shuffle_grids,
            conflict_sigma=args.conflict_sigma, probe_images=args.probe_images or None, max_images=args.max_images,
            seed=args.seed, batch_size=args.batch_size, workers=args.workers, device=args.device,
            crop_pct=args.crop_pct, split=args.split, train_split=args.train_split,
            cue_conflict_dir=args.cue_conflict_dir, cue_conflict_map=args.cue_conflict_map,
            cue_conflict_only=args.cue_conflict_only)
    except TRDConfigError as e:
        print(f'timm-trd-eval: error: {e}', file=sys.stderr)
        sys.exit(2)
    if args.json == '-':
        print(json.dumps(result, indent=1))
        return result
    print(format_report(result), flush=True)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=1)
    return result


def main(argv=None):
    try:
        run(argv)
    except TRDConfigError as e:
        print(f'timm-trd-eval: error: {e}', file=sys.stderr)
        sys.exit(2)


if __name__ == '__main__':
    main()
