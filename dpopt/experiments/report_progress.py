"""The compare report's progress section: COCO's fixed-budget and fixed-target views.

The gap to the reference against evaluations on log-log axes (searchers as curves, one-shot
baselines as labelled points), the fixed-target ERT table, the runtime ECDF over targets,
and the tokens axis only where evaluations scored different numbers of tokens. The numbers
come from :mod:`.benchmarking`; the drawing helpers from :mod:`.report`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from .benchmarking import (
    DEFAULT_TARGETS, ECDF_TARGETS, GAP_FLOOR, MIN_RUNS_FOR_BANDS, budget_grid, evaluations_used, fidelities_differ,
    fixed_target_table, gap_curve, relative_gap, runtime_ecdf, target_label,
)
from .document import Doc, _colors, _fmt, _plt, _save
from .stats import Experiment, Reference


def _gap_text(g: float, ref: Reference) -> str:
    """A gap as a reader takes it: percent of the reference, or a multiple of it past 10x."""
    if not math.isfinite(g):
        return "–"
    if ref.value == 0:
        return f"{g:.3g}"
    return f"{100 * g:.3g}%" if g < 10 else f"{g:.3g}× |ref|"


def _reference_title(ref: Reference) -> str:
    return "reference: exact optimum (brute force)" if ref.exact else "reference: best known, not proven optimal"


def _one_shot_points(exp: Experiment, ref: Reference, axis: str) -> list[tuple[str, float, float]]:
    """(searcher, x, median gap) for each one-shot baseline: where it stands, not a curve."""
    out = []
    for algo in [a for a in exp.algos if a in exp.one_shot]:
        runs = exp.ok_runs(algo)
        if not runs:
            continue
        xs = [evaluations_used(r) if axis == "evaluations" else sum(e.units for e in r.trace) for r in runs]
        gaps = [relative_gap(r.value, ref, exp.direction) for r in runs]
        out.append((algo, max(float(np.median(xs)), 1.0), float(np.nanmedian(gaps))))
    return out


def _draw_gaps(ax, exp: Experiment, ref: Reference, axis: str) -> float:
    """Curves for searchers, labelled points for one-shot baselines; returns the lowest gap drawn."""
    colors = dict(zip(exp.algos, _colors(len(exp.algos))))
    low = math.inf
    for algo in [a for a in exp.algos if a not in exp.one_shot]:
        c = gap_curve(exp.ok_runs(algo), ref, exp.direction, axis)
        if not len(c.x):
            continue
        ax.step(c.x, np.maximum(c.median, GAP_FLOOR), where="post", color=colors[algo], label=f"{algo} (n={c.n_runs})")
        if c.has_band:
            ax.fill_between(c.x, np.maximum(c.low, GAP_FLOOR), np.maximum(c.high, GAP_FLOOR), step="post",
                            color=colors[algo], alpha=0.2)
        low = min(low, np.nanmin(np.r_[c.median, c.low, math.inf]))
    for (algo, x, g), marker in zip(_one_shot_points(exp, ref, axis), "DsP^vX*" * 4):
        y = max(g, GAP_FLOOR) if math.isfinite(g) else math.nan
        ax.scatter([x], [y], marker=marker, s=70, color=colors[algo], edgecolor="k", zorder=5,
                   label=f"{algo} (one-shot, gap {_gap_text(g, ref)})")
        ax.annotate(algo, (x, y), textcoords="offset points", xytext=(8, 0), va="center", fontsize=8)
        low = min(low, g) if math.isfinite(g) else low
    return low


def plot_gap_curves(exp: Experiment, ref: Reference, axis: str, report_dir: Path, name: str, doc: Doc) -> None:
    """Fixed-budget view: the median gap to the reference over seeds, log-log, searchers as curves
    (quartile band from MIN_RUNS_FOR_BANDS runs) and one-shot baselines as labelled points.

    The y axis ends just below the smallest gap drawn, so its height goes to the end of the
    runs; gaps under GAP_FLOOR (the reference reached) sit on a marked floor line.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    low = _draw_gaps(ax, exp, ref, axis)
    if low <= GAP_FLOOR:
        reached = "optimum" if ref.exact else "best known"
        ax.axhline(GAP_FLOOR, color="grey", ls=":", lw=1)
        ax.text(0.01, GAP_FLOOR, f" gap ≤ {GAP_FLOOR:g}: {reached} reached", transform=ax.get_yaxis_transform(),
                va="bottom", fontsize=7, color="grey")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(bottom=max(GAP_FLOOR, low) / 2 if math.isfinite(low) else GAP_FLOOR / 2)
    ax.set_xlabel("evaluations (log)" if axis == "evaluations" else "scored tokens / questions (log)")
    ax.set_ylabel(("absolute gap x − ref" if ref.value == 0 else "relative gap (x − ref) / |ref|") + " (log)")
    ax.set_title(f"{exp.objective}: best valid so far vs {_reference_title(ref)}", fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    band = f"band = quartiles where at least {MIN_RUNS_FOR_BANDS} runs have a value"
    _save(fig, report_dir, name, f"Gap of the best valid {exp.objective} so far to the reference "
          f"({_reference_title(ref)}) vs {ax.get_xlabel()}: median over seeds, {band}; one-shot baselines as "
          f"points; gaps below {GAP_FLOOR:g} drawn at {GAP_FLOOR:g}", doc)


def plot_runtime_ecdf(exp: Experiment, ref: Reference, report_dir: Path, name: str, doc: Doc,
                      targets: Sequence[float] = ECDF_TARGETS) -> None:
    """Runtime ECDF aggregated over targets: how many (run, target) pairs each budget solves."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.0))
    budgets = budget_grid(max((evaluations_used(r) for r in exp.runs if r.ok), default=0))
    colors = dict(zip(exp.algos, _colors(len(exp.algos))))
    markers = iter("DsP^vX*" * 4)
    for algo in exp.algos:
        runs = exp.ok_runs(algo)
        if not runs or not len(budgets):
            continue
        if algo in exp.one_shot:
            x = max(float(np.median([evaluations_used(r) for r in runs])), 1.0)
            y = runtime_ecdf(runs, ref, exp.direction, [x], targets)[0]
            ax.scatter([x], [y], marker=next(markers), s=70, color=colors[algo], edgecolor="k", zorder=5,
                       label=f"{algo} (one-shot)")
            continue
        ax.step(budgets, runtime_ecdf(runs, ref, exp.direction, budgets, targets), where="post",
                color=colors[algo], label=f"{algo} (n={len(runs)})")
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("evaluations (log)")
    ax.set_ylabel("fraction of (run, target) pairs reached")
    ax.set_title(f"{exp.objective}: runtime ECDF over {len(targets)} targets, {_reference_title(ref)}", fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    shown = ", ".join(target_label(t, ref) for t in targets)
    _save(fig, report_dir, name, f"Runtime ECDF: the fraction of (run, target) pairs whose best valid {exp.objective} "
          f"came within the target gap by each budget; targets {shown}", doc)


def _ert_cell(c) -> str:
    return f"{'∞' if math.isinf(c.value) else _fmt(c.value)} ({c.successes}/{c.runs})"


def benchmark_section(exp: Experiment, ref: Reference | None, report_dir: Path, doc: Doc, prefix: str = "",
                      level: int = 2, targets: Sequence[float] = DEFAULT_TARGETS) -> dict:
    """COCO's two views: gap at each budget (curves), and budget to each target (ERT, runtime ECDF)."""
    doc.h(f"{exp.objective}: progress to the reference", level)
    if ref is None:
        doc.p("No reference value: no gaps to draw.")
        return {"targets": []}
    plot_gap_curves(exp, ref, "evaluations", report_dir, f"{prefix}gap_evaluations", doc)
    differ = fidelities_differ(exp)
    if differ:
        plot_gap_curves(exp, ref, "units", report_dir, f"{prefix}gap_tokens", doc)
    table = fixed_target_table(exp, targets, ref)
    doc.table(["searcher"] + [f"ERT to {target_label(t, ref)} (reached/runs)" for t in targets],
              [[t.algo + (" (one-shot)" if t.one_shot else "")] + [_ert_cell(c) for c in t.cells] for t in table])
    doc.p(f"ERT (expected running time, as COCO defines it): every evaluation spent by every run — up to its "
          f"first hit when it reached the target, all of them when it did not — divided by the runs that reached "
          f"it; ∞ when none did. Targets are gaps to the reference ({_reference_title(ref)})"
          + (", absolute since the reference is 0." if ref.value == 0 else ", relative to |reference|."))
    plot_runtime_ecdf(exp, ref, report_dir, f"{prefix}runtime_ecdf", doc)
    return {"targets": table, "fidelities_differ": differ}


