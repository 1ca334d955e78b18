"""The study report's own sections: the gated overlaps and how objectives agree on good masks.

Drawn into the same :class:`.report.Doc` as the compare sections; kept in a module of their
own so ``report.py`` stays the generic renderer and the compare report.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import numpy as np

from .agreement import MIN_MASKS, MIN_RUNS, PairAgreement, StudyFinding, agreements, objective_vs_searcher
from .document import Doc, _fmt, _plt, _save, _slug, plot_matrix
from .stats import Experiment, RankMatrix


def study_overlap_section(f: StudyFinding, experiments: Mapping[str, Experiment], doc: Doc) -> None:
    """Convergence per objective, then the overlaps: objective-dependent searchers (the ones the
    headline reads), objective-blind ones apart, and each searcher's seed agreement beside them."""
    doc.h("Objective vs searcher")
    doc.table(["objective", "reference", "reference is", "runs within 1%", "share", f"≥ {f.threshold:.0%}"],
              [[o, c.reference.value if c.reference else math.nan,
                "–" if c.reference is None else ("brute-force optimum" if c.reference.exact
                                                  else "best known, not proven"),
                f"{c.n_within}/{c.n_runs}", c.share, "yes" if c.share >= f.threshold else "no"]
               for o, c in f.convergence.items()])
    doc.p("Runs counted: objective-dependent searchers that search (blind and one-shot searchers cannot "
          "converge with more budget). The verdict is stated only when every objective reaches the share "
          f"and every cell has at least {MIN_RUNS} runs for a seed bootstrap.")
    groups = [("objective-dependent", f.overlap)] + ([("objective-blind (apart)", f.blind)] if f.blind else [])
    doc.table(["searchers", "between seeds", "across objectives", "across searchers", "difference",
               "95% seed-bootstrap interval"],
              [[f"{label}: {', '.join(ov.searchers) or 'none'}", ov.within_seeds, ov.across_objectives,
                ov.across_searchers, ov.across_searchers - ov.across_objectives,
                f"[{_fmt(ov.diff_low, 3)}, {_fmt(ov.diff_high, 3)}]" if not ov.no_interval
                else f"none: {ov.no_interval}"] for label, ov in groups])
    doc.p("Mean Jaccard overlap of the final masks' removed blocks: between seeds = same searcher and "
          "objective (the ceiling the other two are read against); across objectives = same searcher; "
          "across searchers = same objective. Blind searchers remove the same blocks under every objective "
          "by construction, so they are kept out of the headline.")
    objectives = list(experiments)
    algos = list(dict.fromkeys(a for e in experiments.values() for a in e.algos))
    blind = set().union(*(e.blind for e in experiments.values()))
    one_shot = set().union(*(e.one_shot for e in experiments.values()))
    rows = []
    for a in algos:
        kind = ("objective-blind" if a in blind else "objective-dependent") + (", one-shot" if a in one_shot else "")
        across = objective_vs_searcher(experiments, n_boot=0, algos=[a]).across_objectives
        rows.append([a, kind] + [f.seed_agreement.get((o, a), math.nan) for o in objectives] + [across])
    doc.table(["searcher", "kind"] + [f"between seeds ({o})" for o in objectives] + ["across objectives"], rows)


