"""The compare/study report: Markdown, one self-contained HTML page, PNG + SVG plots, a CSV.

The integrator feeds it plain data (``stats.Run`` etc., built from the Optuna studies) and
calls one of two functions:

``build_compare_report(exp, report_dir, heldout=None, grid_cost=None, overwrite=False)``
    one objective, many (searcher, seed) runs;
``build_study_report(experiments, report_dir, rank_matrix=None, heldout=None, ..., ert_budget=None)``
    the compare grid per objective, the objective-vs-searcher overlaps behind a gated headline,
    and how the objectives agree on the good masks (:mod:`.agreement`).

A report is a list of blocks (heading, paragraph, table, figure) rendered twice, to
Markdown and to HTML, so the two never disagree. Plots are drawn with matplotlib's Agg
backend and embedded in the HTML as base64 PNG: the page opens with no other file.
"""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import UserError
from .stats import (Experiment, RankMatrix, Reference, best_reference, best_so_far, jaccard_matrix, removal_frequency,
                    summary_table)
from .agreement import rank_correlations, study_finding
from .document import Doc, _cell, _fmt, _slug, plot_matrix, to_html, to_markdown
from .report_progress import benchmark_section
from .study_sections import agreement_section, study_overlap_section
from .describe import about_rows, redact_text
from .intervals import heldout_section  # noqa: F401  (the held-out table is drawn there, beside its intervals)
from .pairwise import ALPHA, min_p_value, pairwise_tests, win_matrix
from .benchmarking import MIN_RUNS_FOR_BANDS

# held-out input: {searcher: {objective: value | (value, standard error) | Score}}
Heldout = Mapping[str, Mapping[str, object]]


# --- blocks ------------------------------------------------------------------------------------
def compare_sections(exp: Experiment, report_dir: Path, doc: Doc, prefix: str = "", level: int = 2) -> dict:
    """Everything about one objective's grid; returns the numbers for the caller (and tests)."""
    ref = best_reference(exp)
    numbers: dict = {"reference": ref, "rows": final_values_section(exp, ref, doc, level)}
    numbers.update(benchmark_section(exp, ref, report_dir, doc, prefix, level))
    numbers.update(pairwise_section(exp, report_dir, doc, prefix, level))
    numbers.update(blocks_section(exp, report_dir, doc, prefix, level))
    return numbers


def _values_cell(r) -> str:
    """mean ± sd from MIN_RUNS_FOR_BANDS runs; below that the values themselves (no spread to claim)."""
    if not r.n_ok:
        return "–"
    if r.n_ok >= MIN_RUNS_FOR_BANDS:
        return f"{_fmt(r.mean)} ± {_fmt(r.sd, 2)}"
    return ", ".join(_fmt(v) for v in r.values)


def final_values_section(exp: Experiment, ref: Reference | None, doc: Doc, level: int = 2) -> list:
    """The summary table: final values, and how often and how fast each searcher came within 1%."""
    rows = summary_table(exp)
    n_failed = sum(not r.ok for r in exp.runs)
    doc.h(f"{exp.objective}: final values", level)
    if ref is None:
        doc.p("No run succeeded: nothing to compare.")
    else:
        kind = "the brute-force optimum" if ref.exact else "the best known mask (not proven optimal)"
        doc.p(f"Reference: {exp.objective} = {_fmt(ref.value)} removing blocks {list(ref.removed)}, {kind}. "
              f"{len(exp.runs)} runs, {n_failed} failed. Direction: {exp.direction}.")
    target = "optimum" if ref is not None and ref.exact else "best known"
    doc.table(
        ["searcher", "runs ok", f"mean ± sd (values under {MIN_RUNS_FOR_BANDS} runs)", "median", "best",
         f"evals to 1% of {target} (median)", f"within 1% of {target}", "wall s (mean)", "gap to ref (mean)", "gap %"],
        [[r.algo, f"{r.n_ok}/{r.n_ok + r.n_failed}" + (" FAILED" if r.n_failed else ""), _values_cell(r),
          r.median, r.best, r.evals_median, f"{r.n_reached}/{r.n_ok}", r.wall_mean, r.gap_mean,
          100 * r.gap_rel_mean] for r in rows])
    failures = [(r.algo, e) for r in rows for e in r.errors]
    if failures:
        doc.p("Failed runs (left out of every statistic): " + "; ".join(f"{a} {e}" for a, e in failures))
    reached = [r for r in rows if r.n_reached]
    if ref is not None and reached:
        fastest = min(reached, key=lambda r: (-r.n_reached, r.evals_median))
        doc.p(f"Fewest evaluations to come within 1% of the {target}: {fastest.algo} "
              f"(median {_fmt(fastest.evals_median)}, {fastest.n_reached}/{fastest.n_ok} seeds got there).")
    return rows


