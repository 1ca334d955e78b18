"""Searchers on SmolLM2 over seeds, objectives and K, at the same evaluation budget.

Prints one table per (objective, K): per searcher the median and range over seeds of the
final calibration value, the median number of evaluations a run needed to come within 1%
of the best value ANY run found (— when a run never did; the count of runs that did in
brackets), and the median wall seconds. Each run gets a fresh evaluator (no memo shared
between runs, so wall times are comparable); the prepared calibration batches are shared.
Every finished run is appended to ``--jsonl`` as it ends, so a long grid can be cut short.

    python benchmarks/searchers.py --objectives ppl,kl --remove 4,8 --seeds 5 --budget 200 --tokens 256
    python benchmarks/searchers.py --algos genetic,greedy,random,anneal --seeds 3 --tokens 128
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import dpopt
from dpopt.evaluator import Evaluator
from dpopt.optim import SEARCHERS

# a beam of 4 needs ~4x greedy's evaluations to reach K; 2 fits the default budget at K=4
ALGO_OPTIONS = {"beam": {"width": 2}}
DETERMINISTIC = {"greedy", "greedy-add", "beam", "single", "bi", "angular"}  # one run stands for every seed


def run_one(lm, base, algo, k, budget, seed, options):
    ev = Evaluator(lm, base.objective, fingerprint=base.fingerprint)  # a fresh memo, the same settings
    ev.memo[(dpopt.LayerMask.dense(lm.n_blocks).key(), None)] = base.dense_value()
    t = time.perf_counter()
    res = dpopt.search(lm, ev, algo, remove=k, budget=budget, seed=seed, storage="none", progress=False,
                       algo_options=options)
    return {"algo": algo, "k": k, "seed": seed, "fitness": res.fitness, "removed": res.removed_layers,
            "evaluations": res.evaluations, "history": res.history, "wall": time.perf_counter() - t,
            "n_scored": ev.n_scored}


def _at(runs: list[dict], evals: int) -> str:
    """Median over runs of the best-so-far after ``evals`` evaluations (— while any run had none yet)."""
    vals = [next((b for n, b in reversed(r["history"]) if n <= evals), None) for r in runs]
    if None in vals or not all(math.isfinite(v) for v in vals):  # greedy has no valid mask until its last step
        return "—"
    return f"{statistics.median(vals):.4g}"


def table(runs: list[dict], sign: int, header: str) -> str:
    best = min(sign * r["fitness"] for r in runs)
    target = best + 0.01 * abs(best)
    out = [header, "", f"best value any run found: {sign * best:.4f}", "",
           "| algo | median | range | evals to within 1% of best (runs) | median best after 50 / 100 / 150 evals "
           "| wall s (median) |", "|---|---|---|---|---|---|"]
    for algo in dict.fromkeys(r["algo"] for r in runs):
        rs = [r for r in runs if r["algo"] == algo]
        vals = [r["fitness"] for r in rs]
        hits = [next((n for n, b in r["history"] if sign * b <= target), None) for r in rs]
        got = [h for h in hits if h is not None]
        hit = f"{statistics.median(got):.0f} ({len(got)}/{len(rs)})" if got else f"— (0/{len(rs)})"
        anytime = " / ".join(_at(rs, n) for n in (50, 100, 150))
        out.append(f"| {algo} | {statistics.median(vals):.4f} | {min(vals):.4f}–{max(vals):.4f} | {hit} | {anytime} | "
                   f"{statistics.median(r['wall'] for r in rs):.1f} |")
    return "\n".join(out)


def print_recorded(paths: list[str], budget: int) -> None:
    runs: dict[tuple, dict] = {}
    for path in paths:
        with open(path) as fh:
            for line in fh:
                r = json.loads(line)
                runs[(r["objective"], r["k"], r["algo"], r["seed"])] = r
    for objective, k in dict.fromkeys((o, k) for o, k, _, _ in runs):
        rs = [r for key, r in runs.items() if key[:2] == (objective, k)]
        # runs record their objective's direction; older records (ppl/kl/acc only) predate it
        direction = rs[0].get("direction") or ("maximize" if objective == "acc" else "minimize")
        sign = 1 if direction == "minimize" else -1
        seeds = sorted({r["seed"] for r in rs})
        print(table(rs, sign, f"### {objective}, K={k}, budget {budget}, seeds {seeds[0]}..{seeds[-1]} "
                              f"(recorded in {', '.join(paths)})") + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--objectives", default="ppl", help="comma-separated, e.g. ppl,kl")
    ap.add_argument("--remove", default="4", help="comma-separated K values, e.g. 4,8")
    ap.add_argument("--budget", type=int, default=200)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--seeds", type=int, default=5, help="seeds F..F+N-1 for each stochastic searcher")
    ap.add_argument("--first-seed", type=int, default=0, help="F (default 0)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--algos", default=",".join(n for n in SEARCHERS.names()))
    ap.add_argument("--option", action="append", default=[], metavar="ALGO:KEY=JSON",
                    help="searcher option, e.g. genetic:population=1 (repeatable)")
    ap.add_argument("--jsonl", default=None, help="append every finished run here")
    ap.add_argument("--tables-from", default=None, nargs="+", metavar="FILE[,FILE...]",
                    help="run nothing: print the tables of runs recorded by --jsonl (several commands' runs merged; "
                         "a later run of the same algo, objective, K and seed replaces an earlier one); "
                         "comma- or space-separated, so a long list can be split over lines")
    a = ap.parse_args()
    if a.tables_from:
        return print_recorded([f for arg in a.tables_from for f in arg.split(",") if f], a.budget)

    options = {k: dict(v) for k, v in ALGO_OPTIONS.items()}
    for text in a.option:
        algo, _, kv = text.partition(":")
        key, _, value = kv.partition("=")
        options.setdefault(algo, {})[key] = json.loads(value)

    lm = dpopt.load(a.model, device=a.device)
    tables = []
    for objective in a.objectives.split(","):
        base = dpopt.make_evaluator(lm, objective, tokens=a.tokens, seq_len=a.seq_len, batch_size=a.batch_size)
        sign = 1 if base.direction == "minimize" else -1
        for k in (int(x) for x in a.remove.split(",")):
            runs = []
            for algo in a.algos.split(","):
                seeds = [0] if algo in DETERMINISTIC else range(a.first_seed, a.first_seed + a.seeds)
                for seed in seeds:
                    try:
                        r = run_one(lm, base, algo, k, a.budget, seed, options.get(algo))
                    except dpopt.UserError as exc:  # e.g. greedy's path longer than the budget: say so, go on
                        print(f"  {objective} K={k} {algo} seed {seed}: skipped ({exc})", flush=True)
                        break
                    r["objective"], r["direction"] = objective, base.direction
                    runs.append(r)
                    print(f"  {objective} K={k} {algo} seed {seed}: {r['fitness']:.4f} removed {r['removed']} "
                          f"({r['wall']:.0f} s)", flush=True)
                    if a.jsonl:
                        with open(a.jsonl, "a") as fh:
                            fh.write(json.dumps(r) + "\n")
            if runs:
                head = (f"### {lm.n_blocks}-block {a.model}, {objective} (dense {base.dense_value():.4f}), K={k}, "
                        f"budget {a.budget}, {a.tokens} calibration tokens, seeds {a.first_seed}..{a.first_seed + a.seeds - 1}")
                tables.append(table(runs, sign, head))
                print("\n" + tables[-1] + "\n", flush=True)
    print("\n\n".join(tables))


if __name__ == "__main__":
    main()
