"""A search's start-up: the dense model runs once, in the objective's preparation, and the
time that took is reported beside the search's."""
from __future__ import annotations

import json

import numpy as np
import pytest

import dpopt
from dpopt.genome import LayerMask


def _mask(key: bytes) -> LayerMask:
    n = int.from_bytes(key[-4:], "little")
    return LayerMask(np.unpackbits(np.frombuffer(key[:-4], dtype=np.uint8))[:n].astype(bool))


def _count_block_runs(lm) -> dict:
    """Wrap ``lm.masked.run_block`` so every block computation, the preparation's too, is counted."""
    counter = {"n": 0}
    inner = lm.masked.run_block

    def counted(block, hidden, prepared, skip=frozenset()):
        counter["n"] += 1
        return inner(block, hidden, prepared, skip=skip)

    lm.masked.run_block = counted
    return counter


@pytest.mark.parametrize("objective", ["kl", "ppl"])
def test_a_search_runs_the_dense_model_once(tiny_lm, text_file, objective):
    """Every block run from preparation to the answer is either one of the dense pass's, or one
    of a scored non-dense mask's (each (mask, batch) is scored once and runs its kept blocks,
    without prefix sharing): what is left over is the number of dense passes."""
    lm = tiny_lm("llama", n_blocks=6)
    runs = _count_block_runs(lm)
    ev = dpopt.make_evaluator(lm, objective, data=str(text_file), tokens=256, seq_len=32, batch_size=2,
                              prefix_sharing=False)
    res = dpopt.search(lm, ev, "random", remove=2, budget=12, seed=0, storage="none", progress=False)
    dense = LayerMask.dense(ev.n_units).key()
    n_batches = len(ev.objective.batches(None))
    masks = {key: _mask(key) for key, _ in ev.partials}
    assert dense in masks and len(masks) > 1
    others = sum(len(masks[key].kept()) for key, _ in ev.partials if key != dense)
    dense_passes = (runs["n"] - others) / (lm.n_blocks * n_batches)
    assert dense_passes == 1
    assert res.dense_fitness == ev.dense_value()
    if objective == "kl":
        assert res.dense_fitness == 0.0


def test_the_dense_kl_costs_no_block_call(tiny_lm, text_file):
    lm = tiny_lm("llama", n_blocks=4)
    ev = dpopt.make_evaluator(lm, "kl", data=str(text_file), tokens=128, seq_len=32)
    assert ev.dense_value() == 0.0
    assert ev.block_calls == 0
    assert ev.n_scored == 1  # still an evaluation, recorded like any other


def test_same_answer_as_scoring_the_dense_model_again(tiny_lm, text_file):
    """The search's mask and value do not depend on where the dense reference came from: an
    evaluator whose objective keeps no dense partials scores the dense model itself."""
    answers = []
    for keep in (True, False):
        lm = tiny_lm("llama", n_blocks=6)
        ev = dpopt.make_evaluator(lm, "kl", data=str(text_file), tokens=256, seq_len=32)
        if not keep:
            ev.partials.clear()
        res = dpopt.search(lm, ev, "genetic", remove=2, budget=24, seed=0, storage="none", progress=False)
        answers.append((res.removed_layers, res.fitness, res.evaluations, res.dense_fitness))
    (mask_a, value_a, n_a, dense_a), (mask_b, value_b, n_b, dense_b) = answers
    assert (mask_a, value_a, n_a) == (mask_b, value_b, n_b)
    assert dense_a == 0.0 and abs(dense_b) < 1e-6  # the same forward, scored against itself


def test_result_records_the_preparation_time(tiny_lm, text_file, tmp_path, capsys):
    lm = tiny_lm("llama", n_blocks=4)
    ev = dpopt.make_evaluator(lm, "kl", data=str(text_file), tokens=128, seq_len=32)
    assert ev.prepare_seconds > 0
    out = tmp_path / "result.json"
    dpopt.search(lm, ev, "random", remove=1, budget=4, seed=0, storage="none", progress=True, output=str(out))
    doc = json.loads(out.read_text())
    assert doc["prepare_seconds"] == round(ev.prepare_seconds, 3) and "wall_seconds" in doc
    assert f"prepared in {ev.prepare_seconds:.1f} s" in capsys.readouterr().err
