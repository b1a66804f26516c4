"""Every DDP rank trains with the same TRD settings, checked once before the first epoch.

The schedule needs no communication (each rank computes the same plan from the same settings), so a rank
started with another ``--trd-prob`` (another node's command line, another recipe file) would train another plan
without a word: batches of different sizes meet in the gradient all-reduce. When train.py builds its training
loader (the process group is up by then), the ranks exchange their settings once (``all_gather_object``); any
difference stops every rank with one line that names the rank, the option and both values.
"""

import dataclasses
from typing import Optional

import torch

from ..errors import TRDConfigError

IGNORED = ('fast_decode', 'reduced_copy', 'short_side')
"""Settings a rank may hold on its own: how it decodes, where its (node-local) reduced copy lives, and how
``size`` was spelled (``size`` itself is compared)."""


def _option(name: str) -> str:
    return '--trd-seed (else --seed)' if name == 'seed' else f'--trd-{name.replace("_", "-")}'


def _shown(name: str, value) -> str:
    if name == 'size' and value is not None:
        return ' '.join(str(v) for v in value)
    return 'none' if value is None else f'{value:g}' if isinstance(value, float) else str(value)


def settings(config, seed: int) -> dict:
    """The settings that decide which sizes a rank trains, in which order (the plan's seed included)."""
    mine = {k: v for k, v in dataclasses.asdict(config).items() if k not in IGNORED}
    mine['seed'] = seed
    return mine


def mismatch(all_settings) -> Optional[str]:
    """The first difference from rank 0 as one line, or None when every rank has rank 0's settings."""
    first = all_settings[0]
    for rank, other in enumerate(all_settings[1:], 1):
        for name in first:
            if other.get(name) != first[name]:
                return (f'rank {rank} has {_option(name)} {_shown(name, other.get(name))}, rank 0 has '
                        f'{_shown(name, first[name])}: every rank must train with the same TRD settings; pass the '
                        f'same --trd-* options (or -c recipe) to every process')
    return None


def check_ranks_agree(config, seed: int) -> None:
    """Raise TRDConfigError (on every rank) when the ranks' settings differ; nothing when not distributed."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, settings(config, seed))
    line = mismatch(gathered)
    if line:
        raise TRDConfigError(line)
