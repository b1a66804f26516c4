"""The GPU check's runner: the phases of a call, in order, each in a subprocess with its time budget (its own
plus what earlier phases left, never the later phases'), one that fails or runs out recorded and the next one
run; train.py runs through train_child.py with the options every phase shares; the results written after every
phase (gpu_check.json, gpu_check.txt, gpu_check_logs.tar.gz)."""

import json
import os
import platform
import shutil
import sys
import tarfile
import time
from pathlib import Path

from . import accuracy, compiling, ddp, setup_phase, speed
from .accuracy import compare_arms
from .common import run_logged, tail
from .plan import CALL_PHASES, MEMORY_BOUND, PHASES, PROFILES
from .prepare import CARRY
from .report import tables
from .train_child import read_probe

TRAIN_CHILD = Path(__file__).resolve().parent / 'train_child.py'
PHASE_MODULES = (setup_phase, accuracy, ddp, compiling, speed)  # each gives {phase name: fn(timeout, log)}


def train_output_root(work: Path, profile: str) -> Path:
    """Where train.py writes its checkpoints: /dev/shm on the GPU machine (30 ResNet-50 checkpoints of ~200 MB
    each would cost seconds per epoch on disk), else the scratch folder."""
    shm = Path('/dev/shm')
    if profile == 'gpu' and shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 8 * 2 ** 30:
        return shm / 'timm_trd_gpu_check'
    return work / 'train'


