"""The report's "after repair" section: each candidate mask before and after repair, the rank
agreement, and whether the best mask changes (drawn from :class:`.rerank.RerankResult`)."""
from __future__ import annotations

import json
from pathlib import Path

from .document import Doc, _plt, _save
from .rerank import RerankResult, change_text


def _picked(c) -> str:
    return ", ".join(f"{n} #{r}" for n, r in c.picked_by.items())


def repair_section(res: RerankResult, report_dir: Path, doc: Doc, level: int = 2) -> dict:
    labels = res.labels()
    doc.h(f"After repair ({res.plan.kind}): are the best masks still the best?", level)
    doc.p(f"The {res.plan.top} best distinct masks of each objective (by the values the grid recorded on "
          f"calibration data) were repaired ({res.plan.describe()}) and scored on the held-out split, plain and "
          f"repaired, on the same items. Intervals are 95% over items (sequences or questions); a gain is paired "
          f"item by item (a ratio for ppl, a difference otherwise). Re-ranking took {res.seconds:.0f} s.")
    if res.dense:
        doc.p("Dense model: " + "; ".join(f"{n} {iv.text()}" for n, iv in res.dense.items()) + ".")
    head = ["mask (removed blocks)", "picked by (calibration rank)"]
    for m in res.metrics:
        head += [f"{m.name} plain", f"{m.name} repaired", f"{m.name} gain"]
    head.append("repair s")
    rows = []
    for i, (c, r) in enumerate(zip(res.candidates, res.repaired)):
        row = [c.label(), _picked(c)]
        for m in res.metrics:
            mark_b = " (best)" if i == m.best_before else ""
            mark_a = " (best)" if i == m.best_after else ""
            row += [m.before[i].text() + mark_b, m.after[i].text() + mark_a, change_text(m.name, m.gain[i])]
        row.append(f"{r.seconds:.1f}" + (f" ({r.tokens_per_second:,.0f} tok/s)" if r.tokens_per_second else ""))
        rows.append(row)
    doc.table(head, rows)
    for m in res.metrics:
        doc.p(f"Held-out {m.name}: {m.correlation.text()}; {m.verdict(labels)}.")
    if res.skipped:
        doc.p("Not re-scored (no per-item statistic to put an interval on): " + ", ".join(res.skipped) + ".")
    for m in res.metrics:
        _scatter(res, m, report_dir, doc)
    (report_dir / "repair.json").write_text(json.dumps(res.to_dict(), indent=2), encoding="utf-8")
    return res.to_dict()


def _scatter(res: RerankResult, m, report_dir: Path, doc: Doc) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.0, 4.6))
    xb = [i.value for i in m.before]
    ya = [i.value for i in m.after]
    xerr = [[i.value - i.low for i in m.before], [i.high - i.value for i in m.before]]
    yerr = [[i.value - i.low for i in m.after], [i.high - i.value for i in m.after]]
    ax.errorbar(xb, ya, xerr=xerr, yerr=yerr, fmt="o", color="tab:blue", ecolor="0.7", capsize=2, label="candidate")
    ax.plot([xb[m.best_before]], [ya[m.best_before]], "s", mfc="none", mec="tab:red", ms=12, label="best before")
    ax.plot([xb[m.best_after]], [ya[m.best_after]], "D", mfc="none", mec="tab:green", ms=14, label="best after")
    for x, y, c in zip(xb, ya, res.candidates):
        ax.annotate(",".join(map(str, c.removed)), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if m.name == "ppl":
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel(f"held-out {m.name}, plain mask")
    ax.set_ylabel(f"held-out {m.name}, repaired ({res.plan.kind})")
    ax.set_title(f"{m.name}: before vs after repair (95% intervals)", fontsize=10)
    ax.legend(fontsize=8)
    _save(fig, report_dir, f"repair_{res.plan.kind}_{m.name}", f"held-out {m.name} of each candidate mask, plain "
          f"against repaired ({res.plan.kind}), 95% intervals; the best before and after marked", doc)
