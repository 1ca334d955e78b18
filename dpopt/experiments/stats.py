"""The numbers behind ``dpopt compare``, as pure functions over plain data (the study's own
questions are in :mod:`.agreement`).

Nothing here knows about models, studies or files: a :class:`Run` is what one (searcher,
seed) left behind, and every function maps runs to numbers. ``report.py`` draws and writes
them; the tests check them against values computed by hand. Raw objective values are kept
as they are (perplexity, accuracy); :func:`signed` turns them into "lower is better" for
comparisons through :func:`dpopt.fitness.to_minimize`. Failed runs are shown in tables but left out of every
statistic.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..fitness import to_minimize

# Fewer runs than this get no spread (no sd, no quartile band, no bootstrap): with 2 or 3
# seeds a band is the runs themselves, drawn as if it were a distribution.
MIN_RUNS_FOR_BANDS = 5


def _scipy_stats():
    """``scipy.stats``, imported where a report needs it: it costs ~60 MB resident, which a
    search process (every worker, every `dpopt search`) would otherwise carry for nothing."""
    from scipy import stats

    return stats


# --- input model -------------------------------------------------------------------------
@dataclass(frozen=True)
class Evaluation:
    """One mask scored for a run, in ask order (memo hits included: the searcher asked them)."""

    index: int  # 1-based evaluation count within the run
    units: float  # tokens (or questions) this evaluation scored
    value: float  # raw objective value
    valid: bool  # the mask satisfies the run's constraint (greedy's partial masks do not)
    removed: tuple[int, ...] = ()


@dataclass
class Run:
    algo: str
    seed: int
    status: str = "ok"  # "ok" | "failed"
    error: str = ""
    removed: tuple[int, ...] = ()  # the final mask's removed blocks
    value: float = math.nan  # the final (best valid) raw value
    wall_seconds: float = math.nan
    trace: list[Evaluation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class Reference:
    value: float
    removed: tuple[int, ...]
    exact: bool  # True: brute-force optimum over the whole space; False: best mask any run found


@dataclass
class Experiment:
    """Every run of a compare grid on one objective."""

    objective: str
    direction: str  # "minimize" | "maximize"
    n_blocks: int
    runs: list[Run]
    reference: Reference | None = None
    # searchers whose asked masks ignore the objective, and those that answer without searching
    # (``SearcherBase.objective_blind`` / ``one_shot``): the study and the plots set them apart
    blind: frozenset[str] = frozenset()
    one_shot: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.direction not in ("minimize", "maximize"):
            raise ValueError(f"direction must be minimize or maximize, got {self.direction!r}")

    @property
    def algos(self) -> list[str]:
        """Searchers in the order they first appear (the order the user listed them)."""
        return list(dict.fromkeys(r.algo for r in self.runs))

    def ok_runs(self, algo: str) -> list[Run]:
        return [r for r in self.runs if r.algo == algo and r.ok]


def signed(values, direction: str) -> np.ndarray:
    """Raw values as "lower is better" (:func:`dpopt.fitness.to_minimize`)."""
    v = np.asarray(values, dtype=float)
    return to_minimize(v, direction)


def best_reference(exp: Experiment) -> Reference | None:
    """The experiment's reference, or else the best final mask of any successful run."""
    if exp.reference is not None:
        return exp.reference
    ok = [r for r in exp.runs if r.ok and np.isfinite(r.value)]
    if not ok:
        return None
    best = min(ok, key=lambda r: float(signed(r.value, exp.direction)))
    return Reference(best.value, tuple(best.removed), exact=False)


# --- anytime curves ----------------------------------------------------------------------
def best_so_far(trace: Sequence[Evaluation], direction: str) -> np.ndarray:
    """Best raw value among valid evaluations up to each one; NaN before the first valid one."""
    out = np.full(len(trace), np.nan)
    best = math.inf
    for i, e in enumerate(trace):
        s = float(signed(e.value, direction))
        if e.valid and np.isfinite(s) and s < best:
            best = s
        if np.isfinite(best):
            out[i] = float(signed(best, direction))
    return out


