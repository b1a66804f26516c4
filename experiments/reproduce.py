#!/usr/bin/env python3
"""Small-scale reproduction of the TRD paper's claim: accuracy kept at a fraction of the compute.

Trains arms (configs) on real images (CIFAR-10 at 32 px reduced to 16, Imagenette at 112 px reduced to 56),
several seeds each, through timm's own train.py with the timm-trd plugin, and evaluates every trained model with
``timm-trd-eval`` (:mod:`timm_trd.evaluation.evaluate`: top-1 at full, 1/2 and 3/4 test size, after BatchNorm
recalibration, on blurred and patch-shuffled images, and a low/high-frequency cue-conflict shape bias). Writes

    OUT/results.csv          one row per run (training time, measured training sizes and FLOPs, every evaluation)
    OUT/results.md           mean +- std per arm
    OUT/results.png          top-1 against training time and against training FLOPs; the baseline at its budgets
                             is a line (the plain-training frontier), every other arm a point with error bars
    OUT/shape_bias.png       cue-conflict shape bias against training FLOPs

Two presets: the default (baseline, TRD P 0.5 and P 0.9 on both datasets, seeds 0 1 2) and ``--frontier``: on
Imagenette, does TRD beat simply training less? Baseline at 0.6, 1 and 1.6 x the epochs, TRD P 0.5 at 56 px at
1 and 1.6 x, TRD P 0.9 at 1 and 3 x, TRD P 0.5 at 80 px, timm's own random sizes (``--train-img-sizes 112 56
--train-size-probs 0.5 0.5``) and low resolution only (every batch at 56 px, tested at 112), 3 seeds for the
baseline and TRD P 0.5 (56 px) arms, 2 for the others.

Compute is counted the same way for every arm: the training process counts the images that reach the model's
forward in ``train_one_epoch`` at each input size (whatever chose it: TRD, timm's scheduled sampler, ``--img-size``),
and the FLOPs are those counts times the model's forward FLOPs at each size (``torch.utils.flop_counter``, via
:func:`timm_trd.plugin.accounting.count_forward_flops`). ``compute`` is that over the baseline's at the reference epochs
(every training image at full size for the dataset's epoch count). For TRD runs the plugin's own accounting
(``train_trd_saved_cum`` of summary.csv) is kept beside it as ``compute_plugin``, a cross-check.

Resumable: a run whose ``OUT/runs/<run>.json`` exists is skipped; one whose training finished but whose evaluation
did not is only evaluated (delete ``<run>.json`` to re-evaluate a kept checkpoint). ``--only-report`` rebuilds the
tables from what exists. Needs timm's train.py (``--train-script`` or ``$TIMM_TRAIN_SCRIPT``; see the README) and
matplotlib for the plots.

    python experiments/reproduce.py --train-script pytorch-image-models/train.py
    python experiments/reproduce.py --frontier --cache /work/cache --results-dir results
"""

import argparse
import csv
import dataclasses
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Optional, Tuple

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


@dataclasses.dataclass(frozen=True)
class Config:
    """One arm. Everything not set here is the dataset's recipe."""
    label: str
    prob: float = 0.0  # TRD's share of reduced batches (0: TRD off)
    tail: int = 0  # TRD: last epochs entirely at full size
    epochs_factor: float = 1.0  # epochs = round(factor x the dataset's epochs)
    reduced: Optional[int] = None  # TRD's reduced size in px (default: the dataset's)
    train_at_reduced: bool = False  # train.py's --img-size is the reduced size (validation there too); tested at full
    extra: Tuple[str, ...] = ()  # more train.py arguments; {full} and {reduced} are filled in
    frontier: bool = False  # part of the plain-training frontier: drawn as one line through its budgets


