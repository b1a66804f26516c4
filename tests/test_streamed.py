"""TRD on webdataset shards written with the real ``webdataset`` package, read by timm's wds reader.

Through timm's train.py where it is found (``TIMM_TRAIN_SCRIPT``), else through tests/mini_train.py (the same timm
reader, loader and DDP); one process and torchrun x2 (gloo on the CPU).
"""
import csv
import json
import math
import subprocess
import sys

import pytest
import torch

from timm_trd.data.sampler import loader_path_unavailable
from conftest import MINI_TRAIN, found_train_script
from streamed_data import env, need, write_shards
from timm_trd import TRDSchedule
from timm_trd.data.loader import TRDLoader
from timm_trd.data.streams import planned_stream_loader
from timm_trd.errors import TRDConfigError

need('webdataset', 'wds')

TIMEOUT = 300
COMMON = ['--img-size', '32', '-b', '4', '--seed', '7']


def wds_batches(samples: int, ranks: int, workers: int, batch: int) -> int:
    """Training batches per rank and epoch from timm's wds reader: each of the ranks x workers readers serves
    ceil(samples / (ranks x workers)) samples rounded up to whole batches (it repeats its shards to get there)."""
    workers = max(1, workers)  # no worker processes: the main process reads as one
    return workers * math.ceil(math.ceil(samples / (ranks * workers)) / batch)


def launch(script, *args, ranks=1, timeout=TIMEOUT):
    prefix = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(ranks)] \
        if ranks > 1 else [sys.executable]
    cmd = [*prefix, '-m', 'timm_trd', '--train-script', str(script), '--dataset', 'wds/toy', *COMMON, *args]
    if script == MINI_TRAIN:
        cmd.append('--log-info')
    else:
        cmd += ['--model', 'resnet10t', '--num-classes', '4', '--device', 'cpu', '--lr', '0.01', '--log-interval', '100']
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env())
    return result.returncode, result.stdout + result.stderr


def script_or_stand_in():
    return found_train_script() or MINI_TRAIN


@pytest.fixture(scope='module')
def shards(tmp_path_factory):
    """4 training shards of 10 images (rounded up to 12 per reader for 2 ranks x 2 workers, b 4) and 4
    validation shards of 8."""
    return write_shards(tmp_path_factory.mktemp('wds'), train_shards=4, val_shards=4, per_shard=10, size=32)


# -- fewer shards than readers: one line before training, TRD on or off --------------------------------------------

def test_too_few_validation_shards_stop_before_training_with_trd_off(tmp_path):
    data = write_shards(tmp_path / 'wds', train_shards=4, val_shards=1, per_shard=8)
    script = script_or_stand_in()
    extra = ['--validate'] if script == MINI_TRAIN else ['--output', str(tmp_path), '--experiment', 'e']
    rc, log = launch(script, '--data-dir', str(data), '--epochs', '1', '--workers', '2', *extra, ranks=2)
    assert rc != 0
    errors = [line for line in log.splitlines() if line.startswith('timm-trd: error:')]
    assert errors, log[-3000:]
    assert 'validation split' in errors[0] and 'has 1 shard for 2 processes' in errors[0], errors[0]
    assert "--val-split ''" in errors[0]
    assert 'Train:' not in log and 'TRD: epoch' not in log


def test_too_few_training_shards_stop_a_trd_run_in_one_process(tmp_path):
    data = write_shards(tmp_path / 'wds', train_shards=1, val_shards=1, per_shard=8)
    rc, log = launch(MINI_TRAIN, '--data-dir', str(data), '--epochs', '1', '--workers', '2', '--trd-prob', '0.5',
                     '--trd-mode', 'device')
    assert rc == 2, log[-3000:]
    assert ('timm-trd: error: --dataset wds/toy: the training split in' in log
            and 'has 1 shard for 2 loader workers' in log and 'use fewer --workers (at most 1)' in log), log[-2000:]


def _end_early(rank, world, init, outcome):
    torch.distributed.init_process_group('gloo', init_method=init, rank=rank, world_size=world)
    batches = [(torch.zeros(1, 3, 8, 8), torch.zeros(1))] * (4 if rank == 0 else 3)

    class Loader:  # rank 1's loader ends one batch before its length, as a streamed share can
        def __len__(self):
            return 4

        def __iter__(self):
            return iter(batches)

    loader = TRDLoader(Loader(), TRDSchedule(prob=0.5, total_epochs=1), (8, 8), (4, 4), resize=True)
    try:
        outcome[rank] = sum(1 for _ in loader)
    except TRDConfigError as e:
        outcome[rank] = str(e)
    torch.distributed.destroy_process_group()


def test_a_rank_whose_loader_ends_early_stops_with_the_reason(tmp_path):
    outcome = torch.multiprocessing.Manager().dict()
    torch.multiprocessing.spawn(_end_early, args=(2, f'file://{tmp_path}/pg', outcome), nprocs=2)
    assert outcome[0] == 4
    assert outcome[1].startswith('rank 1: the training loader ended after 3 of its 4 batches in epoch 0'), outcome[1]


# -- the device path on shards ---------------------------------------------------------------------------------------

def _summary(output):
    with open(output / 'e' / 'summary.csv') as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize('ranks,mode', [(1, 'device'), (2, 'device'), (1, 'loader'), (2, 'auto')])
