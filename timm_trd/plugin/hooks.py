"""Attach TRD to the user's own train.py at its seams, without copying any of it.

:func:`install` takes the imported train.py module and replaces module-level names that train.py's ``main()``
looks up when it runs (:data:`SEAMS` lists them). This file holds the seams and nothing else; what each one
calls lives in a module of its own:

- ``parser``: gains the ``--trd-*`` options (:mod:`~timm_trd.plugin.config`), so ``--help`` and ``-c`` know them; a
  usage error prints one line (not train.py's 100-line usage before it);
- ``_parse_args``: checks the ``-c`` recipe (:mod:`~timm_trd.plugin.recipe_keys`), train.py inputs that would end in a
  traceback (:mod:`~timm_trd.plugin.train_inputs`), the image folder (:mod:`~timm_trd.plugin.data_folder`: the
  class count, a missing ``val/``) and the TRD settings, against the epochs train.py's scheduler will run
  (:mod:`~timm_trd.plan.epochs`), before anything is built; with ``--resume``, compares them with the checkpoint's
  (:mod:`~timm_trd.plugin.resume`);
- ``create_loader``: the ranks' TRD settings are compared once (:mod:`~timm_trd.plugin.rank_settings`); the training
  loader is built for TRD on the data path :mod:`~timm_trd.data.data_path` picks
  (the loader path asks timm for a second, smaller transform, :mod:`~timm_trd.data.sampler`; on a streamed dataset
  the workers pick it per batch, :mod:`~timm_trd.data.streams`) and wrapped in a
  :class:`~timm_trd.data.loader.TRDLoader`; other loaders pass through. Any loader on webdataset shards too few for
  the processes x workers stops first (the ranks would fall out of step and hang); training images much smaller
  than the training size get a warning line, TRD or not;
- ``create_scheduler_v2``: passes through, and the plan follows the number of epochs it returns;
- ``train_one_epoch``: the epoch hook. It tells the loader the epoch, then adds the epoch's TRD figures and its wall
  time and images/s
  (:mod:`~timm_trd.plugin.report`, :mod:`~timm_trd.plugin.accounting`) to the train metrics, which train.py hands to timm's
  ``update_summary`` (summary.csv, wandb), and records what the epoch served in train.py's args, which its
  checkpoints save (:mod:`~timm_trd.plugin.resume`);
- ``validate``: with ``--trd-bn-recal N``, BatchNorm statistics are recomputed at full size first, on the
  schedule of ``--trd-bn-recal-every`` / ``--trd-bn-recal-last`` (:mod:`~timm_trd.plugin.bn_recal`); the epoch hook
  always recomputes them after the last epoch, before its checkpoint;
- the task classes (or ``DistributedDataParallel``): DDP on CPU processes (:mod:`~timm_trd.plugin.ddp_cpu`);
- train.py's ``CheckpointSaver``: a failed write (a full disk) stops in one line and leaves no half-written file
  (:mod:`~timm_trd.plugin.safe_saver`);
- ``wandb``: a failing ``wandb.init`` or ``wandb.log`` warns once and the run goes on (:mod:`~timm_trd.plugin.wandb_guard`).

With ``--trd-prob 0`` (the default) the loader, epoch, scheduler and validation seams call straight through
(same loader object, same metrics). What still acts at P 0: the ``-c`` key check (a typo stops the run), the shard check of ``create_loader``, the
checks of :mod:`~timm_trd.plugin.train_inputs`, the CPU-DDP fix (a run that would crash runs), the wandb guard (a wandb
failure no longer stops the run), a warning when a ``--trd-*`` setting is given that has no effect without
``--trd-prob``, and the line saying that a resumed checkpoint trained with TRD goes on without it.
"""

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Optional

import yaml

