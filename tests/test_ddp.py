"""Two processes under torchrun, gloo DDP on the CPU: both ranks train on the same size at every step."""
import json
import os
import subprocess
import sys

import pytest

from conftest import MINI_TRAIN, PATHS
from timm_trd import TRDSchedule


def torchrun(*args, timeout=600):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', *args]
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize('path', PATHS)
def test_both_ranks_see_the_same_size_at_every_step(image_folder, tmp_path, path):
    result = torchrun('-m', 'timm_trd', '--train-script', str(MINI_TRAIN), '--data-dir', str(image_folder),
                      '--img-size', '40', '--trd-prob', '0.5', '--trd-size', '24', '--trd-mode', path,
                      '--epochs', '2', '-b', '8', '--workers', '1', '--result-dir', str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [json.loads((tmp_path / f'rank{rank}.json').read_text()) for rank in (0, 1)]
    assert sorted(r['rank'] for r in runs) == [0, 1]
    schedule = TRDSchedule(prob=0.5, total_epochs=2, seed=42)
    batches = (4 * 24 // 2) // 8  # DistributedSampler gives each rank half the images
    for epoch in ('0', '1'):
        sizes = [[tuple(shape[2:]) for shape in r['shapes'][epoch]] for r in runs]
        assert sizes[0] == sizes[1]
        plan = schedule.plan(int(epoch), batches)
        assert sizes[0] == [(24, 24) if reduced else (40, 40) for reduced in plan]
    for r in runs:
        assert [m['trd_reduced_batches'] for m in r['epochs']] == [3, 3]


def test_a_rank_with_another_trd_prob_stops_before_training_with_one_line(image_folder, tmp_path):
    """Two processes of one job started with different command lines (as two nodes' launchers could be)."""
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    procs = []
    for rank, prob in ((0, '0.5'), (1, '0.3')):
        env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore', 'RANK': str(rank),
               'LOCAL_RANK': str(rank), 'WORLD_SIZE': '2', 'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': str(port)}
        cmd = [sys.executable, '-m', 'timm_trd', '--train-script', str(MINI_TRAIN), '--data-dir', str(image_folder),
               '--img-size', '40', '--trd-prob', prob, '--trd-size', '24', '--epochs', '1', '-b', '8']
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [2, 2]
    errors = [line for _, err in outs for line in err.splitlines() if 'timm-trd: error' in line]
    assert errors == ['timm-trd: error: rank 1 has --trd-prob 0.3, rank 0 has 0.5: every rank must train with the '
                      'same TRD settings; pass the same --trd-* options (or -c recipe) to every process']
    assert all('MINI_RESULT' not in out for out, _ in outs)  # no rank trained


def test_rank_settings_mismatch_names_the_first_difference():
    from timm_trd.plugin.config import TRDConfig
    from timm_trd.plugin.rank_settings import mismatch, settings
    same = settings(TRDConfig(prob=0.5, size=(112, 112)), 42)
    assert mismatch([same, dict(same), dict(same)]) is None
    other_size = settings(TRDConfig(prob=0.5, size=(96, 96), reduced_copy='/local/copy'), 42)
    assert mismatch([same, dict(same), other_size]).startswith('rank 2 has --trd-size 96 96, rank 0 has 112 112:')
    assert mismatch([same, settings(TRDConfig(prob=0.5, size=(112, 112)), 7)]).startswith(
        'rank 1 has --trd-seed (else --seed) 7, rank 0 has 42:')
