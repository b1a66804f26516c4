"""Reduced images decoded at a reduced JPEG scale: the same picture as timm's path, cheaper; timm's transforms,
loaders and samplers keep working around it."""
import logging
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import ImageDataset, create_loader, create_transform

from conftest import PATHS
from jpeg_sampling import SAMPLINGS, luma_factors, save as save_jpeg
from timm_trd.data.decode import (ReducedDecodeDataset, ReducedLoading, attach, crop_scale, draft, fixed_scale,
                             split_transform)

pytestmark = pytest.mark.skipif(ReducedDecodeDataset is None, reason='needs the loader path (timm >= 1.0.29)')


def photo(rng: np.random.Generator, w: int = 320, h: int = 240, shapes: int = 4) -> Image.Image:
    """A photo-like picture: smooth 1/f colour field, a few (``shapes``) hard-edged shapes, sensor noise."""
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    field = np.zeros((h, w, 3))
    for f in (1, 2, 4, 8, 16, 32):
        for c in range(3):
            angle, phase = rng.uniform(0, math.pi), rng.uniform(0, 2 * math.pi)
            field[..., c] += np.sin(2 * math.pi * f * (xx * math.cos(angle) + yy * math.sin(angle)) + phase) / f
    pixels = 128 + 60 * field
    for _ in range(shapes):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(10, h / 3)
        pixels[(xx * max(w, h) - cx) ** 2 + (yy * max(w, h) - cy) ** 2 < r * r] = rng.integers(0, 256, size=3)
    pixels += rng.normal(0, 3, size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_folder(root, n_per_class=6, classes=2, fmt='JPEG', size=(320, 240), seed=0):
    rng = np.random.default_rng(seed)
    ext = {'JPEG': 'jpg', 'PNG': 'png'}[fmt]
    for c in range(classes):
        (root / f'c{c}').mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            photo(rng, *size).save(root / f'c{c}' / f'{i}.{ext}', format=fmt, **({'quality': 90} if fmt == 'JPEG' else {}))
    return root


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.float() - b.float()) ** 2).item()
    return float('inf') if mse == 0 else 10 * math.log10(1.0 / mse)


def unit_transform(size, **kw):
    """timm's training transform, ending in [0, 1] tensors (mean 0, std 1) so PSNR reads in pixel units."""
    return create_transform(size, is_training=True, mean=(0, 0, 0), std=(1, 1, 1), **kw)


def same_draws(seed, fn):
    random.seed(seed)
    torch.manual_seed(seed)
    return fn()


def today(path, transform):
    return transform(Image.open(path).convert('RGB'))


def test_crop_scale_is_the_largest_that_leaves_enough_pixels():
    assert crop_scale((448, 448), (112, 112)) == 4
    assert crop_scale((447, 900), (112, 112)) == 2
    assert crop_scale((100, 900), (112, 112)) == 1
    assert crop_scale((2000, 2000), (112, 112)) == 8
    assert fixed_scale((224, 224), (112, 112)) == 2
    assert fixed_scale((224, 224), (160, 160)) == 1
    assert fixed_scale((224, 224), (56, 56)) == 4


@pytest.mark.parametrize('out', [56, 24])
def test_reduced_image_is_the_same_picture(tmp_path, out):
    """Same seed, so the same crop, interpolation, flip and jitter: the decoded-at-scale image differs from timm's
    by resampling only (PSNR reported, >= 30 dB asserted), and the scales really are used."""
    folder = write_folder(tmp_path / 'train', n_per_class=8)
    files = sorted(folder.rglob('*.jpg'))
    transform = unit_transform(out)
    loading = ReducedLoading(transform, 'RGB')
    values, scales = [], []
    for n, path in enumerate(files * 3):
        ref = same_draws(n, lambda: today(path, transform))
        fast = same_draws(n, lambda: loading.load(open(path, 'rb')))
        assert fast.shape == ref.shape == (3, out, out)
        values.append(psnr(ref, fast))
        random.seed(n)
        i, j, h, w = loading.crop.draw(Image.open(path))
        scales.append(crop_scale((h, w), (out, out)))
    finite = [v for v in values if math.isfinite(v)]
    print(f'PSNR at {out}px over {len(values)} crops: mean {np.mean(finite):.1f} dB, min {min(values):.1f} dB, '
          f'scales used {sorted(set(scales))}')
    assert min(values) >= 30
    assert len(set(scales) - {1}) >= 1  # some crops were decoded at a reduced scale
    assert all(math.isinf(v) for v, k in zip(values, scales) if k == 1)  # scale 1 is exactly timm's path


