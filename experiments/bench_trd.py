#!/usr/bin/env python3
"""Measure what TRD saves: training step time at full and reduced size, next to the ideal ratio.

    python experiments/bench_trd.py                       # defaults: a few minutes on 2 CPU cores
    python experiments/bench_trd.py --data /path/to/imagenette --model resnet50 --img-size 224 --device cuda

Trains one timm model on one dataset in several configurations, interleaved (A B C A B C ...) so that
drift of a shared or throttling machine hits them all alike:

  baseline  timm's ``create_loader`` at the full size: train.py without TRD
  p0        the plugin's ``create_loader`` / ``train_one_epoch`` with ``--trd-prob 0`` (must be the baseline)
  loader    TRD, loader path: the plugin's ``create_loader`` (timm's scheduled loader, TRD plan)
  device    TRD, device path: the plugin's ``TRDLoader`` downsamples the collated batch
  timm      timm's own scheduled sizes, ``create_loader(input_size_choices=[F, S],
            batch_choice_weights=[1-P, P])``: train.py's ``--train-img-sizes F S --train-size-probs 1-P P``
            (only where the installed timm has it)

The TRD configurations go through :class:`timm_trd.plugin.hooks.TRDPlugin` exactly as train.py does: its
``create_loader`` builds the loader, its ``train_one_epoch`` sets the epoch, counts FLOPs once and adds the
epoch's figures. One round is one epoch of every configuration; an epoch is ``--steps`` batches (the
dataset is cut to steps x batch images), so a TRD epoch holds exactly round(P x steps) reduced batches.
With ``--workers 0`` the configurations take turns after every step (their epochs run in threads that
hand on a turn, one step at a time); with workers, after every epoch, so that no loader's workers
prefetch while another configuration trains. Round 0 is a warm-up, not timed; on the CPU it also
probes memory.

Per step: data = time blocked in ``next(loader)`` (on the device path this includes the downsample);
compute = forward, loss, backward and SGD step (synchronised on CUDA). Per configuration:

- median step time (data + compute) and images/s at each size;
- data ms/step: the mean time waiting for data; data ms/reduced: what a reduced batch costs in data
  time, from the totals (the epoch's data time less its full batches at the baseline's mean, per
  reduced batch). Totals, because timm's prefetcher prepares batch i+1 inside the call that returns
  batch i, so a single call's data time belongs partly to its neighbour;
- time ratio: total step time per step against the baseline's, next to the ideal
  ``1 - p (1 - (S/F)^2)`` for the share p of reduced batches it served (timm's own sampler draws its
  share at random); "(paired)" is ratio/ideal from the configuration's own median step times,
  1 - p (1 - reduced/full): both sizes run interleaved within one configuration, so it is free of the
  differences between configurations that a shared machine adds (JSON also has the ratio from
  per-size medians against the baseline's);
- peak memory per size: CUDA ``max_memory_allocated``; on the CPU, the peak of live tensor bytes
  during one step (torch's ``MemTracker``, in the warm-up round).

Writes JSON (``--out``, default ``outputs/bench_trd.json``) and prints a table.

``--compile-check`` instead counts torch.compile's compilations per epoch on each TRD path (with
torch's default automatic dynamic shapes and with ``torch._dynamo.mark_static`` on the input).
"""

import argparse
import json
import math
import os
import platform
import random
import statistics
import sys
import threading
import time
import types
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

import timm
from timm.data import create_dataset, create_loader, resolve_data_config

from timm_trd.data.dataset_view import DatasetView
from timm_trd.plugin.hooks import TRDPlugin
from timm_trd.data.toy_data import CLASSES, make_image_folder

ROOT = Path(__file__).resolve().parent.parent
ALL_CONFIGS = ('baseline', 'p0', 'loader', 'device', 'timm')


def timm_has_scheduled_sizes() -> bool:
    import inspect
    return 'input_size_choices' in inspect.signature(create_loader).parameters


# -- data --------------------------------------------------------------------------------------------
class InMemoryImages(torch.utils.data.Dataset):
    """Decoded images held in memory (no file reading or JPEG decoding); transforms still run."""

    def __init__(self, samples):
        self.samples, self.transform = samples, None

    def __getitem__(self, index):
        image, target = self.samples[index]
        return (self.transform(image) if self.transform is not None else image), target

    def __len__(self):
        return len(self.samples)


