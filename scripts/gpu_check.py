#!/usr/bin/env python3
"""One-shot GPU check: TRD measured where users run it, in one call of a lent GPU machine (issue 13).

    scripts/gpu_check.sh --prepare --images DIR [--train-script PATH]   # here, with network: fills .gpu_check/
    scripts/gpu_check.sh                                                 # on the GPU machine: < 8 min
    scripts/gpu_check.sh --dry-run [--out DIR]                           # CPU, tiny model, same phases (CI)

``--prepare`` fills the ignored folder ``.gpu_check/`` that travels with the working tree (the device tool's
``carry``): a timm wheel (``pip download``), timm's train.py (from ``--train-script`` / ``$TIMM_TRAIN_SCRIPT``)
and a few hundred real photos as JPEGs of ImageNet size (<= 500 px, under ``--jpeg-mb``). Nothing there is
committed. It prints the device ``run`` call to make.

The check then runs these phases, each as a subprocess with its own time budget (GPU seconds below). A phase
may use what earlier phases left of theirs; one that fails or runs out of time is recorded and the next runs:

  setup          (40)  timm from the carried wheel, the project with ``pip install --no-deps -e .``; versions;
                       the data: symlinks repeating the carried JPEGs into a folder for train.py
  trainpy-loader (70)  timm's train.py through ``torchrun --nproc_per_node 1 -m timm_trd``: ResNet-50, 224 vs 112,
  trainpy-device (70)  P 0.5, AMP, channels_last, 4 epochs of 50 steps of 256 real JPEGs, all cores as workers
  bench-compute  (80)  scripts/bench_trd.py, in-memory generated images: baseline / loader / device
  bench-loader   (80)  the same on the real JPEGs, all cores as workers: data-bound reduced steps
  compile       (120)  bench_trd.py --compile-check: graphs built per size on both paths, as the plugin sets dynamo

Results (``--out``; default ``$OUT`` where the device tool sets it, else outputs/gpu_check): ``gpu_check.json``
(everything: phases, versions, TRD log lines, summary.csv rows, the benchmarks' summaries, compile counts),
``gpu_check.txt`` (the summary table, also printed last) and ``gpu_check_logs.tar.gz`` (every log, the
benchmarks' full JSON, summary.csv and args.yaml). ``--dry-run`` runs every phase on the CPU with a tiny model,
tiny generated JPEGs, two steps and torch.compile's ``eager`` backend, and installs nothing.
"""

import argparse
import csv
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CARRY = ROOT / '.gpu_check'  # ignored (.gitignore); the device tool's carry
TRAVEL_LIMIT_MB = 64
IMAGE_SUFFIXES = ('.jpg', '.jpeg')

# Everything a run depends on, per profile. 'gpu' is the real check; 'dry' the same phases, tiny, on the CPU.
PROFILES = {
    'gpu': dict(
        device='cuda', model='resnet50', img=224, trd=112, prob=0.5, deadline=470, threads=None,
        compile_backend='inductor',
        trainpy=dict(batch=256, steps=50, epochs=4, val_per_class=2, log_interval=25),
        compute=dict(batch=256, steps=40, rounds=3, warmup=1, images=512),
        loader=dict(batch=256, steps=32, rounds=3, warmup=1),
        compile=dict(batch=32, steps=4, rounds=2, images=64, workers=4, modes=['trd']),
        budgets={'setup': 40, 'trainpy-loader': 70, 'trainpy-device': 70, 'bench-compute': 80, 'bench-loader': 80,
                 'compile': 120}),
    'dry': dict(
        device='cpu', model='resnet10t', img=32, trd=16, prob=0.5, deadline=900, threads=1,
        compile_backend='eager',
        trainpy=dict(batch=4, steps=2, epochs=2, val_per_class=1, log_interval=1),
        compute=dict(batch=4, steps=2, rounds=1, warmup=1, images=8),
        loader=dict(batch=4, steps=2, rounds=1, warmup=1),
        compile=dict(batch=4, steps=2, rounds=2, images=8, workers=1, modes=['trd']),
        budgets={'setup': 120, 'trainpy-loader': 150, 'trainpy-device': 150, 'bench-compute': 120,
                 'bench-loader': 120, 'compile': 120}),
}
PHASES = tuple(PROFILES['gpu']['budgets'])


