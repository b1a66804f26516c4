"""Inputs that ended in a traceback or a silently other run: a train script that is not train.py, aug repeats in
one process (the RSB A1/A2 recipes), a non-square training size with one --trd-size, a KD teacher, and the
parse step's warnings under torchrun. (A missing --data-dir and --aug-repeats are also in test_bad_input's CASES.)

CI runs tests/mini_train.py (timm's create_loader, LogitDistillationTask, ...); the end-to-end twins run timm's
train.py ($TIMM_TRAIN_SCRIPT) and skip without it.
"""
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MINI_TRAIN
from test_bad_input import assert_one_line_error, run_launcher
from timm_trd import install
from timm_trd.plugin.accounting import STUDENT_STEP, count_forward_flops

REPO = Path(__file__).resolve().parents[1]


def train_py(train_script, *args, env=None, launcher=('-m', 'timm_trd')):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore', **(env or {})}
    result = subprocess.run([sys.executable, *launcher, '--train-script', str(train_script), *args],
                            capture_output=True, text=True, timeout=600, env=env)
    return result.returncode, result.stdout + result.stderr


def errors(log):
    return [line for line in log.splitlines() if line.startswith('timm-trd: error: ')]


# -- --train-script that is not train.py ------------------------------------------------------------------------------

@pytest.mark.parametrize('name,text,expected', [
    ('setup.cfg', None, 'is not a Python file'),
    ('notes.txt', 'lr = 0.1 for 90 epochs\n', 'is not a Python file'),
    ('setup.py', 'import sys\nsys.exit("EXECUTED")\n', "is not timm's train.py (it lacks parser, _parse_args"),
])
def test_a_train_script_that_is_not_train_py_is_refused_unrun(tmp_path, capsys, name, text, expected):
    script = REPO / name if text is None else tmp_path / name
    if text is not None:
        script.write_text(text)
    code, captured = run_launcher(['--train-script', str(script), '--trd-prob', '0.5'], capsys)
    assert_one_line_error(code, captured.out, captured.err, expected)
    assert str(script) in captured.err and 'EXECUTED' not in captured.out + captured.err


def test_a_train_py_under_another_file_name_runs(image_folder, tmp_path, capsys):
    script = tmp_path / 'train_copy'  # no .py suffix: importlib alone finds no loader for it
    script.write_text(MINI_TRAIN.read_text())
    from timm_trd.cli import launcher
    launcher.main(['--train-script', str(script), '--data-dir', str(image_folder), '--epochs', '1'])
    assert 'MINI_RESULT' in capsys.readouterr().out


# -- --aug-repeats in one process -------------------------------------------------------------------------------------

def test_aug_repeats_pass_the_check_in_a_distributed_launch(mini_train, monkeypatch):
    import argparse
    from timm_trd.errors import TRDConfigError
    from timm_trd.plugin.train_inputs import check_aug_repeats
    with pytest.raises(TRDConfigError, match='add --aug-repeats 0 for a single process'):
        check_aug_repeats(argparse.Namespace(aug_repeats=3))
    monkeypatch.setenv('WORLD_SIZE', '2')  # as torchrun sets it: timm's RepeatAugSampler takes it
    check_aug_repeats(argparse.Namespace(aug_repeats=3))


@pytest.mark.parametrize('recipe', ['resnet50_a1', 'resnet50_a2', 'resnet50_a1_trd', 'resnet50_a2_trd'])
def test_train_py_rsb_recipe_in_one_process(train_script, image_folder, recipe):
    code, log = train_py(train_script, '-c', str(REPO / 'recipes' / f'{recipe}.yaml'), '--data-dir', str(image_folder),
                         '--device', 'cpu')
    lines = errors(log)
    assert code == 2 and len(lines) == 1, log[-3000:]
    assert '--aug-repeats 3 (set by the -c recipe) needs several processes' in lines[0]
    assert 'add --aug-repeats 0' in lines[0] and 'created, param count' not in log