def pairwise_section(exp: Experiment, report_dir: Path, doc: Doc, prefix: str = "", level: int = 2) -> dict:
    pairs = pairwise_tests(exp)
    wins = win_matrix(exp)
    doc.h(f"{exp.objective}: pairwise tests", level)
    doc.table(["A", "B", "U", "p", "p (Holm)", "A beats B", "verdict"],
              [[p.a, p.b, p.u, p.p, p.p_holm, p.win_rate, p.verdict(ALPHA)] for p in pairs])
    doc.p(f"Two-sided Mann-Whitney U on final values over seeds (scipy: exact without ties on small samples), Holm-corrected over the tested pairs; "
          f"a pair is tested only where its run counts allow p < {ALPHA} (2 against 2 runs can give no less than "
          f"{min_p_value(2, 2):.3g}). 'A beats B' is the fraction of (seed of A, seed of B) pairs where A's final "
          "value is better, ties half.")
    if len(exp.algos) > 1:
        plot_matrix(wins, exp.algos, exp.algos, "Win rate: row beats column", report_dir, f"{prefix}win_rate", doc,
                    xlabel="searcher (column)", ylabel="searcher (row)", cbar_label="fraction of seed pairs row wins")
    return {"pairs": pairs, "win_matrix": wins}


def blocks_section(exp: Experiment, report_dir: Path, doc: Doc, prefix: str = "", level: int = 2) -> dict:
    freq = removal_frequency(exp)
    jac = jaccard_matrix(exp)
    doc.h(f"{exp.objective}: which blocks", level)
    plot_matrix(freq, exp.algos, list(range(exp.n_blocks)), "How often each block is removed (per searcher)",
                report_dir, f"{prefix}blocks", doc, annotate=False, xlabel="block", ylabel="searcher",
                cbar_label="fraction of runs removing it")
    plot_matrix(jac, exp.algos, exp.algos, "Jaccard overlap of final masks", report_dir, f"{prefix}jaccard", doc,
                caption="Mean Jaccard overlap of final masks over seed pairs: between searchers off the diagonal, "
                        "across one searcher's seeds on it", xlabel="searcher", ylabel="searcher",
                cbar_label="mean Jaccard overlap")
    off = jac[~np.eye(len(jac), dtype=bool)] if len(jac) > 1 else np.zeros(0)
    off = off[np.isfinite(off)]
    if len(off):
        doc.p(f"Mean overlap of final masks between searchers: {off.mean():.2f} "
              f"(1 = every searcher removes the same blocks).")
    return {"removal_frequency": freq, "jaccard": jac}


# --- files -------------------------------------------------------------------------------------------
def prepare_dir(report_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse a folder that exists and is not empty unless ``overwrite`` (a user mistake otherwise)."""
    path = Path(report_dir)
    if path.exists() and not path.is_dir():
        raise UserError(f"report folder {str(path)!r} is a file")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise UserError(f"report folder {str(path)!r} exists and is not empty; use --overwrite or another folder")
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_evaluations_csv(path: Path, experiments: Sequence[Experiment]) -> None:
    """One row per evaluation of every run (memo hits too: they are what each searcher asked)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["objective", "direction", "algo", "seed", "status", "evaluation", "units", "cum_units",
                    "value", "valid", "best_so_far", "removed"])
        for exp in experiments:
            for r in exp.runs:
                best = best_so_far(r.trace, exp.direction)
                cum = np.cumsum([e.units for e in r.trace], dtype=float)
                for e, b, c in zip(r.trace, best, cum):
                    w.writerow([exp.objective, exp.direction, r.algo, r.seed, r.status, e.index, e.units, c,
                                repr(float(e.value)), int(bool(e.valid)), "" if not np.isfinite(b) else repr(float(b)),
                                " ".join(map(str, e.removed))])


def write_report(report_dir: Path, doc: Doc, experiments: Sequence[Experiment]) -> dict[str, Path]:
    files = {"md": report_dir / "report.md", "html": report_dir / "index.html", "csv": report_dir / "evaluations.csv"}
    files["md"].write_text(to_markdown(doc), encoding="utf-8")
    files["html"].write_text(to_html(doc), encoding="utf-8")
    write_evaluations_csv(files["csv"], experiments)
    return files


def _cost_lines(grid_cost: Mapping[str, object] | None, doc: Doc) -> None:
    """The grid's cost in one paragraph; a storage path in it is printed relative (:func:`.describe.redact`)."""
    if grid_cost:
        doc.p("Cost of the grid: " + "; ".join(f"{k}: {redact_text(_cell(v))}" for k, v in grid_cost.items()) + ".")


