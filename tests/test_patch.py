"""The linear patch: fitted per removed span, applied by the evaluator, folded into a plain checkpoint.

* For every family that supports it, the export with the patches folded into the weights,
  reloaded with plain ``AutoModelForCausalLM``, gives the logits of the masked model with the
  unfolded patches (1e-4), and generates; spans from block 0 (embeddings, untied from the
  head where tied), in the middle (the MLP's last linear, or Gemma2/3's and OLMo2's
  post-feedforward norm as a per-channel scale) and at the end are all covered.
* On a tiny model whose removed block is exactly linear in the branch the patch acts on,
  the patched KL is ~0 and the plain drop's is not.
* The prefix tree with patches gives the values of running each mask alone, and a span's fit
  is computed once for every mask that shares the prefix ending with it.
* Mistakes are one line and exit status 2.
"""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from conftest import make_tiny_lm, run_cli
from dpopt.genome import LayerMask
from dpopt.models.export import export_pruned_units
from dpopt.models.families import get_path
from dpopt.models.patch import PatchSettings, patcher_for
from dpopt.models.tiny import TINY_CONFIGS

N_BLOCKS = 6
REMOVED = (0, 2, 3, 5)  # spans [0], [2..3], [5]: embeddings, a middle block, the last kept block
TOL = 1e-4
# post-norm OPT (do_layer_norm_before=False) is the one configuration without an exact fold: refused below
FAMILIES = sorted(TINY_CONFIGS)


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "calib.txt"
    path.write_text("\n\n".join(f"Paragraph {i}: the quick brown fox number {i} jumps over {i * 7} lazy dogs."
                                for i in range(80)))
    return path


def _settings(calib_file, tokens: int = 192) -> PatchSettings:
    return PatchSettings(data=str(calib_file), tokens=tokens, seq_len=16)


def _ids(batch: int = 2, length: int = 20, seed: int = 1) -> torch.Tensor:
    return torch.randint(2, 122, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
def test_folded_export_equals_unfolded_patch(family, calib_file, tmp_path):
    from transformers import AutoModelForCausalLM

    lm = make_tiny_lm(family, N_BLOCKS)
    mask = LayerMask.from_removed(N_BLOCKS, REMOVED)
    patcher = patcher_for(lm, _settings(calib_file))
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    tied = getattr(lm.model.config, "tie_word_embeddings", False)
    family = lm.masked.family
    head = get_path(lm.model, family.head).weight  # OPT folds into project_in: its tied matrix stays tied
    folds_tied = any(get_path(lm.model, path).weight is head for path in family.embeddings(lm.model))
    ids = _ids()
    prep = lm.masked.prepare(ids)
    patched = lm.masked.head(patcher.last_hidden(mask, prep))
    plain = lm.masked.forward_masked(mask, prep)
    assert (patched - plain).abs().max().item() > 1e-3, "the patch changed nothing: the comparison would be empty"

    out = export_pruned_units(lm.masked, lm.tokenizer, [f"block.{i}" for i in REMOVED], tmp_path / "folded",
                              patches=patcher.patches(mask))
    cfg = json.loads((out / "config.json").read_text())
    assert len(cfg["dpopt_patch"]) >= 3 and "embeddings" in cfg["dpopt_patch"][-3]
    if folds_tied:  # the head keeps the unfolded matrix, and the config says so (not left to the loader's guess)
        assert cfg["tie_word_embeddings"] is False and "untied" in cfg["dpopt_patch"][0]
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        folded = reloaded(input_ids=ids, use_cache=False).logits
    assert (folded - patched).abs().max().item() < TOL
    # the live model is untouched: weights, and a tied head still tied
    after = lm.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert getattr(lm.model.config, "tie_word_embeddings", False) == tied
    prompt = _ids(batch=1, length=8, seed=2)
    with torch.no_grad():
        gen = reloaded.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False,
                                pad_token_id=1)
        gen_nocache = reloaded.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6,
                                        do_sample=False, pad_token_id=1, use_cache=False)
    assert gen.shape[1] == prompt.shape[1] + 6 and torch.equal(gen, gen_nocache)


