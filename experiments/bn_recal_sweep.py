#!/usr/bin/env python3
"""How much BatchNorm recalibration changes a TRD model's full-size accuracy, and how many batches it needs.

For each checkpoint (e.g. the runs of ``experiments/reproduce.py``), the model's test top-1 at full size is measured
with the running statistics it was trained with (N = 0), then after recomputing them (what ``--trd-bn-recal N``
does before train.py's validation: :func:`timm_trd.plugin.bn_recal.recalibrate_bn`, torch's ``update_bn``, a plain
average) over N full-size training batches, for each N of ``--batches`` and for several recalibration samples
(``--recal-seeds``: which images, crops and flips the N batches hold). The training batches use timm's training
transform at full size (``--scale``, as the run trained) without mixup, as the plugin's recalibration loader does.

Writes one CSV row per (checkpoint, N, sample seed) and prints a table: mean and spread over training seeds of the
change against N = 0, with the recalibration's own seconds.

    python experiments/bn_recal_sweep.py --runs /work/runs/cifar/runs --data /work/cache/cifar10-1000pc \\
        --model test_resnet --img-size 32 --batch-size 128 --scale 0.35 1 --crop-pct 1.0 --out results/bn_recal_cifar10.csv
"""

import argparse
import copy
import csv
import random
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch


def _loaders(data, img_size, batch_size, scale, crop_pct, workers, model):
    from timm.data import create_dataset, resolve_data_config
    config = resolve_data_config({'img_size': img_size, 'crop_pct': crop_pct}, model=model)
    train_set = create_dataset('', root=str(data), split='train', is_training=True)
    val_set = create_dataset('', root=str(data), split='val', is_training=False)
    return config, train_set, val_set


def _top1(model, loader):
    correct = total = 0
    with torch.inference_mode():
        for images, target in loader:
            correct += (model(images).argmax(-1) == target).sum().item()
            total += target.shape[0]
    return 100.0 * correct / max(total, 1)


def sweep_checkpoint(path: Path, args) -> list:
    from timm.data import create_loader
    from timm.models import create_model, load_checkpoint
    from timm_trd.plugin.bn_recal import recalibrate_bn

    model = create_model(args.model, num_classes=args.num_classes)
    load_checkpoint(model, str(path))
    model.eval()
    config, train_set, val_set = _loaders(args.data, args.img_size, args.batch_size, args.scale, args.crop_pct,
                                          args.workers, model)
    val_loader = create_loader(val_set, input_size=config['input_size'], batch_size=256, is_training=False,
                               use_prefetcher=False, interpolation=config['interpolation'], mean=config['mean'],
                               std=config['std'], crop_pct=config['crop_pct'], num_workers=args.workers)
    rows = [{'batches': 0, 'recal_seed': '', 'top1': _top1(model, val_loader), 'seconds': 0.0}]
    for n in args.batches:
        for s in args.recal_seeds:
            torch.manual_seed(s)
            random.seed(s)
            np.random.seed(s)
            train_loader = create_loader(
                copy.copy(train_set), input_size=config['input_size'], batch_size=args.batch_size, is_training=True,
                use_prefetcher=False, scale=tuple(args.scale) if args.scale else None,
                interpolation=config['interpolation'], mean=config['mean'], std=config['std'],
                num_workers=args.workers)
            recal = copy.deepcopy(model)
            start = time.perf_counter()
            used = recalibrate_bn(recal, iter(train_loader), n)
            seconds = time.perf_counter() - start
            rows.append({'batches': used, 'recal_seed': s, 'top1': _top1(recal.eval(), val_loader),
                         'seconds': round(seconds, 2)})
            del train_loader
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--runs', required=True, help='folder holding <run>/last.pth.tar (reproduce.py OUT/runs)')
    parser.add_argument('--configs', nargs='+', default=None,
                        help='only these configs (run folders are named <dataset>-<config>-s<seed>)')
    parser.add_argument('--data', required=True, help='image folder with train/ and val/')
    parser.add_argument('--model', required=True)
    parser.add_argument('--num-classes', type=int, default=10)
    parser.add_argument('--img-size', type=int, required=True)
    parser.add_argument('--batch-size', type=int, required=True, help='recalibration batch size (the training one)')
    parser.add_argument('--scale', type=float, nargs=2, default=None)
    parser.add_argument('--crop-pct', type=float, default=None)
    parser.add_argument('--batches', type=int, nargs='+', default=[5, 20, 50, 100])
    parser.add_argument('--recal-seeds', type=int, nargs='+', default=[0, 1])
    parser.add_argument('--workers', type=int, default=1)
    parser.add_argument('--out', required=True, help='CSV, one row per (run, batches, sample seed)')
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    name = re.compile(r'^[^-]+-(?P<config>.+)-s(?P<seed>\d+)$')
    runs = sorted(p for p in Path(args.runs).iterdir() if (p / 'last.pth.tar').is_file() and name.match(p.name)
                  and (args.configs is None or name.match(p.name)['config'] in args.configs))
    if not runs:
        sys.exit(f'bn_recal_sweep: no <dataset>-<config>-s<seed>/last.pth.tar under {args.runs}'
                 f'{" for " + " ".join(args.configs) if args.configs else ""}')
    out = Path(args.out)
    done = set()
    if out.is_file():
        with open(out) as f:
            done = {r['run'] for r in csv.DictReader(f)}
    rows = []
    for run in runs:
        if run.name in done:
            continue
        m = name.match(run.name)
        start = time.perf_counter()
        for row in sweep_checkpoint(run / 'last.pth.tar', args):
            rows.append({'run': run.name, 'config': m['config'], 'seed': int(m['seed']), **row})
        print(f'[bn_recal_sweep] {run.name}: {time.perf_counter() - start:.0f} s', flush=True)
        new = not out.is_file()
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, 'a', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            if new:
                writer.writeheader()
            writer.writerows(r for r in rows if r['run'] == run.name)
    report(out)


def report(path: Path) -> str:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    base = {r['run']: float(r['top1']) for r in rows if int(r['batches']) == 0}
    lines = ['| config | N batches | runs x samples | top-1 | change vs N=0 (mean ± std) | seconds per recalibration |',
             '|---|---|---|---|---|---|']
    for config in sorted({r['config'] for r in rows}):
        for n in sorted({int(r['batches']) for r in rows}):
            group = [r for r in rows if r['config'] == config and int(r['batches']) == n]
            if not group:
                continue
            top1 = [float(r['top1']) for r in group]
            delta = [float(r['top1']) - base[r['run']] for r in group]
            secs = [float(r['seconds']) for r in group]
            sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0
            lines.append(f'| {config} | {n} | {len(group)} | {statistics.mean(top1):.2f} ± {sd(top1):.2f} | '
                         f'{statistics.mean(delta):+.2f} ± {sd(delta):.2f} | {statistics.mean(secs):.1f} |')
    table = '\n'.join(lines)
    print(table)
    path.with_suffix('.md').write_text(table + '\n')
    return table


if __name__ == '__main__':
    main()
