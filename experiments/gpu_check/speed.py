"""Speed: call 2's ``trainpy-baseline`` / ``-loader`` / ``-device`` (train.py at the full size against TRD's two
paths, wall time per epoch, TRD's step rates and data wait from its log), and ``--call bench``'s
``bench-compute`` / ``bench-loader`` / ``bench-compile`` (experiments/bench_trd.py, read from its JSON)."""

import json
import re
import sys
from functools import partial
from pathlib import Path

from .common import EPOCH_LINE, end_memory, epoch_times, read_summary, run_logged, trd_args
from .plan import SPEED_PHASES
from .prepare import ROOT

RATE = re.compile(r'step rate ([\d.na]+) img/s full, ([\d.na]+) img/s reduced')
WAIT = re.compile(r'data wait\D*?([\d.]+|nan) ms\W+(?:full\W+)?([\d.]+|nan) ms')  # full, then reduced


def phases(check) -> dict:
    """{phase name: fn(timeout, log)} for the runner."""
    fns = {name: partial(run_speed, check, name) for name in SPEED_PHASES}
    fns.update({f'bench-{kind}': partial(run_bench, check, kind) for kind in ('compute', 'loader')})
    fns['bench-compile'] = partial(run_bench_compile, check)
    return fns


# -- speed through train.py (call 2) ------------------------------------------------------------------
def run_speed(check, name, timeout, log):
    if (reason := check.skip_reason('trainpy_folder')):
        return dict(status='skipped', reason=reason)
    path = name.split('-')[1]
    if path == 'loader' and check.setup.get('loader_path_unavailable'):
        return dict(status='skipped', reason=check.setup['loader_path_unavailable'])
    c = check.p['speed']
    extra = [] if path == 'baseline' else trd_args(c) + ['--trd-mode', path]
    entry, ranks, text, out = check.trainpy(name, log, timeout, check.setup['trainpy_folder'],
                                            check.setup['trainpy_classes'], c, extra)
    entry.update(parse_trainpy(text, out, c['batch'], c['prob']))
    entry.update(epoch_times(ranks.get(0, [])))
    entry['memory'] = end_memory(ranks.get(0, []))
    if entry['status'] == 'ok' and len(entry.get('summary', [])) != c['epochs']:
        entry.update(status='failed', reason=f"summary.csv has {len(entry.get('summary', []))} rows, "
                                             f"expected {c['epochs']}")
    return entry


def parse_trainpy(log: str, out: Path, batch: int, prob: float):
    """TRD's log lines, summary.csv, and the last epoch's figures, from one train.py run."""
    lines = [line[line.index('TRD:'):] for line in log.splitlines() if 'TRD:' in line]
    epochs = []
    for line in lines:
        m = EPOCH_LINE.search(line)
        if not m:
            continue
        e = dict(epoch=int(m[1]), reduced=int(m[2]), batches=int(m[3]), path=m[6], compute=float(m[7]))
        if (r := RATE.search(line)):
            e.update(img_per_s_full=float(r[1]), img_per_s_reduced=float(r[2]))
        if (w := WAIT.search(line)):
            e.update(data_ms_full=float(w[1]), data_ms_reduced=float(w[2]))
        epochs.append(e)
    result = dict(trd_lines=lines, trd_epochs=epochs, summary=read_summary(out),
                  distributed='distributed mode' in log, single_process='single process' in log)
    if epochs:
        last = epochs[-1]
        result['last_epoch'] = last
        full, reduced = last.get('img_per_s_full'), last.get('img_per_s_reduced')
        if full and reduced and full == full and reduced == reduced:  # not NaN
            own = full / reduced  # a reduced step's time over a full step's
            result.update(step_ms_full=1e3 * batch / full, step_ms_reduced=1e3 * batch / reduced,
                          ratio_paired=1 - prob * (1 - own))
    return result



