"""``dpopt compare`` and ``dpopt study``: the grids of :mod:`.grid`, held-out scores, the report.

The report is built from the studies themselves (``report.py``), so what it says is what the
record holds.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from ..errors import UserError
from ..fitness import to_minimize
from ..problem import problem_for
from ..record.study import study_name
from ..genome import Constraint, LayerMask
from .grid import REFERENCE_BUDGET, Grid, rank_matrix, run_grid
from .heldout import STANDARD_ERRORS, heldout_score, score_heldout  # noqa: F401  (held-out values, intervals)
from .stats import Experiment, RankMatrix, Score

SE_NOTE = ("held-out 95% intervals: acc the Wilson interval over questions; ppl exp of the mean NLL ± 1.96 standard "
           "errors over sequences; kl the mean ± 1.96 standard errors over sequences")


# --- checks a CLI runs before any model loads ----------------------------------------------------
def parse_names(text: str | Sequence[str], flag: str) -> list[str]:
    names = [s.strip() for s in text.split(",")] if isinstance(text, str) else [str(s).strip() for s in text]
    names = [n for n in names if n]
    if not names:
        raise UserError(f"{flag} names nothing")
    return list(dict.fromkeys(names))


def check_grid(algos: Sequence[str], seeds: int, budget: int | None, report: str | None = None,
               overwrite: bool = False, storage: str | None = None, reference_budget: int = REFERENCE_BUDGET) -> None:
    """Every user mistake the grid can detect without a model (:meth:`dpopt.problem.GridPlan.validate`)."""
    from ..problem import GridPlan

    GridPlan(list(algos), seeds, budget, report, overwrite, storage, reference_budget).validate()


def best_mask_per_algo(grid: Grid) -> dict[str, LayerMask]:
    """Each searcher's best final mask over its seeds (by the grid's own objective)."""
    out: dict[str, tuple[float, LayerMask]] = {}
    for run in grid.experiment.runs:
        if not run.ok:
            continue
        s = to_minimize(run.value, grid.experiment.direction)
        if run.algo not in out or s < out[run.algo][0]:
            out[run.algo] = (s, grid.masks[(run.algo, run.seed)])
    return {a: m for a, (_, m) in out.items()}


def check_repair(repair, heldout: Sequence[str]) -> list[str]:
    """The held-out metrics ``--repair`` re-ranks on (checked before any model loads)."""
    if repair is None:
        return []
    from ..heal.heldout import HELDOUT

    repair.validate()
    names = [n for n in heldout if n in HELDOUT]
    if not names:
        raise UserError(f"--repair re-ranks on held-out {', '.join(HELDOUT.names())}: add one of them to --heldout")
    return names


def _rerank(lm, grids: Mapping[str, Grid], evaluators: Mapping[str, object], repair, held: Sequence[str], data,
            tasks, data_seed: int, opts: Mapping, progress: bool):
    """Each grid's best masks repaired and re-scored on held-out data (None without ``repair``)."""
    if repair is None:
        return None
    from .rerank import grid_candidates, rerank

    return rerank(lm, grid_candidates(grids, evaluators, repair.top), repair, held, data, tasks, data_seed,
                  tokens=opts.get("tokens"), seq_len=opts.get("seq_len"), questions=opts.get("questions"),
                  topk=opts.get("topk"), progress=progress)


# --- results ------------------------------------------------------------------------------------
@dataclass
class CompareResult:
    grid: Grid
    heldout: dict[str, dict[str, Score]]
    report: dict  # the numbers build_compare_report computed, with its files
    storage: str
    repair: object = None  # a RerankResult where --repair ran

    @property
    def experiment(self) -> Experiment:
        return self.grid.experiment


@dataclass
class StudyResult:
    grids: dict[str, Grid]
    rank_matrix: RankMatrix
    heldout: dict[str, dict[str, Score]]
    report: dict
    storage: str
    cost: dict[str, object] = field(default_factory=dict)
    repair: object = None  # a RerankResult where --repair ran


# --- the two API entry points -----------------------------------------------------------------------
def _objective_options(options: dict) -> dict:
    return {k: v for k, v in options.items() if v is not None}


