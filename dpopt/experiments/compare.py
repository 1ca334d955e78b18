"""``dpopt compare`` and ``dpopt study``: a grid of (searcher, seed) runs on one shared evaluator.

Every run is its own Optuna study (``<model>-<objective>-<algo>-k<K>-seed<S>-<fingerprint>``) in one storage, so each run
can be inspected, resumed and re-read on its own; yet all runs of an objective score through
ONE evaluator, whose memo makes a mask scored for one searcher free for the next (the record
copies it into the later run's study with ``computed: false``). A searcher's budget still
counts every mask it asked: the comparison is fair, and the grid costs only the union of the
distinct masks. The report is built from the studies themselves (``report.py``), so what it
says is what the record holds.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from itertools import combinations
from typing import Mapping, Sequence

import numpy as np

from ..errors import UserError
from ..fitness import from_minimize, to_minimize
from ..problem import problem_for
from ..record.study import open_record, study_name
from ..genome import Constraint, LayerMask
from .heldout import STANDARD_ERRORS, heldout_score, score_heldout  # noqa: F401  (held-out values, intervals)
from .stats import Evaluation, Experiment, RankMatrix, Reference, Run, Score

BRUTE_FORCE_LIMIT = 200_000  # masks: beyond this even an explicit --brute-force is refused
BRUTE_FORCE_BATCH = 256
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
               overwrite: bool = False, storage: str | None = None) -> None:
    """Every user mistake the grid can detect without a model (:meth:`dpopt.problem.GridPlan.validate`)."""
    from ..problem import GridPlan

    GridPlan(list(algos), seeds, budget, report, overwrite, storage).validate()


# --- one grid --------------------------------------------------------------------------------------
@dataclass
class Grid:
    """What one objective's grid left behind: the experiment and what it cost."""

    experiment: Experiment
    constraint: Constraint
    studies: dict[tuple[str, int], str]  # (algo, seed) -> study name
    masks: dict[tuple[str, int], LayerMask]  # final mask of each successful run
    evaluations: int  # sum of the runs' evaluations (what the searchers' budgets counted)
    masks_computed: int  # evaluator.n_scored during the grid: its real model work
    units_computed: int | None  # tokens (or questions) pushed through the head during the grid
    wall_seconds: float
    reference_note: str = ""
    reference_cost: int = 0  # masks computed for the brute-force reference, after the grid

    def cost(self) -> dict[str, object]:
        out: dict[str, object] = {
            "runs": len(self.experiment.runs),
            "evaluations counted (sum over runs)": self.evaluations,
            "distinct masks computed by the shared evaluator": self.masks_computed,
        }
        if self.units_computed is not None:
            out["tokens/questions scored"] = self.units_computed
        out["grid wall s"] = round(self.wall_seconds, 1)
        if self.reference_note:
            out["reference"] = self.reference_note
        return out


def trace_of(record, constraint: Constraint) -> list[Evaluation]:
    """A run's evaluations in trial-number order, read back from its study (memo copies included)."""
    from optuna.trial import TrialState

    trials = sorted(record.storage.get_all_trials(record.study_id, deepcopy=False), key=lambda t: t.number)
    out = []
    for t in trials:
        if t.state not in (TrialState.COMPLETE, TrialState.FAIL):
            continue
        mask = record.mask_of(t.params)
        if mask is None:
            continue
        fid = t.user_attrs.get("fidelity")
        value = float(t.values[0]) if t.state == TrialState.COMPLETE else math.nan
        out.append(Evaluation(len(out) + 1, float(fid) if fid is not None else 1.0, value,
                              constraint.is_valid(mask), tuple(mask.removed())))
    return out


def _grid_bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="run", dynamic_ncols=True)


