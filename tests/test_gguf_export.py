"""GGUF export: a pruned file that llama.cpp runs and that is the masked model dpopt measured.

* from a GGUF source the kept tensors are the source's bytes (its quantization kept), blocks
  renumbered, per-layer metadata cut to the kept blocks, tokenizer keys unchanged, and the
  file read back by dpopt gives the masked model's logits exactly;
* from a transformers source (llama, qwen2, qwen3) the file read back gives the masked model;
* llama.cpp itself (``llama-cpp-python``) loads the pruned files and its next-token
  log-probabilities agree with dpopt's masked model: tiny f32 files to 1e-3 (measured
  <= 1e-4), the zoo's quantized models to a per-position KL(dpopt || llama.cpp) of at most
  0.1 nats and 0.05 on average. On the unpruned zoo files the same comparison gives
  max 0.011 / mean 0.0036 (SmolLM2 Q4_1) and 0.009 / 0.0039 (Gemma3 Q4_K_M): the bound is
  that quantized-arithmetic floor with room, while the same pruned file against a mask one
  unit away measured at least 0.38 mean, and against the dense model 2.5 (SmolLM2) and 5.2;
* bad input (an architecture the exporter does not know, every block removed, an unwritable
  or occupied ``--out``, a family the gguf package cannot map) is one line, exit 2, and
  leaves nothing behind.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import dpopt
from conftest import run_cli
from dpopt.errors import UserError
from dpopt.models import gguf_export
from dpopt.models.gguf_export import export_gguf, export_gguf_from_gguf, provenance
from dpopt.models.tiny import save_tiny_checkpoint
from dpopt.models.units import UnitPlan

gguf = pytest.importorskip("gguf")

REMOVED = ["block.1", "block.4", "attn.2", "mlp.3"]
IDS = [5, 17, 33, 100, 200, 7, 9, 44, 12, 250]


def llama_cpp():
    """llama.cpp's bindings: a test dependency, so CI fails without them; elsewhere the test skips."""
    if os.environ.get("CI"):
        import llama_cpp as mod

        return mod
    return pytest.importorskip("llama_cpp")


def masked_logprobs(lm, ids, removed=()):
    with torch.no_grad(), lm.masked.applied_units(list(removed)):
        return torch.log_softmax(lm.model(torch.tensor([ids])).logits[0].double(), -1)


def llama_cpp_logprobs(path, ids, generate=0):
    """Next-token log-probabilities at every prompt position from llama.cpp, and greedy tokens after it."""
    llm = llama_cpp().Llama(model_path=str(path), n_ctx=128, logits_all=True, verbose=False, n_threads=2, seed=0)
    try:
        llm.eval(ids)
        scores = torch.log_softmax(torch.tensor(np.array(llm.scores[:len(ids)], dtype=np.float64)), -1)
        llm.reset()
        tokens = []
        for t in (llm.generate(ids, temp=0.0) if generate else ()):
            tokens.append(t)
            if len(tokens) == generate:
                break
        return scores, tokens
    finally:
        llm.close()


def kl(p_log, q_log):
    """Per-position KL(p || q) in nats."""
    return (p_log.exp() * (p_log - q_log)).sum(-1)


@pytest.fixture(scope="module")
def tiny_ck(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "llama", "llama", n_blocks=6)


@pytest.fixture(scope="module")
def q8_source(tiny_ck, tmp_path_factory):
    """A quantized GGUF source (Q8_0), written by the transformers converter at no removal."""
    lm = dpopt.load(str(tiny_ck), device="cpu")
    return export_gguf(lm, [], tmp_path_factory.mktemp("src") / "tiny-q8.gguf", out_type="q8_0")


