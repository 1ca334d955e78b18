"""Where each architecture keeps its decoder blocks, final norm and output head.

Masked execution needs only these three places: the blocks are called one by one with the
arguments the model itself passes them (captured once, see :mod:`dpopt.models.masked`), and
the head turns the last hidden state into logits. Adding a family is one ``FamilySpec`` and
one decorator; ``model_type`` strings from ``config.json`` are the registry keys.

For attention/MLP sub-layer units a family also names, per block, each residual branch
(:class:`SubLayer`): which modules to silence so the branch adds exactly 0 to the residual
stream, which output projections to zero on export so plain ``transformers`` adds 0 too,
and which modules' parameters the branch owns.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
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
class SubLayer:
    """One residual branch of a block (attention or MLP), as masked execution and export see it.

    Silencing replaces each ``silence`` module's forward by one that returns zeros of its
    output shape without computing anything; every family's block then adds 0 (or, for a
    branch with a post-norm such as Gemma2/3 and OLMo2, ``RMSNorm(0) = 0``) to the residual.
    Export cannot replace code, so it zeroes the weight and bias of the ``zero`` projections
    instead, which makes the branch output exactly the same 0 in the reloaded model.
    """

    silence: tuple[str, ...]  # module paths inside a block replaced by zero outputs when skipped
    zero: tuple[str, ...]  # output projections (weight and bias) zeroed on export
    params: tuple[str, ...]  # modules whose parameters belong to this branch (absent paths ignored)
    arity: int = 1  # the silenced module returns a tuple of this length (output, None, ...); 1: a tensor


@dataclass(frozen=True)
class PatchPoint:
    """Where a linear patch for the removed span after a block acts and is folded (see :mod:`.patch`).

    ``module`` is the last module of the block's MLP branch: its output, times ``scale``,
    is what the block adds to the residual stream, so a map applied to that output changes
    only the branch's term and can be folded into the module's weights exactly. A linear
    layer takes a full matrix; an elementwise norm (``diagonal``, Gemma2/3 and OLMo2's
    post-feedforward RMSNorm) only a per-channel scale, since a matrix cannot pass through
    the norm. ``norm_offset``: the norm multiplies by ``offset + weight`` (Gemma's 1 + w).
    """

    module: str
    diagonal: bool = False
    norm_offset: float = 0.0
    scale: Callable[[object], float] = lambda config: 1.0


def _llama_sublayers(attn: str = "self_attn", mlp: str = "mlp", attn_norms=("input_layernorm",),
                     mlp_norms=("post_attention_layernorm",), o_proj: str = "o_proj",
                     down_proj: str = "down_proj") -> dict[str, SubLayer]:
    return {
        "attn": SubLayer((attn,), (f"{attn}.{o_proj}",), (*attn_norms, attn), arity=2),
        "mlp": SubLayer((mlp,), (f"{mlp}.{down_proj}",), (*mlp_norms, mlp)),
    }


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
    # the residual branches of a block, by unit kind ("attn", "mlp"); None: they cannot be separated
    sublayers: dict[str, SubLayer] | None = field(default=None, compare=False)
    # whether a block with every branch silenced is the identity (pre-norm); False for post-norm
    # blocks (OPT-350m style), whose norm after the residual add still acts on the stream
    empty_block_is_identity: Callable[[object], bool] = lambda config: True
    # where a linear patch for a removed span folds into the block before it; None: nowhere exact
    patch_point: Callable[[object], PatchPoint | None] = lambda config: None
    # the modules whose outputs add up to the hidden state entering block 0 (a span from block 0
    # folds its patch there); their weight rows are vectors of the residual stream
    embeddings: Callable[[nn.Module], tuple[str, ...]] = lambda model: ("model.embed_tokens",)

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


_LLAMA_SUBLAYERS = _llama_sublayers()
_DOWN_PROJ = PatchPoint("mlp.down_proj")
_LLAMA_LIKE = FamilySpec("llama-like", blocks="model.layers", final=("model.norm",), head="lm_head",
                         sublayers=_LLAMA_SUBLAYERS, patch_point=lambda c: _DOWN_PROJ)
register_family(_LLAMA_LIKE, "llama", "mistral", "qwen2", "qwen3", "phi3", "smollm3")
# OLMo2 normalises each branch's output (no input norms): RMSNorm(0) = 0 keeps a silenced branch at 0
register_family(
    replace(_LLAMA_LIKE, name="olmo2",
            sublayers=_llama_sublayers(attn_norms=("post_attention_layernorm",),
                                       mlp_norms=("post_feedforward_layernorm",)),
            patch_point=lambda c: PatchPoint("post_feedforward_layernorm", diagonal=True)),
    "olmo2",
)
register_family(
    FamilySpec("granite", blocks="model.layers", final=("model.norm",), head="lm_head",
               logit_divisor=lambda c: getattr(c, "logits_scaling", None), sublayers=_LLAMA_SUBLAYERS,
               patch_point=lambda c: PatchPoint("mlp.down_proj", scale=lambda c: getattr(c, "residual_multiplier", 1.0))),
    "granite",
)
_GEMMA = FamilySpec(
    "gemma",
    blocks="model.layers",
    final=("model.norm",),
    head="lm_head",
    logit_softcap=lambda c: getattr(c, "final_logit_softcapping", None),
    sublayers=_LLAMA_SUBLAYERS,
    patch_point=lambda c: _DOWN_PROJ,
)
register_family(_GEMMA, "gemma")
# Gemma2/3 normalise each branch's output before the residual add (``post_attention_layernorm``
# acts on the attention output there, unlike Gemma and Llama): RMSNorm(0) = 0, so silencing is exact
register_family(
    replace(_GEMMA, name="gemma2",
            sublayers=_llama_sublayers(attn_norms=("input_layernorm", "post_attention_layernorm"),
                                       mlp_norms=("pre_feedforward_layernorm", "post_feedforward_layernorm")),
            patch_point=lambda c: PatchPoint("post_feedforward_layernorm", diagonal=True, norm_offset=1.0)),
    "gemma2",
    "gemma3_text",
)
register_family(
    FamilySpec("gpt2", blocks="transformer.h", final=("transformer.ln_f",), head="lm_head",
               sublayers={"attn": SubLayer(("attn",), ("attn.c_proj",), ("ln_1", "attn"), arity=2),
                          "mlp": SubLayer(("mlp",), ("mlp.c_proj",), ("ln_2", "mlp"))},
               patch_point=lambda c: PatchPoint("mlp.c_proj"),
               embeddings=lambda m: ("transformer.wte", "transformer.wpe")),
    "gpt2",
)
# OPT's MLP is inline in the block (fc1 -> activation -> fc2), so both linears are silenced;
# with ``do_layer_norm_before=False`` (opt-350m) the norms act after the residual add and stay
register_family(
    FamilySpec(
        "opt",
        blocks="model.decoder.layers",
        final=("model.decoder.final_layer_norm", "model.decoder.project_out"),
        head="lm_head",
        sublayers={"attn": SubLayer(("self_attn",), ("self_attn.out_proj",), ("self_attn_layer_norm", "self_attn"),
                                    arity=2),
                   "mlp": SubLayer(("fc1", "fc2"), ("fc2",), ("final_layer_norm", "fc1", "fc2"))},
        empty_block_is_identity=lambda c: bool(getattr(c, "do_layer_norm_before", True)),
        # post-norm OPT normalises the residual stream after the MLP's add: no weight takes the patch
        patch_point=lambda c: PatchPoint("fc2") if getattr(c, "do_layer_norm_before", True) else None,
        # with project_in the token embeddings reach the stream through it: it takes the fold instead
        embeddings=lambda m: ("model.decoder.project_in" if m.model.decoder.project_in is not None
                              else "model.decoder.embed_tokens", "model.decoder.embed_positions"),
    ),
    "opt",
)
# GPT-NeoX with ``use_parallel_residual`` computes h + attn(ln1(h)) + mlp(ln2(h)): removing a
# branch drops its term and leaves the other's input unchanged; sequential NeoX is like Llama
register_family(
    FamilySpec("gpt_neox", blocks="gpt_neox.layers", final=("gpt_neox.final_layer_norm",), head="lm_head",
               sublayers={"attn": SubLayer(("attention",), ("attention.dense",), ("input_layernorm", "attention"),
                                           arity=2),
                          "mlp": SubLayer(("mlp",), ("mlp.dense_4h_to_h",), ("post_attention_layernorm", "mlp"))},
               patch_point=lambda c: PatchPoint("mlp.dense_4h_to_h"), embeddings=lambda m: ("gpt_neox.embed_in",)),
    "gpt_neox",
)


def family_of(model: nn.Module) -> FamilySpec:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in FAMILIES:
        raise UserError(
            f"model type {model_type!r} is not supported yet; supported: {', '.join(FAMILIES.names())}"
        )
    return FAMILIES.get(model_type)
