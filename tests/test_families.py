"""Every supported family: masked execution is exact, export reloads without dpopt and generates.

For each tiny model in ``TINY_CONFIGS``:

* all blocks kept, the masked forward equals the model's own dense logits;
* blocks removed, the masked forward equals the exported-and-reloaded checkpoint, which is
  loaded with plain ``AutoModelForCausalLM.from_pretrained``;
* the exported config is renumbered (``num_hidden_layers``, gemma3's ``layer_types``) and
  records the removed blocks;
* ``generate()`` with the KV cache on the reloaded model equals ``generate()`` under
  ``MaskedModel.applied(mask)`` (and the cache-free generation);
* export refuses a non-empty folder without ``force`` and an unwritable path, leaving both
  untouched.
"""
from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from dpopt.errors import UserError
from dpopt.genome import LayerMask
from dpopt.models.export import export_pruned
from dpopt.models.tiny import TINY_CONFIGS

FAMILIES = sorted(TINY_CONFIGS)
N_BLOCKS = 6
REMOVED = (1, 4)  # for gemma3 (s s f s s f) this keeps s f s f: layer_types must be renumbered
TOL = 1e-4


def _ids(batch: int = 2, length: int = 20, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, 122, (batch, length), generator=g)


def _tree(folder) -> dict[str, bytes]:
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            out[os.path.relpath(os.path.join(root, name), folder) + "/"] = b""
        for name in files:
            p = os.path.join(root, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, folder)] = f.read()
    return out


def _generate(model, ids: torch.Tensor, use_cache: bool = True) -> torch.Tensor:
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False,
                          use_cache=use_cache, pad_token_id=1)


@pytest.mark.parametrize("family", FAMILIES)
def test_dense_mask_equals_dense_logits(family, tiny_lm):
    lm = tiny_lm(family, N_BLOCKS)
    ids = _ids()
    with torch.no_grad():
        ref = lm.model(input_ids=ids, use_cache=False).logits
    prep = lm.masked.prepare(ids)
    got = lm.masked.forward_masked(LayerMask.dense(N_BLOCKS), prep)
    assert got.dtype == torch.float32
    assert (got - ref).abs().max().item() < TOL
    # the model's own forward under applied(dense) is the same model
    with lm.masked.applied(LayerMask.dense(N_BLOCKS)) as m, torch.no_grad():
        assert (m(input_ids=ids, use_cache=False).logits - ref).abs().max().item() < TOL


@pytest.mark.parametrize("family", FAMILIES)
def test_export_reload_matches_masked(family, tiny_lm, tmp_path):
    from transformers import AutoModelForCausalLM

    lm = tiny_lm(family, N_BLOCKS)
    mask = LayerMask.from_removed(N_BLOCKS, REMOVED)
    kept = list(mask.kept())
    orig_types = list(getattr(lm.model.config, "layer_types", None) or [])
    ids = _ids()
    prep = lm.masked.prepare(ids)
    masked_logits = lm.masked.forward_masked(mask, prep)

    out = export_pruned(lm.masked, lm.tokenizer, mask, tmp_path / "pruned", source=f"tiny-{family}")
    assert out == tmp_path / "pruned" and (out / "config.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name != "pruned"], "temporary folder left behind"

    # the live model is restored after export
    assert len(lm.masked.family.block_list(lm.model)) == N_BLOCKS
    assert lm.model.config.num_hidden_layers == N_BLOCKS
    assert not hasattr(lm.model.config, "dpopt_removed_layers")
    if orig_types:
        assert list(lm.model.config.layer_types) == orig_types

    cfg = json.loads((out / "config.json").read_text())
    assert cfg.get("num_hidden_layers", cfg.get("n_layer")) == len(kept)
    assert cfg["dpopt_removed_layers"] == list(REMOVED)
    assert cfg["dpopt_original_num_hidden_layers"] == N_BLOCKS
    if orig_types:
        assert cfg["layer_types"] == [orig_types[i] for i in kept]
    if family == "gemma3":
        assert cfg["layer_types"] == ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]

    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert reloaded.config.num_hidden_layers == len(kept)
    assert reloaded.config.dpopt_removed_layers == list(REMOVED)
    with torch.no_grad():
        re_logits = reloaded(input_ids=ids, use_cache=False).logits
    assert (re_logits - masked_logits).abs().max().item() < TOL
    # the model's own forward under applied(mask) agrees too
    with lm.masked.applied(mask) as m, torch.no_grad():
        assert (m(input_ids=ids, use_cache=False).logits - masked_logits).abs().max().item() < TOL

    # generate with the KV cache on the reloaded model == generate under applied(mask)
    prompt = _ids(batch=1, length=12, seed=2)
    with torch.no_grad():
        gen_reloaded = _generate(reloaded, prompt, use_cache=True)
        gen_reloaded_nocache = _generate(reloaded, prompt, use_cache=False)
        with lm.masked.applied(mask) as m:
            gen_applied = _generate(m, prompt, use_cache=True)
    assert gen_reloaded.shape[1] > prompt.shape[1]
    assert torch.equal(gen_reloaded, gen_applied)
    assert torch.equal(gen_reloaded, gen_reloaded_nocache)
    # and after applied() the full model is back
    with torch.no_grad():
        dense = lm.model(input_ids=ids, use_cache=False).logits
    assert (lm.masked.forward_masked(LayerMask.dense(N_BLOCKS), prep) - dense).abs().max() < TOL