def test_gguf_source_keeps_bytes_renumbers_and_reloads_as_the_masked_model(q8_source, tmp_path):
    src_lm = dpopt.load(str(q8_source), device="cpu")
    out = export_gguf(src_lm, REMOVED, tmp_path / "pruned.gguf")
    src, dst = gguf.GGUFReader(q8_source), gguf.GGUFReader(out)
    assert dst.fields["llama.block_count"].contents() == 4
    assert dst.fields["dpopt.removed_units"].contents() == "block.1,attn.2,mlp.3,block.4"
    old = {t.name: t for t in src.tensors}
    kept = [0, 2, 3, 5]
    for t in dst.tensors:
        name = t.name
        if name.startswith("blk."):
            new, rest = name.split(".", 2)[1:]
            name = f"blk.{kept[int(new)]}.{rest}"
        assert t.tensor_type == old[name].tensor_type
        if name in ("blk.2.attn_output.weight", "blk.3.ffn_down.weight"):
            assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0 and not t.data.any()
        else:
            assert t.data.tobytes() == old[name].data.tobytes(), name
    assert len(dst.tensors) == len(src.tensors) - 2 * 9
    for key, f in src.fields.items():
        if key.startswith("tokenizer."):
            assert dst.fields[key].contents() == f.contents(), key
    pruned = dpopt.load(str(out), device="cpu")
    assert pruned.n_blocks == 4
    assert torch.allclose(masked_logprobs(src_lm, IDS, REMOVED), masked_logprobs(pruned, IDS), atol=1e-9)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_transformers_source_reloads_as_the_masked_model(family, tmp_path):
    ck = save_tiny_checkpoint(tmp_path / family, family, n_blocks=6)
    lm = dpopt.load(str(ck), device="cpu")
    out = export_gguf(lm, REMOVED, tmp_path / "p.gguf", out_type="f32")
    pruned = dpopt.load(str(out), device="cpu")
    assert pruned.n_blocks == 4
    assert torch.allclose(masked_logprobs(lm, IDS, REMOVED), masked_logprobs(pruned, IDS), atol=1e-6)


