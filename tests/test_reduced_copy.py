"""The reduced-resolution copy: written resumably with the same tree, checked against the training folder
before training, read for reduced batches (same picture), and served under DDP like the original."""
import argparse
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import MINI_TRAIN
from test_decode import psnr, same_draws, today, unit_transform, write_folder
from timm_trd import TRDSchedule
from timm_trd.config import TRDConfigError, config_from_args
from timm_trd.decode import ReducedDecodeDataset, ReducedLoading
from timm_trd.copy_check import check_copy
from timm_trd.copy_index import INDEX, JOURNAL, MANIFEST, TEMP_MARK
from timm_trd.reduced_copy import main as copy_main, make_copy

pytestmark = pytest.mark.skipif(ReducedDecodeDataset is None, reason='needs the loader path (timm >= 1.0.29)')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """DATA/train with JPEGs (and one PNG), and its reduced copy COPY/train."""
    root = tmp_path_factory.mktemp('data')
    write_folder(root / 'train', n_per_class=6)
    Image.open(next((root / 'train' / 'c0').glob('*.jpg'))).save(root / 'train' / 'c1' / 'extra.png')
    make_copy(str(root / 'train'), str(root / 'copy' / 'train'), workers=2, progress=False)
    return root


def reader_of(folder):
    from timm.data import ImageDataset
    return ImageDataset(str(folder)).reader


