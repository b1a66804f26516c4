"""``timm-trd-eval``: what the paper claims, measured on a checkpoint.

- ``evaluate``: the command (accuracy at smaller test sizes, after BatchNorm recalibration, under blur and
  patch shuffle, the shape bias).
- ``eval_inputs``: its inputs checked before anything runs (checkpoint, folder, classes).
- ``cue_conflict`` and ``geirhos_categories``: the shape bias on Geirhos et al.'s stimuli and the category maps.

May import: :mod:`timm_trd.plugin`, :mod:`timm_trd.data`, :mod:`timm_trd.plan`, :mod:`timm_trd.errors`; never
the command line.
"""
