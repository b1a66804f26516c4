"""The reduced copy of a training folder: every image stored at half resolution, read by the loader path for
its reduced batches instead of decoding the original.

- ``make``: writes the copy (``timm-trd-reduced-copy``, ``python -m timm_trd.data.reduced_copy``), resumable.
- ``index``: the copy's index and manifest (what was copied from what), shared by ``make`` and ``check``.
- ``check``: before training, that the copy serves the pictures of this training folder (checked by content).

May import: :mod:`timm_trd.errors` and the rest of :mod:`timm_trd.data`'s lower modules; nothing above data.
"""
