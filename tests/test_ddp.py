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
