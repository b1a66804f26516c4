"""A minimal training script with the seams of timm's train.py, for tests that have no checkout of it.

It keeps the names timm-trd hooks into (``parser``, ``_parse_args``, ``create_loader``,
``train_one_epoch``, ``main``, ``NativeDDP``) and uses real timm code for everything it does: datasets,
``create_loader`` (prefetcher, ``FastCollateMixup``, distributed samplers), ``Mixup``, a timm model, timm's
``LogitDistillationTask`` with ``--kd-model-name`` (the teacher built here without pretrained weights, handed to
``train_one_epoch`` as ``task`` as train.py does).
Each step's input shape is recorded; ``main`` returns the record, prints it as one ``MINI_RESULT {json}``
line and, with ``--result-dir``, writes it to a file per rank.
"""

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections import OrderedDict

import torch
import torch.nn.functional as F
import yaml
from torch.nn.parallel import DistributedDataParallel as NativeDDP

from timm.data import FastCollateMixup, Mixup, create_dataset, create_loader
from timm import utils
from timm.models import create_model, resume_checkpoint
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.utils import ParseKwargs, setup_default_logging

config_parser = argparse.ArgumentParser(description='config', add_help=False)
config_parser.add_argument('-c', '--config', default='', type=str)

STAND_IN = "the tests' stand-in for timm's train.py (tests/mini_train.py), not timm's train.py"

parser = argparse.ArgumentParser(description='mini train script')
parser.add_argument('--data-dir', default=None)
parser.add_argument('--model', default='resnet10t')
parser.add_argument('--num-classes', type=int, default=None, help='default: the model\'s (as train.py)')
parser.add_argument('--img-size', type=int, default=32)
parser.add_argument('--input-size', type=int, nargs=3, default=None, metavar='C H W',
                    help='the training size as train.py takes it (overrides --img-size)')
parser.add_argument('-b', '--batch-size', type=int, default=8)
parser.add_argument('--epochs', type=int, default=2)
parser.add_argument('--cooldown-epochs', type=int, default=0)
parser.add_argument('--warmup-epochs', type=int, default=0)
parser.add_argument('--warmup-prefix', action='store_true', default=False)
# the scheduler options train.py hands to timm's create_scheduler_v2 (which decides how many epochs run)
parser.add_argument('--sched', default='cosine')
parser.add_argument('--sched-on-updates', action='store_true', default=False)
parser.add_argument('--decay-epochs', type=float, default=90)
parser.add_argument('--lr-cycle-mul', type=float, default=1.0)
parser.add_argument('--lr-cycle-limit', type=int, default=1)
parser.add_argument('--output', default=None,
                    help='save a checkpoint per epoch with timm\'s CheckpointSaver here (with --experiment: in '
                         'OUTPUT/EXPERIMENT, with a summary.csv, as train.py does)')
parser.add_argument('--experiment', default='', help='as train.py: the sub-folder of --output for this run')
parser.add_argument('--checkpoint-hist', type=int, default=10)
parser.add_argument('--recovery-interval', type=int, default=0, help='as train.py: a recovery checkpoint every N steps')
parser.add_argument('--resume', default=None, help='resume from a checkpoint (timm\'s resume_checkpoint)')
parser.add_argument('--start-epoch', type=int, default=None)
parser.add_argument('--die-at', default=None, metavar='EPOCH:RANK:STEP:MARKER',
                    help='SIGKILL this process (rank RANK) after step STEP of epoch EPOCH, once: not again when the file '
                         'MARKER exists (it is written first); a rank lost mid-run, for the restart tests')
parser.add_argument('--step-sleep', type=float, default=0.0, help='seconds to sleep per step (a slower run for tests '
                    'that stop it from outside)')
parser.add_argument('--validate', action='store_true', default=False,
                    help='after each epoch, validate on the val split through a module-level validate()')
parser.add_argument('--seed', type=int, default=42)
parser.add_argument('--device', default='cpu', help="the stand-in trains on the CPU (train.py's default is cuda)")
parser.add_argument('--workers', type=int, default=0)
parser.add_argument('--no-prefetcher', action='store_true', default=False)
parser.add_argument('--mixup', type=float, default=0.0)
parser.add_argument('--cutmix', type=float, default=0.0)
parser.add_argument('--aug-splits', type=int, default=0)
parser.add_argument('--aug-repeats', type=int, default=0, help='handed to create_loader as train.py does')
parser.add_argument('--use-multi-epochs-loader', action='store_true', default=False)
parser.add_argument('--train-img-sizes', type=int, nargs='+', default=None)
# train.py's (main branch) own scheduled-loader options, handed to create_loader as train.py hands them
parser.add_argument('--train-batch-sizes', type=int, nargs='+', default=None)
parser.add_argument('--train-size-probs', type=float, nargs='+', default=None)
parser.add_argument('--train-size-schedule', default='constant', choices=('constant', 'progressive'))
parser.add_argument('--train-batches-per-epoch', type=int, default=None)
parser.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs)
parser.add_argument('--naflex-loader', action='store_true', default=False)
parser.add_argument('--dataset', default='', help='as train.py\'s --dataset (wds/NAME, hfds/..., hfids/...; default: a folder)')
parser.add_argument('--dataset-download', action='store_true', default=False)
parser.add_argument('--iterable', action='store_true', default=False,
                    help='feed the training set as an IterableDataset (a stand-in for a streamed dataset)')
