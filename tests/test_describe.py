"""Reports describe themselves without a machine's paths; held-out values carry 95% intervals over
independent units (sequences, questions); an accuracy whose dense model is at chance is 'no signal'."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import norm

import dpopt
from dpopt.data import DEFAULT_DATA_SEED, MCData
from dpopt.evaluator import Evaluator
from dpopt.experiments.describe import describe, redact
from dpopt.experiments.heldout import heldout_score
from dpopt.experiments.intervals import DENSE_ROW, Estimate, accuracy_estimate, wilson
from dpopt.experiments.report import build_compare_report, build_study_report
from dpopt.experiments.stats import Evaluation, Experiment, Run
from dpopt.genome import Constraint, LayerMask
from dpopt.models.tiny import save_tiny_checkpoint
from dpopt.objectives import build_objective
from dpopt.objectives.acc import Accuracy
from dpopt.problem import problem_for

from conftest import make_questions, make_tiny_lm

TEXT = dict(tokens=128, seq_len=32, batch_size=2)  # 4 sequences, 2 per batch in the search


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "tiny-llama"
    save_tiny_checkpoint(path, "llama", 6, seed=0)
    return dpopt.load(str(path), device="cpu")  # its source is an absolute path under the tmp folder


@pytest.fixture(scope="module")
def compared(lm, text_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp")
    res = dpopt.compare(lm, "kl", algos="random", remove=2, budget=4, seeds=1, report=out / "rep",
                        storage=f"sqlite:///{out}/s.db", data=str(text_file), heldout=("ppl", "kl"),
                        brute_force=False, progress=False, **TEXT)
    return res, out


def _tiny_experiment() -> Experiment:
    trace = [Evaluation(1, 1.0, 3.0, True, (1, 2)), Evaluation(2, 1.0, 2.0, True, (1, 4))]
    runs = [Run("random", s, "ok", "", (1, 4), 2.0, 0.5, list(trace)) for s in range(2)]
    return Experiment("ppl", "minimize", 6, runs)


def _written(folder) -> str:
    return "\n".join(f.read_text(errors="replace") for f in folder.iterdir() if f.suffix in (".md", ".html", ".csv"))


# --- the header ------------------------------------------------------------------------------------------
def test_report_header_holds_the_settings_and_no_absolute_path(lm, text_file, tmp_path, tmp_path_factory):
    ev = problem_for(lm, "ppl", data=str(text_file), **TEXT).build(lm)
    storage = f"sqlite:///{tmp_path}/runs/s.db"
    about = describe(lm, ev, constraint=Constraint.build(lm.n_blocks, remove=2, protect="0"),
                     algos=["random", "genetic"], seeds=3, budget=40, algo_options={"genetic": {"population": 8}},
                     heldout=["ppl", "kl"], storage=storage, wall_seconds=12.34)
    assert about["model"] == "tiny-llama" and about["blocks"] == "6" and about["units"] == "6 blocks"
    assert about["removed (K)"] == "2, protected [0]"
    assert about["ppl: data"] == "calib.txt (calib split, data seed 0): 128 tokens in 4 sequences of 32"
    assert about["ppl: options"] == "tokens 128, seq-len 32, batch-size 2"
    assert about["ppl: fingerprint"] == ev.fingerprint.short
    ident = about["model identity"]
    assert len(ident.split()[0]) == 16 and lm.identity()["weights"] in ident
    assert about["searcher options"] == "genetic: population 8" and about["seeds"] == "3"
    assert about["budget"] == "40 evaluations per run" and about["wall time"] == "12.3 s"
    assert about["storage"] == "sqlite:///s.db" and about["dtype"] == "float32"
    assert f"torch {torch.__version__}" in about["versions"] and about["GPU"] == "none (CPU)"
    base = str(tmp_path_factory.getbasetemp())
    cost = {"storage": storage, "note": f"studies kept in {tmp_path}/runs"}
    build_compare_report(_tiny_experiment(), tmp_path / "c", grid_cost=cost, about=about)
    build_study_report({"ppl": _tiny_experiment(), "kl": _tiny_experiment()}, tmp_path / "s", grid_cost=cost,
                       about=about, n_boot=20)
    for folder in (tmp_path / "c", tmp_path / "s"):
        text = _written(folder)
        assert base not in text, [line for line in text.splitlines() if base in line][:3]
        md = (folder / "report.md").read_text()
        assert md.index("About this report") < md.index("Cost of the grid")
        for key in ("model identity", "ppl: data", "searcher options", "versions", "CPU", "wall time"):
            assert f"| {key} | {about[key]} |" in md
        assert "storage: sqlite:///s.db" in md


def test_compare_report_prints_no_absolute_path(compared, tmp_path_factory):
    res, out = compared
    assert str(out) in res.storage  # the storage lies under the tmp folder ...
    text = _written(out / "rep")
    assert "Cost of the grid" in text
    assert str(tmp_path_factory.getbasetemp()) not in text  # ... and the report never says where


def test_redact_storage_urls():
    assert redact("sqlite:////srv/x/runs/a.db", start="/srv/x") == "sqlite:///runs/a.db"
    assert redact("sqlite:////elsewhere/a.db", start="/srv/x") == "sqlite:///a.db"
    assert redact("sqlite:///a.db") == "sqlite:///a.db"
    assert redact("postgresql://me:secret@db.lan:5432/dpopt") == "postgresql://db.lan:5432/dpopt"
    assert redact("journal:/srv/x/j.log", start="/srv/y") == "journal:j.log"


# --- intervals ---------------------------------------------------------------------------------------------
def test_wilson_interval_is_the_score_test_inversion():
    """The Wilson bounds are the two proportions pi with (p - pi)^2 = z^2 pi (1 - pi) / n."""
    z = norm.ppf(0.975)
    for p, n in ((0.3, 50), (0.9, 20), (0.5, 7)):
        a = 1 + z * z / n
        roots = sorted(np.roots([a, -(2 * p + z * z / n), p * p]).real)
        assert wilson(p, n) == pytest.approx(tuple(roots), abs=1e-12)
    low, high = wilson(0.0, 25)
    assert low == pytest.approx(0.0, abs=1e-15) and high == pytest.approx(z * z / (25 + z * z))  # 0 of 25 still leaves room above 0


def test_heldout_ppl_interval_is_over_per_sequence_nlls(compared, lm, text_file):
    """The search batched 2 sequences; the held-out interval is still over the 4 sequences' mean NLLs,
    computed here with the model's own forward (and a copy without the removed blocks)."""
    res, _ = compared
    obj, data = build_objective("ppl", data=str(text_file), split="eval", seed=DEFAULT_DATA_SEED, **TEXT)
    obj.prepare(lm, data)
    ids = torch.cat([b.input_ids for b in obj.batches(None)])
    assert ids.shape == (4, 32)
    z = norm.ppf(0.975)
    best = res.grid.masks[("random", 0)]
    for row, removed in ((DENSE_ROW, ()), ("random", best.removed())):
        model = copy.deepcopy(lm.model)
        model.model.layers = torch.nn.ModuleList(b for i, b in enumerate(model.model.layers) if i not in removed)
        with torch.no_grad():
            logits = model(ids, use_cache=False).logits.float()
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none").double().mean(1).numpy()
        mean, se = nll.mean(), nll.std(ddof=1) / math.sqrt(len(nll))
        s = res.heldout[row]["ppl"]
        assert isinstance(s, Estimate) and s.n == 4 and s.per == "sequences"
        assert s.value == pytest.approx(math.exp(mean), rel=1e-5)
        assert (s.low, s.high) == pytest.approx((math.exp(mean - z * se), math.exp(mean + z * se)), rel=1e-5)
        assert s.se == pytest.approx(math.exp(mean) * se, rel=1e-5)
    kl = res.heldout[DENSE_ROW]["kl"]
    assert kl.n == 4 and kl.per == "sequences" and (kl.low, kl.high) == (0.0, 0.0)
    md = (_out_of(compared) / "report.md").read_text()
    dense = res.heldout[DENSE_ROW]["ppl"]
    assert f"{dense.value:.4g} [{dense.low:.4g}, {dense.high:.4g}]" in md
    assert "ppl: exp(mean NLL ± 1.96 se) over 4 sequences" in md