from ..data.data_path import choose_path, loader_obstacle
from ..data.data_wait import DataWaitCheck
from ..data.decode import attach_reduced_loading
from ..data.loader import TRDLoader
from ..data.sampler import sampler_mismatch, trd_batch_sampler
from ..data.streams import is_streamed, planned_stream_loader, shard_shortage
from ..errors import TRDConfigError
from ..plan.epochs import planned_epochs
from ..plan.schedule import TRDSchedule, epoch_granularity_problem
from .accounting import CostModel, kd_teacher
from .autoresume import Continuation, prepare as prepare_resume, wandb_run_id
from .bn_recal import BNRecalibrator
from .config import (TRDConfig, add_arguments, auto_resume, check_size, check_train_args, config_from_args,
                     settings_without_effect)
from .data_folder import check_folder, small_images_warning
from .ddp_cpu import make_ddp_cpu_safe
from .elastic import separate_attempts
from .rank_settings import check_ranks_agree
from .recipe_keys import check_recipe
from .report import epoch_line, ranks_agree, start_line, time_columns
from .resume import PARTIAL, ResumeState, record_served, resume_state
from .safe_saver import make_saver_safe, safe_saver_class
from .static_shapes import keep_static_shapes
from .train_inputs import check_train_inputs
from .wandb_guard import GuardedWandb, guard_wandb

_logger = logging.getLogger('timm_trd')

REQUIRED = ('parser', '_parse_args', 'create_loader', 'train_one_epoch', 'main')
"""Names a train.py must have for timm-trd to attach (``main`` is called, the others are replaced)."""

SEAMS = ('parser', '_parse_args', 'create_loader', 'create_scheduler_v2', 'train_one_epoch', 'validate',
         'wandb', 'task classes / DistributedDataParallel', 'CheckpointSaver')
"""What :func:`install` replaces in train.py (``create_scheduler_v2``, ``validate``, ``wandb`` and the saver when
present)."""

_WRAPPED = ('_parse_args', 'create_loader', 'create_scheduler_v2', 'train_one_epoch', 'validate')


def _is_primary(args) -> bool:
    """Rank 0 of the job. train.py sets ``args.rank`` after parsing; while its arguments are parsed, the rank comes
    from the launcher's environment (``RANK`` under torchrun), read with timm's ``world_info_from_env``, so what
    the parse step logs prints once per job, not once per process."""
    rank = getattr(args, 'rank', None)
    if rank is None:
        from timm.utils.distributed import world_info_from_env
        rank = world_info_from_env()[1]
    return rank == 0


def _one_line_error(message: str) -> None:
    """train.py's parser on a usage error (an unknown option, a bad value): the one line, not argparse's usage
    first (train.py's usage runs to some 100 lines, with the line that matters below it)."""
    sys.stderr.write(f'timm-trd: error: {message} (timm-trd-train --help lists the options)\n')
    sys.exit(2)


def _raise_if(problem: Optional[str]) -> None:
    if problem:
        raise TRDConfigError(problem)