# -- a non-square training size with one --trd-size S -------------------------------------------------------------------

def test_one_trd_size_keeps_a_non_square_aspect(mini_train, image_folder, monkeypatch, caplog):
    monkeypatch.setattr('sys.argv', ['mini_train.py', '--data-dir', str(image_folder), '--input-size', '3', '30', '40',
                                     '--trd-prob', '0.5', '--trd-size', '15', '--epochs', '1', '--trd-mode', 'device'])
    plugin = install(mini_train)
    with caplog.at_level(logging.INFO, logger='timm_trd'):
        result = mini_train.main()
    assert {tuple(s[2:]) for s in result['shapes']['0']} == {(30, 40), (15, 20)}  # 4:3 stays 4:3
    assert plugin.loader.reduced_hw == (15, 20)
    assert any('--trd-size 15 is the shorter side: 15x20 for the 30x40 training size' in r.getMessage()
               for r in caplog.records)


def test_two_trd_sizes_are_taken_as_given(mini_train):
    from timm_trd.plugin.config import config_from_args
    import argparse
    config = config_from_args(argparse.Namespace(trd_prob=0.5, trd_size=['15', '15']))
    assert config.reduced_hw((30, 40)) == (15, 15) and not config.short_side
    config = config_from_args(argparse.Namespace(trd_prob=0.5, trd_size=['20']))
    assert config.reduced_hw((40, 30)) == (27, 20) and config.reduced_hw((32, 32)) == (20, 20)


def test_train_py_non_square_size(train_script, tmp_path):
    from timm_trd.data.toy_data import make_image_folder
    data = make_image_folder(tmp_path / 'data', size=64, train_per_class=8, val_per_class=2)
    code, log = train_py(train_script, '--data-dir', str(data), '--model', 'resnet10t', '--num-classes', '4',
                         '--input-size', '3', '48', '64', '--epochs', '1', '--device', 'cpu', '--workers', '0', '-b', '8',
                         '--trd-prob', '0.5', '--trd-size', '24', '--output', str(tmp_path))
    assert code == 0, log[-3000:]
    assert 'TRD: epoch 0: 2/4 batches at 24x32' in log and '24x32 instead of 48x64' in log


# -- knowledge distillation: the teacher is probed and counted -------------------------------------------------------

def test_a_fixed_size_teacher_stops_before_the_first_step(image_folder, capsys):
    code, captured = run_launcher(['--train-script', str(MINI_TRAIN), '--data-dir', str(image_folder),
                                   '--img-size', '160', '--kd-model-name', 'test_vit3', '--trd-prob', '0.5',
                                   '--trd-size', '80', '--trd-mode', 'device', '--epochs', '1'], capsys)
    assert_one_line_error(code, captured.out, captured.err, 'the KD teacher (test_vit3) runs at 160x160 but not at '
                                                              'the TRD size 80x80')
    assert 'pick a teacher (--kd-model-name) that accepts any input size' in captured.err


def test_the_teachers_forward_is_counted(mini_train, image_folder, monkeypatch):
    from timm.models import create_model
    monkeypatch.setattr('sys.argv', ['mini_train.py', '--data-dir', str(image_folder), '--img-size', '40',
                                     '--kd-model-name', 'resnet18', '--trd-prob', '0.5', '--trd-size', '24',
                                     '--epochs', '1', '--trd-mode', 'device'])
    plugin = install(mini_train)
    mini_train.main()
    student, teacher = create_model('resnet10t', num_classes=4), create_model('resnet18', num_classes=4)
    s = [count_forward_flops(student, hw) for hw in ((40, 40), (24, 24))]
    t = [count_forward_flops(teacher, hw) for hw in ((40, 40), (24, 24))]
    expected = (STUDENT_STEP * s[1] + t[1]) / (STUDENT_STEP * s[0] + t[0])
    assert abs(expected - s[1] / s[0]) > 1e-3  # the student alone would give another figure
    assert plugin.cost.source == 'flops' and plugin.cost.reduced_ratio == pytest.approx(expected, rel=1e-9)


