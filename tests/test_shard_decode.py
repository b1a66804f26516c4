"""Fast decode on webdataset shards (the loader path on ``wds/``): reduced samples decoded at a reduced JPEG scale,
full ones exactly as timm's reader decodes them; real ``webdataset`` shards, timm's wds reader and ``create_loader``.

Each test loads the same epoch twice with the same seeds, fast decode off (timm's decode for every sample) and on:
a full batch must come out bit for bit the same, a reduced one decoded at a reduced scale differs (at scale 1 the
crop is timm's own, bit for bit), but stays the same picture (>= 30 dB PSNR, the floor the folder tests use).
"""
import random
import types

import numpy as np
import pytest
import torch

from streamed_data import need, write_shards
from test_decode import photo, psnr
from timm_trd import TRDSchedule
from timm_trd.data.decode import attach_reduced_loading
from timm_trd.data.loader import TRDLoader
from timm_trd.data.sampler import loader_path_unavailable
from timm_trd.data.shard_decode import ShardDecode
from timm_trd.data.streams import planned_stream_loader

need('webdataset', 'wds')
pytestmark = pytest.mark.skipif(bool(loader_path_unavailable()), reason='needs the loader path (timm >= 1.0.29)')

FULL, REDUCED, BATCH = 64, 16, 4


@pytest.fixture(scope='module')
def shards(tmp_path_factory):
    """4 shards of 6 photo-like 256x192 JPEGs (4:2:0, quality 90): big enough for 1/2 .. 1/8 at 16 px."""
    rng = np.random.default_rng(0)
    images = [photo(rng, 256, 192) for _ in range(24)]
    return write_shards(tmp_path_factory.mktemp('wds'), train_shards=4, val_shards=0, per_shard=6, images=images)


def load_epoch(shards, fast: bool, workers: int, epoch: int = 0):
    """One epoch of the loader path over the shards: (batches, plan, the stream, the log line)."""
    from timm.data import create_dataset, create_loader
    dataset = create_dataset('wds/toy', root=str(shards), split='train', is_training=True, batch_size=BATCH, seed=1)
    loader, stream = planned_stream_loader(create_loader, dataset, (), dict(
        input_size=(3, FULL, FULL), batch_size=BATCH, is_training=True, use_prefetcher=False, num_workers=workers,
        mean=(0, 0, 0), std=(1, 1, 1)), (3, REDUCED, REDUCED))
    line = attach_reduced_loading(loader, 'loader', types.SimpleNamespace(fast_decode=fast, reduced_copy=None),
                                  streamed=True)
    schedule = TRDSchedule(prob=0.5, total_epochs=2, seed=3)
    trd = TRDLoader(loader, schedule, (FULL, FULL), (REDUCED, REDUCED), resize=False, stream=stream)
    trd.set_epoch(epoch)
    dataset.set_epoch(epoch)
    random.seed(5)
    torch.manual_seed(5)
    batches = [x for x, _ in trd]
    return batches, schedule.plan(epoch, len(loader)), stream, line


@pytest.mark.parametrize('workers', [0, 2])
def test_reduced_samples_are_decoded_at_a_reduced_scale_and_full_ones_as_timm_does(shards, workers):
    timm_batches, plan, _, off_line = load_epoch(shards, fast=False, workers=workers)
    fast_batches, plan_again, stream, on_line = load_epoch(shards, fast=True, workers=workers)
    assert 'decoded at full size (--no-trd-fast-decode)' in off_line
    assert 'JPEGs decoded in the shard reader' in on_line
    assert list(plan) == list(plan_again) and 0 < sum(plan) < len(plan)
    assert len(fast_batches) == len(timm_batches) == len(plan)
    drafted, values = 0, []
    for reduced, ref, fast in zip(plan, timm_batches, fast_batches):
        assert fast.shape[-1] == (REDUCED if reduced else FULL)
        if not reduced:
            assert torch.equal(ref, fast), 'a full-size batch changed'
            continue
        for a, b in zip(ref, fast):
            drafted += not torch.equal(a, b)  # at scale 1 the crop is timm's own, bit for bit
            values.append(psnr(a, b))
    print(f'{workers} workers: {drafted}/{len(values)} reduced samples decoded at a reduced scale, PSNR vs timm\'s '
          f'mean {np.mean([v for v in values if v != float("inf")]):.1f} dB, min {min(values):.1f} dB')
    assert drafted >= len(values) // 2
    assert min(values) >= 30.0
    if workers == 0:  # the decode stage ran in this process: it saw exactly the reduced samples
        decode = stream.trd_decoding.install(stream.reader)
        assert isinstance(decode, ShardDecode)
        assert sum(decode.scales.values()) == BATCH * sum(plan)
        assert sum(n for k, n in decode.scales.items() if k > 1) == drafted


def test_without_a_random_resized_crop_nothing_is_drafted(shards):
    """``--no-aug``-like reduced transform (no RandomResizedCrop first): full decode, said in the log line."""
    from timm.data import create_dataset, create_loader
    dataset = create_dataset('wds/toy', root=str(shards), split='train', is_training=True, batch_size=BATCH, seed=1)
    loader, stream = planned_stream_loader(create_loader, dataset, (), dict(
        input_size=(3, FULL, FULL), batch_size=BATCH, is_training=True, use_prefetcher=False, num_workers=0,
        no_aug=True), (3, REDUCED, REDUCED))
    line = attach_reduced_loading(loader, 'loader', types.SimpleNamespace(fast_decode=True, reduced_copy=None),
                                  streamed=True)
    assert line == ('TRD: reduced images are decoded at full size (the reduced transform does not start with timm\'s '
                    'RandomResizedCrop (e.g. --no-aug))')
    assert stream.trd_decoding is None


def test_an_unreadable_reduced_image_is_skipped_as_timm_skips_it(tmp_path, caplog):
    """A truncated JPEG in a reduced slot fails in the decode stage, where timm's error handler logs and skips it
    (as for a full one): the epoch still serves every batch, all reduced."""
    import io
    import json
    import webdataset as wds
    from timm.data import create_dataset, create_loader
    rng = np.random.default_rng(1)
    with wds.TarWriter(str(tmp_path / 'toy-train-0000.tar')) as writer:
        for i in range(9):
            data = io.BytesIO()
            photo(rng, 128, 96).save(data, 'JPEG', quality=90)
            data = data.getvalue()[:400] if i == 3 else data.getvalue()  # the header, then nothing
            writer.write({'__key__': f'{i:04d}', 'jpg': data, 'cls': b'0'})
    (tmp_path / '_info.json').write_text(json.dumps({'name': 'toy', 'splits': {'train': {
        'name': 'train', 'num_samples': 8, 'filenames': ['toy-train-0000.tar'], 'shard_lengths': [9]}}}))
    dataset = create_dataset('wds/toy', root=str(tmp_path), split='train', is_training=True, batch_size=BATCH, seed=1)
    loader, stream = planned_stream_loader(create_loader, dataset, (), dict(
        input_size=(3, FULL, FULL), batch_size=BATCH, is_training=True, use_prefetcher=False, num_workers=0),
        (3, REDUCED, REDUCED))
    stream.attach_fast_decode(True)
    stream.publish(torch.ones(len(loader)))
    with caplog.at_level('WARNING'):
        sizes = [tuple(x.shape) for x, _ in loader]
    assert sizes == [(BATCH, 3, REDUCED, REDUCED)] * 2
    assert 'Handling webdataset error' in caplog.text