def resolve_data(args, count: int):
    """A factory of fresh datasets of ``count`` training images, and the number of classes.

    Every configuration gets its own dataset object (timm's ``create_loader`` sets ``dataset.transform``),
    all over the same images. With ``--data-images N`` (fewer than ``count``) N distinct images are taken and
    repeated in turn to fill ``count``: decoding and augmentation cost the same per item, and a few hundred real
    photos then feed a GPU's long epochs.
    """
    distinct = min(count, args.data_images) if args.data_images else count
    if args.data == 'generated':
        root = Path(args.data_cache) / f'shapes-{args.img_size}px-{distinct}'
        if not (root / 'train').is_dir():
            make_image_folder(root, size=args.img_size, train_per_class=math.ceil(distinct / len(CLASSES)),
                              val_per_class=0, seed=args.seed)
    else:
        root = Path(args.data)
    if (root / 'train').is_dir():
        root_split = (str(root), 'train')
    else:
        root_split = (str(root.parent), root.name)

    def base():
        return create_dataset('', root=root_split[0], split=root_split[1], is_training=True)

    probe = base()
    if len(probe) < distinct:
        sys.exit(f'bench_trd: {root} holds {len(probe)} training images; --steps x --batch-size needs {count} '
                 f'(or pass --data-images {len(probe)} to repeat them)')
    chosen = torch.randperm(len(probe), generator=torch.Generator().manual_seed(args.seed))[:distinct].tolist()
    indices = [chosen[i % distinct] for i in range(count)]
    class_to_idx = getattr(getattr(probe, 'reader', None), 'class_to_idx', None)
    num_classes = len(class_to_idx) if class_to_idx else 1000

    if args.in_memory:
        decoded = {}
        for i in chosen:
            image, target = probe[i]
            decoded[i] = (image.convert('RGB'), target)
            decoded[i][0].load()
        samples = [decoded[i] for i in indices]
        return (lambda: InMemoryImages(samples)), num_classes
    return (lambda: DatasetView(base(), indices)), num_classes


# -- one training step, timed ---------------------------------------------------------------------
class Trainer:
    """The shared model and optimizer, and the timed training step every configuration uses."""

    def __init__(self, args, device, num_classes):
        self.args, self.device = args, device
        self.model = timm.create_model(args.model, num_classes=num_classes).to(device)
        if args.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model.train()
        self.data_config = resolve_data_config({}, model=self.model)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=args.lr, momentum=0.9)
        self.graph_kinds = []  # 'static' or 'dynamic', one per graph compiled (see recording_backend)
        self.forward = (torch.compile(self.model, backend=recording_backend(args.compile_backend, self.graph_kinds))
                        if args.compile else self.model)
        amp_dtype = getattr(torch, args.amp_dtype)
        self.autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if args.amp else nullcontext
        self.scaler = torch.amp.GradScaler(device.type) if args.amp and amp_dtype == torch.float16 else None
        self.mark_static = False
        self.memory_probe = False

    def sync(self):
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)

    def step(self, images, target):
        if not self.args.prefetcher:
            images, target = images.to(self.device), target.to(self.device)
        if self.args.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if self.mark_static:
            torch._dynamo.mark_static(images)
        with self.autocast():
            loss = F.cross_entropy(self.forward(images), target)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()

    def measured_step(self, images, target):
        """Run one step; return (seconds, peak memory in bytes or None)."""
        if self.device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(self.device)
        tracker = None
        if self.memory_probe and self.device.type == 'cpu':
            tracker = cpu_memory_tracker(self.model, self.optimizer)
        start = time.perf_counter()
        with tracker if tracker is not None else nullcontext():
            self.step(images, target)
            self.sync()
        seconds = time.perf_counter() - start
        if self.device.type == 'cuda':
            return seconds, torch.cuda.max_memory_allocated(self.device)
        if tracker is not None:
            return seconds, tracker.get_tracker_snapshot('peak')[torch.device('cpu')]['Total']
        return seconds, None

    def run_epoch(self, epoch, model, loader, *, records, turns=None):
        """The epoch function (train.py's ``train_one_epoch`` seam): one timed pass over ``loader``.

        With ``turns`` (step interleaving) it hands the machine to the next configuration after each step.
        """
        iterator = iter(loader)
        index = 0
        entered = time.perf_counter()
        while True:
            start = time.perf_counter()
            try:
                images, target = next(iterator)
            except StopIteration:
                break
            self.sync()
            data_s = time.perf_counter() - start
            compute_s, peak = self.measured_step(images, target)
            records.append(dict(epoch=epoch, index=index, hw=list(images.shape[-2:]), batch=int(images.shape[0]),
                                data_s=data_s, compute_s=compute_s, step_s=data_s + compute_s, peak_bytes=peak))
            index += 1
            if turns is not None:
                turns.pass_on()
        return {'steps': index, 'epoch_fn_wall_s': time.perf_counter() - entered}