@pytest.fixture
def offline_teacher_weights(tmp_path):
    """An offline Hugging Face cache holding (random) pretrained weights for timm's test_resnet and test_vit3, so
    train.py's KD teacher (created with pretrained=True) builds without a network."""
    import torch
    from safetensors.torch import save_file
    from timm.models import create_model
    for name in ('test_resnet', 'test_vit3'):
        model = create_model(name)
        repo = model.pretrained_cfg['hf_hub_id']
        root = tmp_path / 'hf' / 'hub' / f'models--{repo.replace("/", "--")}'
        snapshot = root / 'snapshots' / ('0' * 40)
        snapshot.mkdir(parents=True)
        (root / 'refs').mkdir()
        (root / 'refs' / 'main').write_text('0' * 40)
        save_file({k: v.contiguous() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)},
                  str(snapshot / 'model.safetensors'))
    return {'HF_HOME': str(tmp_path / 'hf'), 'HF_HUB_OFFLINE': '1'}


def test_train_py_kd_teacher(train_script, image_folder, tmp_path, offline_teacher_weights):
    if '--kd-model-name' not in train_script.read_text():
        pytest.skip(f'{train_script} has no --kd-model-name')
    base = ['--data-dir', str(image_folder), '--model', 'resnet10t', '--num-classes', '4', '--epochs', '1',
            '--device', 'cpu', '--workers', '0', '-b', '8', '--trd-prob', '0.5', '--output', str(tmp_path)]
    code, log = train_py(train_script, *base, '--img-size', '40', '--trd-size', '24', '--kd-model-name', 'test_resnet',
                         env=offline_teacher_weights)
    assert code == 0, log[-3000:]
    assert "of a full one (FLOPs counted, the student's step and the KD teacher's forward)" in log
    code, log = train_py(train_script, *base, '--img-size', '160', '--trd-size', '80', '--kd-model-name', 'test_vit3',
                         env=offline_teacher_weights)
    lines = errors(log)
    assert code == 2 and len(lines) == 1 and 'the KD teacher (test_vit3) runs at 160x160 but not' in lines[0], log[-3000:]
    assert 'Train: 0' not in log


# -- the parse step's warnings: once per job --------------------------------------------------------------------------

@pytest.mark.parametrize('rank,count', [('0', 1), ('1', 0)])
def test_the_parse_step_warns_on_rank_0_only(mini_train, monkeypatch, caplog, rank, count):
    # under torchrun, train.py knows its rank only after parsing; the environment says it already
    monkeypatch.setenv('RANK', rank)
    monkeypatch.setenv('WORLD_SIZE', '2')
    monkeypatch.setattr('sys.argv', ['mini_train.py', '--trd-size', '24'])
    install(mini_train)
    with caplog.at_level(logging.INFO, logger='timm_trd'):
        mini_train._parse_args()
    assert len([r for r in caplog.records if 'TRD is off' in r.getMessage()]) == count


def test_counting_the_epochs_ahead_emits_no_timm_warning(mini_train):
    import warnings
    from timm_trd.plan.epochs import scheduled_epochs
    args = mini_train.parser.parse_args(['--sched', 'plateau', '--epochs', '3'])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        assert scheduled_epochs(args) == 3
    assert not caught  # train.py's own scheduler call says it, once per process, as without the plugin


def test_train_py_under_torchrun_warns_once(train_script, image_folder, tmp_path):
    code, log = train_py(train_script, '--data-dir', str(image_folder), '--model', 'resnet10t', '--num-classes', '4',
                         '--img-size', '40', '--epochs', '1', '--device', 'cpu', '--workers', '0', '-b', '8',
                         '--trd-size', '24', '--output', str(tmp_path),
                         launcher=('-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                                   '-m', 'timm_trd'))
    assert code == 0, log[-3000:]
    assert log.count('TRD is off (--trd-prob 0), so --trd-size has no effect') == 1
