"""Keep a run going when wandb cannot log.

train.py calls ``wandb.init(...)`` once, on the primary rank, when ``--log-wandb`` is given and wandb imports.
If that call raises (no API key on a cluster node, no network, a bad ``--wandb-resume-id``), train.py stops,
after the model, data and output folder are built. :func:`guard_wandb` replaces train.py's module-level
``wandb`` name with a stand-in whose ``init`` catches the error, logs one warning and sets train.py's
``has_wandb`` to False, which train.py reads at every epoch (``log_wandb=args.log_wandb and has_wandb``):
the run goes on, and summary.csv still gets every metric. Without wandb installed train.py already warns
once and goes on, so nothing is replaced then.
"""

import logging

_logger = logging.getLogger('timm_trd')


class GuardedWandb:
    """Stands in for train.py's ``wandb`` module: every attribute passes through, a failing ``init`` turns wandb off."""

    def __init__(self, wandb, train_module):
        self._wandb = wandb
        self._train_module = train_module

    def __getattr__(self, name):
        return getattr(self._wandb, name)

    def init(self, *args, **kwargs):
        try:
            return self._wandb.init(*args, **kwargs)
        except Exception as e:  # wandb raises UsageError, CommError, ... (and may change them)
            reason = ' '.join(str(e).split()) or 'no message'
            _logger.warning(
                f'timm-trd: wandb.init failed ({type(e).__name__}: {reason}); training goes on without wandb '
                f'(summary.csv still gets every metric). Fix the wandb setup (wandb login, WANDB_MODE=offline) '
                f'or drop --log-wandb')
            self._train_module.has_wandb = False
            return None


def guard_wandb(train_module) -> bool:
    """Guard train.py's ``wandb.init``; returns whether a guard was installed (wandb imported in train.py)."""
    wandb = getattr(train_module, 'wandb', None)
    if wandb is None or not getattr(train_module, 'has_wandb', False):
        return False
    if not isinstance(wandb, GuardedWandb):
        train_module.wandb = GuardedWandb(wandb, train_module)
    return True
