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
from .genome import LayerMask, UnitSpace, parse_index_list
from .objectives import DEFAULT_TASKS
from .result import SearchResult, write_json  # noqa: F401  (write_json: public helper)
from .record.fingerprint import Fingerprint


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


UNIT_SPACES = ("block", "sublayer")


def unit_space(lm: LoadedModel, units: str | UnitSpace = "block", tie: bool = False) -> UnitSpace:
    """The search space's units: ``block`` (one bit per block) or ``sublayer`` (attention and MLP
    of each block, ``attn.I``/``mlp.I`` in execution order; with ``tie`` one bit removes both)."""
    if isinstance(units, UnitSpace):
        return units
    if units not in UNIT_SPACES:
        raise UserError(f"--units must be one of {', '.join(UNIT_SPACES)}, got {units!r}")
    if units == "block":
        if tie:
            raise UserError("--tie ties a block's attention and MLP units: it needs --units sublayer")
        return UnitSpace.blocks(lm.n_blocks)
    return UnitSpace.sublayers(lm.n_blocks, lm.masked.sublayer_names(), tie=tie)  # one-line UserError if unsplittable


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
                   cost_options: dict | None = None, **options) -> Evaluator:
    """Build the objective on its data split, prepare it once, and wrap it in the evaluator.

    The evaluator's fingerprint names everything that decides its values, so a study never
    mixes values measured under other settings. ``units`` (see :func:`unit_space`) decides
    what a mask's bits mean; a non-block space puts its unit names in the fingerprint (the
    block space leaves it out, so block studies recorded before unit spaces still resume).
    ``minimize`` names costs (:mod:`dpopt.costs`: ``params``, ``latency``) a multi-objective
    search minimises beside the objective; their settings join the fingerprint.
    """
    from .costs import make_costs
    from .data.identity import data_identity
    from .objectives import build_objective, uses_tasks

    space = unit_space(lm, units, tie)  # fails before the data is read
    costs = make_costs(lm, space, minimize, **(cost_options or {}))
    options = {k: v for k, v in options.items() if v is not None}
    obj, obj_data = build_objective(objective, data=data, tasks=tasks, split=split, seed=data_seed, **options)
    obj.prepare(lm, obj_data)
    text, mc = uses_tasks(objective)
    settings = {
        "model": lm.identity(),
        "dtype": str(lm.masked.dtype).replace("torch.", ""),
        "objective": obj.name,
        "options": obj.settings(),
        "data": data_identity((data or DEFAULT_TEXT) if text else None),
        "tasks": data_identity((tasks or DEFAULT_TASKS) if mc else None),
        "split": split,
        "data_seed": data_seed,
    }
    if space.kind != "block":
        settings["units"] = list(space.names)
    if costs:
        settings["costs"] = {c.name: c.settings() for c in costs}
    ev = Evaluator(lm, obj, prefix_sharing=prefix_sharing, cache_mb=cache_mb, memory_mb=memory_mb,
                   fingerprint=Fingerprint(settings), units=space)
    ev.costs = costs
    # the recipe: how `dpopt worker` rebuilds this evaluator on another process or machine
    ev.recipe = dict(model=lm.spec or lm.source, dtype=settings["dtype"], objective=objective,
                     data=_portable(data), tasks=_portable(tasks), split=split, data_seed=data_seed,
                     prefix_sharing=prefix_sharing, units="block" if space.kind == "block" else "sublayer",
                     tie=space.kind == "sublayer-tied", options=options)
    return ev


def export(lm: LoadedModel, remove: str | Sequence, out: str, force: bool = False) -> Path:
    """Write the model without the ``remove`` units (``"attn.3,mlp.7,12"``; integers are blocks)."""
    from .models.export import export_pruned_units, prepare_out_dir

    space, mask = parse_removed_units(lm, remove)
    prepare_out_dir(out, force)
    return export_pruned_units(lm.masked, lm.tokenizer, space.removed_names(mask), out, source=lm.source, force=force)


def default_study_name(lm: LoadedModel, evaluator: Evaluator, algo: str, k, seed: int) -> str:
    """Named after the settings, so a changed setting opens a new study instead of a stale one.

    ``k``: a count, or the run's Constraint (its label: ``k4``, ``k4-10``, ``p100M``)."""
    units = "" if evaluator.units.kind == "block" else f"-{evaluator.units.kind}"
    size = k.label() if hasattr(k, "label") else f"k{k}"
    costs = "".join(f"-vs-{c.name}" for c in getattr(evaluator, "costs", []))
    return (f"{Path(lm.source).name}-{evaluator.objective.name}{costs}{units}-{algo}-{size}-seed{seed}-"
            f"{evaluator.fingerprint.short}")


