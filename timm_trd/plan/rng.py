"""Work that must not disturb a training run's random streams: :func:`preserved_rng` restores them afterwards."""

import contextlib
import random
from typing import Optional

import numpy as np
import torch


@contextlib.contextmanager
def preserved_rng(device: Optional[torch.device] = None):
    """Restore the torch (CPU, and ``device`` when it is a CUDA device), Python and NumPy RNG states on exit."""
    devices = [device] if device is not None and device.type == 'cuda' else []
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