# -- preparation (here, with network) --------------------------------------------------------------
def human_mb(n):
    return f'{n / 2 ** 20:.1f} MiB'


def list_images(src: Path):
    """{class name: [image paths]} from a folder with class subfolders, or a flat folder (then one class)."""
    classes = {}
    for path in sorted(src.rglob('*')):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            classes.setdefault(path.parent.name if path.parent != src else 'c0', []).append(path)
    return classes


def copy_jpegs(src: Path, dest: Path, count: int, budget_mb: float, max_side: int = 500):
    """Up to ``count`` photos, round-robin over the classes, within ``budget_mb``: copied as they are where
    their longer side is at most ``max_side`` (ImageNet's usual size), else resized to it (JPEG quality 90)."""
    from PIL import Image
    classes = list_images(src)
    if not classes:
        sys.exit(f'gpu_check: no .jpg/.jpeg files under {src}')
    if dest.exists():
        shutil.rmtree(dest)
    queues = {name: list(paths) for name, paths in classes.items()}
    written, total = 0, 0
    while written < count and any(queues.values()):
        for name, queue in queues.items():
            if not queue or written >= count:
                continue
            path = queue.pop(0)
            out = dest / 'train' / name / (path.stem + '.JPEG')
            out.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(path) as image:
                if max(image.size) > max_side:
                    scale = max_side / max(image.size)
                    image = image.convert('RGB').resize(
                        (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS)
                    image.save(out, quality=90)
                else:
                    shutil.copyfile(path, out)
            size = out.stat().st_size
            if total + size > budget_mb * 2 ** 20:
                out.unlink()
                return written, total
            written, total = written + 1, total + size
    return written, total


def travelling_bytes():
    """What the device tool sends: tracked and untracked-not-ignored files, plus the carried folder."""
    names = subprocess.run(['git', 'ls-files', '-z', '-co', '--exclude-standard'], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split('\0')
    tree = sum((ROOT / n).stat().st_size for n in names if n and (ROOT / n).is_file())
    carried = sum(p.stat().st_size for p in CARRY.rglob('*') if p.is_file() and not p.is_symlink())
    return tree, carried


def device_call(timeout_s=540):
    return dict(command='bash scripts/gpu_check.sh', carry=['.gpu_check'], timeout_s=timeout_s)


def prepare(args):
    import timm
    version = args.timm_version or timm.__version__
    if tuple(int(x) for x in re.findall(r'\d+', version)[:3]) < (1, 0, 29):
        sys.exit(f'gpu_check: the loader path needs timm >= 1.0.29; pass --timm-version (installed: {version})')
    train_script = args.train_script or os.environ.get('TIMM_TRAIN_SCRIPT')
    if not train_script or not Path(train_script).is_file():
        sys.exit("gpu_check: --prepare needs timm's train.py: --train-script PATH or $TIMM_TRAIN_SCRIPT")
    if not args.images or not Path(args.images).is_dir():
        sys.exit('gpu_check: --prepare needs --images DIR, a folder of real photos (class subfolders or flat)')
    CARRY.mkdir(exist_ok=True)
    wheels = CARRY / 'wheels'
    shutil.rmtree(wheels, ignore_errors=True)
    subprocess.run([sys.executable, '-m', 'pip', 'download', '-q', '--no-deps', '--only-binary=:all:',
                    f'timm=={version}', '-d', str(wheels)], check=True)
    wheel = next(wheels.glob('timm-*.whl'))
    text = Path(train_script).read_text()
    for seam in ('def main(', 'def train_one_epoch(', 'create_loader'):
        if seam not in text:
            sys.exit(f'gpu_check: {train_script} has no {seam!r}: is it timm\'s train.py?')
    shutil.copyfile(train_script, CARRY / 'train.py')
    count, jpeg_bytes = copy_jpegs(Path(args.images), CARRY / 'jpeg', args.jpeg_count, args.jpeg_mb)
    tree, carried = travelling_bytes()
    manifest = dict(timm=version, wheel=wheel.name, train_script=str(train_script), images=str(args.images),
                    jpegs=count, jpeg_bytes=jpeg_bytes, carried_bytes=carried, tree_bytes=tree,
                    prepared=time.strftime('%Y-%m-%d %H:%M:%S'), python=platform.python_version())
    (CARRY / 'manifest.json').write_text(json.dumps(manifest, indent=1))
    print(f'gpu_check: prepared {CARRY.relative_to(ROOT)}/: {wheel.name}, train.py from {train_script}, '
          f'{count} JPEGs ({human_mb(jpeg_bytes)}) from {args.images}')
    print(f'  travels: working tree {human_mb(tree)} + .gpu_check {human_mb(carried)} = {human_mb(tree + carried)} '
          f'(limit {TRAVEL_LIMIT_MB} MiB)')
    if tree + carried > TRAVEL_LIMIT_MB * 2 ** 20:
        sys.exit(f'gpu_check: over the {TRAVEL_LIMIT_MB} MiB travel limit: lower --jpeg-mb')
    call = device_call()
    print('  on a session lent a GPU, make this device call (it prints the summary table last):')
    print(f'    run(command={call["command"]!r}, carry={call["carry"]!r}, timeout_s={call["timeout_s"]})')


# -- the check's child steps (run in a subprocess, after the install) --------------------------------
def setup_child(work: Path, profile: str, jpeg_src: str):
    """Versions, and the data folders. Prints one JSON line."""
    import torch
    import timm
    import timm_trd
    from timm_trd.sampler import loader_path_unavailable
    p = PROFILES[profile]
    info = dict(python=platform.python_version(), torch=torch.__version__, timm=timm.__version__,
                timm_file=timm.__file__, timm_trd_file=timm_trd.__file__, cpus=os.cpu_count(),
                cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
                nccl_available=torch.distributed.is_nccl_available(), loader_path_unavailable=loader_path_unavailable())
    if torch.cuda.is_available():
        info['gpu'] = torch.cuda.get_device_name()
    if jpeg_src == 'none':  # nothing carried: versions only; the phases that need the photos are skipped
        print('SETUP ' + json.dumps(info))
        return
    if jpeg_src:
        jpegs = Path(jpeg_src)
    else:  # dry run: small generated JPEGs stand in for the carried photos
        from timm_trd.toy_data import CLASSES, draw_sample
        import numpy as np
        jpegs, rng = work / 'jpeg', np.random.default_rng(0)
        for shape in CLASSES:
            (jpegs / 'train' / shape).mkdir(parents=True, exist_ok=True)
            for i in range(4):
                draw_sample(shape, 2 * p['img'], rng).save(jpegs / 'train' / shape / f'{shape}_{i}.JPEG', quality=90)
    classes = list_images(jpegs / 'train' if (jpegs / 'train').is_dir() else jpegs)
    files = [(name, path) for name, paths in sorted(classes.items()) for path in paths]
    # train.py reads a folder: repeat the photos by symlinks to fill steps x batch images per epoch
    t = p['trainpy']
    folder = work / 'trainpy'
    shutil.rmtree(folder, ignore_errors=True)
    for i in range(t['steps'] * t['batch']):
        name, path = files[i % len(files)]
        link = folder / 'train' / name / f'{i:06d}{path.suffix}'
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path.resolve())
    for name, paths in classes.items():
        for path in paths[:t['val_per_class']]:
            link = folder / 'val' / name / path.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path.resolve())
    info.update(jpeg_folder=str(jpegs), jpegs=len(files), jpeg_bytes=sum(f.stat().st_size for _, f in files),
                classes=len(classes), trainpy_folder=str(folder))
    print('SETUP ' + json.dumps(info))


