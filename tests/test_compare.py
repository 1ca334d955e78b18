"""dpopt compare / study: the report's numbers are the studies' numbers, the shared memo costs
the union of distinct evaluations, a broken searcher fails alone, bad input exits 2 first."""
from __future__ import annotations

import csv
import itertools
import math
import sys
import textwrap

import numpy as np
import optuna
import pytest

import dpopt
from dpopt.fitness import to_minimize
from dpopt.cli import main
from dpopt.experiments.compare import run_grid
from dpopt.fitness import FunctionEvaluator
from dpopt.genome import Constraint
from dpopt.models.tiny import save_tiny_checkpoint
from dpopt.experiments.report import build_compare_report

IDENTITY = (2, 5)


@pytest.fixture(scope="module")
def tiny_ck(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "tiny-llama"
    save_tiny_checkpoint(path, "llama", 8, seed=0, identity_blocks=IDENTITY)
    return path


@pytest.fixture(scope="module")
def lm(tiny_ck):
    return dpopt.load(str(tiny_ck), device="cpu")


def _trials(storage, name):
    return optuna.load_study(study_name=name, storage=storage).trials


def test_compare_report_numbers_are_the_studies(lm, text_file, tmp_path):
    """Final values = each study's best valid trial; the reference is the brute-force optimum
    (the identity blocks, KL 0); the gap per searcher is the mean of its runs' distances to it."""
    db = f"sqlite:///{tmp_path}/s.db"
    res = dpopt.compare(lm, "kl", algos="random,genetic", remove=2, budget=5, seeds=2, report=tmp_path / "rep",
                        storage=db, data=str(text_file), heldout=("ppl",), brute_force=True, progress=False,
                        tokens=64, seq_len=32, batch_size=1)
    exp = res.experiment
    ref = res.report["reference"]
    assert ref.exact and ref.removed == IDENTITY and ref.value == pytest.approx(0.0, abs=1e-9)
    for run in exp.runs:
        assert run.ok
        trials = _trials(db, res.grid.studies[(run.algo, run.seed)])
        valid = [t for t in trials if t.state.name == "COMPLETE" and t.user_attrs["n_removed"] == 2]
        best = min(valid, key=lambda t: t.value)
        assert run.value == pytest.approx(best.value)
        assert run.removed == tuple(i for i in range(8) if not best.params[f"keep_{i:02d}"])
        assert [e.value for e in run.trace if e.valid] == pytest.approx(
            [t.value for t in sorted(trials, key=lambda t: t.number) if t.user_attrs["n_removed"] == 2])
    for row in res.report["rows"]:
        mine = [r.value for r in exp.runs if r.algo == row.algo]
        assert row.gap_mean == pytest.approx(np.mean(mine) - 0.0, abs=1e-12)
        assert row.best == pytest.approx(min(mine))
    with open(tmp_path / "rep" / "evaluations.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == sum(len(r.trace) for r in exp.runs)
    held = res.heldout
    assert set(held) == {"random", "genetic", "optimum (brute force)", "dense (no removal)"}
    assert all(s.se is not None and s.se >= 0 for row in held.values() for s in row.values())
    html = (tmp_path / "rep" / "index.html").read_text()
    assert "brute-force optimum" in html and "data:image/png;base64," in html


def test_shared_memo_costs_the_union(tmp_path):
    """Two searchers on one evaluator: model work = the union of distinct evaluations, while
    each study holds every evaluation its own run asked for."""
    weights = np.random.default_rng(0).normal(size=10)
    ev = FunctionEvaluator(lambda m: float(weights[list(m.removed())].sum()))
    db = f"sqlite:///{tmp_path}/grid.db"
    c = Constraint(10, 2)  # 45 masks: two budgets of 30 must overlap
    grid = run_grid(ev, c, ["random", "genetic"], 1, 30, db, "syn", "syn", brute_force=False, progress=False)
    computed, asked = set(), {}
    for (algo, seed), name in grid.studies.items():
        trials = _trials(db, name)
        keys = [tuple(sorted(t.params.items())) for t in trials]
        asked[algo] = set(keys)
        assert len(keys) == len(set(keys)) == 30  # every mask the run asked, once
        computed |= {k for t, k in zip(trials, keys) if t.user_attrs["computed"]}
    union = asked["random"] | asked["genetic"]
    assert ev.n_scored == grid.masks_computed == len(computed) == len(union)
    assert grid.evaluations == 60 and len(union) < 60  # the second searcher reused the first's values


def test_failing_searcher_is_marked_failed_and_the_rest_complete(tmp_path, monkeypatch):
    pkg = tmp_path / "userpkg"
    pkg.mkdir()
    (pkg / "broken.py").write_text(textwrap.dedent("""
        from dpopt.optim import SearcherBase

        class Broken(SearcherBase):
            name = "broken"
            def ask(self):
                raise RuntimeError("my searcher is broken")
            def tell(self, masks, fitness):
                pass
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("userpkg.broken", None)
    ev = FunctionEvaluator(lambda m: float(sum(m.removed())))
    grid = run_grid(ev, Constraint(8, 2), ["random", "userpkg.broken:Broken"], 2, 12, f"sqlite:///{tmp_path}/f.db",
                    "f", "syn", progress=False)
    status = {(r.algo, r.seed): r for r in grid.experiment.runs}
    assert all(status[("random", s)].ok for s in range(2))
    assert all(not status[("userpkg.broken:Broken", s)].ok for s in range(2))
    assert "my searcher is broken" in status[("userpkg.broken:Broken", 0)].error
    nums = build_compare_report(grid.experiment, tmp_path / "rep", grid_cost=grid.cost())
    assert "FAILED" in (tmp_path / "rep" / "report.md").read_text()
    assert {r.algo: r.n_failed for r in nums["rows"]} == {"random": 0, "userpkg.broken:Broken": 2}


def _cli(args, capsys):
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("case,needle", [("report", "not empty"), ("algo", "choose one of"), ("seeds", "--seeds")])
def test_bad_input_exits_2_before_the_model_loads(case, needle, tmp_path, capsys):
    report = tmp_path / "rep"
    args = ["compare", "--model", tmp_path / "no-such-model", "--algos", "random,genetic", "--remove", 2,
            "--seeds", 2, "--report", report, "--storage", f"sqlite:///{tmp_path}/s.db"]
    if case == "report":
        report.mkdir()
        (report / "old.md").write_text("x")
    elif case == "algo":
        args[4] = "random,nosuchalgo,genetic"
    else:
        args[args.index("--seeds") + 1] = "0"
    rc, _, err = _cli(args, capsys)
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("dpopt: error")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert needle in lines[0], lines[0]
    if case == "algo":
        assert "nosuchalgo" in lines[0] and "genetic" in lines[0]


def test_cli_compare_then_study_on_a_tiny_model(tiny_ck, text_file, tmp_path, capsys):
    db = f"sqlite:///{tmp_path}/s.db"
    common = ["--model", tiny_ck, "--data", text_file, "--algos", "random,genetic", "--remove", 2, "--budget", 6,
              "--seeds", 2, "--tokens", 64, "--seq-len", 32, "--storage", db, "--no-progress"]
    rc, out, err = _cli(["compare", "--objective", "kl", "--heldout", "kl", "--report", tmp_path / "c"] + common, capsys)
    assert rc == 0, err
    assert "4 runs (0 failed)" in out and (tmp_path / "c" / "index.html").exists()
    rc, out, err = _cli(["study", "--objectives", "ppl,kl", "--random-masks", 3, "--report", tmp_path / "s"] + common
                        + ["--seeds", 1], capsys)
    assert rc == 0, err
    assert "Spearman" in out
    md = (tmp_path / "s" / "report.md").read_text()
    assert "Objective vs searcher" in md and "random @ kl" in md


def test_study_rank_matrix_holds_the_final_masks_and_their_values(lm, text_file, tmp_path):
    res = dpopt.study(lm, "ppl,kl", algos="random,genetic", remove=2, budget=6, seeds=2, report=tmp_path / "s",
                      storage=f"sqlite:///{tmp_path}/s.db", data=str(text_file), random_masks=4, progress=False,
                      tokens=64, seq_len=32, n_boot=50)
    rm = res.rank_matrix
    finals = {}
    for name, g in res.grids.items():
        for run in g.experiment.runs:
            finals.setdefault(run.removed, {})[name] = run.value
    # the space (15 masks) fits the reference budget: brute force ran first, so the rank
    # correlations cover every valid mask, and the searchers after it computed nothing
    every = set(itertools.combinations(range(lm.n_blocks), 2))
    assert set(rm.masks) == every and len(rm.masks) == len(every)
    for name, g in res.grids.items():
        assert g.experiment.reference.exact and g.reference_cost >= len(every) and g.masks_computed == 0
        best = min(range(len(rm.masks)), key=lambda i: rm.values[i, rm.objectives.index(name)])
        assert g.experiment.reference.removed == rm.masks[best]
    for removed, vals in finals.items():
        row = rm.masks.index(removed)
        for name, v in vals.items():
            assert rm.values[row, rm.objectives.index(name)] == pytest.approx(v)
    corr = res.report["correlations"][0]
    from scipy.stats import spearmanr

    assert corr.spearman == pytest.approx(spearmanr(rm.values[:, 0], rm.values[:, 1]).statistic)
    assert set(res.heldout) >= {f"{a} @ {o}" for a in ("random", "genetic") for o in ("ppl", "kl")}
    assert math.isfinite(res.report["overlap"].across_objectives)
    # random is objective-blind: its overlaps are reported apart, and 2 seeds a cell allow no verdict
    assert res.report["overlap"].searchers == ("genetic",) and res.report["blind_overlap"].searchers == ("random",)
    assert res.report["headline"].startswith("No finding")


def test_without_brute_force_the_rank_matrix_holds_the_finals_and_random_masks(lm, text_file, tmp_path):
    res = dpopt.study(lm, "ppl,kl", algos="random,genetic", remove=2, budget=6, seeds=2, report=None,
                      storage=f"sqlite:///{tmp_path}/s.db", data=str(text_file), random_masks=4, progress=False,
                      tokens=64, seq_len=32, reference_budget=10)
    rm = res.rank_matrix
    finals = {run.removed for g in res.grids.values() for run in g.experiment.runs}
    assert set(finals) <= set(rm.masks)
    for g in res.grids.values():  # a long reference run of 10 evaluations: best known, not proven
        assert not g.experiment.reference.exact and "best known" in g.reference_note
        assert g.reference_run is not None and len(g.reference_run.trace) == 10
        runs_best = min(float(to_minimize(r.value, g.experiment.direction)) for r in g.experiment.runs)
        assert float(to_minimize(g.experiment.reference.value, g.experiment.direction)) <= runs_best


def test_study_with_accuracy_end_to_end_states_chance_and_dense(lm, text_file, tmp_path):
    """``--objectives ppl,acc``: acc is searched like any objective (brute force included), and
    every acc figure of the report carries the dense value, the chance level and an interval;
    a random tiny model answers at chance, so its acc is flagged "no signal"."""
    import json

    from conftest import make_questions

    mc = tmp_path / "mc.jsonl"
    mc.write_text("\n".join(json.dumps({"question": q.context, "choices": q.choices, "gold": q.gold})
                            for q in make_questions(40, seed=3)))
    res = dpopt.study(lm, "ppl,acc", algos="random,genetic", remove=2, budget=6, seeds=2, report=tmp_path / "s",
                      storage=f"sqlite:///{tmp_path}/s.db", data=str(text_file), tasks=str(mc), progress=False,
                      tokens=64, seq_len=32, questions=16, n_boot=50)
    acc = res.grids["acc"]
    assert acc.experiment.direction == "maximize" and acc.experiment.reference.exact
    assert len(res.rank_matrix.masks) == math.comb(lm.n_blocks, 2)  # every mask, scored under both objectives
    md = (tmp_path / "s" / "report.md").read_text()
    assert "chance" in md and "no signal" in md
    held = res.heldout["dense (no removal)"]["acc"]
    assert held.low <= held.value <= held.high and 0.25 <= held.chance <= 0.5  # 2 to 4 choices a question


def test_a_resumed_study_still_correlates_every_recorded_mask(lm, text_file, tmp_path):
    """The rerun answers every mask from the record, so nothing is in its evaluators' memo;
    the rank matrix must still hold the whole brute-forced space, with the recorded values."""
    kw = dict(algos="random", remove=2, budget=4, seeds=1, report=None, storage=f"sqlite:///{tmp_path}/s.db",
              data=str(text_file), random_masks=0, progress=False, tokens=64, seq_len=32, heldout=["ppl"])
    first = dpopt.study(lm, "ppl,kl", **kw)
    again = dpopt.study(lm, "ppl,kl", **kw)
    assert all(g.masks_computed == 0 and g.reference_cost == 0 for g in again.grids.values())  # all replayed
    assert len(again.rank_matrix.masks) == math.comb(lm.n_blocks, 2)
    row = {m: i for i, m in enumerate(first.rank_matrix.masks)}
    for i, m in enumerate(again.rank_matrix.masks):
        np.testing.assert_allclose(again.rank_matrix.values[i], first.rank_matrix.values[row[m]], rtol=1e-6)