def test_trd_on_shards(shards, tmp_path, ranks, mode):
    """Exactly round(P x batches) reduced batches per epoch on every rank, the reader's batch count, in the plan's
    order; BatchNorm recalibration and validation on the shards. ``auto`` takes the loader path on wds."""
    if mode != 'device' and loader_path_unavailable():
        pytest.skip(f'the loader path needs a newer timm: {loader_path_unavailable()}')
    script = script_or_stand_in()
    workers = 2
    batches = wds_batches(40, ranks, workers, 4)  # 10 per rank with one rank, 6 with two (readers round up)
    reduced = round(0.5 * batches)
    extra = (['--validate', '--result-dir', str(tmp_path)] if script == MINI_TRAIN
             else ['--output', str(tmp_path), '--experiment', 'e'])
    rc, log = launch(script, '--data-dir', str(shards), '--epochs', '2', '--workers', str(workers), '--trd-prob',
                     '0.5', '--trd-mode', mode, '--trd-bn-recal', '2', *extra, ranks=ranks)
    assert rc == 0, log[-4000:]
    path = 'device' if mode == 'device' else 'loader'
    for epoch in (0, 1):
        assert f'TRD: epoch {epoch}: {reduced}/{batches} batches at 16x16 ({path} path)' in log, log[-3000:]
    if ranks == 2:
        assert log.count('all 2 ranks served the same sizes in the same order') == 2
    if path == 'loader':  # fast decode in the shard reader (tests/test_shard_decode.py)
        assert 'TRD: reduced images: JPEGs decoded in the shard reader' in log, log[-3000:]
    assert 'BatchNorm statistics of the model recomputed at 32x32 on 2 training batches' in log
    if script == MINI_TRAIN:
        runs = [json.loads((tmp_path / f'rank{rank}.json').read_text()) for rank in range(ranks)]
        plan = TRDSchedule(prob=0.5, total_epochs=2, seed=7)
        for run in runs:
            assert [m['trd_reduced_batches'] for m in run['epochs']] == [reduced, reduced]
            for epoch in (0, 1):
                sizes = [tuple(shape[2:]) for shape in run['shapes'][str(epoch)]]
                assert sizes == [(16, 16) if r else (32, 32) for r in plan.plan(epoch, batches)]
        assert len(runs[0]['validated']) >= 2  # validation ran on the shards after each epoch
    else:
        rows = _summary(tmp_path)
        assert [(int(r['train_trd_reduced_batches']), int(r['train_trd_batches'])) for r in rows] == \
            [(reduced, batches)] * 2
        assert all(0.0 < float(r['eval_top1']) <= 100.0 for r in rows)  # validation on the shards


# -- the loader path on shards: each worker knows the batch it fills ------------------------------------------------

@pytest.mark.parametrize('workers', [0, 3])
def test_loader_path_workers_follow_the_plan_in_process(shards, workers):
    """timm's wds reader and create_loader, persistent workers: every batch comes at the planned size, 3 epochs."""
    from timm.data import create_dataset, create_loader
    dataset = create_dataset('wds/toy', root=str(shards), split='train', is_training=True, batch_size=4, seed=1)
    loader, stream = planned_stream_loader(create_loader, dataset, (), dict(
        input_size=(3, 32, 32), batch_size=4, is_training=True, use_prefetcher=False, num_workers=workers,
        persistent_workers=workers > 0), (3, 16, 16))
    batches = wds_batches(40, 1, workers, 4)
    assert len(loader) == batches
    schedule = TRDSchedule(prob=0.5, total_epochs=3, seed=3)
    trd = TRDLoader(loader, schedule, (32, 32), (16, 16), resize=False, stream=stream)
    for epoch in range(3):
        trd.set_epoch(epoch)
        dataset.set_epoch(epoch)
        sizes = [tuple(x.shape[-2:]) for x, _ in trd]  # TRDLoader stops on a batch off the plan
        assert sizes == [(16, 16) if r else (32, 32) for r in schedule.plan(epoch, batches)]
        assert sizes.count((16, 16)) == round(0.5 * batches)


def test_a_copy_of_the_planned_stream_reads_at_full_size(shards):
    """BatchNorm recalibration loads a shallow copy of the training dataset at the full size: the copy must not
    follow the plan (it did: recalibration on the loader path then mixed reduced images in)."""
    import copy
    from timm.data import create_dataset, create_loader
    dataset = create_dataset('wds/toy', root=str(shards), split='train', is_training=True, batch_size=4, seed=1)
    kw = dict(input_size=(3, 32, 32), batch_size=4, is_training=True, use_prefetcher=False, num_workers=0)
    loader, stream = planned_stream_loader(create_loader, dataset, (), kw, (3, 16, 16))
    stream.publish(torch.ones(len(loader)))
    assert {tuple(x.shape[-2:]) for x, _ in loader} == {(16, 16)}
    clone = copy.copy(stream)
    assert {tuple(x.shape[-2:]) for x, _ in create_loader(clone, **kw)} == {(32, 32)}


def test_reduced_copy_is_refused_on_shards(shards, tmp_path):
    (tmp_path / 'copy').mkdir()
    rc, log = launch(MINI_TRAIN, '--data-dir', str(shards), '--epochs', '1', '--workers', '1', '--trd-prob', '0.5',
                     '--trd-reduced-copy', str(tmp_path / 'copy'))
    assert rc == 2, log[-2000:]
    assert 'timm-trd: error: --trd-reduced-copy holds a copy of a training folder and this run streams its data' in log