class Turns:
    """Step interleaving: the configurations' epochs run in threads that take turns, one step each.

    Only the thread whose turn it is does anything (fetches, trains); the others wait, so the steps
    run one at a time in the order A B C A B C ..., and a drifting machine hits every configuration alike.
    """

    def __init__(self, count):
        self.cond = threading.Condition()
        self.active = list(range(count))
        self.turn = 0
        self.local = threading.local()

    def begin(self, i):
        self.local.index = i
        with self.cond:
            self.cond.wait_for(lambda: self.turn == i)

    def _advance(self, i, finished):
        pos = self.active.index(i)
        if finished:
            self.active.remove(i)
            if self.active:
                self.turn = self.active[pos % len(self.active)]
        else:
            self.turn = self.active[(pos + 1) % len(self.active)]
        self.cond.notify_all()

    def pass_on(self):
        i = self.local.index
        with self.cond:
            self._advance(i, finished=False)
            self.cond.wait_for(lambda: self.turn == i)

    def end(self):
        with self.cond:
            self._advance(self.local.index, finished=True)


def cpu_memory_tracker(model, optimizer):
    """torch's tensor memory tracker: peak live tensor bytes (parameters, grads, optimizer state, activations)."""
    try:
        from torch.distributed._tools.mem_tracker import MemTracker
    except ImportError:
        return None
    tracker = MemTracker()
    tracker.track_external(model, optimizer)
    return tracker


# -- configurations --------------------------------------------------------------------------------
def set_loader_epoch(loader, epoch):
    """What train.py does before each epoch (``_set_loader_epoch``)."""
    if hasattr(loader.dataset, 'set_epoch'):
        loader.dataset.set_epoch(epoch)
    if hasattr(loader.batch_sampler, 'set_epoch'):
        loader.batch_sampler.set_epoch(epoch)
    elif hasattr(loader.sampler, 'set_epoch'):
        loader.sampler.set_epoch(epoch)


def plugged_module(trainer):
    """A stand-in for train.py with the seams TRDPlugin hooks: timm's create_loader, our epoch function."""
    module = types.ModuleType('bench_train')
    module.parser = argparse.ArgumentParser(add_help=False)
    module.parser.add_argument('--epochs', type=int)
    module.parser.add_argument('--seed', type=int, default=42)
    module._parse_args = None
    module.create_loader = create_loader
    module.train_one_epoch = trainer.run_epoch
    module.main = None
    return module


class Config:
    def __init__(self, name, loader, epoch_fn, plugin=None):
        self.name, self.loader, self.epoch_fn, self.plugin = name, loader, epoch_fn, plugin
        self.records, self.trd_figures, self.hook_s = [], [], []


def build_configs(args, trainer, make_dataset, total_epochs):
    F_, S_, P = args.img_size, args.trd_size, args.trd_prob
    dc = trainer.data_config
    loader_kwargs = dict(
        input_size=(3, F_, F_), batch_size=args.batch_size, is_training=True, use_prefetcher=args.prefetcher,
        device=trainer.device, num_workers=args.workers, mean=dc['mean'], std=dc['std'],
        interpolation=args.train_interpolation, auto_augment=args.aa, color_jitter=0.4, pin_memory=args.pin_mem,
        img_dtype=torch.float32, worker_seeding='all')
    configs = []
    for name in args.configs:
        if name == 'baseline':
            loader = create_loader(make_dataset(), **loader_kwargs)
            configs.append(Config(name, loader, trainer.run_epoch))
        elif name == 'timm':
            loader = create_loader(
                make_dataset(), input_size_choices=[(3, F_, F_), (3, S_, S_)], batch_choice_weights=[1 - P, P],
                batch_choice_seed=args.seed, **loader_kwargs)
            configs.append(Config(name, loader, trainer.run_epoch))
        else:  # p0, loader, device: through the plugin, as train.py would run them
            module = plugged_module(trainer)
            plugin = TRDPlugin(module).install()
            trd_args = ['--trd-prob', '0' if name == 'p0' else str(P), '--trd-size', str(S_),
                        '--trd-mode', 'device' if name == 'p0' else name, '--epochs', str(total_epochs),
                        '--seed', str(args.seed)]
            plugin.configure(module.parser.parse_args(trd_args))
            loader = module.create_loader(make_dataset(), **loader_kwargs)
            configs.append(Config(name, loader, module.train_one_epoch, plugin))
        if len(configs[-1].loader) != args.steps:
            raise RuntimeError(f'{name}: the loader has {len(configs[-1].loader)} batches, expected {args.steps}')
    return configs


