"""Where each architecture keeps its decoder blocks, final norm and output head.

Masked execution needs only these three places: the blocks are called one by one with the
arguments the model itself passes them (captured once, see :mod:`dpopt.models.masked`), and
the head turns the last hidden state into logits. Adding a family is one ``FamilySpec`` and
one decorator; ``model_type`` strings from ``config.json`` are the registry keys.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..errors import UserError
from ..registry import Registry


def get_path(root: nn.Module, path: str):
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def set_path(root: nn.Module, path: str, value) -> None:
    parent, _, last = path.rpartition(".")
    setattr(get_path(root, parent) if parent else root, last, value)


@dataclass(frozen=True)
class FamilySpec:
    name: str
    blocks: str  # dotted path of the nn.ModuleList of decoder blocks
    final: tuple[str, ...]  # modules applied after the last block, in order (norm, projections)
    head: str  # the output projection to the vocabulary
    logit_softcap: Callable[[object], float | None] = lambda config: None
    logit_divisor: Callable[[object], float | None] = lambda config: None
    # attributes inside a block that hold its index (renumbered on export for the KV cache)
    layer_idx_attrs: tuple[str, ...] = ("layer_idx", "self_attn.layer_idx", "attn.layer_idx", "attention.layer_idx")

    def block_list(self, model: nn.Module) -> nn.ModuleList:
        return get_path(model, self.blocks)

    def head_logits(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        for path in self.final:
            module = get_path(model, path)
            if module is not None:
                hidden = module(hidden)
        logits = get_path(model, self.head)(hidden)
        divisor = self.logit_divisor(model.config)
        if divisor:
            logits = logits / divisor
        cap = self.logit_softcap(model.config)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits


FAMILIES: Registry[FamilySpec] = Registry("model family")


def register_family(spec: FamilySpec, *model_types: str) -> FamilySpec:
    FAMILIES.register(*model_types)(spec)
    return spec


_LLAMA_LIKE = FamilySpec("llama-like", blocks="model.layers", final=("model.norm",), head="lm_head")
register_family(_LLAMA_LIKE, "llama", "mistral", "qwen2", "qwen3", "phi3", "olmo2", "smollm3")
register_family(
    FamilySpec("granite", blocks="model.layers", final=("model.norm",), head="lm_head",
               logit_divisor=lambda c: getattr(c, "logits_scaling", None)),
    "granite",
)
register_family(
    FamilySpec(
        "gemma",
        blocks="model.layers",
        final=("model.norm",),
        head="lm_head",
        logit_softcap=lambda c: getattr(c, "final_logit_softcapping", None),
    ),
    "gemma",
    "gemma2",
    "gemma3_text",
)
register_family(FamilySpec("gpt2", blocks="transformer.h", final=("transformer.ln_f",), head="lm_head"), "gpt2")
register_family(
    FamilySpec(
        "opt",
        blocks="model.decoder.layers",
        final=("model.decoder.final_layer_norm", "model.decoder.project_out"),
        head="lm_head",
    ),
    "opt",
)
register_family(
    FamilySpec("gpt_neox", blocks="gpt_neox.layers", final=("gpt_neox.final_layer_norm",), head="lm_head"),
    "gpt_neox",
)


def family_of(model: nn.Module) -> FamilySpec:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in FAMILIES:
        raise UserError(
            f"model type {model_type!r} is not supported yet; supported: {', '.join(FAMILIES.names())}"
        )
    return FAMILIES.get(model_type)
