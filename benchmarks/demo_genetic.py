"""Searcher variants at `make demo`'s exact settings, with one memo shared by every run.

`make demo` runs genetic on SmolLM2 with 6 of 30 blocks removed, perplexity on 1024
wikipedia tokens (2 sequences of 512, batch size 1). This script loads the model and those
tokens once and runs each variant for each seed. Values do not depend on which run scored
a mask first, so the memo is shared between runs (and kept in ``--memo``, a pickle, across
invocations): a variant costs only the masks no earlier run asked. Per run it prints the
final mask's perplexity on all 1024 tokens, and ``tokens``: the calibration tokens that run
alone would have scored with a fresh memo (sum over the distinct (mask, fidelity) pairs it
asked; prefix sharing makes the real cost lower), a proxy for its wall time.

    python benchmarks/demo_genetic.py --seeds 0,1,2 'genetic' 'genetic:{"initial":16}'
    python benchmarks/demo_genetic.py --budget 400 --seeds 0 'greedy' 'beam:{"width":2}'
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import time

import dpopt
from dpopt.genome import LayerMask


class Logged:
    """Wraps the evaluator's ``evaluate`` to record every (mask, fidelity) a run asks for."""

    def __init__(self, ev, save=None):
        self.ev, self.asked, self.save = ev, set(), save
        self._orig = ev.evaluate
        self._saved_at = ev.n_scored

    def __enter__(self):
        def evaluate(masks, fidelity=None):
            fid = self.ev.resolve_fidelity(fidelity)
            self.asked.update((m.key(), fid) for m in masks)
            out = self._orig(masks, fidelity)
            if self.save and self.ev.n_scored - self._saved_at >= 16:  # a killed run keeps what it scored
                self._saved_at = self.ev.n_scored
                self.save()
            return out

        self.ev.evaluate = evaluate
        return self

    def __exit__(self, *exc):
        del self.ev.evaluate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("variants", nargs="+", help="ALGO or ALGO:{json options}")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--budget", type=int, default=200)
    ap.add_argument("--remove", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--memo", default="/tmp/dpopt-demo-memo.pkl")
    ap.add_argument("--jsonl", default=None)
    a = ap.parse_args()

    lm = dpopt.load("smollm2-135m")
    ev = dpopt.make_evaluator(lm, "ppl", data="wikipedia", tokens=a.tokens, seq_len=a.seq_len, batch_size=1)
    memo_file = f"{a.memo}.{ev.fingerprint.short}"
    if os.path.exists(memo_file):
        with open(memo_file, "rb") as fh:
            ev.memo.update(pickle.load(fh))

    def save():
        with open(memo_file + ".tmp", "wb") as fh:
            pickle.dump(ev.memo, fh)
        os.replace(memo_file + ".tmp", memo_file)

    print(f"dense {ev.dense_value():.4f}; fidelities {ev.fidelities()}; memo {len(ev.memo)} entries", flush=True)
    for variant in a.variants:
        algo, _, opts = variant.partition(":")
        options = json.loads(opts) if opts else {}
        for seed in (int(s) for s in a.seeds.split(",")):
            t, n0 = time.perf_counter(), ev.n_scored
            with Logged(ev, save) as log:
                res = dpopt.search(lm, ev, algo, remove=a.remove, budget=a.budget, seed=seed, storage="none",
                                   progress=False, algo_options=options)
            tokens = sum(f for _, f in log.asked)
            row = {"variant": variant, "seed": seed, "ppl": res.fitness, "removed": res.removed_layers,
                   "evaluations": res.evaluations, "tokens": tokens, "new_scored": ev.n_scored - n0,
                   "wall": round(time.perf_counter() - t, 1)}
            print(f"{variant} seed {seed}: ppl {res.fitness:.4f} removed {res.removed_layers} evals {res.evaluations} "
                  f"tokens {tokens} (new masks scored {row['new_scored']}, {row['wall']} s)", flush=True)
            save()
            if a.jsonl:
                with open(a.jsonl, "a") as fh:
                    fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