# -- running phases ----------------------------------------------------------------------------------
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


class Check:
    def __init__(self, args):
        self.args = args
        self.profile = 'dry' if args.dry_run else 'gpu'
        self.p = PROFILES[self.profile]
        self.budgets = dict(self.p['budgets'])
        self.deadline_s = args.deadline or self.p['deadline']
        self.start = time.monotonic()
        self.work = Path(args.work).resolve()
        self.logs = self.work / 'logs'
        shutil.rmtree(self.work, ignore_errors=True)
        self.logs.mkdir(parents=True)
        self.env = {**os.environ, 'PYTHONUNBUFFERED': '1'}
        if args.dry_run:
            self.env['OMP_NUM_THREADS'] = '1'
        self.workers = args.workers or (1 if args.dry_run else os.cpu_count() or 1)
        self.train_script = args.train_script or (str(CARRY / 'train.py') if (CARRY / 'train.py').is_file() else
                                                  os.environ.get('TIMM_TRAIN_SCRIPT'))
        self.phases = [ph for ph in PHASES if ph in args.phases]
        self.result = dict(mode='dry-run' if args.dry_run else 'gpu', profile=self.p, workers=self.workers,
                           deadline_s=self.deadline_s, phases={}, started=time.strftime('%Y-%m-%d %H:%M:%S'),
                           host=platform.node())
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
        self.result['phases'][name] = entry
        self.say(f'{name}: {entry["status"]}' + (f' in {entry["seconds"]:.0f} s' if 'seconds' in entry else '')
                 + (f' ({entry["reason"]})' if entry.get('reason') else ''))
        if entry['status'] in ('failed', 'timeout') and log.exists():
            print(tail(log), flush=True)

    # -- setup ---------------------------------------------------------------------------------------
    def do_setup(self, timeout, log):
        end = time.monotonic() + timeout
        py = sys.executable
        steps, notes = {}, []
        if not self.args.dry_run:
            if shutil.which('nvidia-smi'):
                steps['nvidia-smi'] = run_logged(['nvidia-smi', '-L'], log, min(15, end - time.monotonic()), self.env)
            wheels = sorted((CARRY / 'wheels').glob('timm-*.whl'))
            if wheels:
                site = self.work / 'site'
                r = run_logged([py, '-m', 'pip', 'install', '-q', '--no-index', '--no-deps', '--no-compile',
                                '--no-cache-dir', '--target', site, wheels[-1]], log, end - time.monotonic(), self.env)
                steps['timm-wheel'] = r
                if r['status'] == 'ok':
                    self.env['PYTHONPATH'] = os.pathsep.join(
                        filter(None, [str(site), self.env.get('PYTHONPATH')]))
                    notes.append(f'timm from {wheels[-1].name}')
            else:
                notes.append('no carried timm wheel: the installed timm')
            r = run_logged([py, '-m', 'pip', 'install', '-q', '--no-index', '--no-deps', '--no-build-isolation',
                            '-e', ROOT], log, end - time.monotonic(), self.env)
            steps['project'] = r
            if r['status'] != 'ok':  # no setuptools to build with: import it from the checkout instead
                self.env['PYTHONPATH'] = os.pathsep.join(filter(None, [self.env.get('PYTHONPATH'), str(ROOT)]))
                notes.append('timm_trd from PYTHONPATH (pip install -e failed)')
        jpeg_src = '' if self.args.dry_run else str(CARRY / 'jpeg')
        if not self.args.dry_run and not (CARRY / 'jpeg').is_dir():
            jpeg_src = 'none'
            notes.append('no .gpu_check/jpeg: run scripts/gpu_check.sh --prepare first, and carry .gpu_check')
        r = run_logged([py, __file__, '--setup-child', '--work', self.work, '--profile', self.profile,
                        '--jpeg-src', jpeg_src], log, end - time.monotonic(), self.env)
        steps['probe-and-data'] = r
        for line in log.read_text(errors='replace').splitlines():
            if line.startswith('SETUP '):
                self.setup = json.loads(line[6:])
        self.result['environment'] = {**self.setup, 'notes': notes, 'train_script': self.train_script}
        status = 'ok' if all(s['status'] == 'ok' for s in steps.values()) and jpeg_src != 'none' else (
            'failed' if r['status'] != 'ok' else 'partial')
        return dict(status=status, seconds=sum(s['seconds'] for s in steps.values()),
                    steps={k: v['status'] for k, v in steps.items()}, reason='; '.join(notes) or None)

    # -- train.py ------------------------------------------------------------------------------------
    def do_trainpy(self, path):
        def fn(timeout, log):
            if not self.train_script:
                return dict(status='skipped', reason="no train.py: run --prepare, or set $TIMM_TRAIN_SCRIPT")
            if not self.setup.get('trainpy_folder'):
                return dict(status='skipped', reason='setup made no data')
            if path == 'loader' and self.setup.get('loader_path_unavailable'):
                return dict(status='skipped', reason=self.setup['loader_path_unavailable'])
            p, t = self.p, self.p['trainpy']
            out = self.work / 'train'
            cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '1',
                   '-m', 'timm_trd', '--train-script', self.train_script, '--data-dir', self.setup['trainpy_folder'],
                   '--model', p['model'], '--num-classes', str(self.setup['classes']), '--img-size', str(p['img']),
                   '--trd-size', str(p['trd']), '--trd-prob', str(p['prob']), '--trd-mode', path, '--amp',
                   '--channels-last', '-b', str(t['batch']), '--workers', str(self.workers), '--epochs',
                   str(t['epochs']), '--warmup-epochs', '0', '--seed', '0', '--log-interval', str(t['log_interval']),
                   '--checkpoint-hist', '1', '--output', out, '--experiment', path, '--device', p['device']]
            entry = run_logged(cmd, log, timeout, self.env)
            entry.update(parse_trainpy(log.read_text(errors='replace'), out / path, t['batch'], p['prob']))
            if entry['status'] == 'ok' and len(entry.get('summary', [])) != t['epochs']:
                entry.update(status='failed', reason=f"summary.csv has {len(entry.get('summary', []))} rows, "
                                                     f"expected {t['epochs']}")
            return entry
        return fn

    # -- benchmark -----------------------------------------------------------------------------------
    def bench_cmd(self, out, batch, steps, rounds, workers):
        p = self.p
        cmd = [sys.executable, ROOT / 'scripts' / 'bench_trd.py', '--model', p['model'], '--img-size', str(p['img']),
               '--trd-size', str(p['trd']), '--trd-prob', str(p['prob']), '-b', str(batch), '--steps', str(steps),
               '--rounds', str(rounds), '--workers', str(workers), '--amp', '--channels-last', '--device', p['device'],
               '--data-cache', self.work / 'data', '--out', out, '--compile-backend', p['compile_backend']]
        if p['threads']:
            cmd += ['--threads', str(p['threads'])]
        return cmd

    def bench_configs(self):
        return ['baseline'] + ([] if self.setup.get('loader_path_unavailable') else ['loader']) + ['device']

    def do_bench(self, kind):
        def fn(timeout, log):
            b = self.p[kind]
            out = self.work / f'bench_{kind}.json'
            cmd = self.bench_cmd(out, b['batch'], b['steps'], b['rounds'], self.workers)
            cmd += ['--warmup-rounds', str(b['warmup']), '--configs', *self.bench_configs()]
            if kind == 'compute':
                cmd += ['--in-memory', '--data', 'generated', '--data-images', str(b['images'])]
            else:
                if not self.setup.get('jpeg_folder'):
                    return dict(status='skipped', reason='setup made no JPEG folder')
                cmd += ['--data', self.setup['jpeg_folder'], '--data-images', str(self.setup['jpegs'])]
            entry = run_logged(cmd, log, timeout, self.env)
            if out.exists():
                entry.update(bench_summary(json.loads(out.read_text())))
            return entry
        return fn

    def do_compile(self, timeout, log):
        c = self.p['compile']
        out = self.work / 'bench_compile.json'
        cmd = self.bench_cmd(out, c['batch'], c['steps'], c['rounds'], min(c['workers'], self.workers))
        cmd += ['--compile-check', '--compile-check-modes', *c['modes'], '--in-memory', '--data', 'generated',
                '--data-images', str(c['images'])]
        entry = run_logged(cmd, log, timeout, self.env)
        if out.exists():
            entry['compile_check'] = json.loads(out.read_text()).get('compile_check', [])
        if entry['status'] == 'ok' and not all(r['holds'] for r in entry.get('compile_check', [])):
            entry['reason'] = 'more graphs than sizes, or graphs built after epoch 0'
        return entry

    # -- all -----------------------------------------------------------------------------------------
    def run(self):
        self.say(f"{self.result['mode']}: phases {', '.join(self.phases)}; deadline {self.deadline_s:.0f} s; "
                 f"results to {self.args.out}")
        for name, fn in (('setup', self.do_setup), ('trainpy-loader', self.do_trainpy('loader')),
                         ('trainpy-device', self.do_trainpy('device')), ('bench-compute', self.do_bench('compute')),
                         ('bench-loader', self.do_bench('loader')), ('compile', self.do_compile)):
            if name in self.phases:
                self.phase(name, fn)
                self.write(final=False)  # what is done so far survives if the whole command is cut off
        return self.write()

    def write(self, final=True):
        self.result['seconds'] = round(time.monotonic() - self.start, 1)
        self.result['finished'] = final
        try:
            self.result['table'] = summary_table(self.result)
        except Exception as e:  # noqa: BLE001 - the JSON must still be written
            self.result['table'] = f'(no table: {type(e).__name__}: {e})'
        out = Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / 'gpu_check.json').write_text(json.dumps(self.result, indent=1, default=str))
        (out / 'gpu_check.txt').write_text(self.result['table'] + '\n')
        with tarfile.open(out / 'gpu_check_logs.tar.gz', 'w:gz') as tar:
            for path in sorted(self.work.rglob('*')):
                keep = path.parent == self.logs or path.name.startswith('bench_') or (
                    path.name in ('summary.csv', 'args.yaml') and (self.work / 'train') in path.parents)
                if keep and path.is_file() and not path.is_symlink():
                    tar.add(path, arcname=str(path.relative_to(self.work)))
        if not final:
            return self.result
        print()
        print(self.result['table'], flush=True)
        print(f'\nwrote {out}/gpu_check.json, gpu_check.txt, gpu_check_logs.tar.gz in {self.result["seconds"]:.0f} s')
        return self.result


