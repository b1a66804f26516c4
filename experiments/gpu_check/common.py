"""What the GPU check's phases share below the runner: a subprocess with a time limit and its log, and what a
train.py run leaves behind (the probe's records, summary.csv, TRD's epoch lines)."""

import csv
import os
import re
import shlex
import signal
import statistics
import subprocess
import time
from pathlib import Path

from .prepare import ROOT


def run_logged(cmd, log: Path, timeout, env, note=None):
    """Run ``cmd`` in its own process group, output appended to ``log``; kill the whole group at the timeout."""
    with open(log, 'a') as f:
        f.write(f'$ {shlex.join(str(c) for c in cmd)}\n')
        f.flush()
        start = time.monotonic()
        proc = subprocess.Popen([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
            f.write(f'\n[gpu_check] stopped after {timeout:.0f} s (time budget)\n')
            return dict(status='timeout', rc=None, seconds=time.monotonic() - start)
    return dict(status='ok' if rc == 0 else 'failed', rc=rc, seconds=time.monotonic() - start)


def tail(path: Path, lines=15):
    try:
        return ''.join(path.read_text(errors='replace').splitlines(True)[-lines:])
    except OSError:
        return ''


def trd_args(c):
    """TRD's two options for a train.py run, from a profile's section."""
    return ['--trd-prob', str(c['prob']), '--trd-size', str(c['trd'])]


# -- reading results -------------------------------------------------------------------------------
EPOCH_LINE = re.compile(r'TRD: epoch (\d+): (\d+)/(\d+) batches at (\d+)x(\d+) \((\w+) path\), compute ([\d.]+)')


def read_summary(out: Path):
    if not (out / 'summary.csv').is_file():
        return []
    with open(out / 'summary.csv') as f:
        return list(csv.DictReader(f))


def of_kind(records, kind):
    return [r for r in records if r.get('kind') == kind]


def end_memory(records):
    ends = of_kind(records, 'end')
    return ends[-1].get('memory', {}) if ends else {}


def epoch_times(records):
    """Per epoch: train_one_epoch's seconds, and the whole epoch's (to the next epoch's start, or to the run's end:
    validation, recalibration and the checkpoint included)."""
    epochs = of_kind(records, 'epoch')
    ends = of_kind(records, 'end')
    starts = [e['time'] - e['seconds'] for e in epochs] + ([ends[-1]['time']] if ends else [])
    rows = []
    for i, e in enumerate(epochs):
        rows.append(dict(epoch=e['epoch'], train_s=e['seconds'],
                         epoch_s=starts[i + 1] - starts[i] if i + 1 < len(starts) else None, sizes=e.get('sizes', {})))
    later = rows[1:] or rows  # epoch 0 also pays for cuDNN's autotuning and the workers' start
    train = [r['train_s'] for r in later]
    whole = [r['epoch_s'] for r in later if r['epoch_s'] is not None]
    return dict(epoch_times=rows, train_s_per_epoch=statistics.mean(train) if train else None,
                epoch_s_per_epoch=statistics.mean(whole) if whole else None)
