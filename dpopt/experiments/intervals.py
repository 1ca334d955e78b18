"""95% intervals for held-out values, and whether an accuracy carries any signal at all.

A held-out value is a mean over independent units: sequences for perplexity and KL (tokens
of one sequence are not independent, so their count would overstate the precision),
questions for accuracy. So

- accuracy gets the Wilson score interval over its questions: unlike ``p ± 1.96 se`` it
  stays inside [0, 1] and does not collapse to a point at 0 or 1 correct answers;
- KL gets ``mean ± 1.96 sd/sqrt(n)`` over the per-sequence mean KLs;
- perplexity, ``exp(mean NLL)``, gets that interval on the mean NLL (per-sequence mean NLLs),
  mapped through ``exp``: the interval is asymmetric, as perplexity's noise is.

An accuracy means nothing when the dense model itself is no better than guessing on the
questions used (a small model on MMLU): every mask then scores chance plus noise, and a
search on it, or a comparison of masks by it, follows noise. The chance level is the mean
over the questions of 1/(number of choices); the dense model is clearly above chance when
the lower end of its Wilson interval is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from .stats import Score, as_score, indistinguishable

Z95 = 1.959963984540054  # the two-sided 95% normal quantile
DENSE_ROW = "dense (no removal)"  # the held-out row of the unpruned model
NO_SIGNAL = "no signal"


@dataclass(frozen=True)
class Estimate(Score):
    """A held-out value with its 95% interval and what it is a mean over.

    ``se`` stays the standard error (what :func:`dpopt.experiments.stats.indistinguishable`
    reads); ``low``/``high`` the interval shown; ``per``: what ``n`` counts ("sequences",
    "questions", or "batches" where a batch held several sequences); ``chance``: the value
    of guessing (accuracy only).
    """

    low: float | None = None
    high: float | None = None
    n: int = 0
    per: str = ""
    chance: float | None = None
    method: str = ""  # how the interval was made, for the report's note


def wilson(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``p`` observed over ``n`` trials."""
    if n <= 0 or not math.isfinite(p):
        return math.nan, math.nan
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_estimate(value: float, n: int, chance: float | None = None) -> Estimate:
    """An accuracy over ``n`` questions: binomial standard error, Wilson interval, chance level."""
    se = math.sqrt(max(value * (1 - value), 0.0) / n) if n > 0 and math.isfinite(value) else None
    low, high = wilson(value, n)
    return Estimate(value, se, low, high, n, "questions", chance, "Wilson score interval")


def mean_estimate(value: float, per_unit: Sequence[float], per: str = "sequences") -> Estimate:
    """``value`` (the mean over units) ± 1.96 standard errors of the per-unit values."""
    v = np.asarray([x for x in per_unit if math.isfinite(x)], dtype=float)
    if len(v) < 2 or not math.isfinite(value):
        return Estimate(value, None, None, None, len(v), per)
    se = float(np.std(v, ddof=1) / math.sqrt(len(v)))
    return Estimate(value, se, value - Z95 * se, value + Z95 * se, len(v), per, method="mean ± 1.96 se")


def exp_mean_estimate(value: float, per_unit_log: Sequence[float], per: str = "sequences") -> Estimate:
    """``value = exp(mean of logs)`` (perplexity): the interval of the mean log mapped through exp.

    ``per_unit_log``: each unit's mean log (a sequence's mean NLL). The standard error is the
    delta method's, ``value * se(mean log)``.
    """
    if not (math.isfinite(value) and value > 0):
        return Estimate(value, None, None, None, 0, per)
    on_log = mean_estimate(math.log(value), per_unit_log, per)
    if on_log.se is None:
        return Estimate(value, None, None, None, on_log.n, per)
    return Estimate(value, value * on_log.se, math.exp(on_log.low), math.exp(on_log.high), on_log.n, per,
                    method="exp(mean NLL ± 1.96 se)")


def above_chance(dense: Score) -> bool | None:
    """Whether the dense model's accuracy is clearly above chance (its interval's low end is);
    None when there is no chance level or no interval to tell."""
    if not isinstance(dense, Estimate) or dense.chance is None or dense.low is None or not math.isfinite(dense.low):
        return None
    return dense.low > dense.chance


def _fmt(v: float | None, digits: int = 4) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.{digits}g}"


