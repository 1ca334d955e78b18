"""Masked execution: run one loaded model with any subset of its decoder blocks.

No weight is copied. The model's own forward is run once per input batch with a
pre-hook on every block that records the exact arguments the model passes it (attention
mask for that block's attention type, rotary embeddings, position ids, ...). After that
any block can be called on any hidden state with its recorded arguments, so a masked
forward is ``head(block_k(...block_j(h0)))`` over the kept blocks — for every family the
same code, with the family only naming where blocks, final norm and head live.

Sub-layer units reuse the same call: while block ``i`` runs with its attention (or MLP)
skipped, that module's forward is swapped for one that returns zeros of its output shape,
so the branch adds exactly 0 to the residual stream and costs nothing. Every stacked row of
the call skips the same sub-layers.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import AbstractSet, Any, Iterable, Iterator

import torch
from torch import nn

from ..errors import UserError
from ..genome import LayerMask
from .families import FamilySpec, SubLayer, family_of, get_path, set_path
from .units import plan_units


class _StopForward(Exception):
    pass


@dataclass
class Prepared:
    """What a batch of token ids turns into before the first block: the block arguments."""

    h0: torch.Tensor  # hidden state entering block 0, (B, T, d)
    block_args: list[tuple[tuple, dict]]  # per block: positional args after hidden, kwargs
    batch_size: int
    dense_logits: torch.Tensor | None = None
    _tiled: dict[tuple[int, int], tuple[tuple, dict]] = field(default_factory=dict)

    def args_for(self, block: int, repeat: int) -> tuple[tuple, dict]:
        """The block's arguments for ``repeat`` stacked copies of the batch (cached)."""
        if repeat == 1:
            return self.block_args[block]
        key = (block, repeat)
        if key not in self._tiled:
            args, kwargs = self.block_args[block]
            tile = lambda x: _tile(x, self.batch_size, repeat)  # noqa: E731
            self._tiled[key] = (tuple(tile(a) for a in args), {k: tile(v) for k, v in kwargs.items()})
        return self._tiled[key]


def _tile(x: Any, batch: int, repeat: int) -> Any:
    """Repeat every per-example tensor along the batch dimension; leave the rest alone."""
    if isinstance(x, torch.Tensor):
        if x.ndim >= 2 and x.shape[0] == batch:
            return x.repeat(repeat, *([1] * (x.ndim - 1)))
        return x
    if isinstance(x, tuple):
        return tuple(_tile(v, batch, repeat) for v in x)
    if isinstance(x, list):
        return [_tile(v, batch, repeat) for v in x]
    if isinstance(x, dict):
        return {k: _tile(v, batch, repeat) for k, v in x.items()}
    return x


def per_layer_config_keys(config, n_blocks: int) -> list[str]:
    """Config entries that hold one value per block (``layer_types``, ``no_rope_layers``, ...).

    They must be cut to the kept blocks along with the blocks themselves; any list as long
    as the block count is taken to be one of them.
    """
    keys = []
    for key, value in vars(config).items():
        if isinstance(value, (list, tuple)) and len(value) == n_blocks and not key.startswith("_"):
            keys.append(key)
    return sorted(keys)


_NO_FORWARD = object()


def _zero_forward(module: nn.Module, sub: SubLayer):
    """A forward for ``module`` that returns zeros shaped like its real output, computing nothing.

    The output keeps the input's leading dims; its last dim is the module's ``out_features``
    (a linear such as OPT's fc1) or else the input's (attention and MLP map d -> d).
    """
    out_dim = getattr(module, "out_features", None)

    def forward(*args, **kwargs):
        x = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if x is None:
            x = kwargs["hidden_states"]
        zeros = x.new_zeros(*x.shape[:-1], out_dim or x.shape[-1])
        return zeros if sub.arity == 1 else (zeros, *([None] * (sub.arity - 1)))

    return forward