parser.add_argument('--channels-last', action='store_true', default=False)
parser.add_argument('--kd-model-name', default=None, help='a teacher (randomly initialised) for logit distillation')
parser.add_argument('--result-dir', default=None, help='also write the record to RESULT_DIR/rank<N>.json')
parser.add_argument('--log-info', action='store_true', default=False,
                    help='log INFO lines (timm-trd\'s TRD: lines) to stderr, as train.py does with setup_default_logging; '
                         'off by default, so that tests calling main() in-process keep pytest\'s logging')

STEPS = {}  # epoch -> list of input shapes seen by the training loop


class StreamedDataset(torch.utils.data.IterableDataset):
    """An iterable view of a map-style dataset, like a streamed (wds/tfds) dataset."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.transform = None

    def __iter__(self):
        for i in range(len(self.dataset)):
            image, target = self.dataset[i]
            yield (self.transform(image) if self.transform else image), target

    def __len__(self):
        return len(self.dataset)


def _parse_args():
    args_config, remaining = config_parser.parse_known_args()
    if args_config.config:
        with open(args_config.config) as f:
            parser.set_defaults(**yaml.safe_load(f))
    args = parser.parse_args(remaining)
    return args, yaml.safe_dump(args.__dict__)


def train_one_epoch(epoch, model, loader, optimizer, args, device=torch.device('cpu'), mixup_fn=None, task=None,
                    saver=None):
    shapes = STEPS.setdefault(epoch, [])
    total, count = 0.0, 0
    model.train()
    for input, target in loader:
        if not args.prefetcher:
            input, target = input.to(device), target.to(device)
            if mixup_fn is not None:
                input, target = mixup_fn(input, target)
        if args.channels_last:
            input = input.contiguous(memory_format=torch.channels_last)
        shapes.append(list(input.shape))
        if task is not None:
            loss = task(input, target)['loss']
        else:
            loss = F.cross_entropy(model(input), target)  # soft (mixup) targets work too
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total, count = total + loss.item(), count + 1
        if args.step_sleep:
            time.sleep(args.step_sleep)
        if saver is not None and args.recovery_interval and count % args.recovery_interval == 0:
            saver.save_recovery(epoch, batch_idx=count - 1)
        if args.die_at:
            _die_if_due(args.die_at, epoch, args.rank, count - 1)
    return OrderedDict([('loss', total / max(count, 1))])


def _die_if_due(spec, epoch, rank, step):
    die_epoch, die_rank, die_step, marker = spec.split(':', 3)
    if (epoch, rank, step) == (int(die_epoch), int(die_rank), int(die_step)) and not os.path.exists(marker):
        with open(marker, 'w') as f:
            f.write(f'killed rank {rank} after step {step} of epoch {epoch}\n')
        os.kill(os.getpid(), signal.SIGKILL)


def scheduled_loader_kwargs(args):
    """train.py's own scheduled-loader options as create_loader arguments (only those given: timm < 1.0.29 has none)."""
    kwargs = {'batch_size_choices': args.train_batch_sizes, 'num_batches': args.train_batches_per_epoch}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if args.train_size_schedule != 'constant':
        kwargs['batch_choice_schedule'] = args.train_size_schedule
    return kwargs


def validate(model, loader, args, log_suffix=''):
    """Top-1 on ``loader`` (the seam --trd-bn-recal hooks); records the BatchNorm running means it saw."""
    # recorded before any forward pass (DDP would broadcast rank 0's buffers in it)
    bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    VALIDATED.append({'suffix': log_suffix, 'bn_mean': bn.running_mean.tolist()})
    model.eval()
    correct = count = 0
    with torch.no_grad():
        for input, target in loader:
            correct += (model(input).argmax(-1) == target).sum().item()
            count += target.numel()
    return OrderedDict([('top1', 100.0 * correct / max(count, 1))])


VALIDATED = []


