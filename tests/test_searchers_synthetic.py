"""Every searcher against a synthetic objective whose optimum is known by brute force.

The objective is strongly additive (a cost per removed block) with mild pairwise
interactions, so greedy can reach the optimum and the stochastic searchers have a
landscape where the optimum is findable well inside the space (1001 masks here).
No model is involved: FunctionEvaluator scores masks with a plain function.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from dpopt.errors import UserError
from dpopt.fitness import FunctionEvaluator
from dpopt.genome import Constraint, LayerMask
from dpopt.optim import SEARCHERS, Budget, run_search

N, K, PROTECT = 16, 4, "0,-1"  # protect parses to blocks 0 and 15: 14 removable, C(14, 4) = 1001 masks

# searchers whose intermediate asks remove a different number of blocks than K (by design)
STEPWISE = {"greedy", "greedy-add", "beam", "single"}
# a few options to keep the slow ones quick in tests
FAST = {"bayes": {"batch_size": 8}}


def make_objective(n: int, seed: int = 1, interaction: float = 0.3):
    rng = np.random.default_rng(seed)
    cost = rng.uniform(1.0, 10.0, n)
    pair = np.triu(rng.uniform(-interaction, interaction, (n, n)), 1)

    def fitness(mask: LayerMask) -> float:
        removed = list(mask.removed())
        return float(cost[removed].sum() + sum(pair[i, j] for i, j in itertools.combinations(removed, 2)))

    return fitness


def brute_force(constraint: Constraint, fn) -> tuple[LayerMask, float]:
    scored = sorted(
        (fn(LayerMask.from_removed(constraint.n_units, r)), r)
        for r in itertools.combinations(constraint.removable, constraint.k)
    )
    assert scored[1][0] - scored[0][0] > 1e-6, "test objective must have a unique optimum"
    return LayerMask.from_removed(constraint.n_units, scored[0][1]), scored[0][0]


class RecordingEvaluator(FunctionEvaluator):
    """Remembers every mask it is asked to score (memo misses), with the fidelity."""

    def __init__(self, fn, noise: float = 0.0):
        super().__init__(fn)
        self.asked: list[tuple[LayerMask, int | None]] = []
        self.noise = noise

    def _score(self, masks, fidelity):
        self.asked.extend((m, fidelity) for m in masks)
        out = []
        for m in masks:
            f = self.fn(m)
            if self.noise and fidelity is not None:
                # deterministic per (mask, fidelity); shrinks as fidelity grows, like more tokens
                r = np.random.default_rng([int.from_bytes(m.key(), "little") % 2**32, fidelity])
                f += self.noise * r.standard_normal() / fidelity
            out.append(f)
        return out


@pytest.fixture(scope="module")
def constraint():
    return Constraint.build(N, remove=K, protect=PROTECT)


@pytest.fixture(scope="module")
def objective(constraint):
    fn = make_objective(N)
    return fn, brute_force(constraint, fn)


def run(name, constraint, fn, budget, seed=0, **options):
    searcher = SEARCHERS.get(name)(constraint, seed=seed, **{**FAST.get(name, {}), **options})
    ev = RecordingEvaluator(fn)
    result = run_search(searcher, ev, Budget(evaluations=budget))
    return searcher, ev, result


# one-shot baselines that need the dense model's block statistics cannot run without a model
ALL = [n for n in SEARCHERS.names() if not SEARCHERS.get(n).needs_block_stats]
# stepwise searchers need their whole path to reach K removed; cut only their last batch
STEPWISE_BUDGET = {"greedy": 49, "greedy-add": 94, "beam": 139, "single": 15}


def test_all_expected_searchers_registered():
    assert set(ALL) >= {"greedy", "greedy-add", "beam", "random", "genetic", "cma", "bayes", "anneal", "single"}


@pytest.mark.parametrize("name", ALL)
def test_asks_respect_constraint_and_budget(name, constraint, objective):
    fn, _ = objective
    # budgets that end inside a batch on purpose: the last batch is cut and tell sees a prefix
    budget = STEPWISE_BUDGET.get(name, 37)
    searcher, ev, result = run(name, constraint, fn, budget)
    assert constraint.protect == (0, N - 1)
    assert ev.asked, "searcher asked nothing"
    for m, _ in ev.asked:
        assert m.n_units == N
        assert m.bits[0] and m.bits[N - 1], f"{name} removed a protected block: {m}"
        if name not in STEPWISE:
            assert constraint.is_valid(m), f"{name} asked {m}, not exactly {K} removed"
    assert result.evaluations <= budget
    assert ev.n_scored <= budget
    best_mask, best_fit = searcher.best
    assert constraint.is_valid(best_mask) and best_mask == result.best
    assert best_fit == pytest.approx(fn(best_mask))


@pytest.mark.parametrize("name", [n for n in ALL if n not in STEPWISE])
def test_result_respects_constraint(name, constraint, objective):
    fn, _ = objective
    _, _, result = run(name, constraint, fn, 60)
    assert constraint.is_valid(result.best)
    assert result.fitness == pytest.approx(fn(result.best))


@pytest.mark.parametrize("name", sorted(STEPWISE))
def test_stepwise_result_respects_constraint(name, constraint, objective):
    """Intermediate masks (fewer than K removed) score better but must never be the answer."""
    fn, _ = objective
    _, ev, result = run(name, constraint, fn, None)
    assert any(not constraint.is_valid(m) for m, _ in ev.asked)
    assert constraint.is_valid(result.best)
    assert result.fitness == pytest.approx(fn(result.best))


def test_budget_too_small_for_greedy_is_user_error(constraint, objective):
    fn, _ = objective
    with pytest.raises(UserError, match="budget"):
        run("greedy", constraint, fn, 37)  # 14 + 13 + 10 of 12: never reaches K removed


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_run(name, constraint, objective):
    fn, _ = objective
    budget = STEPWISE_BUDGET.get(name, 48)
    a_s, a_ev, a = run(name, constraint, fn, budget, seed=3)
    b_s, b_ev, b = run(name, constraint, fn, budget, seed=3)
    assert [m for m, _ in a_ev.asked] == [m for m, _ in b_ev.asked]
    assert a.history == b.history
    assert a_s.best == b_s.best


@pytest.mark.parametrize("name", ["random", "genetic", "anneal", "cma", "bayes"])
def test_seed_matters(name, constraint, objective):
    fn, _ = objective
    _, a_ev, _ = run(name, constraint, fn, 24, seed=0)
    _, b_ev, _ = run(name, constraint, fn, 24, seed=1)
    assert [m for m, _ in a_ev.asked] != [m for m, _ in b_ev.asked]


# evaluations each searcher gets to hit the brute-force optimum (of 1001 masks)
OPTIMUM_BUDGET = {
    "greedy": 50,  # 14 + 13 + 12 + 11 single removals: greedy's whole run
    "greedy-add": 95,  # 14 + 13 + ... + 5 single additions
    "beam": 140,
    "genetic": 400,
    "anneal": 200,
    "cma": 300,
    "bayes": 120,
}


@pytest.mark.parametrize("name", sorted(OPTIMUM_BUDGET))
@pytest.mark.parametrize("seed", [0, 1])
def test_finds_brute_force_optimum(name, seed, constraint, objective):
    fn, (opt_mask, opt_fit) = objective
    searcher, ev, _ = run(name, constraint, fn, OPTIMUM_BUDGET[name], seed=seed)
    assert ev.n_scored <= OPTIMUM_BUDGET[name]
    best_mask, best_fit = searcher.best
    assert best_mask == opt_mask, f"{name} got {best_mask} ({best_fit:.3f}), optimum {opt_mask} ({opt_fit:.3f})"
    assert best_fit == pytest.approx(opt_fit)


def test_stepwise_budgets_are_exact(constraint, objective):
    fn, _ = objective
    for name, cost in [("greedy", 50), ("greedy-add", 95), ("beam", 140), ("single", 15)]:
        searcher, _, result = run(name, constraint, fn, None)
        assert searcher.done and result.evaluations == cost, name


def test_greedy_first_batch_is_every_single_removal(constraint):
    s = SEARCHERS.get("greedy")(constraint)
    batch = s.ask()
    assert sorted(m.removed() for m in batch) == [(i,) for i in range(1, N - 1)]


def test_single_removes_least_harmful_blocks():
    c = Constraint.build(10, remove=3)
    cost = np.array([5.0, 1.0, 7.0, 0.5, 9.0, 2.0, 8.0, 3.0, 6.0, 4.0])
    fn = lambda m: float(cost[list(m.removed())].sum())  # noqa: E731
    s, _, result = run("single", c, fn, None)
    assert s.done and s.best[0].removed() == (1, 3, 5)
    assert result.evaluations == 11


def test_random_exhausts_small_space_without_repeats():
    c = Constraint.build(7, remove=2, protect=[3])  # C(6, 2) = 15 masks
    s, ev, result = run("random", c, lambda m: float(sum(m.removed())), None, batch_size=4)
    asked = [m for m, _ in ev.asked]
    assert s.done and len(asked) == 15 and len(set(asked)) == 15
    assert result.best.removed() == (0, 1)


@pytest.mark.parametrize("name", ["genetic", "anneal"])
def test_no_mask_asked_twice(name, constraint, objective):
    fn, _ = objective
    searcher = SEARCHERS.get(name)(constraint, seed=5)
    seen = []
    for _ in range(15):
        batch = searcher.ask()
        seen.extend(batch)
        searcher.tell(batch, np.array([fn(m) for m in batch]))
    assert len(seen) == len(set(seen)) > 100


def test_genetic_with_race_tells_only_survivors(constraint, objective):
    fn, (opt_mask, opt_fit) = objective
    searcher = SEARCHERS.get("genetic")(constraint, seed=0, race=[(1, 8), (2, 2)])
    told_sizes = []
    tell = searcher.tell

    def spy(masks, fitness):
        told_sizes.append(len(masks))
        tell(masks, fitness)

    searcher.tell = spy
    ev = RecordingEvaluator(fn, noise=0.2)
    result = run_search(searcher, ev, Budget(evaluations=600))
    assert searcher.race_schedule == [(1, 8), (2, 2)]  # generations use the whole schedule
    assert result.evaluations <= 600
    # the initial masks are ranked on the cheap stage alone; every generation tells its 2 winners
    assert told_sizes[0] == searcher.population_size and set(told_sizes[1:]) == {2}
    fidelities = {f for _, f in ev.asked}
    assert fidelities == {1, 2}
    # only survivors of the cheap round (and the parents) are scored at fidelity 2
    n1 = sum(f == 1 for _, f in ev.asked)
    n2 = sum(f == 2 for _, f in ev.asked)
    assert n2 <= (8 + searcher.population_size) * len(told_sizes) and n2 < n1
    for m, _ in ev.asked:
        assert constraint.is_valid(m)
    # noise at fidelity 2 (sd 0.1) is below the gap to the runner-up, so racing still finds the optimum
    assert searcher.best[0] == opt_mask
    assert result.best == opt_mask


def test_bayes_gp_sampler_runs(constraint, objective):
    fn, _ = objective  # GP trials cost ~0.5 s each on CPU: a handful past the random start-up
    a, ev, _ = run("bayes", constraint, fn, 10, sampler="gp", batch_size=5, n_startup_trials=5)
    b, _, _ = run("bayes", constraint, fn, 10, sampler="gp", batch_size=5, n_startup_trials=5)
    assert ev.n_scored == 10 and all(constraint.is_valid(m) for m, _ in ev.asked)
    assert a.best == b.best
    assert isinstance(a.study.sampler, __import__("optuna").samplers.GPSampler)
    assert len(a.study.trials[0].user_attrs["removed"]) == K


def test_anneal_max_steps_makes_it_done(constraint, objective):
    fn, _ = objective
    s, _, result = run("anneal", constraint, fn, None, max_steps=40, batch_size=8)
    assert s.done and s.steps >= 40 and result.evaluations <= 48 + 8


def test_anneal_restarts_after_patience_batches_without_a_new_best(constraint, objective):
    """The restart counts batches whose tell did not lower the best (the base's ``improved``)."""
    fn, _ = objective
    s = SEARCHERS.get("anneal")(constraint, seed=0, batch_size=4, patience=2)
    bests, tell = [], s.tell

    def spy(masks, fitness):
        tell(masks, fitness)
        bests.append(s.best[1])

    s.tell = spy
    run_search(s, RecordingEvaluator(fn), Budget(evaluations=120))
    expected = streak = 0
    for before, after in zip(bests, bests[1:]):  # the first batch only picks the start
        streak = 0 if after < before else streak + 1
        if streak >= 2:
            expected, streak = expected + 1, 0
    assert s.restarts == expected > 0


def test_cma_restarts_then_done():
    """A restart starts CMA-ES again with a larger population: the batch size shows each run."""
    c = Constraint.build(6, remove=2)  # 15 masks
    fn = make_objective(6)

    def batch_sizes(restarts):
        s = SEARCHERS.get("cma")(c, seed=0, restarts=restarts)
        sizes, ask = [], s.ask

        def spy():
            batch = ask()
            sizes.append(len(batch))
            return batch

        s.ask = spy
        result = run_search(s, RecordingEvaluator(fn), Budget(evaluations=None))
        assert s.done and result.best == brute_force(c, fn)[0]
        return sizes

    never, once = batch_sizes(0), batch_sizes(1)
    assert len(set(never)) == 1  # stopped once, done
    # stopped once, restarted once with a larger population, stopped again
    runs = [size for i, size in enumerate(once) if i == 0 or size != once[i - 1]]
    assert len(runs) == 2 and runs[0] == never[0] < runs[1]


def test_unknown_searcher_is_user_error():
    with pytest.raises(UserError, match="nope"):
        SEARCHERS.get("nope")


@pytest.mark.parametrize("name, options", [
    ("beam", {"width": 0}),
    ("random", {"batch_size": "many"}),
    ("genetic", {"crossover": "npoint"}),
    ("genetic", {"init": "bi"}),
    ("genetic", {"race": "fast"}),
    ("genetic", {"race": [(1, 0)]}),
    ("bayes", {"sampler": "random"}),
    ("anneal", {"cooling": 1.5}),
    ("cma", {"popsize": 1}),
])
def test_bad_options_are_user_errors(name, options, constraint):
    with pytest.raises(UserError):
        SEARCHERS.get(name)(constraint, seed=0, **options)
