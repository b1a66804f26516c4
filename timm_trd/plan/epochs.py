"""How many epochs train.py runs, as its learning-rate scheduler counts them.

train.py loops over ``range(start_epoch, num_epochs)`` with the ``num_epochs`` that timm's
``create_scheduler_v2`` returns, and that count depends on the scheduler: cosine, tanh and poly add
``--cooldown-epochs`` and multiply by ``--lr-cycle-limit`` / ``--lr-cycle-mul`` cycles; step, multistep and
plateau add neither cooldown nor cycles, only the warmup with ``--warmup-prefix``. Rather than re-derive those
rules, :func:`scheduled_epochs` asks timm's factory itself, with the parsed arguments and a throwaway
optimizer, so the TRD plan can be checked before anything is built. train.py's own call (wrapped by the
plugin) then confirms the count with the real number of updates per epoch. The count is a rehearsal of that
call, so what timm says while building the scheduler (the plateau scheduler's deprecation, a cosine schedule
that has no effect) is left to train.py's own call rather than printed here too, on every process.
"""

import contextlib
import logging
import warnings
from typing import Optional

import torch

_logger = logging.getLogger('timm_trd')


def scheduled_epochs(args, updates_per_epoch: int = 1) -> Optional[int]:
    """The epochs train.py will run for these arguments; None for a script without train.py's ``--sched``
    options, or when timm's factory rejects them (train.py will then stop with timm's own error)."""
    if not hasattr(args, 'sched'):
        return None
    from timm.scheduler import create_scheduler_v2, scheduler_kwargs

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    try:
        with _quiet():
            _, epochs = create_scheduler_v2(optimizer, **scheduler_kwargs(args), updates_per_epoch=updates_per_epoch)
    except Exception as e:  # noqa: BLE001 - the same call in train.py reports it properly
        _logger.debug(f'TRD: could not count the scheduled epochs ahead ({type(e).__name__}: {e})')
        return None
    return int(epochs)


@contextlib.contextmanager
def _quiet():
    """No Python warnings and no timm scheduler log below ERROR (single-threaded: train.py is still parsing)."""
    logger = logging.getLogger('timm.scheduler')
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            yield
    finally:
        logger.setLevel(level)


def planned_epochs(args) -> int:
    """The epochs to plan for at parse time: the scheduler's count, or ``--epochs`` for a script without one."""
    epochs = scheduled_epochs(args)
    return epochs if epochs is not None else int(args.epochs)
