"""The Python API behind every CLI command: load, evaluate, search, export.

The CLI only parses arguments and calls these; scripts and notebooks call them directly.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Sequence


from .errors import UserError
from .evaluator import Evaluator, LoadedModel
from .genome import LayerMask, parse_index_list


def load(model: str = "smollm2-135m", device: str = "auto", dtype: str = "float32") -> LoadedModel:
    from .models.loading import load_model
    from .models.masked import MaskedModel

    m, tok, source = load_model(model, device=device, dtype=dtype)
    masked = MaskedModel(m)
    masked.verify()
    return LoadedModel(m, tok, masked, source)


def mask_from_removed(lm: LoadedModel, remove: str | Sequence[int]) -> LayerMask:
    removed = parse_index_list(remove, lm.n_blocks, "block index")
    if len(removed) >= lm.n_blocks:
        raise UserError(f"cannot remove all {lm.n_blocks} blocks")
    return LayerMask.from_removed(lm.n_blocks, removed)


def make_evaluator(lm: LoadedModel, objective: str = "ppl", data: str | None = None, tasks: str | None = None,
                   split: str = "calib", seed: int = 0, prefix_sharing: bool = True, cache_mb: float | None = None,
                   memory_mb: float | None = None, **options) -> Evaluator:
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


def default_study_name(model: str, objective: str, algo: str, k: int, seed: int) -> str:
    return f"{Path(model).name}-{objective}-{algo}-k{k}-seed{seed}"


def search(lm: LoadedModel, evaluator: Evaluator, algo: str, remove: int | None = None,
           sparsity: float | None = None, protect: str | Sequence[int] | None = None,
           budget: int | None = 200, seconds: float | None = None, seed: int = 0,
           storage: str | None = None, study: str | None = None, output: str | None = None,
           progress: bool = True, algo_options: dict | None = None) -> dict:
    """Run one searcher against the evaluator; record every evaluation; return result.json's dict."""
    from .genome import Constraint
    from .optim import SEARCHERS, Budget, run_search
    from .tracking import DEFAULT_STORAGE, EvaluatorTracker, StudyTracker

    constraint = Constraint.build(lm.n_blocks, remove=remove, sparsity=sparsity, protect=protect)
    limits = Budget(budget, seconds)
    if output:
        _check_writable(output)
    factory = SEARCHERS.get(algo)
    options = dict(algo_options or {})
    if getattr(factory, "needs_block_stats", False):
        options["stats"] = evaluator.block_stats()
    try:
        searcher = factory(constraint, seed=seed, **options)
    except TypeError as exc:
        raise UserError(f"bad option for --algo {algo}: {exc}") from None
    objective_name = evaluator.objective.name
    tracker = None
    if storage != "none":
        tracker = StudyTracker(storage or DEFAULT_STORAGE,
                               study or default_study_name(lm.source, objective_name, algo, constraint.k, seed),
                               evaluator.direction, lm.n_blocks,
                               attrs=dict(model=lm.source, objective=objective_name, algo=algo, k=constraint.k, seed=seed))
        for key, raw in tracker.previous().items():
            evaluator.memo[(key, None)] = raw
    dense = evaluator.dense_value()
    bar = _progress_bar(budget, f"{algo}", enabled=progress)
    start = time.perf_counter()

    def on_progress(n, best):
        if bar is not None:
            bar.n = min(n, bar.total) if bar.total else n
            shown = best if evaluator.direction == "minimize" else -best
            bar.set_postfix_str(f"best {objective_name}={shown:.4g}")
            bar.refresh()

    try:
        res = run_search(searcher, evaluator, limits, EvaluatorTracker(tracker, evaluator) if tracker else None,
                         progress=on_progress)
    finally:
        if bar is not None:
            bar.close()
    raw = evaluator.raw(res.best)
    result = {
        "removed_layers": list(res.best.removed()),
        "kept_layers": list(res.best.kept()),
        "fitness": raw,
        "dense_fitness": dense,
        "objective": objective_name,
        "direction": evaluator.direction,
        "algo": algo,
        "evaluations": res.evaluations,
        "seed": seed,
        "model": lm.source,
        "n_blocks": lm.n_blocks,
        "remove": constraint.k,
        "protect": list(constraint.protect),
        "wall_seconds": round(time.perf_counter() - start, 3),
        "history": [[n, (b if evaluator.direction == "minimize" else -b)] for n, b in res.history],
    }
    if res.extra.get("interrupted"):
        result["interrupted"] = True  # best so far; rerun the same command to resume
    if tracker is not None:
        result["study"] = tracker.study.study_name
        result["storage"] = storage or DEFAULT_STORAGE
    if output:
        write_json(output, result)
    return result


def _progress_bar(total, desc, enabled=True):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="eval", dynamic_ncols=True)


def _check_writable(path: str) -> None:
    p = Path(path).expanduser()
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise UserError(f"--output {path} is a directory")
    if not parent.exists():
        raise UserError(f"--output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UserError(f"--output {path} is not writable")


def write_json(path: str, data: dict) -> None:
    """Write atomically, so an interrupted run never leaves half a result.json."""
    p = Path(path).expanduser()
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, p)


def evaluate_mask(lm: LoadedModel, remove: str | Sequence[int] | None, objectives: Sequence[str],
                  data: str | None = None, tasks: str | None = None, split: str = "eval", seed: int = 0,
                  **options) -> dict:
    """Score one mask (and the dense model) on held-out data for each objective."""
    mask = mask_from_removed(lm, remove or [])
    rows = {}
    for spec in objectives:
        ev = make_evaluator(lm, spec, data=data, tasks=tasks, split=split, seed=seed, **options)
        row = {"pruned": ev.raw(mask), "dense": ev.dense_value(), "direction": ev.direction}
        report = getattr(ev.objective, "report", None)
        if callable(report):
            keys = [(mask.key(), b.index) for b in ev.objective.batches(None)]
            row["details"] = report([ev.partials[k] for k in keys])
        rows[ev.objective.name] = row
    return {"removed_layers": list(mask.removed()), "model": lm.source, "split": split, "objectives": rows}
