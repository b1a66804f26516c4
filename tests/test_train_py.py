"""End to end through timm's own train.py ($TIMM_TRAIN_SCRIPT), launched by timm-trd's launcher."""
import csv
import os
import subprocess
import sys

import pytest
import yaml

from timm_trd.data.sampler import loader_path_unavailable
from timm_trd.data.toy_data import make_image_folder

COMMON = ['--model', 'resnet10t', '--num-classes', '4', '--img-size', '64', '--epochs', '2', '--device', 'cpu',
          '-b', '8', '--workers', '1', '--seed', '7', '--lr', '0.01', '--log-interval', '100']


@pytest.fixture(scope='module')
def folder64(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('images64'), size=64, train_per_class=16, val_per_class=4)


def run(cmd, timeout=600):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result.stdout + result.stderr


def launcher(train_script, *args, python=True):
    return [sys.executable] * python + ['-m', 'timm_trd', '--train-script', str(train_script), *args]


def summary(output, experiment):
    with open(output / experiment / 'summary.csv') as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize('mode', ['auto', 'device', 'loader'])
def test_trains_with_half_the_batches_reduced(train_script, folder64, tmp_path, mode):
    if mode == 'loader' and loader_path_unavailable():
        pytest.skip(f'the loader path needs a newer timm: {loader_path_unavailable()}')
    log = run(launcher(train_script, '--data-dir', str(folder64), *COMMON, '--trd-prob', '0.5', '--trd-size', '32',
                       '--trd-mode', mode, '--output', str(tmp_path), '--experiment', 'e'))
    path = 'device' if mode == 'device' or loader_path_unavailable() else 'loader'
    assert f'{path} path' in log
    rows = summary(tmp_path, 'e')
    assert len(rows) == 2
    for epoch, row in enumerate(rows):
        assert int(row['train_trd_batches']) == 8 and int(row['train_trd_reduced_batches']) == 4
        assert 0.6 < float(row['train_trd_compute']) < 0.65
        seconds = float(row['train_trd_epoch_s'])  # the epoch's wall time and images/s beside the compute columns
        assert seconds > 0 and float(row['train_trd_img_per_s']) == pytest.approx(64 / seconds, rel=0.01)
        assert f'TRD: epoch {epoch}: 4/8 batches at 32x32 ({path} path)' in log


def test_torchrun_two_ranks_on_cpu(train_script, folder64, tmp_path):
    # with what a strong recipe adds: repeated augmentation, model EMA, mixup/CutMix in the collate, channels_last
    log = run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
               *launcher(train_script, '--data-dir', str(folder64), *COMMON, '--trd-prob', '0.5', '--trd-size', '32',
                         '--aug-repeats', '2', '--model-ema', '--mixup', '0.2', '--cutmix', '1.0', '--channels-last',
                         '--output', str(tmp_path), '--experiment', 'e', python=False)])
    assert '(EMA)' in log  # the EMA model was validated too
    for epoch in (0, 1):
        assert f'TRD: epoch {epoch}: 2/4 batches at 32x32' in log  # each rank: half of its 4 batches
    assert log.count('all 2 ranks served the same sizes in the same order') == 2
    rows = summary(tmp_path, 'e')
    assert [int(r['train_trd_reduced_batches']) for r in rows] == [2, 2]


def test_yaml_recipe_keys(train_script, folder64, tmp_path):
    recipe = tmp_path / 'recipe.yaml'
    recipe.write_text(yaml.safe_dump({'trd_prob': 0.5, 'trd_size': 32, 'trd_mode': 'device', 'epochs': 1}))
    log = run(launcher(train_script, '-c', str(recipe), '--data-dir', str(folder64), *COMMON[:-10], '-b', '8',
                       '--workers', '1', '--epochs', '1', '--amp', '--output', str(tmp_path), '--experiment', 'e'))
    assert 'TRD: epoch 0: 4/8 batches at 32x32 (device path)' in log
    saved = yaml.safe_load((tmp_path / 'e' / 'args.yaml').read_text())
    assert saved['trd_prob'] == 0.5 and saved['trd_size'] == 32


def test_trd_off_matches_plain_train_py(train_script, folder64, tmp_path):
    args = ['--data-dir', str(folder64), *COMMON, '--epochs', '1']
    run([sys.executable, str(train_script), *args, '--output', str(tmp_path), '--experiment', 'plain'])
    log = run(launcher(train_script, *args, '--output', str(tmp_path), '--experiment', 'plugin'))
    assert 'TRD:' not in log
    plain, plugin = summary(tmp_path, 'plain'), summary(tmp_path, 'plugin')
    assert list(plain[0]) == list(plugin[0])  # no extra columns
    assert [r['train_loss'] for r in plain] == [r['train_loss'] for r in plugin]
    assert [r['eval_loss'] for r in plain] == [r['eval_loss'] for r in plugin]


def test_help_lists_the_trd_options(train_script):
    text = run(launcher(train_script, '--help'))
    for option in ('--trd-prob', '--trd-size', '--trd-full-res-epochs', '--trd-granularity', '--trd-mode',
                   '--trd-seed', '--train-script'):
        assert option in text
