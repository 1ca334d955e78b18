"""The study's questions, as pure functions: do searchers converge to the same blocks under one
objective, and do objectives agree on which masks are good?

Two kinds of evidence, kept apart because each misleads alone:

* **Overlap of final masks** (:func:`objective_vs_searcher`, :func:`study_finding`). Only
  searchers whose asked masks depend on the objective count: an objective-blind searcher
  (``Experiment.blind``: random draws, one-shot orderings that never read the objective)
  removes the same blocks under every objective *by construction*, which would inflate the
  across-objective overlap and decide the question for reasons that have nothing to do with
  the objectives. Their overlaps are reported apart. A verdict is only stated when the runs
  converged (see :data:`CONVERGED_SHARE`) and every cell has enough seeds for a bootstrap
  (:data:`MIN_RUNS`); otherwise the finding says so instead of picking a side.
* **Agreement of the rankings** (:func:`pair_agreement`) over every mask scored under two
  objectives. A global Spearman is dominated by the many bad masks that every objective
  agrees are bad; what matters for pruning is whether the objectives agree among the good
  masks, so Spearman is also computed within each objective's top 1% and 10%, next to the
  rank each objective's best mask has under the other and the overlap of the top k.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from .stats import Experiment, RankMatrix, Reference, _scipy_stats, best_reference, mean_jaccard, signed, within

# A share of runs within 1% of the reference at or above this counts as converged. Why 0.8:
# an overlap of final masks says which blocks the *objective* picks only when the masks it
# compares are the objective's optimum; a run stuck elsewhere carries its searcher's bias.
# A pair of runs compares two converged masks with probability share**2: at 0.8 that is 0.64,
# so most of every mean Jaccard is optimum against optimum; at 0.5 it would be a quarter.
# With the 5 seeds a bootstrap needs (MIN_RUNS), 0.8 is 4 of 5: one stray seed per cell.
CONVERGED_SHARE = 0.8
# Fewest runs in every (objective, searcher) cell for a seed bootstrap: resampling 2-4 seeds
# with replacement gives a handful of distinct resamples, and an interval from those is noise.
MIN_RUNS = 5
TOP_FRACTIONS = (0.10, 0.01)
MIN_MASKS = 5  # fewest masks a Spearman is computed over


# --- overlaps of final masks --------------------------------------------------------------------
Cells = Mapping[tuple[str, str], list]


def _cells(exps: Mapping[str, Experiment], algos: Sequence[str]) -> dict[tuple[str, str], list[tuple[int, ...]]]:
    return {(o, a): [tuple(r.removed) for r in e.ok_runs(a)] for o, e in exps.items() for a in e.algos
            if a in algos}


def _nanmean(vals) -> float:
    vals = [v for v in vals if np.isfinite(v)]
    return float(np.mean(vals)) if vals else math.nan


def _overlaps(cells: Cells) -> tuple[float, float]:
    objectives = list(dict.fromkeys(o for o, _ in cells))
    algos = list(dict.fromkeys(a for _, a in cells))
    across_algos = [mean_jaccard(cells[(o, a)], cells[(o, b)])
                    for o in objectives for a, b in itertools.combinations(algos, 2)
                    if cells.get((o, a)) and cells.get((o, b))]
    across_obj = [mean_jaccard(cells[(o, a)], cells[(p, a)])
                  for a in algos for o, p in itertools.combinations(objectives, 2)
                  if cells.get((o, a)) and cells.get((p, a))]
    return _nanmean(across_obj), _nanmean(across_algos)


def seed_agreement(exps: Mapping[str, Experiment]) -> dict[tuple[str, str], float]:
    """Mean Jaccard between the final masks of the seeds of one (objective, searcher) cell:
    the ceiling any between-factor overlap is read against (NaN with fewer than 2 runs)."""
    return {k: mean_jaccard(v) for k, v in _cells(exps, _all_algos(exps)).items()}


def _all_algos(exps: Mapping[str, Experiment]) -> list[str]:
    return list(dict.fromkeys(a for e in exps.values() for a in e.algos))


def blind_algos(exps: Mapping[str, Experiment]) -> list[str]:
    """Searchers any experiment marks objective-blind, in the order they appear."""
    blind = set().union(*(e.blind for e in exps.values())) if exps else set()
    return [a for a in _all_algos(exps) if a in blind]


def dependent_algos(exps: Mapping[str, Experiment]) -> list[str]:
    """Searchers whose asked masks depend on the objective."""
    blind = set(blind_algos(exps))
    return [a for a in _all_algos(exps) if a not in blind]


@dataclass
class Overlap:
    across_objectives: float  # same searcher, different objectives: mean Jaccard of final masks
    across_searchers: float  # same objective, different searchers
    diff_low: float  # 95% bootstrap interval of across_searchers - across_objectives
    diff_high: float
    n_boot: int
    within_seeds: float = math.nan  # same searcher and objective, different seeds
    searchers: tuple[str, ...] = ()
    min_runs: int = 0  # fewest successful runs in any (objective, searcher) cell
    no_interval: str = ""  # why there is no bootstrap interval ("" when there is one)

    @property
    def objective_matters_more(self) -> bool | None:
        """True/False when the interval excludes 0; None when the difference is inside the noise."""
        if not np.isfinite(self.diff_low) or self.diff_low <= 0 <= self.diff_high:
            return None
        return self.diff_low > 0


def objective_vs_searcher(exps: Mapping[str, Experiment], n_boot: int = 1000, seed: int = 0,
                          algos: Sequence[str] | None = None) -> Overlap:
    """Overlap of removed blocks across objectives vs across searchers, with a seed bootstrap.

    ``algos``: the searchers to compare; by default the objective-dependent ones
    (:func:`dependent_algos`). The interval resamples, within every (objective, searcher)
    cell, its runs with replacement: seeds are the unit of replication, so this is how much
    the two overlaps would move with other seeds. No interval when a cell has fewer than
    :data:`MIN_RUNS` runs.
    """
    algos = dependent_algos(exps) if algos is None else list(algos)
    cells = _cells(exps, algos)
    obj, alg = _overlaps(cells)
    within_seeds = _nanmean(mean_jaccard(v) for v in cells.values())
    min_runs = min((len(v) for v in cells.values()), default=0)
    reason = ""
    if not (np.isfinite(obj) and np.isfinite(alg)):
        reason = "one of the two overlaps is undefined (it needs two searchers and two objectives)"
    elif min_runs < MIN_RUNS:
        reason = f"fewest runs in a cell: {min_runs}; a seed bootstrap needs {MIN_RUNS}"
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(0 if reason else n_boot):
        boot = {k: [v[i] for i in rng.integers(0, len(v), len(v))] for k, v in cells.items()}
        o, a = _overlaps(boot)
        diffs.append(a - o)
    low, high = (np.percentile(diffs, [2.5, 97.5]) if diffs else (math.nan, math.nan))
    return Overlap(obj, alg, float(low), float(high), len(diffs), within_seeds, tuple(algos), min_runs,
                   reason or ("" if diffs else "no bootstrap resamples asked"))


# --- convergence and the gated finding ------------------------------------------------------------
@dataclass
class Convergence:
    """How many objective-dependent searching runs ended within ``tol`` of the reference."""

    objective: str
    n_runs: int
    n_within: int
    reference: Reference | None
    tol: float = 0.01

    @property
    def share(self) -> float:
        return self.n_within / self.n_runs if self.n_runs else math.nan

    def describe(self) -> str:
        if self.reference is None:
            return f"{self.objective}: no reference (no run succeeded)"
        ref = ("the brute-force optimum" if self.reference.exact
               else "the best value any run found (best known, not proven)")
        return (f"{self.objective}: {self.n_within}/{self.n_runs} runs within {self.tol:.0%} of {ref}, "
                f"{self.reference.value:.4g}")


def convergence(exp: Experiment, tol: float = 0.01) -> Convergence:
    """Share of successful runs whose final value is within ``tol`` (relative) of the reference.

    Counted over objective-dependent searchers that search: a blind searcher never aims at the
    objective, and a one-shot searcher's answer cannot move with the budget, so neither says
    whether the *search* converged (one-shot ones still count in the overlaps).
    """
    ref = best_reference(exp)
    runs = [r for a in exp.algos if a not in exp.blind and a not in exp.one_shot for r in exp.ok_runs(a)]
    n_within = sum(within(r.value, ref.value, exp.direction, tol) for r in runs) if ref is not None else 0
    return Convergence(exp.objective, len(runs), int(n_within), ref, tol)


@dataclass
class StudyFinding:
    overlap: Overlap  # objective-dependent searchers only
    blind: Overlap | None  # objective-blind searchers, apart (None when there are none)
    convergence: dict[str, Convergence]
    seed_agreement: dict[tuple[str, str], float]
    ert_budget: int | None
    threshold: float = CONVERGED_SHARE
    text: str = field(default="")

    @property
    def converged(self) -> bool:
        shares = [c.share for c in self.convergence.values()]
        return bool(shares) and all(np.isfinite(s) and s >= self.threshold for s in shares)


def study_finding(exps: Mapping[str, Experiment], n_boot: int = 1000, seed: int = 0,
                  ert_budget: int | None = None, threshold: float = CONVERGED_SHARE) -> StudyFinding:
    """The overlaps (objective-dependent searchers; blind ones apart), the per-objective
    convergence and the headline they allow. ``ert_budget``: the per-run budget the ERT
    suggests for convergence, named in the headline when the runs did not converge."""
    blind = blind_algos(exps)
    ov = objective_vs_searcher(exps, n_boot, seed)
    blind_ov = objective_vs_searcher(exps, n_boot, seed, algos=blind) if blind else None
    f = StudyFinding(ov, blind_ov, {o: convergence(e) for o, e in exps.items()}, seed_agreement(exps),
                     ert_budget, threshold)
    f.text = headline(f)
    return f


def _f(v: float) -> str:
    return f"{v:.2f}" if np.isfinite(v) else "–"


def _overlap_numbers(ov: Overlap) -> str:
    interval = (f"95% seed-bootstrap interval [{ov.diff_low:+.2f}, {ov.diff_high:+.2f}]" if not ov.no_interval
                else f"no bootstrap interval: {ov.no_interval}")
    diff = ov.across_searchers - ov.across_objectives
    return (f"mean Jaccard overlap of removed blocks over the objective-dependent searchers "
            f"({', '.join(ov.searchers) or 'none'}): {_f(ov.across_objectives)} across objectives (same searcher) "
            f"vs {_f(ov.across_searchers)} across searchers (same objective), {_f(ov.within_seeds)} between seeds; "
            f"difference {'–' if not np.isfinite(diff) else f'{diff:+.2f}'}, {interval}")


def headline(f: StudyFinding) -> str:
    """One sentence from the numbers. A verdict needs converged runs under every objective and a
    bootstrap interval that excludes 0; otherwise it says which condition failed."""
    ov = f.overlap
    conv = "; ".join(c.describe() for c in f.convergence.values())
    n = sum(c.n_runs for c in f.convergence.values())
    if not n:
        return ("No finding: no objective-dependent searcher that searches has a successful run, so nothing says "
                f"whether the search converged. Overlaps, not a verdict: {_overlap_numbers(ov)}.")
    if not f.converged:
        k = sum(c.n_within for c in f.convergence.values())
        more = (f" The ERT suggests a budget of about {f.ert_budget} evaluations per run."
                if f.ert_budget is not None else "")
        return (f"No finding: the searchers did not converge at this budget ({k}/{n} objective-dependent runs "
                f"within 1% of the reference; {conv}; a finding needs {f.threshold:.0%} under every objective)."
                f"{more} Overlaps, not a verdict: {_overlap_numbers(ov)}.")
    if ov.no_interval:
        return f"No finding: the runs converged ({conv}) but {ov.no_interval} ({_overlap_numbers(ov)})."
    verdict = ov.objective_matters_more
    if verdict is None:
        return ("Within the noise of these seeds, neither the objective nor the searcher matters more "
                f"({_overlap_numbers(ov)}; {conv}).")
    side = "The objective matters more than the searcher" if verdict else "The searcher matters more than the objective"
    return f"{side} ({_overlap_numbers(ov)}; {conv})."


# --- agreement of the rankings ----------------------------------------------------------------------
def top_k(n: int, fraction: float) -> int:
    """How many masks a top ``fraction`` of ``n`` holds: rounded up, at least 1."""
    return max(1, math.ceil(round(fraction * n, 9)))


@dataclass
class TopSpearman:
    by: str  # whose top fraction selects the masks ("" for all masks)
    fraction: float  # 1.0 for all masks
    n: int
    spearman: float
    reason: str = ""  # why it is NaN


@dataclass
class PairAgreement:
    a: str
    b: str
    n: int  # masks with a finite value under both
    spearmans: list[TopSpearman]  # all masks first, then each fraction of TOP_FRACTIONS for a and for b
    best_a: tuple[int, ...]
    best_b: tuple[int, ...]
    rank_of_best_a_under_b: int  # 1 = best; ties share the better rank
    rank_of_best_b_under_a: int
    top_overlap: dict[float, tuple[int, float]]  # fraction -> (k, share of a's top k also in b's top k)
    x: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))  # raw values of a (for plots)
    y: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    i_best_a: int = -1  # row in x/y of a's best mask
    i_best_b: int = -1


def _spearman(x: np.ndarray, y: np.ndarray, by: str, fraction: float) -> TopSpearman:
    if len(x) < MIN_MASKS:
        return TopSpearman(by, fraction, len(x), math.nan, f"only {len(x)} masks; needs {MIN_MASKS}")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return TopSpearman(by, fraction, len(x), math.nan, "one objective is constant over these masks")
    return TopSpearman(by, fraction, len(x), float(_scipy_stats().spearmanr(x, y).statistic))


def _rank_under(values: np.ndarray, i: int) -> int:
    """Competition rank of row ``i`` in signed ``values``: 1 + how many are strictly better."""
    return 1 + int(np.sum(values < values[i]))


def pair_agreement(rm: RankMatrix, a: str, b: str, fractions: Sequence[float] = TOP_FRACTIONS) -> PairAgreement:
    """How objectives ``a`` and ``b`` of ``rm`` agree, overall and among the masks each finds best.

    Values are signed (:func:`stats.signed`) so "better" means the same for both whatever their
    directions; masks with a non-finite value under either are dropped. Within ``a``'s top
    fraction the masks are the ones ``a`` ranks best (ties at the cut broken by row order).
    """
    i, j = rm.objectives.index(a), rm.objectives.index(b)
    sx, sy = signed(rm.values[:, i], rm.directions[i]), signed(rm.values[:, j], rm.directions[j])
    keep = np.flatnonzero(np.isfinite(sx) & np.isfinite(sy))
    sx, sy = sx[keep], sy[keep]
    n = len(keep)
    order_a, order_b = np.argsort(sx, kind="stable"), np.argsort(sy, kind="stable")
    spearmans = [_spearman(sx, sy, "", 1.0)]
    overlap = {}
    for frac in fractions:
        k = top_k(n, frac) if n else 0
        ta, tb = order_a[:k], order_b[:k]
        spearmans += [_spearman(sx[ta], sy[ta], a, frac), _spearman(sx[tb], sy[tb], b, frac)]
        overlap[frac] = (k, len(set(ta.tolist()) & set(tb.tolist())) / k if k else math.nan)
    if not n:
        return PairAgreement(a, b, 0, spearmans, (), (), 0, 0, overlap)
    ia, ib = int(order_a[0]), int(order_b[0])
    masks = [tuple(rm.masks[r]) for r in keep] if rm.masks else [()] * n
    return PairAgreement(a, b, n, spearmans, masks[ia], masks[ib], _rank_under(sy, ia), _rank_under(sx, ib),
                         overlap, rm.values[keep, i], rm.values[keep, j], ia, ib)


def agreements(rm: RankMatrix, fractions: Sequence[float] = TOP_FRACTIONS) -> list[PairAgreement]:
    """:func:`pair_agreement` for every two objectives of ``rm``, in column order."""
    return [pair_agreement(rm, a, b, fractions) for a, b in itertools.combinations(rm.objectives, 2)]


@dataclass
class Correlation:
    a: str
    b: str
    spearman: float
    spearman_p: float
    kendall: float
    kendall_p: float
    n: int


def rank_correlations(rm: RankMatrix) -> list[Correlation]:
    """Spearman and Kendall between every two objectives, on "lower is better" values.

    Signing first makes a positive correlation mean the objectives agree on which masks are
    good, whatever their directions. Masks with a non-finite value under either are dropped.
    """
    vals = np.column_stack([signed(rm.values[:, j], d) for j, d in enumerate(rm.directions)]) \
        if len(rm.objectives) else np.zeros((0, 0))
    out = []
    for i, j in itertools.combinations(range(len(rm.objectives)), 2):
        x, y = vals[:, i], vals[:, j]
        keep = np.isfinite(x) & np.isfinite(y)
        x, y = x[keep], y[keep]
        if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
            out.append(Correlation(rm.objectives[i], rm.objectives[j], *(math.nan,) * 4, len(x)))
            continue
        sps = _scipy_stats()
        s = sps.spearmanr(x, y)
        k = sps.kendalltau(x, y)
        out.append(Correlation(rm.objectives[i], rm.objectives[j], float(s.statistic), float(s.pvalue),
                               float(k.statistic), float(k.pvalue), len(x)))
    return out
