"""Read an offline wandb run back: its config and its history rows, from the run's ``run-<id>.wandb`` file.

An offline run (``WANDB_MODE=offline``) keeps everything in that one file, the transaction log that
``wandb sync`` uploads later: a 7-byte header (``:W&B``, a 2-byte magic, a version byte), then LevelDB's
log format (32 KiB blocks of chunks, each with a 7-byte header: CRC32C, length, chunk type), each whole
record a ``wandb.proto.wandb_internal_pb2.Record``. wandb 0.31 ships no reader for it (older versions had
``wandb.sdk.internal.datastore``), and its offline run folder holds no config.yaml or wandb-summary.json, so
the tests parse the log themselves, with wandb's own protobuf classes.
"""

import json
import struct
from pathlib import Path
from typing import Dict, List, Tuple

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path) -> List[bytes]:
    """The whole records of a ``.wandb`` transaction log, in order."""
    data = Path(path).read_bytes()
    if len(data) < HEADER or data[:4] != b':W&B':
        raise ValueError(f'{path} is not a wandb transaction log (no :W&B header)')
    out, pending, pos = [], b'', HEADER
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:  # a block's tail too short for a chunk header is padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack('<IHB', data[pos:pos + HEADER])
        if kind == 0 and length == 0:  # zero padding up to the next block
            pos += left_in_block
            continue
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            out.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            out.append(pending + chunk)
            pending = b''
        else:
            raise ValueError(f'{path}: unknown chunk type {kind} at byte {pos}')
    return out


def read_run(run_dir) -> Tuple[Dict, List[Dict]]:
    """``(config, history)`` of the offline run in ``run_dir`` (a ``wandb/offline-run-*`` folder)."""
    from wandb.proto import wandb_internal_pb2

    logs = sorted(Path(run_dir).glob('run-*.wandb'))
    if len(logs) != 1:
        raise ValueError(f'{run_dir} should hold one run-*.wandb file, found {[p.name for p in logs]}')
    config, history = {}, []
    for raw in records(logs[0]):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof('record_type')
        if kind == 'run':
            config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
        elif kind == 'config':
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
            for item in record.config.remove:
                config.pop(item.key, None)
        elif kind == 'history':
            history.append({item.key or '/'.join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
    return config, history


def offline_runs(wandb_dir) -> List[Path]:
    """The offline run folders under ``WANDB_DIR`` (wandb puts them in ``WANDB_DIR/wandb``)."""
    return sorted(Path(wandb_dir).glob('wandb/offline-run-*'))
