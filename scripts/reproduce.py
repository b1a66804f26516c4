#!/usr/bin/env python3
"""Small-scale reproduction of the TRD paper's claim: accuracy kept at a fraction of the compute.

Runs baseline, TRD P 0.5 and TRD P 0.9 on real images (CIFAR-10 at 32 px reduced to 16, Imagenette at
112 px reduced to 56), several seeds each, through timm's own train.py with the timm-trd plugin. Then
evaluates every trained model also at 1/2 and 3/4 of the full test size, and writes

    OUT/results.csv        one row per run (top-1, training seconds, compute share, reduced-size top-1)
    OUT/results.md         mean +- std tables
    OUT/results.png        top-1 against training compute, one point per run, each config in its colour

Resumable: a run whose ``OUT/runs/<run>.json`` exists is skipped, so the experiment can be finished across several
sittings (``--only-report`` rebuilds the tables from what exists). Needs timm's train.py
(``--train-script`` or ``$TIMM_TRAIN_SCRIPT``; see the README) and matplotlib for the plot.

    python scripts/reproduce.py --train-script pytorch-image-models/train.py
"""

import argparse
import csv
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Each dataset: archive, folder inside it, full and reduced size, model and recipe. Sized so that the
# whole default experiment (2 datasets x 3 configs x 3 seeds) fits inside 90 minutes on 2 CPU cores
# (one core trains with one thread, one loader worker decodes on the other); --epochs and --train-per-class scale it.
DATASETS = {
    'cifar10': dict(
        archive='cifar10.tar.gz', folder='cifar10', full=32, reduced=16, train_per_class=1000,
        model='test_resnet', epochs=15, batch_size=128, lr=0.1, extra=['--scale', '0.35', '1', '--crop-pct', '1.0']),
    'imagenette': dict(
        archive='imagenette-224.tar', folder='imagenette', full=112, reduced=56, train_per_class=300,
        model='test_resnet', epochs=10, batch_size=64, lr=0.1, extra=[]),
}
# config name: (share of reduced batches P, epochs at the end trained entirely at full size)
CONFIGS = {'baseline': (0.0, 0), 'trd50': (0.5, 0), 'trd90': (0.9, 0), 'trd50-tail2': (0.5, 2),
           'trd90-bnrecal': (0.9, 0)}
# further train.py arguments of a config: the plugin's BatchNorm recalibration before train.py's validation
CONFIG_ARGS = {'trd90-bnrecal': ['--trd-bn-recal', '20']}
DEFAULT_CONFIGS = ['baseline', 'trd50', 'trd90']
EVAL_FRACTIONS = (0.5, 0.75)


def log(msg):
    print(f'[reproduce] {msg}', flush=True)


# -- data ---------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def prepare_dataset(name: str, shared: Path, cache: Path) -> Path:
    """Extract the archive once (checked against SHA256SUMS), then make a per-class training subset."""
    spec = DATASETS[name]
    root = cache / spec['folder']
    if not (root / 'train').is_dir():
        archive = shared / spec['archive']
        if not archive.is_file():
            sys.exit(f'reproduce: {archive} not found; pass --shared with the folder holding {spec["archive"]}')
        sums = (shared / 'SHA256SUMS').read_text().split() if (shared / 'SHA256SUMS').is_file() else []
        if spec['archive'] in sums and _sha256(archive) != sums[sums.index(spec['archive']) - 1]:
            sys.exit(f'reproduce: {archive} does not match SHA256SUMS')
        log(f'extracting {archive} into {cache}')
        cache.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(cache, filter='data')
    subset = cache / f'{spec["folder"]}-{spec["train_per_class"]}pc'
    if not (subset / 'val').exists():
        for class_dir in sorted((root / 'train').iterdir()):
            target = subset / 'train' / class_dir.name
            target.mkdir(parents=True, exist_ok=True)
            for image in sorted(class_dir.iterdir())[:spec['train_per_class']]:
                link = target / image.name
                if not link.exists():
                    link.symlink_to(image.resolve())
        (subset / 'val').symlink_to((root / 'val').resolve())
    return subset


