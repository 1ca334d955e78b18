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
    "granite": ("GraniteConfig", dict(num_key_value_heads=2, logits_scaling=4.0)),
    "olmo2": ("Olmo2Config", dict(num_key_value_heads=2)),
    "smollm3": ("SmolLM3Config", dict(num_key_value_heads=2)),
    "gemma2": ("Gemma2Config", dict(num_key_value_heads=1, head_dim=8, sliding_window=8)),
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


def tiny_tokenizer():
    """A byte-level tokenizer (256 byte tokens + eos) that needs no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<eos>": 0}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")


def save_tiny_checkpoint(path, family: str = "llama", n_blocks: int = 12, seed: int = 0,
                         identity_blocks=()):
    """Write a random-init checkpoint + tokenizer that ``--model PATH`` loads.

    ``identity_blocks`` are made exact identities by zeroing their output projections
    (every residual branch then adds 0): a known answer for search tests.
    """
    tok = tiny_tokenizer()
    config = tiny_config(family, n_blocks)
    config.vocab_size = len(tok)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = None, tok.eos_token_id, tok.pad_token_id
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    from .families import family_of

    blocks = family_of(model).block_list(model)
    for i in identity_blocks:
        zero_residual_outputs(blocks[i])
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


_OUTPUT_PROJECTIONS = ("o_proj", "down_proj", "c_proj", "out_proj", "fc2", "dense", "dense_4h_to_h")


def zero_residual_outputs(block) -> None:
    """Zero every projection that writes into the residual stream, making the block an identity."""
    with torch.no_grad():
        for name, module in block.named_modules():
            if name.rsplit(".", 1)[-1] in _OUTPUT_PROJECTIONS and hasattr(module, "weight"):
                module.weight.zero_()
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