def format_score(s: Score | None) -> str:
    """``value [low, high]`` where there is an interval, ``value ± se`` where only a standard error."""
    if s is None:
        return "–"
    if isinstance(s, Estimate) and s.low is not None:
        return f"{_fmt(s.value)} [{_fmt(s.low)}, {_fmt(s.high)}]"
    return _fmt(s.value) + (f" ± {_fmt(s.se, 2)}" if s.se is not None else "")


def chance_notes(heldout: Mapping[str, Mapping[str, object]]) -> dict[str, tuple[bool | None, str]]:
    """For each held-out column that has a chance level (accuracy): whether the dense model is
    clearly above it, and the sentence the report prints (its dense value, chance level and
    interval; "no signal" when it is not clearly above chance)."""
    out: dict[str, tuple[bool | None, str]] = {}
    columns = dict.fromkeys(o for per in heldout.values() for o in per)
    for o in columns:
        scores = [as_score(per[o]) for per in heldout.values() if o in per]
        chance = next((s.chance for s in scores if isinstance(s, Estimate) and s.chance is not None), None)
        if chance is None:
            continue
        dense = as_score(heldout[DENSE_ROW][o]) if o in heldout.get(DENSE_ROW, {}) else None
        n = next((s.n for s in scores if isinstance(s, Estimate) and s.n), 0)
        ok = above_chance(dense) if dense is not None else None
        head = f"{o}: {n} questions, chance level {_fmt(chance, 3)}"
        if dense is None:
            out[o] = (None, f"{head}; the dense model was not scored, so whether {o} carries signal is unknown")
        elif ok:
            out[o] = (True, f"{head}; dense model {format_score(dense)}: clearly above chance")
        else:
            out[o] = (False, f"{head}; dense model {format_score(dense)}: {NO_SIGNAL} (the dense model is "
                             f"not clearly above chance, so differences in {o} between masks are noise)")
    return out


def interval_note(heldout: Mapping[str, Mapping[str, object]]) -> str:
    """One sentence saying how each column's interval was made, and over how many units."""
    parts = []
    for o in dict.fromkeys(o for per in heldout.values() for o in per):
        scores = [as_score(per[o]) for per in heldout.values() if o in per]
        est = next((s for s in scores if isinstance(s, Estimate) and s.low is not None), None)
        if est is not None:
            parts.append(f"{o}: {est.method} over {est.n} {est.per}")
        elif any(s.se is not None for s in scores):
            parts.append(f"{o}: value ± its standard error as given")
        else:
            parts.append(f"{o}: no interval (a single value)")
    return "Held-out values with their 95% intervals [low, high] (" + "; ".join(parts) + ")."


def heldout_section(heldout: Mapping[str, Mapping[str, object]], doc, level: int = 2) -> list[list[str]]:
    """Each searcher's best mask re-scored on held-out data, each value with its 95% interval
    (:mod:`.intervals`); an accuracy column states the dense value and the chance level, and
    says "no signal" where the dense model is not clearly above chance."""
    objectives = list(dict.fromkeys(o for per in heldout.values() for o in per))
    algos = list(heldout)
    table = [[algo] + [format_score(as_score(heldout[algo][o]) if o in heldout[algo] else None) for o in objectives]
             for algo in algos]
    chance = chance_notes(heldout)
    doc.h("Held-out scores of each searcher's best mask", level)
    doc.table(["searcher"] + [o + (f" ({NO_SIGNAL})" if chance.get(o, (True,))[0] is False else "")
                              for o in objectives], table)
    doc.p(interval_note(heldout))
    for _, line in chance.values():
        doc.p(line + ".")
    notes = []
    for j, o in enumerate(objectives):
        scores = {a: as_score(heldout[a][o]) for a in algos if o in heldout[a]}
        if len(scores) < 2:
            continue
        hi, lo = max(scores.items(), key=lambda kv: kv[1].value), min(scores.items(), key=lambda kv: kv[1].value)
        same = indistinguishable(hi[1], lo[1])
        spread = f"{o}: {lo[0]} {_fmt(lo[1].value)} to {hi[0]} {_fmt(hi[1].value)}"
        if same is None:
            notes.append(spread + " (no standard error given: the difference may be noise)")
        elif same:
            notes.append(spread + f", a difference within 1.96 standard errors ({_fmt(math.hypot(hi[1].se, lo[1].se), 2)}): "
                                  "not distinguishable")
        else:
            notes.append(spread + f", beyond 1.96 standard errors ({_fmt(math.hypot(hi[1].se, lo[1].se), 2)}) of the difference")
    if notes:
        doc.p("Spread per objective: " + "; ".join(notes) + ".")
    return table
