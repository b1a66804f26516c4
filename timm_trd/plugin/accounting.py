"""What a TRD run really spends: FLOPs per training size, and each epoch's compute share.

FLOPs are counted once per size with ``torch.utils.flop_counter`` on one image through the bare
model (DDP and ``torch.compile`` unwrapped with timm's ``unwrap_model``, so nothing is compiled or
synchronised for it). The training step's cost (forward + backward) is a fixed multiple of the
forward's, so the forward ratio is the step ratio. Where a model cannot be run on a plain image,
the pixel-area ratio stands in, and the log says so.

With knowledge distillation (train.py's ``--kd-model-name``: timm's distillation tasks hold the teacher as
``task.teacher``) the teacher runs forward on the same, reduced, batches. It is probed at both sizes too
(a teacher built for one input size stops the run before the first step) and counted: a step costs
``3 x student forward`` (forward + a backward of about twice its FLOPs) ``+ teacher forward``.
"""

import logging
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from ..errors import TRDConfigError
from ..plan.schedule import area_ratio

_logger = logging.getLogger('timm_trd')


@dataclass(frozen=True)
class CostModel:
    """Relative cost of one batch at each training size; ``source`` says how it was obtained."""
    full_hw: Tuple[int, int]
    reduced_hw: Tuple[int, int]
    reduced_ratio: float  # cost of a reduced batch / cost of a full one
    source: str  # 'flops' or 'area'
    flops: Optional[Dict[Tuple[int, int], int]] = None  # per size: one image's step, 3 x student + teacher forward

    @classmethod
    def from_area(cls, full_hw, reduced_hw) -> 'CostModel':
        return cls(tuple(full_hw), tuple(reduced_hw), area_ratio(reduced_hw, full_hw), 'area')

    @classmethod
    def from_model(cls, model: torch.nn.Module, full_hw, reduced_hw, channels: int = 3,
                   teacher: Optional[torch.nn.Module] = None) -> 'CostModel':
        """Count the forward FLOPs of the model (and of a KD ``teacher``) at both sizes; fall back to the area ratio
        if one cannot be run on a plain image at full size either.

        This is also the probe that the model (and the teacher) accept the reduced size at all: one that runs at
        full size and fails at the reduced one (a ViT built for 224 px only) raises :class:`TRDConfigError` with the
        fix, before the first training step rather than at the first reduced batch.
        """
        full_hw, reduced_hw = tuple(full_hw), tuple(reduced_hw)
        student = _counted(model, full_hw, reduced_hw, channels, 'model')
        taught = _counted(teacher, full_hw, reduced_hw, channels, 'KD teacher') if teacher is not None else (0, 0)
        if student is None or taught is None:
            return cls.from_area(full_hw, reduced_hw)
        full_flops = STUDENT_STEP * student[0] + taught[0]
        reduced_flops = STUDENT_STEP * student[1] + taught[1]
        return cls(full_hw, reduced_hw, reduced_flops / full_flops, 'flops',
                   {full_hw: full_flops, reduced_hw: reduced_flops})

    def epoch_share(self, reduced_batches: int, batches: int) -> float:
        """Compute of an epoch relative to the same epoch all at full size."""
        if batches == 0:
            return 1.0
        return (batches - reduced_batches + reduced_batches * self.reduced_ratio) / batches


STUDENT_STEP = 3
"""A training step of the student in forwards: the forward, and a backward of about twice its FLOPs."""


def kd_teacher(task) -> Optional[torch.nn.Module]:
    """The teacher of one of timm's distillation tasks (train.py's ``task``), or None without one."""
    teacher = getattr(task, 'teacher', None)
    return getattr(teacher, 'model', teacher) if isinstance(teacher, torch.nn.Module) else None


def _counted(model, full_hw, reduced_hw, channels, role) -> Optional[Tuple[int, int]]:
    """Forward FLOPs at full and reduced size; None (with a warning) where the counter cannot run it at full size
    or sees no work; TRDConfigError where it runs at full size but not at the reduced one."""
    try:
        full_flops = count_forward_flops(model, full_hw, channels)
    except Exception as e:  # noqa: BLE001 - any model the counter cannot run falls back the same way
        _logger.warning(f'TRD: could not count the FLOPs of the {role} ({type(e).__name__}: {e}); using the '
                        f'pixel-area ratio')
        return None
    try:
        reduced_flops = count_forward_flops(model, reduced_hw, channels)
    except Exception as e:  # noqa: BLE001 - reported with the fix
        raise TRDConfigError(_fixed_size_message(model, full_hw, reduced_hw, e, role)) from None
    if not full_flops:
        _logger.warning(f'TRD: the FLOP counter saw no work in the {role} at full size; using the pixel-area ratio')
        return None
    return full_flops, reduced_flops


def _fixed_size_message(model, full_hw, reduced_hw, error, role: str = 'model') -> str:
    from timm.utils import unwrap_model

    bare = unwrap_model(model)
    name = getattr(bare, 'default_cfg', {}).get('architecture') or type(bare).__name__
    reason = ' '.join(str(error).split())[:160] or type(error).__name__
    if role != 'model':
        fix = 'pick a teacher (--kd-model-name) that accepts any input size'
    elif getattr(bare, 'dynamic_img_size', False) and not getattr(getattr(bare, 'patch_embed', None),
                                                                      'dynamic_img_pad', True):
        patch = getattr(bare.patch_embed, 'patch_size', None)
        patch = f' ({patch[0]}x{patch[1]})' if patch else ''
        fix = (f'dynamic_img_size=True is set, but the size must also be a multiple of the patch{patch}: add '
               f'--model-kwargs dynamic_img_size=True dynamic_img_pad=True, or pick a --trd-size that is a multiple '
               f'of the patch')
    elif hasattr(bare, 'dynamic_img_size'):
        fix = 'build it for any input size with --model-kwargs dynamic_img_size=True'
    else:
        fix = 'pick a model that accepts any input size'
    return (f'the {role} ({name}) runs at {full_hw[0]}x{full_hw[1]} but not at the TRD size '
            f'{reduced_hw[0]}x{reduced_hw[1]} ({type(error).__name__}: {reason}); {fix}, or set --trd-prob 0')


def count_forward_flops(model: torch.nn.Module, hw, channels: int = 3) -> int:
    """FLOPs of one forward pass of ``model`` on a single ``channels x h x w`` image."""
    from torch.utils.flop_counter import FlopCounterMode
    from timm.utils import unwrap_model

    bare = unwrap_model(model)
    param = next(bare.parameters())
    was_training = bare.training
    bare.eval()  # no BatchNorm statistics updated by the counting pass
    try:
        sample = torch.zeros(1, channels, *hw, device=param.device, dtype=param.dtype)
        # with autograd on: torch's module tracker (inside the counter) fails on a module that gets a parameter as
        # input under no_grad (timm ViTs); the graph of one image is dropped right after
        with torch.enable_grad(), FlopCounterMode(display=False) as counter:
            bare(sample)
        return int(counter.get_total_flops())
    finally:
        bare.train(was_training)
