"""Objective agreement over the WHOLE space, read from a study's brute-force runs.

``dpopt study`` correlates objectives over every mask scored under all of them. A study
resumed from its record (as the committed Gemma3 report was) built that set from the
evaluator's in-process memo, which a replay leaves empty, so its report correlates only the
final and random masks. This reads the ``brute`` study of each objective straight from the
storage (no model) and writes the agreement section over every valid mask.

    python benchmarks/study_agreement.py --storage sqlite:///runs/gemma3-study.db \
        --studies gemma3-270m-ppl-brute-k4-seed0-ecda4c07,gemma3-270m-kl-brute-k4-seed0-76d69d9f \
        --objectives ppl,kl --directions minimize,minimize --out benchmarks/reports/gemma3-study/all-masks
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import optuna

from dpopt.experiments.agreement import rank_correlations
from dpopt.experiments.document import Doc, to_html, to_markdown
from dpopt.experiments.stats import RankMatrix
from dpopt.experiments.study_sections import agreement_section


def values(storage: str, name: str) -> dict[tuple[int, ...], float]:
    out = {}
    for t in optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False):
        if t.state.name == "COMPLETE":
            out[tuple(sorted(int(k[5:]) for k, v in t.params.items() if not v))] = float(t.values[0])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--storage", required=True)
    ap.add_argument("--studies", required=True)
    ap.add_argument("--objectives", required=True)
    ap.add_argument("--directions", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    names, objs, dirs = a.studies.split(","), a.objectives.split(","), a.directions.split(",")
    per = [values(a.storage, n) for n in names]
    masks = sorted(set.intersection(*(set(p) for p in per)))
    rm = RankMatrix(objs, dirs, np.array([[p[m] for p in per] for m in masks]), masks)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = Doc(f"Objective agreement over all {len(masks)} masks: " + ", ".join(objs))
    pairs = agreement_section(rm, rank_correlations(rm), out, doc)
    (out / "report.md").write_text(to_markdown(doc), encoding="utf-8")
    (out / "index.html").write_text(to_html(doc), encoding="utf-8")
    for pa in pairs:
        print(pa)


if __name__ == "__main__":
    main()
