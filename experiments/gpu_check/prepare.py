"""``experiments/gpu_check.sh --prepare``: what the GPU machine needs, made here, in the ignored folder ``.gpu_check/``.

The GPU machine has no network, and a device call carries at most 64 MiB: the working tree (tracked and
untracked-not-ignored files) plus the paths its ``carry`` names. So ``--prepare`` writes

- ``.gpu_check/wheels/``: the timm wheel (``pip download``), and ``.gpu_check/train.py``: timm's train.py;
- ``.gpu_check/jpeg/``: a few hundred real photos at ImageNet size, for the loader-bound speed runs and the
  multi-process runs of call 2 (larger ones resized to 500 px);
- ``.gpu_check/imagenette/``: for the accuracy runs of call 1, a re-encoded per-class subset of Imagenette
  (``imagenette-224.tar``): the first N images of each class in name order, the shorter side resized to
  ``--acc-size`` (Lanczos), JPEG quality ``--acc-quality``; ``train/`` and ``val/`` as timm reads them;

then adds up, per call, the working tree and that call's carried paths, prints it, and refuses (exit 2) when a
call would carry more than the limit.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
CARRY = ROOT / '.gpu_check'  # ignored (.gitignore)
TRAVEL_LIMIT_MB = 64
IMAGE_SUFFIXES = ('.jpg', '.jpeg')
DEFAULT_IMAGENETTE = ROOT.parent / 'shared' / 'datasets' / 'imagenette-224.tar'


def human_mb(n):
    return f'{n / 2 ** 20:.1f} MiB'


def refuse(message):
    print(f'gpu_check: error: {message}', file=sys.stderr)
    sys.exit(2)


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
        refuse(f'no .jpg/.jpeg files under {src}')
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


# -- the Imagenette copy ------------------------------------------------------------------------------
MEMBER = re.compile(r'^(?:[^/]+/)?(train|val)/([^/]+)/([^/]+\.(?:jpe?g|JPE?G))$')


def choose_members(tar: tarfile.TarFile, per_split: dict):
    """The first ``per_split[split]`` images of each class, in name order: {member name: (split, class, file)}."""
    found = {}
    for member in tar.getmembers():
        m = MEMBER.match(member.name)
        if m and member.isfile():
            found.setdefault((m[1], m[2]), []).append((m[3], member.name))
    chosen = {}
    for (split, cls), files in found.items():
        for file, name in sorted(files)[:per_split.get(split, 0)]:
            chosen[name] = (split, cls, file)
    return chosen


def reencode_imagenette(tar_path: Path, dest: Path, size: int, quality: int, train_per_class: int,
                        val_per_class: int) -> dict:
    """Write the re-encoded subset to ``dest`` (train/, val/, manifest.json last); nothing to do when
    ``dest`` already holds it with the same settings. Returns the manifest."""
    from PIL import Image
    tar_path = Path(tar_path)
    if not tar_path.is_file():
        refuse(f'no Imagenette archive at {tar_path}: pass --imagenette PATH/imagenette-224.tar')
    settings = dict(source=tar_path.name, source_bytes=tar_path.stat().st_size, size=size, quality=quality,
                    train_per_class=train_per_class, val_per_class=val_per_class)
    manifest_path = dest / 'manifest.json'
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if {k: manifest.get(k) for k in settings} == settings:
            return manifest
    partial = dest.with_name(dest.name + '.partial')
    shutil.rmtree(partial, ignore_errors=True)
    counts, total = {}, 0
    with tarfile.open(tar_path) as tar:
        chosen = choose_members(tar, {'train': train_per_class, 'val': val_per_class})
        if not chosen:
            refuse(f'{tar_path} holds no train/<class>/*.JPEG or val/<class>/*.JPEG images')
        for member in tar.getmembers():
            if member.name not in chosen:
                continue
            split, cls, file = chosen[member.name]
            out = partial / split / cls / (Path(file).stem + '.JPEG')
            out.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(tar.extractfile(member)) as image:
                image = image.convert('RGB')
                scale = size / min(image.size)
                image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))),
                             Image.LANCZOS).save(out, quality=quality, optimize=True)
            total += out.stat().st_size
            counts[split] = counts.get(split, 0) + 1
    classes = sorted({cls for _, cls, _ in chosen.values()})
    manifest = dict(settings, images=counts, classes=len(classes), bytes=total,
                    prepared=time.strftime('%Y-%m-%d %H:%M:%S'))
    (partial / 'manifest.json').write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    return manifest


# -- what travels -------------------------------------------------------------------------------------
def tree_bytes() -> int:
    """Tracked and untracked-not-ignored files: the working tree every device call sends."""
    names = subprocess.run(['git', 'ls-files', '-z', '-co', '--exclude-standard'], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split('\0')
    return sum((ROOT / n).stat().st_size for n in names if n and (ROOT / n).is_file())


def path_bytes(relative: str) -> int:
    path = ROOT / relative
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob('*') if p.is_file() and not p.is_symlink())


def travel_report(calls: dict) -> dict:
    """{call: (tree bytes, carried bytes)} for each call's carry list."""
    tree = tree_bytes()
    return {name: (tree, sum(path_bytes(p) for p in call['carry'])) for name, call in calls.items()}