CONFIGS = {  # in the order of the tables
    'baseline-0.6x': Config('baseline', epochs_factor=0.6, frontier=True),
    'baseline': Config('baseline', frontier=True),
    'baseline-1.6x': Config('baseline', epochs_factor=1.6, frontier=True),
    'trd50': Config('TRD P 0.5', prob=0.5),
    'trd50-1.6x': Config('TRD P 0.5', prob=0.5, epochs_factor=1.6),
    'trd90': Config('TRD P 0.9', prob=0.9),
    'trd90-3x': Config('TRD P 0.9', prob=0.9, epochs_factor=3.0),
    'trd50-80px': Config('TRD P 0.5 at 80 px', prob=0.5, reduced=80),
    'trd50-tail2': Config('TRD P 0.5, last 2 epochs full', prob=0.5, tail=2),
    # the plugin's BatchNorm recalibration before train.py's validation (the timm-trd-eval column does it after)
    'trd90-bnrecal': Config('TRD P 0.9, --trd-bn-recal 20', prob=0.9, extra=('--trd-bn-recal', '20')),
    # peers: timm's own per-batch random sizes, and training at the reduced size only
    'timm-sizes50': Config("timm's random sizes, P 0.5",
                           extra=('--train-img-sizes', '{full}', '{reduced}', '--train-size-probs', '0.5', '0.5')),
    'lowres': Config('low resolution only', train_at_reduced=True),
    'lowres-2.4x': Config('low resolution only', train_at_reduced=True, epochs_factor=2.4),
    'lowres-4x': Config('low resolution only', train_at_reduced=True, epochs_factor=4.0),
    # timm's own progressive schedule (small sizes early, full size late), sizes as the other arms
    'timm-progressive': Config("timm's progressive sizes",
                               extra=('--train-img-sizes', '{reduced}', '{full}', '--train-size-schedule',
                                      'progressive')),
    'timm-progressive-1.6x': Config("timm's progressive sizes", epochs_factor=1.6,
                                    extra=('--train-img-sizes', '{reduced}', '{full}', '--train-size-schedule',
                                           'progressive')),
}
DEFAULT_CONFIGS = ['baseline', 'trd50', 'trd90']
# --frontier: Imagenette, each arm with its number of seeds (0, 1, ...)
FRONTIER = {'baseline-0.6x': 3, 'baseline': 3, 'baseline-1.6x': 3, 'trd50': 3, 'trd50-1.6x': 3,
            'trd90': 2, 'trd90-3x': 2, 'trd50-80px': 2, 'timm-sizes50': 2, 'lowres': 2,
            'lowres-2.4x': 2, 'lowres-4x': 2, 'timm-progressive': 2, 'timm-progressive-1.6x': 2}
FRONTIER_DATASET = 'imagenette'
EVAL_FRACTIONS = (0.5, 0.75)
EVAL_SEED = 0  # the same probe images, pairs and tile orders for every run


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
def config_epochs(name: str, config: str) -> int:
    return max(1, int(round(CONFIGS[config].epochs_factor * DATASETS[name]['epochs'])))


def reduced_size(name: str, config: str) -> int:
    spec, cfg = DATASETS[name], CONFIGS[config]
    size = cfg.reduced or spec['reduced']
    if size >= spec['full']:
        sys.exit(f'reproduce: {config} reduces to {size} px, not below {name}\'s {spec["full"]} px; pick another config')
    return size


def train_args(name: str, config: str, seed: int, data: Path, out: Path, run: str, workers: int):
    spec, cfg = DATASETS[name], CONFIGS[config]
    epochs, reduced = config_epochs(name, config), reduced_size(name, config)
    train_size = reduced if cfg.train_at_reduced else spec['full']
    args = [
        '--data-dir', str(data), '--model', spec['model'], '--num-classes', '10', '--img-size', str(train_size),
        '--epochs', str(epochs), '-b', str(spec['batch_size']), '--opt', 'sgd', '--momentum', '0.9',
        '--lr', str(spec['lr']), '--weight-decay', '5e-4', '--sched', 'cosine', '--warmup-epochs', '1',
        '--seed', str(seed), '--device', 'cpu', '--workers', str(workers), '--output', str(out),
        '--experiment', run, '--val-interval', str(epochs), '--log-interval', '1000',
        '--checkpoint-hist', '1', *spec['extra'],
    ]
    if cfg.prob > 0:
        args += ['--trd-prob', str(cfg.prob), '--trd-size', str(reduced), '--trd-full-res-epochs', str(cfg.tail)]
    args += [a.format(full=spec['full'], reduced=reduced) for a in cfg.extra]
    return args


