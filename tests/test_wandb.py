"""wandb through timm's --log-wandb: the run's config holds every trd_* setting, each epoch's history the TRD
figures; without wandb, or when wandb.init fails, training goes on with one warning.

The end-to-end tests run timm's train.py ($TIMM_TRAIN_SCRIPT) and read the offline run back; those that need
wandb itself skip without it (pip install -e ".[wandb]"). The guard's own tests need neither.
"""
import argparse
import csv
import importlib.util
import logging
import os
import subprocess
import sys
import types

import pytest

from timm_trd.plugin.config import add_arguments
from timm_trd.data.toy_data import make_image_folder
from timm_trd.plugin.wandb_guard import GuardedWandb, guard_wandb

ARGS = ['--model', 'resnet10t', '--num-classes', '4', '--img-size', '64', '--trd-prob', '0.5', '--trd-size', '32',
        '--device', 'cpu', '-b', '8', '--workers', '1', '--log-interval', '100', '--log-wandb', '--wandb-project', 'trd-test']
TRD_FIGURES = ('train_trd_reduced_batches', 'train_trd_batches', 'train_trd_compute', 'train_trd_saved_cum',
               'train_trd_epoch_s', 'train_trd_img_per_s')
GUARD_WARNING = 'timm-trd: wandb.init failed'
MISSING_WARNING = "You've requested to log metrics to wandb but package not found"

needs_wandb = pytest.mark.skipif(importlib.util.find_spec('wandb') is None,
                                 reason='needs wandb: pip install -e ".[wandb]"')


def trd_dests():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return {a.dest for a in parser._actions if a.dest.startswith('trd_')}


@pytest.fixture(scope='module')
def folder64(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('wandb_images'), size=64, train_per_class=16, val_per_class=4)