# -- benchmark (--call bench) -------------------------------------------------------------------------
def bench_cmd(check, out, batch, steps, rounds, workers):
    p, s = check.p, check.p['speed']
    cmd = [sys.executable, ROOT / 'experiments' / 'bench_trd.py', '--model', s['model'], '--img-size', str(s['img']),
           '--trd-size', str(s['trd']), '--trd-prob', str(s['prob']), '-b', str(batch), '--steps', str(steps),
           '--rounds', str(rounds), '--workers', str(workers), '--amp', '--channels-last', '--device', p['device'],
           '--data-cache', check.work / 'data', '--out', out, '--compile-backend', p['compile_backend']]
    if p['threads']:
        cmd += ['--threads', str(p['threads'])]
    return cmd


def bench_configs(check):
    return ['baseline'] + ([] if check.setup.get('loader_path_unavailable') else ['loader']) + ['device']


def run_bench(check, kind, timeout, log):
    b = check.p['bench'][kind]
    out = check.work / f'bench_{kind}.json'
    cmd = bench_cmd(check, out, b['batch'], b['steps'], b['rounds'], check.workers)
    cmd += ['--warmup-rounds', str(b['warmup']), '--configs', *bench_configs(check)]
    if kind == 'compute':
        cmd += ['--in-memory', '--data', 'generated', '--data-images', str(b['images'])]
    else:
        if not check.setup.get('jpeg_folder'):
            return dict(status='skipped', reason='setup made no JPEG folder')
        cmd += ['--data', check.setup['jpeg_folder'], '--data-images', str(check.setup['jpegs'])]
    entry = run_logged(cmd, log, timeout, check.env)
    if out.exists():
        entry.update(bench_summary(json.loads(out.read_text())))
    return entry


def run_bench_compile(check, timeout, log):
    c = check.p['bench']['compile']
    out = check.work / 'bench_compile.json'
    cmd = bench_cmd(check, out, c['batch'], c['steps'], c['rounds'], min(c['workers'], check.workers))
    cmd += ['--compile-check', '--compile-check-modes', *c['modes'], '--in-memory', '--data', 'generated',
            '--data-images', str(c['images'])]
    entry = run_logged(cmd, log, timeout, check.env)
    if out.exists():
        entry['compile_check'] = json.loads(out.read_text()).get('compile_check', [])
    if entry['status'] == 'ok' and not all(r['holds'] for r in entry.get('compile_check', [])):
        entry['reason'] = 'more graphs than sizes, or graphs built after epoch 0'
    return entry


def bench_summary(info):
    """The figures the table shows, per configuration, from bench_trd.py's JSON."""
    a = info.get('args', {})
    full, small = f"{a.get('img_size')}x{a.get('img_size')}", f"{a.get('trd_size')}x{a.get('trd_size')}"
    configs = {}
    for name, s in info.get('summary', {}).items():
        f, r = s['sizes'].get(full, {}), s['sizes'].get(small, {})
        configs[name] = dict(
            reduced=s['reduced_batches'], steps=s['steps'], step_ms_full=f.get('step_ms'),
            step_ms_reduced=r.get('step_ms'), data_ms_full=f.get('data_ms_mean'), data_ms_reduced=r.get('data_ms_mean'),
            img_per_s_full=f.get('img_per_s'), img_per_s_reduced=r.get('img_per_s'), ratio=s.get('ratio'),
            ratio_se=s.get('ratio_se'), ideal=s.get('ideal'), ratio_over_ideal=s.get('ratio_over_ideal'),
            ratio_medians_over_ideal=s.get('ratio_medians_over_ideal'),
            ratio_paired_over_ideal=s.get('ratio_paired_over_ideal'),
            data_ms_per_reduced=s.get('data_ms_per_reduced_marginal'), peak_mb_full=f.get('peak_mb'),
            peak_mb_reduced=r.get('peak_mb'))
    return dict(machine=info.get('machine'), configs=configs, checks=info.get('checks', {}))
