"""One-shot baselines on a model whose identity blocks are the known answer."""
from __future__ import annotations

import pytest

import dpopt
from dpopt.models.tiny import save_tiny_checkpoint


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("d") / "t.txt"
    path.write_text("\n\n".join(f"Sentence {i} about rivers, foxes and {i * 3} hills." for i in range(60)))
    return path


@pytest.mark.parametrize("algo,identity", [("bi", (1, 6, 8)), ("angular", (4, 5, 6))])
def test_oneshot_finds_identity_blocks_with_one_evaluation(algo, identity, tmp_path, text_file):
    ck = save_tiny_checkpoint(tmp_path / "ck", "qwen3", 10, seed=3, identity_blocks=identity)
    lm = dpopt.load(str(ck), device="cpu")
    ev = dpopt.make_evaluator(lm, "kl", data=str(text_file), tokens=128, seq_len=32)
    stats = ev.block_stats()
    for i in identity:  # an identity block's output equals its input
        assert stats["cos"][i, i + 1] == pytest.approx(1.0, abs=1e-5)
    res = dpopt.search(lm, ev, algo, remove=3, budget=10, storage="none", progress=False)
    assert res.removed_layers == list(identity)
    assert res.evaluations == 1
    assert res.fitness == pytest.approx(0.0, abs=1e-8)


def test_angular_respects_protect(tmp_path, text_file):
    ck = save_tiny_checkpoint(tmp_path / "ck", "llama", 10, seed=3, identity_blocks=(4, 5, 6))
    lm = dpopt.load(str(ck), device="cpu")
    ev = dpopt.make_evaluator(lm, "kl", data=str(text_file), tokens=128, seq_len=32)
    res = dpopt.search(lm, ev, "angular", remove=3, protect="5", budget=10, storage="none", progress=False)
    assert 5 not in res.removed_layers and len(res.removed_layers) == 3
    spans = res.removed_layers
    assert spans == list(range(spans[0], spans[0] + 3))  # still one contiguous span
