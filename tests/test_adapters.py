"""``ng:NAME`` and ``optuna:NAME``: foreign optimizers through the same ask/tell adapter.

The synthetic objective and its brute-force optimum are the ones every bundled searcher is
tested on (tests/test_searchers_synthetic.py): 14 removable blocks, K = 4, 1001 masks.
"""
from __future__ import annotations

import numpy as np
import pytest

from dpopt.errors import UserError
from dpopt.genome import Constraint
from dpopt.optim import SEARCHERS, Budget, run_search
from dpopt.registry import Registry
from test_searchers_synthetic import K, N, PROTECT, RecordingEvaluator, brute_force, make_objective

# evaluations each gets to hit the optimum of 1001 masks, from runs of seeds 0-5 at budget 300
# (scripts/adapter_budgets.py): first hit at most 96 / 105 / 103 / 83 / 196 evaluations
OPTIMUM_BUDGET = {
    "ng:DiscreteLenglerOnePlusOne": 150,
    "ng:PortfolioDiscreteOnePlusOne": 150,
    "ng:NGOpt": 150,
    "optuna:TPESampler": 120,
    "optuna:NSGAIISampler": 250,
}


@pytest.fixture(scope="module")
def constraint():
    return Constraint.build(N, remove=K, protect=PROTECT)


@pytest.fixture(scope="module")
def objective(constraint):
    fn = make_objective(N)
    return fn, brute_force(constraint, fn)


def run(name, constraint, fn, budget, seed=0, **options):
    searcher = SEARCHERS.get(name)(constraint, seed=seed, **options)
    searcher.batches = []  # every batch asked, repeats included (the evaluator only sees memo misses)
    ask = searcher.ask
    searcher.ask = lambda: searcher.batches.append(ask()) or searcher.batches[-1]
    ev = RecordingEvaluator(fn)
    return searcher, ev, run_search(searcher, ev, Budget(evaluations=budget))


@pytest.mark.parametrize("name", sorted(OPTIMUM_BUDGET))
@pytest.mark.parametrize("seed", [0, 1])
def test_finds_brute_force_optimum(name, seed, constraint, objective):
    fn, (opt_mask, opt_fit) = objective
    searcher, ev, result = run(name, constraint, fn, OPTIMUM_BUDGET[name], seed=seed)
    assert searcher.name == name
    assert ev.n_scored <= OPTIMUM_BUDGET[name]
    assert all(constraint.is_valid(m) for m, _ in ev.asked)
    assert result.best == opt_mask, f"{name} got {result.best} ({result.fitness:.3f}), optimum {opt_mask} ({opt_fit:.3f})"


@pytest.mark.parametrize("name", ["ng:DiscreteLenglerOnePlusOne", "ng:NGOpt", "optuna:TPESampler"])
def test_batches_are_new_masks_and_seeded(name, constraint, objective):
    fn, _ = objective
    a, a_ev, _ = run(name, constraint, fn, 40, seed=3, batch_size=5)
    b, b_ev, _ = run(name, constraint, fn, 40, seed=3, batch_size=5)
    _, c_ev, _ = run(name, constraint, fn, 40, seed=4, batch_size=5)
    asked = [m for m, _ in a_ev.asked]
    assert asked == [m for m, _ in b_ev.asked] and a.best == b.best
    assert asked != [m for m, _ in c_ev.asked]
    every = [m for batch in a.batches for m in batch]
    assert all(0 < len(batch) <= 5 for batch in a.batches)
    assert len(every) == len(set(every)) == 40  # repeats are answered from what is known, never re-asked


def test_ng_batch_size_and_failures(constraint):
    s = SEARCHERS.get("ng:DiscreteLenglerOnePlusOne")(constraint, seed=0, batch_size=6)
    assert s.opt.num_workers == 6
    for _ in range(5):
        batch = s.ask()
        assert 0 < len(batch) <= 6 and len(set(batch)) == len(batch)
        s.tell(batch, np.full(len(batch), np.inf))  # failed masks: the worst value, no crash
    assert s.best == (None, float("inf"))


