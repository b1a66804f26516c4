"""The command line: ``timm-trd-train`` and ``python -m timm_trd``.

- ``launcher``: finds train.py, installs the plugin, runs train.py's ``main()``; ``--help``.
- ``train_script``: where train.py comes from (found, downloaded with ``--get-train-script``, checked, loaded).
- ``demo``: ``timm-trd-train --demo``, a first run on generated images.

May import every layer below: :mod:`timm_trd.plugin`, :mod:`timm_trd.data`, :mod:`timm_trd.plan`,
:mod:`timm_trd.errors`; not :mod:`timm_trd.evaluation` (a command of its own).
"""
