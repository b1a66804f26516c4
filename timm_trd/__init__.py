"""timm-trd: Temporally Resolution Decrement (Xie et al., arXiv 2112.00954) for timm's train.py.

A share of the training batches runs at a reduced resolution. The plugin attaches to the user's own
train.py (see :mod:`timm_trd.plugin.hooks`); the pieces also work alone:

- :class:`TRDSchedule` (which batches are reduced), :func:`downsample` (the device path),
  :class:`TRDLoader` (a loader that follows the plan), :class:`CostModel` (compute accounting).

The layers, each importing only those below it (``tests/test_layout.py`` holds this):

- :mod:`timm_trd.cli` and :mod:`timm_trd.evaluation`: the commands (``timm-trd-train``, the demo;
  ``timm-trd-eval``).
- :mod:`timm_trd.plugin`: the attachment to train.py (parser, loader, epoch hook, accounting, resume, BatchNorm
  recalibration).
- :mod:`timm_trd.data`: the two data paths, cheap reduced loading and the reduced copy.
- :mod:`timm_trd.plan`: the seeded plan (which batch is reduced), pure logic.
- :mod:`timm_trd.errors`: :class:`TRDConfigError`, which every layer may raise.
"""

from .data.loader import TRDLoader
from .data.resize import downsample
from .errors import TRDConfigError
from .plan.schedule import TRDSchedule, compute_share
from .plugin.accounting import CostModel
from .plugin.config import TRDConfig, add_arguments, config_from_args
from .plugin.hooks import TRDPlugin, install

__version__ = '0.1.0'

__all__ = [
    'CostModel', 'TRDConfig', 'TRDConfigError', 'TRDLoader', 'TRDPlugin', 'TRDSchedule',
    'add_arguments', 'compute_share', 'config_from_args', 'downsample', 'install',
]