def write_subsampled(path, picture, sampling):
    """A JPEG with the given chroma subsampling: Pillow's where it writes it, else the test encoder's."""
    if sampling == 'grey':
        picture.convert('L').save(path, format='JPEG', quality=90)
    elif sampling in ('4:4:4', '4:2:2', '4:2:0'):
        picture.save(path, format='JPEG', quality=90, subsampling=sampling)
    else:
        save_jpeg(picture, path, sampling, quality=90)
    return path


@pytest.mark.parametrize('sampling', ['4:4:4', '4:2:0', '4:2:2', '4:1:1', '4:4:0', 'grey'])
def test_fast_decode_keeps_the_colour_of_every_subsampling(tmp_path, sampling):
    """libjpeg's scaled decode keeps chroma at its own resolution when it is subsampled unequally: at 1/4 and 1/8
    a 4:2:2 or 4:4:0 JPEG loses colour against timm's reduced image, so it is decoded at 1/2 at most, and 4:1:1
    (lost even at 1/2 on real photos) at full size; every crop stays >= 30 dB PSNR (the README's floor)."""
    rng = np.random.default_rng(3)
    files = [write_subsampled(tmp_path / f'{n}.jpg', photo(rng, 480, 360, shapes=32), sampling) for n in range(6)]
    opened = Image.open(files[0])
    assert luma_factors(opened) == ((1, 1) if sampling == 'grey' else SAMPLINGS[sampling])
    limit = 1 if sampling == '4:1:1' else 8 if sampling in ('4:4:4', '4:2:0', 'grey') else 2
    assert draft(opened, 8) == limit
    transform = unit_transform(24)
    loading = ReducedLoading(transform, 'RGB')
    values = []
    for n, path in enumerate(files * 4):
        ref = same_draws(n, lambda: today(path, transform))
        fast = same_draws(n, lambda: loading.load(open(path, 'rb')))
        values.append(min(psnr(ref, fast), 60.0))
    print(f'{sampling}: PSNR at 24 px over {len(values)} crops: mean {np.mean(values):.1f} dB, '
          f'p5 {np.percentile(values, 5):.1f} dB, min {min(values):.1f} dB')
    if limit == 1:
        assert min(values) == 60  # never scaled: exactly timm's picture
    else:
        assert max(values) < 60  # DCT scaling was used (a crop at scale 1 is identical)
    assert min(values) >= 30


def test_png_and_small_images_fall_through_unchanged(tmp_path):
    png = write_folder(tmp_path / 'png', n_per_class=2, fmt='PNG')
    small = write_folder(tmp_path / 'small', n_per_class=2, size=(40, 30))
    transform = unit_transform(24)
    loading = ReducedLoading(transform, 'RGB')
    for n, path in enumerate(sorted(png.rglob('*.png')) + sorted(small.rglob('*.jpg'))):
        img = Image.open(path)
        if img.format == 'PNG':
            assert draft(img, 2) == 1  # not a JPEG: decoded as it is
        else:
            assert max(img.size) < 2 * 24  # no crop of it has 24 pixels at 1/2
        ref = same_draws(n, lambda: today(path, transform))
        fast = same_draws(n, lambda: loading.load(open(path, 'rb')))
        assert torch.equal(ref, fast), path


