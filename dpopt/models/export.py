"""Export a pruned model as a plain ``transformers`` checkpoint.

The folder must load with ``AutoModelForCausalLM.from_pretrained(DIR)`` and no dpopt
import, and ``generate()`` must work on it. That means: the kept blocks renumbered 0..n-1
(``layer_idx`` inside each block, which the KV cache indexes by), ``num_hidden_layers`` and
``layer_types`` rewritten, GGUF quantisation metadata dropped, the tokenizer beside it, and
the removed indices recorded in the config so the result says where it came from.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

from torch import nn

from ..errors import UserError
from ..genome import LayerMask
from .families import FamilySpec, get_path


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
    """Write the pruned model to ``out`` atomically: a temporary sibling, then a rename."""
    out = prepare_out_dir(out, force)
    model = masked.model
    strip_quantization(model)
    tmp = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        with masked.applied(mask):
            model.config.dpopt_removed_layers = list(mask.removed())
            model.config.dpopt_original_num_hidden_layers = mask.n_units
            model.config.dpopt_source = str(source)
            try:
                model.save_pretrained(tmp)
            finally:
                for k in ("dpopt_removed_layers", "dpopt_original_num_hidden_layers", "dpopt_source"):
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
