"""Every searcher on SmolLM2 with the same objective, K and evaluation budget.

Prints, in one run: best fitness, evaluations needed to come within 1% of the best
fitness found by any searcher, and wall time. One shared evaluator per objective would
let later searchers reuse earlier ones' memo, so each searcher gets a fresh evaluator
(the prepared calibration batches are shared, which costs nothing at search time).

    python benchmarks/searchers.py --remove 6 --budget 64 --tokens 512
"""
from __future__ import annotations

import argparse
import time

import dpopt
from dpopt.evaluator import Evaluator
from dpopt.optim import SEARCHERS


# a beam of 4 needs ~4x greedy's evaluations to reach K; 2 fits the default budget at K=4
ALGO_OPTIONS = {"beam": {"width": 2}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--objective", default="ppl")
    ap.add_argument("--remove", type=int, default=6)
    ap.add_argument("--budget", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--algos", default=",".join(SEARCHERS.names()))
    a = ap.parse_args()

    lm = dpopt.load(a.model, device=a.device)
    base = dpopt.make_evaluator(lm, a.objective, tokens=a.tokens, seq_len=a.seq_len)
    dense = base.dense_value()
    rows = []
    for algo in a.algos.split(","):
        ev = Evaluator(lm, base.objective)
        ev.memo[(dpopt.LayerMask.dense(lm.n_blocks).key(), None)] = dense
        t = time.perf_counter()
        try:
            res = dpopt.search(lm, ev, algo, remove=a.remove, budget=a.budget, seed=a.seed, storage="none",
                               progress=False, algo_options=ALGO_OPTIONS.get(algo))
        except dpopt.UserError as exc:  # e.g. a beam too wide for the budget: say so, go on
            print(f"  {algo}: skipped ({exc})", flush=True)
            continue
        rows.append((algo, res, time.perf_counter() - t))
        print(f"  {algo}: {res['fitness']:.4f} removed {res['removed_layers']}", flush=True)
    sign = 1 if base.direction == "minimize" else -1
    best = min(sign * r["fitness"] for _, r, _ in rows)
    target = best * (1.01 if best > 0 else 0.99)
    print(f"\nSmolLM2 ({lm.n_blocks} blocks), objective {a.objective} (dense {dense:.4f}), remove {a.remove}, "
          f"budget {a.budget} evaluations, {a.tokens} tokens\n")
    print("(beam with width 2; every searcher seed %d)\n" % a.seed)
    print("| algo | best fitness | removed | evals to within 1% of best | evals used | wall s |")
    print("|---|---|---|---|---|---|")
    for algo, r, wall in rows:
        hit = next((n for n, b in r["history"] if sign * b <= target), None)
        print(f"| {algo} | {r['fitness']:.4f} | {r['removed_layers']} | {hit if hit is not None else '—'} | "
              f"{r['evaluations']} | {wall:.1f} |")


if __name__ == "__main__":
    main()