class TRDPlugin:
    """The state TRD keeps for one train.py run; :func:`install` creates it."""

    def __init__(self, train_module):
        missing = [name for name in REQUIRED if not hasattr(train_module, name)]
        if missing:
            raise TRDConfigError(
                f'{getattr(train_module, "__file__", train_module)} lacks {", ".join(missing)}: timm-trd needs the '
                f'train.py of timm 1.0.x (tested with v1.0.28 and the main branch)')
        self.module = train_module
        self.original = {name: getattr(train_module, name) for name in _WRAPPED if hasattr(train_module, name)}
        self.args: Optional[argparse.Namespace] = None
        self.config: Optional[TRDConfig] = None
        self.schedule: Optional[TRDSchedule] = None
        self.loader: Optional[TRDLoader] = None
        self.cost: Optional[CostModel] = None
        self.recalibrate: Optional[BNRecalibrator] = None
        self.data_wait: Optional[DataWaitCheck] = None
        self.eval_loader_built = False  # train.py built a validation loader (it validates after the last epoch)
        self.served_share = {}  # epoch -> compute share of what the loader served
        self.resumed: Optional[ResumeState] = None  # with --resume: what the epochs before it served
        self.continuation: Optional[Continuation] = None  # resumed into its own folder (timm_trd.plugin.autoresume)
        self.channels = 3
        self._warned_unwrapped = False

    @property
    def enabled(self) -> bool:
        return self.config is not None and self.config.enabled

    # -- installation -------------------------------------------------------------------------
    def install(self) -> 'TRDPlugin':
        m = self.module
        add_arguments(m.parser)
        m.parser.error = _one_line_error
        m._parse_args = self.parse_args
        m.create_loader = self.create_loader
        m.train_one_epoch = self.train_one_epoch
        if 'create_scheduler_v2' in self.original:
            m.create_scheduler_v2 = self.create_scheduler_v2
        if 'validate' in self.original:
            m.validate = self.validate
        make_ddp_cpu_safe(m)
        make_saver_safe(m)
        guard_wandb(m)
        separate_attempts()
        if hasattr(getattr(m, 'utils', None), 'CheckpointSaver'):  # train.py's timm.utils
            m.utils = _PluginUtils(m.utils, self)
        return self

    # -- seam: argument parsing ----------------------------------------------------------------
    def parse_args(self, *a, **kw):
        recipe = check_recipe(self.module)
        args, args_text = self.original['_parse_args'](*a, **kw)
        check_train_inputs(args, recipe)
        self.continue_run(args)
        folder_info, folder_warning = check_folder(args)
        self.configure(args)
        if _is_primary(args):
            if folder_info:
                _logger.info(folder_info)
            if folder_warning:
                _logger.warning(folder_warning)
        # the checked trd_* values went back into args as numbers: redo train.py's args.yaml text with them
        args_text = yaml.safe_dump(args.__dict__, default_flow_style=False)
        return args, args_text

    def continue_run(self, args: argparse.Namespace) -> None:
        """``--trd-auto-resume`` finds the checkpoint to resume (``args.resume``), or a run that would write over its
        experiment's checkpoints stops; a run resumed into its own folder keeps its records
        (:mod:`~timm_trd.plugin.autoresume`)."""
        auto = auto_resume(args)
        folder = prepare_resume(args, _is_primary(args))
        if folder is None:
            return
        self.continuation = Continuation(folder, Path(args.resume) if getattr(args, 'resume', None) else None)
        wandb = getattr(self.module, 'wandb', None)
        if auto and isinstance(wandb, GuardedWandb) and getattr(args, 'log_wandb', False) \
                and not getattr(args, 'wandb_resume_id', None):
            wandb.before_init = lambda kwargs: wandb_run_id(folder, kwargs)

    def configure(self, args: argparse.Namespace) -> TRDConfig:
        """Check the parsed train.py args and set up the run's schedule (raises TRDConfigError)."""
        config = config_from_args(args)
        epochs = planned_epochs(args)
        check_train_args(config, args, epochs)
        if config.enabled and config.mode == 'loader':
            choose_path('loader', loader_obstacle(aug_splits=getattr(args, 'aug_splits', 0),
                                                  multi_epochs=getattr(args, 'use_multi_epochs_loader', False)))
        if config.enabled and config.bn_recal and 'validate' not in self.original:
            raise TRDConfigError(f'--trd-bn-recal needs a train.py with a module-level validate(); '
                                 f'{getattr(self.module, "__file__", "this script")} has none')
        self.args, self.config = args, config
        config.write_to(args)
        unused = settings_without_effect(config)
        if unused and _is_primary(args):
            _logger.warning(f'TRD is off (--trd-prob 0), so {", ".join(unused)} has no effect; add --trd-prob P '
                            f'(e.g. --trd-prob 0.5) to train with TRD')
        if config.enabled and not config.bn_recal and _is_primary(args) and \
                (config.bn_recal_every, config.bn_recal_last) != (1, 0):
            _logger.warning('TRD: --trd-bn-recal is 0, so --trd-bn-recal-every / --trd-bn-recal-last have no effect; '
                            'add --trd-bn-recal N (e.g. 50) to recalibrate BatchNorm')
        self.resumed = resume_state(args, epochs, _is_primary(args))
        if config.enabled:
            seed = config.seed if config.seed is not None else int(getattr(args, 'seed', 0) or 0)
            self.schedule = TRDSchedule(prob=config.prob, total_epochs=epochs, full_res_epochs=config.full_res_epochs,
                                        granularity=config.granularity, seed=seed)
            _raise_if(epoch_granularity_problem(self.schedule))
            if getattr(args, 'torchcompile', None) and keep_static_shapes() and _is_primary(args):
                _logger.info('TRD: torch.compile builds one static graph per training size '
                             '(dynamo automatic_dynamic_shapes turned off)')
        return config

    # -- seam: the training loader -------------------------------------------------------------
    def create_loader(self, dataset, *a, **kw):
        create = self.original['create_loader']
        self._check_shards(dataset, kw)
        if kw.get('is_training', False):
            self._check_ranks_agree()
        if kw.get('is_training', False) and _is_primary(self.args):
            small = small_images_warning(dataset, tuple(kw.get('input_size') or (a[0] if a else None) or (0, 0))[-2:])
            if small:
                _logger.warning(small)
        if not self.enabled or not kw.get('is_training', False):
            if self.enabled:
                self.eval_loader_built = True
            return create(dataset, *a, **kw)
        self._reject_scheduled_options(kw)
        input_size = kw.get('input_size', a[0] if a else None)
        if input_size is None or len(input_size) != 3:
            raise TRDConfigError(f'TRD needs the training input size as (C, H, W), train.py passed {input_size!r}')
        self.channels = int(input_size[0])
        full_hw = (int(input_size[1]), int(input_size[2]))
        reduced_hw = self._reduced_size(full_hw)
        path, why = choose_path(self.config.mode, loader_obstacle(
            dataset, kw.get('num_aug_splits', 0), kw.get('use_multi_epochs_loader', False)), is_streamed(dataset))
        if self.config.bn_recal:
            args = self.args
            self.recalibrate = BNRecalibrator(
                create, dataset, a, kw, self.config.bn_recal, distributed=bool(getattr(args, 'distributed', False)),
                world_size=int(getattr(args, 'world_size', 1) or 1), channels_last=bool(getattr(args, 'channels_last', False)),
                primary=_is_primary(args), rank=int(getattr(args, 'rank', 0) or 0), seed=self.schedule.seed,
                every=self.config.bn_recal_every, last=self.config.bn_recal_last)

        loader, stream = None, None
        if path == 'loader' and is_streamed(dataset):
            loader, stream = planned_stream_loader(create, dataset, a, kw, (self.channels, *reduced_hw))
        elif path == 'loader':
            scheduled = dict(kw, input_size_choices=[(self.channels, *full_hw), (self.channels, *reduced_hw)],
                             batch_choice_weights=[1.0 - self.config.prob, self.config.prob],
                             batch_choice_seed=self.schedule.seed)
            with trd_batch_sampler(self.schedule):
                loader = create(dataset, *a, **scheduled)
            mismatch = sampler_mismatch(loader.batch_sampler, self.schedule)
            if mismatch:
                if self.config.mode == 'loader':
                    raise TRDConfigError(f'--trd-mode loader cannot run: {mismatch}; use --trd-mode device (or auto)')
                path, why, loader = 'device', f'auto: the loader path failed its start-up check ({mismatch})', None
        if loader is None:
            loader = create(dataset, *a, **kw)
        loading = attach_reduced_loading(loader, path, self.config, streamed=is_streamed(dataset))  # raises on a bad --trd-reduced-copy
        self.loader = TRDLoader(loader, self.schedule, full_hw, reduced_hw, resize=path == 'device',
                                device=kw.get('device', getattr(self.args, 'device', None)), stream=stream)
        self.data_wait = DataWaitCheck(kw.get('num_workers', 0), path, self.config.reduced_copy)
        if _is_primary(self.args):
            _logger.info(start_line(self.config, self.schedule, path, why, full_hw, reduced_hw))
            if loading:
                _logger.info(loading)
        return self.loader

    def _check_shards(self, dataset, kw):
        """A webdataset split with fewer shards than processes x workers stops here (TRD on or off), before the
        ranks fall out of step (see :mod:`~timm_trd.data.streams`)."""
        training = bool(kw.get('is_training', False))
        shortage = shard_shortage(dataset, kw.get('num_workers', 1), training, one_rank=self.enabled and training)
        if shortage:
            raise TRDConfigError(f'--dataset {getattr(self.args, "dataset", "wds/...")}: {shortage}')

    def _check_ranks_agree(self):
        """Every rank has the same TRD settings (:mod:`~timm_trd.plugin.rank_settings`); only rank 0 prints the
        line, the others exit with the same status."""
        if self.config is None:
            return
        seed = self.schedule.seed if self.schedule is not None else int(getattr(self.args, 'seed', 0) or 0)
        try:
            check_ranks_agree(self.config, seed)
        except TRDConfigError:
            if not _is_primary(self.args):
                sys.exit(2)
            raise

    @staticmethod
    def _reject_scheduled_options(kw):
        """train.py's own scheduled-loader arguments (checked at parse time too, for train.py's options)."""
        given = [name for name in ('batch_size_choices', 'num_batches') if kw.get(name) is not None]
        if (kw.get('batch_choice_schedule') or 'constant') != 'constant':
            given.append(f'batch_choice_schedule={kw["batch_choice_schedule"]}')
        if given:
            raise TRDConfigError(f'TRD builds the scheduled loader itself and cannot honour create_loader\'s '
                                 f'{", ".join(given)}; drop the train.py options that set them, or set --trd-prob 0')

    def _reduced_size(self, full_hw):
        size = self.config.reduced_hw(full_hw)
        if _is_primary(self.args):
            if self.config.size is None:
                _logger.info(f'TRD: no --trd-size given, using half the training size: {size[0]}x{size[1]}')
            elif self.config.short_side and size[0] != size[1]:
                _logger.info(f'TRD: --trd-size {self.config.size[0]} is the shorter side: {size[0]}x{size[1]} for '
                             f'the {full_hw[0]}x{full_hw[1]} training size keeps its aspect ratio '
                             f'(--trd-size H W sets both)')
        check_size(size, full_hw)  # the training size may come from the model's defaults: check again
        return size

    # -- seam: the learning-rate scheduler (the number of epochs) ------------------------------
    def create_scheduler_v2(self, *a, **kw):
        scheduler, num_epochs = self.original['create_scheduler_v2'](*a, **kw)
        if self.enabled:
            self.set_total_epochs(int(num_epochs))
        return scheduler, num_epochs

    def set_total_epochs(self, epochs: int) -> None:
        """Plan for the ``epochs`` train.py runs (its scheduler's count), before its first epoch."""
        if epochs == self.schedule.total_epochs:
            return
        if self.config.full_res_epochs >= epochs:
            raise TRDConfigError(
                f'--trd-full-res-epochs {self.config.full_res_epochs} leaves no epoch for TRD in a run of {epochs} '
                f'epochs (the epochs train.py\'s scheduler runs); use a value below {epochs}')
        if _is_primary(self.args):
            _logger.info(f'TRD: train.py\'s scheduler runs {epochs} epochs, not the {self.schedule.total_epochs} '
                         f'counted ahead; the plan follows it')
        self.schedule = dataclasses.replace(self.schedule, total_epochs=epochs)
        _raise_if(epoch_granularity_problem(self.schedule))
        if self.loader is not None:
            self.loader.set_schedule(self.schedule)

    # -- seam: the epoch ------------------------------------------------------------------------
    def train_one_epoch(self, epoch, model, loader, *a, **kw):
        train = self.original['train_one_epoch']
        if not self.enabled:
            return train(epoch, model, loader, *a, **kw)
        if not isinstance(loader, TRDLoader):
            if not self._warned_unwrapped:
                _logger.warning('TRD: train_one_epoch got a loader timm-trd did not build; TRD is not applied')
                self._warned_unwrapped = True
            return train(epoch, model, loader, *a, **kw)
        loader.set_epoch(epoch)
        if self.cost is None:  # also the probe that the model (and a KD teacher) run at the reduced size
            teacher = kd_teacher(kw.get('task'))
            self.cost = CostModel.from_model(model, loader.full_hw, loader.reduced_hw, self.channels, teacher)
            if _is_primary(self.args):
                counted = 'FLOPs counted' + (', the student\'s step and the KD teacher\'s forward' if teacher else '')
                _logger.info(
                    f'TRD: a {loader.reduced_hw[0]}x{loader.reduced_hw[1]} batch costs {self.cost.reduced_ratio:.4f} '
                    f'of a full one ({counted if self.cost.source == "flops" else "pixel-area ratio"})')
                if self.recalibrate is not None:
                    _logger.info(self.recalibrate.plan_line(self.eval_loader_built, self._ema_on_cpu()))
        if self.recalibrate is not None:
            self.recalibrate.trained()
        started = time.perf_counter()
        metrics = train(epoch, model, loader, *a, **kw)
        seconds = time.perf_counter() - started
        figures = self.epoch_figures(epoch, loader)
        figures.update(time_columns(loader.last_stats, seconds, int(getattr(self.args, 'world_size', 1) or 1)))
        if self.recalibrate is not None and epoch == self.schedule.total_epochs - 1:
            self.recalibrate_last(epoch, model, kw)
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
        self.served_share[epoch] = share
        if self.args is not None:  # into the args train.py's checkpoints save (see timm_trd.plugin.resume)
            record_served(self.args, {**(self.resumed.served if self.resumed else {}), **self.served_share},
                          self.resumed.partial if self.resumed else None)
        saved = self.saved_so_far(epoch, len(loader))
        if _is_primary(self.args):
            _logger.info(epoch_line(epoch, loader, stats, reduced, batches, share, saved, agree))
            wait = self.data_wait(stats, loader.full_hw, loader.reduced_hw) if self.data_wait else None
            if wait:
                _logger.warning(wait)
        return {
            'trd_reduced_batches': reduced,
            'trd_batches': batches,
            'trd_compute': round(share, 6),
            'trd_saved_cum': round(saved, 6),
        }

    def saved_so_far(self, last_epoch: int, batches: int) -> float:
        """Share of compute saved over epochs ``0 .. last_epoch`` against an all-full-size run: what was served;
        for epochs before a resume, what the checkpoint records they served, else what the plan had them serve
        while the plan is unchanged, else (no record, other plan) they are left out (:mod:`timm_trd.plugin.resume`)."""
        resumed, shares = self.resumed, []  # (compute share, weight): an epoch a recovery checkpoint cut weighs less
        for e in range(last_epoch + 1):
            if e in self.served_share:
                shares.append((self.served_share[e], 1.0))
            elif resumed is not None and e in resumed.served:
                shares.append((resumed.served[e], 1.0))
            elif resumed is not None and e in resumed.partial:
                shares.append(tuple(resumed.partial[e]))
            elif resumed is None or resumed.past_at_plan:
                shares.append((self.cost.epoch_share(self.schedule.reduced_count(e, batches), batches), 1.0))
        return 1.0 - sum(s * w for s, w in shares) / sum(w for _, w in shares)

    # -- seam: train.py's utils (CheckpointSaver, update_summary) -------------------------------------
    def saver_built(self, saver) -> None:
        """train.py built its CheckpointSaver: a continued run gets its history back; with TRD, a recovery
        checkpoint records what its epoch served so far (:data:`~timm_trd.plugin.resume.PARTIAL`)."""
        if self.continuation is not None:
            self.continuation.restore_saver(saver)
        if self.enabled and hasattr(saver, 'save_recovery'):
            save_recovery = saver.save_recovery

            def save_recovery_with_record(epoch, *a, **kw):
                self.record_partial(epoch)
                return save_recovery(epoch, *a, **kw)
            saver.save_recovery = save_recovery_with_record

    def record_partial(self, epoch: int) -> None:
        """What epoch ``epoch`` has served so far, into the args the recovery checkpoint saves: its compute share
        and the share of the epoch's batches served."""
        stats = self.loader.last_stats if self.loader is not None else None
        if stats is None or self.cost is None or self.args is None or not len(self.loader):
            return
        batches, reduced = stats.batches(), stats.batches(self.loader.reduced_hw)
        if batches:
            partial = {int(epoch): [round(self.cost.epoch_share(reduced, batches), 6),
                                    round(batches / len(self.loader), 6)]}
            setattr(self.args, PARTIAL, {**(getattr(self.resumed, 'partial', None) or {}), **partial})

    def update_summary(self, update_summary, epoch, *a, **kw):
        if self.continuation is not None:
            return self.continuation.update_summary(update_summary, epoch, *a, **kw)
        return update_summary(epoch, *a, **kw)

    # -- seam: validation -----------------------------------------------------------------------
    def validate(self, model, *a, **kw):
        if self.enabled and self.recalibrate is not None:
            epoch = self.loader.epoch if self.loader else 0
            if self.recalibrate.due(epoch, self.schedule.total_epochs):
                self.recalibrate(model, f' of the model{kw.get("log_suffix", "")}', epoch=epoch,
                                 autocast=kw.get('amp_autocast'))
        return self.original['validate'](model, *a, **kw)

    def _ema_on_cpu(self) -> bool:
        return bool(getattr(self.args, 'model_ema', False) and getattr(self.args, 'model_ema_force_cpu', False))

    def recalibrate_last(self, epoch: int, model, kw) -> None:
        """After the last epoch, before train.py validates (if it does) and writes its last checkpoint: the model and
        its EMA (train.py's task, or an older train.py's ``model_ema``), unless the EMA lives on the CPU."""
        task = kw.get('task')
        ema = task.get_trainable_module(ema=True) if hasattr(task, 'get_trainable_module') else kw.get('model_ema')
        why = f'after the last epoch, for {"its validation and " if self.eval_loader_built else ""}the last checkpoint'
        autocast = kw.get('amp_autocast')  # train.py's, as its validation runs
        self.recalibrate(model, ' of the model', epoch=epoch, why=why, autocast=autocast)
        if ema is not None and not self._ema_on_cpu():
            self.recalibrate(ema, ' of the model (EMA)', epoch=epoch, why=why, autocast=autocast)


