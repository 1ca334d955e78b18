"""The compare/study report's numbers, checked against values computed here, and its files.

Runs are made by hand (a few evaluations each) so every expected number can be worked out
in the test: best-so-far curves, the 1% hitting time, gap to a brute-force optimum, Mann-
Whitney U and Holm against scipy and a hand computation, overlaps, rank correlations.
"""
from __future__ import annotations

import csv
import itertools
import math
import re

import numpy as np
import pytest
from scipy import stats as sps

from dpopt.experiments import pairwise, stats
from dpopt.errors import UserError
from dpopt.genome import Constraint, LayerMask
from dpopt.experiments.report import build_compare_report, build_study_report, prepare_dir
from dpopt.experiments.agreement import rank_correlations, study_finding
from dpopt.experiments.stats import Evaluation, Experiment, RankMatrix, Reference, Run, Score
from test_searchers_synthetic import brute_force, make_objective


def run(algo, seed, values, removed=(1, 2), valid=None, units=10.0, status="ok", error=""):
    valid = valid or [True] * len(values)
    trace = [Evaluation(i + 1, units, v, ok, removed) for i, (v, ok) in enumerate(zip(values, valid))]
    finals = [v for v, ok in zip(values, valid) if ok]
    return Run(algo, seed, status, error, tuple(removed), min(finals) if finals and status == "ok" else math.nan,
               1.5, trace)


# --- curves ------------------------------------------------------------------------------------
def test_best_so_far_ignores_invalid_masks_and_follows_direction():
    tr = [Evaluation(1, 1, 5.0, True), Evaluation(2, 1, 1.0, False), Evaluation(3, 1, 4.0, True),
          Evaluation(4, 1, 6.0, True)]
    assert np.allclose(stats.best_so_far(tr, "minimize"), [5.0, 5.0, 4.0, 4.0])
    assert np.allclose(stats.best_so_far(tr, "maximize"), [5.0, 5.0, 5.0, 6.0])
    first_invalid = [Evaluation(1, 1, 0.5, False), Evaluation(2, 1, 3.0, True)]
    out = stats.best_so_far(first_invalid, "minimize")
    assert np.isnan(out[0]) and out[1] == 3.0


def test_anytime_curve_median_and_band_over_seeds():
    runs = [run("a", 0, [9, 7, 7, 3]), run("a", 1, [8, 8, 2, 2]), run("a", 2, [6, 5])]  # the last stops early
    c = stats.anytime_curve(runs, "minimize")
    best = np.array([[9, 7, 7, 3], [8, 8, 2, 2], [6, 5, 5, 5]], dtype=float)  # held at its last value
    assert np.allclose(c.x, [1, 2, 3, 4])
    assert np.allclose(c.median, np.median(best, axis=0))
    assert np.isnan(c.low).all() and np.isnan(c.high).all()  # 3 seeds: no band to claim
    runs5 = runs + [run("a", 3, [5, 4, 4, 1]), run("a", 4, [7, 7, 6, 6])]
    best5 = np.vstack([best, [[5, 4, 4, 1], [7, 7, 6, 6]]])
    c5 = stats.anytime_curve(runs5, "minimize")
    assert np.allclose(c5.low, np.percentile(best5, 25, axis=0))
    assert np.allclose(c5.high, np.percentile(best5, 75, axis=0))
    # on the token axis each run has its own x: 10, 20, ... per evaluation here, 25 per one for "b"
    runs_u = [run("a", 0, [9, 7, 7, 3], units=10.0), run("b", 0, [4, 1], units=25.0)]
    cu = stats.anytime_curve(runs_u, "minimize", axis="units")
    assert np.allclose(cu.x, [10, 20, 25, 30, 40, 50])
    a_at = np.array([9, 7, 7, 7, 3, 3.0])
    b_at = np.array([np.nan, np.nan, 4, 4, 4, 1])
    expect = np.array([np.nanmedian([x, y]) for x, y in zip(a_at, b_at)])
    assert np.allclose(cu.median, expect)