def eval_args(name: str, checkpoint: Path, data: Path, out_json: Path, workers: int, probe_images: int,
              max_images: Optional[int]):
    """timm-trd-eval's command line for a run: at the dataset's full size whatever size it trained at, BatchNorm
    recalibrated on 20 training batches at full size with the recipe's augmentation (``--scale``, crop)."""
    spec = DATASETS[name]
    extra = spec['extra']
    args = ['--checkpoint', str(checkpoint), '--data-dir', str(data), '--model', spec['model'], '--num-classes', '10',
            '--img-size', str(spec['full']), '--recal-batches', '20', '--recal-batch-size', str(spec['batch_size']),
            '--probe-images', str(probe_images), '--seed', str(EVAL_SEED), '--workers', str(workers),
            '--device', 'cpu', '--json', str(out_json)]
    for option in ('--scale', '--crop-pct'):
        if option in extra:
            i = extra.index(option)
            args += extra[i:i + (3 if option == '--scale' else 2)]
    if max_images:
        args += ['--max-images', str(max_images)]
    return args


def _child_env():
    """One intra-op thread for the training process unless the caller chose: on a small CPU the loader workers
    need the other cores, and oversubscribed OpenMP threads make step times swing by several times."""
    env = dict(os.environ)
    env.setdefault('OMP_NUM_THREADS', '1')
    return env


def timed_train(result_path: str, argv):
    """Worker mode: run train.py with the plugin, timing train_one_epoch and counting, per input size, the images
    and batches that reach the model's forward inside it (the training steps, whatever chose their size); write
    both as JSON."""
    from timm_trd.cli.train_script import find_train_script, load_train_module
    from timm_trd import install

    module = load_train_module(find_train_script(None))
    install(module)
    hooked = module.train_one_epoch
    seconds, images, batches = [], {}, {}
    counting = {'on': False, 'models': set()}

    def count(model, inputs):
        x = inputs[0] if inputs else None
        if counting['on'] and model.training and getattr(x, 'dim', lambda: 0)() == 4:
            key = f'{x.shape[-2]}x{x.shape[-1]}'
            images[key] = images.get(key, 0) + int(x.shape[0])
            batches[key] = batches.get(key, 0) + 1

    def timed(*a, **kw):
        model = a[1] if len(a) > 1 else kw['model']
        if id(model) not in counting['models']:
            counting['models'].add(id(model))
            model.register_forward_pre_hook(count)
        counting['on'] = True
        start = time.perf_counter()
        try:
            metrics = hooked(*a, **kw)
        finally:
            counting['on'] = False
        seconds.append(time.perf_counter() - start)
        return metrics

    module.train_one_epoch = timed
    sys.argv = ['train.py', *argv]
    module.main()
    Path(result_path).write_text(json.dumps({'epoch_seconds': seconds, 'images_per_size': images,
                                             'batches_per_size': batches}))


def _flops_per_image(model_name: str, sizes) -> dict:
    """Forward FLOPs of one image at each ``HxW`` size (timm_trd.plugin.accounting's counter)."""
    from timm.models import create_model
    from timm_trd.plugin.accounting import count_forward_flops

    model = create_model(model_name, num_classes=10)
    return {s: count_forward_flops(model, tuple(int(v) for v in s.split('x'))) for s in sizes}


