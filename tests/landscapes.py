"""Synthetic objectives over masks whose optimum is known, for searcher tests and tuning.

Each returns a plain ``fn(mask) -> float`` (lower is better) built from a seed, so a test
can pick positions and seeds the tuning did not use.
"""
from __future__ import annotations

import itertools

import numpy as np

from dpopt.genome import Constraint, LayerMask


def additive(n: int, seed: int = 1, interaction: float = 0.3):
    """A cost per removed block plus mild random pairwise interactions (greedy can solve it)."""
    rng = np.random.default_rng(seed)
    cost = rng.uniform(1.0, 10.0, n)
    pair = np.triu(rng.uniform(-interaction, interaction, (n, n)), 1)

    def fitness(mask: LayerMask) -> float:
        removed = list(mask.removed())
        return float(cost[removed].sum() + sum(pair[i, j] for i, j in itertools.combinations(removed, 2)))

    return fitness


def trap(n: int, k: int, seed: int = 0, group: int = 3):
    """Greedy's trap: ``group`` blocks each costly alone but nearly free together.

    Like parts of a circuit that cancel out: removing one block of the group hurts more
    than any other single removal, so greedy never takes one, while the optimum removes
    the whole group (each pair inside it about breaks even with two ordinary blocks).
    Returns ``(fn, group_blocks)``.
    """
    rng = np.random.default_rng(seed)
    cost = rng.uniform(1.0, 3.0, n)
    members = np.sort(rng.choice(n, size=group, replace=False))
    cost[members] = 4.0
    bonus = 5.0 * group / (group * (group - 1) / 2)  # the whole group scores -1 per block removed
    pair = np.zeros((n, n))
    for i, j in itertools.combinations(members, 2):
        pair[i, j] = -bonus
    assert group <= k

    def fitness(mask: LayerMask) -> float:
        removed = np.flatnonzero(~mask.bits)
        return float(cost[removed].sum() + pair[np.ix_(removed, removed)].sum())

    return fitness, tuple(int(m) for m in members)


def rugged(n: int, seed: int = 0):
    """Log-perplexity-like: costly ends, cheap middle, and compounding damage between neighbours."""
    rng = np.random.default_rng(seed)
    depth = np.linspace(0, 1, n)
    cost = 0.05 + 0.6 * np.exp(-8 * depth) + 0.8 * np.exp(-12 * (1 - depth)) + rng.exponential(0.08, n)
    adj = rng.uniform(0.0, 0.15, n)  # removing i and i+1 together
    pair = np.triu(rng.normal(0.0, 0.04, (n, n)), 1)

    def fitness(mask: LayerMask) -> float:
        removed = np.flatnonzero(~mask.bits)
        r = set(removed.tolist())
        value = cost[removed].sum() + pair[np.ix_(removed, removed)].sum()
        value += sum(adj[i] for i in removed if i + 1 in r)
        return float(value)

    return fitness


def run_of_blocks(n: int, k: int, seed: int = 0, bonus: float = 2.5):
    """A run of ``k`` neighbouring blocks, each worse than most alone, that costs least together.

    Like SmolLM2 under KL, whose best 6 of 30 are blocks 13-18 while several of them rank
    poorly when removed alone: each neighbouring pair removed inside the run earns
    ``bonus``. Greedy never starts the run; a fit of per-block costs ranks its blocks low,
    so it must learn the pairs. Returns ``(fn, run_blocks)``.
    """
    rng = np.random.default_rng(seed)
    cost = rng.uniform(1.0, 3.0, n)
    start = int(rng.integers(1, n - k))
    run = np.arange(start, start + k)
    cost[run] = rng.uniform(2.5, 3.5, k)
    inside = np.zeros(n, dtype=bool)
    inside[run] = True

    def fitness(mask: LayerMask) -> float:
        removed = ~mask.bits
        pairs = removed[:-1] & removed[1:] & inside[:-1] & inside[1:]
        return float(cost[removed].sum() - bonus * pairs.sum())

    return fitness, tuple(int(i) for i in run)


def brute_force(constraint: Constraint, fn) -> tuple[LayerMask, float]:
    """The exact optimum by enumeration (small spaces only)."""
    best, best_fit = None, float("inf")
    for r in itertools.combinations(constraint.removable, constraint.k):
        m = LayerMask.from_removed(constraint.n_units, r)
        f = fn(m)
        if f < best_fit:
            best, best_fit = m, f
    return best, best_fit
