"""The search loop itself: interruption keeps the best so far; user objectives plug in by path."""
from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

from dpopt.cli import main
from dpopt.fitness import FunctionEvaluator
from dpopt.genome import Constraint
from dpopt.models.tiny import save_tiny_checkpoint
from dpopt.optim import SEARCHERS, Budget, run_search


def test_interrupt_returns_best_so_far():
    calls = {"n": 0}
    scored: list[float] = []

    def fn(mask):
        calls["n"] += 1
        if calls["n"] > 20:
            raise KeyboardInterrupt
        scored.append(float(sum(mask.removed())))
        return scored[-1]

    searcher = SEARCHERS.get("random")(Constraint(10, 3), seed=0, batch_size=4)
    res = run_search(searcher, FunctionEvaluator(fn), Budget(100))
    assert res.extra == {"interrupted": True}
    assert len(res.best.removed()) == 3
    # the batch cut by the interrupt is not told; the best is the best of the batches before it
    assert res.fitness == sum(res.best.removed()) == min(scored[:20 - 20 % 4])



class SizeCost:
    name = "size"

    def values(self, masks):
        return [float(len(m.removed())) for m in masks]


class RacedRandom(SEARCHERS.get("random")):
    """Random search (multi-objective) whose batches are raced, the last stage at ``last``."""

    def __init__(self, constraint, seed=0, last=None):
        super().__init__(constraint, seed, batch_size=6)
        self.race_schedule = [(1, 3), (last, 2)]
        self.told = []

    def _tell(self, masks, fitness):
        self.told += list(masks)


@pytest.mark.parametrize("last", [None, 2])
def test_pareto_front_holds_only_masks_scored_in_full(last):
    """A raced stage's value is not final: only masks told at full fidelity enter the front."""

    class Batches(FunctionEvaluator):
        def fidelities(self):
            return [1, 2, 4]

    ev = Batches(lambda m: float(sum(m.removed())))
    ev.costs = [SizeCost()]
    searcher = RacedRandom(Constraint(8, 2, k_max=4), last=last)
    result = run_search(searcher, ev, Budget(evaluations=30))
    evaluated = [m for m, _ in result.extra["evaluated"]]
    assert evaluated == (list(dict.fromkeys(searcher.told)) if last is None else [])
    assert len(searcher.told) == 10 and all(m in evaluated for m, _ in result.extra["front"])

USER_OBJECTIVE = '''
import numpy as np

class MeanLogit:
    """A user's objective: the mean logit, through the Objective protocol."""
    name = "meanlogit"
    direction = "maximize"
    wants_data = True

    def __init__(self, **_):
        self.calls = 0

    def prepare(self, lm, data):
        from dpopt.objectives.base import text_stream_batches
        self._b = text_stream_batches(lm.tokenizer, data.documents, 64, 32, 2)

    def batches(self, fidelity=None):
        return self._b

    def score(self, logits, batch):
        return np.array([logits.float().mean().item(), 1.0])

    def finish(self, partials):
        s = np.sum(partials, axis=0)
        return s[0] / s[1]


class Interrupting(MeanLogit):
    name = "interrupting"
    count = 0

    def score(self, logits, batch):
        Interrupting.count += 1
        if Interrupting.count > 12:
            raise KeyboardInterrupt
        return super().score(logits, batch)
'''


@pytest.fixture()
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_objectives.py").write_text(textwrap.dedent(USER_OBJECTIVE))
    monkeypatch.syspath_prepend(str(tmp_path))
    ck = save_tiny_checkpoint(tmp_path / "ck", "gpt2", 8, seed=1)
    text = tmp_path / "t.txt"
    text.write_text("\n\n".join(f"line {i} of some calibration text for the user's objective" for i in range(40)))
    return ck, text


def test_user_objective_by_path(user_module, tmp_path, capsys):
    ck, text = user_module
    out = tmp_path / "r.json"
    rc = main(["search", "--model", str(ck), "--algo", "random", "--objective", "my_objectives:MeanLogit", "--data",
               str(text), "--remove", "2", "--budget", "6", "--storage", "none", "--output", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    assert res["objective"] == "meanlogit" and res["direction"] == "maximize"
    assert np.isfinite(res["fitness"])


def test_interrupted_search_writes_best_so_far_and_exits_130(user_module, tmp_path, capsys):
    ck, text = user_module
    out = tmp_path / "r.json"
    rc = main(["search", "--model", str(ck), "--algo", "random", "--objective", "my_objectives:Interrupting", "--data",
               str(text), "--remove", "2", "--budget", "50", "--option", "batch_size=2",
               "--storage", f"sqlite:///{tmp_path}/s.db", "--output", str(out), "--no-progress"])
    assert rc == 130
    res = json.loads(out.read_text())
    assert res["interrupted"] is True and len(res["removed_layers"]) == 2
    assert "resume" in capsys.readouterr().err


class _LogitSum:
    """A four-method user objective whose partials add over sequences."""
    name = "logitsum"
    direction = "minimize"

    def __init__(self, additive: bool):
        self.rows_additive = additive
        self.rows_seen: list[int] = []

    def prepare(self, lm, data):
        from dpopt.objectives.base import text_stream_batches
        self._b = text_stream_batches(lm.tokenizer, data.documents, 128, 32, 2)

    def batches(self, fidelity=None):
        return self._b

    def score(self, logits, batch):
        assert logits.shape[0] == batch.input_ids.shape[0]
        self.rows_seen.append(logits.shape[0])
        return np.array([logits.double().sum().item(), logits.numel()])

    def finish(self, partials):
        s = np.sum(partials, axis=0)
        return s[0] / s[1]


def test_user_objective_opts_in_to_the_head_a_few_sequences_at_a_time(tiny_lm, text_data):
    """Wrapped in UserObjective (no settings/report), ``rows_additive`` still reaches the evaluator."""
    from dpopt.evaluator import Evaluator
    from dpopt.genome import LayerMask
    from dpopt.objectives.base import UserObjective, check_objective

    lm = tiny_lm("llama", 4)
    masks = [LayerMask.from_removed(4, [i]) for i in range(4)]
    values, seen = {}, {}
    for additive in (True, False):
        obj = check_objective(_LogitSum(additive), "t:LogitSum")
        assert isinstance(obj, UserObjective)
        obj.prepare(lm, text_data)
        values[additive] = Evaluator(lm, obj, memory_mb=1e-3).evaluate(masks)
        seen[additive] = set(obj.inner.rows_seen)
    assert seen == {True: {1}, False: {2}}
    np.testing.assert_allclose(values[True], values[False], rtol=1e-6)