@pytest.mark.parametrize("family", FAMILIES)
def test_export_refuses_non_empty_dir(family, tiny_lm, tmp_path):
    lm = tiny_lm(family, N_BLOCKS)
    mask = LayerMask.from_removed(N_BLOCKS, REMOVED)
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    (out / "sub").mkdir()
    (out / "sub" / "x.bin").write_bytes(b"\x00\x01")
    before = _tree(tmp_path)
    with pytest.raises(UserError, match="not empty"):
        export_pruned(lm.masked, lm.tokenizer, mask, out)
    assert _tree(tmp_path) == before
    # with force it is replaced by the export
    export_pruned(lm.masked, lm.tokenizer, mask, out, force=True)
    assert (out / "config.json").exists() and not (out / "keep.txt").exists()


@pytest.mark.parametrize("mode", [0o644, 0o755])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_export_unwritable_path(family, mode, tiny_lm, tmp_path):
    """A path below a regular file cannot be created, even by root; nothing may be left behind."""
    lm = tiny_lm(family, N_BLOCKS)
    mask = LayerMask.from_removed(N_BLOCKS, REMOVED)
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    os.chmod(blocker, mode)
    before = _tree(tmp_path)
    with pytest.raises(UserError):
        export_pruned(lm.masked, lm.tokenizer, mask, blocker / "sub" / "out")
    assert _tree(tmp_path) == before
    assert stat.S_IMODE(os.stat(blocker).st_mode) == mode
    # the model is untouched by the failed export
    assert len(lm.masked.family.block_list(lm.model)) == N_BLOCKS
    assert not hasattr(lm.model.config, "dpopt_removed_layers")


def test_export_unwritable_dir_non_root(tiny_lm, tmp_path):
    """A read-only parent folder: only meaningful when not running as root."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    lm = tiny_lm("llama", N_BLOCKS)
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    try:
        with pytest.raises(UserError, match="not writable"):
            export_pruned(lm.masked, lm.tokenizer, LayerMask.from_removed(N_BLOCKS, REMOVED), ro / "out")
        assert list(ro.iterdir()) == []
    finally:
        os.chmod(ro, 0o755)


def test_export_onto_a_file_raises(tiny_lm, tmp_path):
    lm = tiny_lm("llama", N_BLOCKS)
    f = tmp_path / "model.bin"
    f.write_bytes(b"data")
    with pytest.raises(UserError, match="not a directory"):
        export_pruned(lm.masked, lm.tokenizer, LayerMask.from_removed(N_BLOCKS, REMOVED), f)
    assert f.read_bytes() == b"data"
