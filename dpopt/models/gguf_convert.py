"""Write a pruned ``transformers`` model as a GGUF file, for the families the ``gguf`` package maps.

The ``gguf`` package names every tensor (``TensorNameMap``) but leaves to each converter
what llama.cpp's kernels expect of the numbers: the ``llama`` architecture applies rotary
embeddings to interleaved pairs where ``transformers`` rotates halves, so its query and key
rows are permuted (as llama.cpp's ``convert_hf_to_gguf.py`` does); Qwen2/Qwen3 use the
halves layout and are written as they are. A family is in :data:`CONVERTERS` only when that
is known for it; any other gets one line naming the ones that are.

Only byte-level BPE tokenizers (``tokenizer.json`` with merges, the GPT-2 scheme) are
written as a GGUF vocabulary; llama.cpp cannot run a file without one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import UserError
from ..registry import Registry
from .gguf_io import atomic_write, gguf_writer

OUT_TYPES = ("f32", "f16", "bf16", "q8_0")


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rotary halves -> interleaved pairs, row blocks of one head at a time (llama.cpp's layout)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama_tensor(name: str, w: np.ndarray, config) -> np.ndarray:
    if name.endswith("attn_q.weight"):
        return _permute(w, config.num_attention_heads)
    if name.endswith("attn_k.weight"):
        return _permute(w, config.num_key_value_heads)
    return w


@dataclass(frozen=True)
class Converter:
    arch: str  # gguf.MODEL_ARCH_NAMES value
    tensor: Callable[[str, np.ndarray, object], np.ndarray] = lambda name, w, config: w


CONVERTERS: Registry[Converter] = Registry("GGUF converter")
CONVERTERS.register("llama", "mistral")(Converter("llama", _llama_tensor))
CONVERTERS.register("qwen2")(Converter("qwen2"))
CONVERTERS.register("qwen3")(Converter("qwen3"))


def converter_for(model) -> Converter:
    model_type = model.config.model_type
    if model_type not in CONVERTERS:
        raise UserError(f"cannot write GGUF for a transformers {model_type!r} model; GGUF export from a transformers "
                        f"checkpoint supports {', '.join(CONVERTERS.names())} (a GGUF source of any known "
                        f"architecture keeps its own tensors)")
    return CONVERTERS.get(model_type)


def _rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    if params.get("rope_type", "default") != "default":
        raise UserError(f"cannot write GGUF for rope scaling {params.get('rope_type')!r} yet")
    return float(params.get("rope_theta") or getattr(config, "rope_theta", 10000.0))


def hparams(writer, config, n_blocks: int, file_type: int) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(n_blocks)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(file_type)


def bpe_model(tokenizer) -> dict:
    """The tokenizer's BPE model (vocab, merges); anything else has no GGUF vocabulary here."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    model = json.loads(backend.to_str())["model"] if backend is not None else {}
    if model.get("type") != "BPE":
        raise UserError(f"cannot write a GGUF vocabulary for {type(tokenizer).__name__}: only byte-level BPE "
                        f"tokenizers (tokenizer.json) are converted")
    return model


def vocabulary(writer, tokenizer, model: dict, vocab_size: int) -> None:
    """The tokenizer as llama.cpp's ``gpt2`` (byte-level BPE) vocabulary."""
    import gguf

    special = set(tokenizer.all_special_ids)
    added = set(tokenizer.get_added_vocab().values())
    tokens, types = [], []
    for i in range(vocab_size):
        tok = tokenizer.convert_ids_to_tokens(i) if i < len(tokenizer) else None
        if tok is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(tok)
        types.append(gguf.TokenType.CONTROL if i in special else
                     gguf.TokenType.USER_DEFINED if i in added else gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_key_value(gguf.Keys.Tokenizer.MERGES, merges, gguf.GGUFValueType.ARRAY,
                         sub_type=gguf.GGUFValueType.STRING)  # may be empty: see gguf_writer
    for name, tid in (("bos", tokenizer.bos_token_id), ("eos", tokenizer.eos_token_id),
                      ("pad", tokenizer.pad_token_id), ("unk", tokenizer.unk_token_id)):
        if tid is not None and 0 <= tid < vocab_size:
            getattr(writer, f"add_{name}_token_id")(tid)
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)


def _encode(w: np.ndarray, out_type: str):
    """``(array, raw_dtype or None)`` at ``out_type``; vectors (norms, biases) stay f32, as llama.cpp wants."""
    import gguf

    w = w.astype(np.float32)
    if w.ndim <= 1 or out_type == "f32":
        return w, None
    if out_type == "q8_0" and w.shape[-1] % 32 == 0:
        return gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    if out_type == "bf16":
        return gguf.quants.quantize(w, gguf.GGMLQuantizationType.BF16), gguf.GGMLQuantizationType.BF16
    return w.astype(np.float16), None


_FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}


def pruned_state(masked, plan) -> dict[str, torch.Tensor]:
    """The model's tensors with kept blocks renumbered, silenced output projections zero, tied heads once."""
    model, family = masked.model, masked.family
    prefix = family.blocks + "."
    kept = {old: new for new, old in enumerate(plan.kept())}
    zero = {f"{prefix}{b}.{path}.{p}" for b, kinds in plan.silenced.items() for kind in kinds
            for path in family.sublayers[kind].zero for p in ("weight", "bias")}
    tied = getattr(model.config.get_text_config(), "tie_word_embeddings", False)
    out = {}
    for name, t in model.state_dict().items():
        if tied and name == family.head + ".weight":
            continue
        if name.startswith(prefix):
            old, _, rest = name[len(prefix):].partition(".")
            if int(old) not in kept:
                continue
            t = torch.zeros_like(t) if name in zero else t
            name = f"{prefix}{kept[int(old)]}.{rest}"
        out[name] = t
    return out


def export_gguf_from_transformers(lm, plan, out: Path, out_type: str, provenance: dict) -> Path:
    import gguf

    if out_type not in OUT_TYPES:
        raise UserError(f"--gguf-type must be one of {', '.join(OUT_TYPES)}, got {out_type!r}")
    model = lm.model
    conv = converter_for(model)
    bpe = bpe_model(lm.tokenizer)  # both refusals before any tensor is converted
    config = model.config
    n_kept = len(plan.kept())
    names = gguf.get_tensor_name_map(
        next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == conv.arch), n_kept)
    tensors = []
    for name, t in pruned_state(lm.masked, plan).items():
        gname = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gname is None:
            raise UserError(f"cannot write GGUF: no GGUF name for tensor {name}")
        w = conv.tensor(gname, t.detach().to(torch.float32).cpu().numpy(), config)
        tensors.append((gname, *_encode(w, out_type)))

    def write(tmp: Path) -> None:
        writer = gguf_writer(tmp, conv.arch)
        hparams(writer, config, n_kept, _FILE_TYPES[out_type])
        vocabulary(writer, lm.tokenizer, bpe, config.vocab_size)
        for key, value in provenance.items():
            getattr(writer, "add_string" if isinstance(value, str) else "add_uint32")(key, value)
        for gname, arr, raw in tensors:
            writer.add_tensor(gname, arr, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    return atomic_write(out, write)
