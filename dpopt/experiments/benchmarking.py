"""Optimizer benchmarking as COCO and IOHprofiler report it: gaps, hitting times, ERT, ECDFs.

Every number here is measured against the experiment's reference (``stats.Reference``):
the brute-force optimum when ``exact``, otherwise the best value known, which a report
must call "best known". Gaps are relative (``(signed(x) - signed(ref)) / |ref|``) so that a
perplexity of 20 against 19 and a KL of 0.2 against 0.19 read alike, and so that a log axis
spends its height on the end of the runs, where searchers differ, instead of on the first
masks (perplexities of 1e5 and more). A reference of exactly 0 (KL with identity blocks)
has no relative scale; the gap is then absolute and :func:`gap_label` says so.

Fixed target: a run's hitting time for target ``t`` is the evaluations it used until its
best valid value first came within relative gap ``t``; ``t = 0`` is the reference value
itself (to float tolerance). ERT is COCO's expected running time: every evaluation spent by
every run, successful or not, divided by the number of successes (inf when none). Fixed
budget: the median gap over seeds at each evaluation count, with quartiles only where at
least :data:`MIN_RUNS_FOR_BANDS` runs give a value (a band over 2 seeds is no spread).
Failed runs are left out, as in ``stats``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .stats import MIN_RUNS_FOR_BANDS, Experiment, Reference, Run, best_so_far, median_band, signed

__all__ = [
    "DEFAULT_TARGETS", "ECDF_TARGETS", "EXACT_TOL", "GAP_FLOOR", "MIN_RUNS_FOR_BANDS", "ERT", "GapCurve",
    "TargetRow", "budget_grid", "ert", "evals_to_target", "evaluations_used", "fidelities_differ",
    "fixed_target_table", "gap_curve", "gap_label", "gap_scale", "gap_trace", "relative_gap", "runtime_ecdf",
    "target_label",
]

DEFAULT_TARGETS = (0.1, 0.01, 0.001, 0.0)  # relative gaps; 0 = the reference value itself
ECDF_TARGETS = (0.1, 0.0316, 0.01, 0.00316, 0.001, 0.000316, 0.0001, 0.0)  # half-decades, then exact
EXACT_TOL = 1e-9  # relative float tolerance: a value this close to the reference has reached it
GAP_FLOOR = 1e-4  # gaps below this (0 included) are drawn here on a log axis


# --- gaps --------------------------------------------------------------------------------------
def gap_scale(ref: Reference | float) -> float:
    """|reference|, or 1 when it is 0: the gap is then absolute (there is no relative scale)."""
    v = abs(float(ref.value if isinstance(ref, Reference) else ref))
    return v if v > 0 and math.isfinite(v) else 1.0


def relative_gap(value, ref: Reference | float, direction: str):
    """How much worse than the reference, as a fraction of |reference|; >= 0, NaN stays NaN.

    Direction-aware through ``stats.signed``. A value better than a best-known reference
    gives 0 (the reference is the best anyone has, so nothing is below it).
    """
    r = float(ref.value if isinstance(ref, Reference) else ref)
    g = (signed(value, direction) - float(signed(r, direction))) / gap_scale(r)
    with np.errstate(invalid="ignore"):
        out = np.where(np.isnan(g), np.nan, np.maximum(g, 0.0))
    return float(out) if np.ndim(out) == 0 else out


def gap_label(ref: Reference) -> str:
    """What the gap axis measures and what it is measured against."""
    against = "exact optimum (brute force)" if ref.exact else "best known, not proven optimal"
    kind = "absolute gap x − ref (ref = 0)" if ref.value == 0 else "relative gap (x − ref) / |ref|"
    return f"{kind}; reference: {against}"


def target_label(target: float, ref: Reference) -> str:
    if target == 0:
        return "optimum" if ref.exact else "best known"
    return f"{target:.3g}" if ref.value == 0 else f"{100 * target:.3g}%"


def gap_trace(run: Run, ref: Reference, direction: str) -> np.ndarray:
    """Relative gap of the run's best valid value so far, at each evaluation (NaN before the first)."""
    return np.asarray(relative_gap(best_so_far(run.trace, direction), ref, direction), dtype=float).reshape(-1)


def evaluations_used(run: Run) -> int:
    """Evaluations the run spent (its last evaluation's index; memo hits count: they were asked)."""
    return max((e.index for e in run.trace), default=0)


def evals_to_target(run: Run, ref: Reference, direction: str, target: float) -> int | None:
    """Evaluations until the run's best valid value first came within ``target``; None if never."""
    hit = np.flatnonzero(gap_trace(run, ref, direction) <= target + EXACT_TOL)
    return run.trace[int(hit[0])].index if len(hit) else None


