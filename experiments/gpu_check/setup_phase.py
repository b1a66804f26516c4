"""The setup phase: what the other phases need, made in the call itself. On the GPU machine the carried timm
wheel and the project are installed first; then a child process (``python experiments/gpu_check --setup-child``,
in the environment the train.py runs get) reports the versions and the device, and links the data folders each
phase trains on (dry run: small generated images stand in for the carried ones)."""

import json
import os
import platform
import shutil
import sys
import tarfile
import time
from functools import partial
from pathlib import Path

from .common import run_logged
from .plan import ACC_ARMS, NEEDS_PHOTOS, NEEDS_TRAIN_SCRIPT, PROFILES
from .prepare import CARRY, ROOT, list_images, reencode_imagenette

PACKAGE = Path(__file__).resolve().parent  # run as a folder: its __main__.py


def phases(check) -> dict:
    """{phase name: fn(timeout, log)} for the runner."""
    return {'setup': partial(run_setup, check)}


def run_setup(check, timeout, log):
    """Install the carried timm wheel and the project (GPU only), then the setup child: versions, data folders."""
    end = time.monotonic() + timeout
    py = sys.executable
    steps, notes = {}, []
    if not check.args.dry_run:
        if shutil.which('nvidia-smi'):
            steps['nvidia-smi'] = run_logged(['nvidia-smi', '-L'], log, min(15, end - time.monotonic()), check.env)
        wheels = sorted((CARRY / 'wheels').glob('timm-*.whl'))
        if wheels:
            site = check.work / 'site'
            r = run_logged([py, '-m', 'pip', 'install', '-q', '--no-index', '--no-deps', '--no-compile',
                            '--no-cache-dir', '--target', site, wheels[-1]], log, end - time.monotonic(), check.env)
            steps['timm-wheel'] = r
            if r['status'] == 'ok':
                check.env['PYTHONPATH'] = os.pathsep.join(
                    filter(None, [str(site), check.env.get('PYTHONPATH')]))
                notes.append(f'timm from {wheels[-1].name}')
        else:
            notes.append('no carried timm wheel: the installed timm')
        r = run_logged([py, '-m', 'pip', 'install', '-q', '--no-index', '--no-deps', '--no-build-isolation',
                        '-e', ROOT], log, end - time.monotonic(), check.env)
        steps['project'] = r
        if r['status'] != 'ok':  # no setuptools to build with: import it from the checkout instead
            check.env['PYTHONPATH'] = os.pathsep.join(filter(None, [check.env.get('PYTHONPATH'), str(ROOT)]))
            notes.append('timm_trd from PYTHONPATH (pip install -e failed)')
    want_photos = any(ph in NEEDS_PHOTOS for ph in check.phases)
    want_acc = any(ph in ACC_ARMS for ph in check.phases)
    jpeg_src = acc_src = ''  # dry run: the setup child generates both
    if not check.args.dry_run:
        jpeg_src = str(CARRY / 'jpeg') if (CARRY / 'jpeg').is_dir() else 'none'
        acc_src = str(CARRY / 'imagenette') if (CARRY / 'imagenette').is_dir() else 'none'
    jpeg_src, acc_src = (jpeg_src if want_photos else 'none'), (acc_src if want_acc else 'none')
    missing = [f'.gpu_check/{name}' for name, src, want in (('jpeg', jpeg_src, want_photos),
                                                             ('imagenette', acc_src, want_acc))
               if want and src == 'none']
    if missing:
        notes.append(f"not carried: {', '.join(missing)} (run experiments/gpu_check.sh --prepare, and carry it)")
    if any(ph in NEEDS_TRAIN_SCRIPT for ph in check.phases) and not check.train_script:
        notes.append("no train.py: the train.py phases are skipped (--prepare, or $TIMM_TRAIN_SCRIPT)")
    r = run_logged([py, PACKAGE, '--setup-child', '--work', check.work, '--profile', check.profile,
                    '--jpeg-src', jpeg_src, '--acc-src', acc_src], log, end - time.monotonic(), check.env)
    steps['probe-and-data'] = r
    for line in log.read_text(errors='replace').splitlines():
        if line.startswith('SETUP '):
            check.setup = json.loads(line[6:])
    check.result['environment'] = {**check.setup, 'notes': notes, 'train_script': check.train_script,
                                  'train_output': str(check.train_out)}
    status = 'ok' if all(s['status'] == 'ok' for s in steps.values()) and not missing else (
        'failed' if r['status'] != 'ok' else 'partial')
    return dict(status=status, seconds=sum(s['seconds'] for s in steps.values()),
                steps={k: v['status'] for k, v in steps.items()}, reason='; '.join(notes) or None)


# -- the setup child (run in a subprocess, after the install) ---------------------------------------
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
