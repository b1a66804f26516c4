"""What a TRD run really spends: FLOPs per training size, and each epoch's compute share.

FLOPs are counted once per size with ``torch.utils.flop_counter`` on one image through the bare
model (DDP and ``torch.compile`` unwrapped with timm's ``unwrap_model``, so nothing is compiled or
synchronised for it). The training step's cost (forward + backward) is a fixed multiple of the
forward's, so the forward ratio is the step ratio. Where a model cannot be run on a plain image (a
distillation wrapper, say), the pixel-area ratio stands in, and the log says so.
"""

import logging
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from .schedule import TRDSchedule

_logger = logging.getLogger('timm_trd')


@dataclass(frozen=True)
class CostModel:
    """Relative cost of one batch at each training size; ``source`` says how it was obtained."""
    full_hw: Tuple[int, int]
    reduced_hw: Tuple[int, int]
    reduced_ratio: float  # cost of a reduced batch / cost of a full one
    source: str  # 'flops' or 'area'
    flops: Optional[Dict[Tuple[int, int], int]] = None

    @classmethod
    def from_area(cls, full_hw, reduced_hw) -> 'CostModel':
        ratio = (reduced_hw[0] * reduced_hw[1]) / (full_hw[0] * full_hw[1])
        return cls(tuple(full_hw), tuple(reduced_hw), ratio, 'area')

    @classmethod
    def from_model(cls, model: torch.nn.Module, full_hw, reduced_hw, channels: int = 3) -> 'CostModel':
        """Count the model's forward FLOPs at both sizes; fall back to the area ratio if that fails."""
        try:
            flops = {tuple(hw): count_forward_flops(model, hw, channels) for hw in (full_hw, reduced_hw)}
        except Exception as e:  # noqa: BLE001 - any model the counter cannot run falls back the same way
            _logger.warning(f'TRD: could not count FLOPs ({type(e).__name__}: {e}); using the pixel-area ratio')
            return cls.from_area(full_hw, reduced_hw)
        if not flops[tuple(full_hw)]:
            _logger.warning('TRD: the FLOP counter saw no work at full size; using the pixel-area ratio')
            return cls.from_area(full_hw, reduced_hw)
        ratio = flops[tuple(reduced_hw)] / flops[tuple(full_hw)]
        return cls(tuple(full_hw), tuple(reduced_hw), ratio, 'flops', flops)

    def epoch_share(self, reduced_batches: int, batches: int) -> float:
        """Compute of an epoch relative to the same epoch all at full size."""
        if batches == 0:
            return 1.0
        return (batches - reduced_batches + reduced_batches * self.reduced_ratio) / batches

    def cumulative_saved(self, schedule: TRDSchedule, last_epoch: int, batches: int) -> float:
        """Share of compute saved over epochs ``0 .. last_epoch`` against an all-full-size run."""
        shares = [self.epoch_share(schedule.reduced_count(e, batches), batches) for e in range(last_epoch + 1)]
        return 1.0 - sum(shares) / len(shares)


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
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            bare(sample)
        return int(counter.get_total_flops())
    finally:
        bare.train(was_training)