def agreement_section(rm: RankMatrix, corr, report_dir: Path, doc: Doc) -> list[PairAgreement]:
    """Per pair of objectives: Spearman overall and among each one's best masks, where each
    one's best lands under the other, the top-k overlap, and a scatter of one against the other."""
    pairs = agreements(rm)
    doc.h("Do the objectives agree on the good masks?")
    doc.p(f"Over the {len(rm.values)} masks scored under every objective; values signed so that a positive "
          "correlation means agreement on which masks are better. A global Spearman is carried by the many "
          "masks every objective finds bad; the rows within each objective's top masks show whether they "
          f"agree where the choice is made (no value over fewer than {MIN_MASKS} masks).")
    kendall = {(c.a, c.b): c for c in corr}
    for pa in pairs:
        doc.h(f"{pa.a} vs {pa.b}", 3)
        rows = [[("all masks" if t.by == "" else f"{t.by}'s top {t.fraction:.0%}"), t.spearman, t.n, t.reason]
                for t in pa.spearmans]
        c = kendall.get((pa.a, pa.b))
        if c is not None:
            rows.append(["Kendall τ, all masks", c.kendall, c.n, f"p = {_fmt(c.kendall_p, 3)}"])
        doc.table(["Spearman ρ over", "value", "masks", "note"], rows)
        ranks = [[f"{pa.a}'s best {list(pa.best_a)}", f"rank {pa.rank_of_best_a_under_b} of {pa.n} under {pa.b}"],
                 [f"{pa.b}'s best {list(pa.best_b)}", f"rank {pa.rank_of_best_b_under_a} of {pa.n} under {pa.a}"]]
        ranks += [[f"top {frac:.0%} overlap (k = {k})", f"{_fmt(share, 3)} ({round(share * k)} of {k} masks in both tops)"]
                  for frac, (k, share) in pa.top_overlap.items()]
        doc.table(["", "value"], ranks)
        if pa.n:
            plot_agreement(pa, rm, report_dir, f"agreement_{_slug(pa.a)}_{_slug(pa.b)}", doc)
    if len(rm.objectives) > 2:
        names = rm.objectives
        m = np.eye(len(names))
        for pa in pairs:
            i, j = names.index(pa.a), names.index(pa.b)
            m[i, j] = m[j, i] = pa.spearmans[0].spearman
        plot_matrix(m, names, names, "Spearman rank correlation between objectives (all masks)", report_dir,
                    "rank_correlation", doc, vmin=-1.0)
    return pairs


def _log_if_wide(ax, axis, values: np.ndarray) -> None:
    """A log axis when every value is positive and they span more than 10x, ticked at 1-2-5."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    v = values[np.isfinite(values)]
    if not len(v) or v.min() <= 0 or v.max() / v.min() <= 10:
        return
    getattr(ax, f"set_{axis}scale")("log")
    a = getattr(ax, f"{axis}axis")
    a.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    a.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    a.set_minor_formatter(NullFormatter())


def plot_agreement(pa: PairAgreement, rm: RankMatrix, report_dir: Path, name: str, doc: Doc) -> None:
    """One objective against the other over every co-scored mask, each one's best mask marked."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.scatter(pa.x, pa.y, s=6, alpha=0.4, color="tab:blue", linewidths=0, label=f"{pa.n} masks")
    marks = ((pa.i_best_a, pa.a, pa.b, pa.rank_of_best_a_under_b, "tab:red", "*", 160),
             (pa.i_best_b, pa.b, pa.a, pa.rank_of_best_b_under_a, "tab:green", "D", 50))
    for n, (i, who, other, rank, color, marker, size) in enumerate(marks):
        ax.scatter([pa.x[i]], [pa.y[i]], s=size, marker=marker, color=color, edgecolors="k", zorder=3 + n,
                   label=f"best under {who} (rank {rank} under {other})")
        if n == 0 or pa.i_best_b != pa.i_best_a:
            text = f"best {who}" if pa.i_best_b != pa.i_best_a else f"best {pa.a} and {pa.b}"
            ax.annotate(text, (pa.x[i], pa.y[i]), textcoords="offset points", xytext=(8, 6 - 14 * n), fontsize=8)
    _log_if_wide(ax, "x", pa.x)
    _log_if_wide(ax, "y", pa.y)
    d = dict(zip(rm.objectives, rm.directions))
    ax.set_xlabel(f"{pa.a} ({d[pa.a]})")
    ax.set_ylabel(f"{pa.b} ({d[pa.b]})")
    ax.legend(fontsize=8)
    _save(fig, report_dir, name, f"{pa.b} against {pa.a} over every mask scored under both; each objective's "
          "best mask marked", doc)