def compute_columns(name: str, config: str, timing: dict, summary_last: dict, train_images: int) -> dict:
    """Training FLOPs from the measured images per size; ``compute`` against the baseline at the dataset's epochs
    (every one of its training images at full size), ``flop_share`` against this run all at full size."""
    spec = DATASETS[name]
    full = f'{spec["full"]}x{spec["full"]}'
    counts = timing['images_per_size']
    flops = _flops_per_image(spec['model'], sorted(set(counts) | {full}))
    spent = sum(n * flops[s] for s, n in counts.items())
    seen = sum(counts.values())
    ref_images = spec['epochs'] * (train_images // spec['batch_size']) * spec['batch_size']  # train.py drops the last
    batches = timing['batches_per_size']
    columns = {
        'train_sizes': ' '.join(f'{s}:{counts[s]}' for s in sorted(counts, key=lambda s: -int(s.split('x')[0]))),
        'reduced_batch_share': round(1 - batches.get(full, 0) / max(sum(batches.values()), 1), 4),
        'flop_share': round(spent / (seen * flops[full]), 4) if seen else float('nan'),
        'compute': round(spent / (ref_images * flops[full]), 4),
        'train_tflops': round(3 * spent / 1e12, 3),  # forward + backward ~ 3 x forward
    }
    if 'train_trd_saved_cum' in summary_last:
        columns['compute_plugin'] = round(
            (1.0 - float(summary_last['train_trd_saved_cum'])) * config_epochs(name, config) / spec['epochs'], 4)
    return columns


def run_one(name, config, seed, data, runs_dir, workers, probe_images=1000, eval_max_images=None):
    spec, cfg = DATASETS[name], CONFIGS[config]
    run = f'{name}-{config}-s{seed}'
    result_file = runs_dir / f'{run}.json'
    epochs = config_epochs(name, config)
    if result_file.is_file():
        result = json.loads(result_file.read_text())
        if (result.get('epochs'), result.get('train_per_class')) != (epochs, spec['train_per_class']):
            sys.exit(f'reproduce: {result_file} is a run of {result.get("epochs")} epochs on '
                     f'{result.get("train_per_class")} images per class, not {epochs} on {spec["train_per_class"]}; '
                     f'use another --out')
        log(f'{run}: done before, skipped')
        return result
    run_dir = runs_dir / run  # train.py's output folder
    timing_file = runs_dir / f'{run}.timing.json'
    if timing_file.is_file() and (run_dir / 'last.pth.tar').is_file():
        log(f'{run}: trained before, evaluating')
    else:  # a leftover of an interrupted sitting is redone
        if run_dir.exists():
            shutil.rmtree(run_dir)
        timing_file.unlink(missing_ok=True)
        argv = train_args(name, config, seed, data, runs_dir, run, workers)
        log(f'{run}: training ({epochs} epochs)')
        with open(runs_dir / f'{run}.log', 'w') as logfile:
            code = subprocess.call([sys.executable, __file__, '_train', str(timing_file), *argv],
                                   stdout=logfile, stderr=subprocess.STDOUT, env=_child_env())
        if code != 0:
            sys.exit(f'reproduce: {run} failed (exit {code}); see {runs_dir / (run + ".log")}')
    with open(run_dir / 'summary.csv') as f:
        last = list(csv.DictReader(f))[-1]  # validation runs once, after the last epoch
    timing = json.loads(timing_file.read_text())

    eval_json = runs_dir / f'{run}.eval.json'
    argv = eval_args(name, run_dir / 'last.pth.tar', data, eval_json, workers, probe_images, eval_max_images)
    log(f'{run}: timm-trd-eval')
    with open(runs_dir / f'{run}.eval.txt', 'w') as logfile:
        code = subprocess.call([sys.executable, '-m', 'timm_trd.evaluation.evaluate', *argv], stdout=logfile,
                               stderr=subprocess.STDOUT, env=_child_env(), cwd=str(REPO))
    if code != 0:
        sys.exit(f'reproduce: timm-trd-eval of {run} failed (exit {code}); see {runs_dir / (run + ".eval.txt")}')
    from timm_trd.evaluation.evaluate import flatten

    reduced = reduced_size(name, config)
    train_images = sum(1 for p in (data / 'train').rglob('*') if p.is_file())
    result = {
        'dataset': name, 'config': config, 'label': cfg.label, 'prob': cfg.prob, 'full_res_epochs': cfg.tail,
        'seed': seed, 'full': spec['full'], 'reduced': reduced,
        'train_size': reduced if cfg.train_at_reduced else spec['full'],
        'train_args': ' '.join(a.format(full=spec['full'], reduced=reduced) for a in cfg.extra),
        'epochs': epochs, 'ref_epochs': spec['epochs'], 'train_per_class': spec['train_per_class'],
        'train_seconds': round(sum(timing['epoch_seconds']), 2),
        **compute_columns(name, config, timing, last, train_images),
        # train.py's own validation, at the size it trained at (the reduced size for 'lowres')
        'top1_trainpy': float(last['eval_top1']),
        'trainpy_test_size': reduced if cfg.train_at_reduced else spec['full'],
        **flatten(json.loads(eval_json.read_text())),
    }
    result_file.write_text(json.dumps(result, indent=1))
    log(f'{run}: top-1 {result["top1"]:.2f} at {spec["full"]} px, {result["train_seconds"]:.0f} s training, '
        f'compute {result["compute"]:.3f}, shape bias {result["shape_bias"]:.3f}')
    return result


# -- report ----------------------------------------------------------------------------------------
def _mean_std(values):
    values = [float(v) for v in values if v is not None and v == v]
    if not values:
        return float('nan'), float('nan')
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else float('nan'))


