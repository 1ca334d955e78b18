"""Held-out values of the grid's best masks, each with a 95% interval over independent units.

An interval needs values from independent units: sequences for a text objective (tokens of
one sequence are correlated), questions for accuracy. A text objective's partials are per
batch, so the held-out evaluators are built with one sequence per batch: each batch's value
is then one sequence's, whatever batch size the search used, and the values themselves are
unchanged (ppl and kl add their sums over batches). How each objective's interval is made
is :data:`STANDARD_ERRORS` (:mod:`.intervals` does the arithmetic).
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

from ..genome import LayerMask
from .intervals import DENSE_ROW, accuracy_estimate, exp_mean_estimate, mean_estimate
from .stats import Score

ONE_SEQUENCE_PER_BATCH = {"batch_size": 1}  # a text objective's held-out batches: each partial is one sequence


def per_batch(evaluator, mask: LayerMask) -> list[float]:
    """The objective's value on each batch alone (NaN where it has none)."""
    out = []
    for b in evaluator.objective.batches(None):
        try:
            out.append(float(evaluator.objective.finish([evaluator.partials[(mask.key(), b.index)]])))
        except (FloatingPointError, ValueError, ZeroDivisionError, OverflowError, KeyError):
            out.append(math.nan)
    return out


def _unit(evaluator) -> str:
    """What a batch is: one sequence (the held-out evaluators' batches), or several."""
    one = all(b.input_ids.shape[0] == 1 for b in evaluator.objective.batches(None))
    return "sequences" if one else "batches"


def _se_binomial(evaluator, mask: LayerMask, value: float) -> Score:
    return accuracy_estimate(value, evaluator.full_fidelity, evaluator.objective.chance)


def _se_log_mean(evaluator, mask: LayerMask, value: float) -> Score:
    # a one-sequence batch's perplexity is exp of that sequence's mean NLL
    nll = [math.log(v) if v > 0 else math.nan for v in per_batch(evaluator, mask)]
    return exp_mean_estimate(value, nll, _unit(evaluator))


def _se_mean(evaluator, mask: LayerMask, value: float) -> Score:
    return mean_estimate(value, per_batch(evaluator, mask), _unit(evaluator))


# objective name -> its held-out value with a 95% interval: accuracy a proportion over questions
# (Wilson); perplexity exp(mean NLL), the interval on the per-sequence mean NLLs; any other (kl)
# a mean of the per-sequence values
STANDARD_ERRORS: dict[str, Callable[[object, LayerMask, float], Score]] = {"acc": _se_binomial, "ppl": _se_log_mean}


def heldout_score(evaluator, mask: LayerMask) -> Score:
    """A mask's value on the evaluator's data with its 95% interval (see :data:`STANDARD_ERRORS`)."""
    value = evaluator.raw(mask)
    if not math.isfinite(value):
        return Score(value)
    return STANDARD_ERRORS.get(evaluator.objective.name, _se_mean)(evaluator, mask, value)


def score_heldout(lm, masks: Mapping[str, LayerMask], objectives: Sequence[str], data, tasks, data_seed: int,
                  ev_opts: Mapping, opts: Mapping, dense: bool = True) -> dict[str, dict[str, Score]]:
    """Score each mask on each objective's held-out (eval) split; the dense model as a row of its own."""
    from ..objectives import uses_tasks
    from ..problem import problem_for

    if not objectives or not masks:
        return {}
    rows: dict[str, dict[str, Score]] = {name: {} for name in masks}
    todo = dict(masks)
    if dense:
        todo[DENSE_ROW] = LayerMask.dense(lm.n_blocks)
        rows[DENSE_ROW] = {}
    for spec in objectives:
        text, mc = uses_tasks(spec)
        own = {**opts, **ONE_SEQUENCE_PER_BATCH} if text and not mc else dict(opts)
        ev = problem_for(lm, spec, data=data, tasks=tasks, split="eval", data_seed=data_seed, shared_options=True,
                         **ev_opts, **own).build(lm)
        ev.evaluate(list(dict.fromkeys(todo.values())))  # one call: the masks share their prefixes
        for name, mask in todo.items():
            rows[name][ev.objective.name] = heldout_score(ev, mask)
    return rows
