"""Re-ranking after repair: is the best mask before repair still the best once masks are repaired?

Production pruning repairs several candidates before choosing, because a mask that loses
little when its blocks are simply dropped need not be the one that recovers best. dpopt
holds every mask's score in its studies, so the question costs little: take the N best
distinct masks of each objective (by the values the grid recorded, brute force's included),
repair each (:data:`REPAIRS`: the linear patch fitted on calibration text, or healing by
distillation), and score it on held-out data before and after.

Every number is measured on the same held-out items (sequences for ppl and kl, questions for
acc), so a mask's gain and the difference between two repaired masks are paired item by
item; intervals are the normal 95% interval of the mean over items (for ppl on the mean NLL,
mapped through exp). Rank agreement is Spearman's and Kendall's over the candidates, with
their p-values: with 5 to 10 candidates a correlation can be large and still not tell.
"""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from ..errors import UserError
from ..fitness import to_minimize
from ..genome import LayerMask
from ..heal.heldout import HELDOUT, HeldOut, Interval, change, interval
from ..registry import Registry

DEFAULT_TOP = 5
DEFAULT_HEAL_TOKENS = 16384


@dataclass(frozen=True)
class RepairPlan:
    """``--repair KIND --repair-top N`` (and, for heal, the training tokens per mask)."""

    kind: str
    top: int = DEFAULT_TOP
    tokens: int = DEFAULT_HEAL_TOKENS  # heal: calibration tokens each mask trains on
    seq_len: int | None = None  # heal: tokens per training sequence (default: the search's, else 512)
    lr: float = 1e-4
    train: str = "all"
    method: str = "distill"
    topk: int | None = None
    patch_tokens: int | None = None  # patch: calibration tokens each fit reads (default 4096)

    def validate(self) -> "RepairPlan":
        REPAIRS.get(self.kind)  # an unknown kind: one line naming the known ones
        for flag, value in (("--repair-top", self.top), ("--repair-tokens", self.tokens)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"{flag} must be an integer >= 1, got {value!r}")
        if self.kind == "heal":  # its options, checked where nothing is written
            with tempfile.TemporaryDirectory(prefix="dpopt-check-") as tmp:
                self.heal_plan(str(Path(tmp) / "out")).validate()
        return self

    def heal_plan(self, out: str, state: str | None = None, seq_len: int | None = None):
        from ..heal import HealPlan

        return HealPlan(tokens=self.tokens, out=out, method=self.method, train=self.train, lr=self.lr,
                        seq_len=int(self.seq_len or seq_len or 512), topk=self.topk, state=state, heldout="",
                        checkpoint_every=1e9)

    def describe(self) -> str:
        if self.kind == "heal":
            return (f"heal: {self.method} of {self.train}, {self.tokens} calibration tokens per mask, lr {self.lr:g}"
                    + (f", top-{self.topk} targets" if self.topk else ""))
        return f"patch: linear map per removed span, fitted on {self.patch_tokens or 4096} calibration tokens"


@dataclass
class Repaired:
    """One repaired mask: the per-item held-out statistics and what the repair cost."""

    items: dict[str, np.ndarray]
    seconds: float
    tokens_per_second: float | None = None  # heal's training speed
    losses: tuple[float, float] | None = None  # heal: first and last distillation loss


# kind -> repair(context, masks) -> one Repaired per mask
REPAIRS: Registry[Callable[["_Context", Sequence[LayerMask]], list[Repaired]]] = Registry("--repair")


@dataclass
class _Context:
    lm: object
    heldout: HeldOut
    plan: RepairPlan
    data: str | None
    data_seed: int
    seq_len: int | None
    progress: bool


@REPAIRS.register("patch")
def _patch(ctx: _Context, masks: Sequence[LayerMask]) -> list[Repaired]:
    """Each mask with every removed span replaced by its least-squares map (fits shared by prefix)."""
    from ..models.patch import DEFAULT_PATCH_TOKENS, PatchSettings, patcher_for

    settings = PatchSettings(data=ctx.data, data_seed=ctx.data_seed, tokens=ctx.plan.patch_tokens or DEFAULT_PATCH_TOKENS,
                             seq_len=int(ctx.seq_len or 512))
    t0 = time.perf_counter()
    rows = ctx.heldout.items_for(ctx.lm, masks, patch=patcher_for(ctx.lm, settings))
    each = (time.perf_counter() - t0) / max(len(masks), 1)
    return [Repaired(r, each) for r in rows]


@REPAIRS.register("heal")
def _heal(ctx: _Context, masks: Sequence[LayerMask]) -> list[Repaired]:
    """Each mask's pruned model distilled from the dense one, then scored; nothing is written."""
    from ..genome import UnitSpace
    from ..heal import distil
    from ..models.units import plan_units

    out = []
    space = UnitSpace.blocks(ctx.lm.n_blocks)
    with tempfile.TemporaryDirectory(prefix="dpopt-rerank-") as tmp:
        for i, mask in enumerate(masks):
            removed = plan_units(ctx.lm.masked, space.removed_names(mask)).names()
            plan = ctx.plan.heal_plan(str(Path(tmp) / f"m{i}"), str(Path(tmp) / f"s{i}"), ctx.seq_len)
            t0 = time.perf_counter()
            healed, res = distil(ctx.lm, removed, plan, progress=ctx.progress)
            items = ctx.heldout.items_for(healed, [LayerMask.dense(healed.n_blocks)], own_targets=False)[0]
            losses = (res.losses[0], res.losses[-1]) if res.losses else None
            out.append(Repaired(items, time.perf_counter() - t0, res.tokens_per_second, losses))
            del healed
    return out


