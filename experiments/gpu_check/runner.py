#!/usr/bin/env python3
"""The GPU check: TRD measured where users run it, in two calls of a lent GPU machine (issues 13, 20).

    experiments/gpu_check.sh --prepare --images DIR [--train-script PATH] [--imagenette TAR]   # here: .gpu_check/
    experiments/gpu_check.sh --call 1          # on the GPU: accuracy (~6.5 min)
    experiments/gpu_check.sh --call 2          # on the GPU: multi-process, torch.compile, speed (~5 min)
    experiments/gpu_check.sh --call bench      # bench_trd.py's phases, cut from the two calls (~5 min)
    experiments/gpu_check.sh --dry-run --call 1|2|bench|all   # the same phases on the CPU, tiny (tests/test_gpu_check.py)

Call 1, accuracy. ResNet-50 from scratch on the carried Imagenette subset (160 px) through timm's train.py
with the plugin, three arms with the same recipe and epochs: ``acc-baseline`` (160 px), ``acc-trd``
(``--trd-prob 0.5 --trd-size 80 --trd-bn-recal 8``) and ``acc-sizes`` (timm's own ``--train-img-sizes 160 80
--train-size-probs 0.5 0.5``); AMP, channels_last, every CPU core a loader worker. Reported: top-1 per epoch,
wall time per epoch, the time ratio to the baseline, and the CUDA allocator's peaks and retries per arm,
against the bound :data:`MEMORY_BOUND`.

Call 2, the paths that need more than one process or a GPU. ``ddp`` and ``ddp-syncbn``: two processes on the
one GPU (``torchrun --nproc_per_node 2``; NCCL refuses two ranks on one device, so the group is gloo, whose
collectives take CUDA tensors through host memory, see experiments/gpu_check/train_child.py) with TRD,
``--trd-bn-recal`` (averaged with timm's ``distribute_bn``), ``--model-ema``, train.py's ``--dist-bn reduce``,
and ``--sync-bn`` in the second; checked: the collectives on CUDA tensors, the ranks serving the same sizes,
the recalibration averaged over both, every rank ending each epoch with bit-identical weights and buffers (model
and EMA). ``compile-default`` and ``compile-reduce-overhead``: train.py's ``--torchcompile`` (ResNet-18, to fit
the time) with TRD: graphs built per epoch in training and validation, recompiles and their guards, compile
time. ``trainpy-baseline`` / ``-loader`` / ``-device``: ResNet-50 224 px vs 112 px on the carried photos,
wall time per epoch against the full-size run, and the allocator's peaks at 224 px.

Each phase runs as a subprocess with its own time budget (GPU seconds, :data:`PROFILES`); it may use what
earlier phases left, never the later phases' budgets; one that fails or runs out of time is recorded and the
next one runs. The results folder (``--out``, default ``$OUT``, else outputs/gpu_check) gets ``gpu_check.json``
(everything), ``gpu_check.txt`` (the tables, also printed last) and ``gpu_check_logs.tar.gz`` (the logs, the
probes' JSON lines, summary.csv and args.yaml of every train.py run, the benchmarks' JSON) after every phase.

Time plan (the device lends 900 s to a task, all calls, the machine's start and idle time counted):
start <= 120 s, call 1 <= 390 s (setup 25 + 3 arms x 120), call 2 <= 295 s (setup 25, ddp 45, ddp-syncbn 40,
compile 50 + 40, speed 3 x 30), so 805 s plus the transfers, if call 2 is made within the 30 s the machine stays
warm. One arm's 120 s: ~25 s start (imports, CUDA, 16 workers, cuDNN autotuning), then 30 epochs of 27 steps of
256 images at 160 px. ResNet-50 trains at ~2470 img/s on an A100 at 224 px with AMP; an H200 is no slower, and
160 px costs (160/224)^2 = 0.51 of the FLOPs, so >= ~4000 img/s: 1.7 s of GPU per epoch, plus ~0.8 s for
validation (1500 images), the checkpoint (on /dev/shm) and the loader's restart, 2.5 s per epoch, 75 s for 30.
The loader keeps up: the carried 160 px JPEGs cost 1.03 ms of one core each with train.py's augmentation
(0.68 ms at 80 px; CPU time, measured here), so 15 workers give ~14,500 img/s. The speed phases of issue 13
(bench-compute, bench-loader, bench-compile: 280 s) and its 4-epoch train.py runs were cut to fit: ``--call
bench`` still runs the first three, and the train.py speed runs are 2 epochs of 16 steps.
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
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the check's own modules, also when imported by path
from prepare import (CARRY, DEFAULT_IMAGENETTE, ROOT, list_images, prepare,  # noqa: E402
                               reencode_imagenette)
from train_child import read_probe  # noqa: E402

# Alternating two sizes must not raise the CUDA caching allocator's peak reservation above the full-size run's by
# more than this share. A reduced batch's working set is (80/160)^2 = 1/4 of a full one's, so keeping both side
# by side would be +25%; within 10% the allocator serves the small batches from the blocks the full ones freed.
MEMORY_BOUND = 0.10

_GPU_BUDGETS = {'setup': 25, 'acc-baseline': 120, 'acc-trd': 120, 'acc-sizes': 120, 'ddp': 45, 'ddp-syncbn': 40,
                'compile-default': 50, 'compile-reduce-overhead': 40, 'trainpy-baseline': 30, 'trainpy-loader': 30,
                'trainpy-device': 30, 'bench-compute': 80, 'bench-loader': 80, 'bench-compile': 120}
_DRY_BUDGETS = {'setup': 150, 'acc-baseline': 200, 'acc-trd': 200, 'acc-sizes': 200, 'ddp': 300, 'ddp-syncbn': 300,
                'compile-default': 200, 'compile-reduce-overhead': 200, 'trainpy-baseline': 150,
                'trainpy-loader': 150, 'trainpy-device': 150, 'bench-compute': 120, 'bench-loader': 120,
                'bench-compile': 120}

# Everything a run depends on, per profile. 'gpu' is the real check; 'dry' the same phases, tiny, on the CPU.
PROFILES = {
    'gpu': dict(
        device='cuda', amp_dtype=None, threads=None, compile_backend='inductor',
        acc=dict(model='resnet50', img=160, trd=80, prob=0.5, batch=256, epochs=30, lr=0.2, weight_decay=5e-5,
                 warmup=2, bn_recal=8, log_interval=50),
        ddp=dict(model='resnet50', img=224, trd=112, prob=0.5, batch=32, steps=4, epochs=2, world=2, bn_recal=2,
                 val=64, log_interval=2),
        compile=dict(model='resnet18', img=224, trd=112, prob=0.5, batch=64, steps=4, epochs=2, val=64,
                     log_interval=2),
        speed=dict(model='resnet50', img=224, trd=112, prob=0.5, batch=256, steps=16, epochs=2, val_per_class=1,
                   log_interval=8),
        bench=dict(compute=dict(batch=256, steps=40, rounds=3, warmup=1, images=512),
                   loader=dict(batch=256, steps=32, rounds=3, warmup=1),
                   compile=dict(batch=32, steps=4, rounds=2, images=64, workers=4, modes=['trd'])),
        budgets=_GPU_BUDGETS),
    'dry': dict(
        device='cpu', amp_dtype='bfloat16', threads=1, compile_backend='eager',  # CPU float16 autocast is ~20x slower
        acc=dict(model='resnet10t', img=32, trd=16, prob=0.5, batch=4, epochs=2, lr=0.05, weight_decay=5e-5,
                 warmup=1, bn_recal=1, log_interval=1),
        acc_data=dict(source_size=48, train=3, val=2, train_per_class=2, val_per_class=2, quality=90),
        ddp=dict(model='resnet10t', img=32, trd=16, prob=0.5, batch=2, steps=2, epochs=2, world=2, bn_recal=1,
                 val=4, log_interval=1),
        compile=dict(model='resnet10t', img=32, trd=16, prob=0.5, batch=4, steps=2, epochs=2, val=4, log_interval=1),
        speed=dict(model='resnet10t', img=32, trd=16, prob=0.5, batch=4, steps=2, epochs=2, val_per_class=1,
                   log_interval=1),
        bench=dict(compute=dict(batch=4, steps=2, rounds=1, warmup=1, images=8),
                   loader=dict(batch=4, steps=2, rounds=1, warmup=1),
                   compile=dict(batch=4, steps=2, rounds=2, images=8, workers=1, modes=['trd'])),
        budgets=_DRY_BUDGETS),
}
PHASES = tuple(_GPU_BUDGETS)
ACC_ARMS = ('acc-baseline', 'acc-trd', 'acc-sizes')
SPEED_PHASES = ('trainpy-baseline', 'trainpy-loader', 'trainpy-device')
CALL_PHASES = {
    '1': ('setup', *ACC_ARMS),
    '2': ('setup', 'ddp', 'ddp-syncbn', 'compile-default', 'compile-reduce-overhead', *SPEED_PHASES),
    'bench': ('setup', 'bench-compute', 'bench-loader', 'bench-compile'),
}
CALL_PHASES['all'] = PHASES
# What each device call carries (paths under the ignored .gpu_check/, made by --prepare), and its hard stop:
# the phases end by the call's deadline (the sum of its budgets); timeout_s only stops a hung command.
DEVICE_CALLS = {
    '1': dict(carry=['.gpu_check/wheels', '.gpu_check/train.py', '.gpu_check/imagenette'], timeout_s=420),
    '2': dict(carry=['.gpu_check/wheels', '.gpu_check/train.py', '.gpu_check/jpeg'], timeout_s=330),
}
NEEDS_TRAIN_SCRIPT = (*ACC_ARMS, 'ddp', 'ddp-syncbn', 'compile-default', 'compile-reduce-overhead', *SPEED_PHASES)
NEEDS_PHOTOS = ('ddp', 'ddp-syncbn', 'compile-default', 'compile-reduce-overhead', *SPEED_PHASES, 'bench-loader')


def device_call(call: str) -> dict:
    c = DEVICE_CALLS[call]
    return dict(command=f'bash experiments/gpu_check.sh --call {call}', carry=c['carry'], timeout_s=c['timeout_s'])


def run_call_text(call: str) -> str:
    c = device_call(call)
    return f"run(command={c['command']!r}, carry={c['carry']!r}, timeout_s={c['timeout_s']})"


# -- the check's setup child (run in a subprocess, after the install) --------------------------------
def round_robin(classes: dict):
    """[(class, path)], one of each class in turn."""
    queues = [(name, list(paths)) for name, paths in sorted(classes.items())]
    out = []
    while any(q for _, q in queues):
        for name, q in queues:
            if q:
                out.append((name, q.pop(0)))
    return out


def link_folder(folder: Path, files, train_count: int, val_count: int = 0, val_per_class: int = 0):
    """A train/ (and val/) folder of symlinks to ``files`` ([(class, path)], round-robin): ``val_count`` files
    (or ``val_per_class`` of each class) for val/, and ``train_count`` links repeating the files of those same
    classes for train/. Returns the number of classes."""
    shutil.rmtree(folder, ignore_errors=True)
    if val_per_class:
        seen, val = {}, []
        for name, path in files:
            if seen.get(name, 0) < val_per_class:
                seen[name] = seen.get(name, 0) + 1
                val.append((name, path))
    else:
        val = files[:val_count]
    classes = {name for name, _ in val} if val else {name for name, _ in files}
    pool = [(name, path) for name, path in files if name in classes]
    for i in range(train_count):
        name, path = pool[i % len(pool)]
        link = folder / 'train' / name / f'{i:06d}{path.suffix}'
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path.resolve())
    for name, path in val:
        link = folder / 'val' / name / path.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path.resolve())
    return len(classes)


def generated_imagenette(work: Path, d: dict) -> Path:
    """Dry run: a small archive in Imagenette's layout (shapes on textures), for --prepare's re-encoding."""
    import numpy as np
    from timm_trd.data.toy_data import CLASSES, draw_sample
    src, rng = work / 'imagenette-src' / 'imagenette', np.random.default_rng(1)
    for split in ('train', 'val'):
        for shape in CLASSES:
            (src / split / shape).mkdir(parents=True, exist_ok=True)
            for i in range(d[split]):
                draw_sample(shape, d['source_size'], rng).save(src / split / shape / f'{shape}_{i}.JPEG', quality=95)
    tar_path = work / 'imagenette-src.tar'
    with tarfile.open(tar_path, 'w') as tar:
        tar.add(src, arcname='imagenette')
    return tar_path


def setup_child(work: Path, profile: str, jpeg_src: str, acc_src: str):
    """Versions, and the data folders. Prints one JSON line."""
    import torch
    import timm
    import timm_trd
    from timm_trd.data.sampler import loader_path_unavailable
    p = PROFILES[profile]
    info = dict(python=platform.python_version(), torch=torch.__version__, timm=timm.__version__,
                timm_file=timm.__file__, timm_trd_file=timm_trd.__file__, cpus=os.cpu_count(),
                cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
                nccl_available=torch.distributed.is_nccl_available(), loader_path_unavailable=loader_path_unavailable())
    if torch.cuda.is_available():
        info['gpu'] = torch.cuda.get_device_name()
        info['gpu_memory_gib'] = round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1)
    if acc_src != 'none':
        if acc_src:
            acc = Path(acc_src)
        else:  # dry run: --prepare's re-encoding of a generated archive stands in for the carried copy
            d = p['acc_data']
            acc = work / 'imagenette'
            reencode_imagenette(generated_imagenette(work, d), acc, p['acc']['img'], d['quality'],
                                d['train_per_class'], d['val_per_class'])
        manifest = json.loads((acc / 'manifest.json').read_text()) if (acc / 'manifest.json').is_file() else {}
        train, val = list_images(acc / 'train'), list_images(acc / 'val')
        info.update(acc_folder=str(acc), acc_classes=len(train), acc_train=sum(map(len, train.values())),
                    acc_val=sum(map(len, val.values())), acc_manifest=manifest)
    if jpeg_src != 'none':
        if jpeg_src:
            jpegs = Path(jpeg_src)
        else:  # dry run: small generated JPEGs stand in for the carried photos
            from timm_trd.data.toy_data import CLASSES, draw_sample
            import numpy as np
            jpegs, rng = work / 'jpeg', np.random.default_rng(0)
            for shape in CLASSES:
                (jpegs / 'train' / shape).mkdir(parents=True, exist_ok=True)
                for i in range(4):
                    draw_sample(shape, 2 * p['speed']['img'], rng).save(jpegs / 'train' / shape / f'{shape}_{i}.JPEG',
                                                                        quality=90)
        classes = list_images(jpegs / 'train' if (jpegs / 'train').is_dir() else jpegs)
        files = round_robin(classes)
        s, d, c = p['speed'], p['ddp'], p['compile']
        folders = dict(
            trainpy=(s['steps'] * s['batch'], dict(val_per_class=s['val_per_class'])),
            ddp=(d['world'] * d['batch'] * d['steps'], dict(val_count=d['val'])),
            compile=(c['batch'] * c['steps'], dict(val_count=c['val'])))
        for name, (count, kw) in folders.items():
            info[f'{name}_classes'] = link_folder(work / name, files, count, **kw)
            info[f'{name}_folder'] = str(work / name)
        info.update(jpeg_folder=str(jpegs), jpegs=len(files), jpeg_bytes=sum(f.stat().st_size for _, f in files),
                    classes=len(classes))
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


def train_output_root(work: Path, profile: str) -> Path:
    """Where train.py writes its checkpoints: /dev/shm on the GPU machine (30 ResNet-50 checkpoints of ~200 MB
    each would cost seconds per epoch on disk), else the scratch folder."""
    shm = Path('/dev/shm')
    if profile == 'gpu' and shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 8 * 2 ** 30:
        return shm / 'timm_trd_gpu_check'
    return work / 'train'


class Check:
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
        want_photos = any(ph in NEEDS_PHOTOS for ph in self.phases)
        want_acc = any(ph in ACC_ARMS for ph in self.phases)
        jpeg_src = acc_src = ''  # dry run: the setup child generates both
        if not self.args.dry_run:
            jpeg_src = str(CARRY / 'jpeg') if (CARRY / 'jpeg').is_dir() else 'none'
            acc_src = str(CARRY / 'imagenette') if (CARRY / 'imagenette').is_dir() else 'none'
        jpeg_src, acc_src = (jpeg_src if want_photos else 'none'), (acc_src if want_acc else 'none')
        missing = [f'.gpu_check/{name}' for name, src, want in (('jpeg', jpeg_src, want_photos),
                                                                 ('imagenette', acc_src, want_acc))
                   if want and src == 'none']
        if missing:
            notes.append(f"not carried: {', '.join(missing)} (run experiments/gpu_check.sh --prepare, and carry it)")
        if any(ph in NEEDS_TRAIN_SCRIPT for ph in self.phases) and not self.train_script:
            notes.append("no train.py: the train.py phases are skipped (--prepare, or $TIMM_TRAIN_SCRIPT)")
        r = run_logged([py, __file__, '--setup-child', '--work', self.work, '--profile', self.profile,
                        '--jpeg-src', jpeg_src, '--acc-src', acc_src], log, end - time.monotonic(), self.env)
        steps['probe-and-data'] = r
        for line in log.read_text(errors='replace').splitlines():
            if line.startswith('SETUP '):
                self.setup = json.loads(line[6:])
        self.result['environment'] = {**self.setup, 'notes': notes, 'train_script': self.train_script,
                                      'train_output': str(self.train_out)}
        status = 'ok' if all(s['status'] == 'ok' for s in steps.values()) and not missing else (
            'failed' if r['status'] != 'ok' else 'partial')
        return dict(status=status, seconds=sum(s['seconds'] for s in steps.values()),
                    steps={k: v['status'] for k, v in steps.items()}, reason='; '.join(notes) or None)

    # -- train.py runs ---------------------------------------------------------------------------------
    def skip_reason(self, folder_key):
        if not self.train_script:
            return "no train.py: run --prepare, or set $TIMM_TRAIN_SCRIPT"
        if not self.setup.get(folder_key):
            return f'setup made no data ({folder_key})'
        return None

    def trainpy(self, name, log, timeout, data_dir, num_classes, c, extra, world=1, workers=None, env=None):
        """Run train.py (through experiments/gpu_check/train_child.py) with the common options; returns (entry, probe ranks,
        log text, train.py's output folder)."""
        p = self.p
        probe = self.probes / name
        child = [ROOT / 'experiments' / 'gpu_check' / 'train_child.py', '--probe-out', probe]
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

    def trd_args(self, c):
        return ['--trd-prob', str(c['prob']), '--trd-size', str(c['trd'])]

    # accuracy (call 1)
    def do_acc(self, arm):
        def fn(timeout, log):
            if (reason := self.skip_reason('acc_folder')):
                return dict(status='skipped', reason=reason)
            c = self.p['acc']
            extra = ['--opt', 'sgd', '--lr', str(c['lr']), '--weight-decay', str(c['weight_decay']),
                     '--warmup-epochs', str(c['warmup']), '--sched-on-updates', '--crop-pct', '1.0']
            if arm == 'acc-trd':
                extra += self.trd_args(c) + ['--trd-bn-recal', str(c['bn_recal'])]
            elif arm == 'acc-sizes':
                extra += ['--train-img-sizes', str(c['img']), str(c['trd']),
                          '--train-size-probs', str(1 - c['prob']), str(c['prob'])]
            entry, ranks, text, out = self.trainpy(arm, log, timeout, self.setup['acc_folder'],
                                                   self.setup['acc_classes'], c, extra)
            entry.update(parse_acc(ranks.get(0, []), read_summary(out), text, c))
            if entry['status'] == 'ok' and len(entry['epochs']) != c['epochs']:
                entry.update(status='failed', reason=f"{len(entry['epochs'])} epochs recorded, expected {c['epochs']}")
            return entry
        return fn

    # two processes on one device (call 2)
    def do_ddp(self, variant):
        def fn(timeout, log):
            if (reason := self.skip_reason('ddp_folder')):
                return dict(status='skipped', reason=reason)
            c = self.p['ddp']
            extra = self.trd_args(c) + ['--trd-bn-recal', str(c['bn_recal']), '--model-ema', '--dist-bn', 'reduce',
                                        '--trd-mode', 'loader' if variant == 'ddp' else 'device']
            notes = []
            sync_bn = variant == 'ddp-syncbn'
            if sync_bn and self.p['device'] == 'cpu':
                sync_bn = False
                notes.append("no --sync-bn on the CPU (torch's SyncBatchNorm takes accelerator tensors only)")
            if sync_bn:
                extra.append('--sync-bn')
            workers = max(1, self.workers // c['world'])
            entry, ranks, text, _ = self.trainpy(variant, log, timeout, self.setup['ddp_folder'],
                                                 self.setup['ddp_classes'], c, extra, world=c['world'], workers=workers)
            entry.update(parse_ddp(ranks, text, c, dist_bn=not sync_bn, sync_bn=sync_bn))
            if notes:
                entry['reason'] = '; '.join(notes)
            return entry
        return fn

    # torch.compile through train.py (call 2)
    def do_compile(self, mode):
        def fn(timeout, log):
            if (reason := self.skip_reason('compile_folder')):
                return dict(status='skipped', reason=reason)
            c = self.p['compile']
            extra = self.trd_args(c) + ['--torchcompile', self.p['compile_backend']]
            if mode == 'reduce-overhead':
                extra += ['--torchcompile-mode', 'reduce-overhead']
            entry, ranks, text, _ = self.trainpy(f'compile-{mode}', log, timeout, self.setup['compile_folder'],
                                                 self.setup['compile_classes'], c, extra,
                                                 env={'TORCH_LOGS': 'recompiles,graph_breaks'})
            entry.update(parse_compile(ranks.get(0, []), text))
            entry['backend'], entry['mode'] = self.p['compile_backend'], mode
            return entry
        return fn

    # speed through train.py (call 2)
    def do_speed(self, name):
        def fn(timeout, log):
            if (reason := self.skip_reason('trainpy_folder')):
                return dict(status='skipped', reason=reason)
            path = name.split('-')[1]
            if path == 'loader' and self.setup.get('loader_path_unavailable'):
                return dict(status='skipped', reason=self.setup['loader_path_unavailable'])
            c = self.p['speed']
            extra = [] if path == 'baseline' else self.trd_args(c) + ['--trd-mode', path]
            entry, ranks, text, out = self.trainpy(name, log, timeout, self.setup['trainpy_folder'],
                                                   self.setup['trainpy_classes'], c, extra)
            entry.update(parse_trainpy(text, out, c['batch'], c['prob']))
            entry.update(epoch_times(ranks.get(0, [])))
            entry['memory'] = end_memory(ranks.get(0, []))
            if entry['status'] == 'ok' and len(entry.get('summary', [])) != c['epochs']:
                entry.update(status='failed', reason=f"summary.csv has {len(entry.get('summary', []))} rows, "
                                                     f"expected {c['epochs']}")
            return entry
        return fn

    # -- benchmark (--call bench) ---------------------------------------------------------------------
    def bench_cmd(self, out, batch, steps, rounds, workers):
        p, s = self.p, self.p['speed']
        cmd = [sys.executable, ROOT / 'experiments' / 'bench_trd.py', '--model', s['model'], '--img-size', str(s['img']),
               '--trd-size', str(s['trd']), '--trd-prob', str(s['prob']), '-b', str(batch), '--steps', str(steps),
               '--rounds', str(rounds), '--workers', str(workers), '--amp', '--channels-last', '--device', p['device'],
               '--data-cache', self.work / 'data', '--out', out, '--compile-backend', p['compile_backend']]
        if p['threads']:
            cmd += ['--threads', str(p['threads'])]
        return cmd

    def bench_configs(self):
        return ['baseline'] + ([] if self.setup.get('loader_path_unavailable') else ['loader']) + ['device']

    def do_bench(self, kind):
        def fn(timeout, log):
            b = self.p['bench'][kind]
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

    def do_bench_compile(self, timeout, log):
        c = self.p['bench']['compile']
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
    def functions(self):
        fns = {'setup': self.do_setup, 'ddp': self.do_ddp('ddp'), 'ddp-syncbn': self.do_ddp('ddp-syncbn'),
               'compile-default': self.do_compile('default'),
               'compile-reduce-overhead': self.do_compile('reduce-overhead'),
               'bench-compute': self.do_bench('compute'), 'bench-loader': self.do_bench('loader'),
               'bench-compile': self.do_bench_compile}
        fns.update({arm: self.do_acc(arm) for arm in ACC_ARMS})
        fns.update({name: self.do_speed(name) for name in SPEED_PHASES})
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


# -- reading results -------------------------------------------------------------------------------
EPOCH_LINE = re.compile(r'TRD: epoch (\d+): (\d+)/(\d+) batches at (\d+)x(\d+) \((\w+) path\), compute ([\d.]+)')
RATE = re.compile(r'step rate ([\d.na]+) img/s full, ([\d.na]+) img/s reduced')
WAIT = re.compile(r'data wait\D*?([\d.]+|nan) ms\W+(?:full\W+)?([\d.]+|nan) ms')  # full, then reduced


def read_summary(out: Path):
    if not (out / 'summary.csv').is_file():
        return []
    with open(out / 'summary.csv') as f:
        return list(csv.DictReader(f))


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


def parse_acc(records, summary, log, c):
    """One accuracy arm: top-1 per epoch (summary.csv), times per epoch and the sizes trained on (the probe),
    memory at the end."""
    times = epoch_times(records)
    top1 = [float(row['eval_top1']) for row in summary if row.get('eval_top1')]
    epochs = []
    for i, t in enumerate(times['epoch_times']):
        reduced = sum(n for k, n in t['sizes'].items() if k != f"{c['img']}x{c['img']}")
        total = sum(t['sizes'].values())
        epochs.append(dict(t, top1=top1[i] if i < len(top1) else None,
                           reduced_share=reduced / total if total else None))
    shares = [e['reduced_share'] for e in epochs if e['reduced_share'] is not None]
    recal = [line for line in log.splitlines() if 'TRD: BatchNorm statistics' in line]
    return dict(epochs=epochs, top1_last=top1[-1] if top1 else None, top1_best=max(top1) if top1 else None,
                train_s_per_epoch=times['train_s_per_epoch'], epoch_s_per_epoch=times['epoch_s_per_epoch'],
                reduced_share=statistics.mean(shares) if shares else None, bn_recal_lines=len(recal),
                memory=end_memory(records), trd_lines=[ln[ln.index('TRD:'):] for ln in log.splitlines()
                                                       if 'TRD:' in ln][:4])


def compare_arms(phases):
    """The arms against the baseline: top-1 at the last epoch all finished, time ratios, the memory bound."""
    arms = {name: phases[name] for name in ACC_ARMS if phases.get(name, {}).get('epochs')}
    base = arms.get('acc-baseline')
    if not base:
        return {}
    common = min(len(a['epochs']) for a in arms.values())
    out = dict(common_epochs=common, arms={})
    base_mem = base.get('memory', {})
    for name, a in arms.items():
        row = dict(top1_common=a['epochs'][common - 1]['top1'])
        for key in ('train_s_per_epoch', 'epoch_s_per_epoch'):
            if a.get(key) and base.get(key):
                row[key.replace('_s_per_epoch', '_time_ratio')] = a[key] / base[key]
        mem = a.get('memory', {})
        if mem.get('max_reserved') and base_mem.get('max_reserved'):
            row['reserved_over_baseline'] = mem['max_reserved'] / base_mem['max_reserved'] - 1
            row['allocated_over_baseline'] = mem['max_allocated'] / base_mem['max_allocated'] - 1
            row['memory_bound_holds'] = (row['reserved_over_baseline'] <= MEMORY_BOUND
                                         and mem.get('alloc_retries', 0) == 0)
        out['arms'][name] = row
    return out


RECOMPILE = re.compile(r'Recompiling function (\S+)')
GUARD = re.compile(r'\[__recompiles\]\s+- (?:\d+/\d+: )(.*)')


def parse_compile(records, log):
    """Graphs built per epoch in training and validation, the sizes trained on, recompiles and the first guard
    that failed for each, graph breaks, compile times."""
    epochs = of_kind(records, 'epoch')
    validates = of_kind(records, 'validate')
    train_graphs = [e['graphs'] for e in epochs]
    val_graphs = [sum(v['graphs'] for v in validates if v.get('epoch') == e['epoch']) for e in epochs]
    trd = [m for m in map(EPOCH_LINE.search, log.splitlines()) if m]
    reduced_sizes = sorted({f'{m[4]}x{m[5]}' for m in trd if int(m[2])})
    distinct = 1 + len(reduced_sizes) if trd else None  # the full size, and the reduced one where served
    reasons, lines = [], log.splitlines()
    for i, line in enumerate(lines):
        if RECOMPILE.search(line):
            for following in lines[i + 1:i + 4]:
                if (g := GUARD.search(following)):
                    reasons.append(g[1].strip()[:160])
                    break
    breaks = sum('Graph break' in line and '__graph_breaks' in line for line in log.splitlines())
    ends = of_kind(records, 'end')
    report = ends[-1].get('compile', {}) if ends else {}
    times = report.get('compile_times_s', {})
    seconds = [e['seconds'] for e in epochs]
    return dict(
        train_graphs_per_epoch=train_graphs, val_graphs_per_epoch=val_graphs, train_sizes=distinct,
        reduced_sizes=reduced_sizes, trd_path=sorted({m[6] for m in trd}),
        recompiles=sum(bool(RECOMPILE.search(line)) for line in lines),
        recompile_guards=reasons, graph_breaks=breaks,
        dynamo_compile_s=times.get('_compile.compile_inner'),
        epoch0_minus_epoch1_s=seconds[0] - seconds[1] if len(seconds) > 1 else None,
        train_s_per_epoch=seconds, inductor=report.get('inductor', {}), memory=end_memory(records),
        checks=dict(no_graphs_after_epoch_0=bool(epochs) and sum(train_graphs[1:]) + sum(val_graphs[1:]) == 0,
                    one_graph_per_training_size=bool(epochs) and distinct is not None and train_graphs[0] <= distinct))


def parse_ddp(ranks, log, c, dist_bn: bool, sync_bn: bool):
    """Two processes on one device: what each rank recorded, and what the log says."""
    world, epochs = c['world'], c['epochs']
    starts = {r: of_kind(recs, 'start') for r, recs in ranks.items()}
    coll = {r: (of_kind(recs, 'collectives') or [{}])[0] for r, recs in ranks.items()}
    needed = ['broadcast', 'all_reduce', 'all_gather_object'] + (['all_gather'] if sync_bn else [])
    results = coll.get(0, {}).get('results', {})
    digests = {}
    for r, recs in ranks.items():
        for v in of_kind(recs, 'validate'):
            if 'digests' in v:
                digests.setdefault((v['epoch'], v['label']), {})[r] = v['digests']
    agree_lines = sum(f'all {world} ranks served the same sizes in the same order' in line for line in log.splitlines())
    recal = [line for line in log.splitlines() if f'averaged over {world} processes' in line]
    checks = {
        f'{world} ranks': len(ranks) == world and all(s and s[0]['world'] == world for s in starts.values()),
        'collectives needed on this device': bool(results) and all(results.get(n, {}).get('ok') for n in needed),
        'every epoch on every rank': all(len(of_kind(recs, 'epoch')) == epochs for recs in ranks.values()),
        'ranks served the same sizes': agree_lines == epochs,
        'BN recalibration averaged (model and EMA)': (sum(' (EMA)' in line for line in recal) >= epochs
                                                      and sum(' (EMA)' not in line for line in recal) >= epochs),
        'same weights and buffers on every rank': bool(digests) and all(
            len(d) == world and len({json.dumps(x, sort_keys=True) for x in d.values()}) == 1
            for d in digests.values()),
    }
    if dist_bn:
        checks["train.py's distribute_bn ran"] = 'Distributing BatchNorm running means and vars' in log
    if sync_bn:
        checks['SyncBatchNorm converted'] = 'Converted model to use Synchronized BatchNorm' in log
    return dict(checks=checks, collectives={n: r.get('ok') if r.get('ok') else r.get('error', False)
                                            for n, r in results.items()},
                collectives_device=coll.get(0, {}).get('device'), backend=coll.get(0, {}).get('backend'),
                backend_asked=coll.get(0, {}).get('backend_asked'),
                digests={f'{e} {label}': d for (e, label), d in sorted(digests.items())},
                memory={r: end_memory(recs) for r, recs in ranks.items()})


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


# -- tables ------------------------------------------------------------------------------------------
def fmt(value, spec='.0f'):
    if value is None or (isinstance(value, float) and value != value):
        return '-'
    return format(value, spec)


def gib(value):
    return fmt(value / 2 ** 30, '.2f') if value else '-'


def render(head, rows):
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = ['| ' + ' | '.join(str(c).ljust(w) for c, w in zip(r, widths)) + ' |' for r in [head, *rows]]
    lines.insert(1, '|' + '|'.join('-' * (w + 2) for w in widths) + '|')
    return '\n'.join(lines)


def status_cells(phases, name):
    e = phases.get(name, {})
    return e.get('status', 'not run'), fmt(e.get('seconds')) if 'seconds' in e else ''


def setup_line(result):
    env, setup = result.get('environment', {}), result['phases'].get('setup', {})
    parts = [f"torch {env['torch']}" if env.get('torch') else '', f"timm {env['timm']}" if env.get('timm') else '',
             env.get('gpu') or ('no GPU' if env else ''),
             f"{env['cpus']} CPUs, workers {result['workers']}" if env.get('cpus') else '',
             f"{env['jpegs']} photos ({env['jpeg_bytes'] / 2 ** 20:.0f} MiB)" if env.get('jpegs') else '',
             f"Imagenette {env['acc_train']} train / {env['acc_val']} val, {env['acc_classes']} classes"
             if env.get('acc_train') else '', setup.get('reason') or '']
    status, seconds = status_cells(result['phases'], 'setup')
    return f"setup: {status} in {seconds} s; " + ', '.join(filter(None, parts))


def acc_table(result):
    p, phases, comp = result['profile']['acc'], result['phases'], result.get('comparison', {})
    head = ('arm', 'status', 's', 'epochs', f"top-1 (epoch {comp.get('common_epochs', '-')})", 'top-1 best',
            'share at reduced', 'train s/epoch', 'epoch s', 'time ratio (train / epoch)', 'max reserved GiB',
            'max allocated GiB', 'retries', f'reserved vs baseline (bound +{MEMORY_BOUND:.0%})')
    rows = []
    for name in ACC_ARMS:
        e, c = phases.get(name, {}), comp.get('arms', {}).get(name, {})
        mem = e.get('memory', {})
        over = c.get('reserved_over_baseline')
        rows.append((name, *status_cells(phases, name), len(e.get('epochs', [])), fmt(c.get('top1_common'), '.2f'),
                     fmt(e.get('top1_best'), '.2f'), fmt(e.get('reduced_share'), '.3f'),
                     fmt(e.get('train_s_per_epoch'), '.2f'), fmt(e.get('epoch_s_per_epoch'), '.2f'),
                     f"{fmt(c.get('train_time_ratio'), '.3f')} / {fmt(c.get('epoch_time_ratio'), '.3f')}",
                     gib(mem.get('max_reserved')), gib(mem.get('max_allocated')), fmt(mem.get('alloc_retries')),
                     '' if over is None else f"{over:+.1%} " + ('holds' if c.get('memory_bound_holds') else 'EXCEEDS')))
    ideal = 1 - p['prob'] * (1 - (p['trd'] / p['img']) ** 2)
    title = (f"Accuracy ({result['mode']}): {p['model']} from scratch, {p['img']} px (reduced {p['trd']}), "
             f"{p['epochs']} epochs, batch {p['batch']}, P {p['prob']}; ideal compute ratio {ideal:.3f}")
    return title + '\n' + render(head, rows)


def checks_table(result):
    phases = result['phases']
    head = ('phase', 'status', 's', 'checks', 'figures')
    rows = []
    for name in ('ddp', 'ddp-syncbn', 'compile-default', 'compile-reduce-overhead'):
        if name not in phases:
            continue
        e = phases[name]
        checks = e.get('checks', {})
        passed = sum(v is True for v in checks.values())
        failed = [k for k, v in checks.items() if v is not True]
        cell = f'{passed}/{len(checks)}' + (f" (failed: {', '.join(failed)})" if failed else '') if checks else '-'
        if name.startswith('ddp'):
            coll = e.get('collectives', {})
            mem = e.get('memory', {}).get(0, {}) or e.get('memory', {}).get('0', {})
            works = ', '.join(k for k, v in coll.items() if v is True)
            fails = ', '.join(k for k, v in coll.items() if v is not True)
            figures = (f"{e.get('backend', '?')} on {e.get('collectives_device', '?')} (asked: "
                       f"{e.get('backend_asked', '?')}); collectives ok: {works}" + (f'; not: {fails}' if fails else '')
                       + (f"; rank 0 max reserved {gib(mem['max_reserved'])} GiB" if mem.get('max_reserved') else ''))
        else:
            mem = e.get('memory', {})
            figures = (f"train graphs per epoch {e.get('train_graphs_per_epoch')}, validation "
                       f"{e.get('val_graphs_per_epoch')} for {e.get('train_sizes')} training sizes; "
                       f"{e.get('recompiles', '-')} recompiles"
                       + (f" ({'; '.join(sorted(set(e['recompile_guards']))[:3])})"
                          if e.get('recompile_guards') else '')
                       + f", {e.get('graph_breaks', '-')} graph breaks; dynamo compile "
                       f"{fmt(e.get('dynamo_compile_s'), '.1f')} s, epoch 0 - epoch 1 "
                       f"{fmt(e.get('epoch0_minus_epoch1_s'), '.1f')} s"
                       + (f"; max reserved {gib(mem.get('max_reserved'))} GiB" if mem.get('max_reserved') else ''))
        figures += f"; {e['reason']}" if e.get('reason') else ''
        rows.append((name, *status_cells(phases, name), cell, figures))
    return f"Multi-process and torch.compile ({result['mode']})\n" + render(head, rows)


def speed_table(result):
    p, phases = result['profile']['speed'], result['phases']
    head = ('phase', 'status', 's', 'config', 'reduced', f"step ms {p['img']} / {p['trd']}", 'time ratio', 'ideal',
            'ratio/ideal', '(paired)', 'data ms/reduced', 'notes')
    rows = []

    def row(phase, config='', reduced='', steps='', ratio='', ideal='', over='', paired='', data='', notes='',
            first=True):
        status, seconds = status_cells(phases, phase) if first else ('', '')
        rows.append((phase if first else '', status, seconds, config, reduced, steps, ratio, ideal, over, paired,
                     data, notes))

    ideal_px = 1 - p['prob'] * (1 - (p['trd'] / p['img']) ** 2)
    base = phases.get('trainpy-baseline', {})
    for name in SPEED_PHASES:
        if name not in result['phases'] and name not in CALL_PHASES[result['call']]:
            continue
        e = phases.get(name, {})
        last, path = e.get('last_epoch', {}), name.split('-')[1]
        ratio = (e['train_s_per_epoch'] / base['train_s_per_epoch']
                 if e.get('train_s_per_epoch') and base.get('train_s_per_epoch') else None)
        notes = []
        if e.get('train_s_per_epoch'):
            notes.append(f"{e['train_s_per_epoch']:.2f} s per epoch after the first")
        if e.get('memory', {}).get('max_reserved'):
            notes.append(f"max reserved {gib(e['memory']['max_reserved'])} GiB, "
                         f"{e['memory'].get('alloc_retries', 0)} retries")
        if e.get('reason'):
            notes.append(e['reason'])
        row(name, config=path, reduced=f"{last['reduced']}/{last['batches']}" if last else '',
            steps=f"{fmt(e.get('step_ms_full'))} / {fmt(e.get('step_ms_reduced'))}" if last else '',
            ratio=fmt(ratio, '.3f') if ratio and path != 'baseline' else '',
            ideal=fmt(ideal_px, '.3f') if last else '',
            over=fmt(ratio / ideal_px, '.3f') if ratio and path != 'baseline' else '',
            paired=fmt(e['ratio_paired'] / ideal_px, '.3f') if e.get('ratio_paired') else '',
            data=fmt(last.get('data_ms_reduced'), '.1f') if last else '', notes='; '.join(notes))
    for kind in ('compute', 'loader'):
        name = f'bench-{kind}'
        if name not in CALL_PHASES[result['call']]:
            continue
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
    if 'bench-compile' in CALL_PHASES[result['call']]:
        e = phases.get('bench-compile', {})
        checks = e.get('compile_check', [])
        if not checks:
            row('bench-compile', notes=e.get('reason') or '')
        for i, c in enumerate(checks):
            kinds = c.get('graph_kinds', {})
            row('bench-compile', config=f"{c['path']}, {c.get('mode', 'dynamo default')}",
                notes=f"{c['graphs']} graphs ({kinds.get('static', '?')} static, {kinds.get('dynamic', '?')} dynamic) "
                      f"for {c['distinct_sizes']} sizes, per epoch "
                      f"{[x['graphs'] for x in c['epochs']]}, {'holds' if c['holds'] else 'DOES NOT HOLD'}",
                first=i == 0)
    title = (f"Speed ({result['mode']}): {p['model']}, {p['img']} vs {p['trd']} px, P {p['prob']}, AMP, channels_last; "
             f"ideal time ratio {ideal_px:.3f}")
    return title + '\n' + render(head, rows)


def tables(result):
    call_phases = set(CALL_PHASES[result['call']])
    parts = [f"TRD GPU check ({result['mode']}), call {result['call']}, {result.get('seconds', 0):.0f} s of "
             f"{result['deadline_s']:.0f}; {setup_line(result)}"]
    if call_phases & set(ACC_ARMS):
        parts.append(acc_table(result))
    if call_phases & {'ddp', 'ddp-syncbn', 'compile-default', 'compile-reduce-overhead'}:
        parts.append(checks_table(result))
    if call_phases & {*SPEED_PHASES, 'bench-compute', 'bench-loader', 'bench-compile'}:
        parts.append(speed_table(result))
    return '\n\n'.join(parts)


# -- command line ----------------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument('--prepare', action='store_true', help='fill .gpu_check/ here (needs pip to reach PyPI)')
    ap.add_argument('--images', default=os.environ.get('GPU_CHECK_IMAGES'),
                    help='(--prepare) a folder of real photos, e.g. ImageNet train/ ($GPU_CHECK_IMAGES)')
    ap.add_argument('--jpeg-count', type=int, default=400, help='(--prepare) photos to carry at most')
    ap.add_argument('--jpeg-mb', type=float, default=40, help='(--prepare) their size at most, MiB')
    ap.add_argument('--imagenette', default=str(DEFAULT_IMAGENETTE),
                    help='(--prepare) imagenette-224.tar (default: ../shared/datasets/ beside the checkout)')
    ap.add_argument('--acc-size', type=int, default=160, help="(--prepare) the copy's shorter side, px")
    ap.add_argument('--acc-quality', type=int, default=80, help="(--prepare) the copy's JPEG quality")
    ap.add_argument('--acc-train-per-class', type=int, default=700, help='(--prepare) training images per class')
    ap.add_argument('--acc-val-per-class', type=int, default=150, help='(--prepare) validation images per class')
    ap.add_argument('--timm-version', default=None, help='(--prepare) the timm wheel (default: the installed timm)')
    ap.add_argument('--train-script', default=None,
                    help="timm's train.py (default: .gpu_check/train.py, else $TIMM_TRAIN_SCRIPT)")
    ap.add_argument('--call', default='all', choices=CALL_PHASES,
                    help='1: accuracy; 2: multi-process, torch.compile, speed; bench: bench_trd.py; all (default)')
    ap.add_argument('--dry-run', action='store_true', help='CPU, tiny model, a few steps: the same phases')
    ap.add_argument('--phases', nargs='+', default=None, choices=PHASES, help="run only these of the call's phases")
    ap.add_argument('--out', default=os.environ.get('OUT') or str(ROOT / 'outputs' / 'gpu_check'),
                    help='results folder (default: $OUT, else outputs/gpu_check)')
    ap.add_argument('--work', default=None, help='scratch folder (default: outputs/gpu_check_work, emptied)')
    ap.add_argument('--workers', type=int, default=None, help='loader workers (default: all CPU cores; dry run 1)')
    ap.add_argument('--deadline', type=float, default=None,
                    help="seconds for all phases (default: the sum of the phases' budgets)")
    ap.add_argument('--setup-child', action='store_true', help=argparse.SUPPRESS)
    ap.add_argument('--profile', default='gpu', choices=PROFILES, help=argparse.SUPPRESS)
    ap.add_argument('--jpeg-src', default='', help=argparse.SUPPRESS)
    ap.add_argument('--acc-src', default='', help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.work is None:
        args.work = str(ROOT / 'outputs' / 'gpu_check_work')
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.setup_child:
        return setup_child(Path(args.work), args.profile, args.jpeg_src, args.acc_src)
    if args.prepare:
        return prepare(args, DEVICE_CALLS, run_call_text)
    return Check(args).run()


if __name__ == '__main__':
    main()