def _first_tensor(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out[0]


class MaskedModel:
    """A causal LM seen as ``embed -> blocks -> head`` so that blocks can be skipped."""

    def __init__(self, model: nn.Module, family: FamilySpec | None = None):
        self.model = model
        self.family = family or family_of(model)
        self.blocks: nn.ModuleList = self.family.block_list(model)
        self.n_blocks = len(self.blocks)
        self._output_is_tuple: bool | None = None  # learnt from the first real block call

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # --- capture ------------------------------------------------------------------------
    @torch.no_grad()
    def prepare(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, dense: bool = False) -> Prepared:
        """Record every block's arguments for this batch; with ``dense`` also keep dense logits.

        Without ``dense`` no block computes anything: each block's forward is swapped for a
        pass-through while its arguments are recorded (they never depend on the hidden
        state), and the model's forward stops after the last block, before the head.
        """
        records: list[tuple[tuple, dict] | None] = [None] * self.n_blocks
        h0: list[torch.Tensor] = []

        def make_hook(i: int):
            def hook(module, args, kwargs):
                if "hidden_states" in kwargs:
                    hidden, rest = kwargs["hidden_states"], args
                    kwargs = {k: v for k, v in kwargs.items() if k != "hidden_states"}
                else:
                    hidden, rest = args[0], args[1:]
                if i == 0:
                    h0.append(hidden)
                records[i] = (tuple(rest), dict(kwargs))
                if i == self.n_blocks - 1 and not dense:
                    raise _StopForward

            return hook

        handles = [b.register_forward_pre_hook(make_hook(i), with_kwargs=True) for i, b in enumerate(self.blocks)]
        stubbed = [] if dense else self._stub_blocks()
        logits = None
        try:
            kwargs = dict(input_ids=input_ids.to(self.device), use_cache=False)
            if attention_mask is not None:
                kwargs["attention_mask"] = attention_mask.to(self.device)
            if position_ids is not None:
                kwargs["position_ids"] = position_ids.to(self.device)
            out = self.model(**kwargs)
            logits = out.logits
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
            for block in stubbed:
                del block.forward
        if any(r is None for r in records):
            raise RuntimeError(f"{type(self.model).__name__} did not call all of its {self.n_blocks} blocks")
        return Prepared(h0[0], records, int(input_ids.shape[0]), logits)

    def _stub_blocks(self) -> list[nn.Module]:
        """Make every block a pass-through that returns what the real block would return in shape."""
        if self._output_is_tuple is None:
            return []  # first call: learn the output structure from a real dense pass
        stubbed = []
        for block in self.blocks:
            def passthrough(hidden_states=None, *args, _tuple=self._output_is_tuple, **kwargs):
                return (hidden_states,) if _tuple else hidden_states

            block.forward = passthrough
            stubbed.append(block)
        return stubbed

    @torch.no_grad()
    def verify(self, n_tokens: int = 8, tol: float = 1e-3) -> None:
        """Check once that blocks + the family's head reproduce the model's own logits.

        A model type registered for a family can still differ in its head (a logit scale,
        a projection); this catches it on load instead of scoring every mask wrongly.
        """
        vocab = getattr(self.model.config.get_text_config(), "vocab_size", 100) or 100
        ids = (torch.arange(n_tokens) % max(vocab - 2, 1) + 2).unsqueeze(0)
        prepared = self.prepare(ids, dense=True)
        ours = self.forward_masked(LayerMask.dense(self.n_blocks), prepared)
        ref = prepared.dense_logits
        err = (ours.float() - ref.float()).abs().max().item()
        scale = max(ref.float().abs().max().item(), 1.0)
        if not err <= tol * scale:
            raise UserError(f"{type(self.model).__name__}: masked execution does not reproduce the model's logits "
                            f"(max diff {err:.3g}); its family {self.family.name!r} needs a dedicated entry")

    # --- execution ----------------------------------------------------------------------
    @torch.no_grad()
    def run_block(self, block: int, hidden: torch.Tensor, prepared: Prepared,
                  skip: AbstractSet[str] = frozenset()) -> torch.Tensor:
        """Apply block ``block`` to ``hidden``, which may stack several copies of the batch.

        ``skip`` names sub-layers (``"attn"``, ``"mlp"``) whose contribution is dropped for
        this call; with all of them skipped in a pre-norm block the block is not run at all.
        """
        if skip:
            kinds = self.sublayer_names()
            if not set(skip) <= set(kinds):
                raise ValueError(f"unknown sub-layers {sorted(set(skip) - set(kinds))}; {self.family.name} has {kinds}")
            if set(skip) >= set(kinds) and self.family.empty_block_is_identity(self.model.config):
                return hidden
        repeat = hidden.shape[0] // prepared.batch_size
        args, kwargs = prepared.args_for(block, repeat)
        with self.silenced(block, skip):
            out = self.blocks[block](hidden, *args, **kwargs)
        if self._output_is_tuple is None:
            self._output_is_tuple = not isinstance(out, torch.Tensor)
        return _first_tensor(out)

    @torch.no_grad()
    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.family.head_logits(self.model, hidden)

    @torch.no_grad()
    def forward_masked(self, mask: LayerMask, prepared: Prepared) -> torch.Tensor:
        """Logits of the masked model: the kept blocks in order, then the head."""
        return self.head(self.last_hidden(mask, prepared))

    @torch.no_grad()
    def last_hidden(self, mask: LayerMask, prepared: Prepared) -> torch.Tensor:
        """The masked model's hidden state after its last kept block (before the head)."""
        self._check(mask)
        h = prepared.h0
        for i in mask.kept():
            h = self.run_block(i, h, prepared)
        return h

    @torch.no_grad()
    def forward_units(self, removed: Iterable[str], prepared: Prepared) -> torch.Tensor:
        """Logits with the named units removed (``block.I``, ``attn.I``, ``mlp.I``; see :mod:`.units`)."""
        plan = plan_units(self, removed)
        h = prepared.h0
        for i in plan.kept():
            h = self.run_block(i, h, prepared, skip=plan.skip(i))
        return self.head(h)

    # --- sub-layers ---------------------------------------------------------------------
    @property
    def supports_sublayers(self) -> bool:
        return bool(self.family.sublayers)

    def require_sublayers(self) -> None:
        if not self.supports_sublayers:
            raise UserError(f"--units sublayer: {self.family.name} blocks cannot be split into attention and MLP "
                            f"sub-layers; use --units block")

    def sublayer_names(self) -> tuple[str, ...]:
        """The sub-layer kinds of every block, in execution order (``("attn", "mlp")``)."""
        self.require_sublayers()
        return tuple(self.family.sublayers)

    @contextlib.contextmanager
    def silenced(self, block: int, skip: AbstractSet[str]) -> Iterator[None]:
        """While inside, the named sub-layers of block ``block`` output zeros without computing."""
        stubbed: list[tuple[nn.Module, Any]] = []
        try:
            for kind in sorted(skip):
                sub = self.family.sublayers[kind]
                for path in sub.silence:
                    module = get_path(self.blocks[block], path)
                    # an instance-level forward (accelerate's offload hook) is put back, not deleted
                    stubbed.append((module, module.__dict__.get("forward", _NO_FORWARD)))
                    module.forward = _zero_forward(module, sub)
            yield
        finally:
            for module, previous in reversed(stubbed):
                if previous is _NO_FORWARD:
                    del module.forward
                else:
                    module.forward = previous

    @contextlib.contextmanager
    def applied_units(self, removed: Iterable[str]) -> Iterator[nn.Module]:
        """Like :meth:`applied`, for unit names: the model as its export will be.

        Dropped blocks leave the block list; a removed sub-layer of a kept block has its
        output projection's weight and bias replaced by zeros (the live parameters are put
        back on exit, never written to), so ``generate`` with the KV cache behaves as the
        reloaded checkpoint does.
        """
        from .export import zeroed_sublayers

        plan = plan_units(self, removed)
        with zeroed_sublayers(self, plan), self.applied(LayerMask.from_removed(self.n_blocks, plan.dropped)) as model:
            yield model

    def _check(self, mask: LayerMask) -> None:
        if mask.n_units != self.n_blocks:
            raise ValueError(f"mask has {mask.n_units} units, model has {self.n_blocks} blocks")

    # --- the model's own forward, masked -------------------------------------------------
    @contextlib.contextmanager
    def applied(self, mask: LayerMask) -> Iterator[nn.Module]:
        """Temporarily make ``self.model`` the pruned model (for ``generate``, ``model(...)``).

        The block list, ``num_hidden_layers``, ``layer_types`` and every block's
        ``layer_idx`` are renumbered for the duration, as export does permanently, so the
        KV cache indexes the kept blocks 0..n-1. Everything is restored on exit.
        """
        self._check(mask)
        from .export import renumber_in_place

        kept = list(mask.kept())
        config = self.model.config
        per_layer = per_layer_config_keys(config, self.n_blocks)
        saved_cfg = {k: getattr(config, k) for k in ("num_hidden_layers", *per_layer)}
        saved_idx = renumber_in_place(self.family, self.blocks, kept)  # returns restore info
        set_path(self.model, self.family.blocks, nn.ModuleList([self.blocks[i] for i in kept]))
        config.num_hidden_layers = len(kept)
        for key in per_layer:  # layer_types, SmolLM3's no_rope_layers, ...: one entry per block
            value = saved_cfg[key]
            setattr(config, key, type(value)(value[i] for i in kept))
        try:
            yield self.model
        finally:
            set_path(self.model, self.family.blocks, self.blocks)
            for k, v in saved_cfg.items():
                setattr(config, k, v)
            for obj, attr, value in saved_idx:
                setattr(obj, attr, value)
