"""Which multiple-choice task of the data zoo can ``acc`` read a signal from on a model?

For each task, the dense model's accuracy on the first N questions of a split, with a 95%
Wald interval, beside the chance level: a task on which the dense model is not clearly above
chance cannot tell pruned masks apart, however many masks are scored.

    python benchmarks/acc_tasks.py --model gemma3-270m --tasks logiqa,mmlu,medmcqa,quartz --questions 100
"""
from __future__ import annotations

import argparse
import math
import time

import dpopt
from dpopt.genome import LayerMask


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--tasks", default="logiqa,mmlu,medmcqa,quartz")
    ap.add_argument("--questions", type=int, default=100)
    ap.add_argument("--split", default="calib")
    a = ap.parse_args()
    lm = dpopt.load(a.model, device="cpu")
    dense = LayerMask.dense(lm.n_blocks)
    for task in a.tasks.split(","):
        t0 = time.perf_counter()
        ev = dpopt.make_evaluator(lm, "acc", tasks=task, split=a.split, questions=a.questions)
        ev.evaluate([dense])
        parts = [ev.partials[(dense.key(), b.index)] for b in ev.objective.batches(None)]
        rep = ev.objective.report(parts)
        n = int(sum(p[2] for p in parts))
        half = 1.96 * math.sqrt(rep["acc"] * (1 - rep["acc"]) / n)
        print(f"{a.model} {task} {a.split}: n={n} acc={rep['acc']:.3f} ± {half:.3f} (chance {ev.objective.chance:.3f}) "
              f"acc_norm={rep['acc_norm']:.3f}  {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
