"""The README's "On your data" line, run as printed on generated data on the CPU, and what timm-trd says about the
image folder before training (:mod:`timm_trd.plugin.data_folder`): the class count, a missing ``val/``, images much
smaller than the training size."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import MINI_TRAIN, found_train_script
from test_bad_input import assert_one_line_error, run_launcher
from timm_trd.data.toy_data import make_image_folder

README = Path(__file__).resolve().parent.parent / 'README.md'
SCRIPTS = [pytest.param('mini', id='mini_train'), pytest.param('train.py', id='train.py')]


def readme_line():
    """(the command of the README's "On your data" section as printed, its comment)."""
    section = README.read_text().split('## On your data', 1)[1].split('\n## ', 1)[0]
    line = next(line for line in section.splitlines() if line.startswith('timm-trd-train --data-dir'))
    command, _, comment = line.partition('#')
    return shlex.split(command), comment


def script_path(which):
    if which == 'mini':
        return MINI_TRAIN
    path = found_train_script()
    if path is None:
        pytest.skip("needs timm's train.py (TIMM_TRAIN_SCRIPT or timm-trd-train --get-train-script)")
    return path


def run_printed(argv, data, script, cwd, extra=()):
    """The README's argv with its data folder replaced by ``data``, through ``python -m timm_trd``."""
    assert argv[0] == 'timm-trd-train' and '/data/imagenet' in argv
    argv = [str(data) if a == '/data/imagenet' else a for a in argv[1:]]
    cmd = [sys.executable, '-m', 'timm_trd', '--train-script', str(script), *argv, *extra]
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(README.parent))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


@pytest.fixture(scope='module')
def folder3(tmp_path_factory):
    """3 classes (neither the model's 1000 nor the tests' usual 4) of 128x128 images, 8 train / 2 val each."""
    return make_image_folder(tmp_path_factory.mktemp('ours'), size=128, train_per_class=8, val_per_class=2,
                             classes=('circle', 'cross', 'square'))


@pytest.mark.parametrize('which', SCRIPTS)
def test_readme_line_runs_on_cpu_and_counts_the_classes(which, folder3, tmp_path):
    argv, comment = readme_line()
    assert '--device cpu' in comment  # the line itself says what a CPU run adds
    cpu = [] if torch.cuda.is_available() else ['--device', 'cpu']
    small = ['--epochs', '1', '-b', '8', '--workers', '0', '--output', str(tmp_path / 'out')]  # "+ train.py options"
    if which == 'mini':
        # train.py takes ResNet-50's 224 from the model, the stand-in has a default of 32; it logs INFO lines when asked
        small += ['--img-size', '224', '--log-info']
    result = run_printed(argv, folder3, script_path(which), tmp_path, cpu + small)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert f'--num-classes 3, the class folders of {folder3 / "train"}' in log
    assert 'TRD: epoch 0: 2/3 batches at 112x112' in log  # round(0.5 * 3) of 24 images in batches of 8
    if which == 'mini':
        import json
        epoch = json.loads(log.split('MINI_RESULT ', 1)[1].splitlines()[0])['epochs'][0]
        # the epoch's wall time and images/s (24 images) beside the TRD columns
        assert epoch['trd_epoch_s'] > 0 and epoch['trd_img_per_s'] == pytest.approx(24 / epoch['trd_epoch_s'], rel=0.01)
    else:
        (args_yaml,) = (tmp_path / 'out').glob('*/args.yaml')
        assert yaml.safe_load(args_yaml.read_text())['num_classes'] == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason='a machine without CUDA')
def test_readme_line_as_printed_without_cuda_says_device_cpu(folder3, tmp_path):
    argv, _ = readme_line()
    result = run_printed(argv, folder3, script_path('train.py'), tmp_path)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert lines[0] == ("timm-trd: error: --device cuda, but torch sees no CUDA device on this machine "
                        "(torch.cuda.is_available() is False; train.py's --device defaults to cuda); add --device cpu "
                        "for a CPU run")


def _mini(data, *extra):
    return ['--train-script', str(MINI_TRAIN), '--data-dir', str(data), '--epochs', '1', *extra]


def test_one_class_folder_stops(tmp_path, capsys):
    data = make_image_folder(tmp_path, size=40, train_per_class=4, val_per_class=1, classes=('circle',))
    code, captured = run_launcher(_mini(data), capsys)
    assert_one_line_error(code, captured.out, captured.err,
                          f'{data / "train"} has 1 class folder with images: a classifier needs two or more')


def test_empty_class_folder_and_a_num_classes_that_counts_it_stops(image_folder, tmp_path, capsys):
    data = tmp_path / 'data'
    subprocess.run(['cp', '-r', str(image_folder), str(data)], check=True)
    (data / 'train' / 'zebra').mkdir()
    code, captured = run_launcher(_mini(data, '--num-classes', '5'), capsys)
    assert_one_line_error(code, captured.out, captured.err,
                          f"--num-classes 5, but {data / 'train'} has 4 class folders with images (zebra holds no "
                          f"image, so timm's reader has no such class); pass --num-classes 4")


def test_no_val_folder_warns_that_validation_sees_training_images(tmp_path):
    import argparse
    from timm_trd.plugin.data_folder import val_folder_warning
    data = make_image_folder(tmp_path, size=40, train_per_class=1, val_per_class=0)
    for folder in (data / 'val').glob('*'):
        folder.rmdir()
    (data / 'val').rmdir()
    line = val_folder_warning(argparse.Namespace(data_dir=str(data), val_split='validation', dataset=''))
    assert re.search(r'has no validation/ folder \(nor val/\), so train\.py validates on every image under .*the '
                     r'training images included: its top-1 is a training score', line)
    assert val_folder_warning(argparse.Namespace(data_dir=str(data), val_split='', dataset='')) is None


def test_tiny_images_upsampled_to_the_training_size_warn(tmp_path, caplog):
    from timm_trd.cli import launcher
    data = make_image_folder(tmp_path, size=16, train_per_class=4, val_per_class=1)
    launcher.main(_mini(data, '--img-size', '64'))
    assert ('timm-trd: the training images are at most 16x16 (8 sampled) and train.py trains at 64x64: its crop '
            'upsamples them 4x, adding no detail; pass --img-size 16') in caplog.text
    caplog.clear()
    launcher.main(_mini(data, '--img-size', '24'))  # 1.5x: no word
    assert 'the training images are at most' not in caplog.text
