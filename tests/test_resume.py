"""A resumed run with other TRD settings says what changed, and ``trd_saved_cum`` counts the past as it was served.

The CI tests run tests/mini_train.py, which saves with timm's ``CheckpointSaver`` (train.py's args in every
checkpoint) and resumes with timm's ``resume_checkpoint``, as train.py does; the end-to-end test runs timm's
train.py ($TIMM_TRAIN_SCRIPT) and skips without it.
"""
import argparse
import csv
import logging
import re

import pytest
import torch

from conftest import MINI_TRAIN
from timm_trd import install
from timm_trd.cli.train_script import load_train_module
from timm_trd.plugin.resume import SERVED, resume_state
from timm_trd.plan.schedule import TRDSchedule

FULL, SMALL = 40, 24


def mini(monkeypatch, name, *argv):
    monkeypatch.setattr('sys.argv', ['mini_train.py', *argv])
    plugin = install(load_train_module(MINI_TRAIN, name=name))
    return plugin, plugin.module.main()


def common(image_folder, *extra):
    return ['--data-dir', str(image_folder), '--img-size', str(FULL), '--trd-size', str(SMALL), '--trd-mode', 'device',
            '--epochs', '2', *extra]


def resume_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith('TRD: --resume')]


def test_a_changed_prob_is_said_and_the_past_counts_as_served(image_folder, tmp_path, monkeypatch, caplog):
    _, first = mini(monkeypatch, 'mini_p05', *common(image_folder, '--trd-prob', '0.5', '--output', str(tmp_path / 'a')))
    checkpoint = tmp_path / 'a' / 'checkpoint-0.pth.tar'
    from timm.utils import load_checkpoint_metadata
    assert getattr(load_checkpoint_metadata(str(checkpoint))['args'], SERVED) == {0: first['epochs'][0]['trd_compute']}
    with caplog.at_level(logging.INFO, logger='timm_trd'):
        _, resumed = mini(monkeypatch, 'mini_p09', *common(image_folder, '--trd-prob', '0.9', '--resume', str(checkpoint)))
    lines = resume_lines(caplog)
    assert len(lines) == 1 and 'goes on at epoch 1' in lines[0] and '--trd-prob 0.5 -> 0.9' in lines[0]
    assert '0.9 of the batches at 24x24 in epochs 1-1' in lines[0] and 'had 0.5 of the batches' in lines[0]
    epoch1 = resumed['epochs'][0]
    assert epoch1['trd_reduced_batches'] == 11  # round(0.9 x 12): the new plan from the resume on
    served = [first['epochs'][0]['trd_compute'], epoch1['trd_compute']]
    assert epoch1['trd_saved_cum'] == pytest.approx(1 - sum(served) / 2, abs=1e-6)


def test_a_checkpoint_trained_without_trd_counts_at_full_size(image_folder, tmp_path, monkeypatch, caplog):
    mini(monkeypatch, 'mini_off', *common(image_folder, '--output', str(tmp_path / 'off')))
    with caplog.at_level(logging.INFO, logger='timm_trd'):
        _, resumed = mini(monkeypatch, 'mini_on', *common(image_folder, '--trd-prob', '0.5', '--resume',
                                                          str(tmp_path / 'off' / 'checkpoint-0.pth.tar')))
    lines = resume_lines(caplog)
    assert len(lines) == 1 and '--trd-prob 0 -> 0.5' in lines[0] and 'at full size, as the checkpoint trained' in lines[0]
    epoch1 = resumed['epochs'][0]
    assert epoch1['trd_saved_cum'] == pytest.approx(1 - (1.0 + epoch1['trd_compute']) / 2, abs=1e-6)


@pytest.fixture
def unrecorded_checkpoint(image_folder, tmp_path, monkeypatch):
    """A checkpoint as an earlier timm-trd wrote it: TRD settings in its args, no record of what was served."""
    _, first = mini(monkeypatch, 'mini_early', *common(image_folder, '--trd-prob', '0.5', '--output', str(tmp_path / 'e')))
    path = tmp_path / 'e' / 'checkpoint-0.pth.tar'
    state = torch.load(path, map_location='cpu', weights_only=False)
    delattr(state['args'], SERVED)
    torch.save(state, path)
    return path, first


def test_without_a_record_and_another_plan_the_figure_restarts(unrecorded_checkpoint, image_folder, monkeypatch, caplog):
    path, _ = unrecorded_checkpoint
    with caplog.at_level(logging.INFO, logger='timm_trd'):
        _, resumed = mini(monkeypatch, 'mini_seed', *common(image_folder, '--trd-prob', '0.5', '--trd-seed', '5',
                                                            '--resume', str(path)))
    lines = resume_lines(caplog)
    assert len(lines) == 1 and 'the TRD seed 42 -> 5' in lines[0] and 'train_trd_saved_cum restarts' in lines[0]
    epoch1 = resumed['epochs'][0]
    assert epoch1['trd_saved_cum'] == pytest.approx(1 - epoch1['trd_compute'], abs=1e-6)


def test_without_a_record_and_the_same_plan_the_plan_counts(unrecorded_checkpoint, image_folder, monkeypatch, caplog):
    path, first = unrecorded_checkpoint
    with caplog.at_level(logging.INFO, logger='timm_trd'):
        _, resumed = mini(monkeypatch, 'mini_same', *common(image_folder, '--trd-prob', '0.5', '--resume', str(path)))
    assert not resume_lines(caplog)
    assert resumed['epochs'][0]['trd_saved_cum'] == pytest.approx(first['epochs'][1]['trd_saved_cum'], abs=1e-6)