def run_round(configs, trainer, epoch, timed, interleave):
    """One epoch of every configuration: one after the other, or step by step in turns."""
    results = [None] * len(configs)

    def run(i, config, turns=None):
        records = []
        try:
            if turns is not None:
                turns.begin(i)
            start = time.perf_counter()
            metrics = config.epoch_fn(epoch, trainer.model, config.loader, records=records, turns=turns)
            results[i] = (records, metrics, time.perf_counter() - start)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            results[i] = e
        finally:
            if turns is not None:
                turns.end()

    for config in configs:
        set_loader_epoch(config.loader, epoch)  # as train.py does before each epoch
    if interleave == 'step':
        turns = Turns(len(configs))
        threads = [threading.Thread(target=run, args=(i, c, turns)) for i, c in enumerate(configs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for i, config in enumerate(configs):
            run(i, config)
    for config, result in zip(configs, results):
        if isinstance(result, BaseException):
            raise result
        records, metrics, _ = result
        # the hook's work around our epoch function (the plugin's epoch start and end, its one-time FLOP count)
        config.hook_s.append(result[2] - metrics['epoch_fn_wall_s'])
        if config.plugin is not None and config.plugin.config.enabled:
            config.trd_figures.append({k: v for k, v in metrics.items() if k.startswith('trd_')})
        for r in records:
            r['timed'] = timed
        config.records.extend(records)


# -- summary ---------------------------------------------------------------------------------------
def hw_key(hw):
    return f'{hw[0]}x{hw[1]}'


def summarize(configs, args):
    F_, S_ = args.img_size, args.trd_size
    full, small = hw_key((F_, F_)), hw_key((S_, S_))
    area = (S_ / F_) ** 2
    out = {}
    for config in configs:
        timed = [r for r in config.records if r['timed']]
        warm = [r for r in config.records if not r['timed']]
        sizes = {}
        for key in (full, small):
            rows = [r for r in timed if hw_key(r['hw']) == key]
            peaks = [r['peak_bytes'] for r in timed + warm if hw_key(r['hw']) == key and r['peak_bytes'] is not None]
            if not rows:
                continue
            step = statistics.median(r['step_s'] for r in rows)
            sizes[key] = dict(
                batches=len(rows), step_ms=1e3 * step, data_ms=1e3 * statistics.median(r['data_s'] for r in rows),
                compute_ms=1e3 * statistics.median(r['compute_s'] for r in rows),
                data_ms_mean=1e3 * statistics.fmean(r['data_s'] for r in rows),
                img_per_s=rows[0]['batch'] / step, peak_mb=max(peaks) / 2 ** 20 if peaks else None)
        reduced = sizes.get(small, {}).get('batches', 0)
        share = reduced / len(timed)
        summary = dict(name=config.name, steps=len(timed), reduced_batches=reduced, reduced_share=share, sizes=sizes,
                       total_s=sum(r['step_s'] for r in timed), data_total_s=sum(r['data_s'] for r in timed),
                       ideal=1 - share * (1 - area), hook_s=config.hook_s)
        if config.plugin is not None and config.plugin.cost is not None:
            summary['flops_reduced_ratio'] = config.plugin.cost.reduced_ratio
            summary['ideal_flops'] = 1 - share * (1 - config.plugin.cost.reduced_ratio)
            summary['trd_figures'] = config.trd_figures
        out[config.name] = summary

    timed_epochs = sorted({r['epoch'] for c in configs for r in c.records if r['timed']})
    by_name = {c.name: c for c in configs}

    def per_step(name, epoch):
        steps = [r['step_s'] for r in by_name[name].records if r['epoch'] == epoch]
        return sum(steps) / len(steps)

    base = out.get('baseline')
    base_full = base and base['sizes'].get(full)
    for s in out.values():
        if not base_full:
            continue
        s['ratio'] = (s['total_s'] / s['steps']) / (base['total_s'] / base['steps'])
        s['ratio_by_round'] = [per_step(s['name'], e) / per_step('baseline', e) for e in timed_epochs]
        # standard error of the ratio, from its spread over the rounds
        s['ratio_se'] = (statistics.stdev(s['ratio_by_round']) / math.sqrt(len(timed_epochs))
                         if len(timed_epochs) > 1 else None)
        s['ratio_over_ideal'] = s['ratio'] / s['ideal']
        # the same from per-size medians: robust to a few steps slowed by other work on the machine
        mix = sum(size['batches'] * size['step_ms'] for size in s['sizes'].values()) / s['steps']
        s['ratio_medians'] = mix / base_full['step_ms']
        s['ratio_medians_over_ideal'] = s['ratio_medians'] / s['ideal']
        if full in s['sizes'] and small in s['sizes']:
            # paired: a reduced step against the same configuration's own full steps, which run interleaved
            # with it; free of any difference between configurations at full size (there should be none)
            own = s['sizes'][small]['step_ms'] / s['sizes'][full]['step_ms']
            s['reduced_over_full_step'] = own
            s['ratio_paired'] = 1 - s['reduced_share'] * (1 - own)
            s['ratio_paired_over_ideal'] = s['ratio_paired'] / s['ideal']
            # at the nominal share P: compares timm's sampler (which draws its share) with TRD's exact one
            P = args.trd_prob
            s['ratio_medians_at_p'] = ((1 - P) * s['sizes'][full]['step_ms'] + P * s['sizes'][small]['step_ms']) / (
                base_full['step_ms'])
        if s['reduced_batches']:
            # the data time a reduced batch adds, from totals (robust to how workers overlap batches):
            # (data total - full batches x the baseline's mean data time per batch) / reduced batches
            full_n = s['steps'] - s['reduced_batches']
            s['data_ms_per_reduced_marginal'] = 1e3 * (
                s['data_total_s'] - full_n * base['data_total_s'] / base['steps']) / s['reduced_batches']
    return out


def checks(summary, args):
    """The issue's targets, evaluated on this run (None where a configuration is missing)."""
    full, small = hw_key((args.img_size,) * 2), hw_key((args.trd_size,) * 2)
    c = {}
    for path in ('loader', 'device'):
        if path in summary and 'ratio_over_ideal' in summary[path]:
            c[f'{path}_ratio_over_ideal'] = summary[path]['ratio_over_ideal']
            c[f'{path}_ratio_over_ideal_medians'] = summary[path]['ratio_medians_over_ideal']
            if 'ratio_paired_over_ideal' in summary[path]:
                c[f'{path}_ratio_over_ideal_paired'] = summary[path]['ratio_paired_over_ideal']
    lo, de = summary.get('loader'), summary.get('device')
    if lo and de and 'data_ms_per_reduced_marginal' in lo and de.get('data_ms_per_reduced_marginal', 0) > 0:
        c['data_per_reduced_loader_over_device'] = lo['data_ms_per_reduced_marginal'] / de['data_ms_per_reduced_marginal']
    if 'p0' in summary and 'ratio' in summary['p0']:
        c['p0_over_baseline'] = summary['p0']['ratio']
        if summary['p0'].get('ratio_se'):
            c['p0_over_baseline_se'] = summary['p0']['ratio_se']
    tm = summary.get('timm')
    if lo and tm and 'ratio_over_ideal' in lo and 'ratio_over_ideal' in tm:
        c['loader_over_timm_normalised'] = lo['ratio_over_ideal'] / tm['ratio_over_ideal']
        if 'ratio_medians_at_p' in lo and 'ratio_medians_at_p' in tm:
            c['loader_over_timm_medians_at_p'] = lo['ratio_medians_at_p'] / tm['ratio_medians_at_p']
        if full in tm['sizes'] and small in tm['sizes'] and small in lo['sizes']:
            c['loader_over_timm_step_full'] = lo['sizes'][full]['step_ms'] / tm['sizes'][full]['step_ms']
            c['loader_over_timm_step_reduced'] = lo['sizes'][small]['step_ms'] / tm['sizes'][small]['step_ms']
    base_peak = (summary.get('baseline') or {}).get('sizes', {}).get(full, {}).get('peak_mb')
    if base_peak:
        reduced_peaks = [s['sizes'][small]['peak_mb'] for s in summary.values()
                         if small in s['sizes'] and s['sizes'][small]['peak_mb'] is not None]
        if reduced_peaks:
            c['max_reduced_peak_over_baseline_peak'] = max(reduced_peaks) / base_peak
    return c


def fmt(value, spec='.0f'):
    return '-' if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def table(summary, args):
    full, small = hw_key((args.img_size,) * 2), hw_key((args.trd_size,) * 2)
    head = ('config', 'reduced', f'step ms {args.img_size} / {args.trd_size}', 'img/s', 'data ms/step',
            'data ms/reduced', 'time ratio', 'ideal', 'ratio/ideal', '(paired)', 'peak MB')
    rows = [head]
    for name, s in summary.items():
        f, r = s['sizes'].get(full, {}), s['sizes'].get(small, {})
        rows.append((
            name, f"{s['reduced_batches']}/{s['steps']}",
            f"{fmt(f.get('step_ms'))} / {fmt(r.get('step_ms'))}",
            f"{fmt(f.get('img_per_s'), '.1f')} / {fmt(r.get('img_per_s'), '.1f')}",
            fmt(1e3 * s['data_total_s'] / s['steps'], '.1f'), fmt(s.get('data_ms_per_reduced_marginal'), '.1f'),
            fmt(s.get('ratio'), '.3f') + (f" ± {s['ratio_se']:.3f}" if s.get('ratio_se') else ''),
            fmt(s['ideal'], '.3f'), fmt(s.get('ratio_over_ideal'), '.3f'),
            fmt(s.get('ratio_paired_over_ideal'), '.3f'),
            f"{fmt(f.get('peak_mb'))} / {fmt(r.get('peak_mb'))}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ['| ' + ' | '.join(cell.ljust(w) for cell, w in zip(row, widths)) + ' |' for row in rows]
    lines.insert(1, '|' + '|'.join('-' * (w + 2) for w in widths) + '|')
    return '\n'.join(lines)


def machine():
    info = dict(python=platform.python_version(), torch=torch.__version__, timm=timm.__version__,
                cpus=os.cpu_count(), torch_threads=torch.get_num_threads())
    try:
        with open('/proc/cpuinfo') as f:
            names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
        info['cpu'] = names[0] if names else platform.processor()
    except OSError:
        info['cpu'] = platform.processor()
    if torch.cuda.is_available():
        info['gpu'] = torch.cuda.get_device_name()
    return info


def wrapper_overhead_us(args, batches=5000):
    """What TRDLoader adds per batch on the loader path (its plan and bookkeeping), against iterating bare."""
    from timm_trd.data.loader import TRDLoader
    from timm_trd.plan.schedule import TRDSchedule
    batch = (torch.zeros(2, 3, args.img_size, args.img_size), torch.zeros(2, dtype=torch.long))
    items = [batch] * batches
    wrapped = TRDLoader(items, TRDSchedule(prob=args.trd_prob, total_epochs=1), (args.img_size,) * 2,
                        (args.trd_size,) * 2, resize=False)
    best = []
    for loader in (items, wrapped) * 3:
        start = time.perf_counter()
        for _ in loader:
            pass
        best.append(time.perf_counter() - start)
    return 1e6 * (min(best[1::2]) - min(best[0::2])) / batches


# -- torch.compile check ---------------------------------------------------------------------------
def recording_backend(backend, kinds):
    """Wrap a torch.compile backend so that each graph it compiles is noted as 'static' (every input dimension
    a number) or 'dynamic' (some dimension symbolic, as dynamo's automatic dynamic shapes make them)."""
    inner = torch._dynamo.lookup_backend(backend) if isinstance(backend, str) else backend

    def compile_graph(gm, example_inputs):
        symbolic = any(isinstance(d, torch.SymInt) for t in example_inputs if isinstance(t, torch.Tensor)
                       for d in t.shape)
        symbolic = symbolic or any(isinstance(t, torch.SymInt) for t in example_inputs)
        kinds.append('dynamic' if symbolic else 'static')
        return inner(gm, example_inputs)

    return compile_graph


def compile_counts():
    from torch._dynamo.utils import counters
    return dict(frames=int(counters['frames']['total']), graphs=int(counters['stats']['unique_graphs']))


def compile_check(args, device, make_dataset, num_classes, on_result=None):
    """Compilations per epoch for each TRD path, and the kind of each graph (static or dynamic shapes), in the
    modes asked: ``default`` (dynamo as it comes: automatic dynamic shapes after the first change of size),
    ``trd`` (what the plugin sets while TRD is on under train.py's ``--torchcompile``: automatic dynamic shapes
    off, one static graph per size), ``mark_static`` (``torch._dynamo.mark_static`` on each input).

    ``on_result(results)`` is called after each path and mode (to save what is done if a later one is cut off).
    """
    import torch._dynamo.config as dynamo_config
    from timm_trd.plugin.static_shapes import keep_static_shapes

    results, automatic_dynamic = [], dynamo_config.automatic_dynamic_shapes
    for mode in args.compile_check_modes:
        static = mode == 'mark_static'
        for path in ('loader', 'device'):
            torch._dynamo.reset()
            dynamo_config.automatic_dynamic_shapes = automatic_dynamic
            if mode == 'trd':
                keep_static_shapes()
            torch.manual_seed(args.seed)
            trainer = Trainer(args, device, num_classes)
            trainer.mark_static = static
            sub = argparse.Namespace(**{**vars(args), 'configs': [path]})
            config = build_configs(sub, trainer, make_dataset, args.rounds)[0]
            per_epoch, sizes = [], set()
            for epoch in range(args.rounds):
                before = compile_counts()
                start = time.perf_counter()
                run_round([config], trainer, epoch, timed=True, interleave='epoch')
                after = compile_counts()
                epoch_records = [r for r in config.records if r['epoch'] == epoch]
                sizes |= {hw_key(r['hw']) for r in epoch_records}
                per_epoch.append(dict(epoch=epoch, graphs=after['graphs'] - before['graphs'],
                                      frames=after['frames'] - before['frames'], seconds=time.perf_counter() - start,
                                      sizes=sorted({hw_key(r['hw']) for r in epoch_records})))
            timed = [r for r in config.records if r['epoch'] > 0]
            medians = {k: 1e3 * statistics.median(r['compute_s'] for r in timed if hw_key(r['hw']) == k)
                       for k in sorted({hw_key(r['hw']) for r in timed})}
            total = sum(e['graphs'] for e in per_epoch)
            kinds = {k: trainer.graph_kinds.count(k) for k in ('static', 'dynamic')}
            result = dict(path=path, mode=mode, mark_static=static, distinct_sizes=len(sizes), graphs=total,
                          graph_kinds=kinds,
                          graphs_after_first_epoch=sum(e['graphs'] for e in per_epoch[1:]), epochs=per_epoch,
                          compute_ms_median_after_first_epoch=medians,
                          holds=total <= len(sizes) and sum(e['graphs'] for e in per_epoch[1:]) == 0)
            results.append(result)
            print(f"compile check: {path} path, {mode}: {total} graphs for {len(sizes)} sizes "
                  f"({kinds['static']} static, {kinds['dynamic']} dynamic), per epoch {[e['graphs'] for e in per_epoch]}; "
                  f"compute ms after epoch 0 "
                  f"{ {k: round(v, 1) for k, v in medians.items()} }", flush=True)
            if on_result is not None:
                on_result(results)
    dynamo_config.automatic_dynamic_shapes = automatic_dynamic
    return results


# -- main ------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--model', default='resnet18', help='timm model name')
    p.add_argument('--img-size', type=int, default=96, help='full training size F')
    p.add_argument('--trd-size', type=int, default=None, help='reduced size S (default: F // 2)')
    p.add_argument('--trd-prob', type=float, default=0.5, help='share P of reduced batches')
    p.add_argument('-b', '--batch-size', type=int, default=16)
    p.add_argument('--steps', type=int, default=8, help='batches per epoch (= per configuration per round)')
    p.add_argument('--rounds', type=int, default=3, help='timed rounds (one epoch of every configuration each)')
    p.add_argument('--warmup-rounds', type=int, default=1, help='untimed rounds first (also the CPU memory probe)')
    p.add_argument('--interleave', choices=('auto', 'step', 'epoch'), default='auto',
                   help='take turns after every step, or after every epoch; auto: step with --workers 0 (the finest '
                        'drift cancelling), epoch with workers (taking turns per step would let every loader\'s '
                        'workers prefetch during the other configurations\' steps and hide their data time)')
    p.add_argument('--no-shuffle-order', dest='shuffle_order', action='store_false',
                   help='keep the --configs order in every round (default: a new random order each round)')
    p.add_argument('--configs', nargs='+', default=None, choices=ALL_CONFIGS,
                   help=f'configurations, run in this order each round (default: all of {ALL_CONFIGS} available)')
    p.add_argument('--data', default='generated',
                   help="'generated' (shapes on textures via timm_trd.data.toy_data, written under --data-cache) or an image "
                        "folder (with train/, or the train folder itself), e.g. an extracted imagenette-224.tar")
    p.add_argument('--data-cache', default=str(ROOT / 'outputs' / 'bench-data'), help='where generated images go')
    p.add_argument('--in-memory', action='store_true', help='decode the images once and keep them in memory')
    p.add_argument('--data-images', type=int, default=None,
                   help='distinct images to use (generate), repeated in turn to fill --steps x --batch-size '
                        '(default: as many as that)')
    p.add_argument('--workers', type=int, default=2, help='data loader workers')
    p.add_argument('--aa', default=None, help="timm auto-augment policy, e.g. 'rand-m9-mstd0.5-inc1' (RandAugment)")
    p.add_argument('--train-interpolation', default='random', help="as train.py (default 'random')")
    p.add_argument('--no-prefetcher', dest='prefetcher', action='store_false', help="disable timm's prefetcher")
    p.add_argument('--pin-mem', action='store_true')
    p.add_argument('--channels-last', action='store_true')
    p.add_argument('--amp', action='store_true', help='autocast (with --amp-dtype; float16 uses a GradScaler)')
    p.add_argument('--amp-dtype', default='bfloat16', choices=('bfloat16', 'float16'))
    p.add_argument('--compile', action='store_true', help='torch.compile the model (shared by all configurations)')
    p.add_argument('--compile-backend', default='inductor',
                   help="torch.compile backend ('eager' traces and counts graphs without generating code)")
    p.add_argument('--compile-check', action='store_true',
                   help='count torch.compile compilations per epoch on each TRD path instead of timing')
    p.add_argument('--compile-check-modes', nargs='+', choices=('default', 'trd', 'mark_static'),
                   default=['default', 'trd'],
                   help="with --compile-check: dynamo's default (automatic dynamic shapes), trd (what timm-trd sets "
                        "under train.py's --torchcompile: a static graph per size), mark_static on the input")
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--threads', type=int, default=None,
                   help='torch threads in the main process (default on CPU: cores less --workers, at least 1, so the '
                        'model\'s threads and the loader workers do not fight over cores; on CUDA torch\'s default)')
    p.add_argument('--lr', type=float, default=0.01)
    p.add_argument('--seed', type=int, default=42)
    p.add_argument('--memory', choices=('auto', 'off'), default='auto',
                   help='peak memory per step (CUDA allocator; on CPU torch MemTracker during the warm-up round)')
    p.add_argument('--out', default=str(ROOT / 'outputs' / 'bench_trd.json'), help='JSON result file')
    args = p.parse_args(argv)
    if args.trd_size is None:
        args.trd_size = args.img_size // 2
    if not 0 < args.trd_size < args.img_size:
        p.error(f'--trd-size must lie in (0, {args.img_size}), got {args.trd_size}')
    if not 0 < args.trd_prob < 1:
        p.error('--trd-prob must lie strictly between 0 and 1 for a comparison')
    if args.configs is None:
        args.configs = [c for c in ALL_CONFIGS if c != 'timm' or timm_has_scheduled_sizes()]
    elif 'timm' in args.configs and not timm_has_scheduled_sizes():
        p.error(f'timm {timm.__version__} has no scheduled input sizes (create_loader(input_size_choices=...))')
    if args.compile_check:
        args.compile = True
    if args.interleave == 'auto':
        args.interleave = 'step' if args.workers == 0 else 'epoch'
    return args


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads is None and device.type == 'cpu':
        args.threads = max(1, (os.cpu_count() or 1) - args.workers)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True  # as train.py does
    torch.manual_seed(args.seed)
    count = args.steps * args.batch_size
    make_dataset, num_classes = resolve_data(args, count)
    info = dict(machine=machine(), args=vars(args))
    print(f"bench_trd: {args.model} {args.img_size} vs {args.trd_size} px, P {args.trd_prob}, batch {args.batch_size}, "
          f"{args.steps} steps x {args.rounds} rounds (+{args.warmup_rounds} warm-up), {args.workers} workers, "
          f"{torch.get_num_threads()} torch threads, interleaved by {args.interleave}, {args.device}, "
          f"{info['machine'].get('gpu') or info['machine']['cpu']}", flush=True)

    if args.compile_check:
        info['compile_check'] = compile_check(args, device, make_dataset, num_classes,
                                              on_result=lambda done: write(args.out, {**info, 'compile_check': done}))
        write(args.out, info)
        return info

    trainer = Trainer(args, device, num_classes)
    total_epochs = args.warmup_rounds + args.rounds
    configs = build_configs(args, trainer, make_dataset, total_epochs)
    per_round_graphs, graphs_before = [], compile_counts()['graphs'] if args.compile else 0
    # one step on random data first: the optimizer state exists before any memory is probed
    priming = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    trainer.step(priming, torch.zeros(args.batch_size, dtype=torch.long, device=device))
    start = time.perf_counter()
    for epoch in range(total_epochs):
        timed = epoch >= args.warmup_rounds
        trainer.memory_probe = args.memory == 'auto' and not timed and not args.compile
        # a new order every round, so that no configuration always runs first or after the same one
        order = random.Random(args.seed + epoch).sample(configs, len(configs)) if args.shuffle_order else configs
        run_round(order, trainer, epoch, timed, args.interleave)
        if args.compile:  # round 0 counts the priming step's graph too
            graphs = compile_counts()['graphs']
            per_round_graphs.append(graphs - sum(per_round_graphs) - graphs_before)
        print(f'  round {epoch} {"timed" if timed else "warm-up"} done at {time.perf_counter() - start:.0f} s'
              + (f', {per_round_graphs[-1]} graphs compiled' if args.compile else ''), flush=True)
    if args.compile:
        info['compiled_graphs_per_round'] = per_round_graphs

    summary = summarize(configs, args)
    info['trd_loader_overhead_us_per_batch'] = wrapper_overhead_us(args)
    info.update(summary=summary, checks=checks(summary, args),
                steps=[dict(config=c.name, **r) for c in configs for r in c.records])
    print()
    print(table(summary, args))
    print()
    for key, value in info['checks'].items():
        print(f'  {key}: {value:.3f}')
    print(f"  TRDLoader bookkeeping: {info['trd_loader_overhead_us_per_batch']:.1f} us per batch")
    write(args.out, info)
    return info


def write(path, info):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=1, default=str))
    print(f'wrote {path}')


if __name__ == '__main__':
    main()