def run_grid(evaluator, constraint: Constraint, algos: Sequence[str], seeds: int, budget: int | None,
             storage: str, prefix: str, metric: str, seconds: float | None = None,
             algo_options: Mapping[str, dict] | None = None, brute_force: bool | None = None,
             progress: bool = True, extra: dict | None = None) -> Grid:
    """Run every (algo, seed) through one evaluator, each into its own study; then the reference.

    A run that raises (a broken user searcher, a budget too small to reach a valid mask) is
    marked failed and the grid goes on; KeyboardInterrupt stops the grid (what was scored
    stays in the studies, and the same command resumes).
    """
    from ..optim import Budget, make_searcher, run_search

    n0, u0 = evaluator.n_scored, evaluator.units_scored
    start = time.perf_counter()
    runs: list[Run] = []
    studies: dict[tuple[str, int], str] = {}
    masks: dict[tuple[str, int], LayerMask] = {}
    total_evals = 0
    bar = _grid_bar(len(algos) * seeds, metric, progress)
    try:
        for algo in algos:
            for seed in range(seeds):
                name = study_name(prefix, evaluator, algo, f"k{constraint.k}", seed)
                studies[(algo, seed)] = name
                if bar is not None:
                    bar.set_postfix_str(f"{algo} seed {seed}")
                t0 = time.perf_counter()
                record = None
                try:
                    record = open_record(evaluator, storage, name, algo, seed, constraint.n_units,
                                         extra=dict(k=constraint.k, **(extra or {})))
                    searcher = make_searcher(algo, constraint, evaluator, seed, (algo_options or {}).get(algo))
                    with evaluator.recording(record):
                        res = run_search(searcher, evaluator, Budget(budget, seconds), record)
                    if res.extra.get("interrupted"):
                        raise KeyboardInterrupt
                    total_evals += res.evaluations
                    masks[(algo, seed)] = res.best
                    runs.append(Run(algo, seed, "ok", "", tuple(res.best.removed()),
                                    from_minimize(res.fitness, evaluator.direction),
                                    time.perf_counter() - t0, trace_of(record, constraint)))
                except KeyboardInterrupt:
                    raise
                except Exception as exc:  # one broken run must not sink the grid
                    msg = str(exc).strip().splitlines()
                    runs.append(Run(algo, seed, "failed", f"{type(exc).__name__}: {msg[0] if msg else ''}"[:300],
                                    wall_seconds=time.perf_counter() - t0,
                                    trace=trace_of(record, constraint) if record is not None else []))
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - start
    n_computed = evaluator.n_scored - n0
    units = None if u0 is None else evaluator.units_scored - u0
    from ..optim import SEARCHERS

    kinds = {a: SEARCHERS.get(a) for a in algos}
    exp = Experiment(metric, evaluator.direction, constraint.n_units, runs,
                     blind=frozenset(a for a, f in kinds.items() if getattr(f, "objective_blind", False)),
                     one_shot=frozenset(a for a, f in kinds.items() if getattr(f, "one_shot", False)))
    grid = Grid(exp, constraint, studies, masks, total_evals, n_computed, units, wall)
    _reference(grid, evaluator, budget, brute_force, storage, prefix, metric)
    return grid


def space_size(constraint: Constraint) -> int:
    return math.comb(len(constraint.removable), constraint.k)


def _reference(grid: Grid, evaluator, budget: int | None, brute_force: bool | None, storage: str, prefix: str,
               metric: str) -> None:
    """Brute force when the space is no bigger than one run's budget (or asked for); else best found.

    It runs after the grid, so the grid's cost above is the searchers' alone; its masks are
    recorded in their own study, named for the searcher ``bruteforce``.
    """
    c = grid.constraint
    size = space_size(c)
    want = brute_force if brute_force is not None else (budget is not None and size <= budget)
    if not want:
        grid.reference_note = f"best mask any run found (space of {size} masks not enumerated)"
        return
    if size > BRUTE_FORCE_LIMIT:
        raise UserError(f"--brute-force over {size} masks is too many (limit {BRUTE_FORCE_LIMIT}); lower --remove")
    n0 = evaluator.n_scored
    record = open_record(evaluator, storage, study_name(prefix, evaluator, "bruteforce", f"k{c.k}", 0), "bruteforce", 0,
                         c.n_units)
    best_mask, best = None, math.inf
    with evaluator.recording(record):
        combos = combinations(c.removable, c.k)
        while True:
            batch = [LayerMask.from_removed(c.n_units, r) for _, r in zip(range(BRUTE_FORCE_BATCH), combos)]
            if not batch:
                break
            fit = evaluator.evaluate(batch)
            i = int(np.argmin(fit))
            if fit[i] < best:
                best, best_mask = float(fit[i]), batch[i]
    if best_mask is None or not math.isfinite(best):
        grid.reference_note = "brute force found no finite value"
        return
    raw = from_minimize(best, evaluator.direction)
    grid.experiment.reference = Reference(raw, tuple(best_mask.removed()), exact=True)
    grid.reference_cost = evaluator.n_scored - n0
    grid.reference_note = (f"brute-force optimum over all {size} masks ({grid.reference_cost} more masks computed "
                           "after the grid)")


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


