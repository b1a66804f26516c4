"""A checkpoint that cannot be written: one line, before training where that can be known (a read-only
``--output``), else after the epoch (a full disk) with no half-written file left and the good checkpoint kept."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import MINI_TRAIN, found_train_script

REPO = Path(__file__).resolve().parent.parent

# a train run whose torch.save fails as a full disk does from the second save on: part of the file is written,
# then OSError(ENOSPC); the saver is timm's own (CheckpointSaver), only the file system is simulated
DISK_FULL = '''
import errno, sys, torch
from timm_trd.cli import launcher
real_save, calls = torch.save, [0]
def save(obj, f, *a, **kw):
    calls[0] += 1
    if calls[0] >= 2:
        with open(f, 'wb') as out:
            out.write(b'half a checkpoint')
        raise OSError(errno.ENOSPC, 'No space left on device')
    return real_save(obj, f, *a, **kw)
torch.save = save
launcher.main(sys.argv[1:])
'''


def run(code_or_module, argv, cwd):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore', PYTHONPATH=str(REPO))
    cmd = [sys.executable, '-c', code_or_module, *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


def scripts():
    found = found_train_script()
    return [('mini', MINI_TRAIN)] + ([('train.py', found)] if found else [])


def common(which, script, data, output):
    argv = ['--train-script', str(script), '--data-dir', str(data), '--img-size', '40', '--epochs', '2', '-b', '8',
            '--trd-prob', '0.5', '--trd-size', '24', '--output', str(output)]
    if which == 'train.py':
        argv += ['--model', 'resnet10t', '--device', 'cpu', '--workers', '0', '--experiment', 'run']
    return argv


@pytest.mark.parametrize('which,script', scripts(), ids=[w for w, _ in scripts()])
def test_disk_full_after_an_epoch_stops_in_one_line_and_keeps_the_good_checkpoint(which, script, image_folder,
                                                                                    tmp_path):
    out = tmp_path / 'out'
    result = run(DISK_FULL, common(which, script, image_folder, out), tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr[-3000:]
    folder = out / 'run' if which == 'train.py' else out
    assert errors[-1] == (
        f'timm-trd: error: could not write the checkpoint of epoch 1 to {folder / "tmp.pth.tar"} (No space left on '
        f'device); the partial file was removed and {folder / "last.pth.tar"} (the last complete checkpoint) is kept; '
        f'free space and go on with --resume {folder / "last.pth.tar"}')
    assert not (folder / 'tmp.pth.tar').exists()
    assert torch.load(folder / 'last.pth.tar', map_location='cpu', weights_only=False)['epoch'] == 0


@pytest.mark.parametrize('which,script', scripts(), ids=[w for w, _ in scripts()])
def test_an_output_folder_that_cannot_be_written_stops_before_training(which, script, image_folder, tmp_path):
    # /proc takes no new files, even from root (a folder chmod'ed read-only would not stop root)
    result = run('import sys; from timm_trd.cli import launcher; launcher.main(sys.argv[1:])',
                 common(which, script, image_folder, '/proc/timm-trd-test/out'), tmp_path)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith('timm-trd: error: --output /proc/timm-trd-test/out cannot be written (/proc: ')
    assert lines[0].endswith('; pass --output DIR in a folder you can write')
    assert 'MINI_RESULT' not in result.stdout


@pytest.mark.skipif(os.geteuid() == 0, reason='root writes into read-only folders')
def test_a_read_only_output_folder_stops_before_training(image_folder, tmp_path):
    locked = tmp_path / 'locked'
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = run('import sys; from timm_trd.cli import launcher; launcher.main(sys.argv[1:])',
                     common('mini', MINI_TRAIN, image_folder, locked / 'out'), tmp_path)
    finally:
        locked.chmod(0o755)
    assert result.returncode == 2 and 'cannot be written' in result.stderr
