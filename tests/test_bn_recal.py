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
from timm_trd.plugin.bn_recal import BNRecalibrator, recal_due, recalibrate_bn, sample_indices
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


def test_a_recalibration_loads_only_what_it_uses_and_forks_its_workers_once(image_folder, tmp_path):
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
    before = set(multiprocessing.active_children())
    pools = []

    def stats_of(epoch):
        recalibrate.trained()
        recalibrate(model, epoch=epoch)
        pools.append(set(multiprocessing.active_children()) - before)
        return loaded(log), bn.running_mean.clone()

    images0, mean0 = stats_of(0)
    assert len(images0) == 3 * 4  # exactly N x batch images: none prefetched and dropped
    assert sorted(images0) == sorted(sample_indices(len(dataset), 12, 1, 0, seed=5, epoch=0))
    again, mean_again = stats_of(0)
    assert sorted(again) == sorted(images0) and torch.equal(mean_again, mean0)  # reproducible, augmentation too
    images1, mean1 = stats_of(1)
    assert len(images1) == 12 and set(images1) != set(images0) and not torch.equal(mean1, mean0)
    # two workers, forked at the first recalibration and the same processes at every later one
    assert len(pools[0]) == 2 and pools[0] == pools[1] == pools[2]
    # a model that has not trained since is not recomputed
    assert recalibrate(model, epoch=1) == 0.0 and loaded(log) == []
    assert recalibrate.calls == 3


def test_the_augmentation_of_an_image_does_not_depend_on_the_worker_that_loads_it(image_folder):
    """Persistent workers keep their random streams between calls: each image is seeded from its own key."""
    from timm.data import create_loader
    from timm.models import create_model
    from timm.data import ImageDataset
    dataset = ImageDataset(str(image_folder / 'train'))
    means = []
    for workers in (0, 2):
        kwargs = dict(input_size=(3, FULL, FULL), batch_size=4, is_training=True, use_prefetcher=True,
                      device=torch.device('cpu'), num_workers=workers, scale=(0.08, 1.0), hflip=0.5)
        recalibrate = BNRecalibrator(create_loader, dataset, (), kwargs, 2, seed=1)
        torch.manual_seed(0)
        model = create_model('resnet10t', num_classes=4)
        recalibrate(model, epoch=4)
        means.append(next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_mean)
    assert torch.allclose(means[0], means[1], atol=1e-6)


def test_the_forward_passes_run_under_the_given_autocast():
    from functools import partial
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    dtypes = []
    model[0].register_forward_hook(lambda m, inp, out: dtypes.append(out.dtype))
    batches = [torch.randn(2, 3, 8, 8) for _ in range(2)]
    recalibrate_bn(model, iter(batches), 2)
    recalibrate_bn(model, iter(batches), 2, autocast=partial(torch.autocast, device_type='cpu', dtype=torch.bfloat16))
    assert dtypes == [torch.float32] * 2 + [torch.bfloat16] * 2


def test_the_schedule_before_validations():
    # A1 + TRD at P 0.9 style: every 10th epoch and the last 5, of 600
    runs = [e for e in range(600) if recal_due(e, 600, every=10, last=5)]
    assert len(runs) == 60 + 4 and runs[-5:] == [595, 596, 597, 598, 599] and runs[:2] == [9, 19]
    assert [e for e in range(10) if recal_due(e, 10, every=0, last=0)] == [9]  # the last epoch, always
    assert [e for e in range(10) if recal_due(e, 10, every=1, last=0)] == list(range(10))
    assert [e for e in range(10) if recal_due(e, 10, every=4, last=2)] == [3, 7, 8, 9]


@pytest.mark.parametrize('option,value', [('trd_bn_recal_every', -1), ('trd_bn_recal_last', -2),
                                          ('trd_bn_recal_every', 'often'), ('trd_bn_recal_last', 1.5)])
def test_bad_schedule_values_are_one_line_errors(option, value):
    import argparse
    from timm_trd.plugin.config import TRDConfigError, config_from_args
    with pytest.raises(TRDConfigError) as error:
        config_from_args(argparse.Namespace(trd_prob=0.5, trd_bn_recal=10, **{option: value}))
    text = str(error.value)
    assert '\n' not in text and f'--{option.replace("_", "-")} must' in text


def test_n_batches_are_counted_over_the_processes(image_folder):
    from timm.data import create_loader
    kwargs = dict(input_size=(3, FULL, FULL), batch_size=4, is_training=True, num_workers=3)
    shares = {world: BNRecalibrator(create_loader, object(), (), kwargs, 5, distributed=True, world_size=world)
              for world in (1, 2, 8)}
    assert {w: r.per_rank for w, r in shares.items()} == {1: 5, 2: 3, 8: 1}
    assert {w: r.workers for w, r in shares.items()} == {1: 3, 2: 3, 8: 1}  # no more workers than batches


def _torchrun(*argv, timeout=600):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
    result = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                             '-m', 'timm_trd', *argv], capture_output=True, text=True, timeout=timeout, env=env)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    return log


def _bn_stats(state_dict):
    return {k: v for k, v in state_dict.items() if k.endswith(('running_mean', 'running_var'))}


