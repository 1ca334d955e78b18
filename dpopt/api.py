"""The Python API behind every CLI command: load, evaluate, search, export.

The CLI only parses arguments and calls these; scripts and notebooks call them directly.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Sequence


from .data import DEFAULT_DATA_SEED, DEFAULT_TEXT
from .errors import UserError
from .evaluator import Evaluator, LoadedModel
from .genome import LayerMask, parse_index_list
from .objectives import DEFAULT_TASKS
from .result import SearchResult, write_json  # noqa: F401  (write_json: public helper)
from .tracking import Fingerprint


def load(model: str = "smollm2-135m", device: str = "auto", dtype: str = "float32") -> LoadedModel:
    from .models.loading import load_model
    from .models.masked import MaskedModel

    m, tok, source, weights = load_model(model, device=device, dtype=dtype)
    masked = MaskedModel(m)
    masked.verify()
    lm = LoadedModel(m, tok, masked, source, path=weights)
    lm.spec = _portable(model)  # as the user named it: what a worker loads again (dpopt worker)
    return lm


def _portable(spec: str | None) -> str | None:
    """A local path made absolute (a worker may start elsewhere); a zoo name or hub id as given."""
    if spec is None:
        return None
    p = Path(spec).expanduser()
    return str(p.resolve()) if p.exists() else spec


def mask_from_removed(lm: LoadedModel, remove: str | Sequence[int]) -> LayerMask:
    removed = parse_index_list(remove, lm.n_blocks, "block index")
    if len(removed) >= lm.n_blocks:
        raise UserError(f"cannot remove all {lm.n_blocks} blocks")
    return LayerMask.from_removed(lm.n_blocks, removed)


def make_evaluator(lm: LoadedModel, objective: str = "ppl", data: str | None = None, tasks: str | None = None,
                   split: str = "calib", data_seed: int = DEFAULT_DATA_SEED, prefix_sharing: bool = True,
                   cache_mb: float | None = None, memory_mb: float | None = None, **options) -> Evaluator:
    """Build the objective on its data split, prepare it once, and wrap it in the evaluator.

    The evaluator's fingerprint names everything that decides its values, so a study never
    mixes values measured under other settings.
    """
    from .objectives import build_objective, uses_tasks

    options = {k: v for k, v in options.items() if v is not None}
    obj, obj_data = build_objective(objective, data=data, tasks=tasks, split=split, seed=data_seed, **options)
    obj.prepare(lm, obj_data)
    text, mc = uses_tasks(objective)
    settings = {
        "model": lm.identity(),
        "dtype": str(lm.masked.dtype).replace("torch.", ""),
        "objective": obj.name,
        "options": obj.settings(),
        "data": (data or DEFAULT_TEXT) if text else None,
        "tasks": (tasks or DEFAULT_TASKS) if mc else None,
        "split": split,
        "data_seed": data_seed,
    }
    ev = Evaluator(lm, obj, prefix_sharing=prefix_sharing, cache_mb=cache_mb, memory_mb=memory_mb,
                   fingerprint=Fingerprint(settings))
    # the recipe: how `dpopt worker` rebuilds this evaluator on another process or machine
    ev.recipe = dict(model=lm.spec or lm.source, dtype=settings["dtype"], objective=objective,
                     data=_portable(data), tasks=_portable(tasks), split=split, data_seed=data_seed,
                     prefix_sharing=prefix_sharing, options=options)
    return ev


def export(lm: LoadedModel, remove: str | Sequence[int], out: str, force: bool = False) -> Path:
    from .models.export import export_pruned, prepare_out_dir

    mask = mask_from_removed(lm, remove)
    prepare_out_dir(out, force)
    return export_pruned(lm.masked, lm.tokenizer, mask, out, source=lm.source, force=force)


def default_study_name(lm: LoadedModel, evaluator: Evaluator, algo: str, k: int, seed: int) -> str:
    """Named after the settings, so a changed setting opens a new study instead of a stale one."""
    return f"{Path(lm.source).name}-{evaluator.objective.name}-{algo}-k{k}-seed{seed}-{evaluator.fingerprint.short}"


def open_record(lm: LoadedModel, evaluator: Evaluator, algo: str, k: int, seed: int, storage: str | None,
                study: str | None, extra: dict | None = None):
    """The study a run records into (None with ``storage="none"``); refuses a foreign fingerprint."""
    from .tracking import DEFAULT_STORAGE, RunInfo, StudyRecord

    if storage == "none":
        return None
    return StudyRecord(storage or DEFAULT_STORAGE, study or default_study_name(lm, evaluator, algo, k, seed),
                       evaluator.fingerprint, evaluator.objective.name, evaluator.direction,
                       [f"{i:02d}" for i in range(lm.n_blocks)],
                       RunInfo(algo=algo, seed=seed, extra=dict(k=k, model=lm.source, **(extra or {}))),
                       candidate_size=k, recipe=evaluator.recipe)


def make_searcher(algo: str, constraint, evaluator: Evaluator, seed: int, options: dict | None = None):
    from .optim import SEARCHERS

    factory = SEARCHERS.get(algo)
    contract = ("needs_block_stats", "race_schedule", "bind", "incumbents", "ask", "tell", "done")
    missing = [a for a in contract if not hasattr(factory, a)]
    if missing:
        raise UserError(f"searcher {algo!r} does not meet the Searcher protocol (missing {', '.join(missing)}); "
                        "subclass dpopt.optim.SearcherBase")
    options = dict(options or {})
    if factory.needs_block_stats:
        options["stats"] = evaluator.block_stats()
    try:
        return factory(constraint, seed=seed, **options)
    except TypeError as exc:
        raise UserError(f"bad option for --algo {algo}: {exc}") from None


def search(lm: LoadedModel, evaluator: Evaluator, algo: str, remove: int | None = None,
           sparsity: float | None = None, protect: str | Sequence[int] | None = None,
           budget: int | None = 200, seconds: float | None = None, seed: int = 0,
           storage: str | None = None, study: str | None = None, output: str | None = None,
           progress: bool = True, algo_options: dict | None = None, workers: int = 0,
           queue: bool = False) -> SearchResult:
    """Run one searcher against the evaluator, every evaluation recorded in the study; return the result.

    ``workers=N`` scores every batch on N local ``dpopt worker`` processes through the study's
    queue; ``queue=True`` only enqueues, for workers started by hand (other GPUs, machines).
    Either way the searcher asks the same masks and gets the same values as in one process.
    """
    from .genome import Constraint
    from .optim import Budget, run_search
    from .tracking import DEFAULT_STORAGE

    constraint = Constraint.build(lm.n_blocks, remove=remove, sparsity=sparsity, protect=protect)
    limits = Budget(budget, seconds)
    if output:
        check_writable(output)
    searcher = make_searcher(algo, constraint, evaluator, seed, algo_options)
    objective_name = evaluator.objective.name
    if (workers or queue) and storage == "none":
        raise UserError("--workers/--queue need a study storage for the queue: give --storage URL, not none")
    if workers < 0:
        raise UserError(f"--workers must be 0 or more, got {workers}")
    record = open_record(lm, evaluator, algo, constraint.k, seed, storage, study)
    pool = None
    if workers or queue:
        from .worker import LocalWorkers

        record.queue = True
        if queue:  # the one thing a user must do next, on every machine with a GPU
            print(f"dpopt: queueing each batch in study {record.study_name!r}; start workers with: dpopt worker "
                  f"--storage {record.url} --study {record.study_name}", file=sys.stderr)
        if workers:
            pool = LocalWorkers(record.url, record.study_name, workers, device=str(lm.masked.device))
            record.monitor = pool.check
    bar = _progress_bar(budget, f"{algo}", enabled=progress)
    start = time.perf_counter()

    def on_progress(n, best):
        if bar is not None:
            bar.n = min(n, bar.total) if bar.total else n
            shown = best if evaluator.direction == "minimize" else -best
            bar.set_postfix_str(f"best {objective_name}={shown:.4g}")
            bar.refresh()

    try:
        with evaluator.recording(record):
            dense = evaluator.dense_value()
            res = run_search(searcher, evaluator, limits, record, progress=on_progress)
            best_raw = evaluator.raw(res.best)  # at full fidelity, recorded like every evaluation
    finally:
        if bar is not None:
            bar.close()
        if pool is not None:
            pool.stop()
    sign = 1 if evaluator.direction == "minimize" else -1
    settings = evaluator.fingerprint.settings
    result = SearchResult(
        removed_layers=list(res.best.removed()), kept_layers=list(res.best.kept()), fitness=best_raw,
        dense_fitness=dense, objective=objective_name, direction=evaluator.direction, algo=algo,
        evaluations=res.evaluations, seed=seed, model=lm.source, n_blocks=lm.n_blocks, remove=constraint.k,
        protect=list(constraint.protect), wall_seconds=round(time.perf_counter() - start, 3),
        history=[(n, sign * b) for n, b in res.history], fingerprint=evaluator.fingerprint.digest, settings=settings,
        data=settings.get("data") or settings.get("tasks"), split=settings["split"], data_seed=settings["data_seed"],
        kl_topk=settings["options"].get("kl_topk") if isinstance(settings["options"], dict) else None,
        study=record.study_name if record else None, storage=(storage or DEFAULT_STORAGE) if record else None,
        run=record.run.run if record else None, interrupted=bool(res.extra.get("interrupted")))
    if record is not None and not result.interrupted:
        from .artifacts import upload_best_so_far

        upload_best_so_far(result.storage, record.study, result.history, objective_name,
                           f"{algo}, seed {seed}, K={constraint.k}: best {objective_name} so far")
    if output:
        result.write_json(output)
    return result


def _progress_bar(total, desc, enabled=True):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="eval", dynamic_ncols=True)


def check_writable(path: str, flag: str = "--output") -> None:
    """Refuse an output path that cannot be written, before any model loads."""
    p = Path(path).expanduser()
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise UserError(f"{flag} {path} is a directory")
    if not parent.exists():
        raise UserError(f"{flag} folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UserError(f"{flag} {path} is not writable")


def evaluate_mask(lm: LoadedModel, remove: str | Sequence[int] | None, objectives: Sequence[str],
                  data: str | None = None, tasks: str | None = None, split: str = "eval",
                  data_seed: int = DEFAULT_DATA_SEED, **options) -> dict:
    """Score one mask (and the dense model) on held-out data for each objective."""
    mask = mask_from_removed(lm, remove or [])
    rows = {}
    for spec in objectives:
        ev = make_evaluator(lm, spec, data=data, tasks=tasks, split=split, data_seed=data_seed, **options)
        row = {"pruned": ev.raw(mask), "dense": ev.dense_value(), "direction": ev.direction,
               "details": ev.details(mask), "settings": ev.fingerprint.settings["options"]}
        rows[ev.objective.name] = row
    return {"removed_layers": list(mask.removed()), "model": lm.source, "split": split, "data_seed": data_seed,
            "objectives": rows}