# -- one training run ------------------------------------------------------------------------------
def train_args(name: str, config: str, seed: int, data: Path, out: Path, run: str, workers: int):
    spec = DATASETS[name]
    args = [
        '--data-dir', str(data), '--model', spec['model'], '--num-classes', '10', '--img-size', str(spec['full']),
        '--epochs', str(spec['epochs']), '-b', str(spec['batch_size']), '--opt', 'sgd', '--momentum', '0.9',
        '--lr', str(spec['lr']), '--weight-decay', '5e-4', '--sched', 'cosine', '--warmup-epochs', '1',
        '--seed', str(seed), '--device', 'cpu', '--workers', str(workers), '--output', str(out),
        '--experiment', run, '--val-interval', str(spec['epochs']), '--log-interval', '1000',
        '--checkpoint-hist', '1', *spec['extra'],
    ]
    prob, tail = CONFIGS[config]
    if prob > 0:
        args += ['--trd-prob', str(prob), '--trd-size', str(spec['reduced']), '--trd-full-res-epochs', str(tail)]
    args += CONFIG_ARGS.get(config, [])
    return args


def _child_env():
    """One intra-op thread for the training process unless the caller chose: on a small CPU the loader workers
    need the other cores, and oversubscribed OpenMP threads make step times swing by several times."""
    env = dict(os.environ)
    env.setdefault('OMP_NUM_THREADS', '1')
    return env


def timed_train(result_path: str, argv):
    """Worker mode: run train.py with the plugin, timing train_one_epoch; write the times as JSON."""
    from timm_trd.launcher import find_train_script, load_train_module
    from timm_trd import install

    module = load_train_module(find_train_script(None))
    install(module)
    hooked = module.train_one_epoch
    seconds = []

    def timed(*a, **kw):
        start = time.perf_counter()
        metrics = hooked(*a, **kw)
        seconds.append(time.perf_counter() - start)
        return metrics

    module.train_one_epoch = timed
    sys.argv = ['train.py', *argv]
    module.main()
    Path(result_path).write_text(json.dumps({'epoch_seconds': seconds}))


def run_one(name, config, seed, data, runs_dir, workers):
    run = f'{name}-{config}-s{seed}'
    result_file = runs_dir / f'{run}.json'
    if result_file.is_file():
        log(f'{run}: done before, skipped')
        return json.loads(result_file.read_text())
    run_dir = runs_dir / run  # train.py's output folder; a leftover of an interrupted sitting is redone
    if run_dir.exists():
        shutil.rmtree(run_dir)
    timing_file = runs_dir / f'{run}.timing.json'
    argv = train_args(name, config, seed, data, runs_dir, run, workers)
    log(f'{run}: training')
    with open(runs_dir / f'{run}.log', 'w') as logfile:
        code = subprocess.call([sys.executable, __file__, '_train', str(timing_file), *argv],
                               stdout=logfile, stderr=subprocess.STDOUT, env=_child_env())
    if code != 0:
        sys.exit(f'reproduce: {run} failed (exit {code}); see {runs_dir / (run + ".log")}')
    with open(run_dir / 'summary.csv') as f:
        last = list(csv.DictReader(f))[-1]  # validation runs once, after the last epoch
    spec = DATASETS[name]
    result = {
        'dataset': name, 'config': config, 'prob': CONFIGS[config][0], 'full_res_epochs': CONFIGS[config][1], 'seed': seed,
        'full': spec['full'], 'reduced': spec['reduced'], 'epochs': spec['epochs'],
        'train_per_class': spec['train_per_class'],
        'top1': float(last['eval_top1']),
        'train_seconds': round(sum(json.loads(timing_file.read_text())['epoch_seconds']), 2),
        'compute': round(1.0 - float(last['train_trd_saved_cum']), 4) if 'train_trd_saved_cum' in last else 1.0,
    }
    for fraction in EVAL_FRACTIONS:
        size = int(round(spec['full'] * fraction))
        result[f'top1_at_{size}'] = round(evaluate(run_dir / 'last.pth.tar', spec, data, size), 3)
    result['top1_bn_recal'] = round(evaluate(run_dir / 'last.pth.tar', spec, data, spec['full'], recal_batches=20), 3)
    result_file.write_text(json.dumps(result, indent=1))
    log(f'{run}: top-1 {result["top1"]:.2f}, {result["train_seconds"]:.0f} s training, compute {result["compute"]:.3f}')
    return result


