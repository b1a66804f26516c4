"""The seeded plan: which batches of which epochs run at the reduced size. Pure logic, no I/O.

- ``schedule``: :class:`TRDSchedule`, exactly ``round(P x batches)`` reduced batches per epoch at positions drawn
  from ``(seed, epoch)`` alone, so every rank and every resumed run agrees; the compute share.
- ``epochs``: how many epochs train.py's scheduler really runs (asked of timm), for the full-resolution tail.
- ``rng``: run code on a seeded generator without disturbing the caller's random state.

May import: :mod:`timm_trd.errors`, timm and torch. Nothing else of the package imports below it.
"""
