"""Small generated datasets in the formats large runs stream, written with the real packages.

- :func:`write_shards`: webdataset ``.tar`` shards (``webdataset.TarWriter``) and the ``_info.json`` timm's wds reader
  reads (``--dataset wds/toy --data-dir ROOT``);
- :func:`write_hf_parquet`: a Hugging Face dataset as parquet files ``data/{split}-0000k-of-0000n.parquet`` (written
  with ``datasets``), which ``--dataset hfds/ROOT`` / ``hfids/ROOT`` read locally, no hub.

The images are the toy shapes on textures (:mod:`timm_trd.data.toy_data`), as JPEG (wds) or PNG (parquet).
:func:`need` skips a test, with the reason, when the package is not installed.
"""

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from timm_trd.data.toy_data import CLASSES, draw_sample

HF_OFFLINE = {'HF_HUB_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1'}


def need(package: str, extra: str):
    """Import ``package`` or skip the test, naming the extra that installs it."""
    return pytest.importorskip(package, reason=f'needs the {package} package: pip install -e ".[{extra}]"')


def write_shards(root, train_shards: int = 4, val_shards: int = 4, per_shard: int = 16, size: int = 32,
                 seed: int = 0, fmt: str = 'JPEG', images=None) -> Path:
    """Write ``toy-{split}-NNNN.tar`` shards of ``per_shard`` samples (``jpg`` + ``cls``) and ``_info.json``.

    ``images``: an optional list of PIL images to use (cycled, class = index mod 4) instead of generated ones."""
    wds = need('webdataset', 'wds')
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    info = {'name': 'toy', 'splits': {}}
    count = 0
    for split, shards in (('train', train_shards), ('validation', val_shards)):
        names = []
        for s in range(shards):
            name = f'toy-{split}-{s:04d}.tar'
            with wds.TarWriter(str(root / name)) as writer:
                for i in range(per_shard):
                    if images:
                        label, image = count % len(CLASSES), images[count % len(images)]
                    else:
                        label = int(rng.integers(len(CLASSES)))
                        image = draw_sample(CLASSES[label], size, rng)
                    count += 1
                    data = io.BytesIO()
                    image.convert('RGB').save(data, fmt, quality=90)
                    writer.write({'__key__': f'{split}{s:04d}_{i:04d}', 'jpg': data.getvalue(),
                                  'cls': str(label).encode()})
            names.append(name)
        if shards:
            info['splits'][split] = {'name': split, 'num_samples': shards * per_shard, 'filenames': names,
                                     'shard_lengths': [per_shard] * shards}
    (root / '_info.json').write_text(json.dumps(info, indent=1))
    return root


def write_hf_parquet(root, train: int = 64, val: int = 16, shards: int = 4, size: int = 32, seed: int = 0) -> Path:
    """A local Hugging Face image dataset (``image``, ``label``) as parquet shards per split."""
    datasets = need('datasets', 'hf')
    root = Path(root)
    (root / 'data').mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    features = datasets.Features({'image': datasets.Image(), 'label': datasets.ClassLabel(names=list(CLASSES))})
    for split, count in (('train', train), ('validation', val)):
        labels = [int(rng.integers(len(CLASSES))) for _ in range(count)]
        data = datasets.Dataset.from_dict(
            {'image': [draw_sample(CLASSES[c], size, rng) for c in labels], 'label': labels}, features=features)
        for s in range(shards):
            data.shard(shards, s, contiguous=True).to_parquet(
                str(root / 'data' / f'{split}-{s:05d}-of-{shards:05d}.parquet'))
    return root


def env(**extra) -> dict:
    """The environment of a training subprocess: one thread, no warnings, the hub offline."""
    return {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore', **HF_OFFLINE, **extra}