def _step_at(xs: np.ndarray, ys: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Value of the right-continuous step function (xs, ys) at each grid point; NaN before xs[0]."""
    idx = np.searchsorted(xs, grid, side="right") - 1
    out = np.where(idx >= 0, ys[np.clip(idx, 0, None)] if len(ys) else np.nan, np.nan)
    return out.astype(float)


@dataclass
class Curve:
    x: np.ndarray
    median: np.ndarray
    low: np.ndarray  # 25th percentile over seeds; NaN where fewer than MIN_RUNS_FOR_BANDS have a value
    high: np.ndarray  # 75th percentile; likewise
    n_runs: int


def anytime_curve(runs: Sequence[Run], direction: str, axis: str = "evaluations") -> Curve:
    """Median and inter-quartile band over seeds of the best-so-far value.

    ``axis="evaluations"``: x is the evaluation count; ``"units"``: x is the cumulative tokens
    (or questions) scored. A run that stopped early holds its last value; before a run's first
    valid mask its value is missing and the median is over the runs that have one.
    """
    per_run = []
    for r in runs:
        ys = best_so_far(r.trace, direction)
        if axis == "evaluations":
            xs = np.array([e.index for e in r.trace], dtype=float)
        elif axis == "units":
            xs = np.cumsum([e.units for e in r.trace], dtype=float)
        else:
            raise ValueError(f"axis must be evaluations or units, got {axis!r}")
        per_run.append((xs, ys))
    return Curve(*median_band(per_run), len(runs))


def median_band(per_run: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, ...]:
    """Step curves ``(xs, ys)`` of several runs on their common grid: (grid, median, 25th,
    75th percentile), the quartiles NaN wherever fewer than ``MIN_RUNS_FOR_BANDS`` runs have a value."""
    grid = np.unique(np.concatenate([xs for xs, _ in per_run])) if per_run else np.zeros(0)
    if not len(grid):
        return grid, grid, grid, grid
    mat = np.vstack([_step_at(xs, ys, grid) for xs, ys in per_run])
    enough = np.isfinite(mat).sum(axis=0) >= MIN_RUNS_FOR_BANDS
    with np.errstate(all="ignore"), _quiet_nan():
        med = np.nanmedian(mat, axis=0)
        low = np.where(enough, np.nanpercentile(mat, 25, axis=0), np.nan)
        high = np.where(enough, np.nanpercentile(mat, 75, axis=0), np.nan)
    return grid, med, low, high


@contextlib.contextmanager
def _quiet_nan():
    """All-NaN columns (no valid mask yet in any run) are expected; silence numpy's warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def ecdf(values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted values and the fraction of runs at or below each (the empirical CDF)."""
    v = np.sort(np.asarray(values, dtype=float))
    return v, np.arange(1, len(v) + 1) / max(len(v), 1)


# --- the summary table --------------------------------------------------------------------
def within(value: float, ref: float, direction: str, tol: float = 0.01) -> bool:
    """``value`` is no worse than ``ref`` by more than ``tol`` of |ref|."""
    return float(signed(value, direction)) <= float(signed(ref, direction)) + tol * abs(ref)


def evals_to_reach(run: Run, ref: float, direction: str, tol: float = 0.01) -> int | None:
    """The evaluation count at which the run's best-so-far first came within ``tol`` of ``ref``."""
    for e, b in zip(run.trace, best_so_far(run.trace, direction)):
        if np.isfinite(b) and within(b, ref, direction, tol):
            return e.index
    return None


def gap(value: float, ref: float, direction: str) -> float:
    """How much worse than the reference (>= 0 when the reference is the true optimum)."""
    return float(signed(value, direction) - signed(ref, direction))


@dataclass
class Row:
    algo: str
    n_ok: int
    n_failed: int
    errors: list[str]
    values: tuple[float, ...]  # the successful runs' final values, in run order
    mean: float
    sd: float  # NaN over fewer than MIN_RUNS_FOR_BANDS runs: show the values instead
    median: float
    best: float
    evals_median: float  # median evaluations to come within 1% of the reference, over seeds that did
    n_reached: int
    wall_mean: float
    gap_mean: float
    gap_rel_mean: float  # gap / |reference|


def summary_table(exp: Experiment, tol: float = 0.01) -> list[Row]:
    ref = best_reference(exp)
    rows = []
    for algo in exp.algos:
        runs = [r for r in exp.runs if r.algo == algo]
        ok = [r for r in runs if r.ok]
        vals = np.array([r.value for r in ok], dtype=float)
        reach = [evals_to_reach(r, ref.value, exp.direction, tol) for r in ok] if ref else []
        reached = [x for x in reach if x is not None]
        gaps = np.array([gap(v, ref.value, exp.direction) for v in vals]) if ref else np.zeros(0)
        rows.append(Row(
            algo=algo, n_ok=len(ok), n_failed=len(runs) - len(ok),
            errors=[f"seed {r.seed}: {r.error}" for r in runs if not r.ok],
            values=tuple(float(v) for v in vals), mean=_mean(vals),
            sd=float(np.std(vals, ddof=1)) if len(vals) >= MIN_RUNS_FOR_BANDS else math.nan,
            median=float(np.median(vals)) if len(vals) else math.nan,
            best=float(signed(np.min(signed(vals, exp.direction)), exp.direction)) if len(vals) else math.nan,
            evals_median=float(np.median(reached)) if reached else math.nan, n_reached=len(reached),
            wall_mean=_mean([r.wall_seconds for r in ok]),
            gap_mean=_mean(gaps), gap_rel_mean=_mean(gaps / abs(ref.value)) if ref and ref.value else math.nan,
        ))
    return rows


def _mean(v) -> float:
    v = np.asarray(v, dtype=float)
    return float(v.mean()) if len(v) else math.nan


# --- which blocks ----------------------------------------------------------------------------
def removal_frequency(exp: Experiment) -> np.ndarray:
    """``F[i, b]``: fraction of searcher i's successful runs whose final mask removes block b."""
    out = np.full((len(exp.algos), exp.n_blocks), np.nan)
    for i, algo in enumerate(exp.algos):
        ok = exp.ok_runs(algo)
        if ok:
            counts = np.zeros(exp.n_blocks)
            for r in ok:
                counts[list(r.removed)] += 1
            out[i] = counts / len(ok)
    return out


def jaccard(a: Sequence[int], b: Sequence[int]) -> float:
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 1.0


def mean_jaccard(xs: Sequence[Sequence[int]], ys: Sequence[Sequence[int]] | None = None) -> float:
    """Mean Jaccard over all (x, y) pairs; with ``ys`` omitted, over distinct pairs within ``xs``."""
    pairs = itertools.combinations(xs, 2) if ys is None else itertools.product(xs, ys)
    vals = [jaccard(a, b) for a, b in pairs]
    return float(np.mean(vals)) if vals else math.nan


def jaccard_matrix(exp: Experiment) -> np.ndarray:
    """Mean Jaccard overlap of final masks: between searchers off the diagonal, across seeds on it."""
    masks = [[r.removed for r in exp.ok_runs(a)] for a in exp.algos]
    n = len(masks)
    m = np.full((n, n), np.nan)
    for i in range(n):
        for j in range(n):
            m[i, j] = mean_jaccard(masks[i]) if i == j else mean_jaccard(masks[i], masks[j])
    return m


# --- study input ----------------------------------------------------------------------------------
@dataclass
class RankMatrix:
    """Raw values of one common set of masks (rows) under several objectives (columns);
    :mod:`.agreement` reads it."""

    objectives: list[str]
    directions: list[str]
    values: np.ndarray  # shape (n_masks, n_objectives)
    masks: list[tuple[int, ...]] = field(default_factory=list)


# --- held-out ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Score:
    """A held-out value, with its standard error where it is a sample mean (accuracy, NLL)."""

    value: float
    se: float | None = None


def as_score(v) -> Score:
    if isinstance(v, Score):
        return v
    if isinstance(v, (tuple, list)):
        return Score(float(v[0]), None if v[1] is None else float(v[1]))
    return Score(float(v))


def indistinguishable(a: Score, b: Score, z: float = 1.96) -> bool | None:
    """Whether two sampled scores differ by less than ``z`` standard errors of the difference.

    None when either has no standard error (nothing can be said about the noise).
    """
    if a.se is None or b.se is None:
        return None
    return abs(a.value - b.value) <= z * math.hypot(a.se, b.se)