def test_transforms_without_a_random_resized_crop_are_left_alone():
    assert split_transform(create_transform(32, is_training=True, no_aug=True)) == (None, None)
    crop, rest = split_transform(create_transform(32, is_training=True, auto_augment='rand-m9-mstd0.5', re_prob=0.5))
    assert crop is not None and len(rest.transforms) >= 4


def scheduled_loader(folder, full=64, small=32, **kw):
    dataset = ImageDataset(str(folder))
    return create_loader(dataset, input_size=(3, full, full), batch_size=4, is_training=True, use_prefetcher=False,
                         input_size_choices=[(3, full, full), (3, small, small)], batch_choice_weights=[0.5, 0.5],
                         batch_choice_seed=0, **kw)


@pytest.mark.parametrize('loader_kw', [
    dict(),
    dict(auto_augment='rand-m9-mstd0.5-inc1', re_prob=0.25),
    dict(num_workers=1),
], ids=['default', 'randaugment-erasing', 'worker'])
def test_timm_loader_serves_both_sizes_after_attach(tmp_path, loader_kw):
    folder = write_folder(tmp_path / 'train', n_per_class=8)
    loader = scheduled_loader(folder, **loader_kw)
    line = attach(loader)
    assert 'DCT scale' in line and isinstance(loader.dataset, ReducedDecodeDataset)
    sizes = {tuple(x.shape[-2:]) for x, _ in loader}
    assert sizes == {(64, 64), (32, 32)}


def test_attach_says_why_it_does_nothing(tmp_path):
    folder = write_folder(tmp_path / 'train', n_per_class=4)
    assert 'no-trd-fast-decode' in attach(scheduled_loader(folder), fast_decode=False)
    assert 'RandomResizedCrop' in attach(scheduled_loader(folder, no_aug=True))
    plain = create_loader(ImageDataset(str(folder)), input_size=(3, 32, 32), batch_size=4, is_training=True,
                          use_prefetcher=False)
    assert 'scheduled loader' in attach(plain)


def test_aug_repeats_under_a_distributed_sampler(tmp_path):
    """--aug-repeats builds timm's RepeatAugSampler (it needs a process group: one gloo process here)."""
    import torch.distributed as dist
    folder = write_folder(tmp_path / 'train', n_per_class=8)
    dist.init_process_group('gloo', init_method=f'file://{tmp_path / "pg"}', rank=0, world_size=1)
    try:
        loader = scheduled_loader(folder, distributed=True, num_aug_repeats=3)
        attach(loader)
        sizes = [tuple(x.shape[-2:]) for x, _ in loader]
    finally:
        dist.destroy_process_group()
    assert set(sizes) == {(64, 64), (32, 32)}


@pytest.mark.parametrize('path', PATHS)
def test_plugin_logs_once_and_serves_the_planned_sizes(mini_train, tmp_path, monkeypatch, caplog, path):
    from timm_trd import install
    folder = write_folder(tmp_path / 'data' / 'train', n_per_class=8)
    monkeypatch.setattr('sys.argv', ['mini_train.py', '--data-dir', str(folder.parent), '--img-size', '64',
                                     '--trd-prob', '0.5', '--trd-size', '32', '--trd-mode', path, '-b', '4',
                                     '--epochs', '1'])
    plugin = install(mini_train)
    with caplog.at_level(logging.INFO, logger='timm_trd'):
        result = mini_train.main()
    lines = [r.getMessage() for r in caplog.records if 'DCT scale' in r.getMessage()]
    assert len(lines) == (1 if path == 'loader' else 0)
    plan = plugin.loader.plan(0)
    assert [tuple(s[2:]) for s in result['shapes']['0']] == [(32, 32) if r else (64, 64) for r in plan]
    if path == 'loader':
        assert isinstance(plugin.loader.loader.loader.dataset, ReducedDecodeDataset)
