"""timm-trd-eval's inputs: each wrong one stops with one line that names the fix and exit code 2, before a model is
built, instead of a traceback or an answer to another question (training images reported as ``val``)."""
import argparse
import shutil
import subprocess
import sys

import pytest
import torch

from timm_trd.evaluation import evaluate as ev

FAST = ['--img-size', '32', '--probe-images', '4', '--workers', '0', '-b', '8', '--blur-sigmas', '0.02',
        '--shuffle-grids', '2']


def checkpoint(path, model='test_resnet', classes=4, args=True):
    """A checkpoint as train.py's CheckpointSaver writes it (its args in it), or a bare state dict."""
    from timm.models import create_model
    state = create_model(model, num_classes=classes).state_dict()
    torch.save({'state_dict': state, 'epoch': 1, 'version': 2,
                'args': argparse.Namespace(model=model, num_classes=classes)} if args else state, path)
    return path


def eval_error(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        ev.run([*argv, *FAST])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert exit_info.value.code == 2 and len(lines) == 1, captured.err
    assert lines[0].startswith('timm-trd-eval: error: ') and 'timm-trd-eval:' not in captured.out
    return lines[0]


@pytest.fixture
def good(tmp_path):
    return checkpoint(tmp_path / 'last.pth.tar')


def test_a_data_dir_that_does_not_exist(good, capsys, tmp_path):
    line = eval_error(capsys, '--checkpoint', str(good), '--data-dir', str(tmp_path / 'nope'), '--model', 'test_resnet')
    assert f'--data-dir {tmp_path / "nope"} does not exist' in line


def test_a_data_dir_without_val_is_refused_not_evaluated_on_training_images(image_folder, good, capsys, tmp_path):
    only_train = tmp_path / 'only_train'
    shutil.copytree(image_folder / 'train', only_train / 'train')
    line = eval_error(capsys, '--checkpoint', str(good), '--data-dir', str(only_train), '--model', 'test_resnet')
    assert f'{only_train} has no val/ folder to test on' in line and 'pass --split FOLDER' in line
    # named explicitly, another folder is tested, and the result says which
    result = ev.run(['--checkpoint', str(good), '--data-dir', str(only_train), '--model', 'test_resnet',
                     '--split', 'train', '--recal-batches', '0', *FAST])
    assert result['split'] == 'train' and result['images'] == 96


def test_a_data_dir_without_train_needs_no_recalibration(image_folder, good, capsys, tmp_path):
    only_val = tmp_path / 'only_val'
    shutil.copytree(image_folder / 'val', only_val / 'val')
    line = eval_error(capsys, '--checkpoint', str(good), '--data-dir', str(only_val), '--model', 'test_resnet')
    assert 'has no train/ folder for the BatchNorm recalibration' in line and '--recal-batches 0' in line
    result = ev.run(['--checkpoint', str(good), '--data-dir', str(only_val), '--model', 'test_resnet',
                     '--recal-batches', '0', *FAST])
    assert result['split'] == 'val' and result['images'] == 16


def test_a_missing_or_damaged_checkpoint_names_the_file(image_folder, good, capsys, tmp_path):
    missing = tmp_path / 'missing.pth.tar'
    line = eval_error(capsys, '--checkpoint', str(missing), '--data-dir', str(image_folder), '--model', 'test_resnet')
    assert f'--checkpoint {missing} does not exist' in line
    for name, content in (('half.pth.tar', good.read_bytes()[:good.stat().st_size // 2]), ('noise.pth.tar', b'\x13' * 999)):
        damaged = tmp_path / name
        damaged.write_bytes(content)
        line = eval_error(capsys, '--checkpoint', str(damaged), '--data-dir', str(image_folder), '--model', 'test_resnet')
        assert f'--checkpoint {damaged} cannot be read' in line and 'pass a complete one' in line


def test_a_checkpoint_of_another_model_or_class_count_says_what_it_holds(image_folder, capsys, tmp_path):
    other = checkpoint(tmp_path / 'r10.pth.tar', model='resnet10t', classes=4)
    line = eval_error(capsys, '--checkpoint', str(other), '--data-dir', str(image_folder), '--model', 'test_resnet')
    assert 'holds a resnet10t with 4 classes (its train.py args), not a test_resnet; pass --model resnet10t' in line
    line = eval_error(capsys, '--checkpoint', str(other), '--data-dir', str(image_folder), '--model', 'resnet10t',
                      '--num-classes', '10')
    assert 'holds a resnet10t with 4 classes (its train.py args), not 10; pass --num-classes 4' in line


def test_classes_inferred_from_the_folder_that_do_not_match(image_folder, capsys, tmp_path):
    five = checkpoint(tmp_path / 'five.pth.tar', classes=5)
    line = eval_error(capsys, '--checkpoint', str(five), '--data-dir', str(image_folder), '--model', 'test_resnet')
    assert 'holds a test_resnet with 5 classes' in line
    assert f'the test folder {image_folder / "val"} has 4 class folders (no --num-classes given, so it was inferred' in line


def test_a_bare_state_dict_that_does_not_fit(image_folder, capsys, tmp_path):
    bare = checkpoint(tmp_path / 'bare.pth', classes=10, args=False)
    line = eval_error(capsys, '--checkpoint', str(bare), '--data-dir', str(image_folder), '--model', 'test_resnet')
    assert f'--checkpoint {bare} does not fit --model test_resnet with 4 classes (the 4 class folders of' in line
    assert 'size mismatch for fc.weight' in line and 'its classifier fc holds 10 classes' in line
    bare = checkpoint(tmp_path / 'bare_r10.pth', model='resnet10t', args=False)
    line = eval_error(capsys, '--checkpoint', str(bare), '--data-dir', str(image_folder), '--model', 'test_resnet')
    assert 'does not fit --model test_resnet' in line and 'pass the --model and --num-classes it was trained with' in line


def test_the_command_exits_2(image_folder, tmp_path):
    done = subprocess.run([sys.executable, '-m', 'timm_trd.evaluation.evaluate', '--checkpoint', str(tmp_path / 'none.pth.tar'),
                           '--data-dir', str(image_folder), '--model', 'test_resnet'],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().count('\n') == 0 and 'does not exist' in done.stderr
