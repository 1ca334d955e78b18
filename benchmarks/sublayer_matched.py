"""Sub-layer units against whole blocks at the same parameter count, on SmolLM2-135M.

The block search removes exactly K blocks; the sub-layer search gets ``--max-params`` set
to what those K blocks leave (every block of a Llama has the same size), so both answers
keep at most the same number of parameters. Both use the same searcher, budget, seeds and
calibration tokens; each best mask is then scored on the held-out split.

    python benchmarks/sublayer_matched.py                     # K=6, genetic, budget 60, seeds 0 1 2

Prints one row per (space, seed) and the median per space.
"""
from __future__ import annotations

import argparse
import statistics
import time

import dpopt
from dpopt.costs import ParamsCost, model_params, unit_params
from dpopt.genome import UnitSpace


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--algo", default="genetic")
    ap.add_argument("--remove", type=int, default=6)
    ap.add_argument("--budget", type=int, default=60)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--heldout-tokens", type=int, default=1024)
    a = ap.parse_args()

    lm = dpopt.load(a.model, device="cpu")
    total = model_params(lm)
    block = unit_params(lm, UnitSpace.blocks(lm.n_blocks))
    budget = total - sum(sorted(block)[: a.remove])  # what removing K (equal-sized) blocks leaves
    print(f"{a.model}: {total / 1e6:.2f}M parameters; {a.remove} blocks remove {(total - budget) / 1e6:.2f}M, "
          f"so the sub-layer search gets --max-params {budget / 1e6:.3f}M")
    rows = {"block": [], "sublayer": []}
    for seed in [int(s) for s in a.seeds.split(",")]:
        for space in rows:
            start = time.perf_counter()
            ev = dpopt.make_evaluator(lm, "kl", tokens=a.tokens, seq_len=a.seq_len, units=space)
            size = dict(remove=a.remove) if space == "block" else dict(max_params=budget)
            res = dpopt.search(lm, ev, a.algo, budget=a.budget, seed=seed, storage="none", progress=False, **size)
            held = dpopt.evaluate_mask(lm, res.removed_units, ["kl", "ppl"], tokens=a.heldout_tokens, seq_len=a.seq_len)
            removed_space, removed_mask = dpopt.api.parse_removed_units(lm, res.removed_units)
            counted = ParamsCost(lm, removed_space)  # the mask's size, counted as --max-params counts it
            kept = counted.values([removed_mask])[0]
            row = dict(seed=seed, units=",".join(u.removeprefix("block.") for u in res.removed_units),
                       removed=counted.total - kept, calib_kl=res.fitness,
                       kl=held["objectives"]["kl"]["pruned"], ppl=held["objectives"]["ppl"]["pruned"],
                       dense_ppl=held["objectives"]["ppl"]["dense"], wall=time.perf_counter() - start)
            rows[space].append(row)
            print(f"{space:<8} seed {seed}: removes {row['units']} ({row['removed']:.2f}M) calib KL {row['calib_kl']:.4f}"
                  f"  held-out KL {row['kl']:.4f} ppl {row['ppl']:.2f} (dense {row['dense_ppl']:.2f})  {row['wall']:.0f} s",
                  flush=True)
    print("\n| space | params removed (median) | calibration KL | held-out KL | held-out ppl |")
    print("|---|---|---|---|---|")
    for space, rs in rows.items():
        med = lambda k: statistics.median(r[k] for r in rs)  # noqa: E731
        spread = lambda k: f"{min(r[k] for r in rs):.3f}-{max(r[k] for r in rs):.3f}"  # noqa: E731
        print(f"| {space} | {med('removed'):.2f}M | {med('calib_kl'):.3f} ({spread('calib_kl')}) | "
              f"{med('kl'):.3f} ({spread('kl')}) | {med('ppl'):.1f} |")


if __name__ == "__main__":
    main()
