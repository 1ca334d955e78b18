"""The genetic searcher's selection, mutation and racing, and every searcher against random search.

Landscapes come from tests/landscapes.py with seeds and sizes the default-tuning runs did
not use (those used seeds 100+ on 20 blocks), so these tests check the algorithm, not a
memorised answer.
"""
from __future__ import annotations

import statistics

import numpy as np
import pytest

from dpopt.errors import UserError
from dpopt.fitness import FunctionEvaluator, race
from dpopt.genome import Constraint, LayerMask
from dpopt.optim import SEARCHERS, Budget, run_search
from dpopt.optim._common import level_switch_swaps
from dpopt.optim.genetic import GeneticSearch, auto_race
from dpopt.optim.surrogate import RidgeSurrogate

from landscapes import brute_force, rugged, trap


def masks_with_fitness(c: Constraint, values, rng):
    out, seen = [], set()
    while len(out) < len(values):
        m = c.random_mask(rng)
        if m not in seen:
            seen.add(m)
            out.append(m)
    return out, np.array(values, dtype=float)


# --- selection -----------------------------------------------------------------------------
def test_plus_selection_keeps_better_parents_over_worse_children():
    c = Constraint.build(12, remove=3)
    s = GeneticSearch(c, seed=0, population=4, race="none")
    rng = np.random.default_rng(0)
    parents, pf = masks_with_fitness(c, [1, 2, 3, 4], rng)
    s.tell(parents, pf)  # the initial batch becomes the parents
    children, cf = masks_with_fitness(c, [10, 11, 12, 13], rng)
    s.tell(children, cf)
    assert sorted(ind.fitness.values[0] for ind in s.population) == [1, 2, 3, 4]
    better, bf = masks_with_fitness(c, [0.5, 2.5, 20], rng)
    s.tell(better, bf)
    assert sorted(ind.fitness.values[0] for ind in s.population) == [0.5, 1, 2, 2.5]


@pytest.mark.parametrize("child_fit, kept", [(5.0, "parent"), (0.5, "child")])
def test_one_plus_lambda_replaces_the_parent_only_when_a_child_beats_it(child_fit, kept):
    c = Constraint.build(12, remove=3)
    s = GeneticSearch(c, seed=0, population=1, race="none")
    rng = np.random.default_rng(1)
    (parent,), pf = masks_with_fitness(c, [1.0], rng)
    s.tell([parent], pf)
    (child,), cf = masks_with_fitness(c, [child_fit], rng)
    s.tell([child], cf)
    assert s.population[0].mask() == (parent if kept == "parent" else child)


# --- mutation ------------------------------------------------------------------------------
def test_level_switch_mutation_follows_evopress_distribution():
    rng = np.random.default_rng(0)
    draws = np.array([level_switch_swaps(rng) for _ in range(9000)])
    freq = [np.mean(draws == n) for n in (1, 2, 3)]
    # min(U{1,3}, U{1,3}): 5/9, 3/9, 1/9 (uniform would be 1/3 each)
    assert freq == pytest.approx([5 / 9, 3 / 9, 1 / 9], abs=0.02)


