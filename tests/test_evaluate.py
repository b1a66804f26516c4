"""timm-trd-eval (timm_trd/evaluation/evaluate.py): the transforms do what they say, the cue-conflict pairs are fixed by the
seed, the shape bias is 1 for a classifier that sees only the low band and 0 for one that sees only the high band,
and the command runs end to end on a checkpoint saved from a timm model. Generated images only."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from timm_trd.evaluation import evaluate as ev
from timm_trd.data.toy_data import draw_sample


def _toy_batch(n=6, size=48, seed=0):
    """Shapes on striped or noisy textures (timm_trd.data.toy_data), as a normalised N x 3 x size x size batch."""
    rng = np.random.default_rng(seed)
    shapes = ['circle', 'square', 'triangle', 'cross']
    images = [np.asarray(draw_sample(shapes[i % 4], size, rng), dtype=np.float32) / 255 for i in range(n)]
    return (torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) - 0.5) / 0.25


def _spectrum(images):
    """2-D Fourier transform through a Hann window (so the image's borders, which a DFT wraps around, add no
    spurious high frequencies)."""
    h, w = images.shape[-2:]
    window = torch.hann_window(h, periodic=False).view(-1, 1) * torch.hann_window(w, periodic=False).view(1, -1)
    return torch.fft.fft2((images - images.mean(dim=(-2, -1), keepdim=True)) * window)


def _band_energy(images, low, high):
    """Spectral energy of each image between ``low`` and ``high`` cycles per pixel (radial frequency)."""
    h, w = images.shape[-2:]
    spectrum = _spectrum(images).abs() ** 2
    fy, fx = torch.fft.fftfreq(h).view(-1, 1), torch.fft.fftfreq(w).view(1, -1)
    radius = (fy ** 2 + fx ** 2).sqrt()
    return (spectrum * ((radius >= low) & (radius < high))).sum(dim=(-3, -2, -1))


# -- transforms --------------------------------------------------------------------------------------------------
def test_low_pass_removes_high_frequencies_and_keeps_low_ones():
    images = _toy_batch()
    previous = _band_energy(images, 0.25, 1.0)
    for sigma in (0.5, 1.12, 2.24, 4.48):
        blurred = ev.low_pass(images, sigma)
        high = _band_energy(blurred, 0.25, 1.0)
        assert (high < previous).all()  # stronger blur, less high-frequency energy
        previous = high
    assert (_band_energy(ev.low_pass(images, 2.24), 0.25, 1.0) < 0.01 * _band_energy(images, 0.25, 1.0)).all()
    # the coarsest band (shape) is kept: at 1-2 cycles per image, sigma 1 px keeps > 95 % of the energy
    lowest = (1 / 48, 2.5 / 48)
    assert (_band_energy(ev.low_pass(images, 1.0), *lowest) > 0.95 * _band_energy(images, *lowest)).all()
    flat = torch.full((2, 3, 20, 30), 0.7)
    assert torch.allclose(ev.low_pass(flat, 8.0), flat, atol=1e-5)  # reflected borders: constants stay constant
    assert torch.allclose(ev.low_pass(images, 1.5).mean(dim=(-2, -1)), images.mean(dim=(-2, -1)), atol=0.05)
    assert ev.low_pass(images, 0) is images


def test_low_pass_matches_a_reflect_padded_gaussian_convolution():
    images = torch.randn(2, 3, 24, 31)
    for sigma in (0.8, 3.0):
        radius = math.ceil(3 * sigma)
        kernel = ev.gaussian_kernel1d(sigma, radius)
        x = torch.nn.functional.pad(images, (radius, radius, radius, radius), mode='reflect')
        conv = torch.nn.functional.conv2d(x, (kernel.view(-1, 1) * kernel.view(1, -1)).expand(3, 1, -1, -1), groups=3)
        assert torch.allclose(ev.low_pass(images, sigma), conv, atol=1e-5)


def test_patch_shuffle_keeps_the_pixel_histogram_and_moves_whole_tiles():
    images = _toy_batch(n=4, size=50)  # 50 = 4 x 12 + 2: the last 2 rows and columns stay in place
    for k in (2, 4):
        shuffled = ev.patch_shuffle(images, k, generator=torch.Generator().manual_seed(k))
        assert torch.equal(images.flatten(2).sort(-1).values, shuffled.flatten(2).sort(-1).values)
        assert not torch.equal(images, shuffled)
        t = 50 // k
        assert torch.equal(shuffled[..., t * k:, :], images[..., t * k:, :])
        assert torch.equal(shuffled[..., :, t * k:], images[..., :, t * k:])
        for n in range(images.shape[0]):
            source = [images[n, :, i * t:(i + 1) * t, j * t:(j + 1) * t].numpy().tobytes()
                      for i in range(k) for j in range(k)]
            moved = [shuffled[n, :, i * t:(i + 1) * t, j * t:(j + 1) * t].numpy().tobytes()
                     for i in range(k) for j in range(k)]
            assert sorted(moved) == sorted(source) and moved != source  # the same tiles, another order


def test_tile_orders_follow_the_seed_not_the_batching():
    whole = ev.random_tile_orders(10, 2, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    in_parts = torch.cat([ev.random_tile_orders(4, 2, g), ev.random_tile_orders(6, 2, g)])
    assert torch.equal(whole, in_parts)
    assert not any(torch.equal(o, torch.arange(4)) for o in whole)  # never the identity
    assert not torch.equal(whole, ev.random_tile_orders(10, 2, torch.Generator().manual_seed(4)))


def test_hybrid_low_band_is_a_and_high_band_is_b():
    a, b = _toy_batch(n=3, size=64, seed=1), _toy_batch(n=3, size=64, seed=2)
    sigma = 2.0
    mixed = ev.hybrid(a, b, sigma)
    assert torch.allclose(mixed - ev.high_pass(b, sigma), ev.low_pass(a, sigma), atol=1e-5)  # exactly A's low band
    fa, fb, fm = (_spectrum(x) for x in (a, b, mixed))
    fy, fx = torch.fft.fftfreq(64).view(-1, 1), torch.fft.fftfreq(64).view(1, -1)
    radius = (fy ** 2 + fx ** 2).sqrt()
    coarse, fine = (radius > 0) & (radius <= 1.5 / 64), radius >= 0.3
    # in the coarsest band the hybrid's spectrum is A's (the Gaussian keeps > 95 % there), in the finest B's
    assert (fm - fa).abs()[..., coarse].sum() < 0.1 * fa.abs()[..., coarse].sum()
    assert (fm - fa).abs()[..., coarse].sum() < 0.1 * (fm - fb).abs()[..., coarse].sum()
    assert ((fm - fb).abs()[..., fine].sum() < 0.05 * fb.abs()[..., fine].sum())


def test_hybrid_partners_are_fixed_by_the_seed_and_of_another_class():
    targets = [0] * 5 + [1] * 7 + [2] * 3 + [3] * 9
    pairs = ev.hybrid_partners(targets, seed=7)
    assert pairs == ev.hybrid_partners(targets, seed=7)
    assert pairs != ev.hybrid_partners(targets, seed=8)
    assert all(targets[i] != targets[p] for i, p in enumerate(pairs))
    subset, pool = [1, 6, 13, 20], list(range(0, 24, 2))
    some = ev.hybrid_partners(targets, seed=7, indices=subset, pool=pool)
    assert some == ev.hybrid_partners(targets, seed=7, indices=subset, pool=pool)
    assert all(p in pool and targets[p] != targets[i] for i, p in zip(subset, some))
    with pytest.raises(ValueError, match='two classes'):
        ev.hybrid_partners([1, 1, 1], seed=0)


# -- shape bias with two real classifiers ---------------------------------------------------------------------
class BandClassifier(nn.Module):
    """Sees only one frequency band of its input: a fixed Gaussian blur (a depthwise ``nn.Conv2d``), then either
    the blurred image (``'low'``) or the energy of what the blur removed (``'high'``), averaged per channel;
    the class is the channel with the largest value (an identity ``nn.Linear``)."""

    def __init__(self, band: str, sigma: float = 2.0):
        super().__init__()
        radius = math.ceil(3 * sigma)
        kernel = ev.gaussian_kernel1d(sigma, radius)
        self.band = band
        self.blur = nn.Conv2d(3, 3, 2 * radius + 1, padding=radius, padding_mode='reflect', groups=3, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(3, 3)
        with torch.no_grad():
            self.blur.weight.copy_((kernel.view(-1, 1) * kernel.view(1, -1)).expand(3, 1, -1, -1))
            self.head.weight.copy_(torch.eye(3))
            self.head.bias.zero_()

    def forward(self, x):
        low = self.blur(x)
        features = low if self.band == 'low' else (x - low) ** 2
        return self.head(self.pool(features).flatten(1))


def _cue_pixels(label: int, size: int, rng) -> np.ndarray:
    """An image whose low band says ``label`` (that channel bright, a smooth random gradient on every channel)
    and whose high band says it too (a 2-pixel checkerboard in that channel only), uint8 H x W x 3."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    pixels = np.full((size, size, 3), 60.0)
    pixels[..., label] = 190.0
    pixels += 25 * (rng.uniform(-1, 1) * yy + rng.uniform(-1, 1) * xx)[..., None]
    pixels[..., label] += 40 * np.where((np.arange(size)[:, None] + np.arange(size)[None, :]) % 2, 1, -1)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def test_shape_bias_is_one_for_a_low_band_classifier_and_zero_for_a_high_band_one():
    rng = np.random.default_rng(0)
    labels = torch.tensor([i % 3 for i in range(12)])
    images = torch.stack([torch.from_numpy(_cue_pixels(int(t), 32, rng)).permute(2, 0, 1).float() / 255 for t in labels])
    images = (images - 0.45) / 0.25
    partners = ev.hybrid_partners(labels.tolist(), seed=0)
    mixed = ev.hybrid(images, images[partners], sigma=0.02 * 32)
    for band, bias in (('low', 1.0), ('high', 0.0)):
        model = BandClassifier(band).eval()
        with torch.no_grad():
            assert torch.equal(model(images).argmax(-1), labels)  # both read their band right on clean images
            counts = ev.cue_conflict_counts(model(mixed).argmax(-1), labels, labels[partners])
        assert counts['hybrids'] == 12 and counts['other'] == 0
        assert ev.shape_bias(counts) == bias
    assert math.isnan(ev.shape_bias({'hybrids': 3, 'low_band_class': 0, 'high_band_class': 0, 'other': 3}))