def test_ng_done_when_its_budget_is_asked(constraint, objective):
    fn, _ = objective
    s = SEARCHERS.get("ng:DiscreteOnePlusOne")(constraint, seed=0, budget=30, batch_size=4)
    ev = RecordingEvaluator(fn)
    run_search(s, ev, Budget(evaluations=None))
    assert s.done and s.opt.num_ask == 30 and 0 < ev.n_scored <= 30


def test_optuna_options_go_to_the_sampler(constraint):
    """The sampler's own check sees the option: a value it refuses is a user error naming it."""
    SEARCHERS.get("optuna:NSGAIISampler")(constraint, seed=2, population_size=12)
    with pytest.raises(UserError, match="cannot be built from options: `population_size` must be"):
        SEARCHERS.get("optuna:NSGAIISampler")(constraint, seed=2, population_size=1)
    assert isinstance(SEARCHERS.get("optuna:RandomSampler")(constraint, seed=1).study.sampler,
                      __import__("optuna").samplers.RandomSampler)


@pytest.mark.parametrize("name, match", [
    ("ng:DiscreteLenglerOnePlusOnee", "did you mean DiscreteLenglerOnePlusOne"),
    ("ng:", "give ng:NAME"),
    ("optuna:TPE", "TPESampler"),
    ("optuna:", "give optuna:NAME"),
])
def test_unknown_names_fail_in_one_line(name, match):
    with pytest.raises(UserError, match=match) as info:
        SEARCHERS.get(name)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name, options, match", [
    ("optuna:TPESampler", {"n_startup": 3}, "no option 'n_startup'"),
    ("optuna:GridSampler", {}, "cannot be built"),
    ("ng:NGOpt", {"budget": 0}, "budget"),
    ("ng:NGOpt", {"batch_size": "x"}, "batch_size"),
])
def test_bad_options_are_user_errors(name, options, match, constraint):
    with pytest.raises(UserError, match=match):
        SEARCHERS.get(name)(constraint, seed=0, **options)


def test_registry_prefix_resolves_before_module_import():
    reg = Registry("searcher")
    reg.register_prefix("os", lambda name: ("resolved", name), "help")
    assert reg.get("os:path") == ("resolved", "path")  # not the os module's path attribute
    assert reg.get("os.path:join") is __import__("os.path").path.join  # other a:b still imports
    with pytest.raises(UserError, match="os:NAME"):
        reg.get("nope")
    with pytest.raises(ValueError):
        reg.register_prefix("os", lambda name: None)


def test_algos_lists_the_prefixes(capsys):
    from dpopt.cli import main

    assert main(["algos"]) == 0
    out = capsys.readouterr().out
    assert "ng:NAME" in out and "optuna:NAME" in out


def test_converged_ng_optimizer_is_done(constraint, objective):
    """A continuous (1+1) soon proposes only scored masks: the searcher stops instead of spinning."""
    fn, _ = objective
    s, ev, result = run("ng:OnePlusOne", constraint, fn, 1000, seed=0, max_tries=2)
    assert s.done and result.evaluations == ev.n_scored < 1000
    assert not s.batches[-1]


def test_missing_sampler_dependency_is_user_error(constraint, monkeypatch):
    s = SEARCHERS.get("optuna:RandomSampler")(constraint, seed=0)

    def broken(*a, **k):
        raise ModuleNotFoundError("No module named 'cmaes'")

    monkeypatch.setattr(s.study, "ask", broken)
    with pytest.raises(UserError, match="cmaes"):
        s.ask()


def test_threaded_ng_optimizers_are_refused(constraint):
    """SQP & co. block on a second ask and keep the process alive: refused before anything runs."""
    with pytest.raises(UserError, match="thread"):
        SEARCHERS.get("ng:SQP")(constraint, seed=0)