# --- candidates ----------------------------------------------------------------------------------
@dataclass
class Candidate:
    removed: tuple[int, ...]
    picked_by: dict[str, int] = field(default_factory=dict)  # objective -> its rank (1 = best) on calibration
    calibration: dict[str, float] = field(default_factory=dict)  # objective -> recorded value

    def label(self) -> str:
        return "{" + ", ".join(map(str, self.removed)) + "}"


def top_candidates(values: Mapping[str, Mapping[tuple[int, ...], float]], directions: Mapping[str, str],
                   top: int) -> list[Candidate]:
    """The ``top`` best distinct masks of each objective (``values``: objective -> {removed: value}),
    merged: a mask two objectives pick is one candidate that names both. Order: by the first
    objective's rank, then the next's."""
    out: dict[tuple[int, ...], Candidate] = {}
    for name, vals in values.items():
        ranked = sorted((r for r in vals if math.isfinite(vals[r])),
                        key=lambda r: (to_minimize(vals[r], directions[name]), r))
        for rank, removed in enumerate(ranked[:top], 1):
            c = out.setdefault(tuple(removed), Candidate(tuple(removed)))
            c.picked_by[name] = rank
    for c in out.values():
        c.calibration = {n: float(v[c.removed]) for n, v in values.items() if c.removed in v}
    names = list(values)
    return sorted(out.values(), key=lambda c: tuple(c.picked_by.get(n, 10 ** 9) for n in names))


# --- the numbers ---------------------------------------------------------------------------------
@dataclass
class Correlation:
    spearman: float
    spearman_p: float
    kendall: float
    kendall_p: float
    n: int


    def text(self) -> str:
        if not math.isfinite(self.kendall):
            return f"too few masks (or all tied) to correlate ranks over {self.n}"
        return (f"ranks before vs after repair over {self.n} masks: Spearman {self.spearman:.3f}, "
                f"Kendall {self.kendall:.3f} (exact p = {self.kendall_p:.3g})")


@dataclass
class MetricRerank:
    """One held-out metric over the candidates, before and after repair."""

    name: str
    higher_is_better: bool
    before: list[Interval]
    after: list[Interval]
    gain: list[Interval]  # after vs before, paired (a ratio for ppl)
    correlation: Correlation
    best_before: int  # candidate index
    best_after: int
    # after repair: the best-after mask against the best-before mask, paired (None when they are one mask)
    best_difference: Interval | None

    @property
    def best_changed(self) -> bool:
        return self.best_before != self.best_after

    def verdict(self, labels: Sequence[str]) -> str:
        b, a = labels[self.best_before], labels[self.best_after]
        if not self.best_changed:
            return f"the best mask by held-out {self.name} is {b} before and after repair"
        d = self.best_difference
        if d is None:
            return f"the best mask changes from {b} to {a}"
        one = 1.0 if HELDOUT.get(self.name).change == "ratio" else 0.0
        beyond = d.low > one or d.high < one
        return (f"the best mask changes from {b} to {a}; after repair {a} against {b}: {change_text(self.name, d)} "
                f"(95%, paired, Bonferroni over the {len(self.after) - 1} masks it was picked against), "
                + ("beyond the noise" if beyond else "inside the noise: not a finding"))


@dataclass
class RerankResult:
    plan: RepairPlan
    candidates: list[Candidate]
    dense: dict[str, Interval]
    metrics: list[MetricRerank]
    repaired: list[Repaired]
    seconds: float
    skipped: list[str] = field(default_factory=list)  # held-out objectives with no per-item statistic

    def labels(self) -> list[str]:
        return [c.label() for c in self.candidates]

    def lines(self) -> list[str]:
        """What a command prints."""
        out = [f"re-ranked {len(self.candidates)} masks after repair ({self.plan.describe()}) in {self.seconds:.0f} s"]
        for m in self.metrics:
            out.append(f"  held-out {m.name}: {m.correlation.text()}; {m.verdict(self.labels())}")
        return out

    def to_dict(self) -> dict:
        return dict(
            repair=self.plan.describe(), seconds=self.seconds,
            dense={k: v.to_dict() for k, v in self.dense.items()},
            candidates=[dict(removed=list(c.removed), picked_by=c.picked_by, calibration=c.calibration,
                             repair_seconds=r.seconds, tokens_per_second=r.tokens_per_second,
                             losses=list(r.losses) if r.losses else None)
                        for c, r in zip(self.candidates, self.repaired)],
            metrics=[dict(name=m.name, before=[i.to_dict() for i in m.before], after=[i.to_dict() for i in m.after],
                          gain=[i.to_dict() for i in m.gain], spearman=m.correlation.spearman,
                          spearman_p=m.correlation.spearman_p, kendall=m.correlation.kendall,
                          kendall_p=m.correlation.kendall_p, n=m.correlation.n,
                          best_before=list(self.candidates[m.best_before].removed),
                          best_after=list(self.candidates[m.best_after].removed), best_changed=m.best_changed,
                          best_difference=m.best_difference.to_dict() if m.best_difference else None)
                     for m in self.metrics],
            skipped=self.skipped)