def compare(lm, objective: str = "ppl", algos: str | Sequence[str] = "greedy,random", remove: int = 2,
            budget: int | None = 100, seeds: int = 5, report: str | None = "compare-report",
            storage: str | None = None, data: str | None = None, tasks: str | None = None,
            data_seed: int | None = None, heldout: str | Sequence[str] | None = ("ppl", "kl"),
            protect: str | Sequence[int] | None = None, brute_force: bool | None = None,
            reference_budget: int = REFERENCE_BUDGET, seconds: float | None = None,
            algo_options: Mapping[str, dict] | None = None, overwrite: bool = False, progress: bool = True,
            evaluator_options: dict | None = None, heldout_options: dict | None = None, repair=None,
            **objective_options) -> CompareResult:
    """Run ``algos`` x ``seeds`` on one objective through one shared evaluator; write the report.

    ``heldout``: objectives each searcher's best mask is re-scored on, on the held-out
    (``eval``) split, with ``heldout_options`` (e.g. more tokens or questions) over the search's
    objective options; ``brute_force``: None = enumerate the space when it fits in
    ``reference_budget`` (else one long reference run of that many evaluations), True =
    enumerate it whatever its size, False = the compared runs' best is the reference.
    ``repair``: a :class:`.rerank.RepairPlan`: the grid's best masks are then repaired and
    re-ranked on the held-out split (:func:`.rerank.rerank`), the report's last section.
    """
    from ..data import DEFAULT_DATA_SEED
    from ..record.storage import DEFAULT_STORAGE

    start = time.perf_counter()
    algos = parse_names(algos, "--algos")
    held = parse_names(heldout, "--heldout") if heldout else []
    storage = storage or DEFAULT_STORAGE
    check_grid(algos, seeds, budget, report, overwrite, storage, reference_budget)
    repair_on = check_repair(repair, held or [objective])
    data_seed = DEFAULT_DATA_SEED if data_seed is None else data_seed
    opts = _objective_options(objective_options)
    ev_opts = dict(evaluator_options or {})
    ev = problem_for(lm, objective, data=data, tasks=tasks, split="calib", data_seed=data_seed, shared_options=True,
                     **ev_opts, **opts).build(lm)
    constraint = Constraint.build(lm.n_blocks, remove=remove, protect=protect)
    prefix = lm.source
    grid = run_grid(ev, constraint, algos, seeds, budget, storage, prefix, ev.objective.name, seconds=seconds,
                    algo_options=algo_options, brute_force=brute_force, progress=progress,
                    extra=dict(model=lm.source), reference_budget=reference_budget)
    held_opts = {**opts, **_objective_options(heldout_options or {})}
    scores = _heldout(lm, heldout_cells({ev.objective.name: grid}, suffix=False), held, data, tasks, data_seed,
                      ev_opts, held_opts)
    reranked = _rerank(lm, {ev.objective.name: grid}, {ev.objective.name: ev}, repair, repair_on, data, tasks,
                       data_seed, held_opts, progress)
    cost = grid.cost()
    cost["storage"] = storage
    cost["studies"] = study_name(prefix, ev, "<algo>", f"k{constraint.k}", "<S>")
    if scores:
        cost["note"] = SE_NOTE
    numbers = {}
    if report is not None:
        from .describe import describe
        from .report import build_compare_report

        about = describe(lm, ev, constraint=constraint, algos=algos, seeds=seeds, budget=budget, seconds=seconds,
                         algo_options=algo_options, heldout=held, storage=storage,
                         wall_seconds=time.perf_counter() - start,
                         extra=_heldout_extra(heldout_options) | {"reference": grid.reference_note})
        # the folder was checked before the grid (an existing non-empty one refused unless --overwrite)
        numbers = build_compare_report(grid.experiment, report, heldout=scores or None, grid_cost=cost,
                                       overwrite=True, about=about, repair=reranked)
    return CompareResult(grid, scores, numbers, storage, reranked)


def heldout_cells(grids: Mapping[str, Grid], suffix: bool = True) -> dict[str, LayerMask]:
    """What is re-scored on held-out data: each searcher's best final mask per objective, and
    each objective's reference mask (its exact optimum where brute force ran)."""
    cells: dict[str, LayerMask] = {}
    for name, g in grids.items():
        tag = f" @ {name}" if suffix else ""
        for algo, mask in best_mask_per_algo(g).items():
            cells[algo + tag] = mask
        ref = g.experiment.reference
        if ref is not None:
            label = "optimum (brute force)" if ref.exact else "best known"
            cells[label + tag] = LayerMask.from_removed(g.constraint.n_units, ref.removed)
    return cells


def _heldout_extra(heldout_options: Mapping | None) -> dict[str, object]:
    given = _objective_options(heldout_options or {})
    return {"held-out options": ", ".join(f"{k}={v}" for k, v in given.items())} if given else {}


def _heldout(lm, masks: Mapping[str, LayerMask], objectives: Sequence[str], data, tasks, data_seed, ev_opts,
             opts, dense: bool = True) -> dict[str, dict[str, Score]]:
    """Score each mask on each objective's held-out split; the dense model as a row of its own
    (:func:`.heldout.score_heldout`)."""
    return score_heldout(lm, masks, objectives, data, tasks, data_seed, ev_opts, opts, dense)


