"""Searchers: each module registers itself in SEARCHERS when imported, so import them all here."""
from .base import SEARCHERS, Budget, SearchResult, Searcher, register_searcher, run_search
from . import anneal, bayes, beam, cma_search, genetic, greedy, nsga2, oneshot, random_search, single  # noqa: F401  (registration)
from . import ng_adapter, optuna_adapter  # noqa: F401  (the ng: and optuna: prefixes)

from ._common import SearcherBase  # noqa: E402

__all__ = ["SEARCHERS", "Budget", "SearchResult", "Searcher", "SearcherBase", "register_searcher", "run_search"]
