#!/usr/bin/env python3
"""What a reduced image costs to load, next to a full one: today, decoded at a reduced JPEG scale, from a copy.

    python experiments/bench_loader.py --data /path/to/imagenet/train --copy /path/to/cache/imagenet-half
    python experiments/bench_loader.py --data /path/to/imagenette/train --copy /path/to/cache/imagenette-half

Part 1, per worker: one process, one thread, timm's training transform as train.py builds it (prefetcher on:
the workers stop at a uint8 tensor; ``--no-prefetcher``: tensor conversion and normalisation in the worker),
for timm's default ImageNet transform (random resized crop, flip, colour jitter) and with RandAugment
(``--aa``). The modes take turns image set by image set, in a new random order every round:

  full        timm's path at the full size F (decode, crop to F)
  reduced     timm's path at the reduced size S today (full decode, crop to S)
  fast        --trd-fast-decode (the plugin's rule): decoded at the largest DCT scale that leaves the crop S px
  fast-fixed  the other rule: decoded at F/S (1/2 for 224 -> 112), the same crop cut at that scale
  copy        --trd-reduced-copy (with fast decode, the plugin's default): every reduced image from the copy
  copy-fits   the copy only when the crop has S px there, else the original at the crop's scale

For each: ms per image and images/s (median over rounds), the ratio to ``full``, and the breakdown: decode
(open, draft, convert), crop (the random resized crop, to F or S), rest (flip, jitter or RandAugment, tensor).
Then the PSNR of each mechanism's reduced image against today's, for the same seed (same crop,
interpolation, flip and jitter), on [0, 1] pixels.

Part 2, the loader path: timm's ``create_loader`` with the scheduled sizes, the plugin's ``attach`` (as
train.py gets it), ``--loader-workers`` workers feeding a no-op model: all-full against all-reduced epochs,
images/s, today / fast / copy, interleaved.

Part 3, the reduced copy: written with timm-trd-reduced-copy when ``--copy`` has none (preparation time, disk).

Part 4 (``--subsampling-images N``), fast decode and chroma subsampling: the share of the images under each rule
of ``timm_trd.data.decode.colour_scale``, and the PSNR per subsampling (N photos re-encoded at each), with and without it.

Then the loader workers each GPU needs so that steps are not data-bound, from the per-worker images/s and the
GPU's step throughput (``--gpu-img-s`` at F, ``--gpu-speedup`` at S). Prints tables, writes JSON (``--out``).
"""

import argparse
import json
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from timm.data import ImageDataset, create_loader, create_transform  # noqa: E402

from timm_trd.data.decode import ReducedLoading, attach, split_transform  # noqa: E402
from timm_trd.data.reduced_copy.make import MANIFEST, image_files, make_copy  # noqa: E402

MODES = ('full', 'reduced', 'fast', 'fast-fixed', 'copy', 'copy-fits')


def transform(size, aa=None, prefetcher=True, unit=False):
    kw = dict(mean=(0, 0, 0), std=(1, 1, 1)) if unit else {}
    return create_transform(size, is_training=True, auto_augment=aa, use_prefetcher=prefetcher and not unit,
                            interpolation='random', **kw)


class Today:
    """timm's path: ``ImageDataset`` decodes at full size, then the transform (crop first)."""

    def __init__(self, tf):
        self.crop, self.rest = split_transform(tf)
        self.crop = self.crop.rrc

    def load(self, path, marks):
        img = Image.open(open(path, 'rb')).convert('RGB')
        marks.append(time.perf_counter())
        img = self.crop(img)
        marks.append(time.perf_counter())
        return self.rest(img)


class Mechanism:
    def __init__(self, loading: ReducedLoading):
        self.loading = loading

    def load(self, path, marks):
        return self.loading.load(open(path, 'rb'), self.loading.copy_path(str(path)), marks=marks)


def pipelines(args, aa, root, copy_dir, unit=False):
    full_tf = transform(args.img_size, aa, args.prefetcher, unit)
    red_tf = transform(args.trd_size, aa, args.prefetcher, unit)
    hw = (args.img_size, args.img_size)
    out = {
        'full': Today(full_tf),
        'reduced': Today(red_tf),
        'fast': Mechanism(ReducedLoading(red_tf, 'RGB')),
        'fast-fixed': Mechanism(ReducedLoading(red_tf, 'RGB', rule='fixed', full_hw=hw)),
    }
    if copy_dir:
        out['copy'] = Mechanism(ReducedLoading(red_tf, 'RGB', copy_dir=copy_dir, source_root=root))
        out['copy-fits'] = Mechanism(ReducedLoading(red_tf, 'RGB', copy_dir=copy_dir, source_root=root,
                                                    copy_rule='when-fits'))
    return out