# --- results ------------------------------------------------------------------------------------
@dataclass
class CompareResult:
    grid: Grid
    heldout: dict[str, dict[str, Score]]
    report: dict  # the numbers build_compare_report computed, with its files
    storage: str

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


# --- the two API entry points -----------------------------------------------------------------------
def _objective_options(options: dict) -> dict:
    return {k: v for k, v in options.items() if v is not None}


def compare(lm, objective: str = "ppl", algos: str | Sequence[str] = "greedy,random", remove: int = 2,
            budget: int | None = 100, seeds: int = 5, report: str | None = "compare-report",
            storage: str | None = None, data: str | None = None, tasks: str | None = None,
            data_seed: int | None = None, heldout: str | Sequence[str] | None = ("ppl", "kl"),
            protect: str | Sequence[int] | None = None, brute_force: bool | None = None,
            seconds: float | None = None, algo_options: Mapping[str, dict] | None = None, overwrite: bool = False,
            progress: bool = True, evaluator_options: dict | None = None, **objective_options) -> CompareResult:
    """Run ``algos`` x ``seeds`` on one objective through one shared evaluator; write the report.

    ``heldout``: objectives each searcher's best mask is re-scored on, on the held-out
    (``eval``) split; ``brute_force``: None = enumerate the space when it fits in ``budget``.
    """
    from ..data import DEFAULT_DATA_SEED
    from ..record.storage import DEFAULT_STORAGE

    algos = parse_names(algos, "--algos")
    held = parse_names(heldout, "--heldout") if heldout else []
    storage = storage or DEFAULT_STORAGE
    check_grid(algos, seeds, budget, report, overwrite, storage)
    data_seed = DEFAULT_DATA_SEED if data_seed is None else data_seed
    opts = _objective_options(objective_options)
    ev_opts = dict(evaluator_options or {})
    ev = problem_for(lm, objective, data=data, tasks=tasks, split="calib", data_seed=data_seed, shared_options=True,
                     **ev_opts, **opts).build(lm)
    constraint = Constraint.build(lm.n_blocks, remove=remove, protect=protect)
    prefix = lm.source
    grid = run_grid(ev, constraint, algos, seeds, budget, storage, prefix, ev.objective.name, seconds=seconds,
                    algo_options=algo_options, brute_force=brute_force, progress=progress,
                    extra=dict(model=lm.source))
    scores = _heldout(lm, {a: m for a, m in best_mask_per_algo(grid).items()}, held, data, tasks, data_seed,
                      ev_opts, opts)
    cost = grid.cost()
    cost["storage"] = storage
    cost["studies"] = study_name(prefix, ev, "<algo>", f"k{constraint.k}", "<S>")
    if scores:
        cost["note"] = SE_NOTE
    numbers = {}
    if report is not None:
        numbers = _build_compare(grid.experiment, report, scores, cost)
    return CompareResult(grid, scores, numbers, storage)


def _build_compare(exp, report, scores, cost):
    from .report import build_compare_report

    # the folder was checked before the grid (an existing non-empty one refused unless --overwrite)
    return build_compare_report(exp, report, heldout=scores or None, grid_cost=cost, overwrite=True)


