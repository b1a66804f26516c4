"""The ``--trd-*`` options: their definitions in train.py's parser, and their validation.

Values reach us two ways: from the command line (strings) and from a ``-c recipe.yaml`` through
``parser.set_defaults`` (already ints, floats or lists, never seen by argparse's type checks). So
argparse keeps every value as given, and :func:`config_from_args` reads and checks both kinds in one
place. A bad value raises :class:`TRDConfigError`, whose text is one line that names the fix; the
launcher prints it and exits non-zero before any training starts.
"""

import argparse
import dataclasses
import numbers
import os
from dataclasses import dataclass
from typing import Optional, Tuple

from ..errors import TRDConfigError
from ..plan.schedule import GRANULARITIES, round_half_up

MODES = ('auto', 'loader', 'device')


@dataclass(frozen=True)
class TRDConfig:
    """The user's TRD settings, checked. ``size`` is ``(height, width)``, or None for half the training size;
    ``short_side`` says it was given as one number S, the reduced size's shorter side (see :meth:`reduced_hw`)."""
    prob: float = 0.0
    size: Optional[Tuple[int, int]] = None
    short_side: bool = False
    full_res_epochs: int = 0
    granularity: str = 'batch'
    mode: str = 'auto'
    seed: Optional[int] = None
    bn_recal: int = 0
    bn_recal_every: int = 1
    bn_recal_last: int = 0
    fast_decode: bool = True
    reduced_copy: Optional[str] = None

    @property
    def enabled(self) -> bool:
        return self.prob > 0.0

    def reduced_hw(self, full_hw: Tuple[int, int]) -> Tuple[int, int]:
        """The reduced size for a training size ``(h, w)``. Both given: as given. One ``--trd-size S``: S is the
        shorter side and the longer one keeps the training size's aspect ratio (240x320 with S 120: 120x160), so
        a non-square size is not squashed. None: half of each side."""
        full_h, full_w = int(full_hw[0]), int(full_hw[1])
        if self.size is None:
            return max(1, full_h // 2), max(1, full_w // 2)
        if not self.short_side or full_h == full_w:
            return self.size
        side = self.size[0]
        scale = side / min(full_h, full_w)
        return (side, max(1, round_half_up(full_w * scale))) if full_h < full_w \
            else (max(1, round_half_up(full_h * scale)), side)

    def write_to(self, args: argparse.Namespace) -> None:
        """Store the checked values in train.py's args, as numbers (the command line gave strings), so that
        args.yaml and the wandb config hold ``trd_prob: 0.5``, not ``'0.5'``."""
        args.trd_prob = self.prob
        if self.size is not None:
            args.trd_size = self.size[0] if self.short_side else list(self.size)
        args.trd_full_res_epochs = self.full_res_epochs
        args.trd_granularity = self.granularity
        args.trd_mode = self.mode
        args.trd_seed = self.seed
        args.trd_bn_recal = self.bn_recal
        args.trd_bn_recal_every = self.bn_recal_every
        args.trd_bn_recal_last = self.bn_recal_last
        args.trd_fast_decode = self.fast_decode
        args.trd_reduced_copy = self.reduced_copy


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``--trd-*`` options (and the launcher's ``--train-script``) to train.py's parser."""
    group = parser.add_argument_group(
        'Temporally Resolution Decrement (timm-trd)',
        'Train a share of the batches at a reduced resolution (Xie et al., arXiv 2112.00954). '
        'Off unless --trd-prob > 0. Validation always runs at full size.')
    group.add_argument(
        '--trd-prob', default=0.0, metavar='P',
        help='share of training batches at the reduced size, in [0, 1]; exactly round(P x batches) per epoch '
             '(default: 0, TRD off). The paper uses 0.9 (standard recipe) and 0.5 (strong recipe).')
    group.add_argument(
        '--trd-size', default=None, nargs='+', metavar='S',
        help='reduced training size: H W, or one int S for the shorter side (S x S for a square training size; '
             'a non-square one keeps its aspect ratio) (default: half the training size)')
    group.add_argument(
        '--trd-full-res-epochs', default=0, metavar='N',
        help='train the last N epochs entirely at full size (default: 0)')
    group.add_argument(
        '--trd-granularity', default='batch', metavar='{batch,epoch}',
        help='reduce single batches, or whole epochs: round(P x epochs) of them (default: batch)')
    group.add_argument(
        '--trd-mode', default='auto', metavar='{auto,loader,device}',
        help='where small batches are made: loader = the data workers crop straight to the small size '
             '(saves decode/augment work; needs timm >= 1.0.29 and a map-style dataset, or wds/ or hfids/); device = an antialiased '
             'downsample of the collated batch (any dataset, any timm 1.0.x); auto = loader when possible '
             '(default: auto)')
    group.add_argument(
        '--trd-seed', default=None, metavar='SEED',
        help="seed of the plan of reduced batches, the same on every rank (default: train.py's --seed)")
    group.add_argument(
        '--trd-bn-recal', default=0, metavar='N',
        help='recompute the BatchNorm running statistics of the model (and of the EMA model) at full size over N '
             'training batches in all (split over the processes, averaged), after the last epoch and before the '
             'validations --trd-bn-recal-every / --trd-bn-recal-last choose; the saved checkpoints carry them '
             '(default: 0, off)')
    group.add_argument(
        '--trd-bn-recal-every', default=1, metavar='K',
        help='with --trd-bn-recal: also before the validation of every K-th epoch (epoch number + 1 a multiple of '
             'K); 0: only after the last epoch (and --trd-bn-recal-last) (default: 1, every validation)')
    group.add_argument(
        '--trd-bn-recal-last', default=0, metavar='E',
        help='with --trd-bn-recal: also before the validations of the last E epochs (default: 0)')
    group.add_argument(
        '--trd-fast-decode', default=True, action=argparse.BooleanOptionalAction,
        help='loader path: decode the JPEGs of reduced batches at the largest DCT scale (1/2, 1/4, 1/8) that '
             'leaves the crop at least the reduced size in pixels; same picture, less decoding '
             '(default: on; --no-trd-fast-decode turns it off)')
    group.add_argument(
        '--trd-reduced-copy', default=None, metavar='DIR',
        help='loader path: read reduced batches from this reduced-resolution copy of the training folder '
             '(written by timm-trd-reduced-copy; checked against it at start); full batches read the original '
             '(default: none)')
    group.add_argument(
        '--trd-auto-resume', default=False, action=argparse.BooleanOptionalAction,
        help='with --experiment NAME: continue from the latest complete checkpoint in <output>/NAME (a job that '
             'SLURM requeued or torchrun restarted), or start at epoch 0 when there is none; keeps the checkpoint '
             'history, summary.csv and the wandb run. Works with TRD off too. Without it, a run whose experiment '
             'folder holds checkpoints stops instead of writing over them (default: off; on in '
             'scripts/train_node.sh when it is given --experiment)')
    group.add_argument(
        '--train-script', default=None, metavar='PATH',
        help='(timm-trd-train launcher) path to timm\'s train.py; else $TIMM_TRAIN_SCRIPT, else ./train.py, else the '
             'copy timm-trd-train --get-train-script saved for the installed timm')


def _number(value, option: str, kind=float):
    if isinstance(value, bool):
        raise TRDConfigError(f'{option} must be a number, got {value!r}')
    if isinstance(value, numbers.Number):
        number = value
    else:
        try:
            number = float(str(value).strip())
        except ValueError:
            raise TRDConfigError(f'{option} must be a number, got {value!r}') from None
    if kind is int:
        if number != int(number):
            raise TRDConfigError(f'{option} must be a whole number, got {value!r}')
        return int(number)
    return float(number)


def _flag(value, option: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ('true', 'yes', 'on', '1'):
        return True
    if text in ('false', 'no', 'off', '0'):
        return False
    raise TRDConfigError(f'{option} is true or false, got {value!r}')


def _reduced_copy(value) -> Optional[str]:
    if value is None or str(value).strip() in ('', 'None', 'null'):
        return None
    path = str(value)
    if not os.path.isdir(path):
        raise TRDConfigError(f'--trd-reduced-copy {path} is not a directory; write the copy with '
                             f'timm-trd-reduced-copy TRAIN_FOLDER {path}')
    return path


def _choice(value, option: str, choices) -> str:
    text = str(value).strip().lower()
    if text not in choices:
        raise TRDConfigError(f'{option} must be one of {", ".join(choices)}; got {value!r}')
    return text


def _size(value) -> Optional[Tuple[int, int, bool]]:
    """``(h, w, one_number)``: the size, and whether it was given as one number S."""
    if value is None:
        return None
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(items) == 1 and isinstance(items[0], str) and len(items[0].replace(',', ' ').split()) == 2:
        items = items[0].replace(',', ' ').split()  # a YAML string such as "112 96"
    given = ' '.join(str(item) for item in items)  # as on the command line: "0", "8 8 8", not "['0']"
    if len(items) not in (1, 2):
        raise TRDConfigError(f'--trd-size takes one size S or two sizes H W, got {given}; '
                             f'e.g. --trd-size 112 or --trd-size 112 96')
    dims = [_number(item, '--trd-size', int) for item in items]
    if any(d <= 0 for d in dims):
        raise TRDConfigError(f'--trd-size must be positive, got {given}; give the reduced size in pixels, '
                             f'e.g. --trd-size 112 for training at 224')
    return dims[0], dims[-1], len(dims) == 1


def auto_resume(args: argparse.Namespace) -> bool:
    """``--trd-auto-resume`` as a bool (a ``-c`` YAML may give it as a string), written back into ``args``."""
    args.trd_auto_resume = _flag(getattr(args, 'trd_auto_resume', False) or False, '--trd-auto-resume')
    return args.trd_auto_resume


def config_from_args(args: argparse.Namespace) -> TRDConfig:
    """Read and check the ``trd_*`` values of parsed train.py args (command line or YAML alike)."""
    prob = _number(getattr(args, 'trd_prob', 0.0), '--trd-prob')
    if not 0.0 <= prob <= 1.0:
        raise TRDConfigError(f'--trd-prob must lie in [0, 1], got {prob:g}')
    full_res_epochs = _number(getattr(args, 'trd_full_res_epochs', 0), '--trd-full-res-epochs', int)
    if full_res_epochs < 0:
        raise TRDConfigError(f'--trd-full-res-epochs must be >= 0, got {full_res_epochs}')
    seed = getattr(args, 'trd_seed', None)
    if seed is not None:
        seed = _number(seed, '--trd-seed', int)
        if seed < 0:
            raise TRDConfigError(f'--trd-seed must be >= 0, got {seed}')
    bn_recal = _number(getattr(args, 'trd_bn_recal', 0), '--trd-bn-recal', int)
    if bn_recal < 0:
        raise TRDConfigError(f'--trd-bn-recal must be >= 0 (a number of batches), got {bn_recal}')
    every = _number(getattr(args, 'trd_bn_recal_every', 1), '--trd-bn-recal-every', int)
    if every < 0:
        raise TRDConfigError(f'--trd-bn-recal-every must be >= 0 (every K-th epoch; 0: only after the last epoch), '
                             f'got {every}')
    last = _number(getattr(args, 'trd_bn_recal_last', 0), '--trd-bn-recal-last', int)
    if last < 0:
        raise TRDConfigError(f'--trd-bn-recal-last must be >= 0 (a number of final epochs), got {last}')
    size = _size(getattr(args, 'trd_size', None))
    return TRDConfig(
        prob=prob,
        size=size[:2] if size else None,
        short_side=bool(size) and size[2],
        full_res_epochs=full_res_epochs,
        granularity=_choice(getattr(args, 'trd_granularity', 'batch'), '--trd-granularity', GRANULARITIES),
        mode=_choice(getattr(args, 'trd_mode', 'auto'), '--trd-mode', MODES),
        seed=seed,
        bn_recal=bn_recal,
        bn_recal_every=every,
        bn_recal_last=last,
        fast_decode=_flag(getattr(args, 'trd_fast_decode', True), '--trd-fast-decode'),
        reduced_copy=_reduced_copy(getattr(args, 'trd_reduced_copy', None)),
    )


def training_size(args: argparse.Namespace) -> Optional[Tuple[int, int]]:
    """The training size ``(h, w)`` when the arguments fix it (``--input-size C H W`` or ``--img-size S``, in the
    order timm's ``resolve_data_config`` reads them); None when it comes from the model's defaults."""
    input_size = getattr(args, 'input_size', None)
    if input_size and len(input_size) == 3:
        return int(input_size[1]), int(input_size[2])
    img_size = getattr(args, 'img_size', None)
    if img_size:
        return int(img_size), int(img_size)
    return None


def check_size(size: Tuple[int, int], full_hw: Tuple[int, int]) -> None:
    """The reduced size must be smaller than the training size in both dimensions."""
    if size[0] >= full_hw[0] or size[1] >= full_hw[1]:
        raise TRDConfigError(
            f'--trd-size {size[0]}x{size[1]} is not smaller than the training size {full_hw[0]}x{full_hw[1]}; '
            f'pick a smaller size (e.g. --trd-size {max(1, min(full_hw) // 2)})')


# train.py options (main branch) that shape its own scheduled loader; TRD builds that loader itself
_SCHEDULED_LOADER_OPTIONS = (
    ('train_batch_sizes', '--train-batch-sizes', 'TRD keeps one batch size for both resolutions'),
    ('train_size_probs', '--train-size-probs', 'it weighs the sizes of --train-img-sizes; --trd-prob sets the share'),
    ('train_batches_per_epoch', '--train-batches-per-epoch',
     'TRD plans each epoch over the batches of one pass through the data'),
)


def check_train_args(cfg: TRDConfig, args: argparse.Namespace, epochs: int) -> None:
    """Reject TRD settings that conflict with the rest of train.py's arguments, for a run of ``epochs`` epochs
    (the count train.py's scheduler runs, see :mod:`timm_trd.plan.epochs`)."""
    if not cfg.enabled:
        return
    if getattr(args, 'train_img_sizes', None):
        raise TRDConfigError(
            'TRD and --train-img-sizes both schedule training resolutions; use one of them '
            '(drop --train-img-sizes, or set --trd-prob 0)')
    for dest, option, why in _SCHEDULED_LOADER_OPTIONS:
        if getattr(args, dest, None) is not None:
            raise TRDConfigError(f'{option} does not work with TRD ({why}); drop {option} or set --trd-prob 0')
    if (getattr(args, 'train_size_schedule', None) or 'constant') != 'constant':
        raise TRDConfigError(
            f'--train-size-schedule {args.train_size_schedule} does not work with TRD (TRD places the reduced '
            f'batches itself); drop it or set --trd-prob 0')
    if getattr(args, 'naflex_loader', False):
        raise TRDConfigError('TRD does not work with the NaFlex loader; drop --naflex-loader or set --trd-prob 0')
    if cfg.full_res_epochs >= epochs:
        raise TRDConfigError(
            f'--trd-full-res-epochs {cfg.full_res_epochs} leaves no epoch for TRD in a run of {epochs} epochs '
            f'(the epochs train.py\'s scheduler runs); use a value below {epochs}')
    full_hw = training_size(args)
    if cfg.size is not None and full_hw is not None:
        check_size(cfg.reduced_hw(full_hw), full_hw)


def settings_without_effect(cfg: TRDConfig) -> list:
    """The TRD options set to something other than their default while TRD is off (``--trd-prob 0``)."""
    if cfg.enabled:
        return []
    default, given = TRDConfig(), []
    for f in dataclasses.fields(TRDConfig):
        value = getattr(cfg, f.name)
        if f.name not in ('prob', 'short_side') and value != getattr(default, f.name):
            given.append(f'--{"no-" if value is False else ""}trd-{f.name.replace("_", "-")}')
    return given
