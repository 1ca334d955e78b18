"""Integration on the real Gemma3-270m (sliding and full attention layers) from the zoo."""
from __future__ import annotations

import subprocess
import sys

import pytest

import dpopt

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lm():
    return dpopt.load("gemma3-270m", device="cpu")


def test_gemma3_perplexity_and_export(lm, tmp_path):
    assert lm.n_blocks == 18
    assert set(lm.model.config.layer_types) == {"sliding_attention", "full_attention"}
    ev = dpopt.make_evaluator(lm, "ppl", data="wikipedia", split="eval", tokens=256, seq_len=256, batch_size=1)
    dense = ev.dense_value()
    assert 5 < dense < 40, dense
    assert ev.raw(dpopt.mask_from_removed(lm, [17])) > 1.5 * dense
    removed = [3, 4, 11]  # two sliding and one full layer: layer_types must be renumbered
    out = dpopt.export(lm, removed, tmp_path / "g")
    expected = [t for i, t in enumerate(lm.model.config.layer_types) if i not in removed]
    code = (
        "import sys\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(out)!r}); t = AutoTokenizer.from_pretrained({str(out)!r})\n"
        "assert 'dpopt' not in sys.modules\n"
        f"assert m.config.num_hidden_layers == 15 and list(m.config.layer_types) == {expected!r}\n"
        "ids = t('The capital of France is', return_tensors='pt').input_ids\n"
        "g = m.generate(ids, max_new_tokens=6, do_sample=False)\n"
        "assert g.shape[1] > ids.shape[1]\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
