"""Attention/MLP sub-layer units through the whole search: evaluator, searchers, record, result, export.

* The evaluator's prefix tree over sub-layer (and tied, and mixed) masks returns what a
  naive ``MaskedModel.forward_units`` per mask does (1e-5 relative), with prefix sharing on
  and off, for a pre-norm and a post-norm family; sharing really saves block calls.
* ``dpopt search --units sublayer`` on a tiny checkpoint whose attention of some blocks and
  MLP of others are zeroed finds exactly those units with greedy and genetic, writes
  ``removed_units`` and records trials per unit; exporting them (and a non-trivial mask
  given as ``attn.I,mlp.J,K``) reloads in plain transformers with the masked logits.
* ``--units sublayer`` on a family whose blocks cannot be split is one line, exit 2.
"""
from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import ToyTokenizer, make_tiny_lm, run_cli
from dpopt import api
from dpopt.errors import UserError
from dpopt.evaluator import Evaluator, LoadedModel
from dpopt.genome import Constraint, LayerMask, UnitSpace
from dpopt.models.masked import MaskedModel
from dpopt.objectives.kl import KLDivergence
from dpopt.objectives.ppl import Perplexity

N = 6
REL = 1e-5


def _postnorm_opt() -> LoadedModel:
    """OPT with norms after the residual add: a block without attention and MLP is not the identity."""
    from transformers import AutoModelForCausalLM

    from dpopt.models.tiny import tiny_config

    config = tiny_config("opt", N)
    config.do_layer_norm_before = False
    config.initializer_range = config.init_std = 0.1  # the default 0.02 leaves every mask at KL ~ 1e-8
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:  # norms and biases start at 1 and 0; make them matter
                p.add_(0.1 * torch.randn_like(p))
    return LoadedModel(model, ToyTokenizer(), MaskedModel(model), source="tiny-opt-postln")


@torch.no_grad()
def naive(lm, objective, space: UnitSpace, mask: LayerMask) -> float:
    parts = []
    for b in objective.batches(None):
        prep = lm.masked.prepare(b.input_ids, b.attention_mask, b.position_ids)
        parts.append(objective.score(lm.masked.forward_units(space.removed_names(mask), prep), b))
    return float(objective.finish(parts))


def _masks(space: UnitSpace, k: int, seed: int) -> list[LayerMask]:
    """Random masks, masks differing only in their last unit (shared prefixes), and one emptying a block."""
    rng = np.random.default_rng(seed)
    con = Constraint(space.n_units, k)
    masks = [con.random_mask(rng) for _ in range(6)]
    for m in masks[:3]:
        last = max(m.removed())
        if last + 1 < space.n_units:
            masks.append(m.with_kept(last).with_removed(last + 1))
    masks.append(LayerMask.from_removed(space.n_units, space.units_of_blocks([2])[:k]))
    return list(dict.fromkeys(masks))


@pytest.mark.parametrize("family", ["llama", "opt-postln"])
@pytest.mark.parametrize("kind", ["sublayer", "tied", "mixed"])
def test_evaluator_equals_forward_units(family, kind, text_data):
    lm = _postnorm_opt() if family == "opt-postln" else make_tiny_lm(family, N)
    kinds = lm.masked.sublayer_names()
    space = {"sublayer": UnitSpace.sublayers(N, kinds), "tied": UnitSpace.sublayers(N, kinds, tie=True),
             "mixed": UnitSpace.sublayers(N, kinds, whole=[1, 4])}[kind]
    obj = KLDivergence(tokens=128, seq_len=32, batch_size=2)
    obj.prepare(lm, text_data)
    masks = _masks(space, 3 if kind == "tied" else 4, seed=len(family) + len(kind))
    want = np.array([naive(lm, obj, space, m) for m in masks])
    assert np.ptp(want) > 1e-3  # the masks really differ
    calls = {}
    for sharing in (True, False):
        ev = Evaluator(lm, obj, prefix_sharing=sharing, units=space)
        got = ev.evaluate(masks[:5])  # cold, then a second call that reuses cached prefixes
        got = np.concatenate([got, ev.evaluate(masks[5:])])
        np.testing.assert_allclose(got, want, rtol=REL, atol=1e-7)
        calls[sharing] = ev.block_calls
    assert calls[True] < calls[False]


def test_tied_units_are_blocks_on_prenorm(text_data):
    lm = make_tiny_lm("llama", N)
    obj = Perplexity(tokens=64, seq_len=32, batch_size=2)
    obj.prepare(lm, text_data)
    tied = Evaluator(lm, obj, units=UnitSpace.sublayers(N, ("attn", "mlp"), tie=True))
    blocks = Evaluator(lm, obj)
    masks = [LayerMask.from_removed(N, r) for r in ([0, 3], [1, 2], [5, 4])]
    np.testing.assert_allclose(tied.evaluate(masks), blocks.evaluate(masks), rtol=1e-6)
    assert tied.units.names == blocks.units.names == tuple(f"block.{i}" for i in range(N))


# --- the CLI on a checkpoint with known removable sub-layers ---------------------------------------
ZERO_ATTN, ZERO_MLP = (1, 4), (2, 4)
FOUND = ["attn.1", "mlp.2", "block.4"]  # block 4 loses both: a pre-norm block that leaves whole