def test_fit_is_least_squares_on_the_mlp_output(calib_file):
    """Delta solves min ||B Delta - (Y - H)|| with B block 1's down_proj output, H its block output
    and Y the dense state after the span: checked against torch's lstsq on hooks of the dense model."""
    lm = make_tiny_lm("llama", N_BLOCKS, seed=5)
    settings = PatchSettings(data=str(calib_file), tokens=192, seq_len=16, ridge=1e-10)
    patcher = patcher_for(lm, settings)
    mask = LayerMask.from_removed(N_BLOCKS, [2, 3])
    (patch,) = patcher.patches(mask)
    caught, states = [], []
    hooks = [lm.model.model.layers[1].mlp.down_proj.register_forward_hook(lambda m, a, o: caught.append(o))]
    hooks += [lm.model.model.layers[i].register_forward_hook(lambda m, a, o: states.append(o[0] if isinstance(o, tuple)
                                                                                          else o)) for i in (1, 3)]
    with torch.no_grad():
        for p in patcher.prepared:
            lm.masked.forward_masked(LayerMask.dense(N_BLOCKS), p)
    for h in hooks:
        h.remove()
    b = torch.cat([c.reshape(-1, c.shape[-1]) for c in caught]).double()
    h1 = torch.cat([s.reshape(-1, s.shape[-1]) for s in states[0::2]]).double()
    y3 = torch.cat([s.reshape(-1, s.shape[-1]) for s in states[1::2]]).double()
    want = torch.linalg.lstsq(b, y3 - h1).solution
    assert torch.allclose(patch.delta, want, atol=1e-4 * want.abs().max().item()), (patch.delta - want).abs().max()