def test_ecdf():
    x, y = stats.ecdf([3.0, 1.0, 2.0, 2.0])
    assert np.allclose(x, [1, 2, 2, 3]) and np.allclose(y, [0.25, 0.5, 0.75, 1.0])


# --- the table, against a brute-force optimum ------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic():
    """Runs whose traces are real masks of the synthetic objective; the reference is brute force."""
    c = Constraint.build(8, remove=2)
    fn = make_objective(8, seed=4)
    opt_mask, opt = brute_force(c, fn)
    all_masks = sorted((fn(LayerMask.from_removed(8, r)), r) for r in itertools.combinations(range(8), 2))
    rng = np.random.default_rng(0)

    def make(algo, seed, picks):
        trace = [Evaluation(i + 1, 100.0, all_masks[p][0], True, all_masks[p][1]) for i, p in enumerate(picks)]
        best = min(picks)
        return Run(algo, seed, "ok", "", all_masks[best][1], all_masks[best][0], 2.0 + seed, trace)

    runs = [make("good", s, list(rng.integers(3, 28, 5)) + [0] + list(rng.integers(0, 28, 3 + s))) for s in range(3)]
    runs += [make("poor", s, list(rng.integers(5, 28, 8))) for s in range(3)]
    runs.append(Run("poor", 9, "failed", "ValueError: boom", (), math.nan, 0.1, []))
    ref = Reference(opt, opt_mask.removed(), exact=True)
    return Experiment("syn", "minimize", 8, runs, ref), all_masks


def test_summary_table_against_hand_values(synthetic):
    exp, all_masks = synthetic
    rows = {r.algo: r for r in stats.summary_table(exp)}
    opt = exp.reference.value
    assert opt == pytest.approx(all_masks[0][0])
    for algo in ("good", "poor"):
        ok = [r for r in exp.runs if r.algo == algo and r.ok]
        vals = np.array([r.value for r in ok])
        row = rows[algo]
        assert row.n_ok == 3
        assert row.mean == pytest.approx(vals.mean()) and row.values == pytest.approx(tuple(vals))
        assert math.isnan(row.sd)  # 3 runs: no sd to claim, the report lists the values
        assert row.median == pytest.approx(np.median(vals))
        assert row.gap_mean == pytest.approx(np.mean(vals - opt))
        assert row.gap_rel_mean == pytest.approx(np.mean((vals - opt) / abs(opt)))
        assert row.wall_mean == pytest.approx(np.mean([r.wall_seconds for r in ok]))
        # evaluations to come within 1%: first index whose running min is <= 1.01 * opt
        hits = []
        for r in ok:
            running = np.minimum.accumulate([e.value for e in r.trace])
            idx = np.flatnonzero(running <= opt + 0.01 * abs(opt))
            if len(idx):
                hits.append(idx[0] + 1)
        assert row.n_reached == len(hits)
        assert (math.isnan(row.evals_median) and not hits) or row.evals_median == np.median(hits)
    assert rows["good"].gap_mean == pytest.approx(0.0) and rows["good"].n_reached == 3
    assert rows["good"].evals_median == 6
    assert rows["poor"].n_failed == 1 and rows["poor"].errors == ["seed 9: ValueError: boom"]


def test_reference_defaults_to_best_found():
    runs = [Run("a", 0, "ok", "", (1,), 0.5), Run("b", 0, "ok", "", (2,), 0.6), Run("c", 0, "failed", "x", (3,), 0.9)]
    ref = stats.best_reference(Experiment("acc", "maximize", 4, runs))
    assert ref.value == 0.6 and ref.removed == (2,) and not ref.exact
    assert stats.best_reference(Experiment("kl", "minimize", 4, runs)).value == 0.5
    assert stats.gap(0.5, 0.6, "maximize") == pytest.approx(0.1)
    assert stats.within(0.595, 0.6, "maximize") and not stats.within(0.59, 0.6, "maximize")
    assert stats.within(1.01, 1.0, "minimize") and not stats.within(1.0101, 1.0, "minimize")
    r = run("a", 0, [10.0, 4.0, 5.04, 5.0], valid=[True, False, True, True])  # the invalid 4.0 does not count
    assert stats.evals_to_reach(r, 5.0, "minimize") == 3
    assert stats.evals_to_reach(r, 5.0, "minimize", tol=0.0) == 4
    assert stats.evals_to_reach(r, 4.0, "minimize") is None


