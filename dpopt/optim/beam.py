"""Beam search: greedy removal that keeps several partial solutions alive.

A beam of width ``w`` recovers from one misleading greedy step as long as the right path
stays among the ``w`` best, at ``w`` times greedy's cost per step.
"""
from __future__ import annotations

from ..genome import Constraint
from .base import register_searcher
from .greedy import StepwiseSearch


@register_searcher("beam")
class BeamSearch(StepwiseSearch):
    """Greedy removal keeping the best ``width`` partial masks per step.

    Options: ``width`` (int >= 1, default 4): distinct masks kept after every step.
    """

    name = "beam"

    def __init__(self, constraint: Constraint, seed: int = 0, width: int = 4):
        super().__init__(constraint, seed, width=width, direction="remove")