class Check:
    """One call's run: its phases, their budgets and deadline, the environment, the results so far."""

    def __init__(self, args):
        self.args = args
        self.profile = 'dry' if args.dry_run else 'gpu'
        self.p = PROFILES[self.profile]
        self.budgets = dict(self.p['budgets'])
        self.phases = [ph for ph in CALL_PHASES[args.call] if ph in (args.phases or PHASES)]
        self.deadline_s = args.deadline or sum(self.budgets[ph] for ph in self.phases) + 5
        self.start = time.monotonic()
        self.work = Path(args.work).resolve()
        self.logs = self.work / 'logs'
        self.probes = self.work / 'probes'
        shutil.rmtree(self.work, ignore_errors=True)
        self.logs.mkdir(parents=True)
        self.train_out = train_output_root(self.work, self.profile)
        shutil.rmtree(self.train_out, ignore_errors=True)
        self.env = {**os.environ, 'PYTHONUNBUFFERED': '1'}
        if args.dry_run:
            self.env['OMP_NUM_THREADS'] = '1'
        self.workers = args.workers or (1 if args.dry_run else os.cpu_count() or 1)
        self.train_script = args.train_script or (str(CARRY / 'train.py') if (CARRY / 'train.py').is_file() else
                                                  os.environ.get('TIMM_TRAIN_SCRIPT'))
        self.result = dict(mode='dry-run' if args.dry_run else 'gpu', call=args.call, profile=self.p,
                           workers=self.workers, deadline_s=self.deadline_s, memory_bound=MEMORY_BOUND, phases={},
                           started=time.strftime('%Y-%m-%d %H:%M:%S'), host=platform.node())
        self.setup = {}

    def remaining(self):
        return self.deadline_s - (time.monotonic() - self.start)

    def timeout_for(self, phase):
        """Its own budget plus what earlier phases left: the time to the deadline less the later phases' budgets."""
        later = sum(self.budgets[ph] for ph in self.phases[self.phases.index(phase) + 1:])
        return max(5.0, min(self.remaining() - 5, self.remaining() - later))

    def say(self, text):
        print(f'[gpu_check {time.monotonic() - self.start:5.0f} s] {text}', flush=True)

    def phase(self, name, fn):
        timeout = self.timeout_for(name)
        log = self.logs / f'{name}.log'
        self.say(f'{name}: start (up to {timeout:.0f} s)')
        try:
            entry = fn(timeout, log)
        except Exception as e:  # noqa: BLE001 - one phase must not stop the others
            entry = dict(status='failed', reason=f'{type(e).__name__}: {e}')
        entry.update(timeout_s=round(timeout, 1), log=f'logs/{log.name}')
        if 'seconds' in entry:
            entry['seconds'] = round(entry['seconds'], 1)
        failed_checks = [k for k, v in entry.get('checks', {}).items() if v is False]
        if entry['status'] == 'ok' and failed_checks:
            entry.update(status='failed', reason='checks failed: ' + ', '.join(failed_checks))
        self.result['phases'][name] = entry
        self.say(f'{name}: {entry["status"]}' + (f' in {entry["seconds"]:.0f} s' if 'seconds' in entry else '')
                 + (f' ({entry["reason"]})' if entry.get('reason') else ''))
        if entry['status'] in ('failed', 'timeout') and log.exists():
            print(tail(log), flush=True)

    # -- train.py runs ---------------------------------------------------------------------------------
    # -- train.py runs ---------------------------------------------------------------------------------
    def skip_reason(self, folder_key):
        if not self.train_script:
            return "no train.py: run --prepare, or set $TIMM_TRAIN_SCRIPT"
        if not self.setup.get(folder_key):
            return f'setup made no data ({folder_key})'
        return None

    def trainpy(self, name, log, timeout, data_dir, num_classes, c, extra, world=1, workers=None, env=None):
        """Run train.py (through train_child.py) with the options every phase shares; returns (entry, probe ranks, log
        text, train.py's output folder)."""
        p = self.p
        probe = self.probes / name
        child = [TRAIN_CHILD, '--probe-out', probe]
        if world > 1:
            launch = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(world),
                      *child, '--one-device']
        else:
            launch = [sys.executable, *child]
        args = ['--train-script', self.train_script, '--data-dir', data_dir, '--model', c['model'], '--num-classes',
                str(num_classes), '--img-size', str(c['img']), '--amp', '--channels-last', '-b', str(c['batch']),
                '--workers', str(workers or self.workers), '--epochs', str(c['epochs']),
                *([] if '--warmup-epochs' in extra else ['--warmup-epochs', '0']), '--seed', '0',
                '--log-interval', str(c['log_interval']), '--checkpoint-hist', '1',
                '--output', self.train_out, '--experiment', name, '--device', p['device']]
        if p['amp_dtype']:
            args += ['--amp-dtype', p['amp_dtype']]
        entry = run_logged([*launch, '--', *args, *extra], log, timeout, {**self.env, **(env or {})})
        out = self.train_out / name
        for checkpoint in out.glob('*.pth.tar'):  # kept only as long as train.py needs them
            checkpoint.unlink()
        return entry, read_probe(probe), log.read_text(errors='replace'), out

    # -- all -----------------------------------------------------------------------------------------
    def functions(self):
        fns = {}
        for module in PHASE_MODULES:
            fns.update(module.phases(self))
        return fns

    def run(self):
        self.say(f"{self.result['mode']}, call {self.args.call}: phases {', '.join(self.phases)}; "
                 f"deadline {self.deadline_s:.0f} s; results to {self.args.out}")
        fns = self.functions()
        for name in self.phases:
            self.phase(name, fns[name])
            self.write(final=False)  # what is done so far survives if the whole command is cut off
        return self.write()

    def write(self, final=True):
        self.result['seconds'] = round(time.monotonic() - self.start, 1)
        self.result['finished'] = final
        try:
            self.result['comparison'] = compare_arms(self.result['phases'])
            self.result['table'] = tables(self.result)
        except Exception as e:  # noqa: BLE001 - the JSON must still be written
            self.result['table'] = f'(no table: {type(e).__name__}: {e})'
        out = Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / 'gpu_check.json').write_text(json.dumps(self.result, indent=1, default=str))
        (out / 'gpu_check.txt').write_text(self.result['table'] + '\n')
        with tarfile.open(out / 'gpu_check_logs.tar.gz', 'w:gz') as tar:
            for path in sorted(self.work.rglob('*')):
                keep = path.parent in (self.logs, self.probes) or path.name.startswith('bench_')
                if keep and path.is_file() and not path.is_symlink():
                    tar.add(path, arcname=str(path.relative_to(self.work)))
            for path in sorted(self.train_out.rglob('*')) if self.train_out.is_dir() else []:
                if path.name in ('summary.csv', 'args.yaml') and path.is_file():
                    tar.add(path, arcname=str(Path('train') / path.relative_to(self.train_out)))
        if not final:
            return self.result
        print()
        print(self.result['table'], flush=True)
        print(f'\nwrote {out}/gpu_check.json, gpu_check.txt, gpu_check_logs.tar.gz in {self.result["seconds"]:.0f} s')
        return self.result
