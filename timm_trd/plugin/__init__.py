"""The attachment to train.py: what :func:`timm_trd.install` puts into the loaded train.py module.

- ``hooks``: :func:`install` and :class:`TRDPlugin`: the ``--trd-*`` options in train.py's parser, the wrapped
  ``create_loader`` and ``train_one_epoch`` (the epoch hook), the checks before training.
- ``config`` (the options and their validation), ``recipe_keys`` (``-c`` keys train.py would ignore),
  ``train_inputs`` (train.py settings TRD cannot honour).
- ``accounting`` (FLOPs per size), ``report`` (the log lines and summary columns), ``resume`` (the TRD record
  in a checkpoint).
- ``bn_recal`` (BatchNorm statistics recomputed at full size), ``static_shapes`` (``torch.compile``),
  ``ddp_cpu`` (DDP on gloo), ``wandb_guard``.

May import: :mod:`timm_trd.data`, :mod:`timm_trd.plan`, :mod:`timm_trd.errors`; never the evaluation or the
command line.
"""
