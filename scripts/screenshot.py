"""Build a compare report and a study report from synthetic runs, then screenshot index.html.

Usage: python scripts/screenshot.py OUT_DIR [--no-shot]

The runs are real dpopt searchers (and ng:/optuna: adapters) on the synthetic objective of
tests/test_searchers_synthetic.py, so the report shows what a real grid looks like without
a model. The screenshot uses Debian's headless Chromium (``apt-get install chromium``).
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

from dpopt.fitness import FunctionEvaluator
from dpopt.genome import Constraint, LayerMask
from dpopt.optim import SEARCHERS, Budget, run_search
from dpopt.experiments.report import (Evaluation, Experiment, RankMatrix, Reference, Run, build_compare_report,
                          build_study_report, screenshot)

N, K = 16, 4


def objective(seed: int, interaction: float = 0.3):
    rng = np.random.default_rng(seed)
    cost = rng.uniform(1.0, 10.0, N)
    pair = np.triu(rng.uniform(-interaction, interaction, (N, N)), 1)
    return lambda m: float(cost[list(m.removed())].sum()
                           + sum(pair[i, j] for i, j in itertools.combinations(m.removed(), 2)))


class Trace:
    def __init__(self, constraint):
        self.constraint, self.evals = constraint, []

    def record(self, masks, fitness):
        for m, f in zip(masks, fitness):
            self.evals.append(Evaluation(len(self.evals) + 1, 256.0, float(f), self.constraint.is_valid(m),
                                         m.removed()))


def grid(fn, algos, seeds, budget, constraint) -> list[Run]:
    runs = []
    for algo, seed in itertools.product(algos, seeds):
        tr, t = Trace(constraint), time.perf_counter()
        try:
            if algo == "broken":
                raise RuntimeError("user searcher raised ValueError('boom')")
            res = run_search(SEARCHERS.get(algo)(constraint, seed=seed), FunctionEvaluator(fn), Budget(budget), tr)
            runs.append(Run(algo, seed, "ok", "", res.best.removed(), res.fitness, time.perf_counter() - t, tr.evals))
        except Exception as exc:  # one run failing is shown in the report, the rest go on
            runs.append(Run(algo, seed, "failed", str(exc), (), float("nan"), time.perf_counter() - t, tr.evals))
    return runs


def brute(fn, constraint) -> Reference:
    best = min(itertools.combinations(constraint.removable, K),
               key=lambda r: fn(LayerMask.from_removed(N, r)))
    return Reference(fn(LayerMask.from_removed(N, best)), best, exact=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--no-shot", action="store_true")
    a = ap.parse_args(argv)
    out = Path(a.out)
    c = Constraint.build(N, remove=K, protect="0,-1")
    algos = ["genetic", "random", "ng:DiscreteLenglerOnePlusOne", "optuna:TPESampler", "broken"]
    fn = objective(1)
    exp = Experiment("synthetic", "minimize", N, grid(fn, algos, range(3), 120, c), brute(fn, c))
    build_compare_report(exp, out / "compare", overwrite=True,
                         heldout={a: {"ppl": (20 + i, 0.4), "acc": (0.41 - 0.01 * i, 0.02)} for i, a in enumerate(algos[:4])},
                         grid_cost={"evaluations counted": sum(len(r.trace) for r in exp.runs)})
    exps = {}
    for name, s in [("ppl", 1), ("kl", 2)]:
        f = objective(s)
        exps[name] = Experiment(name, "minimize", N, grid(f, algos[:3], range(3), 80, c), brute(f, c))
    rng = np.random.default_rng(0)
    masks = [c.random_mask(rng) for _ in range(40)]
    rm = RankMatrix(["ppl", "kl"], ["minimize", "minimize"],
                    np.array([[objective(1)(m), objective(2)(m)] for m in masks]), [m.removed() for m in masks])
    build_study_report(exps, out / "study", rank_matrix=rm, overwrite=True, n_boot=200)
    if not a.no_shot:
        for name in ("compare", "study"):
            print(screenshot(out / name / "index.html", out / f"{name}.png", height=5200))
    return 0


if __name__ == "__main__":
    sys.exit(main())
