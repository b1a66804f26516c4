"""--trd-bn-recal N: BatchNorm statistics recomputed at full size before each validation, without changing training.

Through tests/mini_train.py (timm's create_loader, a module-level validate) and, when $TIMM_TRAIN_SCRIPT is set,
timm's train.py on both data paths.
"""
import csv
import json
import multiprocessing
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import MINI_TRAIN, PATHS
from timm_trd import install
from timm_trd.plugin.bn_recal import BNRecalibrator, recalibrate_bn, sample_indices
from timm_trd.cli.train_script import load_train_module
from timm_trd.data.toy_data import make_image_folder

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
    batch = next(iter(plugin.recalibrate.build_loader(0)))[0]
    assert tuple(batch.shape[-2:]) == (FULL, FULL)


def test_with_trd_off_the_option_warns_and_does_nothing(image_folder, monkeypatch, caplog):
    import logging
    with caplog.at_level(logging.INFO, logger='timm_trd'):
        plugin, result = run('mini_bn_off', monkeypatch, '--data-dir', str(image_folder), '--img-size', str(FULL),
                             '--trd-bn-recal', '2', '--epochs', '1', '--validate')
    assert plugin.recalibrate is None and not plugin.config.enabled
    assert any('--trd-bn-recal has no effect' in r.getMessage() for r in caplog.records)


def test_each_recalibration_draws_a_new_reproducible_sample_split_across_ranks():
    ranks = [sample_indices(100, 12, 2, r, seed=7, epoch=3) for r in (0, 1)]
    assert all(len(r) == 12 for r in ranks) and not set(ranks[0]) & set(ranks[1])  # disjoint, one plan
    assert ranks[0] == sample_indices(100, 12, 2, 0, seed=7, epoch=3)  # reproducible
    assert set(sample_indices(100, 12, 2, 0, seed=7, epoch=4)) != set(ranks[0])  # a new sample each epoch
    assert set(sample_indices(100, 12, 2, 0, seed=8, epoch=3)) != set(ranks[0])
    assert len(sample_indices(10, 12, 2, 1, seed=7, epoch=3)) == 5  # a small dataset: what there is


class LoggedImages(torch.utils.data.Dataset):
    """A timm ImageDataset that appends each index it loads to a file (also from worker processes)."""

    def __init__(self, root, log):
        from timm.data import ImageDataset
        self.images, self.log = ImageDataset(str(root)), str(log)

    @property
    def transform(self):
        return self.images.transform

    @transform.setter
    def transform(self, value):
        self.images.transform = value

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        with open(self.log, 'a') as f:
            f.write(f'{index}\n')
        return self.images[index]


def loaded(log):
    lines = Path(log).read_text().split() if Path(log).exists() else []
    Path(log).unlink(missing_ok=True)
    return [int(i) for i in lines]


def test_a_recalibration_loads_only_what_it_uses_and_holds_no_workers(image_folder, tmp_path):
    from timm.data import create_loader
    from timm.models import create_model
    log = tmp_path / 'loaded.txt'
    dataset = LoggedImages(image_folder / 'train', log)
    # train.py's own settings: persistent workers, two of them, a prefetcher
    kwargs = dict(input_size=(3, FULL, FULL), batch_size=4, is_training=True, use_prefetcher=True,
                  device=torch.device('cpu'), num_workers=2, persistent_workers=True)
    recalibrate = BNRecalibrator(create_loader, dataset, (), kwargs, 3, seed=5)
    model = create_model('resnet10t', num_classes=4)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))

    def stats_of(epoch):
        before = set(multiprocessing.active_children())
        recalibrate.trained()
        recalibrate(model, epoch=epoch)
        assert set(multiprocessing.active_children()) <= before  # its workers ended with it
        return loaded(log), bn.running_mean.clone()

    images0, mean0 = stats_of(0)
    assert len(images0) == 3 * 4  # exactly N x batch images: none prefetched and dropped
    assert sorted(images0) == sorted(sample_indices(len(dataset), 12, 1, 0, seed=5, epoch=0))
    again, mean_again = stats_of(0)
    assert sorted(again) == sorted(images0) and torch.equal(mean_again, mean0)  # reproducible, augmentation too
    images1, mean1 = stats_of(1)
    assert len(images1) == 12 and set(images1) != set(images0) and not torch.equal(mean1, mean0)
    # a model that has not trained since is not recomputed
    assert recalibrate(model, epoch=1) == 0.0 and loaded(log) == []


def _torchrun(*argv, timeout=600):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
    result = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                             '-m', 'timm_trd', *argv], capture_output=True, text=True, timeout=timeout, env=env)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    return log


def _bn_stats(state_dict):
    return {k: v for k, v in state_dict.items() if k.endswith(('running_mean', 'running_var'))}


def _full_size_recalibration(recalibrate, state_dict, epoch, model_name='resnet10t', world_size=2):
    """What a recalibration of the saved weights on the run's sample gives: each rank's slice, then the average
    over the ranks (as timm's distribute_bn)."""
    from timm.models import create_model
    per_rank = []
    for rank in range(world_size):
        model = create_model(model_name, num_classes=4)
        model.load_state_dict(state_dict)
        recalibrate.world_size, recalibrate.rank = world_size, rank
        recalibrate.trained()
        recalibrate(model, epoch=epoch)
        per_rank.append(_bn_stats(model.state_dict()))
    return {k: sum(stats[k] for stats in per_rank) / world_size for k in per_rank[0]}