def train(train_script, data, tmp_path, epochs, **env):
    """One train.py run through the launcher, with wandb kept inside tmp_path (no user settings, no keys)."""
    home = tmp_path / 'home'
    home.mkdir(exist_ok=True)
    clean = {k: v for k, v in os.environ.items() if not k.startswith('WANDB_')}
    clean.update(HOME=str(home), WANDB_DIR=str(tmp_path), WANDB_CONFIG_DIR=str(home / '.config' / 'wandb'),
                 WANDB_CACHE_DIR=str(home / '.cache'), OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore', **env)
    result = subprocess.run(
        [sys.executable, '-m', 'timm_trd', '--train-script', str(train_script), '--data-dir', str(data), *ARGS,
         '--epochs', str(epochs), '--output', str(tmp_path), '--experiment', 'e'],
        capture_output=True, text=True, timeout=600, env=clean)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    with open(tmp_path / 'e' / 'summary.csv') as f:
        return log, list(csv.DictReader(f))


@needs_wandb
def test_offline_run_holds_trd_config_and_figures_per_epoch(train_script, folder64, tmp_path):
    from wandb_offline import offline_runs, read_run

    log, summary = train(train_script, folder64, tmp_path, epochs=2, WANDB_MODE='offline')
    assert GUARD_WARNING not in log
    (run_dir,) = offline_runs(tmp_path)
    config, history = read_run(run_dir)

    assert trd_dests() <= set(config)  # every trd_* setting, as train.py's args hold it
    # the checked values, as numbers (the plugin writes them back into train.py's args before wandb.init)
    assert config['trd_prob'] == 0.5 and config['trd_size'] == 32 and config['trd_bn_recal'] == 0
    assert (config['trd_mode'], config['trd_granularity'], config['trd_full_res_epochs']) == ('auto', 'batch', 0)
    assert config['log_wandb'] is True and config['model'] == 'resnet10t'

    rows = [row for row in history if 'train_trd_compute' in row]
    print('\noffline wandb history (TRD figures):')
    for row in rows:
        print({k: row[k] for k in ('epoch', *TRD_FIGURES)})
    assert [row['epoch'] for row in rows] == [0, 1]
    for row, csv_row in zip(rows, summary):
        assert (row['train_trd_reduced_batches'], row['train_trd_batches']) == (4, 8)
        assert row['train_trd_compute'] == pytest.approx(0.625, abs=0.01)
        assert row['train_trd_saved_cum'] == pytest.approx(0.375, abs=0.01)
        for key in TRD_FIGURES:  # wandb and summary.csv get the same numbers from timm's update_summary
            assert row[key] == pytest.approx(float(csv_row[key]))


@needs_wandb
def test_wandb_init_failure_warns_once_and_training_goes_on(train_script, folder64, tmp_path):
    # online with no API key (HOME and the wandb config dir are empty): wandb.init raises UsageError at once
    log, summary = train(train_script, folder64, tmp_path, epochs=1, WANDB_MODE='online', WANDB_INIT_TIMEOUT='30')
    warnings = [line for line in log.splitlines() if GUARD_WARNING in line]
    assert len(warnings) == 1, log[-3000:]
    assert 'training goes on without wandb' in warnings[0]
    assert len(summary) == 1 and int(summary[0]['train_trd_reduced_batches']) == 4


def test_without_wandb_installed_training_goes_on(train_script, folder64, tmp_path):
    # a wandb that cannot be imported, first on the path: as if it were not installed
    shadow = tmp_path / 'shadow' / 'wandb'
    shadow.mkdir(parents=True)
    (shadow / '__init__.py').write_text("raise ImportError('wandb hidden by the test')\n")
    path = os.pathsep.join(p for p in (str(shadow.parent), os.environ.get('PYTHONPATH')) if p)
    log, summary = train(train_script, folder64, tmp_path, epochs=1, PYTHONPATH=path)
    assert log.count(MISSING_WARNING) == 1 and GUARD_WARNING not in log
    assert len(summary) == 1 and int(summary[0]['train_trd_reduced_batches']) == 4


# -- the guard alone -----------------------------------------------------------------------------------------------

class FakeWandb:
    def __init__(self, error=None):
        self.error, self.calls, self.run = error, [], object()

    def init(self, **kwargs):
        self.calls.append(kwargs)
        if self.error:
            raise self.error
        return self.run


def fake_train_module(wandb, has_wandb=True):
    module = types.ModuleType('fake_train')
    module.wandb, module.has_wandb = wandb, has_wandb
    return module


def test_guard_passes_a_working_wandb_through():
    wandb = FakeWandb()
    wandb.log = lambda row: row
    module = fake_train_module(wandb)
    assert guard_wandb(module) and isinstance(module.wandb, GuardedWandb)
    assert module.wandb.init(project='p', config={'trd_prob': 0.5}) is wandb.run
    assert wandb.calls == [{'project': 'p', 'config': {'trd_prob': 0.5}}]
    assert module.wandb.log({'epoch': 0}) == {'epoch': 0} and module.has_wandb is True
    guard_wandb(module)
    assert module.wandb._wandb is wandb  # installing twice does not wrap twice


def test_guard_turns_wandb_off_with_one_warning_when_init_fails(caplog):
    module = fake_train_module(FakeWandb(error=RuntimeError('api_key not configured\n(no-tty)')))
    guard_wandb(module)
    with caplog.at_level(logging.WARNING, logger='timm_trd'):
        assert module.wandb.init(project='p') is None
    assert module.has_wandb is False  # train.py then passes log_wandb=False to update_summary
    (record,) = caplog.records
    assert record.getMessage().startswith(f'{GUARD_WARNING} (RuntimeError: api_key not configured (no-tty))')


def test_a_failing_wandb_log_in_timms_update_summary_warns_once_and_the_row_is_written(tmp_path, caplog, monkeypatch):
    import timm.utils.summary as summary
    from timm.utils import update_summary

    class ClosedRun(FakeWandb):
        def log(self, row):
            raise RuntimeError('You must call wandb.init() before wandb.log()')

    # timm's update_summary logs with its own module's wandb (absent when wandb is not installed)
    monkeypatch.setattr(summary, 'wandb', ClosedRun(), raising=False)
    module = fake_train_module(ClosedRun())
    assert guard_wandb(module) and isinstance(summary.wandb, GuardedWandb)
    csv_path = tmp_path / 'summary.csv'
    with caplog.at_level(logging.WARNING, logger='timm_trd'):
        update_summary(0, {'loss': 1.0, 'trd_compute': 0.625}, {'top1': 50.0}, filename=str(csv_path),
                       log_wandb=module.has_wandb)
        # train.py reads has_wandb again for the next epoch: wandb is off now, nothing more is logged
        update_summary(1, {'loss': 0.9, 'trd_compute': 0.625}, {'top1': 55.0}, filename=str(csv_path),
                       log_wandb=module.has_wandb)
    assert module.has_wandb is False
    (record,) = caplog.records
    assert record.getMessage().startswith('timm-trd: wandb.log failed (RuntimeError: You must call wandb.init()')
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert [row['epoch'] for row in rows] == ['0', '1'] and rows[0]['train_trd_compute'] == '0.625'


def test_guard_leaves_a_train_py_without_wandb_alone():
    module = fake_train_module(None, has_wandb=False)
    assert not guard_wandb(module) and module.wandb is None
    assert not guard_wandb(types.ModuleType('train_without_wandb_name'))