def _full_size_recalibration(make, state_dict, epoch, model_name='resnet10t', world_size=2):
    """What a recalibration of the saved weights on the run's sample gives: each rank's slice (``make(rank)``, a
    recalibrator of that rank), then the average over the ranks (as timm's distribute_bn)."""
    from timm.models import create_model
    per_rank = []
    for rank in range(world_size):
        model = create_model(model_name, num_classes=4)
        model.load_state_dict(state_dict)
        recalibrate = make(rank)
        recalibrate(model, epoch=epoch)
        per_rank.append(_bn_stats(model.state_dict()))
    return {k: sum(stats[k] for stats in per_rank) / world_size for k in per_rank[0]}


def _assert_same_stats(saved, expected):
    assert saved.keys() == expected.keys() and saved
    for key in saved:
        assert torch.allclose(saved[key], expected[key], rtol=1e-5, atol=1e-6), key


@pytest.mark.parametrize('validate', [False, True], ids=['no-validation', 'validation'])
def test_torchrun_recalibrates_on_its_schedule_and_before_the_last_checkpoint(image_folder, tmp_path, validate):
    """Three epochs, --trd-bn-recal-every 2: before the validation of epoch 1 and after the last one (2), not
    before epoch 0's; N = 3 batches in all: 2 per process on 2 processes."""
    from timm.data import create_dataset, create_loader
    argv = ['--train-script', str(MINI_TRAIN), '--data-dir', str(image_folder), '--img-size', str(FULL),
            '--trd-prob', '1', '--trd-size', '16', '--epochs', '3', '--trd-bn-recal', '3', '--trd-bn-recal-every', '2',
            '--workers', '1', '--output', str(tmp_path / 'out'), '--result-dir', str(tmp_path)] + \
        (['--validate'] if validate else [])
    log = _torchrun(*argv)
    lines = re.findall(r'TRD: BatchNorm statistics of the model recomputed at 40x40 on 4 training batches \(2 per '
                       r'process on 2 processes, averaged\) in [\d.]+ s \(([^;]+); sample of epoch (\d)\)', log)
    assert len(lines) == log.count('TRD: BatchNorm statistics of the model recomputed')
    if validate:
        assert lines == [('before validation', '1'),
                         ('after the last epoch, for its validation and the last checkpoint', '2')]
        assert 'before the validation of every 2th epoch, after the last epoch, so the last checkpoint has them' in log
    else:
        assert lines == [('after the last epoch, for the last checkpoint', '2')]
        assert "once, after the last epoch: this run has no validation loader (--val-split '')" in log
    weights = torch.load(tmp_path / 'out' / 'last.pth.tar', map_location='cpu', weights_only=False)['state_dict']
    saved = _bn_stats(weights)
    # the same loader settings mini_train gives the training loader (the recalibrator overrides what it must)
    dataset = create_dataset('', root=str(image_folder), split='train', is_training=True)
    kwargs = dict(input_size=(3, FULL, FULL), batch_size=8, is_training=True, use_prefetcher=True,
                  device=torch.device('cpu'), num_workers=1)

    def rank_recalibrator(rank):  # rank's share of N = 3 over 2 processes (the averaging is done here)
        recalibrate = BNRecalibrator(create_loader, dataset, (), kwargs, 3, seed=42, rank=rank)
        recalibrate.world_size, recalibrate.per_rank = 2, 2
        return recalibrate
    _assert_same_stats(saved, _full_size_recalibration(rank_recalibrator, weights, epoch=2))
    if validate:  # the last validation saw the checkpoint's statistics, epoch 0's the training ones
        ranks = [json.loads((tmp_path / f'rank{r}.json').read_text()) for r in (0, 1)]
        seen = [[v['bn_mean'] for v in rank['validated']] for rank in ranks]
        assert len(seen[0]) == 3 and seen[0][1:] == seen[1][1:]  # recalibrated: averaged over the ranks
        assert seen[0][0] != seen[1][0]  # epoch 0: not recalibrated, each rank's own (mini_train does no dist_bn)
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
                       r'\(1 per process on 2 processes, averaged\) in [\d.]+ s \(([^;]+); sample of epoch (\d)\)',
                       log)
    assert lines == [('', 'after the last epoch, for the last checkpoint', '1'),
                     (' (EMA)', 'after the last epoch, for the last checkpoint', '1')]
    checkpoint = torch.load(tmp_path / 'e' / 'last.pth.tar', map_location='cpu', weights_only=False)
    recalibrate = _train_py_recalibrator(train_script, monkeypatch, [*common, '--output', str(tmp_path / 'settings')])

    def rank_recalibrator(rank):  # train.py's settings, rank's share of N = 2 over 2 processes
        recalibrate.world_size, recalibrate.rank, recalibrate.per_rank = 2, rank, 1
        recalibrate.trained()
        return recalibrate
    for key in ('state_dict', 'state_dict_ema'):
        _assert_same_stats(_bn_stats(checkpoint[key]),
                           _full_size_recalibration(rank_recalibrator, checkpoint[key], epoch=1))