# --- tests between searchers ----------------------------------------------------------------------
def test_holm_against_hand_computation():
    # sorted: 0.01*3 = 0.03; 0.03*2 = 0.06; 0.04*1 = 0.04 -> monotone 0.06; 0.5 * 1... (m = 4 here)
    p = [0.04, 0.01, 0.5, 0.03]
    # m = 4: 0.01*4 = 0.04; 0.03*3 = 0.09; 0.04*2 = 0.08 -> 0.09; 0.5*1 = 0.5
    assert np.allclose(pairwise.holm(p), [0.09, 0.04, 0.5, 0.09])
    assert np.allclose(pairwise.holm([0.6, 0.5]), [1.0, 1.0])


def test_pairwise_mann_whitney_and_win_rate_match_scipy():
    vals = {"a": [1.0, 2.0, 3.0, 4.0, 5.0], "b": [3.0, 6.0, 7.0, 8.0, 9.0], "c": [2.5, 2.0, 10.0, 11.0, 0.5]}
    runs = [Run(a, s, "ok", "", (s,), v, 1.0, []) for a, vs in vals.items() for s, v in enumerate(vs)]
    runs.append(Run("c", 7, "failed", "boom", (), math.nan, 1.0, []))  # must not enter any test
    exp = Experiment("ppl", "minimize", 10, runs)
    pairs = pairwise.pairwise_tests(exp)
    assert [(p.a, p.b) for p in pairs] == [("a", "b"), ("a", "c"), ("b", "c")]
    raw = [sps.mannwhitneyu(vals[p.a], vals[p.b], alternative="two-sided") for p in pairs]
    for p, r in zip(pairs, raw):
        assert p.u == pytest.approx(r.statistic) and p.p == pytest.approx(r.pvalue)
        # a beats b when a's value is lower: U of b against a counts exactly those pairs (ties half)
        u_ba = sps.mannwhitneyu(vals[p.b], vals[p.a]).statistic
        assert p.win_rate == pytest.approx(u_ba / 25)
    m = 3
    order = np.argsort([r.pvalue for r in raw])
    expect, running = {}, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * raw[i].pvalue))
        expect[i] = running
    assert [p.p_holm for p in pairs] == pytest.approx([expect[i] for i in range(3)])
    w = pairwise.win_matrix(exp)
    assert w[0, 1] == pytest.approx(pairs[0].win_rate) and w[1, 0] == pytest.approx(1 - pairs[0].win_rate)
    # maximising flips who wins
    exp_max = Experiment("acc", "maximize", 10, runs)
    assert pairwise.win_matrix(exp_max)[0, 1] == pytest.approx(1 - w[0, 1])


def test_block_frequency_and_jaccard_by_hand():
    runs = [Run("a", 0, "ok", "", (1, 2), 1.0), Run("a", 1, "ok", "", (1, 3), 1.0),
            Run("b", 0, "ok", "", (1, 2), 1.0), Run("b", 1, "ok", "", (4, 5), 1.0),
            Run("b", 2, "failed", "x", (0, 1), math.nan)]
    exp = Experiment("ppl", "minimize", 6, runs)
    f = stats.removal_frequency(exp)
    assert np.allclose(f, [[0, 1, 0.5, 0.5, 0, 0], [0, 0.5, 0.5, 0, 0.5, 0.5]])
    j = stats.jaccard_matrix(exp)
    # a-a: {1,2} vs {1,3} = 1/3; b-b: {1,2} vs {4,5} = 0
    # a-b: ({1,2},{1,2}) 1, ({1,2},{4,5}) 0, ({1,3},{1,2}) 1/3, ({1,3},{4,5}) 0 -> 1/3
    assert np.allclose(j, [[1 / 3, 1 / 3], [1 / 3, 0.0]])


