"""Pareto fronts of a multi-objective search: which masks no other mask beats on every axis.

A search with ``--minimize params`` or ``--minimize latency`` answers with a front, not one
mask: ``pareto.json`` lists its points (removed units, every objective's value, the cost's
noise), ``pareto.png`` plots them over every mask evaluated, and ``dpopt export
--from-result pareto.json --point N`` exports any one of them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import UserError


def nondominated(values: np.ndarray) -> list[int]:
    """Indices of the rows no other row dominates (all columns minimised; duplicates kept once)."""
    v = np.asarray(values, dtype=float)
    keep: list[int] = []
    for i in range(len(v)):
        le = np.all(v <= v[i], axis=1)
        lt = np.any(v < v[i], axis=1)
        if np.any(le & lt):
            continue
        if any(np.array_equal(v[i], v[j]) for j in keep):
            continue
        keep.append(i)
    return keep


def hypervolume_2d(points: np.ndarray, ref: Sequence[float]) -> float:
    """Area dominated by ``points`` (two minimised columns) and bounded by ``ref``: one number
    for how good a whole front is, so two fronts (two searchers, two seeds) can be compared."""
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    pts = pts[np.all(pts < np.asarray(ref, dtype=float), axis=1)]
    if not len(pts):
        return 0.0
    pts = pts[nondominated(pts)]
    pts = pts[np.argsort(pts[:, 0])]
    area, y_prev = 0.0, float(ref[1])
    for x, y in pts:
        area += (float(ref[0]) - x) * (y_prev - y)
        y_prev = y
    return area


def front_points(items: Sequence[tuple[Any, np.ndarray]]) -> list[tuple[Any, np.ndarray]]:
    """The non-dominated (mask, minimised row) pairs, sorted by the first cost (the x axis)."""
    if not items:
        return []
    rows = np.array([np.asarray(v, dtype=float) for _, v in items])
    finite = np.all(np.isfinite(rows), axis=1)
    idx = [i for i in np.flatnonzero(finite)]
    keep = [idx[j] for j in nondominated(rows[idx])] if idx else []
    keep.sort(key=lambda i: tuple(rows[i][1:]) + (rows[i][0],))
    return [items[i] for i in keep]


def write_pareto(path: str | os.PathLike, doc: dict) -> None:
    """Write atomically: an interrupted run never leaves half a file."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, p)


def plot_pareto(path: str | os.PathLike, metrics: Sequence[str], everything: np.ndarray, front: np.ndarray,
                title: str = "", xerr: np.ndarray | None = None, labels: Sequence[str] | None = None) -> None:
    """Every evaluated mask in grey, the front as a line, for the objective (y) against the first cost (x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    if len(everything):
        ax.scatter(everything[:, 1], everything[:, 0], s=10, c="0.7", label="evaluated masks")
    if len(front):
        order = np.argsort(front[:, 1])
        ax.plot(front[order, 1], front[order, 0], "-o", c="C3", ms=4, label=f"Pareto front ({len(front)} points)")
        if xerr is not None:
            ax.errorbar(front[:, 1], front[:, 0], xerr=xerr, fmt="none", ecolor="C3", alpha=0.5, lw=1)
        for i, (y, x) in enumerate(front[:, :2]):
            ax.annotate(str(i), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    labels = list(labels or metrics)
    ax.set_xlabel(labels[1])
    ax.set_ylabel(labels[0])
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def point_units(path: str | os.PathLike, point: int | None) -> tuple[list[str], dict]:
    """What a result file says to remove: its best mask (result.json) or front point ``point``
    (pareto.json, or a result.json that holds a front). Returns (unit names, the file's JSON)."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise UserError(f"--from-result {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"--from-result {path} is not a dpopt result file ({exc.__class__.__name__})") from None
    points = doc.get("points") if isinstance(doc, dict) else None
    if points is None and isinstance(doc, dict) and isinstance(doc.get("pareto"), dict):
        points = doc["pareto"].get("points")
    if point is not None or (points is not None and "removed_units" not in doc):
        if not points:
            raise UserError(f"--from-result {path} holds no Pareto front, so --point does not apply")
        if point is None:
            raise UserError(f"--from-result {path} is a Pareto front of {len(points)} points: choose one with "
                            f"--point 0..{len(points) - 1}")
        if not 0 <= point < len(points):
            raise UserError(f"--point {point} is out of range: {path} has points 0..{len(points) - 1}")
        entry = points[point] if isinstance(points[point], dict) else {}
        return _unit_list(entry.get("removed_units"), path), doc
    if not isinstance(doc, dict) or "removed_units" not in doc:
        raise UserError(f"--from-result {path} is not a dpopt result file (no removed_units)")
    return _unit_list(doc["removed_units"], path), doc


def _unit_list(units, path) -> list[str]:
    """A result file's ``removed_units``: a list of unit names (``block.3``, ``attn.7``) or block indices."""
    if not isinstance(units, list) or not all(isinstance(u, (str, int)) and not isinstance(u, bool) for u in units):
        raise UserError(f"--from-result {path}: removed_units must be a list of unit names, got {units!r:.60}")
    return [str(u) for u in units]
