"""Attach TRD to the user's own train.py at its seams, without copying any of it.

:func:`install` takes the imported train.py module and replaces six of its module-level names; train.py's
``main()`` looks each one up when it runs, so it picks up the wrapped versions:

- ``parser``: gains the ``--trd-*`` options (so ``--help`` and ``-c recipe.yaml`` know them);
- ``_parse_args``: rejects unknown keys in the ``-c`` YAML (train.py would ignore a typo silently) and
  checks the TRD settings against the rest of the arguments, before anything is built;
- ``create_loader``: the training loader is built for TRD (the loader path asks timm for a second,
  smaller transform) and wrapped in a :class:`~timm_trd.loader.TRDLoader`; other loaders pass through;
- ``train_one_epoch``: the epoch hook. It tells the loader the epoch, then adds the epoch's TRD figures
  to the train metrics, which train.py hands to timm's ``update_summary`` (summary.csv, wandb);
- the task classes: their ``prepare_distributed`` stops passing ``device_ids`` for CPU devices, which
  DDP rejects (train.py passes ``device_ids=[device]`` whatever the device).
- ``wandb``: a ``wandb.init`` that raises (e.g. no API key) logs one warning and turns wandb off instead of
  stopping the run (:mod:`timm_trd.wandb_guard`).

With ``--trd-prob 0`` (the default) the wrappers call straight through: same loader, same metrics.
"""

import argparse
import difflib
import logging
from typing import Optional

import torch
import yaml

from .accounting import CostModel
from .config import TRDConfig, TRDConfigError, add_arguments, check_train_args, config_from_args, total_epochs
from .loader import TRDLoader
from .sampler import loader_path_unavailable, trd_batch_sampler
from .schedule import TRDSchedule, compute_share
from .wandb_guard import guard_wandb

_logger = logging.getLogger('timm_trd')

SEAMS = ('parser', '_parse_args', 'create_loader', 'train_one_epoch', 'main')


def _is_primary(args) -> bool:
    return getattr(args, 'rank', 0) == 0


def _cpu_only(device_ids) -> bool:
    return bool(device_ids) and all(torch.device(d).type == 'cpu' for d in device_ids)


def _cpu_safe_task_class(task_class):
    """A subclass of a timm task whose ``prepare_distributed`` drops CPU ``device_ids``."""

    class CpuSafeTask(task_class):
        def prepare_distributed(self, device_ids=None, **ddp_kwargs):
            if _cpu_only(device_ids):
                device_ids = None
            return super().prepare_distributed(device_ids=device_ids, **ddp_kwargs)

    CpuSafeTask.__name__ = task_class.__name__
    CpuSafeTask.__qualname__ = task_class.__qualname__
    CpuSafeTask.__doc__ = task_class.__doc__
    return CpuSafeTask


def _cpu_safe_ddp(ddp_class):
    """For train.py versions that build DDP themselves (``NativeDDP(model, device_ids=[device])``)."""

    def build(module, *args, device_ids=None, **kwargs):
        if _cpu_only(device_ids):
            device_ids = None
        return ddp_class(module, *args, device_ids=device_ids, **kwargs)

    return build


