"""How many evaluations ng:/optuna: searchers need to hit the synthetic optimum (seeds 0-5).

Usage: PYTHONPATH=. python scripts/adapter_budgets.py ng:NGOpt,optuna:TPESampler 300
Prints, per searcher, how many seeds ended on the optimum and the evaluation of the first
hit; the budgets in tests/test_adapters.py come from it.
"""
import sys
import time

sys.path.insert(0, "tests")
from test_searchers_synthetic import RecordingEvaluator, brute_force, make_objective  # noqa: E402

from dpopt.genome import Constraint  # noqa: E402
from dpopt.optim import SEARCHERS, Budget, run_search  # noqa: E402

c = Constraint.build(16, remove=4, protect="0,-1")
fn = make_objective(16)
opt_mask, _ = brute_force(c, fn)
names, budget = sys.argv[1].split(","), int(sys.argv[2])
for name in names:
    t, hits, first = time.time(), [], []
    for seed in range(6):
        ev = RecordingEvaluator(fn)
        r = run_search(SEARCHERS.get(name)(c, seed=seed), ev, Budget(evaluations=budget))
        hits.append(r.best == opt_mask)
        first.append(next((i + 1 for i, (m, _) in enumerate(ev.asked) if m == opt_mask), None))
    print(f"{name:40s} found {sum(hits)}/6 first-hit evals {first} {time.time() - t:.1f}s", flush=True)