def open_record(lm: LoadedModel, evaluator: Evaluator, algo: str, k, seed: int, storage: str | None,
                study: str | None, extra: dict | None = None):
    """The study a run records into (None with ``storage="none"``); refuses a foreign fingerprint.

    ``k``: the number of units removed, or the run's Constraint (then its valid masks are
    the study's COMPLETE trials)."""
    from .record.storage import DEFAULT_STORAGE
    from .record.study import RunInfo, StudyRecord

    if storage == "none":
        return None
    constraint = k if hasattr(k, "is_valid") else None
    size = constraint.to_dict()["remove"] if constraint is not None else k
    return StudyRecord(storage or DEFAULT_STORAGE, study or default_study_name(lm, evaluator, algo, k, seed),
                       evaluator.fingerprint, evaluator.objective.name, evaluator.direction,
                       _record_unit_names(evaluator.units),
                       RunInfo(algo=algo, seed=seed, extra=dict(k=size, model=lm.source, **(extra or {}))),
                       candidate_size=None if constraint is not None else k, recipe=evaluator.recipe,
                       candidate=constraint.is_valid if constraint is not None else None,
                       costs=getattr(evaluator, "costs", []))


def _record_unit_names(space: UnitSpace) -> list[str]:
    """Trial params ``keep_<unit>``: ``keep_00`` for blocks (as recorded before unit spaces), else ``keep_attn.3``."""
    if space.kind == "block":
        return [f"{i:02d}" for i in range(space.n_blocks)]
    return list(space.names)


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
        if getattr(evaluator, "units", None) is not None and evaluator.units.kind != "block":
            raise UserError(f"--algo {algo} ranks whole blocks by their hidden states; use --units block")
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
           queue: bool = False, max_params: float | str | None = None, pareto: str | None = None,
           max_latency: float | None = None, cost_options: dict | None = None) -> SearchResult:
    """Run one searcher against the evaluator, every evaluation recorded in the study; return the result.

    ``workers=N`` scores every batch on N local ``dpopt worker`` processes through the study's
    queue; ``queue=True`` only enqueues, for workers started by hand (other GPUs, machines).
    Either way the searcher asks the same masks and gets the same values as in one process.

    ``remove`` is K or ``"MIN:MAX"``; ``max_params`` (``"100M"``) caps the pruned model's
    size, ``max_latency`` its measured latency in ms per token (the evaluator's latency cost
    if it has one, else one with default settings; each candidate is measured once). An evaluator built with costs (``make_evaluator(minimize=...)``) makes this a
    multi-objective search: the result carries its Pareto front, also written to ``pareto``
    (default: ``pareto.json`` beside ``output``) with a plot beside it.
    """
    from .genome import Constraint
    from .optim import Budget, run_search
    from .record.storage import DEFAULT_STORAGE

    from .costs import model_params, unit_params

    space = evaluator.units
    sizes = dict(unit_params=unit_params(lm, space), total_params=model_params(lm)) if max_params is not None else {}
    if max_latency is not None:
        from .costs import make_costs

        timer = next((c for c in getattr(evaluator, "costs", []) if c.name == "latency"), None) \
            or make_costs(lm, space, "latency", **(cost_options or {}))[0]
        sizes["limit"] = ("latency", timer.unit, lambda m: timer.values([m])[0], float(max_latency))
    constraint = Constraint.build(space.n_units, remove=remove, sparsity=sparsity, protect=protect, space=space,
                                  max_params=max_params, **sizes)
    costs = list(getattr(evaluator, "costs", []) or [])
    if costs and (workers or queue):
        raise UserError("--minimize is measured in this process: it does not combine with --workers/--queue")
    pareto_path = pareto or (str(Path(output).with_name("pareto.json")) if output else None) if costs else None
    if pareto_path:
        check_writable(pareto_path, "--pareto")
    limits = Budget(budget, seconds)
    if output:
        check_writable(output)
    searcher = make_searcher(algo, constraint, evaluator, seed, algo_options)
    if costs and not getattr(searcher, "multi_objective", False):
        raise UserError(f"--minimize needs a multi-objective searcher (nsga2, random); {algo} optimises one number")
    objective_name = evaluator.objective.name
    if (workers or queue) and storage == "none":
        raise UserError("--workers/--queue need a study storage for the queue: give --storage URL, not none")
    if workers < 0:
        raise UserError(f"--workers must be 0 or more, got {workers}")
    record = open_record(lm, evaluator, algo, constraint, seed, storage, study)
    pool = None
    if workers or queue:
        from .record.worker import LocalWorkers

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
    from .models.units import plan_units

    plan = plan_units(lm.masked, space.removed_names(res.best))
    result = SearchResult(
        removed_layers=list(plan.dropped), kept_layers=list(plan.kept()), fitness=best_raw,
        removed_units=plan.names(), units=space.kind,
        dense_fitness=dense, objective=objective_name, direction=evaluator.direction, algo=algo,
        evaluations=res.evaluations, seed=seed, model=lm.source, n_blocks=lm.n_blocks,
        remove=constraint.to_dict()["remove"], max_params=constraint.max_params, minimize=[c.name for c in costs],
        max_latency=max_latency,
        protect=list(constraint.protect), wall_seconds=round(time.perf_counter() - start, 3),
        history=[(n, sign * b) for n, b in res.history], fingerprint=evaluator.fingerprint.digest, settings=settings,
        data=settings.get("data") or settings.get("tasks"), split=settings["split"], data_seed=settings["data_seed"],
        kl_topk=settings["options"].get("kl_topk") if isinstance(settings["options"], dict) else None,
        study=record.study_name if record else None, storage=(storage or DEFAULT_STORAGE) if record else None,
        run=record.run.run if record else None, interrupted=bool(res.extra.get("interrupted")))
    if record is not None and not result.interrupted:
        from .record.artifacts import upload_best_so_far

        upload_best_so_far(result.storage, record.study, result.history, objective_name,
                           f"{algo}, seed {seed}, {constraint.describe()}: best {objective_name} so far")
    if costs:
        result.pareto = _pareto_doc(lm, evaluator, space, constraint, res, result, pareto_path)
    if output:
        result.write_json(output)
    return result