def change_text(name: str, iv: Interval) -> str:
    """A paired change as read: ``x0.52 [0.48, 0.57]`` for a ratio, ``-0.31 [-0.40, -0.22]`` for a difference."""
    if HELDOUT.get(name).change == "ratio":
        return "x" + iv.text()
    return f"{iv.value:+.4g} [{iv.low:+.4g}, {iv.high:+.4g}]"


def correlation(before: Sequence[float], after: Sequence[float]) -> Correlation:
    """Spearman and Kendall between two orderings of the same masks (NaN below 3 masks). Kendall's
    p is exact for few masks without ties; Spearman's p is an approximation there and is kept
    in the JSON only."""
    from scipy import stats

    x, y = np.asarray(before, float), np.asarray(after, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return Correlation(math.nan, math.nan, math.nan, math.nan, len(x))
    s = stats.spearmanr(x, y)
    k = stats.kendalltau(x, y)
    return Correlation(float(s.statistic), float(s.pvalue), float(k.statistic), float(k.pvalue), len(x))


def _best(values: Sequence[float], higher: bool) -> int:
    v = np.asarray(values, float)
    return int(np.nanargmax(v) if higher else np.nanargmin(v))


def picked_z(n: int) -> float:
    """The normal quantile of a 95% interval for a comparison picked as the best of ``n`` masks
    against a given one: Bonferroni over the ``n - 1`` comparisons it could have been."""
    from scipy.stats import norm

    return float(norm.ppf(1 - 0.025 / max(n - 1, 1)))


def summarize(name: str, before: Sequence[np.ndarray], after: Sequence[np.ndarray]) -> MetricRerank:
    """One metric's re-ranking from the candidates' per-item statistics before and after repair."""
    metric = HELDOUT.get(name)
    b = [interval(metric, x) for x in before]
    a = [interval(metric, x) for x in after]
    gains = [change(metric, x, y) for x, y in zip(before, after)]
    ib, ia = _best([i.value for i in b], metric.higher_is_better), _best([i.value for i in a], metric.higher_is_better)
    diff = change(metric, after[ib], after[ia], picked_z(len(after))) if ia != ib else None
    return MetricRerank(name, metric.higher_is_better, b, a, gains,
                        correlation([i.value for i in b], [i.value for i in a]), ib, ia, diff)


def rerank(lm, candidates: Sequence[Candidate], plan: RepairPlan, heldout: Sequence[str], data: str | None = None,
           tasks: str | None = None, data_seed: int = 0, tokens: int | None = None, seq_len: int | None = None,
           questions: int | None = None, topk: int | None = None, progress: bool = True,
           prepared: HeldOut | None = None) -> RerankResult:
    """Score ``candidates`` on the held-out split of each of ``heldout`` (ppl, kl, acc), plain and
    repaired as ``plan`` says. ``prepared``: a HeldOut already built on ``lm`` (shared between
    repairs of the same candidates)."""
    start = time.perf_counter()
    names = [n for n in heldout if n in HELDOUT]
    skipped = [n for n in heldout if n not in HELDOUT]
    if not names:
        raise UserError(f"--repair re-scores on held-out {', '.join(HELDOUT.names())}; --heldout names none of them")
    if not candidates:
        raise UserError("--repair has no mask to repair: no run recorded a valid mask")
    held = prepared or HeldOut(lm, names, data, tasks, data_seed, tokens, seq_len or 512, questions, topk)
    names = [n for n in names if n in held.objectives]
    masks = [LayerMask.from_removed(lm.n_blocks, c.removed) for c in candidates]
    dense_items, *before = held.items_for(lm, [LayerMask.dense(lm.n_blocks), *masks])  # one prefix-shared call
    ctx = _Context(lm, held, plan, data, data_seed, seq_len, progress)
    repaired = REPAIRS.get(plan.kind)(ctx, masks)
    metrics = [summarize(n, [r[n] for r in before], [r.items[n] for r in repaired]) for n in names]
    dense = {n: interval(HELDOUT.get(n), dense_items[n]) for n in names}
    return RerankResult(plan, list(candidates), dense, metrics, repaired, time.perf_counter() - start, skipped)


def grid_candidates(grids: Mapping[str, object], evaluators: Mapping[str, object], top: int) -> list[Candidate]:
    """The ``top`` best distinct masks each grid recorded at full fidelity (every run's, the
    reference run's and brute force's)."""
    from .grid import recorded_values

    values = {n: recorded_values(g, evaluators[n]) for n, g in grids.items()}
    directions = {n: g.experiment.direction for n, g in grids.items()}
    return top_candidates(values, directions, top)


