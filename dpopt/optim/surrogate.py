"""A ridge model of fitness over masks: which units, and which neighbouring pairs, are removed.

The genetic searcher fits it on every mask scored in a run and uses it twice, at no
evaluation's cost: to screen candidate children (``predict``) and to jump to the model's own
optimum (``unit_costs``, ranked by ``Constraint.from_scores``).

It fits ranks, not values: a few huge perplexities would otherwise decide the fit. The
pair terms (both units of a neighbouring pair removed) let it credit a run of removed
blocks that costs less than its blocks apart, which no per-unit cost can express.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..genome import LayerMask


def ridge(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Coefficients of ``y`` on the columns of ``x``, both centred, with a unit ridge penalty."""
    xc = x - x.mean(axis=0)
    return np.linalg.solve(xc.T @ xc + np.eye(x.shape[1]), xc.T @ (y - y.mean()))


def removed_matrix(masks: Sequence[LayerMask]) -> np.ndarray:
    """One row per mask, 1.0 where a unit is removed."""
    return np.array([~m.bits for m in masks], dtype=float)


class RidgeSurrogate:
    """Per-unit (and, with ``pairs``, per-neighbouring-pair) removal costs, fitted by ridge regression.

    ``fit(masks, values)`` replaces the model's previous fit; ``predict(masks)`` is lower for masks
    the fit expects to score better (a rank scale in [0, 1), not the objective's);
    ``unit_costs`` are the per-unit terms of a fit without pairs, whose lowest ``k`` make
    the model's own optimum under a per-unit view.
    """

    def __init__(self, pairs: bool = True):
        self.pairs = bool(pairs)
        self.unit_costs: np.ndarray | None = None
        self.coef: np.ndarray | None = None  # over ``features``: units, then pairs

    @property
    def fitted(self) -> bool:
        return self.coef is not None

    def features(self, removed: np.ndarray) -> np.ndarray:
        """Removed-unit indicators, then (with ``pairs``) one per neighbouring pair removed together."""
        x = np.asarray(removed, dtype=float)
        if not self.pairs:
            return x
        return np.concatenate([x, x[..., :-1] * x[..., 1:]], axis=-1)

    def fit(self, masks: Sequence[LayerMask], values: Sequence[float]) -> "RidgeSurrogate":
        removed = removed_matrix(masks)
        y = np.asarray(values, dtype=float)
        y = np.argsort(np.argsort(y)) / len(y)
        self.unit_costs = ridge(removed, y)
        self.coef = ridge(self.features(removed), y) if self.pairs else self.unit_costs
        return self

    def predict(self, masks: Sequence[LayerMask]) -> np.ndarray:
        """The fitted score of each mask (lower: expected better)."""
        if self.coef is None:
            raise RuntimeError("RidgeSurrogate.predict before fit")
        # one dot product per mask: the same arithmetic whether asked for one mask or many
        return np.array([float(row @ self.coef) for row in self.features(removed_matrix(masks))])