def _fake_gguf(path, arch="gemma3", n=8, pattern=None, head_counts=None):
    """A header-and-tiny-tensors GGUF: enough for the exporter, not for a model."""
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(n)
    w.add_sliding_window(4)
    if pattern is not None:
        w.add_sliding_window_pattern(pattern)
    if head_counts is not None:
        w.add_key_value(f"{arch}.attention.head_count", head_counts, gguf.GGUFValueType.ARRAY,
                        sub_type=gguf.GGUFValueType.UINT32)
    w.add_token_list(["a", "b"])
    w.add_tensor("token_embd.weight", np.ones((2, 4), np.float32))
    for i in range(n):
        w.add_tensor(f"blk.{i}.attn_output.weight", np.full((4, 4), i, np.float16))
        w.add_tensor(f"blk.{i}.ffn_down.weight", np.full((4, 4), i, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("pattern", [None, 3, [True, False] * 4])
def test_per_layer_metadata_cut_to_the_kept_blocks(pattern, tmp_path):
    src = _fake_gguf(tmp_path / "s.gguf", pattern=pattern, head_counts=list(range(10, 18)))
    plan = UnitPlan(8, (1, 5, 6), {2: frozenset({"mlp"})})
    out = export_gguf_from_gguf(src, plan, tmp_path / "o.gguf", provenance(plan, "fake"))
    r = gguf.GGUFReader(out)
    kept = [0, 2, 3, 4, 7]
    assert r.fields["gemma3.block_count"].contents() == 5
    assert r.fields["gemma3.attention.head_count"].contents() == [10 + i for i in kept]
    # llama.cpp: windowed unless il % period == period - 1 (Gemma3's implied period is 6)
    period = 6 if pattern is None else pattern
    expected = ([pattern[i] for i in kept] if isinstance(pattern, list)
                else [i % period < period - 1 for i in kept])
    assert r.fields["gemma3.attention.sliding_window_pattern"].contents() == expected
    blocks = {t.name: t.data for t in r.tensors if t.name.startswith("blk.")}
    assert sorted(blocks) == sorted(f"blk.{i}.{n}" for i in range(5) for n in ("attn_output.weight", "ffn_down.weight"))
    for new, old in enumerate(kept):
        assert (blocks[f"blk.{new}.attn_output.weight"] == old).all()
        assert (blocks[f"blk.{new}.ffn_down.weight"] == (0 if old == 2 else old)).all()


def test_llama_cpp_runs_tiny_pruned_files(tiny_ck, q8_source, tmp_path):
    """The transformers converter (f32, q8_0) and the GGUF copier both give what dpopt's masked model computes."""
    lm = dpopt.load(str(tiny_ck), device="cpu")
    f32 = export_gguf(lm, REMOVED, tmp_path / "f32.gguf", out_type="f32")
    lc, tokens = llama_cpp_logprobs(f32, IDS, generate=3)
    assert len(tokens) == 3
    assert (lc - masked_logprobs(lm, IDS, REMOVED)).abs().max() < 1e-3
    src_lm = dpopt.load(str(q8_source), device="cpu")  # the dequantized Q8_0 weights
    copied = export_gguf(src_lm, REMOVED, tmp_path / "q8.gguf")
    lc, _ = llama_cpp_logprobs(copied, IDS)
    # llama.cpp multiplies Q8_0 weights by Q8_0-rounded activations: a KL bound, as for the zoo
    # (measured: max 1.1e-6 on the unpruned file, 4.6e-7 on this one)
    assert kl(masked_logprobs(src_lm, IDS, REMOVED), lc).max() < 1e-4


@pytest.mark.parametrize("family", ["mistral", "qwen2", "qwen3"])
def test_llama_cpp_runs_tiny_converted_families(family, tmp_path):
    ck = save_tiny_checkpoint(tmp_path / family, family, n_blocks=6)
    lm = dpopt.load(str(ck), device="cpu")
    out = export_gguf(lm, REMOVED, tmp_path / "p.gguf", out_type="f32")
    lc, _ = llama_cpp_logprobs(out, IDS)
    assert (lc - masked_logprobs(lm, IDS, REMOVED)).abs().max() < 1e-3


def test_eval_of_the_pruned_file_equals_eval_of_the_mask(q8_source, text_file, tmp_path, capsys):
    out = tmp_path / "p.gguf"
    rc, stdout, err = run_cli(["export", "--model", q8_source, "--remove", ",".join(REMOVED), "--out", out], capsys)
    assert rc == 0, err
    assert "4 of 6 blocks kept" in stdout
    common = ["--data", text_file, "--tokens", 128, "--seq-len", 64, "--json", "--device", "cpu"]
    rc, masked, err = run_cli(["eval", "--model", q8_source, "--remove", ",".join(REMOVED), *common], capsys)
    assert rc == 0, err
    rc, pruned, err = run_cli(["eval", "--model", out, *common], capsys)
    assert rc == 0, err
    a, b = json.loads(masked)["objectives"]["ppl"], json.loads(pruned)["objectives"]["ppl"]
    assert b["dense"] == pytest.approx(a["pruned"], rel=1e-6)
    assert a["pruned"] != pytest.approx(a["dense"], rel=1e-3)


def test_export_from_result_names_the_file_by_its_suffix(q8_source, tmp_path, capsys):
    result = tmp_path / "result.json"
    result.write_text(json.dumps({"removed_units": ["block.2", "mlp.4"]}))
    out = tmp_path / "p.gguf"
    rc, stdout, err = run_cli(["export", "--model", q8_source, "--from-result", result, "--out", out], capsys)
    assert rc == 0, err
    r = gguf.GGUFReader(out)  # no --format: the .gguf suffix chose it
    assert r.fields["llama.block_count"].contents() == 5
    assert r.fields["dpopt.removed_units"].contents() == "block.2,mlp.4"
    assert not next(t for t in r.tensors if t.name == "blk.3.ffn_down.weight").data.any()


def _assert_one_line(rc, err, needle):
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("dpopt: error")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert needle.lower() in lines[0].lower(), lines[0]


@pytest.mark.parametrize("case,needle", [
    ("all-blocks", "cannot remove all"),
    ("all-sublayers", "cannot remove all"),
    ("under-a-file", "writable"),
    ("a-directory", "directory"),
    ("exists", "--force"),
    ("unmapped-family", "cannot write GGUF for a transformers 'gpt2' model"),
    ("toy-type", "--gguf-type"),
])
def test_bad_export_is_one_line_and_writes_nothing(case, needle, q8_source, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    (tmp_path / "d").mkdir()
    model, out, extra = q8_source, tmp_path / "out.gguf", []
    remove = {"all-blocks": "0,1,2,3,4,5",
              "all-sublayers": ",".join(f"{k}.{i}" for i in range(6) for k in ("attn", "mlp"))}.get(case, "1")
    if case == "under-a-file":
        out = blocker / "sub" / "out.gguf"
    elif case == "a-directory":
        out = tmp_path / "d"
    elif case == "exists":
        out = blocker
    elif case == "unmapped-family":
        model = save_tiny_checkpoint(tmp_path / "gpt2", "gpt2", n_blocks=4)
    elif case == "toy-type":
        extra = ["--gguf-type", "f16"]  # a GGUF source keeps its own types
    before = sorted(p.name for p in tmp_path.rglob("*"))
    rc, _, err = run_cli(["export", "--model", model, "--remove", remove, "--out", out, "--format", "gguf", *extra],
                         capsys)
    _assert_one_line(rc, err, needle)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert blocker.read_text() == "x"


def test_a_tokenizer_without_a_gguf_vocabulary_is_refused(tiny_lm, tmp_path):
    lm = tiny_lm("llama")  # the char-level toy tokenizer: no tokenizer.json
    with pytest.raises(UserError, match="cannot write a GGUF vocabulary for ToyTokenizer"):
        export_gguf(lm, ["block.1"], tmp_path / "o.gguf")
    assert list(tmp_path.iterdir()) == []


def test_unknown_architecture_is_refused(tmp_path):
    src = _fake_gguf(tmp_path / "m.gguf", arch="mamba", n=2)
    plan = UnitPlan(2, (1,), {})
    with pytest.raises(UserError, match="architecture 'mamba' .* is not one the exporter knows"):
        export_gguf_from_gguf(src, plan, tmp_path / "o.gguf", {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


def test_interrupted_write_leaves_nothing(q8_source, tmp_path, monkeypatch):
    def fail_midway(path, *args):
        path.write_bytes(b"GGUF half")
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_export, "write_gguf", fail_midway)
    lm = dpopt.load(str(q8_source), device="cpu")
    with pytest.raises(KeyboardInterrupt):
        export_gguf(lm, ["block.1"], tmp_path / "out.gguf")
    assert list(tmp_path.iterdir()) == []


ZOO_REMOVALS = {
    "smollm2-135m": ["block.3", "block.7", "block.12", "block.16", "block.20", "block.24", "attn.5", "mlp.9"],
    "gemma3-270m": ["block.3", "block.4", "block.11", "attn.6", "mlp.9"],  # block 11 is a full-attention layer
}
ZOO_PROMPT = "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ZOO_REMOVALS))
def test_llama_cpp_runs_the_pruned_zoo_gguf(name, tmp_path):
    """llama.cpp loads the pruned quantized file, generates, and agrees with dpopt's masked model.

    dpopt's model is the zoo GGUF dequantized; llama.cpp computes with the quantized blocks.
    The unpruned file read both ways sets the floor the pruned file is held to.
    """
    lm = dpopt.load(name, device="cpu")
    source = gguf_export.gguf_source(lm)
    removed = ZOO_REMOVALS[name]
    out = export_gguf(lm, removed, tmp_path / "pruned.gguf")
    ids = lm.tokenizer(ZOO_PROMPT).input_ids
    dense_dp, pruned_dp = masked_logprobs(lm, ids), masked_logprobs(lm, ids, removed)
    dense_lc, _ = llama_cpp_logprobs(source, ids)
    pruned_lc, tokens = llama_cpp_logprobs(out, ids, generate=6)
    assert len(tokens) == 6
    floor, got = kl(dense_dp, dense_lc), kl(pruned_dp, pruned_lc)
    assert floor.max() < 0.1 and floor.mean() < 0.05, floor
    assert got.max() < 0.1 and got.mean() < 0.05, got
    assert kl(dense_dp, pruned_lc).mean() > 1.0  # the file is pruned: far from the dense model
    reread = dpopt.load(str(out), device="cpu")  # what `dpopt eval --model pruned.gguf` scores
    kept = [i for i in range(lm.n_blocks) if f"block.{i}" not in removed]
    types = getattr(lm.model.config, "layer_types", None)
    assert getattr(reread.model.config, "layer_types", None) == (None if types is None else [types[i] for i in kept])
    assert (masked_logprobs(reread, ids) - pruned_dp).abs().max() < 1e-6
    src_size, out_size = os.path.getsize(source), os.path.getsize(out)
    n_kept = lm.n_blocks - sum(u.startswith("block.") for u in removed)
    shared = sum(int(t.n_bytes) for t in gguf.GGUFReader(source).tensors if not t.name.startswith("blk."))
    # the pruned file is the shared tensors plus the kept blocks' share of the rest (metadata: < 1%)
    expected = shared + (src_size - shared) * n_kept / lm.n_blocks
    assert abs(out_size - expected) < 0.01 * src_size
