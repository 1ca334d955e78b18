"""Export a pruned model as a plain ``transformers`` checkpoint.

The folder must load with ``AutoModelForCausalLM.from_pretrained(DIR)`` and no dpopt
import, and ``generate()`` must work on it. That means: the kept blocks renumbered 0..n-1
(``layer_idx`` inside each block, which the KV cache indexes by), ``num_hidden_layers`` and
``layer_types`` rewritten, GGUF quantisation metadata dropped, the tokenizer beside it, and
the removed indices recorded in the config so the result says where it came from.

A removed attention or MLP sub-layer of a kept block cannot be left out of the code that
plain ``transformers`` runs, and none of the registered families' configs has a per-layer
head count or intermediate size to express it; so its output projection's weight and bias
are saved as zeros, which makes the branch add exactly 0, as masked execution does. The
zeroed weights are still stored and still computed: only whole blocks make the exported
model smaller and faster (``benchmarks/export_speed.py`` measures it). A block whose
sub-layers are all removed is dropped as a whole block where that is exact (pre-norm).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
from torch import nn

from ..errors import UserError
from ..genome import LayerMask
from .families import FamilySpec, get_path
from .units import plan_units


def renumber_in_place(family: FamilySpec, blocks: nn.ModuleList, kept: Sequence[int]) -> list[tuple[object, str, int]]:
    """Give the kept blocks the indices 0..n-1; return what is needed to undo it."""
    undo: list[tuple[object, str, int]] = []
    for new_idx, old_idx in enumerate(kept):
        block = blocks[old_idx]
        for path in family.layer_idx_attrs:
            try:
                owner_path, _, attr = path.rpartition(".")
                owner = get_path(block, owner_path) if owner_path else block
            except AttributeError:
                continue
            if hasattr(owner, attr) and isinstance(getattr(owner, attr), int):
                undo.append((owner, attr, getattr(owner, attr)))
                setattr(owner, attr, new_idx)
    return undo


@contextlib.contextmanager
def zeroed_sublayers(masked, plan) -> Iterator[None]:
    """While inside, the output projections of ``plan``'s silenced sub-layers hold zero weights.

    The parameters are swapped for zero ones and the originals put back on exit, so the
    loaded weights are never written to (a failure mid-way leaves the model intact).
    """
    swapped: list[tuple[nn.Module, str, nn.Parameter]] = []
    try:
        for block, kinds in sorted(plan.silenced.items()):
            for kind in sorted(kinds):
                for path in masked.family.sublayers[kind].zero:
                    module = get_path(masked.blocks[block], path)
                    for name in ("weight", "bias"):
                        param = getattr(module, name, None)
                        if isinstance(param, nn.Parameter):
                            swapped.append((module, name, param))
                            setattr(module, name, nn.Parameter(torch.zeros_like(param), requires_grad=False))
        yield
    finally:
        for module, name, param in reversed(swapped):
            setattr(module, name, param)


def strip_quantization(model: nn.Module) -> None:
    """A GGUF-loaded model is already dequantised; drop the metadata that blocks saving it."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        try:
            delattr(model.config, "quantization_config")
        except AttributeError:
            model.config.__dict__.pop("quantization_config", None)
    if hasattr(model, "is_quantized"):
        try:
            model.is_quantized = False
        except AttributeError:
            pass


def prepare_out_dir(out: str | os.PathLike, force: bool = False) -> Path:
    """Check ``out`` before any work so a bad path fails fast and nothing is half-written."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"--out {out} is not empty (pass --force to replace it)")
    parent = out.parent if not out.exists() else out
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"--out {out} is not writable")
    return out


def export_pruned(masked, tokenizer, mask: LayerMask, out: str | os.PathLike, source: str = "",
                  force: bool = False) -> Path:
    """Write the model with ``mask``'s removed blocks dropped; see :func:`export_pruned_units`."""
    masked._check(mask)
    return export_pruned_units(masked, tokenizer, [f"block.{i}" for i in mask.removed()], out, source, force)


_DPOPT_KEYS = ("dpopt_removed_layers", "dpopt_removed_units", "dpopt_original_num_hidden_layers", "dpopt_source",
               "dpopt_patch")


def export_pruned_units(masked, tokenizer, removed: Iterable[str], out: str | os.PathLike, source: str = "",
                        force: bool = False, patches: Sequence = ()) -> Path:
    """Write the model with the named units removed to ``out`` atomically: a temporary sibling, then a rename.

    ``removed`` holds ``block.I``, ``attn.I`` and ``mlp.I`` names (original indices). The
    config records ``dpopt_removed_layers`` (the blocks dropped outright) and
    ``dpopt_removed_units`` (every removed unit, canonical names). ``patches``: fitted span
    patches (:mod:`.patch`), folded into the weights; ``dpopt_patch`` says where each went.
    """
    from .patch import folded

    plan = plan_units(masked, removed)  # a bad unit name fails before anything is written
    out = prepare_out_dir(out, force)
    model = masked.model
    strip_quantization(model)
    tmp = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        with folded(masked, patches) as notes, masked.applied_units(plan.names()):
            if patches:
                model.config.dpopt_patch = notes
            model.config.dpopt_removed_layers = list(plan.dropped)
            model.config.dpopt_removed_units = plan.names()
            model.config.dpopt_original_num_hidden_layers = masked.n_blocks
            model.config.dpopt_source = str(source)
            try:
                model.save_pretrained(tmp)
            finally:
                for k in _DPOPT_KEYS:
                    model.config.__dict__.pop(k, None)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except OSError as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