def evaluate(checkpoint: Path, spec, data: Path, size: int, recal_batches: int = 0) -> float:
    """Top-1 of a trained model on the validation set at another test size (timm's loader and metrics).

    With ``recal_batches``, BatchNorm running statistics are first recomputed (a plain average, no gradient) over
    that many training batches at ``size``: the investigation of whether statistics gathered over a mix of
    reduced and full-size batches are what costs TRD accuracy at full-size test."""
    import torch
    from timm.data import create_dataset, create_loader, resolve_data_config
    from timm.models import create_model, load_checkpoint
    from timm.utils import accuracy

    model = create_model(spec['model'], num_classes=10)
    load_checkpoint(model, str(checkpoint))
    config = resolve_data_config({'img_size': size, 'crop_pct': 1.0 if '--crop-pct' in spec['extra'] else None},
                                 model=model)
    if recal_batches:
        extra = spec['extra']
        scale = tuple(map(float, extra[extra.index('--scale') + 1:][:2])) if '--scale' in extra else (0.08, 1.0)
        train_loader = create_loader(
            create_dataset('', root=str(data), split='train', is_training=True), input_size=config['input_size'],
            batch_size=spec['batch_size'], is_training=True, use_prefetcher=False, scale=scale,
            interpolation=config['interpolation'], mean=config['mean'], std=config['std'], num_workers=1)
        recalibrate_bn(model, train_loader, recal_batches)
    model.eval()
    dataset = create_dataset('', root=str(data), split='val', is_training=False)
    loader = create_loader(dataset, input_size=config['input_size'], batch_size=256, use_prefetcher=False,
                           interpolation=config['interpolation'], mean=config['mean'], std=config['std'],
                           crop_pct=config['crop_pct'], num_workers=2)
    correct, total = 0.0, 0
    with torch.no_grad():
        for images, target in loader:
            top1, = accuracy(model(images), target, topk=(1,))
            correct += top1.item() * images.shape[0] / 100
            total += images.shape[0]
    return 100.0 * correct / total


def recalibrate_bn(model, loader, batches: int):
    """Replace every BatchNorm's running statistics by their plain average over ``batches`` batches of
    ``loader`` (torch's ``update_bn``: train-mode forward passes, no gradient; the loader's order seeded)."""
    import itertools
    import torch
    from torch.optim.swa_utils import update_bn

    torch.manual_seed(0)  # the sampler's shuffle and the workers' seeds
    random.seed(0)  # the augmentations, when the loader has no workers
    update_bn(itertools.islice(loader, batches), model)
    model.eval()


# -- report ----------------------------------------------------------------------------------------
def _mean_std(values):
    values = list(values)
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else float('nan'))


