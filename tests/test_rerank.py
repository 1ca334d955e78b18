"""Re-ranking after repair: the candidates are each objective's best masks, the repair is applied
to each before it is re-scored, and the report says whether the best mask changed and whether
that change is beyond the noise."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from torch import nn

from conftest import run_cli
from dpopt.experiments.rerank import RepairPlan, rerank, summarize, top_candidates
from dpopt.genome import LayerMask
from dpopt.models.tiny import save_tiny_checkpoint


pytestmark = pytest.mark.usefixtures("one_thread")


def test_candidates_are_each_objectives_best_merged():
    ppl = {(0,): 10.0, (1,): 12.0, (2,): 30.0, (3,): 11.0}
    kl = {(1,): 0.2, (2,): 0.1, (3,): 0.9, (0,): 0.5}
    acc = {(0,): 0.3, (1,): 0.2, (2,): 0.6, (3,): 0.55}  # higher is better
    c = top_candidates({"ppl": ppl, "kl": kl, "acc": acc}, {"ppl": "minimize", "kl": "minimize", "acc": "maximize"}, 2)
    by = {x.removed: x.picked_by for x in c}
    assert by == {(0,): {"ppl": 1}, (3,): {"ppl": 2, "acc": 2}, (2,): {"kl": 1, "acc": 1}, (1,): {"kl": 2}}
    assert [x.removed for x in c] == [(0,), (3,), (2,), (1,)]  # by ppl's rank, then kl's
    assert c[1].calibration == {"ppl": 11.0, "kl": 0.9, "acc": 0.55}


def _items(means, n=40, noise=0.01, seed=0):
    rng = np.random.default_rng(seed)
    return [m + noise * rng.standard_normal(n) for m in means]


def test_summary_says_when_the_best_changes_and_whether_beyond_the_noise():
    before = _items([1.0, 2.0, 3.0])
    after = _items([3.0, 2.0, 1.0], seed=1)
    s = summarize("kl", before, after)
    assert (s.best_before, s.best_after) == (0, 2) and s.best_changed
    assert s.correlation.spearman == pytest.approx(-1.0) and s.correlation.kendall == pytest.approx(-1.0)
    d = after[2] - after[0]  # what the best-after mask gains over the best-before one, paired
    assert s.best_difference.value == pytest.approx(float(np.mean(d)))
    half = 2.2414 * float(np.std(d, ddof=1)) / math.sqrt(len(d))  # z of 1 - 0.05 / (2 x 2): picked of 3
    assert s.best_difference.high - s.best_difference.value == pytest.approx(half, rel=1e-3)
    assert s.gain[1].value == pytest.approx(float(np.mean(after[1] - before[1])))
    assert "beyond the noise" in s.verdict(["a", "b", "c"])
    # the same order with items so noisy that the two best masks cannot be told apart
    z = np.random.default_rng(2).standard_normal(40)
    a0 = after[2]
    noisy = summarize("kl", before, [a0, a0 + 2.0, a0 + (z - z.mean()) - 0.01])  # mask c better by 0.01 +- 0.3
    assert noisy.best_after == 2 and "inside the noise" in noisy.verdict(["a", "b", "c"])
    same = summarize("kl", before, _items([1.0, 2.0, 3.0], seed=3))
    assert not same.best_changed and same.best_difference is None and "before and after" in same.verdict("abc")
    # accuracy: higher is better
    acc = summarize("acc", [np.array([1.0, 0, 0, 0]), np.array([1.0, 1, 1, 0])], [np.array([1.0, 1, 1, 1])] * 2)
    assert acc.best_before == 1


class _Down(nn.Module):
    """The exactly-linear MLP of the patch tests, given a ``down_proj`` the patch captures at."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.down_proj = linear

    def forward(self, x):
        return self.down_proj(x)


