"""What healing trains (``--train``) and how (``--method``): two small registries.

``--train`` names parts of the pruned model, comma-separated: ``all``, ``last:N`` and
``first:N`` (the last or first N kept blocks), ``head`` (the final norm and the output
projection). "Reassessing Layer Pruning" finds that fine-tuning only the last few blocks
and the head recovers about as much as training everything, at a fraction of the optimizer
state, so ``last:3,head`` is worth a try on a model that does not fit twice in memory.

A model with tied embeddings shares one matrix between its input embedding and output
projection: training ``head`` then trains the embedding too; there is no way around it.

The output projections an export zeroed for a removed attention or MLP sub-layer are never
trained: a gradient would bring back the branch the mask removed.

``--method``: ``distill`` trains the chosen parameters themselves; ``lora`` puts low-rank
adapters (``peft``) on every linear layer of the chosen blocks, trains those (and the final
norm where ``head`` is chosen), and merges them into the weights at the end, so the export
is a plain checkpoint either way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from torch import nn

from ..errors import UserError
from ..models.families import FamilySpec, get_path
from ..registry import Registry


@dataclass(frozen=True)
class Part:
    """A ``--train`` item: the kept blocks it names (new indices), and whether it names the head."""

    blocks: frozenset[int]
    head: bool = False


# each takes the text after ``name:`` (None without a colon) and the pruned model's block count
# (None while only the names are checked, before the model loads)
PARTS: Registry[Callable[[str | None, int | None], Part]] = Registry("--train part")


def _count(arg: str | None, name: str, n_blocks: int | None) -> int:
    if arg is None or not arg.isdigit() or int(arg) < 1:
        raise UserError(f"--train {name}:N needs a number of blocks N >= 1, got {name}:{arg or ''}")
    if n_blocks is not None and int(arg) > n_blocks:
        raise UserError(f"--train {name}:{arg}: the pruned model keeps only {n_blocks} blocks")
    return int(arg)


def _no_arg(name: str, arg: str | None) -> None:
    if arg is not None:
        raise UserError(f"--train {name} takes no ':{arg}'")


@PARTS.register("all")
def _all(arg: str | None, n_blocks: int | None) -> Part:
    _no_arg("all", arg)
    return Part(frozenset(range(n_blocks or 0)), head=True)


@PARTS.register("last")
def _last(arg: str | None, n_blocks: int | None) -> Part:
    k = _count(arg, "last", n_blocks)
    return Part(frozenset(range(n_blocks - k, n_blocks)) if n_blocks is not None else frozenset())


@PARTS.register("first")
def _first(arg: str | None, n_blocks: int | None) -> Part:
    k = _count(arg, "first", n_blocks)
    return Part(frozenset(range(k)) if n_blocks is not None else frozenset())


@PARTS.register("head")
def _head(arg: str | None, n_blocks: int | None) -> Part:
    _no_arg("head", arg)
    return Part(frozenset(), head=True)


def parse_train(spec: str, n_blocks: int | None = None) -> Part:
    """``"last:3,head"`` -> the union of its parts. ``n_blocks=None`` checks the names only
    (before the model loads); the counts are checked against the pruned model later."""
    items = [s.strip() for s in str(spec).split(",") if s.strip()]
    if not items:
        raise UserError("--train names nothing to train (e.g. all, or last:3,head)")
    blocks: set[int] = set()
    head = False
    for item in items:
        name, sep, arg = item.partition(":")
        if name not in PARTS:
            raise UserError(f"unknown --train part {name!r}; choose from: "
                            + ", ".join(f"{n}:N" if n in ("first", "last") else n for n in PARTS.names()))
        part = PARTS.get(name)(arg if sep else None, n_blocks)
        blocks |= part.blocks
        head = head or part.head
    return Part(frozenset(blocks), head)


def head_modules(family: FamilySpec, model: nn.Module) -> list[nn.Module]:
    """The final norm (and projections) and the output head, as the family names them."""
    out = []
    for path in (*family.final, family.head):
        try:
            out.append(get_path(model, path))
        except AttributeError:
            continue
    return out


def selected_modules(family: FamilySpec, model: nn.Module, part: Part) -> list[nn.Module]:
    blocks = family.block_list(model)
    mods: list[nn.Module] = [blocks[i] for i in sorted(part.blocks)]
    if part.head:
        mods += head_modules(family, model)
    return mods


def tied_head(model: nn.Module) -> bool:
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    return out is not None and inp is not None and out.weight is inp.weight


# --- methods -----------------------------------------------------------------------------------
class Method:
    """How the chosen parts are trained: ``wrap`` returns the module to train and its trainable
    parameters; ``unwrap`` returns the plain model to export after training."""

    name = ""

    def wrap(self, model: nn.Module, family: FamilySpec, part: Part, frozen: Sequence[nn.Module],
             seed: int) -> tuple[nn.Module, list[tuple[str, nn.Parameter]]]:
        raise NotImplementedError

    def unwrap(self, module: nn.Module) -> nn.Module:
        return module


METHODS: Registry[type[Method]] = Registry("--method")


def _frozen_ids(frozen: Iterable[nn.Module]) -> set[int]:
    return {id(p) for m in frozen for p in m.parameters(recurse=True)}


def _trainable(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in module.named_parameters() if p.requires_grad]


@METHODS.register("distill")
class Distill(Method):
    """Train the chosen parts' own weights."""

    name = "distill"

    def wrap(self, model, family, part, frozen, seed):
        chosen = {id(p) for m in selected_modules(family, model, part) for p in m.parameters()} - _frozen_ids(frozen)
        for p in model.parameters():
            p.requires_grad_(id(p) in chosen)
        return model, _trainable(model)


