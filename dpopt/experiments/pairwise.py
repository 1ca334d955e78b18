"""Pairwise tests between searchers: Mann-Whitney U on final values, Holm's adjustment, win rates.

A test is run only where it could reject: with n1 and n2 runs the exact two-sided
Mann-Whitney p-value can never go below ``2 / C(n1 + n2, n1)`` (the two most extreme
orderings), so 2 runs against 2 (minimum 0.33) or 3 against 3 (0.1) cannot show anything at
0.05 however far apart they are. Such a pair says "too few runs to test" with that minimum,
instead of a p-value that reads as "no difference".
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .stats import Experiment, _scipy_stats, signed


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment: sorted p_(i) * (m - i), made monotone, capped at 1."""
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adj[i] = running
    return adj


ALPHA = 0.05


def min_p_value(n1: int, n2: int) -> float:
    """The smallest exact two-sided Mann-Whitney p-value that n1 against n2 runs can give."""
    if n1 < 1 or n2 < 1:
        return 1.0
    return min(1.0, 2.0 / math.comb(n1 + n2, n1))


@dataclass
class Pair:
    a: str
    b: str
    u: float  # Mann-Whitney U of a's signed final values against b's (NaN when not tested)
    p: float  # NaN when not tested
    p_holm: float  # Holm over the tested pairs only; NaN when not tested
    win_rate: float  # a beats b (lower signed value), ties half
    min_p: float = 0.0  # the smallest p these run counts allow
    tested: bool = True  # False: min_p >= alpha, a test could not reject

    def verdict(self, alpha: float = ALPHA) -> str:
        if not self.tested:
            return f"too few runs to test (min p = {self.min_p:.3g})"
        if self.p_holm < alpha:
            return "A better" if self.win_rate > 0.5 else "B better"
        return "no significant difference"


def win_rate(a: Sequence[float], b: Sequence[float]) -> float:
    """Fraction of (run of a, run of b) pairs where a's signed value is lower; ties count half."""
    a, b = np.asarray(a, dtype=float)[:, None], np.asarray(b, dtype=float)[None, :]
    if not a.size or not b.size:
        return math.nan
    return float(((a < b).sum() + 0.5 * (a == b).sum()) / (a.size * b.size))


def pairwise_tests(exp: Experiment, alpha: float = ALPHA) -> list[Pair]:
    """Two-sided Mann-Whitney U between every two searchers' final values, Holm-adjusted together.

    Pairs whose run counts cannot reach ``alpha`` (:func:`min_p_value`) are not tested and do
    not enter Holm's count: an untestable pair would only weaken the others' correction.
    """
    finals = {a: signed([r.value for r in exp.ok_runs(a)], exp.direction) for a in exp.algos}
    pairs = [(a, b) for a, b in itertools.combinations(exp.algos, 2) if len(finals[a]) and len(finals[b])]
    min_p = {(a, b): min_p_value(len(finals[a]), len(finals[b])) for a, b in pairs}
    raw = {}
    for a, b in pairs:
        if min_p[(a, b)] >= alpha:
            continue
        if np.ptp(np.concatenate([finals[a], finals[b]])) == 0:
            raw[(a, b)] = (len(finals[a]) * len(finals[b]) / 2, 1.0)  # all equal: no evidence either way
        else:
            res = _scipy_stats().mannwhitneyu(finals[a], finals[b], alternative="two-sided")
            raw[(a, b)] = (float(res.statistic), float(res.pvalue))
    adj = dict(zip(raw, holm([p for _, p in raw.values()]))) if raw else {}
    nan = math.nan
    return [Pair(a, b, *raw.get((a, b), (nan, nan)), float(adj.get((a, b), nan)), win_rate(finals[a], finals[b]),
                 min_p[(a, b)], (a, b) in raw)
            for a, b in pairs]


def win_matrix(exp: Experiment) -> np.ndarray:
    """``M[i, j]``: how often searcher i's final value beats searcher j's (NaN on the diagonal)."""
    finals = [signed([r.value for r in exp.ok_runs(a)], exp.direction) for a in exp.algos]
    n = len(finals)
    m = np.full((n, n), np.nan)
    for i, j in itertools.permutations(range(n), 2):
        m[i, j] = win_rate(finals[i], finals[j])
    return m


