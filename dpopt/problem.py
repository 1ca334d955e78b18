"""Problem: the model-free spec of one search, and SearchPlan: how to run a searcher on it.

Both are built once from user input, before any model loads. ``validate()`` is the one place
a user mistake is caught (one line, exit 2): the CLI, ``api``, ``compare``/``study`` and a
worker all build a Problem and hand it on, so none of them checks its inputs again. A
Problem owns what decides a mask's value (its fingerprint's settings), the recipe a worker
rebuilds it from (:meth:`Problem.from_recipe`) and the objective's direction; a SearchPlan
holds what only decides how the search runs (searcher, budget, seed, storage, outputs).
"""
from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from .data import DEFAULT_DATA_SEED, DEFAULT_TEXT
from .errors import UserError

UNIT_SPACES = ("block", "sublayer")


def portable(spec: str | None) -> str | None:
    """A local path made absolute (a worker may start elsewhere); a zoo name or hub id as given."""
    if spec is None:
        return None
    p = Path(spec).expanduser()
    return str(p.resolve()) if p.exists() else spec


def check_writable(path: str, flag: str = "--output") -> None:
    """Refuse an output path that cannot be written, before any model loads."""
    p = Path(path).expanduser()
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise UserError(f"{flag} {path} is a directory")
    if p.exists() and not p.is_file():
        raise UserError(f"{flag} {path} is not a regular file")
    if not parent.exists():
        raise UserError(f"{flag} folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UserError(f"{flag} {path} is not writable")


def check_report_folder(report: str | None, overwrite: bool = False) -> None:
    """A report folder must be new or empty (or ``--overwrite``), and creatable by this user."""
    if report is None:
        return
    path = Path(report)
    if path.exists() and not path.is_dir():
        raise UserError(f"report folder {report!r} is a file")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise UserError(f"report folder {report!r} exists and is not empty; use --overwrite or another folder")
    existing = path.resolve()
    while not existing.exists():
        existing = existing.parent
    try:  # a real try, not os.access: root passes that on a read-only file system
        tempfile.TemporaryDirectory(dir=existing).cleanup()
    except OSError as exc:
        raise UserError(f"report folder {report!r} cannot be written ({existing}: {exc.strerror})") from None


def _check_int(value, flag: str, low: int | None = None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{flag} must be a whole number, got {value!r}")
    if low is not None and value < low:
        raise UserError(f"{flag} must be at least {low}, got {value}")


@dataclass(frozen=True)
class Problem:
    """What is searched and how a mask is scored; everything here but ``device``-free options
    (``prefix_sharing``, ``cache_mb``, ``memory_mb``: how, not what) decides a mask's value."""

    model: str = "smollm2-135m"
    objective: str = "ppl"
    options: dict[str, Any] = field(default_factory=dict)  # the objective's options the user set
    data: str | None = None
    tasks: str | None = None
    split: str = "calib"
    data_seed: int = DEFAULT_DATA_SEED
    units: str = "block"
    tie: bool = False
    minimize: tuple[str, ...] = ()  # costs minimised beside the objective (a Pareto search)
    cost_options: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float32"
    prefix_sharing: bool = True
    cache_mb: float | None = None
    memory_mb: float | None = None
    patch: str | None = None  # "linear": every removed span is scored with its least-squares map
    patch_tokens: int | None = None  # calibration tokens the patch fits use (default 4096)

    # --- checks ------------------------------------------------------------------------------
    def validate(self, loaded: bool = False, shared_options: bool = False) -> "Problem":
        """Every check of this spec that needs no model; returns the spec with local paths made
        absolute and unset options dropped (what a worker elsewhere must see). ``loaded``: the
        model is already in memory, so its reference needs no check. ``shared_options``: the
        options belong to a run of several objectives (checked together with
        :func:`dpopt.objectives.validate_objective_spec`); this one keeps those it takes."""
        from .costs import check_cost_options
        from .data import SPLITS, check_data_ref
        from .models.loading import DTYPES, check_model_ref
        from .objectives import options_for, uses_tasks, validate_objective_spec

        if self.dtype not in DTYPES:
            raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.split not in SPLITS:
            raise UserError(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        _check_int(self.data_seed, "--data-seed", 0)
        if self.units not in UNIT_SPACES:
            raise UserError(f"--units must be one of {', '.join(UNIT_SPACES)}, got {self.units!r}")
        if self.tie and self.units != "sublayer":
            raise UserError("--tie ties a block's attention and MLP units: it needs --units sublayer")
        from .models.patch import check_patch

        check_patch(self.patch, self.units)
        _check_int(self.patch_tokens, "--patch-tokens", 1)
        for flag, value in (("--cache-mb", self.cache_mb), ("--memory-mb", self.memory_mb)):
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise UserError(f"{flag} must be a number of MiB >= 0, got {value!r}")
        options = {k: v for k, v in self.options.items() if v is not None}
        if shared_options:
            options = options_for(self.objective, options)
        validate_objective_spec(self.objective, options)
        text, mc = uses_tasks(self.objective)
        if text:
            check_data_ref(self.data or DEFAULT_TEXT, "--data")
        if mc and self.tasks is not None:
            check_data_ref(self.tasks, "--tasks")
        if self.patch is not None and not text:  # the fits read text even where the objective does not
            check_data_ref(self.data or DEFAULT_TEXT, "--data")
        # no --minimize: the options can only be --max-latency's timer's
        check_cost_options(list(self.minimize) or ["latency"], self.cost_options)
        if not isinstance(self.model, str) or not self.model.strip():
            raise UserError("--model is empty")
        if not loaded:  # last: every mistake above is named even beside a model that is not there
            check_model_ref(self.model)
        return replace(self, options=options, data=portable(self.data), tasks=portable(self.tasks),
                       model=portable(self.model), minimize=tuple(self.minimize))

    # --- what a worker rebuilds it from --------------------------------------------------------
    def recipe(self) -> dict[str, Any]:
        """The study's ``recipe``: every field, JSON-ready."""
        d = asdict(self)
        d["minimize"] = list(self.minimize)
        return d

    @classmethod
    def from_recipe(cls, recipe: dict[str, Any]) -> "Problem":
        """A Problem from a study's recipe, also one recorded before Problems existed (it lacks
        the newer keys, which take their defaults); a foreign key is refused."""
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(recipe) - known)
        if unknown:
            raise UserError(f"the study's recipe has settings this dpopt does not know ({', '.join(unknown)}); "
                            "run the worker with the dpopt version that made the study")
        d = dict(recipe)
        d["minimize"] = tuple(d.get("minimize") or ())
        return cls(**d)

    # --- building ------------------------------------------------------------------------------
    def load(self, device: str = "auto"):
        """The model this problem names, wrapped for masked execution (a LoadedModel)."""
        from .evaluator import LoadedModel
        from .models.loading import load_model
        from .models.masked import MaskedModel

        m, tok, source, weights = load_model(self.model, device=device, dtype=self.dtype)
        masked = MaskedModel(m)
        masked.verify()
        return LoadedModel(m, tok, masked, source, path=weights, spec=portable(self.model))

    def space(self, lm):
        """The unit space: one bit per block, or per attention/MLP sub-layer."""
        from .genome import UnitSpace

        if self.units == "block":
            return UnitSpace.blocks(lm.n_blocks)
        return UnitSpace.sublayers(lm.n_blocks, lm.masked.sublayer_names(), tie=self.tie)

    def build(self, lm, space=None):
        """Build the objective on its data split, prepare it once, and wrap it in the evaluator.

        ``space``: a unit space other than :meth:`space` (``dpopt eval`` scores a mask that names
        sub-layers in the space those names make)."""
        from .costs import make_costs
        from .evaluator import Evaluator
        from .objectives import build_objective
        from .record.fingerprint import Fingerprint

        start = time.perf_counter()
        space = space if space is not None else self.space(lm)
        costs = make_costs(lm, space, list(self.minimize), **self.cost_options)
        obj, obj_data = build_objective(self.objective, data=self.data, tasks=self.tasks, split=self.split,
                                        seed=self.data_seed, **self.options)
        obj.prepare(lm, obj_data)
        patcher = self.patcher(lm)
        if patcher is not None and space.kind != "block":
            from .models.patch import check_patch

            check_patch(self.patch, space.kind)
        fingerprint = Fingerprint(self.settings(lm, obj, space, costs))
        evaluator = Evaluator(lm, obj, prefix_sharing=self.prefix_sharing, cache_mb=self.cache_mb,
                              memory_mb=self.memory_mb, fingerprint=fingerprint, units=space, costs=costs, problem=self,
                              patch=patcher)
        evaluator.prepare_seconds = time.perf_counter() - start  # what a search reports beside its own time
        return evaluator

    def patch_settings(self):
        """What the patch fits are made from: the calibration split of the search's text data."""
        from .models.patch import DEFAULT_PATCH_TOKENS, PatchSettings

        if self.patch is None:
            return None
        return PatchSettings(kind=self.patch, data=self.data, data_seed=self.data_seed,
                             tokens=self.patch_tokens or DEFAULT_PATCH_TOKENS,
                             seq_len=int(self.options.get("seq_len") or 512))

    def patcher(self, lm):
        """The model's shared patcher for this problem's patch (None without one)."""
        from .models.patch import patcher_for

        settings = self.patch_settings()
        return None if settings is None else patcher_for(lm, settings)

    def settings(self, lm, objective, space, costs: Sequence = ()) -> dict[str, Any]:
        """Everything that decides a mask's value: what the fingerprint hashes.

        The block space leaves its unit names out, so block studies recorded before unit
        spaces existed still resume."""
        from .data.identity import data_identity
        from .objectives import DEFAULT_TASKS, uses_tasks

        text, mc = uses_tasks(self.objective)
        settings = {
            "model": lm.identity(),
            "dtype": str(lm.masked.dtype).replace("torch.", ""),
            "objective": objective.name,
            "options": objective.settings(),
            "data": data_identity((self.data or DEFAULT_TEXT) if text else None),  # the bytes, not the path
            "tasks": data_identity((self.tasks or DEFAULT_TASKS) if mc else None),
            "split": self.split,
            "data_seed": self.data_seed,
        }
        if space.kind != "block":
            settings["units"] = list(space.names)
        if costs:
            settings["costs"] = {c.name: c.settings() for c in costs}
        if self.patch is not None:  # absent without a patch, so unpatched studies keep their fingerprint
            settings["patch"] = self.patch_settings().identity()
        return settings


def problem_for(lm, objective: str = "ppl", data: str | None = None, tasks: str | None = None,
                split: str = "calib", data_seed: int = DEFAULT_DATA_SEED, prefix_sharing: bool = True,
                cache_mb: float | None = None, memory_mb: float | None = None, units: str = "block",
                tie: bool = False, minimize: str | Sequence[str] | None = None, cost_options: dict | None = None,
                shared_options: bool = False, patch: str | None = None, patch_tokens: int | None = None,
                **options) -> Problem:
    """The validated Problem of scoring ``lm`` so (its model reference is the one it was loaded from)."""
    if isinstance(minimize, str):
        minimize = [m.strip() for m in minimize.split(",") if m.strip()]
    return Problem(model=lm.spec or lm.source, objective=objective, options=options, data=data, tasks=tasks,
                   split=split, data_seed=data_seed, units=units, tie=tie, minimize=tuple(minimize or ()),
                   cost_options=dict(cost_options or {}), dtype=str(lm.masked.dtype).replace("torch.", ""),
                   prefix_sharing=prefix_sharing, cache_mb=cache_mb, memory_mb=memory_mb, patch=patch,
                   patch_tokens=patch_tokens).validate(
                       loaded=True, shared_options=shared_options)


@dataclass(frozen=True)
class SearchPlan:
    """How one searcher runs on a Problem: what it may remove, for how long, and where it records."""

    algo: str = "genetic"
    algo_options: dict[str, Any] = field(default_factory=dict)
    remove: int | str | None = None  # K, or "MIN:MAX"
    sparsity: float | None = None
    protect: str | Sequence[int] | None = None
    max_params: float | str | None = None
    max_latency: float | None = None
    budget: int | None = 200
    seconds: float | None = None
    seed: int = 0
    storage: str | None = None
    study: str | None = None
    output: str | None = None
    pareto: str | None = None
    workers: int = 0
    queue: bool = False

    def validate(self, minimizes: bool = False) -> "SearchPlan":
        """Every check of the run that needs no model (``minimizes``: the problem has costs)."""
        from .genome import parse_params, parse_remove
        from .optim import SEARCHERS, check_searcher_options

        if self.remove is None and self.sparsity is None and self.max_params is None and self.max_latency is None:
            raise UserError("give --remove K, --remove MIN:MAX, --sparsity F, --max-params N or --max-latency MS")
        if self.max_latency is not None and not self.max_latency > 0:
            raise UserError(f"--max-latency must be positive ms per token, got {self.max_latency:g}")
        size = parse_remove(self.remove)
        parse_params(self.max_params)
        factory = SEARCHERS.get(self.algo)
        _check_int(self.seed, "--seed", 0)
        check_searcher_options(self.algo, self.algo_options, self.seed, k=max(1, size[0] if size else 1))
        _check_int(self.budget, "--budget", 1)
        if self.seconds is not None and not self.seconds > 0:
            raise UserError(f"--time-budget must be positive seconds, got {self.seconds}")
        _check_int(self.workers, "--workers", 0)
        if minimizes:
            if not factory.multi_objective:
                raise UserError(f"--minimize needs a multi-objective searcher (nsga2, random); {self.algo} "
                                "optimises one number")
            if self.workers or self.queue:
                raise UserError("--minimize is measured in this process: it does not combine with --workers/--queue")
        if (self.workers or self.queue) and self.storage == "none":
            raise UserError("--workers/--queue need a study storage for the queue: give --storage URL, not none")
        check_storage(self.storage)
        for flag, path in (("--output", self.output), ("--pareto", self.pareto)):
            if path:
                check_writable(path, flag)
        return self


def check_storage(storage: str | None) -> None:
    """``none`` (record nothing), or a storage URL whose file (if any) can be written."""
    from .record.storage import DEFAULT_STORAGE, check_storage_writable

    if storage != "none":
        check_storage_writable(storage or DEFAULT_STORAGE)


@dataclass(frozen=True)
class GridPlan:
    """``dpopt compare``/``study``: every (searcher, seed) of a grid, each into its own study."""

    algos: Sequence[str]
    seeds: int = 5
    budget: int | None = 200
    report: str | None = None
    overwrite: bool = False
    storage: str | None = None
    reference_budget: int = 5000

    def validate(self) -> "GridPlan":
        from .optim import SEARCHERS

        for name in self.algos:  # each name checked before any run starts
            SEARCHERS.get(name)
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
            raise UserError(f"--seeds must be at least 1, got {self.seeds}")
        if self.budget is not None and (isinstance(self.budget, bool) or not isinstance(self.budget, int)
                                        or self.budget < 1):
            raise UserError(f"--budget must be a positive number of evaluations, got {self.budget}")
        _check_int(self.reference_budget, "--reference-budget", 0)
        if self.storage == "none":
            raise UserError("compare and study read their runs back from the study storage; --storage none is not "
                            "allowed")
        check_storage(self.storage)
        check_report_folder(self.report, self.overwrite)
        return self
