"""COCO-style benchmarking numbers checked against values worked out by hand in each test.

Runs are built by hand against a known optimum (10.0, minimised, unless a test says
otherwise), so every hitting time, ERT, ECDF value and band can be counted on paper.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from dpopt.experiments import benchmarking as bm
from dpopt.experiments import pairwise
from dpopt.experiments.report import build_compare_report
from dpopt.experiments.report_progress import _one_shot_points
from dpopt.experiments.stats import Evaluation, Experiment, Reference, Run

OPT = Reference(10.0, (1, 2), exact=True)


def mk(algo, seed, values, valid=None, units=100.0, status="ok"):
    valid = valid or [True] * len(values)
    units = units if isinstance(units, list) else [units] * len(values)
    trace = [Evaluation(i + 1, u, v, ok, (1, 2)) for i, (v, ok, u) in enumerate(zip(values, valid, units))]
    finals = [v for v, ok in zip(values, valid) if ok]
    return Run(algo, seed, status, "" if status == "ok" else "boom", (1, 2), min(finals) if finals else math.nan,
               1.0, trace)


# hit times by hand (target: evaluation of first hit), gaps relative to 10:
#   r1: 20, [10.0 invalid], 12, 10.5, 10+1e-12  -> 0.1@4, 0.01@5, 0.001@5, exact@5 (1e-13 is float noise)
#   r2: 15, 10.9, 11, 10.05, 10.05, 10.05, 10.005 -> 0.1@2, 0.01@4, 0.001@7, exact never (7 evaluations)
#   r3: 30, 25, 20                                  -> nothing (3 evaluations)
def runs_a():
    return [mk("a", 0, [20, 10.0, 12, 10.5, 10.0 + 1e-12], valid=[True, False, True, True, True]),
            mk("a", 1, [15, 10.9, 11, 10.05, 10.05, 10.05, 10.005]),
            mk("a", 2, [30, 25, 20])]


def test_relative_gap_is_direction_aware_and_never_negative():
    assert bm.relative_gap(11.0, OPT, "minimize") == pytest.approx(0.1)
    assert bm.relative_gap(9.0, Reference(10.0, (), exact=False), "minimize") == 0.0  # beat a best-known value
    assert bm.relative_gap(0.45, Reference(0.5, (), True), "maximize") == pytest.approx(0.1)
    assert bm.relative_gap(0.55, Reference(0.5, (), False), "maximize") == 0.0
    assert bm.relative_gap(0.2, Reference(0.0, (), True), "minimize") == pytest.approx(0.2)  # KL 0: absolute
    assert math.isnan(bm.relative_gap(math.nan, OPT, "minimize"))
    assert np.allclose(bm.relative_gap(np.array([10.0, 12.0, 5.0]), OPT, "minimize"), [0.0, 0.2, 0.0])


def test_hitting_times_and_ert_count_unsuccessful_runs():
    runs = runs_a() + [mk("a", 9, [10.0] * 50, status="failed")]  # a failed run is in no statistic
    hits = [[bm.evals_to_target(r, OPT, "minimize", t) for t in bm.DEFAULT_TARGETS] for r in runs[:3]]
    assert hits == [[4, 5, 5, 5], [2, 4, 7, None], [None] * 4]
    # ERT = (evaluations to the hit, or all of an unsuccessful run's) / successes
    expect = {0.1: ((4 + 2 + 3) / 2, 2), 0.01: ((5 + 4 + 3) / 2, 2), 0.001: ((5 + 7 + 3) / 2, 2),
              0.0: ((5 + 7 + 3) / 1, 1)}
    for t, (value, succ) in expect.items():
        e = bm.ert(runs, OPT, "minimize", t)
        assert (e.value, e.successes, e.runs) == (pytest.approx(value), succ, 3), t
    assert bm.ert(runs[2:3], OPT, "minimize", 0.1).value == math.inf


def test_fixed_target_table_per_searcher_and_direction():
    # accuracy, maximised, optimum 0.5: b's gaps 0.2, 0.1, 0 -> hits 0.1@2, 0.01@3, exact@3
    acc = Reference(0.5, (3,), exact=True)
    runs = [mk("b", 0, [0.4, 0.45, 0.5]), mk("b", 1, [0.3, 0.3, 0.3, 0.3]),
            mk("bi", 0, [0.46]), mk("bi", 1, [0.46])]
    exp = Experiment("acc", "maximize", 8, runs, acc, one_shot=frozenset({"bi"}))
    table = bm.fixed_target_table(exp)
    assert [(r.algo, r.one_shot) for r in table] == [("b", False), ("bi", True)]
    b, bi = table
    assert [c.target for c in b.cells] == list(bm.DEFAULT_TARGETS)
    assert [(c.value, c.successes, c.runs) for c in b.cells] == [(2 + 4, 1, 2), (3 + 4, 1, 2), (3 + 4, 1, 2),
                                                                  (3 + 4, 1, 2)]
    # bi: gap 0.08 reached the 10% target at its one evaluation, in both runs; nothing tighter
    assert [(c.value, c.successes) for c in bi.cells] == [(1.0, 2)] + [(math.inf, 0)] * 3
    assert bm.target_label(0.0, acc) == "optimum" and bm.target_label(0.01, acc) == "1%"
    assert bm.target_label(0.0, Reference(0.5, (), exact=False)) == "best known"


def test_runtime_ecdf_over_targets_at_chosen_budgets():
    # hit times over the 4 default targets: r1 4,5,5,5; r2 2,4,7,-; r3 -,-,-,- -> 12 (run, target) pairs
    budgets = [1, 2, 3, 4, 5, 6, 7, 100]
    got = bm.runtime_ecdf(runs_a(), OPT, "minimize", budgets, bm.DEFAULT_TARGETS)
    assert got == pytest.approx(np.array([0, 1, 1, 3, 6, 6, 7, 7]) / 12)
    one = bm.runtime_ecdf(runs_a(), OPT, "minimize", [5], targets=(0.1,))
    assert one == pytest.approx([2 / 3])
    grid = bm.budget_grid(300)
    assert grid[0] == 1 and grid[-1] == 300 and np.all(np.diff(grid) > 0)
    assert np.diff(np.log(grid[-10:])).max() < 0.2  # log-spaced: dense in ratio at the end too


def test_gap_curve_median_and_no_band_under_five_runs():
    vals = [[20, 12, 11, 10], [15, 15, 10.5, 10.5], [11, 11, 11, 11], [30, 20, 12, 10.1], [12, 12, 12, 12]]
    gaps = (np.minimum.accumulate(np.array(vals, dtype=float), axis=1) - 10) / 10
    runs = [mk("a", s, v) for s, v in enumerate(vals)]
    c4 = bm.gap_curve(runs[:4], OPT, "minimize")
    assert np.allclose(c4.x, [1, 2, 3, 4]) and np.allclose(c4.median, np.median(gaps[:4], axis=0))
    assert not c4.has_band and np.isnan(c4.low).all() and np.isnan(c4.high).all()
    c5 = bm.gap_curve(runs, OPT, "minimize")
    assert c5.has_band and c5.n_runs == 5
    assert np.allclose(c5.low, np.percentile(gaps, 25, axis=0)) and np.allclose(c5.high, np.percentile(gaps, 75, axis=0))
    # on the tokens axis, x is the cumulative tokens each run scored
    cu = bm.gap_curve([mk("a", 0, [20, 11], units=[50.0, 25.0])], OPT, "minimize", axis="units")
    assert np.allclose(cu.x, [50, 75]) and np.allclose(cu.median, [1.0, 0.1])


def test_too_few_runs_to_test():
    assert pairwise.min_p_value(2, 2) == pytest.approx(1 / 3)
    assert pairwise.min_p_value(5, 5) == pytest.approx(2 / 252)
    # the bound is scipy's exact p for two fully separated samples
    assert pairwise.min_p_value(3, 4) == pytest.approx(sps.mannwhitneyu([1, 2, 3], [4, 5, 6, 7]).pvalue)

    def exp(n_a, n_b, n_c=0):
        runs = [Run("a", s, value=1.0 + s) for s in range(n_a)] + [Run("b", s, value=100.0 + s) for s in range(n_b)]
        runs += [Run("c", s, value=50.0 + s) for s in range(n_c)]
        return Experiment("ppl", "minimize", 8, runs)

    (p22,) = pairwise.pairwise_tests(exp(2, 2))
    assert not p22.tested and math.isnan(p22.p) and math.isnan(p22.p_holm)
    assert p22.verdict() == "too few runs to test (min p = 0.333)"
    (p55,) = pairwise.pairwise_tests(exp(5, 5))
    ref = sps.mannwhitneyu([1, 2, 3, 4, 5], [100, 101, 102, 103, 104], alternative="two-sided")
    assert p55.tested and p55.p == pytest.approx(ref.pvalue) and p55.verdict() == "A better"
    # an untestable pair (c has 2 runs) does not enter Holm's count: a-b keeps its own p
    ab, ac, bc = pairwise.pairwise_tests(exp(5, 5, 2))
    assert ab.tested and not ac.tested and not bc.tested and ab.p_holm == pytest.approx(ab.p)


def test_report_marks_best_known_one_shot_points_and_tokens_axis(tmp_path):
    best_known = Reference(10.0, (1, 2), exact=False)
    runs = runs_a() + [mk("racing", s, [14, 12, 10.2], units=[25.0, 25.0, 100.0]) for s in range(2)]
    runs += [mk("bi", s, [10.5]) for s in range(2)] + [mk("single", 0, [13, 12, 11])]
    exp = Experiment("ppl", "minimize", 8, runs, best_known, one_shot=frozenset({"bi", "single"}))
    assert bm.fidelities_differ(exp)
    assert not bm.fidelities_differ(Experiment("ppl", "minimize", 8, runs_a(), OPT))
    # one-shot baselines: one point each at (median evaluations, median gap)
    assert _one_shot_points(exp, best_known, "evaluations") == [("bi", 1.0, pytest.approx(0.05)),
                                                                ("single", 3.0, pytest.approx(0.1))]
    out = build_compare_report(exp, tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert (tmp_path / "rep" / "gap_tokens.png").exists() and out["fidelities_differ"]
    assert "ERT to best known (reached/runs)" in md and "within 1% of best known" in md
    assert "best known, not proven" in md and "bi (one-shot)" in md
    # 3 runs of a: their values listed, no "mean ± sd" over 3 seeds
    row_a = next(line for line in md.splitlines() if line.startswith("| a |"))
    assert "±" not in row_a and "10, 10.01, 20" in row_a


def test_suggested_budget_is_the_largest_finite_ert_of_the_searchers_that_search():
    from dpopt.experiments.benchmarking import suggested_budget

    def run(algo, seed, values):
        return Run(algo, seed, "ok", "", (0,), min(values), 1.0,
                   [Evaluation(i + 1, 1.0, v, True, (0,)) for i, v in enumerate(values)])

    ref = Reference(1.0, (0,), exact=True)
    runs = [run("ga", 0, [3, 2, 1]), run("ga", 1, [3, 3, 3, 3]),  # ERT(1%) = (3 + 4) / 1 = 7
            run("sa", 0, [2, 1]), run("sa", 1, [1]),  # ERT = (2 + 1) / 2 = 1.5 -> 2
            run("rnd", 0, [5] * 9 + [1]),  # objective-blind: left out (its ERT would be 10)
            run("bi", 0, [4])]  # one-shot: never reaches it, left out
    exp = Experiment("ppl", "minimize", 4, runs, ref, blind=frozenset({"rnd", "bi"}), one_shot=frozenset({"bi"}))
    assert suggested_budget({"ppl": exp}) == 7
    never = Experiment("ppl", "minimize", 4, [run("ga", 0, [3, 2])], ref)
    assert suggested_budget({"ppl": never}) is None