def _about(about: Mapping[str, object] | None, doc: Doc) -> None:
    """The settings and machine behind the report (:func:`.describe.describe`), as its first table."""
    if about:
        doc.h("About this report")
        doc.table(["setting", "value"], about_rows(about))


def _repair(repair, path: Path, doc: Doc, numbers: dict) -> None:
    if repair is not None:
        from .report_repair import repair_section

        numbers["repair"] = repair_section(repair, path, doc)


# --- the two entry points ------------------------------------------------------------------------------
def build_compare_report(exp: Experiment, report_dir: str | os.PathLike, heldout: Heldout | None = None,
                         grid_cost: Mapping[str, object] | None = None, title: str | None = None,
                         overwrite: bool = False, about: Mapping[str, object] | None = None,
                         repair=None) -> dict:
    """Write the compare report for one objective; returns the computed numbers and the file paths.

    ``grid_cost``: e.g. ``{"evaluations counted": 2500, "distinct masks scored": 1700}``
    (the shared memo makes the second smaller). ``heldout``: {searcher: {objective: value or
    (value, standard error)}} for each searcher's best mask. ``about``: the report's settings
    (:func:`dpopt.experiments.describe.describe`), shown first. ``repair``: a
    :class:`.rerank.RerankResult`, drawn last.
    """
    path = prepare_dir(report_dir, overwrite)
    doc = Doc(title or f"dpopt compare: {exp.objective}")
    _about(about, doc)
    _cost_lines(grid_cost, doc)
    numbers = compare_sections(exp, path, doc)
    if heldout:
        numbers["heldout"] = heldout_section(heldout, doc)
    _repair(repair, path, doc, numbers)
    numbers["files"] = write_report(path, doc, [exp])
    return numbers


def build_study_report(experiments: Mapping[str, Experiment], report_dir: str | os.PathLike,
                       rank_matrix: RankMatrix | None = None, heldout: Heldout | None = None,
                       grid_cost: Mapping[str, object] | None = None, title: str | None = None,
                       overwrite: bool = False, n_boot: int = 1000, ert_budget: int | None = None,
                       about: Mapping[str, object] | None = None, repair=None) -> dict:
    """Write the study report: do searchers agree under one objective, do objectives agree?

    ``experiments``: {objective name: its compare grid}. ``rank_matrix``: masks scored under
    every objective (every mask the grids scored under all of them; all of the space where
    brute force ran). ``heldout``: {searcher or "searcher @ objective": {objective: value or
    (value, se)}}. ``ert_budget``: the per-run budget the ERT suggests, named by the headline
    when the runs did not converge (None: not known). ``about``: the report's settings
    (:func:`dpopt.experiments.describe.describe`), shown first. ``repair``: a
    :class:`.rerank.RerankResult`, drawn last.
    """
    path = prepare_dir(report_dir, overwrite)
    doc = Doc(title or "dpopt study: " + ", ".join(experiments))
    _about(about, doc)
    finding = study_finding(experiments, n_boot=n_boot, ert_budget=ert_budget)
    numbers: dict = {"finding": finding, "overlap": finding.overlap, "blind_overlap": finding.blind,
                     "convergence": finding.convergence, "headline": finding.text}
    doc.p(finding.text)
    _cost_lines(grid_cost, doc)
    study_overlap_section(finding, experiments, doc)
    if rank_matrix is not None:
        numbers["correlations"] = rank_correlations(rank_matrix)
        numbers["agreements"] = agreement_section(rank_matrix, numbers["correlations"], path, doc)
    numbers["objectives"] = {}
    for name, exp in experiments.items():
        doc.h(f"Objective {name}")
        numbers["objectives"][name] = compare_sections(exp, path, doc, prefix=f"{_slug(name)}_", level=3)
    if heldout:
        numbers["heldout"] = heldout_section(heldout, doc)
    _repair(repair, path, doc, numbers)
    numbers["files"] = write_report(path, doc, list(experiments.values()))
    return numbers


def screenshot(html_file: str | os.PathLike, png_file: str | os.PathLike, width: int = 1200,
               height: int = 2400) -> Path:
    """Render a report page in headless Chromium (Debian's ``chromium``) to a PNG: a check that
    the page shows its plots with nothing but the one file."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise UserError("chromium is not installed (apt-get install -y chromium)")
    png = Path(png_file).resolve()
    subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={png}", f"--window-size={width},{height}", Path(html_file).resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)
    return png