def _heldout(lm, masks: Mapping[str, LayerMask], objectives: Sequence[str], data, tasks, data_seed, ev_opts,
             opts, dense: bool = True) -> dict[str, dict[str, Score]]:
    """Score each mask on each objective's held-out split; the dense model as a row of its own
    (:func:`.heldout.score_heldout`)."""
    return score_heldout(lm, masks, objectives, data, tasks, data_seed, ev_opts, opts, dense)


def study(lm, objectives: str | Sequence[str] = ("ppl", "kl"), algos: str | Sequence[str] = "greedy,random",
          remove: int = 2, budget: int | None = 100, seeds: int = 3, report: str | None = "study-report",
          storage: str | None = None, data: str | None = None, tasks: str | None = None,
          data_seed: int | None = None, random_masks: int = 20, protect: str | Sequence[int] | None = None,
          brute_force: bool | None = None, seconds: float | None = None,
          algo_options: Mapping[str, dict] | None = None, overwrite: bool = False, progress: bool = True,
          evaluator_options: dict | None = None, n_boot: int = 1000, **objective_options) -> StudyResult:
    """Does the objective matter more than the searcher? The compare grid per objective, then
    rank correlations over one common set of masks and every best mask on every held-out split."""
    from ..data import DEFAULT_DATA_SEED
    from ..record.storage import DEFAULT_STORAGE

    objs = parse_names(objectives, "--objectives")
    if len(objs) < 2:
        raise UserError("study needs at least two --objectives (e.g. ppl,kl); for one use dpopt compare")
    algos = parse_names(algos, "--algos")
    storage = storage or DEFAULT_STORAGE
    check_grid(algos, seeds, budget, report, overwrite, storage)
    if random_masks < 0:
        raise UserError(f"--random-masks must be >= 0, got {random_masks}")
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
                               extra=dict(model=lm.source))
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
    cost["rank-correlation masks"] = f"{len(rank.masks)} ({random_masks} random, the rest the grids' final masks)"
    cells = {}
    for name, g in grids.items():
        for algo, mask in best_mask_per_algo(g).items():
            cells[f"{algo} @ {name}"] = mask
    scores = _heldout(lm, cells, objs, data, tasks, data_seed, ev_opts, opts)
    if scores:
        cost["note"] = SE_NOTE
    cost["storage"] = storage
    numbers = {}
    if report is not None:
        from .report import build_study_report

        numbers = build_study_report({n: g.experiment for n, g in grids.items()}, report, rank_matrix=rank,
                                     heldout=scores or None, grid_cost=cost, overwrite=True, n_boot=n_boot)
    return StudyResult(grids, rank, scores, numbers, storage, cost)


def rank_matrix(evaluators: Mapping[str, object], grids: Mapping[str, Grid], constraint: Constraint,
                n_random: int = 20, seed: int = 0) -> RankMatrix:
    """One common set of masks (every final mask of every grid, then ``n_random`` random valid
    ones) scored on every objective's calibration split."""
    masks: list[LayerMask] = []
    for g in grids.values():
        masks.extend(g.masks.values())
    masks = list(dict.fromkeys(masks))
    rng = np.random.default_rng(seed)
    seen = set(masks)
    target, tries = len(masks) + n_random, 0
    while len(masks) < target and tries < 100 * max(n_random, 1):
        tries += 1
        m = constraint.random_mask(rng)
        if m not in seen:
            seen.add(m)
            masks.append(m)
        if len(seen) >= space_size(constraint):
            break
    names = list(evaluators)
    values = np.full((len(masks), len(names)), np.nan)
    for j, name in enumerate(names):
        ev = evaluators[name]
        fit = ev.evaluate(masks)
        values[:, j] = from_minimize(fit, ev.direction)
        values[~np.isfinite(fit), j] = np.nan
    return RankMatrix(names, [evaluators[n].direction for n in names], values, [tuple(m.removed()) for m in masks])
