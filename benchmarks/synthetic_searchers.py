"""Searcher variants on synthetic landscapes with a known optimum (tests/landscapes.py), in seconds.

For choosing the genetic searcher's defaults: every variant runs on landscapes ``trap`` (greedy's
trap, 20 blocks, K=5), ``rugged`` (log-perplexity-like, K=6), ``additive`` (K=5) and ``run``
(K=6: a run of neighbouring blocks, each costly alone, cheap together), seeds
100.. (the tests use other seeds), at one evaluation budget. The evaluator has 8 batches
(fidelities 1..8); ``noise`` adds N(0, noise^2 / fidelity) to a score, and ``cost`` counts
batches scored, so racing's saving shows. Printed per variant and landscape: the median gap
to the optimum, how many seeds hit it exactly, and the mean cost.

    NS=32 python benchmarks/synthetic_searchers.py trap,rugged,additive 200 \\
        'g2=("genetic",{},0)' 'g1=("genetic",{"population":1},0)' 'rand=("random",{},0)'
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from landscapes import additive, brute_force, run_of_blocks, rugged, trap  # noqa: E402

from dpopt.fitness import FunctionEvaluator  # noqa: E402
from dpopt.genome import Constraint  # noqa: E402
from dpopt.optim import SEARCHERS, Budget, run_search  # noqa: E402


class NoisyEv(FunctionEvaluator):
    def __init__(self, fn, noise, nb=8):
        super().__init__(fn)
        self.noise, self.nb, self.cost = noise, nb, 0

    def fidelities(self):
        return list(range(1, self.nb + 1))

    def _score(self, masks, fid):
        f = self.nb if fid is None else fid
        out = []
        for m in masks:
            r = np.random.default_rng([int.from_bytes(m.key(), "little") % 2**32, f])
            out.append(self.fn(m) + self.noise * r.standard_normal() / np.sqrt(f))
            self.cost += f
        return out


def land(name, seed):
    if name == "trap":
        return Constraint.build(20, remove=5), trap(20, 5, seed=100 + seed)[0]
    if name == "rugged":
        return Constraint.build(20, remove=6), rugged(20, seed=100 + seed)
    if name == "run":
        return Constraint.build(20, remove=6), run_of_blocks(20, 6, seed=100 + seed)[0]
    return Constraint.build(20, remove=5), additive(20, seed=100 + seed)


def main():
    ns = int(os.environ.get("NS", "6"))
    lands, budget = sys.argv[1].split(","), int(sys.argv[2])
    configs = {k: eval(v) for k, v in (a.split("=", 1) for a in sys.argv[3:])}  # noqa: S307 (a benchmark's own CLI)
    opt = {(L, s): brute_force(*land(L, s))[1] for L in lands for s in range(ns)}
    for name, (algo, opts, noise) in configs.items():
        row = []
        for L in lands:
            gaps, costs = [], []
            for s in range(ns):
                c, fn = land(L, s)
                ev = NoisyEv(fn, noise)
                r = run_search(SEARCHERS.get(algo)(c, seed=s, **opts), ev, Budget(evaluations=budget))
                gaps.append(fn(r.best) - opt[(L, s)])
                costs.append(ev.cost)
            row.append(f"{L}: med gap {np.median(gaps):.3f} hits {sum(g < 1e-9 for g in gaps)}/{ns} "
                       f"cost {np.mean(costs):.0f}")
        print(f"{name:14s}", " | ".join(row), flush=True)


if __name__ == "__main__":
    main()