# --- fixed target ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ERT:
    target: float
    value: float  # expected evaluations to reach the target; inf when no run did
    successes: int
    runs: int
    spent: int  # evaluations summed over runs: to the hit when successful, all of them otherwise


def ert(runs: Sequence[Run], ref: Reference, direction: str, target: float) -> ERT:
    """COCO's expected running time: (sum of evaluations of all runs, each up to its hit or to
    its end when it never hit) / number of successful runs."""
    runs = [r for r in runs if r.ok]
    spent, succ = 0, 0
    for r in runs:
        hit = evals_to_target(r, ref, direction, target)
        spent += evaluations_used(r) if hit is None else hit
        succ += hit is not None
    return ERT(target, spent / succ if succ else math.inf, succ, len(runs), spent)


def suggested_budget(exps, target: float = 0.01) -> int | None:
    """The per-run budget the ERT suggests for the searchers that search to come within
    ``target`` of the reference: the largest finite ERT among them over every objective
    (one-shot and objective-blind searchers left out: more budget changes nothing for the
    first, and the second is reported apart). None when no such searcher ever got there:
    then no budget can be read off these runs."""
    worst = None
    for exp in exps.values():
        if exp.reference is None:
            continue
        for algo in exp.algos:
            if algo in exp.one_shot or algo in exp.blind:
                continue
            e = ert(exp.ok_runs(algo), exp.reference, exp.direction, target)
            if math.isfinite(e.value):
                worst = max(worst or 0, int(math.ceil(e.value)))
    return worst


@dataclass
class TargetRow:
    algo: str
    one_shot: bool
    cells: list[ERT]  # one per target, in the table's order


def fixed_target_table(exp: Experiment, targets: Sequence[float] = DEFAULT_TARGETS,
                       ref: Reference | None = None) -> list[TargetRow]:
    """ERT and successes per searcher and target (``ref`` defaults to the experiment's own)."""
    ref = ref or exp.reference
    if ref is None:
        return []
    return [TargetRow(a, a in exp.one_shot, [ert(exp.ok_runs(a), ref, exp.direction, t) for t in targets])
            for a in exp.algos]


# --- runtime ECDF ----------------------------------------------------------------------------------
def budget_grid(max_evals: int, n: int = 60) -> np.ndarray:
    """Evaluation counts from 1 to ``max_evals``, log-spaced, as distinct integers."""
    if max_evals < 1:
        return np.zeros(0, dtype=int)
    return np.unique(np.round(np.geomspace(1, max_evals, n)).astype(int))


def runtime_ecdf(runs: Sequence[Run], ref: Reference, direction: str, budgets: Sequence[int],
                 targets: Sequence[float] = ECDF_TARGETS) -> np.ndarray:
    """At each budget b, the fraction of (run, target) pairs whose target was hit within b evaluations."""
    runs = [r for r in runs if r.ok]
    b = np.asarray(budgets, dtype=float)
    if not runs or not len(targets):
        return np.full(len(b), np.nan)
    hits = [evals_to_target(r, ref, direction, t) for r in runs for t in targets]
    times = np.array([math.inf if h is None else h for h in hits], dtype=float)
    return (times[None, :] <= b[:, None]).mean(axis=1)


# --- fixed budget ----------------------------------------------------------------------------------
@dataclass
class GapCurve:
    x: np.ndarray  # evaluation count (or cumulative tokens)
    median: np.ndarray
    low: np.ndarray  # 25th percentile; NaN where fewer than MIN_RUNS_FOR_BANDS runs have a value
    high: np.ndarray  # 75th percentile; likewise
    n_runs: int

    @property
    def has_band(self) -> bool:
        return bool(np.isfinite(self.low).any())


def gap_curve(runs: Sequence[Run], ref: Reference, direction: str, axis: str = "evaluations") -> GapCurve:
    """Median (and quartiles, over >= MIN_RUNS_FOR_BANDS runs) of the best-so-far relative gap.

    A run that stopped early holds its last gap; before a run's first valid mask it has none.
    """
    runs = [r for r in runs if r.ok and r.trace]
    per_run = []
    for r in runs:
        if axis == "evaluations":
            xs = np.array([e.index for e in r.trace], dtype=float)
        elif axis == "units":
            xs = np.cumsum([e.units for e in r.trace], dtype=float)
        else:
            raise ValueError(f"axis must be evaluations or units, got {axis!r}")
        per_run.append((xs, gap_trace(r, ref, direction)))
    return GapCurve(*median_band(per_run), len(runs) if per_run else 0)


def fidelities_differ(exp: Experiment) -> bool:
    """Whether evaluations scored different numbers of tokens (between searchers, or within a
    racing run): only then does a tokens axis say something the evaluations axis does not."""
    units = {round(float(e.units), 9) for r in exp.runs if r.ok for e in r.trace}
    return len(units) > 1
