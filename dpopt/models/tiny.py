"""Tiny random-weight models of every supported family, built from a config.

Tests and quick experiments need every architecture in seconds without downloading
anything; these configs keep each family's quirks (GQA, sliding windows, learned
positions, final projections) at toy sizes.
"""
from __future__ import annotations

import torch

COMMON = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_attention_heads=4,
              max_position_embeddings=256, bos_token_id=0, eos_token_id=1, pad_token_id=1)

TINY_CONFIGS: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", dict(num_key_value_heads=2)),
    "mistral": ("MistralConfig", dict(num_key_value_heads=2, sliding_window=None)),
    "qwen2": ("Qwen2Config", dict(num_key_value_heads=2)),
    "qwen3": ("Qwen3Config", dict(num_key_value_heads=2, head_dim=8)),
    "gemma3": ("Gemma3TextConfig", dict(num_key_value_heads=1, head_dim=8, sliding_window=8,
                                        final_logit_softcapping=30.0, query_pre_attn_scalar=8)),
    "gpt2": ("GPT2Config", dict(n_embd=32, n_head=4, n_positions=256, n_inner=64)),
    "opt": ("OPTConfig", dict(ffn_dim=64, word_embed_proj_dim=16, do_layer_norm_before=True)),
    "gpt_neox": ("GPTNeoXConfig", dict(rotary_pct=0.5)),
    "phi3": ("Phi3Config", dict(num_key_value_heads=2)),
}


def tiny_config(family: str, n_blocks: int = 6):
    import transformers

    cls_name, extra = TINY_CONFIGS[family]
    cls = getattr(transformers, cls_name)
    kw = dict(COMMON)
    kw.update(extra)
    kw["num_hidden_layers"] = n_blocks
    if family == "gemma3":  # alternate sliding and full attention, as the real model does
        kw["layer_types"] = ["sliding_attention" if i % 3 != 2 else "full_attention" for i in range(n_blocks)]
    if family == "gpt2":
        kw = {k: v for k, v in kw.items() if k not in ("hidden_size", "intermediate_size", "num_attention_heads",
                                                       "max_position_embeddings", "num_hidden_layers")}
        kw["n_layer"] = n_blocks
    return cls(**kw)


def tiny_model(family: str, n_blocks: int = 6, seed: int = 0, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(family, n_blocks)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()
