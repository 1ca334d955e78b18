"""The study's statistics (dpopt.experiments.agreement): agreement among the good masks, and the
gate that keeps the objective-vs-searcher headline from claiming what the runs cannot show."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from dpopt.experiments import agreement as ag
from dpopt.experiments.report import build_study_report
from dpopt.experiments.stats import Experiment, RankMatrix, Reference, Run


# --- rankings ------------------------------------------------------------------------------------
def _reversed_top(n: int = 200, top: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """a ranks masks 0..n-1; b agrees outside a's top ``top`` and reverses the order inside it."""
    a = np.arange(n, dtype=float)
    b = a.copy()
    b[:top] = a[:top][::-1]
    return a, b


def test_spearman_among_the_top_masks_can_disagree_where_the_global_one_agrees():
    a, b = _reversed_top()
    rm = RankMatrix(["ppl", "acc"], ["minimize", "maximize"], np.column_stack([a, -b]),
                    [(i,) for i in range(len(a))])  # acc is maximised: -b ranks like b
    pa = ag.pair_agreement(rm, "ppl", "acc")
    by = {(t.by, t.fraction): t for t in pa.spearmans}
    overall = sps.spearmanr(a, b).statistic
    assert overall > 0.95 and by[("", 1.0)].spearman == pytest.approx(overall) and by[("", 1.0)].n == 200
    top = np.argsort(a)[:20]
    assert by[("ppl", 0.10)].n == 20
    assert by[("ppl", 0.10)].spearman == pytest.approx(sps.spearmanr(a[top], b[top]).statistic)
    assert by[("ppl", 0.10)].spearman == pytest.approx(-1.0)
    top_b = np.argsort(b)[:20]
    assert by[("acc", 0.10)].spearman == pytest.approx(sps.spearmanr(a[top_b], b[top_b]).statistic)
    # 1% of 200 is 2 masks: too few for a correlation, and it says why
    t = by[("ppl", 0.01)]
    assert t.n == 2 and math.isnan(t.spearman) and "needs 5" in t.reason


def test_rank_of_each_best_under_the_other():
    rng = np.random.default_rng(3)
    a = rng.normal(size=300)
    b = a + rng.normal(scale=0.8, size=300)
    rm = RankMatrix(["kl", "acc"], ["minimize", "maximize"], np.column_stack([a, -b]), [(i,) for i in range(300)])
    pa = ag.pair_agreement(rm, "kl", "acc")
    ia, ib = int(np.argmin(a)), int(np.argmin(b))
    assert pa.best_a == (ia,) and pa.best_b == (ib,)
    assert pa.rank_of_best_a_under_b == sps.rankdata(b, method="min")[ia] > 1
    assert pa.rank_of_best_b_under_a == sps.rankdata(a, method="min")[ib] > 1
    same = ag.pair_agreement(RankMatrix(["x", "y"], ["minimize", "minimize"], np.column_stack([a, 2 * a])), "x", "y")
    assert same.rank_of_best_a_under_b == same.rank_of_best_b_under_a == 1


def test_top_k_overlap():
    rng = np.random.default_rng(5)
    a = rng.normal(size=250)
    b = 0.5 * a + rng.normal(size=250)
    rm = RankMatrix(["ppl", "kl"], ["minimize", "minimize"], np.column_stack([a, b]))
    pa = ag.pair_agreement(rm, "ppl", "kl")
    for frac, k in ((0.10, 25), (0.01, 3)):
        shared = len(set(np.argsort(a)[:k]) & set(np.argsort(b)[:k]))
        assert pa.top_overlap[frac] == (k, pytest.approx(shared / k))
    assert 0 < pa.top_overlap[0.10][1] < 1
    a2, b2 = _reversed_top()
    pa2 = ag.pair_agreement(RankMatrix(["p", "q"], ["minimize", "minimize"], np.column_stack([a2, b2])), "p", "q")
    assert pa2.top_overlap[0.10] == (20, 1.0) and pa2.top_overlap[0.01] == (2, 0.0)
    assert ag.top_k(5, 0.01) == 1 and ag.top_k(30, 0.1) == 3


def test_masks_not_scored_under_both_are_left_out():
    a, b = _reversed_top(60, 6)
    b[10] = np.nan
    pa = ag.pair_agreement(RankMatrix(["p", "q"], ["minimize", "minimize"], np.column_stack([a, b])), "p", "q")
    keep = np.isfinite(b)
    assert pa.n == 59 and pa.spearmans[0].spearman == pytest.approx(sps.spearmanr(a[keep], b[keep]).statistic)


# --- the gate -------------------------------------------------------------------------------------------
PPL = [(1, 2), (1, 2), (1, 2), (1, 3), (1, 2)]
KL = [(5, 6), (5, 6), (5, 7), (5, 6), (5, 6)]


def _grid(masks: dict[str, dict[str, list]], hits: int = 5, exact: bool = True,
          blind: frozenset = frozenset(), one_shot: frozenset = frozenset()) -> dict[str, Experiment]:
    """Every searcher's first ``hits`` seeds end at the reference value 1.0, the others at 1.5."""
    return {o: Experiment(o, "minimize", 8, [Run(a, s, "ok", "", m, 1.0 if s < hits else 1.5)
                                             for a, ms in per.items() for s, m in enumerate(ms)],
                          Reference(1.0, (1, 2), exact), blind, one_shot)
            for o, per in masks.items()}