def _pareto_doc(lm: LoadedModel, evaluator: Evaluator, space: UnitSpace, constraint, res, result: SearchResult,
                path: str | None) -> dict:
    """The front as ``pareto.json`` holds it (raw values, unit names, the costs' noise); written with its plot."""
    import numpy as np

    from .models.units import plan_units
    from .costs.pareto import plot_pareto, write_pareto

    sign = 1 if evaluator.direction == "minimize" else -1
    metrics = [evaluator.objective.name] + [c.name for c in evaluator.costs]
    dense = LayerMask.dense(space.n_units)
    dense_row = [evaluator.raw(dense)] + [c.values([dense])[0] for c in evaluator.costs]
    points = []
    for i, (mask, row) in enumerate(res.extra["front"]):
        plan = plan_units(lm.masked, space.removed_names(mask))
        raw = [sign * float(row[0])] + [float(v) for v in row[1:]]
        points.append(dict(point=i, removed_units=plan.names(), removed_layers=list(plan.dropped),
                           n_removed=len(mask.removed()), values=dict(zip(metrics, raw))))
    doc = dict(model=lm.source, objective=evaluator.objective.name, direction=evaluator.direction, metrics=metrics,
               cost_units={c.name: c.unit for c in evaluator.costs}, algo=result.algo, seed=result.seed,
               constraint=constraint.describe(), units=space.kind, evaluations=result.evaluations,
               evaluated=len(res.extra["evaluated"]), dense=dict(zip(metrics, [float(v) for v in dense_row])),
               noise={name: n for name, n in ((c.name, c.noise()) for c in evaluator.costs) if n is not None},
               study=result.study, storage=result.storage, points=points)
    if path:
        doc["file"] = path
        write_pareto(path, doc)
        everything = np.array([[sign * r[0], *r[1:]] for _, r in res.extra["evaluated"]], dtype=float)
        front = np.array([[p["values"][m] for m in metrics] for p in points], dtype=float)
        png = str(Path(path).with_suffix(".png"))
        labels = [metrics[0]] + [f"{c.name} ({c.unit})" for c in evaluator.costs]
        plot_pareto(png, metrics, everything.reshape(-1, len(metrics)), front.reshape(-1, len(metrics)), labels=labels,
                    title=f"{Path(lm.source).name}: {result.algo}, {constraint.describe()}, "
                          f"{result.evaluations} evaluations")
        doc["plot"] = png
    return doc


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
    space, mask = parse_removed_units(lm, remove)
    rows = {}
    for spec in objectives:
        ev = make_evaluator(lm, spec, data=data, tasks=tasks, split=split, data_seed=data_seed, units=space,
                            **options)
        row = {"pruned": ev.raw(mask), "dense": ev.dense_value(), "direction": ev.direction,
               "details": ev.details(mask), "settings": ev.fingerprint.settings["options"]}
        rows[ev.objective.name] = row
    from .models.units import plan_units

    plan = plan_units(lm.masked, space.removed_names(mask))
    return {"removed_layers": list(plan.dropped), "removed_units": plan.names(), "model": lm.source, "split": split, "data_seed": data_seed,
            "objectives": rows}
