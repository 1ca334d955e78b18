"""The genetic searcher's screening model, through its public fit/predict.

Landscapes come from tests/landscapes.py; each test fits on masks a search could have seen
and checks the order the model gives masks against the order the landscape gives them.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from dpopt.genome import Constraint, LayerMask
from dpopt.optim.surrogate import RidgeSurrogate

from landscapes import rugged, run_of_blocks


def distinct_masks(c: Constraint, n: int, rng) -> list[LayerMask]:
    out: dict[bytes, LayerMask] = {}
    while len(out) < n:
        m = c.random_mask(rng)
        out[m.key()] = m
    return list(out.values())


def test_unit_costs_rank_units_by_their_removal_cost():
    """On an additive landscape the per-unit fit orders units as their true costs do."""
    c = Constraint.build(16, remove=4)
    cost = np.random.default_rng(7).uniform(1.0, 10.0, 16)
    masks = distinct_masks(c, 40, np.random.default_rng(2))
    model = RidgeSurrogate().fit(masks, [cost[list(m.removed())].sum() for m in masks])
    assert spearmanr(model.unit_costs, cost).statistic > 0.9


@pytest.mark.parametrize("land_seed", [0, 1, 2])
def test_pair_terms_credit_a_run_of_neighbouring_blocks(land_seed):
    """Where blocks cost least removed as a run, only pair terms can rank the masks near the run.

    The fit sees what a search sees: random masks and masks a few swaps from the run. It must
    order other masks near the run (one to three swaps away) as the landscape does.
    """
    n, k = 20, 6
    c = Constraint.build(n, remove=k)
    fn, run = run_of_blocks(n, k, seed=land_seed)
    rng = np.random.default_rng(land_seed)
    best = LayerMask.from_removed(n, run)

    def near(swaps):
        return c.swap_mutation(best, rng, swaps)

    told = {m.key(): m for m in [c.random_mask(rng) for _ in range(60)] + [near(int(rng.integers(2, 5)))
                                                                           for _ in range(60)]}
    told.pop(best.key(), None)
    masks = list(told.values())
    probe = [near(int(rng.integers(1, 4))) for _ in range(200)]

    def rank_agreement(pairs):
        model = RidgeSurrogate(pairs=pairs).fit(masks, [fn(m) for m in masks])
        return spearmanr(model.predict(probe), [fn(m) for m in probe]).statistic

    with_pairs, units_only = rank_agreement(True), rank_agreement(False)
    assert with_pairs > 0.95 and with_pairs > units_only + 0.1


def test_fit_reads_ranks_so_one_huge_value_does_not_decide_it():
    """A value blown up (a perplexity that exploded) changes nothing while the order stays."""
    c = Constraint.build(14, remove=4)
    fn = rugged(14, seed=2)
    rng = np.random.default_rng(5)
    masks, probe = distinct_masks(c, 30, rng), distinct_masks(c, 20, rng)
    values = np.array([fn(m) for m in masks])
    blown = values.copy()
    blown[np.argmax(values)] = 1e12
    plain = RidgeSurrogate().fit(masks, values).predict(probe)
    assert np.allclose(RidgeSurrogate().fit(masks, blown).predict(probe), plain)


def test_a_fit_replaces_the_previous_one():
    """No state carries from one fit to the next: refitting equals a fresh model's fit."""
    c = Constraint.build(14, remove=4)
    fn = rugged(14, seed=6)
    rng = np.random.default_rng(1)
    first, second, probe = distinct_masks(c, 25, rng), distinct_masks(c, 25, rng), distinct_masks(c, 10, rng)
    model = RidgeSurrogate().fit(first, [-fn(m) for m in first])
    model.fit(second, [fn(m) for m in second])
    fresh = RidgeSurrogate().fit(second, [fn(m) for m in second])
    assert np.array_equal(model.predict(probe), fresh.predict(probe))
    assert np.array_equal(model.unit_costs, fresh.unit_costs)


def test_predict_before_fit_is_an_error():
    model = RidgeSurrogate()
    assert not model.fitted
    with pytest.raises(RuntimeError, match="before fit"):
        model.predict([LayerMask.from_removed(4, [0])])
