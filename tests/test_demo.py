"""``timm-trd-train --demo`` on first contact: a fresh machine (empty cache, no train.py), offline as CI is, with
the tests' stand-in script; and the download of train.py from a local HTTP server where none is found."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import timm
import torch

from conftest import MINI_TRAIN
from test_launcher import assert_one_line_error, newcomer, run_launcher, server  # noqa: F401 (fixtures)
from timm_trd.cli import launcher, train_script

VERSION = timm.__version__


def demo_command():
    command = Path(sys.executable).parent / 'timm-trd-train'
    return [str(command)] if command.is_file() else [sys.executable, '-m', 'timm_trd']


def run_demo(folder, *extra):
    env = {k: v for k, v in os.environ.items() if k != 'TIMM_TRAIN_SCRIPT'}
    env.update(XDG_CACHE_HOME=str(folder / 'cache'), OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    result = subprocess.run(demo_command() + ['--demo', *extra], capture_output=True, text=True, timeout=600,
                            cwd=folder, env=env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result.stdout + result.stderr


def demo_lines(log):
    return [line for line in log.splitlines() if line.startswith('timm-trd demo: ')]


def test_demo_offline_with_the_stand_in_script_makes_the_data_trains_and_says_what_trd_did(tmp_path):
    # as .ci/run runs it (plus --model resnet10t: extra train.py arguments override the demo's)
    log = run_demo(tmp_path, '--train-script', str(MINI_TRAIN), '--model', 'resnet10t')
    toy = tmp_path / 'cache' / 'timm-trd' / 'toy-data'
    assert len(list((toy / 'train').rglob('*.png'))) == 256 and len(list((toy / 'val').rglob('*.png'))) == 64
    lines = demo_lines(log)
    assert lines[0] == (f'timm-trd demo: train.py: {MINI_TRAIN} (--train-script): the tests\' stand-in for '
                        f'timm\'s train.py (tests/mini_train.py), not timm\'s train.py')
    assert 'wrote 256 training and 64 validation images of 64x64 px' in lines[1] and str(toy) in lines[1]
    assert 'left out' not in log  # the stand-in knows every demo option (--experiment too, as train.py)
    for epoch in (0, 1):
        assert f'TRD: epoch {epoch}: 8/16 batches at 32x32' in log
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    assert f'on {device}. TRD trained 16/32 batches at 32x32 instead of 64x64 over 2 epochs' in lines[-3]
    assert '0.625 of the compute of an all-64x64 run, 37.5% saved (FLOPs counted)' in lines[-3]
    where, files = lines[-2].removeprefix('timm-trd demo: outputs in ').split(': ')
    run_dir = tmp_path / where
    assert run_dir.is_dir() and {'last.pth.tar', 'summary.csv'} <= set(files.split(', '))
    state = torch.load(run_dir / 'last.pth.tar', map_location='cpu', weights_only=False)['state_dict']
    assert 'conv1.0.weight' in state  # resnet10t's deep stem: --model resnet10t overrode the demo's resnet18

    first = (toy / 'train' / 'circle' / 'circle_00000.png').stat().st_mtime_ns
    log = run_demo(tmp_path, '--train-script', str(MINI_TRAIN), '--model', 'resnet10t', '--epochs', '1')
    assert f'data: {toy} (the generated toy folder, already there)' in log
    assert (toy / 'train' / 'circle' / 'circle_00000.png').stat().st_mtime_ns == first
    assert 'TRD trained 8/16 batches at 32x32 instead of 64x64 over 1 epoch (' in log


def test_demo_downloads_train_py_when_none_is_found(newcomer, server, capsys, monkeypatch):
    base, requests = server
    monkeypatch.setenv(train_script.URL_ENV_VAR, f'{base}/ok/')
    monkeypatch.setattr(sys, 'argv', list(sys.argv))
    launcher.main(['--demo', '--model', 'resnet10t', '--epochs', '1'])
    out = capsys.readouterr().out
    cached = (newcomer / 'cache' / 'timm-trd' / f'train-{VERSION}.py').resolve()
    assert requests == [f'/ok/v{VERSION}/train.py'] and cached.read_bytes() == MINI_TRAIN.read_bytes()
    assert f'no train.py found; downloading the one of timm {VERSION}' in out
    assert f'train.py: {cached} (downloaded now, as --get-train-script)' in out
    assert 'TRD trained 8/16 batches at 32x32 instead of 64x64 over 1 epoch' in out
    assert train_script.locate_train_script() == (cached, 'the --get-train-script cache')  # found next time


def test_demo_offline_without_train_py_stops_with_one_line_before_making_data(newcomer, capsys, monkeypatch):
    with socket.socket() as s:  # a port on 127.0.0.1 that nothing listens on
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(train_script.URL_ENV_VAR, f'http://127.0.0.1:{port}')
    monkeypatch.setenv('no_proxy', '127.0.0.1')
    code, captured = run_launcher(['--demo'], capsys, monkeypatch)
    assert_one_line_error(code, captured, f'could not download http://127.0.0.1:{port}/v{VERSION}/train.py',
                          f'set TIMM_TRD_TRAIN_SCRIPT_URL to a mirror of ', 'or pass --train-script PATH to a train.py you have', f'git clone --branch v{VERSION} ',
                          'timm-trd-train --demo --train-script tests/mini_train.py')
    assert not (newcomer / 'cache' / 'timm-trd' / 'toy-data').exists()
