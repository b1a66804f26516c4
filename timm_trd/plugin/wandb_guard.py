"""Keep a run going when wandb cannot log.

train.py calls ``wandb.init(...)`` once, on the primary rank, when ``--log-wandb`` is given and wandb imports.
If that call raises (no API key on a cluster node, no network, a bad ``--wandb-resume-id``), train.py stops,
after the model, data and output folder are built. :func:`guard_wandb` replaces train.py's module-level
``wandb`` name with a stand-in whose ``init`` catches the error, logs one warning and sets train.py's
``has_wandb`` to False, which train.py reads at every epoch (``log_wandb=args.log_wandb and has_wandb``):
the run goes on, and summary.csv still gets every metric. A ``wandb.log`` that raises later (timm's
``update_summary`` calls it once per epoch; the network drops, the run was closed) is handled the same way.
Without wandb installed train.py already warns once and goes on, so nothing is replaced then.
"""

import logging

_logger = logging.getLogger('timm_trd')


class GuardedWandb:
    """Stands in for train.py's ``wandb`` module: every attribute passes through; a failing ``init`` or ``log``
    turns wandb off."""

    def __init__(self, wandb, train_module):
        self._wandb = wandb
        self._train_module = train_module
        self.before_init = None  # kwargs -> kwargs, e.g. the run id a restarted job continues (autoresume)

    def __getattr__(self, name):
        return getattr(self._wandb, name)

    def init(self, *args, **kwargs):
        if self.before_init is not None:
            kwargs = self.before_init(kwargs)
        try:
            return self._wandb.init(*args, **kwargs)
        except Exception as e:  # wandb raises UsageError, CommError, ... (and may change them)
            self._turn_off('wandb.init', e, 'Fix the wandb setup (wandb login, WANDB_MODE=offline) or drop --log-wandb')
            return None

    def log(self, *args, **kwargs):
        try:
            return self._wandb.log(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - whatever stops wandb must not stop the training
            self._turn_off('wandb.log', e, 'The wandb run so far is kept; check the network or the wandb service')
            return None

    def _turn_off(self, call, error, fix):
        reason = ' '.join(str(error).split()) or 'no message'
        _logger.warning(
            f'timm-trd: {call} failed ({type(error).__name__}: {reason}); training goes on without wandb '
            f'(summary.csv still gets every metric). {fix}')
        self._train_module.has_wandb = False


def guard_wandb(train_module) -> bool:
    """Guard train.py's ``wandb`` (its ``init``) and the one timm's ``update_summary`` logs with; returns whether a
    guard was installed (wandb imported in train.py)."""
    wandb = getattr(train_module, 'wandb', None)
    if wandb is None or not getattr(train_module, 'has_wandb', False):
        return False
    if not isinstance(wandb, GuardedWandb):
        train_module.wandb = GuardedWandb(wandb, train_module)
    import timm.utils.summary as summary  # update_summary calls ``wandb.log`` of its own module
    logger = getattr(summary, 'wandb', None)
    if logger is not None:  # bound to this run's train.py (a test process may load several)
        summary.wandb = GuardedWandb(logger._wandb if isinstance(logger, GuardedWandb) else logger, train_module)
    return True