def test_a_verdict_only_when_the_searchers_converged():
    masks = {"ppl": {"g": PPL, "h": PPL}, "kl": {"g": KL, "h": KL}}
    done = ag.study_finding(_grid(masks), n_boot=300)
    assert done.converged and done.overlap.objective_matters_more is True
    assert done.text.startswith("The objective matters more than the searcher")
    # the same masks, but only 3 of 5 seeds reached the reference: the overlaps are no finding
    stuck = ag.study_finding(_grid(masks, hits=3), n_boot=300, ert_budget=640)
    assert stuck.convergence["ppl"].share == pytest.approx(3 / 5) and not stuck.converged
    assert stuck.text.startswith("No finding: the searchers did not converge at this budget (12/20")
    assert "budget of about 640 evaluations" in stuck.text and "matters more" not in stuck.text
    assert "ERT" not in ag.study_finding(_grid(masks, hits=3), n_boot=10).text
    assert "best known, not proven" in ag.study_finding(_grid(masks, exact=False), n_boot=10).text


def test_convergence_counts_searching_objective_dependent_runs_only():
    exps = _grid({"ppl": {"g": PPL, "random": PPL, "single": PPL}}, hits=4,
                 blind=frozenset({"random"}), one_shot=frozenset({"single"}))
    exps["ppl"].runs += [Run("g", 9, "ok", "", (1, 2), 1.0099), Run("g", 10, "ok", "", (1, 2), 1.0101)]
    c = ag.convergence(exps["ppl"])
    assert (c.n_within, c.n_runs) == (4 + 1, 5 + 2)


def test_objective_blind_searchers_leave_the_overlap_unchanged():
    base = {"ppl": {"g": PPL, "h": [(1, 2), (2, 3), (1, 2), (1, 2), (1, 4)]},
            "kl": {"g": KL, "h": [(5, 6), (4, 6), (5, 6), (5, 6), (3, 6)]}}
    ov = ag.study_finding(_grid(base), n_boot=200).overlap
    # "random" draws the same masks under both objectives, "bi" always removes the last blocks
    rand = [(0, 3), (2, 4), (1, 6), (3, 7), (0, 5)]
    more = {o: dict(per, random=rand, bi=[(6, 7)] * 5) for o, per in base.items()}
    f = ag.study_finding(_grid(more, blind=frozenset({"random", "bi"})), n_boot=200)
    assert f.overlap.searchers == ("g", "h") and f.blind.searchers == ("random", "bi")
    for name in ("across_objectives", "across_searchers", "within_seeds", "diff_low", "diff_high"):
        assert getattr(f.overlap, name) == getattr(ov, name), name
    # apart, they agree across objectives as much as their own seeds agree: bi fully, random as its draws do
    rand_pairs = np.mean([len(set(x) & set(y)) / len(set(x) | set(y)) for x in rand for y in rand])
    assert f.blind.across_objectives == pytest.approx((1.0 + rand_pairs) / 2)
    # left in, they would have moved the overlap: the exclusion is what keeps it unchanged
    assert ag.objective_vs_searcher(_grid(more), n_boot=0).across_objectives > ov.across_objectives + 0.2
    # between seeds: g under ppl has 4 of (1,2) and one (1,3): 6 pairs of 1, 4 of 1/3
    assert f.seed_agreement[("ppl", "g")] == pytest.approx((6 + 4 / 3) / 10)


def test_fewer_than_five_runs_per_cell_gives_no_interval():
    four = {"ppl": {"g": PPL[:4], "h": PPL[:4]}, "kl": {"g": KL[:4], "h": KL[:4]}}
    f = ag.study_finding(_grid(four), n_boot=300)
    assert f.converged and f.overlap.min_runs == 4 and f.overlap.n_boot == 0
    assert math.isnan(f.overlap.diff_low) and "fewest runs in a cell: 4" in f.overlap.no_interval
    assert f.overlap.objective_matters_more is None and f.text.startswith("No finding: the runs converged")
    five = {"ppl": {"g": PPL, "h": PPL}, "kl": {"g": KL, "h": KL}}
    assert ag.study_finding(_grid(five), n_boot=300).overlap.n_boot == 300


# --- the report ---------------------------------------------------------------------------------------
def test_study_report_shows_agreement_and_the_gate(tmp_path):
    masks = {"ppl": {"g": PPL, "h": PPL, "random": PPL}, "kl": {"g": KL, "h": KL, "random": PPL}}
    a, b = _reversed_top(200, 20)
    rm = RankMatrix(["ppl", "kl"], ["minimize", "minimize"], np.column_stack([a + 5, np.exp(b / 20)]),
                    [(i,) for i in range(200)])
    out = build_study_report(_grid(masks, hits=2, blind=frozenset({"random"})), tmp_path / "s", rank_matrix=rm,
                             n_boot=50, ert_budget=900)
    md = (tmp_path / "s" / "report.md").read_text()
    assert out["headline"].startswith("No finding") and out["headline"] in md
    assert "ppl's top 10%" in md and "rank 20 of 200 under kl" in md and "top 1% overlap (k = 2)" in md
    assert "objective-blind (apart): random" in md and "between seeds (kl)" in md
    assert (tmp_path / "s" / "agreement_ppl_kl.svg").exists()
    assert out["agreements"][0].spearmans[1].spearman == pytest.approx(-1.0)