def _assert_same_stats(saved, expected):
    assert saved.keys() == expected.keys() and saved
    for key in saved:
        assert torch.allclose(saved[key], expected[key], rtol=1e-5, atol=1e-6), key


@pytest.mark.parametrize('validate', [False, True], ids=['no-validation', 'validation'])
def test_torchrun_recalibrates_before_every_validation_and_the_last_checkpoint(image_folder, tmp_path, validate):
    from timm.data import create_dataset, create_loader
    argv = ['--train-script', str(MINI_TRAIN), '--data-dir', str(image_folder), '--img-size', str(FULL),
            '--trd-prob', '1', '--trd-size', '16', '--epochs', '2', '--trd-bn-recal', '2', '--workers', '1',
            '--output', str(tmp_path / 'out'), '--result-dir', str(tmp_path)] + (['--validate'] if validate else [])
    log = _torchrun(*argv)
    lines = re.findall(r'TRD: BatchNorm statistics of the model recomputed at 40x40 on 2 training batches per '
                       r'process, averaged over 2 processes in [\d.]+ s \(([^;]+); sample of epoch (\d)\)', log)
    if validate:
        assert lines == [('before validation', '0'),
                         ('after the last epoch, for its validation and the last checkpoint', '1')]
        assert 'before each validation and after the last epoch' in log
    else:
        assert lines == [('after the last epoch, for the last checkpoint', '1')]
        assert "once, after the last epoch: this run has no validation loader (--val-split '')" in log
    weights = torch.load(tmp_path / 'out' / 'last.pth.tar', map_location='cpu', weights_only=False)['state_dict']
    saved = _bn_stats(weights)
    # the same loader settings mini_train gives the training loader (the recalibrator overrides what it must)
    dataset = create_dataset('', root=str(image_folder), split='train', is_training=True)
    kwargs = dict(input_size=(3, FULL, FULL), batch_size=8, is_training=True, use_prefetcher=True,
                  device=torch.device('cpu'), num_workers=1)
    recalibrate = BNRecalibrator(create_loader, dataset, (), kwargs, 2, seed=42)
    _assert_same_stats(saved, _full_size_recalibration(recalibrate, weights, epoch=1))
    if validate:  # the last validation saw the checkpoint's statistics
        ranks = [json.loads((tmp_path / f'rank{r}.json').read_text()) for r in (0, 1)]
        assert [v['bn_mean'] for v in ranks[0]['validated']] == [v['bn_mean'] for v in ranks[1]['validated']]
        key = next(k for k in saved if k.endswith('running_mean'))
        assert ranks[0]['validated'][-1]['bn_mean'] == pytest.approx(saved[key].tolist(), abs=1e-6)


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


class _Stop(Exception):
    pass


def _train_py_recalibrator(train_script, monkeypatch, argv):
    """The recalibrator train.py's own loader settings give (train.py runs in this process up to its first epoch)."""
    module = load_train_module(train_script, name='train_py_bn_settings')
    monkeypatch.setattr('sys.argv', ['train.py', *argv])
    plugin = install(module)

    def stop(*a, **kw):
        raise _Stop()
    plugin.original['train_one_epoch'] = stop
    with pytest.raises(_Stop):
        module.main()
    return plugin.recalibrate


def test_train_py_torchrun_without_validation_saves_full_size_statistics(train_script, folder64, tmp_path, monkeypatch):
    common = ['--data-dir', str(folder64), '--model', 'resnet10t', '--num-classes', '4', '--img-size', '64',
              '--epochs', '2', '--device', 'cpu', '-b', '8', '--workers', '1', '--seed', '3', '--lr', '0.01',
              '--trd-prob', '0.9', '--trd-size', '32', '--model-ema', '--val-split', '', '--trd-bn-recal', '2']
    log = _torchrun('--train-script', str(train_script), *common, '--output', str(tmp_path), '--experiment', 'e')
    assert "once, after the last epoch: this run has no validation loader (--val-split '')" in log
    lines = re.findall(r'TRD: BatchNorm statistics of the model( \(EMA\))? recomputed at 64x64 on 2 training batches '
                       r'per process, averaged over 2 processes in [\d.]+ s \(([^;]+); sample of epoch (\d)\)', log)
    assert lines == [('', 'after the last epoch, for the last checkpoint', '1'),
                     (' (EMA)', 'after the last epoch, for the last checkpoint', '1')]
    checkpoint = torch.load(tmp_path / 'e' / 'last.pth.tar', map_location='cpu', weights_only=False)
    recalibrate = _train_py_recalibrator(train_script, monkeypatch, [*common, '--output', str(tmp_path / 'settings')])
    for key in ('state_dict', 'state_dict_ema'):
        _assert_same_stats(_bn_stats(checkpoint[key]), _full_size_recalibration(recalibrate, checkpoint[key], epoch=1))
