"""train.py's checkpoint saver, failing in one line and leaving nothing half-written behind.

timm's ``CheckpointSaver`` writes each checkpoint to ``tmp.pth.tar`` (``recovery_tmp.pth.tar`` for recovery
points) and only then moves it over ``last.pth.tar``. When the write fails (a full disk, ``ENOSPC``; a folder that
turned read-only), the ``OSError`` ends the run in a traceback from inside train.py and the half-written ``tmp``
file stays beside the good checkpoints. Here the saver train.py builds is a subclass whose write, on an
``OSError``, removes its half-written file and stops with one line: which file, why, which good checkpoint is kept
and how to go on. ``last.pth.tar`` is never replaced by a half-written file (timm moves the ``tmp`` file only after
a complete write, and a failed write goes no further).

train.py reaches the saver as ``utils.CheckpointSaver`` (``from timm import utils``), the stand-in as a
module-level ``CheckpointSaver``: the plugin's stand-in for ``utils`` builds the safe saver for the first,
:func:`make_saver_safe` replaces the second.
"""

import os

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


def make_saver_safe(train_module) -> None:
    """A script that names ``CheckpointSaver`` at module level gets the safe one there; train.py's
    ``utils.CheckpointSaver`` is made safe by the plugin's stand-in for ``utils`` (:mod:`timm_trd.plugin.hooks`)."""
    if isinstance(getattr(train_module, 'CheckpointSaver', None), type):
        train_module.CheckpointSaver = safe_saver_class(train_module.CheckpointSaver)