def _cell(group, key, digits=2):
    if not any(key in r for r in group):
        return 'n/a'
    m, s = _mean_std(r.get(key) for r in group)
    return f'{m:.{digits}f} ± {s:.{digits}f}'


def _groups(rows):
    """(config, runs) in CONFIGS order, then any unknown config name."""
    names = [c for c in CONFIGS if any(r['config'] == c for r in rows)]
    names += sorted({r['config'] for r in rows} - set(names))
    return [(c, [r for r in rows if r['config'] == c]) for c in names]


def _label(config, group):
    cfg = CONFIGS.get(config)
    return cfg.label if cfg else group[0].get('label', config)


def _probe_keys(rows, prefix):
    keys = dict.fromkeys(k for r in rows for k in r if k.startswith(prefix))
    return sorted(keys, key=lambda k: float(k[len(prefix):]))


def report(results, out: Path):
    order = list(CONFIGS)
    results = sorted(results, key=lambda r: (r['dataset'], order.index(r['config']) if r['config'] in order
                                             else len(order), r['seed']))
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
        first = rows[0]
        base = [r for r in rows if r['config'] == 'baseline']
        base_time = statistics.mean(r['train_seconds'] for r in base) if base else float('nan')
        sizes = [int(round(spec['full'] * f)) for f in EVAL_FRACTIONS]
        blur, shuffle = _probe_keys(rows, 'top1_lowpass_'), _probe_keys(rows, 'top1_shuffle_')
        conflict = next((r['conflict_sigma_rel'] for r in rows if 'conflict_sigma_rel' in r), None)
        lines += [f'**{name}**: {spec["model"]}, {first["train_per_class"]} training images per class, batch '
                  f'{spec["batch_size"]}, reference {first.get("ref_epochs", first["epochs"])} epochs; tested at '
                  f'{spec["full"]} px (every column timm-trd-eval at {spec["full"]} px unless it names another size). '
                  'Compute: training FLOPs from the images measured at each size, over the baseline\'s at the '
                  'reference epochs. Blur: low-pass sigma as a fraction of the side; shuffle: k x k tiles; shape '
                  'bias: low/high-frequency cue conflict' + (f' split at sigma {conflict:g} of the side' if conflict
                                                             else '') + '. Mean ± std over seeds.'
                  + (' Runs made before timm-trd-eval (n/a probe columns): top-1 from train.py\'s validation, compute '
                     'from the plugin\'s accounting.' if any('eval_test_size' not in r for r in rows) else ''), '']
        columns = (['top-1', *[f'at {s}' for s in sizes], 'BN recal.']
                   + [f'blur {k[len("top1_lowpass_"):]}' for k in blur]
                   + [f'shuffle {k[len("top1_shuffle_"):]}x{k[len("top1_shuffle_"):]}' for k in shuffle]
                   + ['shape bias', 'train time (s)', 'time vs baseline', 'compute (FLOPs)'])
        lines += ['| arm | epochs | train size | seeds | ' + ' | '.join(columns) + ' |',
                  '|---|---|---|---|' + '---|' * len(columns)]
        for config, group in _groups(rows):
            cells = [_cell(group, k) for k in ['top1', *[f'top1_at_{s}' for s in sizes], 'top1_bn_recal', *blur, *shuffle]]
            cells.append(_cell(group, 'shape_bias', 3))
            t, _ = _mean_std(r['train_seconds'] for r in group)
            cells += [_cell(group, 'train_seconds', 0), f'{t / base_time:.3f}', _cell(group, 'compute', 3)]
            train_size = group[0].get('train_size', spec['full'])
            size_note = f'{train_size}' + (f' + {group[0]["reduced"]}' if group[0].get('prob') or
                                           '--train-img-sizes' in group[0].get('train_args', '') else '')
            lines.append(f'| {_label(config, group)} | {group[0]["epochs"]} | {size_note} | {len(group)} | '
                         + ' | '.join(cells) + ' |')
        lines.append('')
        lowres = [r for r in rows if r.get('train_size', spec['full']) != spec['full']]
        if lowres:
            lines += [f'Low resolution only: trained at {lowres[0]["train_size"]} px; train.py\'s own validation '
                      f'there gave {_cell(lowres, "top1_trainpy")}, the columns above are at {spec["full"]} px.', '']
    (out / 'results.md').write_text('\n'.join(lines))
    print('\n'.join(lines))
    plot(results, out / 'results.png', out / 'shape_bias.png')


