"""Bad TRD input stops before training with one line naming the fix, and a non-zero exit."""
import os
import subprocess
import sys

import pytest
import yaml

from conftest import MINI_TRAIN
from timm_trd.cli import launcher
from timm_trd.data.sampler import loader_path_unavailable

NO_LOADER = loader_path_unavailable()  # on a timm without the scheduled sampler, that reason comes first

# (extra arguments, a piece of the one-line message)
CASES = [
    (['--trd-prob', '1.5'], '--trd-prob must lie in [0, 1]'),
    (['--trd-prob', '-0.2'], '--trd-prob must lie in [0, 1]'),
    (['--trd-prob', 'half'], '--trd-prob must be a number'),
    (['--trd-prob', '0.5', '--trd-size', '0'], '--trd-size must be positive, got 0; '),
    (['--trd-prob', '0.5', '--trd-size', 'big'], '--trd-size must be a number'),
    (['--trd-prob', '0.5', '--trd-size', '40'], 'not smaller than the training size 40x40'),
    (['--trd-prob', '0.5', '--trd-size', '24', '48'], 'not smaller than the training size 40x40'),
    (['--trd-prob', '0.5', '--trd-size', '8', '8', '8'], 'one size S or two sizes H W, got 8 8 8; '),
    (['--trd-prob', '0.5', '--train-img-sizes', '40', '24'], 'TRD and --train-img-sizes'),
    (['--trd-prob', '0.5', '--naflex-loader'], 'NaFlex loader'),
    (['--trd-prob', '0.5', '--trd-mode', 'loader', '--aug-splits', '2'], NO_LOADER or '--trd-mode loader cannot run: AugMix splits'),
    (['--trd-prob', '0.5', '--trd-mode', 'loader', '--use-multi-epochs-loader'], NO_LOADER or '--use-multi-epochs-loader'),
    (['--trd-prob', '0.5', '--trd-full-res-epochs', '2'], 'leaves no epoch for TRD in a run of 2 epochs'),
    (['--trd-prob', '0.5', '--trd-full-res-epochs', '-1'], '--trd-full-res-epochs must be >= 0'),
    (['--trd-prob', '0.5', '--trd-mode', 'fast'], '--trd-mode must be one of auto, loader, device'),
    (['--trd-prob', '0.5', '--trd-granularity', 'step'], '--trd-granularity must be one of batch, epoch'),
    (['--trd-prob', '0.5', '--trd-seed', '-3'], '--trd-seed must be >= 0'),
    (['--trd-prob', '0.5', '--trd-granularity', 'epoch', '--epochs', '1'],
     '--trd-granularity epoch with --trd-prob 0.5 reduces 1 of the 1 TRD epoch (a share of 1, not 0.5): use '
     '--trd-granularity batch, or 2 or more TRD epochs'),
    (['--data-dir', '/nonexistent/images'], '--data-dir /nonexistent/images does not exist; pass the folder'),
    (['--aug-repeats', '3'], '--aug-repeats 3 needs several processes'),
    # usage errors: the one line (train.py's own parser), without argparse's ~100-line usage before it
    (['--frobnicate'], 'unrecognized arguments: --frobnicate (timm-trd-train --help lists the options)'),
    (['--epochs', 'x'], "argument --epochs: invalid int value: 'x' (timm-trd-train --help lists the options)"),
]
MINI_ONLY = [
    (['--trd-prob', '0.5', '--trd-mode', 'loader', '--iterable'], NO_LOADER or 'the training dataset is iterable'),
]


def run_launcher(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        launcher.main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured


def assert_one_line_error(code, stdout, stderr, expected):
    assert code == 2
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith('timm-trd: error: ') and expected in lines[0]
    assert 'MINI_RESULT' not in stdout and '\nTrain:' not in stdout + stderr  # no training happened


@pytest.mark.parametrize('extra,expected', CASES + MINI_ONLY, ids=[' '.join(c[0]) for c in CASES + MINI_ONLY])
def test_bad_input_stops_with_one_line(image_folder, capsys, extra, expected):
    argv = ['--train-script', str(MINI_TRAIN), '--data-dir', str(image_folder), '--img-size', '40', *extra]
    code, captured = run_launcher(argv, capsys)
    assert_one_line_error(code, captured.out, captured.err, expected)


def test_loader_mode_on_a_timm_without_scheduled_sampler(image_folder, capsys, monkeypatch):
    # as if the installed timm were older than 1.0.29
    monkeypatch.setattr('timm_trd.data.sampler.ScheduledBatchSampler', None)
    argv = ['--train-script', str(MINI_TRAIN), '--data-dir', str(image_folder), '--trd-prob', '0.5', '--trd-mode', 'loader']
    code, captured = run_launcher(argv, capsys)
    assert_one_line_error(code, captured.out, captured.err, 'has no ScheduledBatchSampler (it came with timm 1.0.29)')


def test_bad_value_in_a_yaml_recipe(image_folder, capsys, tmp_path):
    recipe = tmp_path / 'recipe.yaml'
    recipe.write_text(yaml.safe_dump({'trd_prob': 2, 'trd_size': 24}))
    code, captured = run_launcher(['--train-script', str(MINI_TRAIN), '-c', str(recipe), '--data-dir', str(image_folder)], capsys)
    assert_one_line_error(code, captured.out, captured.err, '--trd-prob must lie in [0, 1], got 2')


def test_missing_train_script_says_how_to_get_one(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv('TIMM_TRAIN_SCRIPT', raising=False)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))  # not the user's --get-train-script download
    code, captured = run_launcher(['--trd-prob', '0.5'], capsys)
    assert_one_line_error(code, captured.out, captured.err, 'no train.py found')
    assert 'pytorch-image-models' in captured.err
    code, captured = run_launcher(['--train-script', str(tmp_path / 'nope.py')], capsys)
    assert_one_line_error(code, captured.out, captured.err, '--train-script points to')


