"""A model's identity for the study fingerprint: config, weights and tokenizer, not its folder name.

Two checkpoints in folders with the same basename must not share recorded values, and one
checkpoint must keep its identity when it moves or is loaded on another device (a worker
on a GPU and a search on a CPU share one study). So the identity hashes the architecture
config (minus bookkeeping keys), every byte of the weight files (each file's digest is
remembered by :func:`dpopt.record.fingerprint.file_sha256`, so only the first run pays for
it), and the tokenizer's whole pipeline: a tokenizer that maps the same text to other ids
gives other values from the same weights. A model with no files behind it (built from a
config) hashes its tensors' bytes instead.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

_VOLATILE = {"transformers_version", "torch_dtype", "dtype", "architectures", "use_cache", "output_attentions",
             "output_hidden_states", "return_dict"}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
# what a tokenizer object holds beside its vocabulary that changes the ids a text gets
_TOKENIZER_FLAGS = ("add_bos_token", "add_eos_token", "add_prefix_space", "do_lower_case")


def config_digest(config) -> str:
    d = {k: v for k, v in config.to_dict().items() if not k.startswith("_") and k not in _VOLATILE}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def weight_files(path: str | None) -> list[Path]:
    """The files the weights were read from: ``path`` itself, or the weight files in the folder."""
    p = Path(path) if path else None
    if p is not None and p.is_file():
        return [p]
    if p is not None and p.is_dir():
        return sorted(f for f in p.iterdir() if f.suffix in _WEIGHT_SUFFIXES and f.is_file())
    return []


def weights_digest(model, path: str | None) -> str:
    """Every byte of the weight files behind ``path``; the tensors' bytes where there are none."""
    from ..record.fingerprint import file_sha256

    h = hashlib.sha256()
    files = weight_files(path)
    if files:
        for f in files:
            h.update(f"{f.name}:{file_sha256(f)}\n".encode())
        return "files:" + h.hexdigest()[:16]
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return "tensors:" + h.hexdigest()[:16]


def tokenizer_digest(tokenizer) -> str | None:
    """What decides the ids a text becomes: a fast tokenizer's whole serialised pipeline
    (normaliser, pre-tokeniser, vocabulary and merges, added tokens, post-processor), else the
    sorted vocabulary; with the special tokens and the flags that add or move tokens."""
    if tokenizer is None:
        return None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        core = backend.to_str()
    elif hasattr(tokenizer, "get_vocab"):
        core = json.dumps(sorted(tokenizer.get_vocab().items()))
    else:  # a tokenizer written in code: its class is what decides the ids
        core = f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}"
    extra = {"special": getattr(tokenizer, "special_tokens_map", None),
             **{k: getattr(tokenizer, k, None) for k in _TOKENIZER_FLAGS}}
    h = hashlib.sha256(core.encode())
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def model_identity(model, path: str | None, tokenizer=None) -> dict:
    """``{type, config, weights, tokenizer}``; each part is one line in a refusal when it differs."""
    cfg = model.config
    return {"type": getattr(cfg, "model_type", type(model).__name__), "config": config_digest(cfg),
            "weights": weights_digest(model, path), "tokenizer": tokenizer_digest(tokenizer)}