def test_copy_has_the_same_tree_at_half_size(data):
    src, dst = data / 'train', data / 'copy' / 'train'
    names = sorted(p.relative_to(src) for p in src.rglob('*') if p.is_file())
    assert sorted(p.relative_to(dst) for p in dst.rglob('*') if p.is_file() and p.name not in (MANIFEST, INDEX)) == names
    for rel in names:
        a, b = Image.open(src / rel), Image.open(dst / rel)
        assert b.format == a.format and b.size == (a.size[0] // 2, a.size[1] // 2)
    manifest = json.loads((dst / MANIFEST).read_text())
    assert manifest['images'] == manifest['copied'] == len(names) and manifest['quality'] == 90 and manifest['scale'] == 2
    assert manifest['formats'] == {'JPEG': len(names) - 1, 'PNG': 1} and manifest['input_img_mode'] == 'RGB'
    assert manifest['copy_bytes'] < manifest['source_bytes']


def test_copy_resumes_and_other_settings_rewrite_it(tmp_path, capsys):
    src = write_folder(tmp_path / 'train', n_per_class=3)
    dst = tmp_path / 'copy'
    copy_main([str(src), str(dst), '--workers', '1'])
    assert '6 images: 6 written, 0 kept' in capsys.readouterr().out
    (dst / 'c0' / '1.jpg').unlink()
    copy_main([str(src), str(dst), '--workers', '1'])
    assert '6 images: 1 written, 5 kept' in capsys.readouterr().out
    copy_main([str(src), str(dst), '--workers', '1', '--quality', '80'])  # not a mix of two qualities
    out = capsys.readouterr().out
    assert '6 images: 6 written, 0 kept' in out and 'quality 90 -> 80' in out and 'JPEG quality 80' in out


def test_copy_is_checked_against_the_training_folder(data, tmp_path):
    reader = reader_of(data / 'train')
    assert check_copy(reader, str(data / 'copy' / 'train'))[:2] == (str(data / 'copy' / 'train'), 2.0)
    assert check_copy(reader, str(data / 'copy'))[0] == str(data / 'copy' / 'train')  # the copy of --data-dir
    with pytest.raises(TRDConfigError, match='not a finished reduced copy'):
        check_copy(reader, str(tmp_path))
    other = write_folder(tmp_path / 'other' / 'train', n_per_class=7)
    with pytest.raises(TRDConfigError, match=r'does not match .* 2 training images missing there \(e.g. c0/6.jpg\)'):
        check_copy(reader_of(other), str(data / 'copy'))
    fewer = write_folder(tmp_path / 'fewer' / 'train', n_per_class=6)
    (fewer / 'c0' / '0.jpg').rename(fewer / 'c1' / 'extra.png')
    with pytest.raises(TRDConfigError, match=r'1 images not in the training folder \(e.g. c0/0.jpg\)'):
        check_copy(reader_of(fewer), str(data / 'copy'))


@pytest.mark.parametrize('copy_rule', ['always', 'when-fits'])
def test_reduced_image_from_the_copy_is_close_to_todays(data, copy_rule):
    """Same seed, same crop: read from the copy the reduced image differs from timm's by the copy's resampling
    and JPEG re-encoding, and a crop smaller than twice the reduced size is upsampled (the plugin's 'always'
    rule): PSNR >= 30 dB on average. Read only when the crop fits there, every image stays >= 30 dB."""
    files = sorted((data / 'train').rglob('*.jpg'))
    transform = unit_transform(56)
    loading = ReducedLoading(transform, 'RGB', copy_dir=str(data / 'copy' / 'train'), source_root=str(data / 'train'),
                             copy_rule=copy_rule)
    values = []
    for n, path in enumerate(files * 3):
        ref = same_draws(n, lambda: today(path, transform))
        fast = same_draws(n, lambda: loading.load(open(path, 'rb'), loading.copy_path(str(path))))
        values.append(min(psnr(ref, fast), 60.0))
    print(f'PSNR from the copy ({copy_rule}) over {len(values)} crops: mean {np.mean(values):.1f} dB, '
          f'p5 {np.percentile(values, 5):.1f} dB, min {min(values):.1f} dB')
    assert np.mean(values) >= 30
    if copy_rule == 'when-fits':
        assert min(values) >= 30


def test_options_from_the_command_line_and_yaml(data):
    def cfg(**kw):
        return config_from_args(argparse.Namespace(trd_prob=0.5, **kw))
    assert cfg().fast_decode is True and cfg().reduced_copy is None
    assert cfg(trd_fast_decode=False).fast_decode is False
    assert cfg(trd_fast_decode='false').fast_decode is False  # a YAML string
    assert cfg(trd_reduced_copy=str(data / 'copy')).reduced_copy == str(data / 'copy')
    with pytest.raises(TRDConfigError, match='--trd-fast-decode is true or false'):
        cfg(trd_fast_decode='maybe')
    with pytest.raises(TRDConfigError, match='is not a directory; write the copy with timm-trd-reduced-copy'):
        cfg(trd_reduced_copy=str(data / 'nowhere'))


def test_yaml_recipe_reads_the_copy(mini_train, data, tmp_path, monkeypatch):
    from timm_trd import install
    recipe = tmp_path / 'recipe.yaml'
    recipe.write_text(f'trd_prob: 0.5\ntrd_size: 32\ntrd_fast_decode: false\ntrd_reduced_copy: {data / "copy"}\n')
    monkeypatch.setattr('sys.argv', ['mini_train.py', '-c', str(recipe), '--data-dir', str(data), '--img-size', '64',
                                     '--trd-mode', 'loader', '-b', '4', '--epochs', '1'])
    plugin = install(mini_train)
    result = mini_train.main()
    reduced = plugin.loader.loader.loader.dataset.reduced
    assert reduced.copy_dir == str(data / 'copy' / 'train') and reduced.fast_decode is False
    plan = plugin.loader.plan(0)
    assert [tuple(s[2:]) for s in result['shapes']['0']] == [(32, 32) if r else (64, 64) for r in plan]


def launch(*args, torchrun=False, timeout=600):
    prefix = ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2'] if torchrun else []
    cmd = [sys.executable, *prefix, '-m', 'timm_trd', '--train-script', str(MINI_TRAIN), *args]
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def test_a_copy_that_does_not_match_stops_the_run(data, tmp_path):
    other = write_folder(tmp_path / 'other' / 'train', n_per_class=7)
    result = launch('--data-dir', str(other.parent), '--img-size', '64', '--trd-prob', '0.5', '--trd-size', '32',
                    '--trd-reduced-copy', str(data / 'copy'), '-b', '4', '--epochs', '1')
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith('timm-trd: error: --trd-reduced-copy') and 'does not match the training folder' in last
    assert 'rerun timm-trd-reduced-copy' in last
    device = launch('--data-dir', str(data), '--img-size', '64', '--trd-prob', '0.5', '--trd-size', '32',
                    '--trd-mode', 'device', '--trd-reduced-copy', str(data / 'copy'), '-b', '4', '--epochs', '1')
    assert device.returncode == 2 and 'needs the loader path' in device.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize('mechanism', ['fast-decode', 'copy'])
def test_ddp_ranks_serve_the_planned_sizes(data, tmp_path, mechanism):
    extra = ['--trd-reduced-copy', str(data / 'copy'), '--no-trd-fast-decode'] if mechanism == 'copy' else []
    result = launch('--data-dir', str(data), '--img-size', '64', '--trd-prob', '0.5', '--trd-size', '32',
                    '--trd-mode', 'loader', '--epochs', '2', '-b', '2', '--workers', '1', '--result-dir', str(tmp_path),
                    *extra, torchrun=True)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [json.loads((tmp_path / f'rank{rank}.json').read_text()) for rank in (0, 1)]
    schedule = TRDSchedule(prob=0.5, total_epochs=2, seed=42)
    batches = (13 // 2 + 1) // 2  # 13 images; DistributedSampler pads to 14, 7 per rank, batches of 2
    for epoch in ('0', '1'):
        sizes = [[tuple(shape[2:]) for shape in r['shapes'][epoch]] for r in runs]
        assert sizes[0] == sizes[1] == [(32, 32) if r else (64, 64) for r in schedule.plan(int(epoch), batches)]