LORA_INSTALL = "pip install 'dpopt[repair]'  (or: pip install peft)"


@METHODS.register("lora")
class LoRA(Method):
    """Low-rank adapters on the chosen blocks' linear layers, merged into the weights at the end."""

    name = "lora"

    def __init__(self, rank: int = 16, alpha: float = 32.0):
        self.rank, self.alpha = rank, alpha

    @staticmethod
    def require() -> None:
        try:
            import peft  # noqa: F401
        except ImportError:
            raise UserError(f"--method lora needs peft, which is not installed: {LORA_INSTALL}") from None

    def wrap(self, model, family, part, frozen, seed):
        import torch
        from peft import LoraConfig, get_peft_model

        self.require()
        skip = _frozen_ids(frozen)
        blocks = family.block_list(model)
        roots = [blocks[i] for i in sorted(part.blocks)]
        head = get_path(model, family.head) if part.head else None
        if head is not None and not tied_head(model):  # a tied head's adapter would move the embedding too
            roots.append(head)
        root_ids = {id(r) for r in roots}
        targets = []
        for name, mod in model.named_modules():
            inside = any(id(m) in root_ids for m in _ancestors(model, name))
            if inside and isinstance(mod, nn.Linear) and id(mod.weight) not in skip:
                targets.append(name)
        if not targets:
            raise UserError("--method lora: the chosen --train parts hold no linear layer to adapt (a tied head "
                            "is the embedding); choose blocks too, e.g. last:3,head, or use --method distill")
        torch.manual_seed(seed)  # the adapters' initial values
        config = LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=0.0, target_modules=targets, bias="none")
        wrapped = get_peft_model(model, config)
        if part.head:  # the final norm is small: train it in full
            for mod in head_modules(family, model)[:-1]:
                for p in mod.parameters():
                    p.requires_grad_(True)
        return wrapped, _trainable(wrapped)

    def unwrap(self, module):
        return module.merge_and_unload()


def _ancestors(model: nn.Module, name: str) -> list[nn.Module]:
    """``name``'s module and every module above it."""
    out, mod = [model], model
    for part in name.split(".") if name else []:
        mod = getattr(mod, part)
        out.append(mod)
    return out


def make_method(name: str, lora_rank: int = 16, lora_alpha: float = 32.0) -> Method:
    cls = METHODS.get(name)
    if cls is LoRA:
        LoRA.require()
        return LoRA(lora_rank, lora_alpha)
    return cls()