# --- study -----------------------------------------------------------------------------------------------
def _study(masks_by_objective: dict[str, dict[str, list[tuple[int, ...]]]]) -> dict[str, Experiment]:
    return {o: Experiment(o, "minimize", 8, [Run(a, s, "ok", "", m, 1.0) for a, ms in per.items()
                                             for s, m in enumerate(ms)])
            for o, per in masks_by_objective.items()}


def test_objective_vs_searcher_overlap_and_verdict():
    # every searcher agrees within an objective; the objectives pick disjoint blocks
    exps = _study({"ppl": {"g": [(1, 2), (1, 2), (1, 3), (1, 2), (1, 2)], "r": [(1, 2)] * 5},
                   "kl": {"g": [(5, 6)] * 5, "r": [(5, 6), (5, 7), (5, 6), (5, 6), (5, 6)]}})
    f = study_finding(exps, n_boot=300)
    ov = f.overlap
    assert ov.across_objectives == 0.0
    # ppl g-r: 20 pairs of 1, 5 of 1/3 -> 0.8+1/15; kl: likewise
    assert ov.across_searchers == pytest.approx((20 + 5 / 3) / 25)
    assert ov.diff_low > 0 and ov.objective_matters_more is True
    assert f.converged and "objective matters more" in f.text and "0.87" in f.text
    # the same masks everywhere: no difference, and the verdict says so instead of picking a side
    same = _study({"ppl": {"g": [(1, 2), (3, 4)] * 3, "r": [(1, 2), (3, 4)] * 3},
                   "kl": {"g": [(1, 2), (3, 4)] * 3, "r": [(1, 2), (3, 4)] * 3}})
    f2 = study_finding(same, n_boot=300)
    assert f2.overlap.across_objectives == f2.overlap.across_searchers == 0.5
    assert f2.overlap.objective_matters_more is None and "neither" in f2.text


def test_rank_correlations_match_scipy_with_directions():
    rng = np.random.default_rng(1)
    ppl = rng.uniform(10, 50, 30)
    kl = ppl * 0.02 + rng.normal(0, 0.15, 30)
    acc = 0.6 - ppl / 200 + rng.normal(0, 0.05, 30)  # higher is better: should agree with ppl
    rm = RankMatrix(["ppl", "kl", "acc"], ["minimize", "minimize", "maximize"], np.column_stack([ppl, kl, acc]))
    corr = {(c.a, c.b): c for c in rank_correlations(rm)}
    s = sps.spearmanr(ppl, kl)
    assert corr[("ppl", "kl")].spearman == pytest.approx(s.statistic)
    assert corr[("ppl", "kl")].spearman_p == pytest.approx(s.pvalue)
    k = sps.kendalltau(ppl, -acc)
    assert corr[("ppl", "acc")].kendall == pytest.approx(k.statistic) and k.statistic > 0
    assert corr[("ppl", "acc")].kendall_p == pytest.approx(k.pvalue)
    assert corr[("ppl", "acc")].n == 30


def test_sampled_scores_within_noise():
    assert stats.indistinguishable(Score(0.40, 0.02), Score(0.43, 0.02)) is True
    assert stats.indistinguishable(Score(0.40, 0.01), Score(0.45, 0.01)) is False
    assert stats.indistinguishable(Score(0.40), Score(0.45, 0.01)) is None