class _PluginUtils:
    """Stands in for train.py's ``utils`` (timm.utils): every name passes through, except the two that keep a run's
    checkpoints and records: the ``CheckpointSaver`` train.py builds is the safe one
    (:mod:`~timm_trd.plugin.safe_saver`) and is handed to :meth:`TRDPlugin.saver_built`, and ``update_summary`` goes
    through :meth:`TRDPlugin.update_summary`."""

    def __init__(self, utils, plugin: TRDPlugin):
        self._utils = utils
        self._plugin = plugin
        self._saver_class = safe_saver_class(utils.CheckpointSaver)

    def __getattr__(self, name):
        return getattr(self._utils, name)

    def CheckpointSaver(self, *a, **kw):  # noqa: N802 - timm's name
        saver = self._saver_class(*a, **kw)
        self._plugin.saver_built(saver)
        return saver

    def update_summary(self, epoch, *a, **kw):
        return self._plugin.update_summary(self._utils.update_summary, epoch, *a, **kw)


def install(train_module) -> TRDPlugin:
    """Attach TRD to an imported train.py module; returns the plugin (its state, for inspection)."""
    return TRDPlugin(train_module).install()


__all__ = ['install', 'TRDPlugin', 'ranks_agree', 'REQUIRED', 'SEAMS']
