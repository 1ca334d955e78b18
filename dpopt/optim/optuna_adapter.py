"""``optuna:NAME``: any sampler class in ``optuna.samplers``, through bayes's ask/tell adapter.

The study, the per-block float scores decoded to the top ``n - k`` kept, the answering of
repeated masks from what is known and the escape move when the sampler is stuck are all
``BayesSearch``'s; only the sampler differs. Options the adapter does not know go to the
sampler's constructor (``--option n_startup_trials=5``, ``--option population_size=20``),
and ``seed`` is passed to every sampler that takes one.
"""
from __future__ import annotations

import difflib
import inspect
import warnings

import optuna

from ..errors import UserError
from ..genome import Constraint
from ._common import SearcherBase, check_int
from .base import SEARCHERS
from .bayes import BayesSearch


class OptunaSearch(BayesSearch):
    """An Optuna sampler on per-block scores in [0, 1], decoded to a mask by keeping the top n - k.

    Options:
      ``batch_size`` (8): trials asked per batch.
      ``max_tries`` (2): repeats of known masks per slot before an escape trial is enqueued.
      anything else: a keyword argument of the sampler's constructor.
    """

    sampler_cls: type = optuna.samplers.TPESampler  # set on the per-name subclass made by ``resolve``
    name = "optuna"

    def __init__(self, constraint: Constraint, seed: int = 0, batch_size: int = 8, max_tries: int = 2,
                 **sampler_options):
        SearcherBase.__init__(self, constraint, seed)
        self.batch_size = check_int("batch_size", batch_size)
        self.max_tries = check_int("max_tries", max_tries)
        params = inspect.signature(self.sampler_cls).parameters
        unknown = [k for k in sampler_options if k not in params]
        if unknown:
            raise UserError(f"{self.name} has no option {', '.join(map(repr, unknown))}; sampler options: "
                            f"{', '.join(k for k in params if k != 'seed')}, and batch_size, max_tries")
        if "seed" in params:
            sampler_options["seed"] = self.seed
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                sampler = self.sampler_cls(**sampler_options)
        except (TypeError, ValueError) as exc:  # a required argument is missing, or a value out of range
            raise UserError(f"{self.name} cannot be built from options: {exc}") from None
        self.sampler_name = self.sampler_cls.__name__
        self._open_study(sampler)

    def _ask(self):
        try:
            return super()._ask()
        except ImportError as exc:  # CmaEsSampler imports ``cmaes`` only when it first samples
            raise UserError(f"{self.name} needs a package that is not installed: {exc}") from None


def _sampler_classes() -> dict[str, type]:
    return {n: c for n, c in vars(optuna.samplers).items()
            if isinstance(c, type) and issubclass(c, optuna.samplers.BaseSampler) and c is not optuna.samplers.BaseSampler}


_CLASSES: dict[str, type] = {}


def resolve(name: str) -> type:
    """The searcher class for ``optuna:NAME``; a UserError with close names when NAME is unknown."""
    samplers = _sampler_classes()
    if name not in samplers:
        close = difflib.get_close_matches(name, list(samplers), n=5, cutoff=0.5) or sorted(samplers)
        raise UserError(f"unknown Optuna sampler {name!r}; choose one of optuna.samplers: {', '.join(close)}")
    if name not in _CLASSES:
        _CLASSES[name] = type(f"Optuna_{name}", (OptunaSearch,), {
            "sampler_cls": samplers[name], "name": f"optuna:{name}",
            "__doc__": f"Optuna's {name} on per-block scores (top n - k kept).\n\n" + OptunaSearch.__doc__,
        })
    return _CLASSES[name]


SEARCHERS.register_prefix("optuna", resolve, "any sampler of optuna.samplers, e.g. optuna:TPESampler")
