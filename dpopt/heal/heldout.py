"""Held-out ppl, kl and acc of a model, each with a 95% interval, and the paired change.

The objectives are prepared once on the dense model (KL's targets are the dense model's
log-probabilities) with one sequence or question per batch, so each batch's partial is one
item's statistic. A value's interval is the normal interval of the mean over items; the
change after healing is paired item by item (the same sequences, the same questions), which
is far tighter than comparing the two intervals. Perplexity's interval and change are taken
on the mean NLL and mapped through ``exp`` (the change is then a ratio).

Any model is scored through masked execution of its own blocks (all kept), exactly as the
evaluator scores masks, so the 4D attention masks of ``acc`` behave the same everywhere.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..errors import UserError
from ..registry import Registry

Z95 = 1.959964


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def text(self, digits: int = 4) -> str:
        return f"{self.value:.{digits}g} [{self.low:.{digits}g}, {self.high:.{digits}g}]"

    def to_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class Metric:
    """How one objective's per-item partial becomes a number, and that number a reported value."""

    item: Callable[[np.ndarray], float]  # one item's statistic; the value is a function of their mean
    report: Callable[[float], float]  # mean of the items -> the reported value
    change: str  # "ratio" (after / before, on the reported scale) or "difference"
    higher_is_better: bool = False


HELDOUT: Registry[Metric] = Registry("--heldout metric")
HELDOUT.register("ppl")(Metric(lambda p: p[0] / max(p[1], 1), math.exp, "ratio"))
HELDOUT.register("kl")(Metric(lambda p: p[0] / max(p[1], 1), float, "difference"))
HELDOUT.register("acc")(Metric(lambda p: p[0] / max(p[2], 1), float, "difference", higher_is_better=True))


def parse_heldout(spec: str) -> list[str]:
    names = [s.strip() for s in str(spec).split(",") if s.strip()]
    for name in names:
        HELDOUT.get(name)  # an unknown name: one line naming the known ones
    if len(set(names)) != len(names):
        raise UserError(f"--heldout names a metric twice: {spec}")
    return names


def _mean_interval(x: np.ndarray, z: float = Z95) -> tuple[float, float, float]:
    m = float(np.mean(x))
    se = float(np.std(x, ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")
    return m, m - z * se, m + z * se


def interval(metric: Metric, items: np.ndarray) -> Interval:
    m, lo, hi = _mean_interval(items)
    return Interval(metric.report(m), metric.report(lo), metric.report(hi))


def change(metric: Metric, before: np.ndarray, after: np.ndarray, z: float = Z95) -> Interval:
    """``after`` vs ``before`` on the same items: a ratio for ppl, a difference otherwise
    (``z``: the interval's normal quantile, wider than 1.96 where a comparison was picked)."""
    m, lo, hi = _mean_interval(after - before, z)
    if metric.change == "ratio":
        return Interval(math.exp(m), math.exp(lo), math.exp(hi))
    return Interval(m, lo, hi)


class HeldOut:
    """The held-out objectives, prepared once on the dense model; :meth:`items` scores any model."""

    def __init__(self, teacher, names: Sequence[str], data: str | None, tasks: str | None, data_seed: int,
                 tokens: int, seq_len: int, questions: int | None, topk: int | None = None):
        from ..objectives import build_objective

        self.names = list(names)
        self.objectives = {}
        for name in self.names:
            options = dict(batch_size=1)
            if name == "acc":
                options.update(questions=questions)
            else:
                options.update(tokens=tokens, seq_len=seq_len, topk=topk if name == "kl" else None)
            obj, obj_data = build_objective(name, data=data, tasks=tasks, split="eval", seed=data_seed, **options)
            obj.prepare(teacher, obj_data)
            self.objectives[name] = obj

    def items(self, lm) -> dict[str, np.ndarray]:
        """Each metric's per-item statistics for the model ``lm`` (a LoadedModel), all its blocks kept."""
        from ..genome import LayerMask

        return self.items_for(lm, [LayerMask.dense(lm.n_blocks)], own_targets=False)[0]

    def items_for(self, lm, masks: Sequence, patch=None, own_targets: bool = True) -> list[dict[str, np.ndarray]]:
        """Per-item statistics of each of ``masks`` of ``lm``, scored in one call per metric (the
        masks share their kept prefixes); ``patch``: a LinearPatcher, each removed span scored
        with its map. ``own_targets``: ``lm`` is the model the objectives were prepared on, so
        its dense scores are reused; otherwise (a healed model) they are recomputed."""
        from ..evaluator import Evaluator

        out: list[dict[str, np.ndarray]] = [{} for _ in masks]
        for name, obj in self.objectives.items():
            saved = obj.dense_partials
            if not own_targets:
                obj.dense_partials = None  # those are the teacher's, not this model's
            try:
                ev = Evaluator(lm, obj, patch=patch)
                ev.evaluate(list(dict.fromkeys(masks)))
            finally:
                obj.dense_partials = saved
            metric = HELDOUT.get(name)
            for row, mask in zip(out, masks):
                row[name] = np.array([metric.item(np.asarray(ev.partials[(mask.key(), b.index)], dtype=np.float64))
                                      for b in obj.batches(None)])
        return out

    def summary(self, items: dict[str, np.ndarray]) -> dict[str, Interval]:
        return {name: interval(HELDOUT.get(name), x) for name, x in items.items()}

    def changes(self, before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> dict[str, Interval]:
        return {name: change(HELDOUT.get(name), before[name], after[name]) for name in self.names}