def study(lm, objectives: str | Sequence[str] = ("ppl", "kl"), algos: str | Sequence[str] = "greedy,random",
          remove: int = 2, budget: int | None = 100, seeds: int = 5, report: str | None = "study-report",
          storage: str | None = None, data: str | None = None, tasks: str | None = None,
          data_seed: int | None = None, random_masks: int = 20, protect: str | Sequence[int] | None = None,
          brute_force: bool | None = None, reference_budget: int = REFERENCE_BUDGET, seconds: float | None = None,
          algo_options: Mapping[str, dict] | None = None, overwrite: bool = False, progress: bool = True,
          evaluator_options: dict | None = None, n_boot: int = 1000, heldout: str | Sequence[str] | None = None,
          heldout_options: dict | None = None, repair=None, **objective_options) -> StudyResult:
    """Does the objective matter more than the searcher? The compare grid per objective, then
    rank correlations over every mask scored under all objectives, and every best mask (and
    each objective's reference mask) on the held-out split of each of ``heldout`` (default:
    the objectives), scored with ``heldout_options`` over the search's objective options;
    ``repair``: re-rank each objective's best masks after repair (see :func:`compare`)."""
    from ..data import DEFAULT_DATA_SEED
    from ..record.storage import DEFAULT_STORAGE

    start = time.perf_counter()
    objs = parse_names(objectives, "--objectives")
    held = parse_names(heldout, "--heldout") if heldout else objs
    if len(objs) < 2:
        raise UserError("study needs at least two --objectives (e.g. ppl,kl); for one use dpopt compare")
    algos = parse_names(algos, "--algos")
    storage = storage or DEFAULT_STORAGE
    check_grid(algos, seeds, budget, report, overwrite, storage, reference_budget)
    if random_masks < 0:
        raise UserError(f"--random-masks must be >= 0, got {random_masks}")
    repair_on = check_repair(repair, held)
    data_seed = DEFAULT_DATA_SEED if data_seed is None else data_seed
    opts = _objective_options(objective_options)
    ev_opts = dict(evaluator_options or {})
    constraint = Constraint.build(lm.n_blocks, remove=remove, protect=protect)
    evaluators, grids = {}, {}
    for spec in objs:
        ev = problem_for(lm, spec, data=data, tasks=tasks, split="calib", data_seed=data_seed, shared_options=True,
                     **ev_opts, **opts).build(lm)
        name = ev.objective.name
        grids[name] = run_grid(ev, constraint, algos, seeds, budget, storage, lm.source, name, seconds=seconds,
                               algo_options=algo_options, brute_force=brute_force, progress=progress,
                               extra=dict(model=lm.source), reference_budget=reference_budget)
        evaluators[name] = ev
    cost: dict[str, object] = {}
    for name, g in grids.items():
        c = g.cost()
        cost[f"{name}: evaluations counted"] = c["evaluations counted (sum over runs)"]
        cost[f"{name}: distinct masks computed"] = c["distinct masks computed by the shared evaluator"]
        if "tokens/questions scored" in c:
            cost[f"{name}: tokens/questions scored"] = c["tokens/questions scored"]
        cost[f"{name}: reference"] = g.reference_note
    rank = rank_matrix(evaluators, grids, constraint, random_masks)
    cost["rank-correlation masks"] = (f"{len(rank.masks)}: every mask scored under all objectives, the grids' final "
                                      f"masks, and up to {random_masks} random ones")
    held_opts = {**opts, **_objective_options(heldout_options or {})}
    scores = _heldout(lm, heldout_cells(grids), held, data, tasks, data_seed, ev_opts, held_opts)
    reranked = _rerank(lm, grids, evaluators, repair, repair_on, data, tasks, data_seed, held_opts, progress)
    if scores:
        cost["note"] = SE_NOTE
    cost["storage"] = storage
    numbers = {}
    if report is not None:
        from .benchmarking import suggested_budget
        from .describe import describe
        from .report import build_study_report

        exps = {n: g.experiment for n, g in grids.items()}
        about = describe(lm, evaluators, constraint=constraint, algos=algos, seeds=seeds, budget=budget,
                         seconds=seconds, algo_options=algo_options, heldout=held, storage=storage,
                         wall_seconds=time.perf_counter() - start,
                         extra=_heldout_extra(heldout_options) | {f"{n}: reference": g.reference_note
                                                                  for n, g in grids.items()})
        numbers = build_study_report(exps, report, rank_matrix=rank, heldout=scores or None, grid_cost=cost,
                                     overwrite=True, n_boot=n_boot, ert_budget=suggested_budget(exps), about=about,
                                     repair=reranked)
    return StudyResult(grids, rank, scores, numbers, storage, cost, reranked)
