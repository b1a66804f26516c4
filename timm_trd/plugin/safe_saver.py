"""train.py's checkpoint saver, failing in one line and leaving nothing half-written behind.

timm's ``CheckpointSaver`` writes each checkpoint to ``tmp.pth.tar`` (``recovery_tmp.pth.tar`` for recovery
points) and only then moves it over ``last.pth.tar``. When the write fails (a full disk, ``ENOSPC``; a folder that
turned read-only), the ``OSError`` ends the run in a traceback from inside train.py and the half-written ``tmp``
file stays beside the good checkpoints. Here the saver train.py builds is a subclass whose write, on an
``OSError``, removes its half-written file and stops with one line: which file, why, which good checkpoint is kept
and how to go on. ``last.pth.tar`` is never replaced by a half-written file (timm moves the ``tmp`` file only after
a complete write, and a failed write goes no further).

train.py reaches the saver as ``utils.CheckpointSaver`` (``from timm import utils``), the stand-in as a
module-level ``CheckpointSaver``; :func:`make_saver_safe` replaces whichever the module has.
"""

import os
import types

from ..errors import TRDConfigError


def safe_saver_class(base):
    """A subclass of timm's ``CheckpointSaver`` ``base`` whose writes fail in one line, removing the partial file."""

    class SafeCheckpointSaver(base):
        def _save(self, save_path, epoch, *a, **kw):
            try:
                return super()._save(save_path, epoch, *a, **kw)
            except OSError as e:
                try:
                    if os.path.exists(save_path):
                        os.remove(save_path)
                except OSError:
                    pass
                last = os.path.join(self.checkpoint_dir, 'last' + self.extension)
                kept = (f'{last} (the last complete checkpoint) is kept; free space and go on with --resume {last}'
                        if os.path.exists(last) else 'no complete checkpoint was written before it; free space '
                        'or pass --output DIR on another disk')
                raise TRDConfigError(f'could not write the checkpoint of epoch {epoch} to {save_path} '
                                     f'({e.strerror or e}); the partial file was removed and {kept}') from None

    SafeCheckpointSaver.__name__ = SafeCheckpointSaver.__qualname__ = f'Safe{base.__name__}'
    return SafeCheckpointSaver


class _UtilsWithSafeSaver(types.ModuleType):
    """timm.utils as train.py sees it, with the safe saver in place of ``CheckpointSaver``."""

    def __init__(self, base):
        super().__init__(base.__name__)
        self._base = base
        self.CheckpointSaver = safe_saver_class(base.CheckpointSaver)

    def __getattr__(self, name):
        return getattr(self._base, name)


def make_saver_safe(train_module) -> None:
    if isinstance(getattr(train_module, 'CheckpointSaver', None), type):
        train_module.CheckpointSaver = safe_saver_class(train_module.CheckpointSaver)
    utils = getattr(train_module, 'utils', None)
    if isinstance(utils, types.ModuleType) and isinstance(getattr(utils, 'CheckpointSaver', None), type) \
            and not isinstance(utils, _UtilsWithSafeSaver):
        train_module.utils = _UtilsWithSafeSaver(utils)