def test_evaluate_model_on_an_image_folder_measures_the_bias_of_each_band(tmp_path):
    rng = np.random.default_rng(1)
    for split, count in (('train', 2), ('val', 6)):
        for label in range(3):
            folder = tmp_path / split / f'class{label}'
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(_cue_pixels(label, 32, rng)).save(folder / f'{i}.png')
    biases = {}
    for band in ('low', 'high'):
        result = ev.evaluate_model(BandClassifier(band), tmp_path, img_size=32, crop_pct=1.0, recal_batches=0,
                                   probe_images=None, batch_size=5, workers=0)
        assert result['images'] == 18 and result['probes']['images'] == 18
        assert result['top1']['32'] == 100.0 and result['probes']['top1_clean'] == 100.0
        conflict = result['probes']['cue_conflict']
        assert conflict['hybrids'] == 18 and conflict['counted'] == 18
        biases[band] = conflict['shape_bias']
        assert 'bn_recal' not in result
    assert biases == {'low': 1.0, 'high': 0.0}
    # the high-band classifier is blind to a strong blur; the low-band one to a patch shuffle of 2 x 2 tiles
    high = ev.evaluate_model(BandClassifier('high'), tmp_path, img_size=32, crop_pct=1.0, recal_batches=0,
                             probe_images=None, blur=(0.1,), shuffle=(2,), workers=0)
    assert high['probes']['low_pass'][0]['top1'] < 50.0
    low = ev.evaluate_model(BandClassifier('low'), tmp_path, img_size=32, crop_pct=1.0, recal_batches=0,
                            probe_images=None, blur=(0.1,), shuffle=(2,), workers=0)
    assert low['probes']['low_pass'][0]['top1'] == 100.0 and low['probes']['patch_shuffle'][0]['top1'] == 100.0


