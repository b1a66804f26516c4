"""TRD on a local Hugging Face dataset (parquet files written with the real ``datasets`` package; the hub offline, a
fresh cache per test): ``hfds/`` (map-style) on the loader path, ``hfids/`` (streamed) on both paths.

Through timm's train.py where it is found (``TIMM_TRAIN_SCRIPT``), else through tests/mini_train.py.
"""
import subprocess
import sys

import pytest

from timm_trd.data.sampler import loader_path_unavailable
from conftest import MINI_TRAIN, found_train_script
from streamed_data import env, need, write_hf_parquet

need('datasets', 'hf')

TRAIN, BATCH = 64, 4


@pytest.fixture(scope='module')
def hf_root(tmp_path_factory):
    return write_hf_parquet(tmp_path_factory.mktemp('hf'), train=TRAIN, val=16, shards=4, size=32)


def launch(dataset, cache, *args, ranks=1, timeout=300):
    script = found_train_script() or MINI_TRAIN
    prefix = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(ranks)] \
        if ranks > 1 else [sys.executable]
    cmd = [*prefix, '-m', 'timm_trd', '--train-script', str(script), '--dataset', dataset, '--data-dir', str(cache),
           '--dataset-download', '--img-size', '32', '-b', str(BATCH), '--epochs', '1', '--seed', '7', *args]
    if script == MINI_TRAIN:
        cmd += ['--log-info', '--validate']
    else:
        cmd += ['--model', 'resnet10t', '--num-classes', '4', '--device', 'cpu', '--lr', '0.01', '--log-interval', '100']
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env())
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    return log


@pytest.mark.parametrize('kind,mode,ranks', [('hfds', 'loader', 1), ('hfids', 'device', 1), ('hfids', 'loader', 1),
                                             ('hfids', 'auto', 2)])
def test_trd_on_a_local_hf_dataset(hf_root, tmp_path, kind, mode, ranks):
    if mode != 'device' and loader_path_unavailable():
        pytest.skip(f'the loader path needs a newer timm: {loader_path_unavailable()}')
    log = launch(f'{kind}/{hf_root}', tmp_path / 'cache', '--workers', '2', '--trd-prob', '0.5', '--trd-mode', mode,
                 ranks=ranks)
    batches = TRAIN // BATCH // ranks  # hfids: each of the ranks x 2 readers serves 64 / (ranks x 2) images
    path = 'device' if mode == 'device' else 'loader'
    assert f'TRD: epoch 0: {batches // 2}/{batches} batches at 16x16 ({path} path)' in log, log[-3000:]
    if ranks == 2:
        assert 'all 2 ranks served the same sizes in the same order' in log
    assert 'Traceback' not in log