def _linear_span_model():
    """A tiny Llama whose block 1 adds exactly ``m B`` to the stream, ``m`` being block 0's MLP output.

    The stream is split into halves U and V: the embeddings and block 0's attention write
    only to U, block 0's MLP only to V. Block 1's attention is zeroed, its norms are the
    identity (an epsilon so large that ``rsqrt(ms + eps)`` is the constant ``eps**-0.5`` in
    float32, undone by the norm's weight), and its MLP is one linear map reading only V. So
    block 1 is ``h -> h + m B``, which the patch on block 0's ``down_proj`` reproduces exactly.
    """
    lm = make_tiny_lm("llama", 4, seed=3)
    model = lm.model
    d = model.config.hidden_size
    u, v = slice(0, d // 2), slice(d // 2, d)
    layers = model.model.layers
    with torch.no_grad():
        model.model.embed_tokens.weight[:, v] = 0
        layers[0].self_attn.o_proj.weight[v, :] = 0
        layers[0].mlp.down_proj.weight[u, :] = 0
        layers[0].mlp.down_proj.weight.mul_(20.0)  # a branch large enough that dropping block 1 shows
        layers[1].self_attn.o_proj.weight.zero_()
        for norm in (layers[1].input_layernorm, layers[1].post_attention_layernorm):
            norm.variance_epsilon = 1e12
            norm.weight.fill_(1e6)
        linear = nn.Linear(d, d, bias=False)
        linear.weight.zero_()
        linear.weight[:, v] = torch.randn(d, d // 2, generator=torch.Generator().manual_seed(0))
        layers[1].mlp = linear
    return lm


def test_exactly_linear_span_is_recovered(calib_file):
    from dpopt.api import make_evaluator

    lm = _linear_span_model()
    kw = dict(data=str(calib_file), tokens=128, seq_len=16)
    mask = LayerMask.from_removed(4, [1])
    plain = make_evaluator(lm, "kl", **kw).evaluate([mask])[0]
    patched = make_evaluator(lm, "kl", patch="linear", patch_tokens=192, **kw)
    value = patched.evaluate([mask])[0]
    assert plain > 1e-3, plain
    assert abs(value) < 1e-4 * plain, (value, plain)  # ~0 up to float32 rounding
    assert patched.fingerprint.settings["patch"]["kind"] == "linear"


@pytest.mark.parametrize("family", ["llama", "gemma3"])  # a full matrix, and a per-channel scale
def test_prefix_tree_with_patch_equals_each_mask_alone(family, calib_file):
    from dpopt.api import make_evaluator

    lm = make_tiny_lm(family, N_BLOCKS)
    kw = dict(data=str(calib_file), tokens=64, seq_len=16, batch_size=2, patch="linear", patch_tokens=128)
    shared = make_evaluator(lm, "kl", **kw)
    alone = make_evaluator(lm, "kl", prefix_sharing=False, **kw)
    assert shared.patch is alone.patch  # one patcher per model and settings: the fits are shared
    removed = [(1,), (1, 4), (1, 5), (1, 2), (0,), (0, 3), (2, 3, 5), (0, 1, 4, 5)]
    masks = [LayerMask.from_removed(N_BLOCKS, r) for r in removed]
    a = shared.evaluate(masks)
    # every span-ending prefix fitted once: [1] is shared by the first three masks
    prefixes = {bytes(m.bits[: end + 1].tobytes()) for m in masks for end in
                [i for i in range(N_BLOCKS) if not m.bits[i] and (i + 1 == N_BLOCKS or m.bits[i + 1])]}
    assert shared.patch.fitted == len(prefixes)
    b = alone.evaluate(masks)
    assert shared.patch.fitted == len(prefixes)
    assert torch.allclose(torch.tensor(a), torch.tensor(b), rtol=1e-5, atol=1e-7)
    plain = make_evaluator(lm, "kl", **{k: v for k, v in kw.items() if not k.startswith("patch")})
    assert all(abs(x - y) > 1e-9 for x, y in zip(a, plain.evaluate(masks)))
    assert plain.fingerprint.digest != shared.fingerprint.digest


@pytest.fixture(scope="module")
def tiny_ck(tmp_path_factory):
    from dpopt.models.tiny import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "llama", "llama", n_blocks=6)


def test_cli_export_and_eval_with_patch(tiny_ck, calib_file, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rc, out, err = run_cli(["export", "--model", tiny_ck, "--remove", "2,3", "--patch", "linear", "--data", calib_file,
                            "--seq-len", 16, "--patch-tokens", 128, "--out", tmp_path / "x"], capsys)
    assert rc == 0, err
    assert "patch: blocks 2-3: full map folded into block 1 mlp.down_proj" in out
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "x")
    tok = AutoTokenizer.from_pretrained(tmp_path / "x")
    ids = tok("the quick brown fox", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=4, do_sample=False).shape[1] == ids.shape[1] + 4
    common = ["eval", "--model", tiny_ck, "--remove", "2,3", "--objective", "kl", "--data", calib_file,
              "--tokens", 64, "--seq-len", 16, "--json"]
    rc, plain, err = run_cli(common, capsys)
    assert rc == 0, err
    rc, patched, err = run_cli([*common, "--patch", "linear", "--patch-tokens", 128], capsys)
    assert rc == 0, err
    kl_plain = json.loads(plain)["objectives"]["kl"]["pruned"]
    kl_patched = json.loads(patched)["objectives"]["kl"]["pruned"]
    assert kl_patched != kl_plain


@pytest.mark.parametrize("args", [
    ["search", "--remove", "2", "--patch", "lineer"],
    ["eval", "--remove", "2", "--patch", "lineer"],
    ["export", "--remove", "2", "--patch", "lineer", "--out", "OUT"],
    ["compare", "--remove", "2", "--patch", "lineer", "--report", "OUT"],
    ["study", "--remove", "2", "--patch", "lineer", "--report", "OUT"],
    ["search", "--remove", "2", "--pach", "linear"],
    ["search", "--remove", "2", "--patch", "linear", "--units", "sublayer"],
    ["eval", "--remove", "attn.2", "--patch", "linear"],
    ["search", "--remove", "2", "--patch", "linear", "--patch-tokens", "0"],
])
def test_patch_mistakes_are_one_line(args, tiny_ck, calib_file, tmp_path, capsys):
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    rc, out, err = run_cli([*args, "--model", tiny_ck, "--data", calib_file, "--tokens", 32, "--seq-len", 16]
                           if args[0] != "export" else [*args, "--model", tiny_ck, "--data", calib_file], capsys)
    assert rc == 2, (out, err)
    lines = [ln for ln in err.splitlines() if ln.strip() and "Loading weights" not in ln]  # transformers' load bar
    assert len(lines) == 1 and lines[0].startswith("dpopt: error") and "Traceback" not in err, err
    assert "patch" in err or "pach" in err or "sublayer" in err or "attn" in err


def test_post_norm_family_is_refused_in_one_line(calib_file):
    from dpopt.errors import UserError
    from dpopt.models.masked import MaskedModel
    from dpopt.models.tiny import tiny_config

    from transformers import AutoModelForCausalLM

    config = tiny_config("opt", 4)
    config.do_layer_norm_before = False
    lm = make_tiny_lm("opt", 4)
    lm.model = AutoModelForCausalLM.from_config(config).eval()
    lm.masked = MaskedModel(lm.model)
    with pytest.raises(UserError, match="opt .*post-norm"):
        patcher_for(lm, _settings(calib_file))


def test_search_scores_with_the_patch(tiny_ck, calib_file, tmp_path, capsys):
    out = tmp_path / "result.json"
    args = ["search", "--model", tiny_ck, "--algo", "greedy", "--objective", "kl", "--remove", 2, "--data", calib_file,
            "--tokens", 64, "--seq-len", 16, "--storage", "none", "--no-progress", "--output", out]
    rc, stdout, err = run_cli([*args, "--patch", "linear", "--patch-tokens", 128], capsys)
    assert rc == 0, err
    patched = json.loads(out.read_text())
    assert patched["settings"]["patch"]["tokens"] == 128 and "--patch linear" in stdout
    rc, _, err = run_cli(args, capsys)
    plain = json.loads(out.read_text())
    assert rc == 0 and "patch" not in plain["settings"] and plain["fingerprint"] != patched["fingerprint"]


def test_fits_read_other_calibration_tokens_than_the_objective(tmp_path, monkeypatch):
    """A mask scored with its patch inside a search must be scored on tokens its maps were not
    fitted to; else more spans (more free parameters) look better the more they overfit."""
    import dpopt.models.patch as patch_mod
    from dpopt.api import make_evaluator

    seen = []
    init = patch_mod.LinearPatcher.__init__

    def spy(self, masked, settings, input_ids, *args, **kwargs):
        seen.extend(input_ids)
        init(self, masked, settings, input_ids, *args, **kwargs)

    monkeypatch.setattr(patch_mod.LinearPatcher, "__init__", spy)
    rng = torch.Generator().manual_seed(0)
    letters = "abcdefghijklmnopqrstuvwxyz "
    text = tmp_path / "random.txt"  # no two 16-character sequences alike by chance
    text.write_text("\n\n".join("".join(letters[i] for i in torch.randint(0, 27, (60,), generator=rng).tolist())
                                  for _ in range(80)))
    lm = make_tiny_lm("llama", 4)
    ev = make_evaluator(lm, "kl", data=str(text), tokens=128, seq_len=16, patch="linear", patch_tokens=128)
    scored = {tuple(row.tolist()) for b in ev.objective.batches(None) for row in b.input_ids}
    fitted = {tuple(row.tolist()) for ids in seen for row in ids}
    assert len(fitted) == 8 and len(scored) == 8
    assert not scored & fitted