# -- the command --------------------------------------------------------------------------------------------------
def test_command_end_to_end_on_a_saved_timm_checkpoint(image_folder, tmp_path):
    from timm.models import create_model

    torch.manual_seed(0)
    checkpoint = tmp_path / 'last.pth.tar'
    torch.save({'state_dict': create_model('test_resnet', num_classes=4).state_dict(), 'epoch': 1}, checkpoint)
    out = tmp_path / 'eval.json'
    argv = ['--checkpoint', str(checkpoint), '--data-dir', str(image_folder), '--model', 'test_resnet',
            '--img-size', '32', '--sizes', '24', '--recal-batches', '2', '--recal-batch-size', '8',
            '--probe-images', '10', '--workers', '0', '-b', '8']
    done = subprocess.run([sys.executable, '-m', 'timm_trd.evaluation.evaluate', *argv, '--json', str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result['model'] == 'test_resnet' and result['num_classes'] == 4 and result['images'] == 16
    assert sorted(result['top1'], key=int) == ['16', '24', '32']  # 1/2, 3/4 (= --sizes 24) and full
    assert all(0 <= v <= 100 and v * 16 / 100 == pytest.approx(round(v * 16 / 100)) for v in result['top1'].values())
    assert result['bn_recal']['batches'] == 2 and result['bn_recal']['size'] == 32
    probes = result['probes']
    assert probes['images'] == 10
    assert [p['sigma_px'] for p in probes['low_pass']] == [0.32, 0.64, 1.28]
    assert [p['k'] for p in probes['patch_shuffle']] == [2, 4]
    conflict = probes['cue_conflict']
    assert conflict['hybrids'] == 10 and conflict['counted'] == conflict['low_band_class'] + conflict['high_band_class']
    assert 'Geirhos' in conflict['name'] and conflict['sigma_px'] == 0.64
    for text in ('| clean | 32 px (full size) |', '| BatchNorm recalibrated | 32 px, statistics over 2 training batches',
                 '| texture removed: low-pass | sigma 0.01 of side = 0.32 px', '| shape removed: patch shuffle | 4x4',
                 'shape bias = #A / #(A or B) = ', 'cue conflict', 'hybrids'):
        assert text in done.stdout
    # the same seed in another process gives the same numbers (recalibration, subsets, pairs and tile orders)
    again = ev.evaluate_checkpoint(checkpoint, image_folder, 'test_resnet', img_size=32, sizes=[24], recal_batches=2,
                                   recal_batch_size=8, probe_images=10, workers=0, batch_size=8)
    for key in ('top1', 'bn_recal', 'probes'):
        assert again[key] == result[key] or json.loads(json.dumps(again[key])) == result[key]
    row = ev.flatten(result)
    assert {'top1', 'top1_at_16', 'top1_at_24', 'top1_bn_recal', 'top1_lowpass_0.02', 'top1_shuffle_4',
            'shape_bias', 'conflict_counted'} <= set(row)
    assert row['top1'] == round(result['top1']['32'], 3)