# --- files -------------------------------------------------------------------------------------------------
def test_compare_report_files(synthetic, tmp_path):
    exp, _ = synthetic
    out = build_compare_report(exp, tmp_path / "rep", heldout={"good": {"ppl": (20.0, 0.3), "acc": 0.4},
                                                               "poor": {"ppl": (25.0, 0.3), "acc": 0.38}},
                               grid_cost={"evaluations counted": 40, "distinct masks scored": 28})
    d = tmp_path / "rep"
    figures = ["gap_evaluations", "runtime_ecdf", "win_rate", "blocks", "jaccard"]  # one fidelity: no tokens axis
    for name in figures:
        assert (d / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert b"<svg" in (d / f"{name}.svg").read_bytes()[:500]
    page = (d / "index.html").read_text()
    assert len(re.findall(r"src='data:image/png;base64,[A-Za-z0-9+/=]{200,}'", page)) == len(figures)
    assert not re.search(r"(src|href)=['\"](?!data:)", page)  # no external asset
    md = (d / "report.md").read_text()
    assert "FAILED" in md and "boom" in md and "distinct masks scored: 28" in md
    assert "ppl: good 20 to poor 25, beyond 1.96 standard errors" in md
    assert not (d / "gap_tokens.png").exists()
    assert "ERT to optimum (reached/runs)" in md and "within 1% of optimum" in md
    assert "too few runs to test (min p = 0.1)" in md  # 3 against 3 runs cannot reach 0.05
    for name in figures:
        assert f"({name}.png)" in md
    with open(d / "evaluations.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == sum(len(r.trace) for r in exp.runs)
    first = [r for r in rows if r["algo"] == "good" and r["seed"] == "0"]
    assert [float(r["value"]) for r in first] == [e.value for e in exp.runs[0].trace]
    assert float(first[-1]["best_so_far"]) == pytest.approx(exp.runs[0].value)
    assert out["rows"][0].algo == "good"
    with pytest.raises(UserError, match="not empty"):
        build_compare_report(exp, d)
    build_compare_report(exp, d, overwrite=True)


def test_study_report_files(tmp_path):
    exps = _study({"ppl": {"g": [(1, 2), (1, 3)], "r": [(1, 2), (2, 3)]},
                   "kl": {"g": [(5, 6), (5, 7)], "r": [(5, 6), (4, 6)]}})
    for e in exps.values():
        for r in e.runs:
            r.trace = [Evaluation(1, 5.0, 3.0, True, r.removed), Evaluation(2, 5.0, 1.0, True, r.removed)]
    rm = RankMatrix(["ppl", "kl"], ["minimize", "minimize"], np.array([[1.0, 2.0], [2.0, 1.0], [3.0, 3.5], [4, 5]]))
    out = build_study_report(exps, tmp_path / "s", rank_matrix=rm, n_boot=100)
    page = (tmp_path / "s" / "index.html").read_text()
    assert out["headline"] in page.replace("&#x27;", "'")
    # two runs per cell: converged (every run at the best value) but too few seeds for an interval
    assert out["headline"].startswith("No finding: the runs converged") and "fewest runs in a cell: 2" in page
    assert (tmp_path / "s" / "agreement_ppl_kl.png").exists() and (tmp_path / "s" / "kl_blocks.svg").exists()
    assert page.count("data:image/png;base64,") == 1 + 2 * 5


def test_report_dir_that_is_a_file(tmp_path):
    f = tmp_path / "x"
    f.write_text("")
    with pytest.raises(UserError, match="is a file"):
        prepare_dir(f)


@pytest.mark.skipif(not __import__("shutil").which("chromium"), reason="Debian's chromium is not installed")
def test_html_shows_its_plots_in_headless_chromium(synthetic, tmp_path):
    """The page alone (copied away from its PNG files) renders the anytime plot in Chromium."""
    from PIL import Image

    from dpopt.experiments.report import screenshot

    exp, _ = synthetic
    build_compare_report(exp, tmp_path / "rep")
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "index.html").write_text((tmp_path / "rep" / "index.html").read_text())
    img = np.asarray(Image.open(screenshot(alone / "index.html", tmp_path / "shot.png", 1000, 1400)).convert("RGB"))
    # the first plot's coloured curves and band: many saturated pixels below the table
    sat = (img.max(axis=2).astype(int) - img.min(axis=2)) > 80
    assert sat[500:].sum() > 2000, sat.sum()
