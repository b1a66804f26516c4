"""When a shape bias says little: few decisions behind it, or a model near chance.

A shape bias is a ratio of two counts (decisions for the shape class, for the texture class); from 10 decisions
its 95% interval spans about half the range, and from a model that guesses it measures the guess. Both the
frequency cue conflict of :mod:`timm_trd.evaluation.evaluate` and Geirhos et al.'s stimuli
(:mod:`timm_trd.evaluation.cue_conflict`) print the count of decisions and, where one applies, this caveat.
"""

import math
from typing import Optional

MIN_DECISIONS = 100
"""Fewer shape-or-texture decisions than this: the caveat gives the 95% interval."""

NEAR_CHANCE = 1.5
"""A score below this many times chance counts as near chance."""


def wilson_interval(hits: int, n: int, z: float = 1.96):
    """The 95% Wilson score interval of a binomial share ``hits / n``."""
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def bias_caveat(shape: int, texture: int, score: Optional[float], chance: Optional[float], what: str) -> Optional[str]:
    """One line when the shape bias from ``shape`` and ``texture`` decisions rests on few of them, or when
    ``score`` (a percentage: ``what``) is less than :data:`NEAR_CHANCE` times ``chance``; else None."""
    notes = []
    decisions = shape + texture
    if decisions < MIN_DECISIONS:
        low, high = wilson_interval(shape, decisions)
        notes.append(f'it rests on {decisions} decisions only (95% interval {low:.2f}-{high:.2f}; '
                     f'{MIN_DECISIONS}+ give a usable figure: more test images, e.g. --probe-images 0 for all)')
    if score is not None and chance and score < NEAR_CHANCE * chance:
        notes.append(f'the model is near chance ({what} {score:.1f}%, chance {chance:.1f}%), so the bias measures '
                     f'its guesses, not what it learned')
    return f'caveat: the shape bias says little: {"; and ".join(notes)}' if notes else None