def test_error_exit_from_a_real_process(image_folder):
    result = subprocess.run(
        [sys.executable, '-m', 'timm_trd', '--train-script', str(MINI_TRAIN), '--data-dir', str(image_folder),
         '--trd-prob', '0.5', '--trd-size', '64'],
        capture_output=True, text=True, timeout=300, env={**os.environ, 'PYTHONWARNINGS': 'ignore'})
    assert_one_line_error(result.returncode, result.stdout, result.stderr, 'not smaller than the training size 32x32')


@pytest.mark.parametrize('extra,expected', CASES, ids=[' '.join(c[0]) for c in CASES])
def test_bad_input_with_timm_train_py(train_script, image_folder, tmp_path, extra, expected):
    if '--train-img-sizes' in extra and '--train-img-sizes' not in train_script.read_text():
        pytest.skip(f'{train_script} predates --train-img-sizes')
    result = subprocess.run(
        [sys.executable, '-m', 'timm_trd', '--train-script', str(train_script), '--data-dir', str(image_folder),
         '--model', 'resnet10t', '--num-classes', '4', '--img-size', '40', '--epochs', '2', '--device', 'cpu',
         '--workers', '0', '--output', str(tmp_path), *extra],
        capture_output=True, text=True, timeout=300, env={**os.environ, 'PYTHONWARNINGS': 'ignore'})
    errors = [line for line in result.stderr.splitlines() if line.startswith('timm-trd: error: ')]
    assert result.returncode == 2 and len(errors) == 1 and expected in errors[0], result.stderr[-2000:]
    assert 'Train: ' not in result.stdout + result.stderr
    assert 'created, param count' not in result.stdout + result.stderr  # stopped while parsing, before the model


@pytest.mark.parametrize('key,expected', [('trd_porb', "did you mean 'trd_prob'?"), ('zzz', 'remove it or fix its spelling')])
def test_unknown_yaml_key_is_rejected(image_folder, capsys, tmp_path, key, expected):
    recipe = tmp_path / 'recipe.yaml'
    recipe.write_text(yaml.safe_dump({key: 0.5, 'trd_size': 24}))
    code, captured = run_launcher(['--train-script', str(MINI_TRAIN), '-c', str(recipe), '--data-dir', str(image_folder)], capsys)
    assert_one_line_error(code, captured.out, captured.err, f"unknown key '{key}'")
    assert expected in captured.err


@pytest.mark.parametrize('content,expected', [
    (None, 'cannot read the file'),
    ('trd_prob: 0.5\ntrd_size: [24\n', 'not valid YAML at line 3'),
    ('- trd_prob\n- 0.5\n', 'must hold a mapping of train.py options'),
])
def test_a_missing_or_broken_recipe_is_one_line(image_folder, capsys, tmp_path, content, expected):
    recipe = tmp_path / 'recipe.yaml'
    if content is not None:
        recipe.write_text(content)
    code, captured = run_launcher(['--train-script', str(MINI_TRAIN), '-c', str(recipe), '--data-dir', str(image_folder)],
                                  capsys)
    assert_one_line_error(code, captured.out, captured.err, expected)
    assert str(recipe) in captured.err


@pytest.mark.parametrize('extra,named', [
    (['--trd-size', '24'], '--trd-size'),
    (['--trd-full-res-epochs', '1', '--trd-mode', 'device'], '--trd-full-res-epochs, --trd-mode'),
])
def test_trd_settings_without_trd_prob_get_one_warning(image_folder, capsys, caplog, extra, named):
    import logging
    from timm_trd.cli import launcher as launcher_module
    with caplog.at_level(logging.WARNING, logger='timm_trd'):
        launcher_module.main(['--train-script', str(MINI_TRAIN), '--data-dir', str(image_folder), '--img-size', '40',
                              '--epochs', '1', *extra])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f'TRD is off (--trd-prob 0), so {named} has no effect; add --trd-prob P' in warnings[0]
    assert 'MINI_RESULT' in capsys.readouterr().out  # and training ran, without TRD


def test_no_warning_for_a_plain_run(image_folder, capsys, caplog):
    import logging
    with caplog.at_level(logging.WARNING, logger='timm_trd'):
        launcher.main(['--train-script', str(MINI_TRAIN), '--data-dir', str(image_folder), '--img-size', '40',
                       '--epochs', '1'])
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