# -- the line, for each setting (checkpoints written by hand, read with timm's own reader) -------------------------

def run_args(**overrides):
    values = dict(trd_prob=0.5, trd_size=SMALL, trd_full_res_epochs=0, trd_granularity='batch', trd_mode='auto',
                  trd_seed=None, trd_bn_recal=0, trd_fast_decode=True, trd_reduced_copy=None, seed=42, epochs=6,
                  img_size=FULL, input_size=None, resume=None, start_epoch=None)
    values.update(overrides)
    return argparse.Namespace(**values)


def line_for(tmp_path, caplog, saved: dict, run: dict, epochs=(6, 6), epoch=2):
    path = tmp_path / 'handmade.pth.tar'
    torch.save({'epoch': epoch, 'version': 2, 'args': run_args(epochs=epochs[0], **saved)}, path)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger='timm_trd'):
        state = resume_state(run_args(epochs=epochs[1], resume=str(path), **run), epochs[1], primary=True)
    lines = resume_lines(caplog)
    assert len(lines) <= 1
    return state, (lines[0] if lines else None)


def test_each_setting_that_moves_the_plan_is_named(tmp_path, caplog):
    _, line = line_for(tmp_path, caplog, {}, {'trd_size': 16})
    assert '--trd-size 24x24 -> 16x16' in line and 'at 16x16 in epochs 3-5' in line
    _, line = line_for(tmp_path, caplog, {}, {'trd_seed': 7})
    assert 'the TRD seed 42 -> 7' in line
    _, line = line_for(tmp_path, caplog, {}, {'trd_full_res_epochs': 2})
    assert '--trd-full-res-epochs 0 -> 2' in line and 'in epochs 3-3, full size in 4-5' in line
    # epoch granularity: another number of epochs re-draws which epochs are reduced
    new = TRDSchedule(prob=0.5, total_epochs=8, granularity='epoch', seed=42).reduced_epochs()
    old = TRDSchedule(prob=0.5, total_epochs=6, granularity='epoch', seed=42).reduced_epochs()
    _, line = line_for(tmp_path, caplog, {'trd_granularity': 'epoch'}, {'trd_granularity': 'epoch'}, epochs=(6, 8))
    assert 'scheduled epochs 6 -> 8' in line
    assert f'{len([e for e in new if e >= 3])} whole epochs at 24x24' in line
    assert f'had {len([e for e in old if e >= 3])} whole epochs at 24x24' in line
    # nothing that moves the plan: no line; more epochs in batch granularity move no epoch's plan
    assert line_for(tmp_path, caplog, {}, {'trd_mode': 'device', 'trd_bn_recal': 2})[1] is None
    assert line_for(tmp_path, caplog, {}, {}, epochs=(6, 9))[1] is None


def test_start_epoch_and_record_come_from_the_checkpoint(tmp_path, caplog):
    state, line = line_for(tmp_path, caplog, {SERVED: {0: 0.6, 1: 0.7, 2: 0.65, 3: 0.5}}, {'trd_prob': 0.9}, epoch=2)
    assert state.start_epoch == 3 and state.served == {0: 0.6, 1: 0.7, 2: 0.65}  # epoch 3 is after the checkpoint
    assert 'goes on at epoch 3' in line and 'counts epochs 0-2 as the checkpoint records them' in line


# -- through timm's train.py -------------------------------------------------------------------------------------------

def test_train_py_resume_with_another_prob(train_script, tmp_path):
    from test_train_options import COMMON, train_py  # the options and runner of the other train.py tests
    from timm_trd.data.toy_data import make_image_folder
    data = make_image_folder(tmp_path / 'data', size=64, train_per_class=8, val_per_class=2)
    args = [*COMMON, '--img-size', '64', '--epochs', '3', '--trd-size', '32', '--checkpoint-hist', '5',
            '--output', str(tmp_path)]
    train_py(train_script, data, *args, '--trd-prob', '0.5', '--experiment', 'first')
    log = train_py(train_script, data, *args, '--trd-prob', '0.9', '--experiment', 'resumed',
                   '--resume', str(tmp_path / 'first' / 'checkpoint-1.pth.tar'))
    lines = [line for line in log.splitlines() if 'TRD: --resume' in line]
    assert len(lines) == 1 and '--trd-prob 0.5 -> 0.9' in lines[0] and 'goes on at epoch 2' in lines[0], log[-3000:]

    def rows(name):
        with open(tmp_path / name / 'summary.csv') as f:
            return list(csv.DictReader(f))
    first, resumed = rows('first'), rows('resumed')
    served = [float(first[0]['train_trd_compute']), float(first[1]['train_trd_compute']),
              float(resumed[-1]['train_trd_compute'])]
    assert resumed[-1]['epoch'] == '2' and int(resumed[-1]['train_trd_reduced_batches']) == 4  # round(0.9 x 4)
    assert float(resumed[-1]['train_trd_saved_cum']) == pytest.approx(1 - sum(served) / 3, abs=2e-6)
    assert re.search(r'TRD: epoch 2: 4/4 batches', log)