def _machine_line(results, out: Path) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_trd import machine  # the benchmark's description of the machine, so both name it alike

    m = machine()
    sittings = out / 'sittings.txt'
    wall = sum(float(v) for v in sittings.read_text().split()) if sittings.is_file() else float('nan')
    return (f'Machine: {m["cpu"]}, {m["cpus"]} cores, torch {m["torch"]}, timm {m["timm"]}, '
            f'OMP_NUM_THREADS={_child_env()["OMP_NUM_THREADS"]}. {len(results)} runs, '
            f'{sum(r["train_seconds"] for r in results) / 60:.1f} min in train_one_epoch; '
            f'sittings (training, validation, timm-trd-eval) {wall:.1f} min in all.')


_COLOURS = ['tab:blue', 'tab:orange', 'tab:green', 'tab:red', 'tab:purple', 'tab:brown', 'tab:pink', 'tab:olive',
            'tab:cyan', 'gold', 'navy', 'lime']


def _draw(ax, rows, x_key, y_key):
    """The frontier configs as one black line through their (mean x, mean y); every other config a point, arms
    of the same label (TRD P 0.5 at two budgets, say) in one colour joined by a dotted line; +- std error bars."""
    labels = list(dict.fromkeys(CONFIGS[c].label for c in CONFIGS if not CONFIGS[c].frontier))
    lines = {}
    for config, group in _groups(rows):
        mx, sx = _mean_std(r.get(x_key) for r in group)
        my, sy = _mean_std(r.get(y_key) for r in group)
        if my != my:
            continue
        cfg = CONFIGS.get(config)
        label = 'baseline' if cfg and cfg.frontier else _label(config, group)
        lines.setdefault(label, []).append((mx, my, 0 if sx != sx else sx, 0 if sy != sy else sy,
                                            group[0]['epochs'], len(group)))
    for label, points in lines.items():
        points.sort()
        xs, ys, sxs, sys_, eps, ns = zip(*points)
        text = f'{label}, {"/".join(str(e) for e in eps)} epochs (n={"/".join(map(str, ns))})'
        if label == 'baseline':
            ax.errorbar(xs, ys, xerr=sxs, yerr=sys_, fmt='s-', capsize=3, color='black', zorder=3, label=text)
        else:
            colour = _COLOURS[(labels.index(label) if label in labels else len(labels)) % len(_COLOURS)]
            ax.errorbar(xs, ys, xerr=sxs, yerr=sys_, fmt='o:' if len(points) > 1 else 'o', capsize=3,
                        color=colour, label=text)
    return bool(lines)


