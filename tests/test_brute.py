"""``brute``: the exact optimum, asked in prefix order so the evaluator shares the work; ``last``."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import dpopt
from dpopt.errors import UserError
from dpopt.genome import Constraint, LayerMask
from dpopt.models.tiny import save_tiny_checkpoint
from dpopt.optim import SEARCHERS


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("d") / "t.txt"
    path.write_text("\n\n".join(f"Sentence {i} about rivers, foxes and {i * 3} hills." for i in range(60)))
    return path


def test_brute_returns_the_true_optimum_for_less_model_work(tmp_path, text_file):
    ck = save_tiny_checkpoint(tmp_path / "ck", "llama", 7, seed=1)
    lm = dpopt.load(str(ck), device="cpu")
    ev = dpopt.make_evaluator(lm, "ppl", data=str(text_file), tokens=128, seq_len=32)
    res = dpopt.search(lm, ev, "brute", remove=3, budget=1000, algo_options={"batch_size": 4}, storage="none", progress=False)
    # every mask scored alone, one full forward each, with no sharing at all
    naive = dpopt.make_evaluator(lm, "ppl", data=str(text_file), tokens=128, seq_len=32, prefix_sharing=False)
    combos = list(itertools.combinations(range(7), 3))
    values = {c: naive.raw(LayerMask.from_removed(7, c)) for c in combos}
    best = min(values, key=values.get)
    assert res.evaluations == len(combos) == 35
    assert tuple(res.removed_layers) == best and res.fitness == pytest.approx(values[best], rel=1e-5)
    batches = len(ev.objective.batches(None))
    # brute's blocks run: each shared kept prefix once per batch, far below one forward per mask
    assert ev.block_calls < 0.6 * len(combos) * (7 - 3) * batches


def test_brute_asks_in_prefix_order_and_refuses_what_it_cannot_enumerate():
    c = Constraint(8, 3)
    s = SEARCHERS.get("brute")(c, batch_size=20)
    asked = []
    while not s.done:
        batch = s.ask()
        s.tell(batch, np.zeros(len(batch)))
        asked += batch
    assert len(asked) == len(set(asked)) == 56
    keys = [m.bits.tobytes() for m in asked]
    assert keys == sorted(keys)  # neighbours share their longest kept prefixes
    with pytest.raises(UserError, match="enumerates the space"):
        SEARCHERS.get("brute")(Constraint(60, 20))


@pytest.mark.parametrize("keep_final,protect,want", [(True, (), (6, 7, 8)), (False, (), (7, 8, 9)),
                                                     (True, (7,), (5, 6, 8))])
def test_last_removes_the_blocks_before_the_final_one(keep_final, protect, want):
    c = Constraint(10, 3, protect=protect)
    s = SEARCHERS.get("last")(c, keep_final=keep_final)
    assert s.ask()[0].removed() == want and s.one_shot and s.objective_blind