def test_patch_repair_promotes_the_exactly_linear_span(text_file):
    """Block 1 is exactly linear: dropping it costs the most KL of any single block, patching it
    costs ~0, so after repair it is the best mask, and the report says so."""
    from test_patch import _linear_span_model

    lm = _linear_span_model()
    layers = lm.model.model.layers
    layers[1].mlp = _Down(layers[1].mlp)
    from dpopt.api import make_evaluator

    ev = make_evaluator(lm, "kl", data=str(text_file), tokens=128, seq_len=16)
    masks = [LayerMask.from_removed(4, [i]) for i in range(4)]
    calib = dict(zip([m.removed() for m in masks], ev.evaluate(masks)))
    cands = top_candidates({"kl": calib}, {"kl": "minimize"}, 4)
    res = rerank(lm, cands, RepairPlan("patch", patch_tokens=192), ["kl"], data=str(text_file), tokens=128,
                 seq_len=16, progress=False)
    kl = res.metrics[0]
    labels = [c.removed for c in res.candidates]
    one = labels.index((1,))
    assert kl.best_before != one and kl.before[one].value > 1e-3
    assert kl.best_after == one and abs(kl.after[one].value) < 1e-3 * kl.before[one].value
    assert kl.best_changed and "beyond the noise" in kl.verdict(res.labels())


@pytest.fixture(scope="module")
def tiny_ck(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "llama", "llama", n_blocks=5, seed=0)


def test_compare_with_heal_repairs_each_best_mask(tiny_ck, text_file, tmp_path, capsys):
    """Each of the top masks is distilled before it is re-scored: its held-out KL falls."""
    report = tmp_path / "rep"
    rc, out, err = run_cli(["compare", "--model", tiny_ck, "--device", "cpu", "--objective", "kl", "--algos", "random",
                            "--remove", 2, "--budget", 4, "--seeds", 1, "--tokens", 64, "--seq-len", 16,
                            "--data", text_file, "--heldout", "ppl,kl", "--storage", f"sqlite:///{tmp_path}/s.db",
                            "--repair", "heal", "--repair-top", 3, "--repair-tokens", 512, "--report", report,
                            "--no-progress"], capsys)
    assert rc == 0, err
    rep = json.loads((report / "repair.json").read_text())
    assert len(rep["candidates"]) == 3  # brute force recorded all 10 masks; the 3 best by KL
    assert [c["picked_by"] for c in rep["candidates"]] == [{"kl": 1}, {"kl": 2}, {"kl": 3}]
    kl = next(m for m in rep["metrics"] if m["name"] == "kl")
    for before, after, gain in zip(kl["before"], kl["after"], kl["gain"]):
        assert after["value"] < before["value"] and gain["high"] < 0
    assert all(c["tokens_per_second"] > 0 for c in rep["candidates"])
    md = (report / "report.md").read_text()
    assert "After repair" in md and "Kendall" in md and "repair_heal_kl.png" in md
    assert "re-ranked 3 masks after repair" in out


def test_study_with_patch_names_both_objectives_picks(tiny_ck, text_file, tmp_path):
    import dpopt

    lm = dpopt.load(str(tiny_ck), device="cpu")
    res = dpopt.study(lm, "ppl,kl", algos="random", remove=2, budget=3, seeds=1, report=tmp_path / "s",
                      storage=f"sqlite:///{tmp_path}/s.db", data=str(text_file), random_masks=0, progress=False,
                      tokens=64, seq_len=16, repair=RepairPlan("patch", top=2, patch_tokens=128))
    picks = [set(c.picked_by) for c in res.repair.candidates]
    assert {"ppl"} <= set().union(*picks) and {"kl"} <= set().union(*picks) and 2 <= len(picks) <= 4
    assert [m.name for m in res.repair.metrics] == ["ppl", "kl"]
    assert all(math.isfinite(i.value) for m in res.repair.metrics for i in m.after)
    assert "After repair" in (tmp_path / "s" / "report.md").read_text()


@pytest.mark.parametrize("extra, needle", [
    (["--repair", "mend"], "unknown --repair 'mend'"),
    (["--repair", "patch", "--repair-top", 0], "--repair-top must be"),
    (["--repair-top", 3], "--repair-top needs --repair"),
    (["--repair", "heal", "--repair-tokens", 0], "--repair-tokens must be"),
    (["--repair", "patch", "--objective", "ppl:0.5,kl:0.5", "--heldout", ""], "add one of them to --heldout"),
])
def test_repair_mistakes_are_one_line_before_the_model_loads(extra, needle, tmp_path, capsys):
    rc, _, err = run_cli(["compare", "--model", str(tmp_path / "no-such-model"), "--remove", 1,
                          "--report", tmp_path / "r", *extra], capsys)
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("dpopt: error")]
    assert rc == 2 and len(lines) == 1 and needle in lines[0], err