def report(results, out: Path):
    order = list(CONFIGS)
    results = sorted(results, key=lambda r: (r['dataset'], order.index(r['config']), r['seed']))
    if not results:
        log('no finished runs yet')
        return
    fields = list(dict.fromkeys(k for r in results for k in r))
    with open(out / 'results.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(results)

    lines = [_machine_line(results, out), '']
    for name in dict.fromkeys(r['dataset'] for r in results):
        rows = [r for r in results if r['dataset'] == name]
        spec = DATASETS[name]
        base = [r for r in rows if r['prob'] == 0]
        base_time = statistics.mean(r['train_seconds'] for r in base) if base else float('nan')
        sizes = [int(round(spec['full'] * f)) for f in EVAL_FRACTIONS]
        lines += [f'**{name}**: {spec["model"]}, {spec["epochs"]} epochs, {spec["train_per_class"]} training images per class, '
                  f'trained and tested at {spec["full"]} px, reduced batches at {spec["reduced"]} px', '',
                  '| config | seeds | top-1 at ' + ' | top-1 at '.join(str(s) for s in [spec['full'], *sizes])
                  + f' | top-1 at {spec["full"]}, BN recalibrated | training time (s) | time vs baseline | compute (FLOPs) |',
                  '|---|---|' + '---|' * (len(sizes) + 5)]
        for config, (prob, tail) in CONFIGS.items():
            group = [r for r in rows if r['config'] == config]
            if not group:
                continue
            cells = []
            for key in ['top1'] + [f'top1_at_{s}' for s in sizes] + ['top1_bn_recal']:
                m, s = _mean_std(r.get(key, float('nan')) for r in group)
                cells.append(f'{m:.2f} +- {s:.2f}')
            t, _ = _mean_std(r['train_seconds'] for r in group)
            c, _ = _mean_std(r['compute'] for r in group)
            label = f'{config} (P {prob:g}' + (f', last {tail} epochs full)' if tail else ')')
            lines.append(f'| {label} | {len(group)} | ' + ' | '.join(cells)
                         + f' | {t:.0f} | {t / base_time:.3f} | {c:.3f} |')
        lines.append('')
    (out / 'results.md').write_text('\n'.join(lines))
    print('\n'.join(lines))
    plot(results, out / 'results.png')


def _machine_line(results, out: Path) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_trd import machine  # the benchmark's description of the machine, so both name it alike

    m = machine()
    sittings = out / 'sittings.txt'
    wall = sum(float(v) for v in sittings.read_text().split()) if sittings.is_file() else float('nan')
    return (f'Machine: {m["cpu"]}, {m["cpus"]} cores, torch {m["torch"]}, timm {m["timm"]}, '
            f'OMP_NUM_THREADS={_child_env()["OMP_NUM_THREADS"]}. {len(results)} runs, '
            f'{sum(r["train_seconds"] for r in results) / 60:.1f} min in train_one_epoch; '
            f'sittings (training, validation, reduced-size evaluation) {wall:.1f} min in all.')


def plot(results, path: Path):
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        log('matplotlib is not installed (pip install matplotlib): no plot')
        return
    names = list(dict.fromkeys(r['dataset'] for r in results))
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4), squeeze=False)
    colours = {'baseline': 'tab:gray', 'trd50': 'tab:blue', 'trd90': 'tab:orange', 'trd50-tail2': 'tab:green'}
    for ax, name in zip(axes[0], names):
        rows = [r for r in results if r['dataset'] == name]
        for config in CONFIGS:
            group = [r for r in rows if r['config'] == config]
            if not group:
                continue
            ax.scatter([r['compute'] for r in group], [r['top1'] for r in group],
                       label=f'{config} (P {CONFIGS[config][0]:g})', color=colours[config])
        ax.set_title(f'{name} ({DATASETS[name]["full"]} px, reduced {DATASETS[name]["reduced"]} px)')
        ax.set_xlabel('training compute (FLOPs, share of the baseline\'s; timm-trd accounting)')
        ax.set_ylabel('top-1 (%)')
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    log(f'wrote {path}')


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--train-script', default=None, help="timm's train.py (default: $TIMM_TRAIN_SCRIPT)")
    parser.add_argument('--shared', default=str(REPO.parent / 'shared' / 'datasets'),
                        help='folder with cifar10.tar.gz and imagenette-224.tar (default: ../shared/datasets)')
    parser.add_argument('--cache', default=str(REPO / 'outputs' / 'cache'), help='where archives are extracted')
    parser.add_argument('--out', default=str(REPO / 'outputs' / 'reproduce'), help='runs and results')
    parser.add_argument('--datasets', nargs='+', default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument('--configs', nargs='+', default=DEFAULT_CONFIGS, choices=list(CONFIGS))
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    parser.add_argument('--epochs', type=int, default=None, help='override every dataset\'s epoch count')
    parser.add_argument('--train-per-class', type=int, default=None, help='override the training subset size')
    parser.add_argument('--workers', type=int, default=1,
                        help='loader workers per run (default 1: on 2 cores, one decodes while one trains)')
    parser.add_argument('--only-report', action='store_true',
                        help='rebuild the tables from finished runs (give the same --epochs/--train-per-class as the runs)')
    args = parser.parse_args()

    if args.train_script:
        os.environ['TIMM_TRAIN_SCRIPT'] = args.train_script
    for spec in DATASETS.values():
        spec['epochs'] = args.epochs or spec['epochs']
        spec['train_per_class'] = args.train_per_class or spec['train_per_class']
    out = Path(args.out)
    runs_dir = out / 'runs'
    runs_dir.mkdir(parents=True, exist_ok=True)
    results = []
    start = time.time()
    if args.only_report:
        results = [json.loads(p.read_text()) for p in sorted(runs_dir.glob('*-s*.json')) if '.timing' not in p.name]
    else:
        if not os.environ.get('TIMM_TRAIN_SCRIPT'):
            sys.exit('reproduce: needs timm\'s train.py: pass --train-script or set TIMM_TRAIN_SCRIPT')
        for name in args.datasets:
            data = prepare_dataset(name, Path(args.shared), Path(args.cache))
            for seed in args.seeds:  # seeds outermost: every finished seed gives a complete comparison
                for config in args.configs:
                    results.append(run_one(name, config, seed, data, runs_dir, args.workers))
        minutes = (time.time() - start) / 60
        log(f'this sitting took {minutes:.1f} min')
        with open(out / 'sittings.txt', 'a') as f:
            f.write(f'{minutes:.2f}\n')
    report(results, out)


if __name__ == '__main__':
    if len(sys.argv) > 2 and sys.argv[1] == '_train':
        timed_train(sys.argv[2], sys.argv[3:])
    else:
        main()