def plot(results, path: Path, bias_path: Path):
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        log('matplotlib is not installed (pip install matplotlib): no plot')
        return
    names = list(dict.fromkeys(r['dataset'] for r in results))
    fig, axes = plt.subplots(len(names), 2, figsize=(13, 5 * len(names)), squeeze=False)
    for (ax_time, ax_flops), name in zip(axes, names):
        rows = [r for r in results if r['dataset'] == name]
        spec = DATASETS[name]
        for ax, x_key, x_label in ((ax_time, 'train_seconds', 'training time (s, sum of train_one_epoch)'),
                                   (ax_flops, 'compute', 'training FLOPs (share of the baseline at '
                                                         f'{rows[0].get("ref_epochs", spec["epochs"])} epochs)')):
            _draw(ax, rows, x_key, 'top1')
            ax.set_title(f'{name}: top-1 at {spec["full"]} px')
            ax.set_xlabel(x_label)
            ax.set_ylabel('top-1 (%)')
            ax.grid(alpha=0.3)
        ax_flops.legend(fontsize=7, loc='lower right')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    log(f'wrote {path}')

    with_bias = [n for n in names if any('shape_bias' in r for r in results if r['dataset'] == n)]
    if not with_bias:
        return
    fig, axes = plt.subplots(1, len(with_bias), figsize=(6.5 * len(with_bias), 4.5), squeeze=False)
    for ax, name in zip(axes[0], with_bias):
        rows = [r for r in results if r['dataset'] == name and 'shape_bias' in r]
        _draw(ax, rows, 'compute', 'shape_bias')
        sigma = rows[0].get('conflict_sigma_rel')
        ax.set_title(f'{name}: low/high-frequency cue-conflict shape bias (split at sigma {sigma:g} of the side)',
                     fontsize=9)
        ax.set_xlabel('training FLOPs (share of the baseline\'s)')
        ax.set_ylabel('shape bias = #A / #(A or B)')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(bias_path, dpi=110)
    plt.close(fig)
    log(f'wrote {bias_path}')


def copy_results(out: Path, results_dir: Path, stem: str):
    """results.{csv,md,png} and shape_bias.png of OUT as STEM.{csv,md,png} and STEM_shape_bias.png."""
    results_dir.mkdir(parents=True, exist_ok=True)
    for source, target in (('results.csv', f'{stem}.csv'), ('results.md', f'{stem}.md'),
                           ('results.png', f'{stem}.png'), ('shape_bias.png', f'{stem}_shape_bias.png')):
        if (out / source).is_file():
            shutil.copyfile(out / source, results_dir / target)
            log(f'copied {out / source} to {results_dir / target}')


def plan(args):
    """(dataset, config, seed) in the order to run them: seeds outermost, so every finished seed is a complete
    comparison."""
    if args.frontier:
        datasets, counts = [FRONTIER_DATASET], dict(FRONTIER)
        if args.configs:
            counts = {c: counts.get(c, 3) for c in args.configs}
        seeds = {c: args.seeds or list(range(n)) for c, n in counts.items()}
    else:
        datasets = args.datasets
        seeds = {c: args.seeds or [0, 1, 2] for c in (args.configs or DEFAULT_CONFIGS)}
    every_seed = sorted({s for v in seeds.values() for s in v})
    return [(name, config, seed) for name in datasets for seed in every_seed
            for config in seeds if seed in seeds[config]]