def travel_check(sizes: dict, calls: dict, limit_mb: float = TRAVEL_LIMIT_MB):
    """One line per call (what it carries, its total against the limit), and the calls over the limit."""
    lines, over = [], []
    for name, (tree, carried) in sizes.items():
        total = tree + carried
        lines.append(f"  call {name} carries {calls[name]['carry']}: working tree {human_mb(tree)} + "
                     f"{human_mb(carried)} = {human_mb(total)} (limit {limit_mb:g} MiB)")
        if total > limit_mb * 2 ** 20:
            over.append(name)
    return lines, over


# -- --prepare ----------------------------------------------------------------------------------------
def prepare(args, calls: dict, run_call):
    """Fill .gpu_check/ (see the module docstring); ``run_call(name)`` is the device call to print."""
    import timm
    version = args.timm_version or timm.__version__
    if tuple(int(x) for x in re.findall(r'\d+', version)[:3]) < (1, 0, 29):
        refuse(f'the loader path needs timm >= 1.0.29; pass --timm-version (installed: {version})')
    train_script = args.train_script or os.environ.get('TIMM_TRAIN_SCRIPT')
    if not train_script or not Path(train_script).is_file():
        refuse("--prepare needs timm's train.py: --train-script PATH or $TIMM_TRAIN_SCRIPT")
    if not args.images or not Path(args.images).is_dir():
        refuse('--prepare needs --images DIR, a folder of real photos (class subfolders or flat)')
    if not Path(args.imagenette).is_file():
        refuse(f'no Imagenette archive at {args.imagenette}: pass --imagenette PATH/imagenette-224.tar')
    text = Path(train_script).read_text()
    for seam in ('def main(', 'def train_one_epoch(', 'create_loader'):
        if seam not in text:
            refuse(f"{train_script} has no {seam!r}: is it timm's train.py?")
    CARRY.mkdir(exist_ok=True)
    wheels = CARRY / 'wheels'
    if not any(wheels.glob(f'timm-{version}-*.whl')):
        shutil.rmtree(wheels, ignore_errors=True)
        subprocess.run([sys.executable, '-m', 'pip', 'download', '-q', '--no-deps', '--only-binary=:all:',
                        f'timm=={version}', '-d', str(wheels)], check=True)
    wheel = next(wheels.glob('timm-*.whl'))
    shutil.copyfile(train_script, CARRY / 'train.py')
    count, jpeg_bytes = copy_jpegs(Path(args.images), CARRY / 'jpeg', args.jpeg_count, args.jpeg_mb)
    start = time.perf_counter()
    acc = reencode_imagenette(Path(args.imagenette), CARRY / 'imagenette', args.acc_size, args.acc_quality,
                              args.acc_train_per_class, args.acc_val_per_class)
    acc_seconds = time.perf_counter() - start
    sizes = travel_report(calls)
    manifest = dict(timm=version, wheel=wheel.name, train_script=str(train_script), images=str(args.images),
                    jpegs=count, jpeg_bytes=jpeg_bytes, imagenette=acc,
                    travel={name: dict(tree=t, carried=c) for name, (t, c) in sizes.items()},
                    prepared=time.strftime('%Y-%m-%d %H:%M:%S'))
    (CARRY / 'manifest.json').write_text(json.dumps(manifest, indent=1))
    print(f'gpu_check: prepared {CARRY.relative_to(ROOT)}/: {wheel.name}, train.py from {train_script}, '
          f'{count} JPEGs ({human_mb(jpeg_bytes)}) from {args.images}')
    print(f"  imagenette/: {acc['images'].get('train', 0)} train + {acc['images'].get('val', 0)} val images of "
          f"{acc['classes']} classes ({acc['train_per_class']} + {acc['val_per_class']} per class), shorter side "
          f"{acc['size']} px, JPEG quality {acc['quality']}: {human_mb(acc['bytes'])}"
          + (f' (re-encoded in {acc_seconds:.0f} s)' if acc_seconds > 1 else ' (already there)'))
    lines, over = travel_check(sizes, calls)
    print('\n'.join(lines))
    if over:
        refuse(f"call {', '.join(over)} would carry over the {TRAVEL_LIMIT_MB} MiB limit: lower --jpeg-mb "
               f"(call 2) or --acc-train-per-class / --acc-quality (call 1)")
    print('  on a session lent a GPU, make these device calls, the second right after the first '
          '(the machine stays warm 30 s):')
    for name in calls:
        print(f'    {run_call(name)}')
