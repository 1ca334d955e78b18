"""One objective's grid of (searcher, seed) runs on one shared evaluator, and its reference.

Every run is its own Optuna study (``<model>-<objective>-<algo>-k<K>-seed<S>-<fingerprint>``)
in one storage, so each run can be inspected, resumed and re-read on its own; yet all runs
of an objective score through ONE evaluator, whose memo makes a mask scored for one
searcher free for the next (the record copies it into the later run's study with
``computed: false``). A searcher's budget still counts every mask it asked: the comparison
is fair, and the grid costs only the union of the distinct masks.

The reference every gap is measured against is never the compared runs alone (that is
self-referential: the best run is always at gap 0). When the space fits
``reference_budget``, the ``brute`` searcher enumerates it FIRST: its scores fill the
shared memo, so the searchers after it cost no model work, and the reference is the exact
optimum. Otherwise one long run of :data:`REFERENCE_ALGO` (its own seed, not a compared run)
joins the runs' best masks, and the reference is "best known, not proven".
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ..errors import UserError
from ..fitness import from_minimize
from ..genome import Constraint, LayerMask
from ..record.study import open_record, study_name
from .stats import Evaluation, Experiment, RankMatrix, Reference, Run

REFERENCE_BUDGET = 5000  # masks: brute force up to this (C(18, 4) = 3060 fits), else one long run this long
REFERENCE_ALGO = "genetic"  # the long run where brute force does not fit
REFERENCE_SEED = 1_000_003  # not a seed 0..N-1 a compared run uses


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
    reference_cost: int = 0  # masks computed for the reference (brute force or the long run)
    reference_seconds: float = 0.0
    reference_run: Run | None = None

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
            out["reference: masks computed"] = self.reference_cost
            out["reference wall s"] = round(self.reference_seconds, 1)
        return out


def space_size(constraint: Constraint) -> int | None:
    return constraint.size()


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


@dataclass
class _Setting:
    """What every run of one grid shares."""

    evaluator: object
    constraint: Constraint
    storage: str
    prefix: str
    extra: dict


def run_one(s: _Setting, algo: str, seed: int, budget: int | None, seconds: float | None = None,
            options: dict | None = None) -> tuple[Run, LayerMask | None, int, str]:
    """One searcher run into its own study: (its Run, final mask, evaluations, study name).

    A run that raises (a broken user searcher, a budget too small to reach a valid mask) is
    returned as failed; KeyboardInterrupt propagates (what was scored stays in the study).
    """
    from ..optim import Budget, make_searcher, run_search

    ev, c = s.evaluator, s.constraint
    name = study_name(s.prefix, ev, algo, f"k{c.k}", seed)
    t0 = time.perf_counter()
    record = None
    try:
        record = open_record(ev, s.storage, name, algo, seed, c.n_units, extra=dict(k=c.k, **s.extra))
        searcher = make_searcher(algo, c, ev, seed, options)
        with ev.recording(record):
            res = run_search(searcher, ev, Budget(budget, seconds), record)
        if res.extra.get("interrupted"):
            raise KeyboardInterrupt
        run = Run(algo, seed, "ok", "", tuple(res.best.removed()), from_minimize(res.fitness, ev.direction),
                  time.perf_counter() - t0, trace_of(record, c))
        return run, res.best, res.evaluations, name
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # one broken run must not sink the grid
        msg = str(exc).strip().splitlines()
        run = Run(algo, seed, "failed", f"{type(exc).__name__}: {msg[0] if msg else ''}"[:300],
                  wall_seconds=time.perf_counter() - t0,
                  trace=trace_of(record, c) if record is not None else [])
        return run, None, 0, name


def _grid_bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="run", dynamic_ncols=True)


def exhaustive(constraint: Constraint, reference_budget: int, brute_force: bool | None) -> bool:
    """Whether the reference is brute force: asked for, or the space fits the reference budget."""
    from ..optim.brute import LIMIT

    size = space_size(constraint)
    if brute_force:
        if size is None or size > LIMIT:
            raise UserError(f"--brute-force over {size if size is not None else 'an uncounted space of'} masks is "
                            f"too many (limit {LIMIT}); lower --remove")
        return True
    return brute_force is None and size is not None and size <= reference_budget


def run_grid(evaluator, constraint: Constraint, algos: Sequence[str], seeds: int, budget: int | None,
             storage: str, prefix: str, metric: str, seconds: float | None = None,
             algo_options: Mapping[str, dict] | None = None, brute_force: bool | None = None,
             progress: bool = True, extra: dict | None = None, reference_budget: int = REFERENCE_BUDGET) -> Grid:
    """The reference run (brute force first, where it fits), then every (algo, seed), then the
    long reference run where brute force did not fit. ``brute_force``: None = by
    ``reference_budget``; True = enumerate whatever the size (up to the brute searcher's limit);
    False = never. KeyboardInterrupt stops the grid; the same command resumes it."""
    s = _Setting(evaluator, constraint, storage, prefix, dict(extra or {}))
    brute = exhaustive(constraint, reference_budget, brute_force)
    ref_run = _reference_run(s, "brute", 0, space_size(constraint)) if brute else None
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
                if bar is not None:
                    bar.set_postfix_str(f"{algo} seed {seed}")
                run, mask, n_evals, studies[(algo, seed)] = run_one(s, algo, seed, budget, seconds,
                                                                     (algo_options or {}).get(algo))
                runs.append(run)
                total_evals += n_evals
                if mask is not None:
                    masks[(algo, seed)] = mask
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - start
    units = None if u0 is None else evaluator.units_scored - u0
    exp = _experiment(metric, evaluator.direction, constraint.n_units, runs, algos)
    grid = Grid(exp, constraint, studies, masks, total_evals, evaluator.n_scored - n0, units, wall)
    if ref_run is None and reference_budget > 0 and brute_force is not False:
        ref_run = _reference_run(s, REFERENCE_ALGO, REFERENCE_SEED, reference_budget)
    _set_reference(grid, ref_run, brute, reference_budget)
    return grid


def _experiment(metric: str, direction: str, n_units: int, runs: list[Run], algos: Sequence[str]) -> Experiment:
    from ..optim import SEARCHERS

    kinds = {a: SEARCHERS.get(a) for a in algos}
    return Experiment(metric, direction, n_units, runs,
                      blind=frozenset(a for a, f in kinds.items() if getattr(f, "objective_blind", False)),
                      one_shot=frozenset(a for a, f in kinds.items() if getattr(f, "one_shot", False)))


def _reference_run(s: _Setting, algo: str, seed: int, budget: int) -> tuple[Run, int, float]:
    """The reference's own run, into its own study: (Run, masks it computed, wall seconds)."""
    n0, t0 = s.evaluator.n_scored, time.perf_counter()
    run, _, _, _ = run_one(s, algo, seed, budget)
    if not run.ok:
        raise UserError(f"the reference run ({algo}) failed: {run.error}")
    return run, s.evaluator.n_scored - n0, time.perf_counter() - t0


def _set_reference(grid: Grid, ref: tuple[Run, int, float] | None, brute: bool, reference_budget: int) -> None:
    exp = grid.experiment
    size = space_size(grid.constraint)
    candidates = [r for r in exp.runs if r.ok and np.isfinite(r.value)]
    if ref is not None:
        grid.reference_run, grid.reference_cost, grid.reference_seconds = ref
        candidates.append(grid.reference_run)
    if not candidates:
        grid.reference_note = "no run found a finite value"
        return
    from ..fitness import to_minimize

    best = min(candidates, key=lambda r: float(to_minimize(r.value, exp.direction)))
    exp.reference = Reference(best.value, tuple(best.removed), exact=brute)
    if brute:
        grid.reference_note = f"exact optimum: brute force over all {size} masks, run before the searchers"
    elif ref is not None:
        grid.reference_note = (f"best known, not proven: the best of every run and one {REFERENCE_ALGO} run of "
                               f"{reference_budget} evaluations (space of {size if size is not None else 'uncounted'} "
                               "masks not enumerated)")
    else:
        grid.reference_note = "best known, not proven: the best mask any compared run found"


def recorded_values(grid: Grid, evaluator) -> dict[tuple[int, ...], float]:
    """Raw values of every valid mask the grid's runs (and its reference run) scored at full
    fidelity, read from their studies' traces: a resumed grid answers from the record, so its
    evaluator's memo holds only what this process computed."""
    full = evaluator.full_fidelity
    runs = list(grid.experiment.runs) + ([grid.reference_run] if grid.reference_run is not None else [])
    out: dict[tuple[int, ...], float] = {}
    for run in runs:
        for e in run.trace:
            if e.valid and e.units >= full and math.isfinite(e.value):
                out[tuple(e.removed)] = e.value
    return out


def rank_matrix(evaluators: Mapping[str, object], grids: Mapping[str, Grid], constraint: Constraint,
                n_random: int = 20, seed: int = 0) -> RankMatrix:
    """Masks scored under every objective: every mask each grid recorded at full fidelity under
    all of them (every valid mask where brute force ran), then every final mask and
    ``n_random`` random valid ones, scored where missing."""
    names = list(evaluators)
    known = {n: recorded_values(grids[n], evaluators[n]) for n in names}
    for n in names:  # and what this process scored without a trace (none, unless a caller scored more)
        ev = evaluators[n]
        for m in ev.scored_masks():
            if constraint.is_valid(m) and m.removed() not in known[n]:
                known[n][m.removed()] = float(ev.raw(m))
    common = [r for r in known[names[0]] if all(r in known[n] for n in names[1:])]
    masks = [LayerMask.from_removed(constraint.n_units, r) for r in common]
    for g in grids.values():
        masks.extend(g.masks.values())
    masks = list(dict.fromkeys(masks))
    rng = np.random.default_rng(seed)
    seen = set(masks)
    target, tries = len(masks) + n_random, 0
    size = space_size(constraint)
    while len(masks) < target and tries < 100 * max(n_random, 1) and (size is None or len(seen) < size):
        tries += 1
        m = constraint.random_mask(rng)
        if m not in seen:
            seen.add(m)
            masks.append(m)
    values = np.full((len(masks), len(names)), np.nan)
    for j, name in enumerate(names):
        ev = evaluators[name]
        todo = [m for m in masks if m.removed() not in known[name]]
        fit = dict(zip(todo, ev.evaluate(todo))) if todo else {}
        for i, m in enumerate(masks):
            if m.removed() in known[name]:
                values[i, j] = known[name][m.removed()]
            elif np.isfinite(fit[m]):
                values[i, j] = float(from_minimize(fit[m], ev.direction))
    return RankMatrix(names, [evaluators[n].direction for n in names], values, [tuple(m.removed()) for m in masks])
