"""The Python API behind every CLI command: load, evaluate, search, export.

The CLI only parses arguments and calls these; scripts and notebooks call them directly.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import UserError
from .evaluator import Evaluator, LoadedModel
from .genome import LayerMask, parse_index_list


def load(model: str = "smollm2-135m", device: str = "auto", dtype: str = "float32") -> LoadedModel:
    from .models.loading import load_model
    from .models.masked import MaskedModel

    m, tok, source = load_model(model, device=device, dtype=dtype)
    return LoadedModel(m, tok, MaskedModel(m), source)


def mask_from_removed(lm: LoadedModel, remove: str | Sequence[int]) -> LayerMask:
    removed = parse_index_list(remove, lm.n_blocks, "block index")
    if len(removed) >= lm.n_blocks:
        raise UserError(f"cannot remove all {lm.n_blocks} blocks")
    return LayerMask.from_removed(lm.n_blocks, removed)


def make_evaluator(lm: LoadedModel, objective: str = "ppl", data: str | None = None, tasks: str | None = None,
                   split: str = "calib", seed: int = 0, prefix_sharing: bool = True, cache_mb: float = 256,
                   memory_mb: float = 1024, **options) -> Evaluator:
    """Build the objective on its data split, prepare it once, and wrap it in the evaluator."""
    from .objectives import build_objective

    options = {k: v for k, v in options.items() if v is not None}
    obj, obj_data = build_objective(objective, data=data, tasks=tasks, split=split, seed=seed, **options)
    obj.prepare(lm, obj_data)
    return Evaluator(lm, obj, prefix_sharing=prefix_sharing, cache_mb=cache_mb, memory_mb=memory_mb)


def export(lm: LoadedModel, remove: str | Sequence[int], out: str, force: bool = False) -> Path:
    from .models.export import export_pruned, prepare_out_dir

    mask = mask_from_removed(lm, remove)
    prepare_out_dir(out, force)
    return export_pruned(lm.masked, lm.tokenizer, mask, out, source=lm.source, force=force)
