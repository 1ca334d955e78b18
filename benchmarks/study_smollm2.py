"""``dpopt study`` on SmolLM2-135M, sized for a shared 2-core CPU (~15 minutes).

Asks the study's two questions on a small grid: do ppl and kl rank masks alike, and does
the objective or the searcher decide more of which blocks get removed? Writes the report
(Markdown, HTML, plots, CSV) and prints the headline numbers it computed.

    python benchmarks/study_smollm2.py --report benchmarks/reports/smollm2-study

The committed report under benchmarks/reports/smollm2-study/ came from exactly that
command (the defaults below). A full-size study (more tokens, 5 seeds, every searcher,
budget in the hundreds, Gemma3-270m too) needs a GPU or hours of CPU.
"""
from __future__ import annotations

import argparse
import time

import dpopt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--objectives", default="ppl,kl")
    ap.add_argument("--algos", default="random,genetic,anneal")
    ap.add_argument("--remove", type=int, default=4)
    ap.add_argument("--budget", type=int, default=60)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=1, help="sequences per batch: >1 batch gives ppl/kl an error bar")
    ap.add_argument("--random-masks", type=int, default=20)
    ap.add_argument("--storage", default="sqlite:///smollm2-study.db")
    ap.add_argument("--report", default="benchmarks/reports/smollm2-study")
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args()

    start = time.perf_counter()
    lm = dpopt.load(a.model, device="cpu")
    res = dpopt.study(lm, a.objectives, algos=a.algos, remove=a.remove, budget=a.budget, seeds=a.seeds,
                      report=a.report, storage=a.storage, random_masks=a.random_masks, overwrite=a.overwrite,
                      tokens=a.tokens, seq_len=a.seq_len, batch_size=a.batch_size, n_boot=1000)
    print(res.report["headline"])
    for c in res.report.get("correlations", []):
        print(f"{c.a} vs {c.b}: Spearman {c.spearman:.3f} (p={c.spearman_p:.2g}), "
              f"Kendall {c.kendall:.3f} (p={c.kendall_p:.2g}) over {c.n} masks")
    for name, g in res.grids.items():
        print(f"{name}: {g.evaluations} evaluations counted, {g.masks_computed} distinct masks computed, "
              f"{g.units_computed} tokens scored, {g.wall_seconds:.0f} s; {g.reference_note}")
        for run in g.experiment.runs:
            print(f"  {run.algo:<8} seed {run.seed}: {name}={run.value:.5g} removing {list(run.removed)}"
                  + ("" if run.ok else f"  FAILED {run.error}"))
    for cell, scores in res.heldout.items():
        print(f"held-out {cell:<20} " + "  ".join(f"{o}={s.value:.5g}±{s.se:.2g}" if s.se is not None
                                                   else f"{o}={s.value:.5g}" for o, s in scores.items()))
    print(f"total wall {time.perf_counter() - start:.0f} s; report in {a.report}")


if __name__ == "__main__":
    main()