def main():
    # logging before the parse step (its warnings): timm's setup with --log-info, else a plain one as train.py's
    # setup_default_logging would, unless one is there (under pytest, its capture); never both (lines twice)
    if '--log-info' in sys.argv[1:]:
        setup_default_logging()
    elif not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format='%(message)s')
    args, _ = _parse_args()
    args.prefetcher = not args.no_prefetcher
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    args.distributed = world_size > 1
    args.world_size = world_size
    args.rank = int(os.environ.get('RANK', '0'))
    device = torch.device('cpu')
    if args.distributed and not torch.distributed.is_initialized():
        torch.distributed.init_process_group('gloo')
    torch.manual_seed(args.seed + args.rank)

    model = create_model(args.model, num_classes=args.num_classes, **args.model_kwargs)
    if args.num_classes is None:  # as train.py
        args.num_classes = model.num_classes
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    dataset = create_dataset(args.dataset, root=args.data_dir, split='train', is_training=True,
                             batch_size=args.batch_size, seed=args.seed, download=args.dataset_download)
    if args.iterable:
        dataset = StreamedDataset(dataset)

    collate_fn, mixup_fn = None, None
    if args.mixup > 0 or args.cutmix > 0:
        mixup_args = dict(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, num_classes=args.num_classes)
        if args.prefetcher:
            collate_fn = FastCollateMixup(**mixup_args)
        else:
            mixup_fn = Mixup(**mixup_args)

    loader = create_loader(
        dataset,
        input_size=tuple(args.input_size or (3, args.img_size, args.img_size)),
        batch_size=args.batch_size,
        is_training=True,
        use_prefetcher=args.prefetcher,
        device=device,
        num_workers=args.workers,
        distributed=args.distributed,
        collate_fn=collate_fn,
        num_aug_splits=args.aug_splits,
        num_aug_repeats=args.aug_repeats,
        use_multi_epochs_loader=args.use_multi_epochs_loader,
        persistent_workers=args.workers > 0,  # timm 1.0.28 hands True to a DataLoader without workers, which refuses it
        **scheduled_loader_kwargs(args),
    )
    if args.distributed:
        model = NativeDDP(model, device_ids=[device])
    task = None
    if args.kd_model_name:
        from timm.task import LogitDistillationTask
        teacher = create_model(args.kd_model_name, num_classes=args.num_classes)
        task = LogitDistillationTask(student_model=model, teacher_model=teacher, criterion=torch.nn.CrossEntropyLoss(),
                                     verbose=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    start_epoch = 0
    if args.resume:
        start_epoch = resume_checkpoint(getattr(model, 'module', model), args.resume, optimizer=optimizer,
                                        log_info=False)
    if args.start_epoch is not None:
        start_epoch = args.start_epoch
    saver = output_dir = None
    if args.output and args.rank == 0:  # as train.py: utils' get_outdir and CheckpointSaver, on the primary rank
        output_dir = utils.get_outdir(args.output, args.experiment) if args.experiment else args.output
        os.makedirs(output_dir, exist_ok=True)
        saver = utils.CheckpointSaver(model, optimizer, args=args, checkpoint_dir=output_dir, recovery_dir=output_dir,
                                      max_history=args.checkpoint_hist)
    loader_eval = None
    if args.validate:
        loader_eval = create_loader(
            create_dataset(args.dataset, root=args.data_dir, split='validation', batch_size=args.batch_size,
                           download=args.dataset_download),
            input_size=(3, args.img_size, args.img_size),
            batch_size=args.batch_size, is_training=False, use_prefetcher=False, num_workers=0, persistent_workers=False)

    # as train.py: timm's scheduler factory says how many epochs run
    _, num_epochs = create_scheduler_v2(optimizer, **scheduler_kwargs(args), updates_per_epoch=len(loader))
    epochs = []
    best_metric = best_epoch = None
    for epoch in range(start_epoch, num_epochs):
        if hasattr(dataset, 'set_epoch'):  # as train.py: a streamed dataset shuffles by epoch
            dataset.set_epoch(epoch)
        metrics = train_one_epoch(epoch, model, loader, optimizer, args, device=device, mixup_fn=mixup_fn, task=task,
                                  saver=saver)
        epochs.append(dict(metrics))
        if loader_eval is not None:
            validate(model, loader_eval, args)
        if output_dir is not None and args.experiment:  # as train.py: the row first, then the checkpoint
            utils.update_summary(epoch, metrics, None, filename=os.path.join(output_dir, 'summary.csv'),
                                 write_header=best_metric is None)
        if saver is not None:
            best_metric, best_epoch = saver.save_checkpoint(epoch, metric=-float(metrics['loss']))
    if best_metric is not None:
        logging.getLogger('mini_train').info(f'*** Best metric: {best_metric} (epoch {best_epoch})')
    result = {'rank': args.rank, 'epochs': epochs, 'shapes': {str(k): v for k, v in STEPS.items()},
              'num_epochs': num_epochs, 'validated': VALIDATED}
    print('MINI_RESULT ' + json.dumps(result), flush=True)
    if args.result_dir:
        with open(os.path.join(args.result_dir, f'rank{args.rank}.json'), 'w') as f:
            json.dump(result, f)
    if args.distributed:
        torch.distributed.destroy_process_group()
    return result


if __name__ == '__main__':
    main()