def per_worker(args, files, root, copy_dir):
    """Part 1: ms per image and its breakdown, per transform and mode, interleaved over rounds."""
    rng = random.Random(args.seed)
    results = {}
    for aa_name, aa in (('default', None), ('randaugment', args.aa)):
        pipes = pipelines(args, aa, root, copy_dir)
        rounds = {m: [] for m in pipes}
        for r in range(args.warmup_rounds + args.rounds):
            order = list(pipes)
            rng.shuffle(order)
            for mode in order:
                random.seed(r)
                torch.manual_seed(r)
                stages = np.zeros(3)
                for path in files:
                    marks = [time.perf_counter()]
                    pipes[mode].load(path, marks)
                    marks.append(time.perf_counter())
                    stages += np.diff(marks)
                if r >= args.warmup_rounds:
                    rounds[mode].append(1e3 * stages / len(files))
        summary = {}
        for mode, values in rounds.items():
            totals = [v.sum() for v in values]
            median_round = values[int(np.argsort(totals)[len(totals) // 2])]
            ms = statistics.median(totals)
            summary[mode] = dict(ms=ms, img_s=1e3 / ms, rounds_ms=totals,
                                 decode_ms=median_round[0], crop_ms=median_round[1], rest_ms=median_round[2])
        for mode in summary:
            summary[mode]['ratio'] = summary[mode]['ms'] / summary['full']['ms']
            paired = [t / f for t, f in zip(summary[mode]['rounds_ms'], summary['full']['rounds_ms'])]
            summary[mode]['ratio_paired'] = statistics.median(paired)
        results[aa_name] = summary
    return results


def psnr(a, b):
    mse = torch.mean((a.float() - b.float()) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def quality(args, files, root, copy_dir):
    """PSNR of each mechanism's reduced image against today's, same seed; [0, 1] pixels."""
    pipes = pipelines(args, None, root, copy_dir, unit=True)
    ref = pipes.pop('reduced')
    pipes.pop('full')
    values = {m: [] for m in pipes}
    for n, path in enumerate(files):
        random.seed(n)
        torch.manual_seed(n)
        today = ref.load(path, [])
        for mode, pipe in pipes.items():
            random.seed(n)
            torch.manual_seed(n)
            values[mode].append(psnr(today, pipe.load(path, [])))
    out = {}
    for mode, v in values.items():
        finite = np.array([x for x in v if math.isfinite(x)])
        capped = np.minimum(np.array(v), 60.0)  # identical images (scale 1) count as 60 dB in the mean
        out[mode] = dict(mean=float(capped.mean()), median=float(np.median(capped)),
                         p5=float(np.percentile(capped, 5)), min=float(capped.min()),
                         identical=float(1 - len(finite) / len(v)))
    return out


def subset_view(root, copy_dir, count, where):
    """The first ``count`` images of ``root`` (and of its copy, with its record cut to them) as folders of symbolic
    links, so that an epoch is ``count`` images and the copy still passes the plugin's check."""
    import shutil
    from timm_trd.data.reduced_copy import index as ci
    where = Path(where)
    shutil.rmtree(where, ignore_errors=True)
    rels = image_files(root)[:count]
    for base, target in ((root, where / 'train'), (copy_dir, where / 'copy')):
        if base is None:
            continue
        for rel in rels:
            if os.path.exists(os.path.join(base, rel)):
                (target / rel).parent.mkdir(parents=True, exist_ok=True)
                os.symlink(os.path.realpath(os.path.join(base, rel)), target / rel)
    if copy_dir:
        manifest = ci.load_manifest(copy_dir)
        settings = {k: manifest[k] for k in ('version', 'scale', 'quality', 'input_img_mode')}
        wanted = set(rels)
        entries = [e for e in ci.read_entries(os.path.join(copy_dir, ci.INDEX), settings).values() if e.rel in wanted]
        manifest.update(images=len(entries), copied=sum(not e.skipped for e in entries),
                        skipped=sum(e.skipped for e in entries),
                        index_sha256=ci.write_index(str(where / 'copy' / ci.INDEX), settings, entries))
        ci.write_manifest(str(where / 'copy'), manifest)
    return str(where / 'train'), (str(where / 'copy') if copy_dir else None)


def subsampling_of(img):
    """'4:4:4', '4:2:2', ... or 'grey' / 'other', from an opened JPEG's frame header."""
    layers = getattr(img, 'layer', None) or []
    if len(layers) == 1:
        return 'grey'
    names = {(1, 1): '4:4:4', (2, 1): '4:2:2', (2, 2): '4:2:0', (4, 1): '4:1:1', (1, 2): '4:4:0'}
    if len(layers) == 3 and all(tuple(l[1:3]) == (1, 1) for l in layers[1:]):
        return names.get(tuple(layers[0][1:3]), 'other')
    return 'other'


def subsampling(args, files):
    """Part 4, fast decode and chroma subsampling: the share of the data set's JPEGs under each rule of
    ``decode.colour_scale`` (from their headers), and the PSNR of fast decode against today's reduced image with
    the first ``--subsampling-images`` photos re-encoded at every subsampling (quality 90; Pillow for 4:4:4,
    4:2:2, 4:2:0 and greyscale, the test suite's encoder for 4:1:1 and 4:4:0), with the rule and without it."""
    import io
    from timm_trd.data import decode
    sys.path.insert(0, str(ROOT / 'tests'))
    import jpeg_sampling
    shares = {}
    for path in files:
        with Image.open(path) as img:
            name = subsampling_of(img) if img.format == 'JPEG' else 'not JPEG'
            limit = decode.colour_scale(img) if img.format == 'JPEG' else None
        key = (name, limit)
        shares[key] = shares.get(key, 0) + 1
    tf = transform(args.trd_size, None, True, unit=True)
    rule_on, rule_off = decode.colour_scale, (lambda img: 8)
    table = {}
    for name in ('4:4:4', '4:2:0', '4:2:2', '4:1:1', '4:4:0', 'grey'):
        datas = []
        for path in files[:args.subsampling_images]:
            picture = Image.open(path).convert('L' if name == 'grey' else 'RGB')
            if name in ('4:1:1', '4:4:0'):
                datas.append(jpeg_sampling.encode(picture, name, 90))
            else:
                out = io.BytesIO()
                picture.save(out, 'JPEG', quality=90, subsampling=0 if name == 'grey' else name)
                datas.append(out.getvalue())
        row = {}
        for label, rule in (('rule', rule_on), ('no rule', rule_off)):
            decode.colour_scale = rule
            try:
                loading = ReducedLoading(tf, 'RGB')
                values = []
                for n, data in enumerate(datas):
                    random.seed(n)
                    torch.manual_seed(n)
                    ref = tf(Image.open(io.BytesIO(data)).convert('RGB'))
                    random.seed(n)
                    torch.manual_seed(n)
                    values.append(min(psnr(ref, loading.load(io.BytesIO(data))), 60.0))
            finally:
                decode.colour_scale = rule_on
            v = np.array(values)
            row[label] = dict(mean=float(v.mean()), p5=float(np.percentile(v, 5)), min=float(v.min()))
        table[name] = row
    return dict(shares=[dict(subsampling=k[0], max_scale=k[1], images=n, share=n / len(files))
                        for k, n in sorted(shares.items(), key=lambda kv: -kv[1])], psnr=table,
                images=len(files), reencoded=min(args.subsampling_images, len(files)))


def loader_path(args, root, copy_dir, count):
    """Part 2: timm's scheduled loader with the plugin's attach, workers feeding a no-op model."""
    root, copy_dir = subset_view(root, copy_dir, count, args.scratch)
    full, small = (3, args.img_size, args.img_size), (3, args.trd_size, args.trd_size)
    modes = {'today': dict(fast_decode=False), 'fast': dict(fast_decode=True)}
    if copy_dir:
        modes['copy'] = dict(fast_decode=True, reduced_copy=copy_dir)
    loaders = {}
    for mode, kw in modes.items():
        for size, weights in (('full', [1.0, 0.0]), ('reduced', [0.0, 1.0])):
            dataset = ImageDataset(root)
            loader = create_loader(
                dataset, input_size=full, batch_size=args.batch_size, is_training=True,
                use_prefetcher=args.prefetcher, device=torch.device('cpu'), num_workers=args.loader_workers,
                persistent_workers=True, input_size_choices=[full, small], batch_choice_weights=weights,
                batch_choice_seed=0)
            if kw['fast_decode'] or kw.get('reduced_copy'):
                attach(loader, **kw, log=False)
            loaders[(mode, size)] = getattr(loader, 'loader', loader)  # the DataLoader: no-op model, no prefetch
    rng = random.Random(args.seed + 1)
    times = {key: [] for key in loaders}
    for r in range(1 + args.loader_rounds):
        order = list(loaders)
        rng.shuffle(order)
        for key in order:
            start, images = time.perf_counter(), 0
            for x, _ in loaders[key]:
                images += x.shape[0]
            if r > 0:
                times[key].append(images / (time.perf_counter() - start))
    out = {}
    for (mode, size), rates in times.items():
        out.setdefault(mode, {})[size] = statistics.median(rates)
    for mode in out:
        out[mode]['ratio'] = out[mode]['full'] / out[mode]['reduced']  # time per reduced image / per full one
    return out


def ensure_copy(args, root):
    if not args.copy:
        return None, None
    manifest = Path(args.copy) / MANIFEST
    if not manifest.exists():
        make_copy(root, args.copy, quality=args.copy_quality, workers=args.copy_workers, progress=True)
    info = json.loads(manifest.read_text())
    return args.copy, info


def workers_needed(args, per):
    """Loader workers per GPU so that full and reduced steps are not data-bound."""
    gpu_full, gpu_small = args.gpu_img_s, args.gpu_img_s * args.gpu_speedup
    s = per['default']
    rows = {}
    for label, mode in (('today', 'reduced'), ('fast decode', 'fast'), ('reduced copy', 'copy')):
        if mode in s:
            rows[label] = dict(full=gpu_full / s['full']['img_s'], reduced=gpu_small / s[mode]['img_s'])
    return rows


def print_tables(args, info):
    print(f"\n== {info['data']} ({info['images']} images), {args.img_size} vs {args.trd_size} px, "
          f"prefetcher {'on' if args.prefetcher else 'off'}, one thread per worker ==")
    for aa_name, summary in info['per_worker'].items():
        print(f'\nper worker, {aa_name} transform: ms per image (decode + crop + rest), images/s, '
              f'ratio to full (median of rounds; paired: median of per-round ratios)')
        print('| mode | ms/img | decode | crop | rest | img/s | ratio | paired |')
        print('|---|---|---|---|---|---|---|---|')
        for mode, s in summary.items():
            print(f"| {mode} | {s['ms']:.2f} | {s['decode_ms']:.2f} | {s['crop_ms']:.2f} | {s['rest_ms']:.2f} | "
                  f"{s['img_s']:.0f} | {s['ratio']:.3f} | {s['ratio_paired']:.3f} |")
    print('\nPSNR of the reduced image against today\'s (same crop, flip, jitter), dB; identical counts as 60')
    print('| mechanism | mean | median | p5 | min | identical |')
    print('|---|---|---|---|---|---|')
    for mode, q in info['psnr'].items():
        print(f"| {mode} | {q['mean']:.1f} | {q['median']:.1f} | {q['p5']:.1f} | {q['min']:.1f} | "
              f"{100 * q['identical']:.0f}% |")
    if info.get('loader'):
        print(f"\nloader path, {args.loader_workers} workers feeding a no-op model: images/s, "
              f"and time per reduced image / per full one")
        print('| mode | full img/s | reduced img/s | ratio |')
        print('|---|---|---|---|')
        for mode, s in info['loader'].items():
            print(f"| {mode} | {s['full']:.0f} | {s['reduced']:.0f} | {s['ratio']:.3f} |")
    if info.get('subsampling'):
        sub = info['subsampling']
        print(f"\nchroma subsampling of the {sub['images']} images and the largest DCT scale fast decode uses")
        print('| subsampling | max scale | images | share |')
        print('|---|---|---|---|')
        for r in sub['shares']:
            print(f"| {r['subsampling']} | {'-' if r['max_scale'] is None else '1/' + str(r['max_scale'])} | "
                  f"{r['images']} | {100 * r['share']:.1f}% |")
        print(f"\nPSNR of fast decode against today's reduced image, {sub['reencoded']} images re-encoded at each "
              f"subsampling (quality 90), {args.trd_size} px, dB: with the rule / without it (every scale)")
        print('| subsampling | mean | p5 | min | mean, no rule | p5, no rule | min, no rule |')
        print('|---|---|---|---|---|---|---|')
        for name, row in sub['psnr'].items():
            a, b = row['rule'], row['no rule']
            print(f"| {name} | {a['mean']:.1f} | {a['p5']:.1f} | {a['min']:.1f} | {b['mean']:.1f} | {b['p5']:.1f} | "
                  f"{b['min']:.1f} |")
    if info.get('copy'):
        c = info['copy']
        print(f"\nreduced copy: {c['images']} images, {c['copy_bytes'] / 2**20:.1f} MiB = "
              f"{c['copy_bytes'] / c['source_bytes']:.2f} of the original {c['source_bytes'] / 2**20:.1f} MiB, "
              f"JPEG quality {c['quality']}; written in {c['seconds_this_run']:.1f} s "
              f"({c['written_this_run']} images, {args.copy_workers} processes)")
    print(f"\nloader workers per GPU (ResNet-50 at {args.gpu_img_s:.0f} img/s full, x{args.gpu_speedup:g} reduced; "
          f"default transform, per-worker img/s above)")
    print('| loading | full steps | reduced steps |')
    print('|---|---|---|')
    for label, w in info['workers_per_gpu'].items():
        print(f"| {label} | {w['full']:.1f} | {w['reduced']:.1f} |")
    targets = []
    s = info['per_worker']['default']
    targets.append(('fast ratio <= 0.55', s['fast']['ratio'] <= 0.55, s['fast']['ratio']))
    if 'copy' in s:
        targets.append(('copy ratio <= 0.35', s['copy']['ratio'] <= 0.35, s['copy']['ratio']))
    if info.get('loader'):
        ld = info['loader']
        targets.append(('full not slower than today (loader path, within 2%)',
                        ld['fast']['full'] >= 0.98 * ld['today']['full'], ld['fast']['full'] / ld['today']['full']))
    targets.append(('PSNR fast >= 30 dB (p5)', info['psnr']['fast']['p5'] >= 30, info['psnr']['fast']['p5']))
    if 'copy' in info['psnr']:
        targets.append(('PSNR copy >= 30 dB (p5)', info['psnr']['copy']['p5'] >= 30, info['psnr']['copy']['p5']))
    print('\ntargets: ' + '; '.join(f"{name}: {'holds' if ok else 'MISSED'} ({value:.3f})"
                                    for name, ok, value in targets))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--data', required=True, help='an image folder (timm layout), e.g. imagenet/train')
    p.add_argument('--copy', default=None, help='its reduced copy (written here first when absent)')
    p.add_argument('--copy-quality', type=int, default=90)
    p.add_argument('--copy-workers', type=int, default=2)
    p.add_argument('--images', type=int, default=400, help='images per mode and round (the first, sorted)')
    p.add_argument('--psnr-images', type=int, default=400)
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--trd-size', type=int, default=112)
    p.add_argument('--aa', default='rand-m9-mstd0.5', help='RandAugment policy of the second transform')
    p.add_argument('--no-prefetcher', dest='prefetcher', action='store_false')
    p.add_argument('--rounds', type=int, default=5)
    p.add_argument('--warmup-rounds', type=int, default=1)
    p.add_argument('--subsampling-images', type=int, default=0,
                   help='photos re-encoded at every chroma subsampling for part 4 (0: skip part 4)')
    p.add_argument('--loader-workers', type=int, default=2)
    p.add_argument('--loader-images', type=int, default=800)
    p.add_argument('--loader-rounds', type=int, default=3, help='0: skip the loader path')
    p.add_argument('-b', '--batch-size', type=int, default=32)
    p.add_argument('--gpu-img-s', type=float, default=2470.0,
                   help='ResNet-50 training img/s per GPU at the full size (A100 80GB, AMP: NVIDIA '
                        'DeepLearningExamples ResNet50 v1.5 PyTorch README)')
    p.add_argument('--gpu-speedup', type=float, default=4.0, help='step speedup at the reduced size')
    p.add_argument('--scratch', default='/tmp/trd-bench-loader', help='where the loader part\'s subset view goes')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out', default=str(ROOT / 'outputs' / 'bench_loader.json'))
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(1)
    root = os.path.abspath(args.data)
    files = [os.path.join(root, r) for r in image_files(root)]
    if not files:
        raise SystemExit(f'{root} holds no images')
    copy_dir, copy_info = ensure_copy(args, root)
    start = time.time()
    info = dict(data=root, images=min(args.images, len(files)), img_size=args.img_size, trd_size=args.trd_size,
                prefetcher=args.prefetcher, copy=copy_info, argv=sys.argv[1:] if argv is None else argv)
    info['per_worker'] = per_worker(args, files[:args.images], root, copy_dir)
    info['psnr'] = quality(args, files[:args.psnr_images], root, copy_dir)
    if args.loader_rounds > 0:
        info['loader'] = loader_path(args, root, copy_dir, min(args.loader_images, len(files)))
    if args.subsampling_images > 0:
        info['subsampling'] = subsampling(args, files)
    info['workers_per_gpu'] = workers_needed(args, info['per_worker'])
    info['seconds'] = time.time() - start
    print_tables(args, info)
    print(f'\n{info["seconds"]:.0f} s; JSON: {args.out}')
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(info, indent=1))
    return info


if __name__ == '__main__':
    main()
