"""Searchers: each module registers itself in SEARCHERS when imported, so import them all here."""
from .base import SEARCHERS, Budget, SearchOutcome, Searcher, register_searcher, run_search
from . import anneal, bayes, beam, brute, cma_search, genetic, greedy, nsga2, oneshot, random_search, single  # noqa: F401  (registration)
from . import ng_adapter, optuna_adapter  # noqa: F401  (the ng: and optuna: prefixes)

from ._common import SearcherBase  # noqa: E402
from ..errors import UserError  # noqa: E402


def make_searcher(algo: str, constraint, evaluator, seed: int, options: dict | None = None):
    """The searcher ``algo`` over ``constraint``; a block-ranking one gets the evaluator's block statistics."""
    factory = SEARCHERS.get(algo)
    options = dict(options or {})
    if factory.needs_block_stats:
        if evaluator.units is not None and evaluator.units.kind != "block":
            raise UserError(f"--algo {algo} ranks whole blocks by their hidden states; use --units block")
        options["stats"] = evaluator.block_stats()
    try:
        return factory(constraint, seed=seed, **options)
    except TypeError as exc:
        raise UserError(f"bad option for --algo {algo}: {exc}") from None


def check_searcher_options(algo: str, options: dict | None, seed: int = 0, k: int = 1) -> None:
    """Refuse an unknown or mistyped searcher option before any model loads: the searcher is
    built once over a stand-in space of ``k`` removals (a block-ranking one without its
    statistics, so only its signature is checked)."""
    import inspect

    from ..genome import Constraint

    factory = SEARCHERS.get(algo)
    options = dict(options or {})
    try:
        inspect.signature(factory).bind(None, seed=seed, **({"stats": None} if factory.needs_block_stats else {}),
                                        **options)
    except TypeError as exc:
        raise UserError(f"bad option for --algo {algo}: {exc}") from None
    except ValueError:  # no introspectable signature: construction below still tells
        pass
    if factory.needs_block_stats:
        return
    try:
        factory(Constraint(max(2 * k, 8), k), seed=seed, **options)
    except (TypeError, ValueError) as exc:
        raise UserError(f"bad option for --algo {algo}: {exc}") from None


__all__ = ["check_searcher_options", "SEARCHERS", "Budget", "SearchOutcome", "Searcher", "SearcherBase", "make_searcher", "register_searcher",
           "run_search"]