def test_children_differ_from_their_parent_by_the_drawn_swaps():
    c = Constraint.build(60, remove=15)  # 675 one-swap neighbours: few children are redrawn as repeats
    s = GeneticSearch(c, seed=2, population=1, offspring=64, initial=1, race="none", screen=0, jump=False)  # plain mutation
    first = s.ask()
    s.tell(first, np.array([0.0]))  # a parent so good that it stays the parent
    parent = first[0]
    dist = []
    for _ in range(3):
        batch = s.ask()
        s.tell(batch, np.full(len(batch), 1.0))
        dist += [int(np.sum(m.bits != parent.bits)) // 2 for m in batch]
    assert set(dist) <= {1, 2, 3} and np.mean(np.array(dist) == 1) > 0.45


# --- racing ----------------------------------------------------------------------------------
class FidelityEvaluator(FunctionEvaluator):
    """Eight batches; a low fidelity adds mask-dependent noise, as scoring fewer tokens does."""

    def __init__(self, fn, noise=1.0, n_batches=8):
        super().__init__(fn)
        self.noise, self.n_batches, self.asked = noise, n_batches, []

    def fidelities(self):  # in units of 512, so that racing is on by default
        return [512 * i for i in range(1, self.n_batches + 1)]

    def _score(self, masks, fidelity):
        f = self.n_batches if fidelity is None else fidelity // 512 if fidelity >= 512 else fidelity
        self.asked += [(m, fidelity) for m in masks]
        out = []
        for m in masks:
            r = np.random.default_rng([int.from_bytes(m.key(), "little") % 2**32, f])
            out.append(self.fn(m) + (0.0 if f >= self.n_batches else self.noise * r.standard_normal() / f))
        return out


def test_auto_race_is_on_with_several_batches_and_off_with_one():
    assert auto_race([1024], 16, 2) is None
    assert auto_race([1024 * i for i in range(1, 17)], 16, 2) == [(1024, 2), (8192, 2)]
    assert auto_race([1024, 2048, 3072, 4096], 16, 2) == [(1024, 2), (2048, 2)]
    assert auto_race([32, 64], 16, 4) is None  # a 32-token score is noise
    assert auto_race([512, 1024], 16, 4) == [(512, 4), (None, 4)]


def test_race_rescores_incumbents_in_the_last_stage_only():
    c = Constraint.build(12, remove=3)
    rng = np.random.default_rng(3)
    fn = lambda m: float(sum(m.removed()))  # noqa: E731
    ev = FidelityEvaluator(fn, noise=0.0)
    parent = LayerMask.from_removed(12, [0, 1, 2])  # the best mask there is
    children = [c.random_mask(rng) for _ in range(8)]
    pool, fit = race(ev, children, [(1, 3), (None, 1)], incumbents=[parent])
    assert pool == [parent] and fit[0] == 3.0
    assert (parent, 1) not in ev.asked and (parent, None) in ev.asked


def test_run_search_binds_fidelities_and_parents_are_never_lost():
    """With noisy cheap scores, a raced generation must never end with worse parents than before.

    The parents' fitness is compared at the last stage's fidelity, where they are re-scored.
    """
    c = Constraint.build(18, remove=5)
    fn = rugged(18, seed=7)
    s = GeneticSearch(c, seed=0)
    ev = FidelityEvaluator(fn, noise=2.0)
    history = []
    tell = s.tell

    def spy(masks, fitness):
        tell(masks, fitness)
        if s.generation:  # counted from the first evolved generation on
            history.append(min(ind.fitness.values[0] for ind in s.population))

    s.tell = spy
    result = run_search(s, ev, Budget(evaluations=200))
    assert s.race_schedule == [(512, 2), (2048, 2)]  # bound from ev.fidelities()
    assert {f for _, f in ev.asked} == {512, 2048}
    assert len(history) > 5 and all(b <= a + 1e-12 for a, b in zip(history, history[1:]))
    n_rich = sum(f == 2048 for _, f in ev.asked)
    assert n_rich < 0.5 * result.evaluations  # most children never paid for more than the first batch


def test_single_seeding_probes_each_block_then_starts_near_the_ranking():
    c = Constraint.build(14, remove=4)
    cost = np.arange(14, 0, -1, dtype=float)  # block 13 is the least harmful
    s = GeneticSearch(c, seed=0, init="single", race="none")
    probes = s.ask()
    assert sorted(m.removed() for m in probes) == [(i,) for i in range(14)]
    s.tell(probes, np.array([cost[m.removed()[0]] for m in probes]))
    initial = s.ask()
    assert initial[0].removed() == (10, 11, 12, 13)
    assert all(c.is_valid(m) for m in initial) and len(initial) == 32


@pytest.mark.parametrize("bias", [0.0, 1.0])
def test_bias_draws_swaps_by_the_single_removal_ranking(bias):
    """bias=1: the newly removed block is mostly one of the least harmful alone, and the restored
    one the most harmful; bias=0: EvoPress's uniform draw over the kept blocks."""
    c = Constraint.build(24, remove=4)
    harm = np.arange(24, dtype=float)  # block 0 is the least harmful alone
    s = GeneticSearch(c, seed=1, init="single", initial=1, offspring=64, race="none", bias=bias)
    probes = s.ask()
    s.tell(probes, harm[[m.removed()[0] for m in probes]])
    parent = LayerMask.from_removed(24, [2, 9, 16, 23])
    s.tell([parent], np.array([-1.0]))  # so good that it stays the parent
    added, dropped = [], []
    for _ in range(3):
        batch = s.ask()
        s.tell(batch, np.full(len(batch), 1.0))
        for m in batch:
            added += sorted(set(m.removed()) - set(parent.removed()))
            dropped += sorted(set(parent.removed()) - set(m.removed()))
    low = np.mean(np.array(added) < 6)  # 5 of the 20 kept blocks: a uniform draw picks them 1/4 of the time
    restored_worst = np.mean(np.array(dropped) == 23)  # 1 of 4 removed: uniform restores it 1/4 of the time
    if bias:  # not higher: repeats of a child are redrawn, and a batch is topped up with random masks
        assert low > 0.5 and restored_worst > 0.33
    else:
        assert 0.1 < low < 0.4 and restored_worst < 0.33


def test_bad_genetic_options_are_user_errors():
    c = Constraint.build(12, remove=3)
    for options in ({"init": "bi"}, {"race": "fast"}, {"crossover": "npoint"}, {"population": 0}, {"bias": 2},
                    {"screen": 1.5}, {"pool": 0}, {"jump": "yes"}, {"pairs": 1}):
        with pytest.raises(UserError):
            GeneticSearch(c, **options)


# --- landscapes ------------------------------------------------------------------------------
@pytest.mark.parametrize("trap_seed", [3, 4])
def test_genetic_escapes_the_trap_that_catches_greedy(trap_seed):
    c = Constraint.build(16, remove=5)
    fn, group = trap(16, 5, seed=trap_seed)
    opt, _ = brute_force(c, fn)
    assert set(group) <= set(opt.removed())
    greedy = run_search(SEARCHERS.get("greedy")(c), FunctionEvaluator(fn), Budget(evaluations=None))
    assert not set(group) & set(greedy.best.removed()), "the landscape no longer traps greedy"
    hits = sum(run_search(GeneticSearch(c, seed=s), FunctionEvaluator(fn), Budget(evaluations=300)).best == opt
               for s in range(5))
    assert hits >= 4


FAST = {"bayes": {"batch_size": 8}}
NEEDS_MODEL = {n for n in SEARCHERS.names() if SEARCHERS.get(n).needs_block_stats}
# random itself, enumeration cut short (brute) and fixed rules (last) do not search the objective
BLIND = {n for n in SEARCHERS.names() if SEARCHERS.get(n).objective_blind}


@pytest.mark.parametrize("name", [n for n in SEARCHERS.names() if n not in NEEDS_MODEL | BLIND])
def test_no_searcher_is_worse_than_random_search(name):
    """Median over seeds of the best value, random search given the evaluations the searcher used."""
    c = Constraint.build(20, remove=6)
    fn = rugged(20, seed=11)
    budget = None if name in ("greedy", "greedy-add", "beam", "single") else 110  # stepwise: their whole run

    def run(algo, seed, evaluations):
        s = SEARCHERS.get(algo)(c, seed=seed, **FAST.get(algo, {}))
        return run_search(s, FunctionEvaluator(fn), Budget(evaluations=evaluations))

    mine, rand = [], []
    for seed in range(5):
        res = run(name, seed, budget)
        mine.append(fn(res.best))
        rand.append(fn(run("random", seed, res.evaluations).best))
    assert statistics.median(mine) <= statistics.median(rand), \
        f"{name}: median {statistics.median(mine):.4f} worse than random's {statistics.median(rand):.4f}"


class BiasedEvaluator(FidelityEvaluator):
    """The cheap fidelity reads far lower than the full one, as a different sample of tokens may."""

    def _score(self, masks, fidelity):
        return [v - (100.0 if fidelity is not None else 0.0) for v in super()._score(masks, fidelity)]


def test_result_compares_values_at_one_fidelity():
    """The initial masks are ranked on the cheap stage; their values must not beat later full-data ones."""
    c = Constraint.build(18, remove=5)
    fn = rugged(18, seed=8)
    s = GeneticSearch(c, seed=0, race=[(1, 4), (None, 2)])
    result = run_search(s, BiasedEvaluator(fn, noise=0.0), Budget(evaluations=150))
    assert result.fitness == pytest.approx(fn(result.best))
    assert result.best == min((ind.mask() for ind in s.population), key=fn)
    assert s.generation > 3


# --- screening children by a surrogate fitted on the run's own evaluations -----------------
@pytest.mark.parametrize("pairs", [True, False])
def test_surrogate_is_fitted_on_every_told_mask_with_the_pairs_option(pairs):
    """The searcher's surrogate predicts what a RidgeSurrogate fitted on the told masks predicts
    (the model itself is tested in test_surrogate.py); none before enough masks are told."""
    c = Constraint.build(16, remove=4)
    fn = rugged(16, seed=3)
    s = GeneticSearch(c, seed=0, race="none", pairs=pairs)
    rng = np.random.default_rng(2)
    masks, _ = masks_with_fitness(c, [0.0] * 40, rng)
    s.tell(masks[:7], np.array([fn(m) for m in masks[:7]]))
    assert s.surrogate is None  # 7 masks: too few to fit 16 units
    s.tell(masks[7:], np.array([fn(m) for m in masks[7:]]))
    probe, _ = masks_with_fitness(c, [0.0] * 30, rng)
    want = RidgeSurrogate(pairs=pairs).fit(masks, [fn(m) for m in masks]).predict(probe)
    assert np.allclose(s.surrogate.predict(probe), want)
    assert np.allclose(s.surrogate.predict(probe), want)  # reading it again changes nothing


def test_screened_children_are_better_than_unscreened_ones():
    c = Constraint.build(20, remove=6)
    fn = rugged(20, seed=12)

    def children_mean(screen):
        s = GeneticSearch(c, seed=4, screen=screen, race="none")
        first = s.ask()
        s.tell(first, np.array([fn(m) for m in first]))
        batch = s.ask()
        return statistics.mean(fn(m) for m in batch)

    assert children_mean(1.0) < children_mean(0.0) - 0.05


def test_screening_finds_the_optimum_where_plain_mutation_often_does_not():
    """Rugged landscape, 18 blocks, K=6 (18,564 masks), budget 160: hits of the brute-force optimum over 8 seeds."""
    c = Constraint.build(18, remove=6)
    fn = rugged(18, seed=21)
    opt, _ = brute_force(c, fn)
    hits = sum(run_search(GeneticSearch(c, seed=s), FunctionEvaluator(fn), Budget(evaluations=160)).best == opt
               for s in range(8))
    assert hits >= 6


def test_under_racing_the_surrogate_learns_from_the_losers_too():
    """Racing tells 2 masks a generation; the cheap stage's scores (observe) are what the fit needs."""
    c = Constraint.build(18, remove=6)
    fn = rugged(18, seed=21)
    opt, _ = brute_force(c, fn)
    s = GeneticSearch(c, seed=0)
    first = run_search(s, FidelityEvaluator(fn, noise=0.05), Budget(evaluations=32))  # the raced initial batch
    assert s.race_schedule and first.evaluations == 32 and s.surrogate is not None
    hits = sum(run_search(GeneticSearch(c, seed=seed), FidelityEvaluator(fn, noise=0.05),
                          Budget(evaluations=200)).best == opt for seed in range(10))
    assert hits >= 8  # 5 of 10 when only the told survivors are fitted, 4 with screen=0


def test_each_generation_jumps_to_the_surrogates_optimum():
    """On a purely additive landscape the fit's optimum is the true one: it is asked right after the initial batch."""
    c = Constraint.build(24, remove=6)  # 134,596 masks: no mutation of a random parent is likely to be it
    cost = np.random.default_rng(3).uniform(1.0, 10.0, 24)
    fn = lambda m: float(cost[list(m.removed())].sum())  # noqa: E731
    s = GeneticSearch(c, seed=0, race="none")
    first = s.ask()
    s.tell(first, np.array([fn(m) for m in first]))
    best = LayerMask.from_removed(24, np.argsort(cost)[:6])
    assert best not in first and s.ask()[0] == best


def test_the_probe_stage_is_single_s():
    """init=single asks what the single searcher asks first, and seeds from the mask single answers with."""
    c = Constraint.build(14, remove=4, protect="0")
    fn = rugged(14, seed=4)
    g = GeneticSearch(c, seed=3, init="single", race="none")
    one = SEARCHERS.get("single")(c, seed=3)
    probes = g.ask()
    assert probes == one.ask()
    values = np.array([fn(m) for m in probes])
    g.tell(probes, values)
    one.tell(probes, values)
    assert g.ask()[0] == one.ask()[0]
