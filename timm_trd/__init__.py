"""timm-trd: Temporally Resolution Decrement (Xie et al., arXiv 2112.00954) for timm's train.py.

A share of the training batches runs at a reduced resolution. The plugin attaches to the user's own
train.py (see :mod:`timm_trd.hooks`); the pieces also work alone:

- :class:`TRDSchedule` (which batches are reduced), :func:`downsample` (the device path),
  :class:`TRDLoader` (a loader that follows the plan), :class:`CostModel` (compute accounting).
"""

from .accounting import CostModel
from .config import TRDConfig, TRDConfigError, add_arguments, config_from_args
from .hooks import TRDPlugin, install
from .loader import TRDLoader
from .resize import downsample
from .schedule import TRDSchedule, compute_share

__version__ = '0.1.0'

__all__ = [
    'CostModel', 'TRDConfig', 'TRDConfigError', 'TRDLoader', 'TRDPlugin', 'TRDSchedule',
    'add_arguments', 'compute_share', 'config_from_args', 'downsample', 'install',
]