class TRDPlugin:
    """The state TRD keeps for one train.py run; :func:`install` creates it."""

    def __init__(self, train_module):
        missing = [name for name in SEAMS if not hasattr(train_module, name)]
        if missing:
            raise TRDConfigError(
                f'{getattr(train_module, "__file__", train_module)} lacks {", ".join(missing)}: timm-trd needs the '
                f'train.py of timm 1.0.x (tested with v1.0.28 and the main branch)')
        self.module = train_module
        self.original = {name: getattr(train_module, name) for name in ('_parse_args', 'create_loader', 'train_one_epoch')}
        self.args: Optional[argparse.Namespace] = None
        self.config: Optional[TRDConfig] = None
        self.schedule: Optional[TRDSchedule] = None
        self.loader: Optional[TRDLoader] = None
        self.cost: Optional[CostModel] = None
        self.channels = 3
        self._warned_unwrapped = False

    # -- installation -------------------------------------------------------------------------
    def install(self) -> 'TRDPlugin':
        m = self.module
        add_arguments(m.parser)
        m._parse_args = self.parse_args
        m.create_loader = self.create_loader
        m.train_one_epoch = self.train_one_epoch
        self._make_ddp_cpu_safe()
        guard_wandb(m)
        return self

    def _make_ddp_cpu_safe(self):
        try:
            from timm.task import TrainingTask
        except ImportError:
            TrainingTask = None
        for name, value in list(vars(self.module).items()):
            if TrainingTask is not None and isinstance(value, type) and issubclass(value, TrainingTask):
                setattr(self.module, name, _cpu_safe_task_class(value))
            elif value is torch.nn.parallel.DistributedDataParallel:
                setattr(self.module, name, _cpu_safe_ddp(value))

    # -- seam: argument parsing ----------------------------------------------------------------
    def parse_args(self, *a, **kw):
        self.check_config_keys()
        args, args_text = self.original['_parse_args'](*a, **kw)
        self.configure(args)
        # the checked trd_* values went back into args as numbers: redo train.py's args.yaml text with them
        args_text = yaml.safe_dump(args.__dict__, default_flow_style=False)
        return args, args_text

    def check_config_keys(self, argv=None) -> None:
        """Reject keys of the ``-c`` YAML that train.py's parser does not know.

        train.py hands the YAML to ``parser.set_defaults``, which takes any key without a word, so a typo
        such as ``trd_porb`` would silently train without TRD.
        """
        config_parser = getattr(self.module, 'config_parser', None)
        if config_parser is None:
            return
        config_args, _ = config_parser.parse_known_args(argv)
        path = getattr(config_args, 'config', None)
        if not path:
            return
        with open(path) as f:
            recipe = yaml.safe_load(f) or {}
        if not isinstance(recipe, dict):
            raise TRDConfigError(f'{path} must hold a mapping of train.py options, e.g. "trd_prob: 0.5"')
        known = {action.dest for action in self.module.parser._actions}
        for key in recipe:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else '; remove it or fix its spelling'
                raise TRDConfigError(f"{path}: unknown key '{key}' (not an option of train.py or timm-trd){hint}")

    def configure(self, args: argparse.Namespace) -> TRDConfig:
        """Check the parsed train.py args and set up the run's schedule (raises TRDConfigError)."""
        config = config_from_args(args)
        check_train_args(config, args)
        if config.enabled and config.mode == 'loader':
            why = loader_path_unavailable() or self._loader_obstacle(
                aug_splits=getattr(args, 'aug_splits', 0), multi_epochs=getattr(args, 'use_multi_epochs_loader', False))
            if why:
                raise TRDConfigError(f'--trd-mode loader cannot run: {why}; use --trd-mode device (or auto)')
        self.args, self.config = args, config
        config.write_to(args)
        if config.enabled:
            seed = config.seed if config.seed is not None else int(getattr(args, 'seed', 0) or 0)
            self.schedule = TRDSchedule(
                prob=config.prob, total_epochs=total_epochs(args), full_res_epochs=config.full_res_epochs,
                granularity=config.granularity, seed=seed)
        return config

    @staticmethod
    def _loader_obstacle(dataset=None, aug_splits=0, multi_epochs=False) -> Optional[str]:
        if dataset is not None and isinstance(dataset, torch.utils.data.IterableDataset):
            return 'the training dataset is iterable (streamed) and the loader path needs a map-style dataset'
        if aug_splits and aug_splits > 1:
            return 'AugMix splits (--aug-splits) are not supported by timm\'s scheduled loader'
        if multi_epochs:
            return '--use-multi-epochs-loader is not supported by timm\'s scheduled loader'
        return None

    # -- seam: the training loader -------------------------------------------------------------
    def create_loader(self, dataset, *a, **kw):
        create = self.original['create_loader']
        if self.config is None or not self.config.enabled or not kw.get('is_training', False):
            return create(dataset, *a, **kw)
        input_size = kw.get('input_size', a[0] if a else None)
        if input_size is None or len(input_size) != 3:
            raise TRDConfigError(f'TRD needs the training input size as (C, H, W), train.py passed {input_size!r}')
        self.channels = int(input_size[0])
        full_hw = (int(input_size[1]), int(input_size[2]))
        reduced_hw = self._reduced_size(full_hw)
        path, why = self._choose_path(dataset, kw)

        if path == 'loader':
            kw.update(
                input_size_choices=[(self.channels, *full_hw), (self.channels, *reduced_hw)],
                batch_choice_weights=[1.0 - self.config.prob, self.config.prob],
                batch_choice_seed=self.schedule.seed,
            )
            with trd_batch_sampler(self.schedule):
                loader = create(dataset, *a, **kw)
        else:
            loader = create(dataset, *a, **kw)
        self.loader = TRDLoader(loader, self.schedule, full_hw, reduced_hw, resize=path == 'device')
        self._log_start(path, why, full_hw, reduced_hw)
        return self.loader

    def _reduced_size(self, full_hw):
        size = self.config.size
        if size is None:
            size = (max(1, full_hw[0] // 2), max(1, full_hw[1] // 2))
            if _is_primary(self.args):
                _logger.info(f'TRD: no --trd-size given, using half the training size: {size[0]}x{size[1]}')
        if size[0] >= full_hw[0] or size[1] >= full_hw[1]:
            raise TRDConfigError(
                f'--trd-size {size[0]}x{size[1]} is not smaller than the training size {full_hw[0]}x{full_hw[1]}; '
                f'pick a smaller size (e.g. --trd-size {max(1, full_hw[0] // 2)})')
        return size

    def _choose_path(self, dataset, kw):
        obstacle = loader_path_unavailable() or self._loader_obstacle(
            dataset, kw.get('num_aug_splits', 0), kw.get('use_multi_epochs_loader', False))
        if self.config.mode == 'device':
            return 'device', 'chosen with --trd-mode device'
        if self.config.mode == 'loader':
            if obstacle:
                raise TRDConfigError(f'--trd-mode loader cannot run: {obstacle}; use --trd-mode device (or auto)')
            return 'loader', 'chosen with --trd-mode loader'
        if obstacle:
            return 'device', f'auto: {obstacle}'
        return 'loader', 'auto: timm\'s scheduled sampler and a map-style dataset allow it'

    def _log_start(self, path, why, full_hw, reduced_hw):
        if not _is_primary(self.args):
            return
        s, c = self.schedule, self.config
        ideal = compute_share(c.prob, reduced_hw, full_hw)
        where = ('data workers crop to the small size' if path == 'loader'
                 else 'antialiased downsample of the collated batch')
        _logger.info(
            f'TRD: {c.prob:g} of the batches at {reduced_hw[0]}x{reduced_hw[1]} instead of {full_hw[0]}x{full_hw[1]} '
            f'({c.granularity} granularity, epochs 0-{s.window_epochs - 1} of {s.total_epochs}, seed {s.seed}); '
            f'{path} path ({where}; {why}); ideal compute {ideal:.3f} of full size')

    # -- seam: the epoch ------------------------------------------------------------------------
    def train_one_epoch(self, epoch, model, loader, *a, **kw):
        train = self.original['train_one_epoch']
        if self.config is None or not self.config.enabled:
            return train(epoch, model, loader, *a, **kw)
        if not isinstance(loader, TRDLoader):
            if not self._warned_unwrapped:
                _logger.warning('TRD: train_one_epoch got a loader timm-trd did not build; TRD is not applied')
                self._warned_unwrapped = True
            return train(epoch, model, loader, *a, **kw)
        loader.set_epoch(epoch)
        if self.cost is None:
            self.cost = CostModel.from_model(model, loader.full_hw, loader.reduced_hw, self.channels)
            if _is_primary(self.args):
                _logger.info(
                    f'TRD: a {loader.reduced_hw[0]}x{loader.reduced_hw[1]} batch costs {self.cost.reduced_ratio:.4f} '
                    f'of a full one ({"FLOPs counted" if self.cost.source == "flops" else "pixel-area ratio"})')
        metrics = train(epoch, model, loader, *a, **kw)
        figures = self.epoch_figures(epoch, loader)
        if metrics is not None:
            metrics.update(figures)
        return metrics

    def epoch_figures(self, epoch: int, loader: TRDLoader) -> dict:
        """The epoch's TRD columns for summary.csv / wandb (train.py prefixes them with ``train_``)."""
        stats = loader.last_stats
        batches = stats.batches() if stats else 0
        reduced = stats.batches(loader.reduced_hw) if stats else 0
        planned = int(loader.plan(epoch).sum())
        if reduced != planned and _is_primary(self.args):
            _logger.warning(f'TRD: epoch {epoch} served {reduced} reduced batches, the plan had {planned}')
        agree = ranks_agree(stats)
        if agree is False:
            _logger.warning(f'TRD: epoch {epoch}: the ranks served different size sequences; please report this')
        share = self.cost.epoch_share(reduced, batches)
        saved = self.cost.cumulative_saved(self.schedule, epoch, len(loader))
        if _is_primary(self.args):
            rate = {hw: stats.images_per_s(hw) if stats else float('nan') for hw in (loader.full_hw, loader.reduced_hw)}
            wait = {hw: stats.data_ms_per_batch(hw) if stats else float('nan') for hw in rate}
            _logger.info(
                f'TRD: epoch {epoch}: {reduced}/{batches} batches at {loader.reduced_hw[0]}x{loader.reduced_hw[1]} '
                f'({loader.path} path), compute {share:.3f} of full size, {100 * saved:.1f}% saved so far; '
                f'step rate {rate[loader.full_hw]:.1f} img/s full, {rate[loader.reduced_hw]:.1f} img/s reduced, '
                f'data wait {wait[loader.full_hw]:.1f} ms / {wait[loader.reduced_hw]:.1f} ms per batch (per process)'
                + (f'; all {torch.distributed.get_world_size()} ranks served the same sizes in the same order'
                   if agree else ''))
        return {
            'trd_reduced_batches': reduced,
            'trd_batches': batches,
            'trd_compute': round(share, 6),
            'trd_saved_cum': round(saved, 6),
        }


def ranks_agree(stats) -> Optional[bool]:
    """Whether every DDP rank served the same sequence of sizes this epoch; None when not distributed."""
    dist = torch.distributed
    if stats is None or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    prints = [None] * dist.get_world_size()
    dist.all_gather_object(prints, stats.fingerprint())
    return len(set(prints)) == 1


def install(train_module) -> TRDPlugin:
    """Attach TRD to an imported train.py module; returns the plugin (its state, for inspection)."""
    return TRDPlugin(train_module).install()


__all__ = ['install', 'TRDPlugin', 'ranks_agree']