# -- reading results -------------------------------------------------------------------------------
EPOCH_LINE = re.compile(r'TRD: epoch (\d+): (\d+)/(\d+) batches at (\d+)x(\d+) \((\w+) path\), compute ([\d.]+)')
RATE = re.compile(r'step rate ([\d.na]+) img/s full, ([\d.na]+) img/s reduced')
WAIT = re.compile(r'data wait\D*?([\d.]+|nan) ms\W+(?:full\W+)?([\d.]+|nan) ms')  # full, then reduced


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
    summary = []
    if (out / 'summary.csv').is_file():
        with open(out / 'summary.csv') as f:
            summary = list(csv.DictReader(f))
    result = dict(trd_lines=lines, epochs=epochs, summary=summary,
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


def fmt(value, spec='.0f'):
    if value is None or (isinstance(value, float) and value != value):
        return '-'
    return format(value, spec)


def summary_table(result):
    p, phases = result['profile'], result['phases']
    head = ('phase', 'status', 's', 'config', 'reduced', f"step ms {p['img']} / {p['trd']}", 'time ratio', 'ideal',
            'ratio/ideal', '(paired)', 'data ms/reduced', 'notes')
    rows = [head]

    def row(phase, config='', reduced='', steps='', ratio='', ideal='', over='', paired='', data='', notes='',
            first=True):
        e = phases.get(phase, {})
        status = e.get('status', 'not run') if first else ''
        seconds = fmt(e.get('seconds')) if first and 'seconds' in e else ''
        rows.append((phase if first else '', status, seconds, config, reduced, steps, ratio, ideal, over, paired,
                     data, notes))

    env = result.get('environment', {})
    setup = phases.get('setup', {})
    row('setup', notes=', '.join(filter(None, [
        f"torch {env['torch']}" if env.get('torch') else '', f"timm {env['timm']}" if env.get('timm') else '',
        env.get('gpu') or ('no GPU' if env else ''), f"{env['cpus']} CPUs, workers {result['workers']}"
        if env.get('cpus') else '', f"{env['jpegs']} JPEGs ({env['jpeg_bytes'] / 2 ** 20:.0f} MiB)"
        if env.get('jpegs') else '', setup.get('reason') or ''])))
    ideal_px = 1 - p['prob'] * (1 - (p['trd'] / p['img']) ** 2)
    for path in ('loader', 'device'):
        name = f'trainpy-{path}'
        e = phases.get(name, {})
        last = e.get('last_epoch', {})
        notes = []
        if e.get('summary'):
            notes.append(f"{len(e['summary'])} epochs, summary.csv compute "
                         f"{fmt(float(e['summary'][-1].get('train_trd_compute', 'nan')), '.3f')}")
        if e.get('status') in ('ok', 'failed', 'timeout'):
            notes.append('distributed' if e.get('distributed') else 'single process (WORLD_SIZE 1: no process group)')
        if e.get('reason'):
            notes.append(e['reason'])
        row(name, config=path, reduced=f"{last['reduced']}/{last['batches']}" if last else '',
            steps=f"{fmt(e.get('step_ms_full'))} / {fmt(e.get('step_ms_reduced'))}" if last else '',
            ideal=fmt(ideal_px, '.3f') if last else '',
            paired=fmt(e['ratio_paired'] / ideal_px, '.3f') if e.get('ratio_paired') else '',
            data=fmt(last.get('data_ms_reduced'), '.1f') if last else '', notes='; '.join(notes))
    for kind in ('compute', 'loader'):
        name = f'bench-{kind}'
        e = phases.get(name, {})
        configs = e.get('configs', {})
        if not configs:
            row(name, notes=e.get('reason') or '')
        for i, (config, c) in enumerate(configs.items()):
            ratio = fmt(c['ratio'], '.3f') + (f" ± {c['ratio_se']:.3f}" if c.get('ratio_se') else '')
            row(name, config=config, reduced=f"{c['reduced']}/{c['steps']}",
                steps=f"{fmt(c['step_ms_full'])} / {fmt(c['step_ms_reduced'])}", ratio=ratio,
                ideal=fmt(c['ideal'], '.3f'), over=fmt(c['ratio_over_ideal'], '.3f'),
                paired=fmt(c['ratio_paired_over_ideal'], '.3f'), data=fmt(c['data_ms_per_reduced'], '.1f'),
                notes=(f"peak MB {fmt(c['peak_mb_full'])} / {fmt(c['peak_mb_reduced'])}"
                       if c.get('peak_mb_full') else ''), first=i == 0)
    e = phases.get('compile', {})
    checks = e.get('compile_check', [])
    if not checks:
        row('compile', notes=e.get('reason') or '')
    for i, c in enumerate(checks):
        kinds = c.get('graph_kinds', {})
        row('compile', config=f"{c['path']}, {c.get('mode', 'dynamo default')}",
            notes=f"{c['graphs']} graphs ({kinds.get('static', '?')} static, {kinds.get('dynamic', '?')} dynamic) "
                  f"for {c['distinct_sizes']} sizes, per epoch "
                  f"{[x['graphs'] for x in c['epochs']]}, {'holds' if c['holds'] else 'DOES NOT HOLD'}", first=i == 0)
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
    lines = ['| ' + ' | '.join(str(c).ljust(w) for c, w in zip(r, widths)) + ' |' for r in rows]
    lines.insert(1, '|' + '|'.join('-' * (w + 2) for w in widths) + '|')
    title = (f"TRD GPU check ({result['mode']}): {p['model']}, {p['img']} vs {p['trd']} px, P {p['prob']}, AMP, "
             f"channels_last, {p['device']}; ideal time ratio {ideal_px:.3f}; {result.get('seconds', 0):.0f} s")
    return title + '\n' + '\n'.join(lines)


# -- command line ----------------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument('--prepare', action='store_true', help='fill .gpu_check/ here (needs pip to reach PyPI)')
    ap.add_argument('--images', default=os.environ.get('GPU_CHECK_IMAGES'),
                    help='(--prepare) a folder of real photos, e.g. ImageNet train/ ($GPU_CHECK_IMAGES)')
    ap.add_argument('--jpeg-count', type=int, default=400, help='(--prepare) photos to carry at most')
    ap.add_argument('--jpeg-mb', type=float, default=40, help='(--prepare) their size at most, MiB')
    ap.add_argument('--timm-version', default=None, help='(--prepare) the timm wheel (default: the installed timm)')
    ap.add_argument('--train-script', default=None,
                    help="timm's train.py (default: .gpu_check/train.py, else $TIMM_TRAIN_SCRIPT)")
    ap.add_argument('--dry-run', action='store_true', help='CPU, tiny model, a few steps: the same phases')
    ap.add_argument('--phases', nargs='+', default=list(PHASES), choices=PHASES, help='run only these phases')
    ap.add_argument('--out', default=os.environ.get('OUT') or str(ROOT / 'outputs' / 'gpu_check'),
                    help='results folder (default: $OUT, else outputs/gpu_check)')
    ap.add_argument('--work', default=None, help='scratch folder (default: outputs/gpu_check_work, emptied)')
    ap.add_argument('--workers', type=int, default=None, help='loader workers (default: all CPU cores; dry run 1)')
    ap.add_argument('--deadline', type=float, default=None, help='seconds for all phases (default: 470; dry 900)')
    ap.add_argument('--setup-child', action='store_true', help=argparse.SUPPRESS)
    ap.add_argument('--profile', default='gpu', choices=PROFILES, help=argparse.SUPPRESS)
    ap.add_argument('--jpeg-src', default='', help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.work is None:
        args.work = str(ROOT / 'outputs' / 'gpu_check_work')
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.setup_child:
        return setup_child(Path(args.work), args.profile, args.jpeg_src)
    if args.prepare:
        return prepare(args)
    return Check(args).run()


if __name__ == '__main__':
    main()
