"""Exhaustive search (``--algo brute``) against scoring every mask with one full forward.

``brute`` asks every valid mask once in prefix order of kept blocks, so the evaluator's
prefix tree runs each shared prefix once per batch. In one run this prints:

* model work: the (prefix, block) calls the evaluator made, against the naive count of
  one forward per mask (every kept block of every mask, on every batch of tokens);
* wall time: brute force over the whole space, against the naive per-mask time (a sample
  of masks scored one by one with prefix sharing off) times the number of masks.

The head (final norm + vocabulary projection) runs once per mask either way, so the wall
ratio is smaller than the block ratio, the more so the larger the vocabulary.

    python benchmarks/brute_force.py --model smollm2-135m --remove 2 --tokens 128 --seq-len 64
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import dpopt
from dpopt.genome import Constraint
from dpopt.optim import SEARCHERS


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--objective", default="ppl")
    ap.add_argument("--remove", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--sample", type=int, default=24, help="masks scored one by one for the naive time")
    a = ap.parse_args()

    lm = dpopt.load(a.model, device="cpu")
    opts = dict(tokens=a.tokens, seq_len=a.seq_len)
    constraint = Constraint(lm.n_blocks, a.remove)
    order = SEARCHERS.get("brute")(constraint).order
    n = len(order)

    ev = dpopt.make_evaluator(lm, a.objective, **opts)
    batches = len(ev.objective.batches(None))
    t0 = time.perf_counter()
    for i in range(0, n, 256):
        ev.evaluate(order[i:i + 256])
    brute_s = time.perf_counter() - t0
    naive_calls = n * (lm.n_blocks - a.remove) * batches

    naive = dpopt.make_evaluator(lm, a.objective, prefix_sharing=False, **opts)
    sample = [order[int(i)] for i in np.random.default_rng(0).choice(n, min(a.sample, n), replace=False)]
    t0 = time.perf_counter()
    for m in sample:
        naive.evaluate([m])
    per_mask = (time.perf_counter() - t0) / len(sample)
    best = min(order, key=lambda m: ev.evaluate([m])[0])  # memo hits: nothing is scored again

    print(f"{a.model}: {n} masks (K={a.remove} of {lm.n_blocks}), {a.objective} on {a.tokens} tokens "
          f"in {batches} batch(es); best removes {list(best.removed())}")
    print(f"model work (block calls): brute {ev.block_calls} vs naive {naive_calls}: "
          f"ratio {ev.block_calls / naive_calls:.3f}")
    print(f"wall: brute {brute_s:.1f} s vs naive {per_mask:.3f} s/mask x {n} = {per_mask * n:.1f} s: "
          f"ratio {brute_s / (per_mask * n):.3f}")


if __name__ == "__main__":
    main()