def _out_of(compared):
    return compared[1] / "rep"


# --- accuracy: chance level and signal ------------------------------------------------------------------------
def test_acc_objective_states_its_chance_level():
    qs = make_questions(12, seed=3)
    obj = Accuracy(questions=10)
    obj.prepare(make_tiny_lm("llama", 4), MCData("toy", qs))
    assert obj.chance == pytest.approx(np.mean([1 / len(q.choices) for q in qs[:10]]))


def test_dense_acc_at_chance_is_no_signal(tmp_path):
    """A random tiny model answers at chance: its acc is flagged; one well above chance is not."""
    lm = make_tiny_lm("llama", 4)
    obj = Accuracy(questions=40, batch_size=8)
    obj.prepare(lm, MCData("toy", make_questions(40, seed=1)))
    ev = Evaluator(lm, obj)
    dense = heldout_score(ev, LayerMask.dense(4))
    assert isinstance(dense, Estimate) and dense.n == 40 and dense.chance == obj.chance
    assert (dense.low, dense.high) == pytest.approx(wilson(dense.value, 40))
    assert dense.low <= obj.chance  # guessing: the interval holds the chance level
    about = describe(lm, ev)
    assert "no signal" in about["acc: accuracy signal"]

    chance = 0.25
    at_chance = {"random": {"acc": accuracy_estimate(0.24, 200, chance)},
                 DENSE_ROW: {"acc": accuracy_estimate(0.28, 200, chance)}}  # above chance, but not clearly
    above = {"random": {"acc": accuracy_estimate(0.40, 200, chance)},
             DENSE_ROW: {"acc": accuracy_estimate(0.45, 200, chance)}}
    for name, held, flagged in (("at", at_chance, True), ("above", above, False)):
        build_compare_report(_tiny_experiment(), tmp_path / name, heldout=held)
        md = (tmp_path / name / "report.md").read_text()
        d = held[DENSE_ROW]["acc"]
        assert f"{d.value:.4g} [{d.low:.4g}, {d.high:.4g}]" in md  # every acc figure with its interval
        assert "acc: 200 questions, chance level 0.25; dense model" in md
        assert ("| acc (no signal) |" in md) is flagged and ("no signal" in md) is flagged
        assert ("dense model " + f"{d.value:.4g} [{d.low:.4g}, {d.high:.4g}]: clearly above chance" in md) is not flagged
