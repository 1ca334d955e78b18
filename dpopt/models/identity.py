"""A model's identity for the study fingerprint: its config and its weights, not its folder name.

Two checkpoints in folders with the same basename must not share recorded values, and one
checkpoint must keep its identity when it moves or is loaded on another device (a worker
on a GPU and a search on a CPU share one study). So the identity hashes the architecture
config (minus bookkeeping keys) and the weight files' names and sizes plus a checksum of
their first and last MiB; a model with no files behind it (built from a config) hashes its
tensors' bytes instead.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

_VOLATILE = {"transformers_version", "torch_dtype", "dtype", "architectures", "use_cache", "output_attentions",
             "output_hidden_states", "return_dict"}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
_EDGE = 1 << 20


def config_digest(config) -> str:
    d = {k: v for k, v in config.to_dict().items() if not k.startswith("_") and k not in _VOLATILE}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(f"{path.name}:{size}".encode())
    with open(path, "rb") as fh:
        h.update(fh.read(_EDGE))
        if size > 2 * _EDGE:
            fh.seek(size - _EDGE)
            h.update(fh.read(_EDGE))
    return h.hexdigest()


def weights_digest(model, path: str | None) -> str:
    h = hashlib.sha256()
    p = Path(path) if path else None
    files = []
    if p is not None and p.is_file():
        files = [p]
    elif p is not None and p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in _WEIGHT_SUFFIXES)
    if files:
        for f in files:
            h.update(_file_digest(f).encode())
        return "files:" + h.hexdigest()[:16]
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return "tensors:" + h.hexdigest()[:16]


def model_identity(model, path: str | None) -> dict:
    cfg = model.config
    return {"type": getattr(cfg, "model_type", type(model).__name__), "config": config_digest(cfg),
            "weights": weights_digest(model, path)}
