"""Pairwise tests between searchers: Mann-Whitney U on final values, Holm's adjustment, win rates."""
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


@dataclass
class Pair:
    a: str
    b: str
    u: float  # Mann-Whitney U of a's signed final values against b's
    p: float
    p_holm: float
    win_rate: float  # a beats b (lower signed value), ties half


def win_rate(a: Sequence[float], b: Sequence[float]) -> float:
    """Fraction of (run of a, run of b) pairs where a's signed value is lower; ties count half."""
    a, b = np.asarray(a, dtype=float)[:, None], np.asarray(b, dtype=float)[None, :]
    if not a.size or not b.size:
        return math.nan
    return float(((a < b).sum() + 0.5 * (a == b).sum()) / (a.size * b.size))


def pairwise_tests(exp: Experiment) -> list[Pair]:
    """Two-sided Mann-Whitney U between every two searchers' final values, Holm-adjusted together."""
    finals = {a: signed([r.value for r in exp.ok_runs(a)], exp.direction) for a in exp.algos}
    pairs = [(a, b) for a, b in itertools.combinations(exp.algos, 2) if len(finals[a]) and len(finals[b])]
    raw = []
    for a, b in pairs:
        if np.ptp(np.concatenate([finals[a], finals[b]])) == 0:
            raw.append((len(finals[a]) * len(finals[b]) / 2, 1.0))  # all equal: no evidence either way
        else:
            res = _scipy_stats().mannwhitneyu(finals[a], finals[b], alternative="two-sided")
            raw.append((float(res.statistic), float(res.pvalue)))
    adj = holm([p for _, p in raw]) if raw else []
    return [Pair(a, b, u, p, float(pa), win_rate(finals[a], finals[b]))
            for (a, b), (u, p), pa in zip(pairs, raw, adj)]


def win_matrix(exp: Experiment) -> np.ndarray:
    """``M[i, j]``: how often searcher i's final value beats searcher j's (NaN on the diagonal)."""
    finals = [signed([r.value for r in exp.ok_runs(a)], exp.direction) for a in exp.algos]
    n = len(finals)
    m = np.full((n, n), np.nan)
    for i, j in itertools.permutations(range(n), 2):
        m[i, j] = win_rate(finals[i], finals[j])
    return m


