"""The latency cost: the pruned model run in place must BE the exported model, and be put back.

Nothing here asserts a time (speed goals live in ``benchmarks/latency.py``). What is checked:

* inside ``pruned_view`` the model's own forward gives the masked model's logits, for block
  and sub-layer masks, on families with and without per-layer ``layer_types``;
* ``generate`` with the KV cache inside the view gives the tokens of the exported-and-reloaded
  checkpoint (a sliding-window family, prompt longer than the window);
* afterwards the model is exactly as before (blocks, ``layer_idx``, config, parameters,
  logits), also when the body raises;
* a measurement runs each kept block exactly once per forward and no removed one, on one
  torch thread on a CPU, restoring the thread count; the cost measures each mask once.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dpopt.costs import make_costs
from dpopt.errors import UserError
from dpopt.genome import LayerMask, UnitSpace
from dpopt.costs.latency import LatencyCost, Timing, measure, measure_checkpoint, pruned_view
from dpopt.models.export import export_pruned_units
from dpopt.models.units import plan_units

N_BLOCKS = 6
SMALL = dict(prompt_len=8, new_tokens=3, repeats=2, warmup=1)


def _random_mask(space: UnitSpace, seed: int) -> LayerMask:
    rng = np.random.default_rng(seed)
    while True:
        bits = rng.random(space.n_units) < 0.6
        if 0 < bits.sum() < space.n_units:
            return LayerMask(bits)


def _spaces(lm):
    out = [UnitSpace.blocks(N_BLOCKS)]
    if lm.masked.supports_sublayers:
        out.append(UnitSpace.sublayers(N_BLOCKS, lm.masked.sublayer_names()))
    return out


def _ids(n=12, seed=0):
    return torch.randint(2, 120, (1, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", ["llama", "gemma3", "qwen3", "gpt2", "opt"])
def test_view_logits_equal_masked_logits(tiny_lm, family):
    lm = tiny_lm(family, N_BLOCKS)
    ids = _ids()
    prepared = lm.masked.prepare(ids)
    for space in _spaces(lm):
        for seed in range(2):
            mask = _random_mask(space, seed)
            ref = lm.masked.forward_units(space.removed_names(mask), prepared)
            with pruned_view(lm, space, mask) as model, torch.no_grad():
                got = model(input_ids=ids, use_cache=False).logits
                kept = plan_units(lm.masked, space.removed_names(mask)).kept()
                assert len(lm.masked.family.block_list(model)) == len(kept) == model.config.num_hidden_layers
            assert torch.allclose(got, ref, atol=1e-4), (family, space.kind, mask)


def _generate(model, prompt, n=8):
    return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, use_cache=True, pad_token_id=1)


@pytest.mark.parametrize("family", ["gemma3", "llama"])
def test_generate_in_view_equals_exported_checkpoint(tiny_lm, tmp_path, family):
    from transformers import AutoModelForCausalLM

    lm = tiny_lm(family, N_BLOCKS)
    space = UnitSpace.sublayers(N_BLOCKS, lm.masked.sublayer_names())
    # block 1 whole (both sub-layers), attention of 3, MLP of 4: the cache must index 0..4
    mask = space.mask(["attn.1", "mlp.1", "attn.3", "mlp.4"])
    prompt = _ids(12)  # longer than gemma3's sliding window of 8
    out = export_pruned_units(lm.masked, lm.tokenizer, space.removed_names(mask), tmp_path / "x")
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert reloaded.config.num_hidden_layers == N_BLOCKS - 1
    with torch.no_grad():
        expected = _generate(reloaded, prompt)
        with pruned_view(lm, space, mask) as model:
            got = _generate(model, prompt)
    assert torch.equal(got, expected)


def _snapshot(lm):
    model = lm.model
    blocks = lm.masked.family.block_list(model)
    idx = []
    for b in blocks:
        for name, mod in b.named_modules():
            if isinstance(getattr(mod, "layer_idx", None), int):
                idx.append((name, mod.layer_idx))
    params = {n: (id(p), p.detach().clone()) for n, p in model.named_parameters()}
    with torch.no_grad():
        logits = model(input_ids=_ids(), use_cache=False).logits
    return [id(b) for b in blocks], id(blocks), idx, model.config.to_dict(), params, logits


def _assert_same(before, after):
    blocks_a, list_a, idx_a, cfg_a, params_a, logits_a = before
    blocks_b, list_b, idx_b, cfg_b, params_b, logits_b = after
    assert blocks_a == blocks_b and list_a == list_b
    assert idx_a == idx_b
    assert cfg_a == cfg_b
    assert params_a.keys() == params_b.keys()
    for name, (pid, value) in params_a.items():
        assert params_b[name][0] == pid, name  # the very same Parameter object is back
        assert torch.equal(params_b[name][1], value), name
    assert torch.equal(logits_a, logits_b)


def test_view_restores_everything_even_on_error(tiny_lm):
    lm = tiny_lm("gemma3", N_BLOCKS)
    space = UnitSpace.sublayers(N_BLOCKS, lm.masked.sublayer_names())
    mask = space.mask(["attn.0", "mlp.0", "mlp.2", "attn.5"])
    before = _snapshot(lm)
    with pruned_view(lm, space, mask) as model:
        assert model.config.num_hidden_layers == N_BLOCKS - 1
        assert model.config.layer_types != before[3]["layer_types"]
    _assert_same(before, _snapshot(lm))
    with pytest.raises(RuntimeError, match="boom"):
        with pruned_view(lm, space, mask):
            raise RuntimeError("boom")
    _assert_same(before, _snapshot(lm))
    LatencyCost(lm, space, **SMALL).values([mask])
    _assert_same(before, _snapshot(lm))
    lm.model.train()  # timed in eval mode (no dropout), handed back in the mode it came in
    with pruned_view(lm, space, mask) as model:
        assert not model.training
    assert lm.model.training


def _count_block_calls(lm):
    calls = [0] * N_BLOCKS
    threads = []

    def hook(i):
        def fn(module, args):
            calls[i] += 1
            threads.append(torch.get_num_threads())
        return fn

    handles = [b.register_forward_pre_hook(hook(i)) for i, b in enumerate(lm.masked.blocks)]
    return calls, threads, handles


def test_measurement_runs_kept_blocks_once_per_forward_on_one_thread(tiny_lm):
    lm = tiny_lm("llama", N_BLOCKS)
    space = UnitSpace.blocks(N_BLOCKS)
    mask = LayerMask.from_removed(N_BLOCKS, [1, 4])
    calls, threads, handles = _count_block_calls(lm)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with pruned_view(lm, space, mask) as model:
            timing = measure(model, **SMALL)
    finally:
        torch.set_num_threads(before)
        for h in handles:
            h.remove()
    # warm-up: prefill + 1 decode step; each timed run: prefill + new_tokens steps
    per_block = SMALL["warmup"] * 2 + SMALL["repeats"] * (1 + SMALL["new_tokens"])
    assert calls == [0 if i in (1, 4) else per_block for i in range(N_BLOCKS)]
    assert set(threads) == {1} and timing.threads == 1 and timing.clock == "cpu"
    assert isinstance(timing, Timing) and len(timing.runs) == SMALL["repeats"]
    assert timing.total_ms > 0 and timing.prefill_ms > 0 and timing.decode_ms > 0


def test_cost_measures_each_mask_once(tiny_lm):
    lm = tiny_lm("qwen3", N_BLOCKS)
    space = UnitSpace.blocks(N_BLOCKS)
    [cost] = make_costs(lm, space, "latency", **SMALL, max_params=3)  # options of other costs are not passed
    assert isinstance(cost, LatencyCost) and cost.prompt_len == SMALL["prompt_len"]
    calls, _, handles = _count_block_calls(lm)
    a, b = LayerMask.from_removed(N_BLOCKS, [0]), LayerMask.from_removed(N_BLOCKS, [2, 3])
    per_mask = SMALL["warmup"] * 2 + SMALL["repeats"] * (1 + SMALL["new_tokens"])
    try:
        va, vb, va2, vd = cost.values([a, b, a, LayerMask.dense(N_BLOCKS)])
        assert sum(calls) == per_mask * ((N_BLOCKS - 1) + (N_BLOCKS - 2))  # dense: measured on construction
        assert cost.n_computed == 2 and va == va2 and vd == cost.dense.total_ms
        again = cost.values([b, a])
        assert sum(calls) == per_mask * ((N_BLOCKS - 1) + (N_BLOCKS - 2))  # the cache answered
        assert again == [vb, va]
    finally:
        for h in handles:
            h.remove()
    assert cost.details(b)["new_tokens"] == SMALL["new_tokens"]
    settings = cost.settings()
    assert settings["device"] == "cpu" and settings["threads"] == 1 and settings["prompt_len"] == SMALL["prompt_len"]
    noise = cost.noise()
    assert noise["masks"] == 3 and noise["repeats"] == SMALL["repeats"] and noise["max"] >= noise["median"] >= 0


def test_measure_checkpoint_times_an_exported_folder(tiny_lm, tmp_path):
    lm = tiny_lm("gemma3", N_BLOCKS)
    out = export_pruned_units(lm.masked, lm.tokenizer, ["block.2", "attn.4"], tmp_path / "x")
    from transformers import AutoModelForCausalLM

    calls = []
    real = AutoModelForCausalLM.from_pretrained

    def counting(*args, **kwargs):
        model = real(*args, **kwargs)
        for b in model.model.layers:
            b.register_forward_pre_hook(lambda m, a: calls.append(1))
        return model

    AutoModelForCausalLM.from_pretrained = counting
    try:
        timing = measure_checkpoint(out, **SMALL)
    finally:
        AutoModelForCausalLM.from_pretrained = real
    assert len(calls) == (N_BLOCKS - 1) * (SMALL["warmup"] * 2 + SMALL["repeats"] * (1 + SMALL["new_tokens"]))
    assert timing.prompt_len == SMALL["prompt_len"] and timing.threads == 1
    with pytest.raises(UserError, match="not an exported checkpoint"):
        measure_checkpoint(tmp_path / "nowhere")


def test_bad_options_are_user_errors(tiny_lm):
    lm = tiny_lm("llama", N_BLOCKS)
    space = UnitSpace.blocks(N_BLOCKS)
    with pytest.raises(UserError, match="clock"):
        LatencyCost(lm, space, clock="sundial")
    with pytest.raises(UserError, match="threads"):
        LatencyCost(lm, space, threads=0)
    with pytest.raises(UserError, match="repeats"):
        LatencyCost(lm, space, repeats=0)
    with pytest.raises(UserError, match="every unit"):
        with pruned_view(lm, space, LayerMask(np.zeros(N_BLOCKS, dtype=bool))):
            pass
