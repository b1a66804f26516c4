"""--trd-bn-recal N: BatchNorm statistics recomputed at full size before each validation, without changing training.

Through tests/mini_train.py (timm's create_loader, a module-level validate) and, when $TIMM_TRAIN_SCRIPT is set,
timm's train.py on both data paths.
"""
import csv
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import MINI_TRAIN, PATHS
from timm_trd import install
from timm_trd.bn_recal import recalibrate_bn
from timm_trd.launcher import load_train_module
from timm_trd.toy_data import make_image_folder

FULL, SMALL = 40, 24


def run(name, monkeypatch, *argv):
    module = load_train_module(MINI_TRAIN, name=name)
    monkeypatch.setattr('sys.argv', ['mini_train.py', *argv])
    plugin = install(module)
    torch.manual_seed(0)
    return plugin, module.main()


def test_statistics_are_the_plain_average_over_the_batches():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Conv2d(4, 2, 1), torch.nn.BatchNorm2d(2))
    model.eval()
    batches = [(torch.randn(5, 3, 12, 12) * (i + 1) + i, torch.zeros(5)) for i in range(4)]
    # the direct computation: each BatchNorm's input over all four batches, layer by layer
    seen = {}
    hooks = [bn.register_forward_hook(lambda m, inp, out, bn=bn: seen.setdefault(bn, []).append(inp[0].detach()))
             for bn in (model[1], model[4])]
    recalibrate_bn(model, iter(batches), 3)
    assert not model.training  # the mode is kept
    for hook in hooks:
        hook.remove()
    for bn, inputs in seen.items():
        assert len(inputs) == 3  # only the first three batches
        x = torch.cat(inputs).transpose(0, 1).reshape(bn.num_features, -1)
        per_batch = [i.transpose(0, 1).reshape(bn.num_features, -1) for i in inputs]
        assert torch.allclose(bn.running_mean, x.mean(1), atol=1e-5)
        # torch's update_bn averages each batch's unbiased variance
        expected_var = torch.stack([b.var(1, unbiased=True) for b in per_batch]).mean(0)
        assert torch.allclose(bn.running_var, expected_var, rtol=1e-4)


def test_validation_sees_full_size_statistics_and_training_is_unchanged(image_folder, monkeypatch):
    common = ['--data-dir', str(image_folder), '--img-size', str(FULL), '--trd-prob', '1', '--trd-size', '16',
              '--epochs', '2', '--validate', '--workers', '1']
    plain_plugin, plain = run('mini_bn_plain', monkeypatch, *common)
    plugin, recal = run('mini_bn_recal', monkeypatch, *common, '--trd-bn-recal', '3')
    # the same training: same losses, same sizes (the recalibration drew from no training RNG)
    assert [e['loss'] for e in recal['epochs']] == [e['loss'] for e in plain['epochs']]
    assert recal['shapes'] == plain['shapes']
    # validation saw other statistics: those of full-size batches, where training saw only 16 px ones
    assert len(recal['validated']) == 2
    for before, after in zip(plain['validated'], recal['validated']):
        assert before['bn_mean'] != after['bn_mean']
    assert plugin.recalibrate is not None and plugin.recalibrate.full_hw == (FULL, FULL)
    # they come from full-size training images (the averaging itself is checked directly above)
    batch = next(iter(plugin.recalibrate._loader))[0]
    assert tuple(batch.shape[-2:]) == (FULL, FULL)


def test_with_trd_off_the_option_warns_and_does_nothing(image_folder, monkeypatch, caplog):
    import logging
    with caplog.at_level(logging.INFO, logger='timm_trd'):
        plugin, result = run('mini_bn_off', monkeypatch, '--data-dir', str(image_folder), '--img-size', str(FULL),
                             '--trd-bn-recal', '2', '--epochs', '1', '--validate')
    assert plugin.recalibrate is None and not plugin.config.enabled
    assert any('--trd-bn-recal has no effect' in r.getMessage() for r in caplog.records)


def test_ranks_validate_the_same_statistics(image_folder, tmp_path):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
    result = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', '-m', 'timm_trd',
         '--train-script', str(MINI_TRAIN), '--data-dir', str(image_folder), '--img-size', str(FULL),
         '--trd-prob', '1', '--trd-size', '16', '--epochs', '1', '--validate', '--trd-bn-recal', '2',
         '--result-dir', str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    ranks = [json.loads((tmp_path / f'rank{r}.json').read_text()) for r in (0, 1)]
    assert ranks[0]['validated'][0]['bn_mean'] == ranks[1]['validated'][0]['bn_mean']


# -- through timm's train.py -------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def folder64(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('bn64'), size=64, train_per_class=8, val_per_class=4)


def _train(train_script, data, output, experiment, *extra):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
    result = subprocess.run(
        [sys.executable, '-m', 'timm_trd', '--train-script', str(train_script), '--data-dir', str(data),
         '--model', 'resnet10t', '--num-classes', '4', '--img-size', '64', '--epochs', '2', '--device', 'cpu',
         '-b', '8', '--workers', '1', '--seed', '3', '--lr', '0.01', '--trd-prob', '0.9', '--trd-size', '32',
         '--model-ema', '--output', str(output), '--experiment', experiment, *extra],
        capture_output=True, text=True, timeout=600, env=env)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    with open(output / experiment / 'summary.csv') as f:
        return log, list(csv.DictReader(f))


@pytest.mark.parametrize('path', PATHS)
def test_train_py_recalibrates_model_and_ema_without_changing_training(train_script, folder64, tmp_path, path):
    plain_log, plain = _train(train_script, folder64, tmp_path, 'plain', '--trd-mode', path)
    log, recal = _train(train_script, folder64, tmp_path, 'recal', '--trd-mode', path, '--trd-bn-recal', '2')
    assert [r['train_loss'] for r in recal] == [r['train_loss'] for r in plain]
    lines = re.findall(r'TRD: BatchNorm statistics of the model( \(EMA\))? recomputed at 64x64 on 2 training batches', log)
    assert lines == ['', ' (EMA)'] * 2  # before each validation, of the model and of its EMA
    assert 'BatchNorm statistics' not in plain_log
    checkpoint = torch.load(tmp_path / 'recal' / 'last.pth.tar', map_location='cpu', weights_only=False)
    plain_checkpoint = torch.load(tmp_path / 'plain' / 'last.pth.tar', map_location='cpu', weights_only=False)
    key = next(k for k in checkpoint['state_dict'] if k.endswith('running_mean'))
    assert not torch.equal(checkpoint['state_dict'][key], plain_checkpoint['state_dict'][key])