def _value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def import_results(csv_path: Path, runs_dir: Path) -> int:
    """Write each row of an earlier results.csv as ``runs_dir/<dataset>-<config>-s<seed>.json`` unless that run
    exists (empty cells are left out, numbers become numbers); returns how many were written."""
    written = 0
    with open(csv_path) as f:
        for row in csv.DictReader(f):
            path = runs_dir / f'{row["dataset"]}-{row["config"]}-s{row["seed"]}.json'
            if not path.is_file():
                path.write_text(json.dumps({k: _value(v) for k, v in row.items() if v != ''}, indent=1))
                written += 1
    log(f'{csv_path}: {written} earlier runs imported into {runs_dir}')
    return written


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--train-script', default=None, help="timm's train.py (default: $TIMM_TRAIN_SCRIPT)")
    parser.add_argument('--shared', default=str(REPO.parent / 'shared' / 'datasets'),
                        help='folder with cifar10.tar.gz and imagenette-224.tar (default: ../shared/datasets)')
    parser.add_argument('--cache', default=str(REPO / 'outputs' / 'cache'), help='where archives are extracted')
    parser.add_argument('--out', default=None,
                        help='runs and results (default: outputs/reproduce, with --frontier outputs/frontier)')
    parser.add_argument('--frontier', action='store_true',
                        help=f'the compute-matched frontier on {FRONTIER_DATASET}: ' + ', '.join(
                            f'{c} x{n} seeds' for c, n in FRONTIER.items()))
    parser.add_argument('--datasets', nargs='+', default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument('--configs', nargs='+', default=None, choices=list(CONFIGS),
                        help=f'arms to run (default: {" ".join(DEFAULT_CONFIGS)}; with --frontier a subset of its arms)')
    parser.add_argument('--seeds', nargs='+', type=int, default=None,
                        help='seeds of every arm (default: 0 1 2; with --frontier each arm\'s own count)')
    parser.add_argument('--epochs', type=int, default=None,
                        help='override every dataset\'s reference epoch count (arms keep their factor of it)')
    parser.add_argument('--train-per-class', type=int, default=None, help='override the training subset size')
    parser.add_argument('--workers', type=int, default=1,
                        help='loader workers per run (default 1: on 2 cores, one decodes while one trains)')
    parser.add_argument('--probe-images', type=int, default=1000,
                        help='test images for timm-trd-eval\'s blur, shuffle and cue-conflict probes (0: all)')
    parser.add_argument('--eval-max-images', type=int, default=None,
                        help='cap the test images of every evaluation (a seeded subset; for quick checks)')
    parser.add_argument('--only-report', action='store_true',
                        help='rebuild the tables from finished runs (give the same --epochs/--train-per-class as the runs)')
    parser.add_argument('--import-results', default=None, metavar='CSV',
                        help='an earlier sitting\'s results.csv (e.g. results/frontier.csv): its runs count as finished '
                             'ones of this OUT (written as OUT/runs/<run>.json where none exists), so a sitting can '
                             'add arms to a published table')
    parser.add_argument('--results-dir', default=None,
                        help='also copy the tables and plots there, as reproduce.* or (with --frontier) frontier.*')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.train_script:
        os.environ['TIMM_TRAIN_SCRIPT'] = args.train_script
    for spec in DATASETS.values():
        spec['epochs'] = args.epochs or spec['epochs']
        spec['train_per_class'] = args.train_per_class or spec['train_per_class']
    out = Path(args.out or REPO / 'outputs' / ('frontier' if args.frontier else 'reproduce'))
    runs_dir = out / 'runs'
    runs_dir.mkdir(parents=True, exist_ok=True)
    results = []
    start = time.time()
    if args.import_results:
        import_results(Path(args.import_results), runs_dir)
    if args.only_report:
        results = [json.loads(p.read_text()) for p in sorted(runs_dir.glob('*-s*.json'))
                   if not p.name.endswith(('.timing.json', '.eval.json'))]
    else:
        if not os.environ.get('TIMM_TRAIN_SCRIPT'):
            sys.exit('reproduce: needs timm\'s train.py: pass --train-script or set TIMM_TRAIN_SCRIPT')
        runs = plan(args)
        for name, config, _ in runs:  # stop on a bad combination before any training
            reduced_size(name, config)
        data = {name: prepare_dataset(name, Path(args.shared), Path(args.cache)) for name in dict.fromkeys(r[0] for r in runs)}
        log(f'{len(runs)} runs: ' + ', '.join(f'{c}-s{s}' for _, c, s in runs))
        for name, config, seed in runs:
            results.append(run_one(name, config, seed, data[name], runs_dir, args.workers, args.probe_images,
                                   args.eval_max_images))
        minutes = (time.time() - start) / 60
        log(f'this sitting took {minutes:.1f} min')
        with open(out / 'sittings.txt', 'a') as f:
            f.write(f'{minutes:.2f}\n')
    report(results, out)
    if args.results_dir and results:
        copy_results(out, Path(args.results_dir), 'frontier' if args.frontier else 'reproduce')


if __name__ == '__main__':
    if len(sys.argv) > 2 and sys.argv[1] == '_train':
        timed_train(sys.argv[2], sys.argv[3:])
    else:
        main()