@pytest.fixture(scope="module")
def zeroed_ck(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from dpopt.models.tiny import save_tiny_checkpoint

    path = tmp_path_factory.mktemp("ck") / "tiny-llama-sub"
    save_tiny_checkpoint(path, "llama", N, seed=0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        for i in ZERO_ATTN:
            model.model.layers[i].self_attn.o_proj.weight.zero_()
        for i in ZERO_MLP:
            model.model.layers[i].mlp.down_proj.weight.zero_()
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "calib.txt"
    path.write_text("\n\n".join(f"Paragraph {i}: the quick brown fox {i} jumps over {i * 7} lazy dogs." for i in range(60)))
    return path




@pytest.mark.parametrize("algo,budget", [("greedy", 100), ("genetic", 300)])
def test_search_sublayer_finds_zeroed_units(algo, budget, zeroed_ck, text_file, tmp_path, capsys):
    import optuna

    out, db = tmp_path / "result.json", f"sqlite:///{tmp_path}/s.db"
    rc, stdout, err = run_cli(["search", "--model", zeroed_ck, "--algo", algo, "--objective", "kl", "--data", text_file,
                               "--units", "sublayer", "--remove", 4, "--budget", budget, "--tokens", 128,
                               "--seq-len", 32, "--seed", 0, "--storage", db, "--study", "s", "--output", out,
                               "--no-progress"], capsys)
    assert rc == 0, err
    res = json.loads(out.read_text())
    assert res["removed_units"] == FOUND
    assert res["removed_layers"] == [4] and res["kept_layers"] == [0, 1, 2, 3, 5]
    assert res["units"] == "sublayer" and res["remove"] == 4
    assert res["fitness"] == pytest.approx(0.0, abs=1e-9)
    assert "attn.1, mlp.2, block.4" in stdout and "--remove attn.1,mlp.2,4 " in stdout
    study = optuna.load_study(study_name="s", storage=db)
    assert study.user_attrs["units"][:3] == ["attn.0", "mlp.0", "attn.1"]
    assert study.user_attrs["settings"]["units"] == study.user_attrs["units"]
    best = min((t for t in study.trials if t.user_attrs.get("n_removed") == 4), key=lambda t: t.value)
    assert sorted(best.user_attrs["removed"]) == ["attn.1", "attn.4", "mlp.2", "mlp.4"]
    assert best.params["keep_attn.1"] == 0 and best.params["keep_attn.2"] == 1


def test_export_and_eval_by_unit_names(zeroed_ck, text_file, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    lm = api.load(str(zeroed_ck))
    ids = torch.randint(1, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    prep = lm.masked.prepare(ids)
    dense = lm.masked.forward_units([], prep)
    for remove, names in (("attn.1,mlp.2,attn.4,mlp.4", FOUND), ("attn.0,mlp.3,5,-1", ["attn.0", "mlp.3", "block.5"])):
        dest = tmp_path / remove.replace(",", "_")
        rc, stdout, err = run_cli(["export", "--model", zeroed_ck, "--remove", remove, "--out", dest], capsys)
        assert rc == 0, err
        cfg = json.loads((dest / "config.json").read_text())
        assert cfg["dpopt_removed_units"] == names
        reloaded = AutoModelForCausalLM.from_pretrained(dest, dtype=torch.float32).eval()
        with torch.no_grad():
            got = reloaded(input_ids=ids, use_cache=False).logits
        want = lm.masked.forward_units(names, prep)
        assert (got - want).abs().max().item() < 1e-4
        moved = (want - dense).abs().max().item()
        assert (moved < 1e-5) if names == FOUND else (moved > 1e-3)  # the found units change nothing
    rc, stdout, err = run_cli(["eval", "--model", zeroed_ck, "--remove", "attn.0,mlp.3,5", "--data", text_file,
                               "--objective", "kl", "--tokens", 128, "--seq-len", 32, "--json"], capsys)
    assert rc == 0, err
    res = json.loads(stdout)
    assert res["removed_units"] == ["attn.0", "mlp.3", "block.5"] and res["removed_layers"] == [5]
    assert res["objectives"]["kl"]["pruned"] > 1e-4


def test_sublayer_units_on_unsplittable_family_is_one_line(text_file, monkeypatch, capsys):
    lm = make_tiny_lm("llama", N)
    masked = MaskedModel(lm.model, family=replace(lm.masked.family, name="blocky", sublayers=None))
    blocky = LoadedModel(lm.model, lm.tokenizer, masked, source="tiny-blocky")
    with pytest.raises(UserError) as err:
        api.make_evaluator(blocky, "ppl", data=str(text_file), units="sublayer", tokens=64, seq_len=32)
    assert "\n" not in str(err.value) and "sub-layer" in str(err.value)
    monkeypatch.setattr(api, "load", lambda *a, **k: blocky)
    for args in (["search", "--units", "sublayer", "--remove", "2"], ["eval", "--remove", "attn.1"],
                 ["search", "--units", "block", "--tie", "--remove", "2"]):
        rc, _, err = run_cli([*args, "--data", text_file, "--tokens", 64, "--seq-len", 32, "--storage", "none"]
                             if args[0] == "search" else [*args, "--data", text_file], capsys)
        assert rc == 2 and "Traceback" not in err
        lines = [ln for ln in err.strip().splitlines() if ln.startswith("dpopt: error")]
        assert len(lines) == 1 and ("sub-layer" in lines[0] or "--tie" in lines[0]), err
