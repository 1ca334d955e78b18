"""EvoPress's own search configuration against `--algo genetic`'s defaults, in one run.

Data: the `wikipedia` zoo set as one token stream (documents joined by EOS, in order).
Calibration = its first ``--calib-tokens`` tokens, held-out = its last ``--heldout-tokens``
tokens, both in ``--seq-len`` sequences (the two never overlap). Objective: KL to the dense
model, on the calibration data kept as the dense top-``--kl-topk`` (full vocabulary would
hold 3.2 GB of targets for 16k tokens); the held-out KL is over the full vocabulary,
computed batch by batch so it needs no stored targets.

(a) EvoPress (evo_drop_search.py): ``--initial`` random masks scored on the first race
    fidelity, the best one the parent; ``--generations`` of (1 + ``--offspring``) with
    level-switch mutation (min(U{1,3}, U{1,3}) swaps), race ``--evopress-race`` (default
    2048 tokens -> 2 survivors, 8192 -> 1), the parent re-scored beside the survivors.
    Run by dpopt's genetic searcher with population=1, screen=0 and jump=false: exactly that algorithm.
    One difference: EvoPress draws fresh random calibration sequences at every stage,
    dpopt scores the first batches of a fixed calibration set.
(b) ``--algo genetic`` with its defaults (budget ``--budget``, dpopt's default 200).

Each configuration runs in its own process, so its peak RSS (VmHWM) is its own. Printed per run:
wall seconds, peak RSS, evaluations (distinct masks), scored tokens (mask x tokens), the
final mask's held-out KL (full vocabulary) and perplexity; for (b) also when its
best-so-far mask first reached (a)'s held-out KL or ``--target``.

    python benchmarks/evopress_settings.py                     # the full setting (slow on a CPU)
    python benchmarks/evopress_settings.py --calib-tokens 2048 --heldout-tokens 2048 \\
        --evopress-race 256:2,1024:1 --seeds 1                  # a shrunk version
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from _memory import peak_rss_mb  # benchmarks/ is sys.path[0]


def load_stream(lm, tokens_needed: int, seq_len: int) -> torch.Tensor:
    """All of wikipedia as ``seq_len`` sequences, in stream order (BOS-led where the tokenizer wants it)."""
    try:
        from dpopt.data import load_data  # the data package's new home
    except ImportError:
        from dpopt.objectives.data import load_data
    from dpopt.objectives.base import text_stream_batches

    docs = load_data("wikipedia", split="all").documents
    batches = text_stream_batches(lm.tokenizer, docs, 10**9, seq_len, batch_size=1 << 30)
    seqs = torch.cat([b.input_ids for b in batches])
    if seqs.numel() < tokens_needed:
        from dpopt.errors import UserError

        raise UserError(f"wikipedia holds {seqs.numel()} tokens, fewer than the {tokens_needed} asked for")
    return seqs


def make_calib_evaluator(lm, a):
    """dpopt's kl objective on the stream's first ``calib_tokens``, counting the tokens it scores."""
    import dpopt

    ev = dpopt.make_evaluator(lm, "kl", data="wikipedia", split="all", tokens=a.calib_tokens, seq_len=a.seq_len,
                              batch_size=a.batch_seqs, topk=a.kl_topk)
    scored = {"tokens": 0}
    score = ev.objective.score

    def counting_score(logits, batch):
        scored["tokens"] += batch.size * (logits.shape[0] // batch.input_ids.shape[0])
        return score(logits, batch)

    ev.objective.score = counting_score
    return ev, scored


@torch.no_grad()
def heldout_scores(lm, seqs: torch.Tensor, mask, batch_seqs: int = 2) -> tuple[float, float]:
    """Full-vocabulary KL(dense || pruned) per token and the pruned model's perplexity, streamed."""
    kl_sum = nll_sum = 0.0
    n_kl = n_nll = 0
    for s in range(0, len(seqs), batch_seqs):
        ids = seqs[s:s + batch_seqs].to(lm.masked.device)
        prep = lm.masked.prepare(ids, dense=True)
        logq = torch.log_softmax(lm.masked.forward_masked(mask, prep).float(), dim=-1)
        logp = torch.log_softmax(prep.dense_logits.float(), dim=-1)
        kl_sum += float((logp.exp() * (logp - logq)).sum())
        n_kl += logp.shape[0] * logp.shape[1]
        nll_sum += float(-logq[:, :-1].gather(-1, ids[:, 1:, None]).sum())
        n_nll += ids[:, 1:].numel()
        del prep, logq, logp
    return kl_sum / n_kl, math.exp(nll_sum / n_nll)


def parse_race(text: str):
    return [(None if f in ("all", "None") else int(f), int(s)) for f, s in (p.split(":") for p in text.split(","))]


def child(a) -> None:
    """One search in this process; prints one JSON line."""
    import dpopt
    from dpopt.genome import Constraint
    from dpopt.optim import SEARCHERS, Budget, run_search

    torch.manual_seed(0)
    lm = dpopt.load(a.model, device=a.device)
    ev, scored = make_calib_evaluator(lm, a)
    c = Constraint.build(lm.n_blocks, remove=a.remove)
    if a.config == "evopress":
        # screen=0, jump=False: EvoPress mutates blindly; dpopt's surrogate is part of (b) only
        options = dict(population=1, offspring=a.offspring, initial=a.initial, crossover="none", screen=0, jump=False,
                       race=parse_race(a.evopress_race))
        budget = a.initial + a.generations * a.offspring
    else:
        options, budget = {}, a.budget
    searcher = SEARCHERS.get("genetic")(c, seed=a.seed, **options)
    trail = []  # (seconds, removed) each time the best-so-far mask changes
    start = time.perf_counter()

    def progress(n, best):
        if searcher.population:
            top = min(searcher.population, key=lambda ind: ind.fitness.values[0]).mask().removed()
            if not trail or trail[-1][1] != list(top):
                trail.append((time.perf_counter() - start, list(top)))

    res = run_search(searcher, ev, Budget(evaluations=budget), progress=progress)
    wall = time.perf_counter() - start
    out = {"config": a.config, "seed": a.seed, "wall": wall, "evaluations": res.evaluations,
           "scored_tokens": scored["tokens"], "removed": list(res.best.removed()), "trail": trail,
           "race": searcher.race_schedule, "peak_rss_mb": peak_rss_mb(),
           "generations": searcher.generation}
    print("RESULT " + json.dumps(out), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--calib-tokens", type=int, default=16384)
    ap.add_argument("--heldout-tokens", type=int, default=16384)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-seqs", type=int, default=4, help="sequences per batch: the fidelity step")
    ap.add_argument("--kl-topk", type=int, default=1024)
    ap.add_argument("--remove", type=int, default=6)
    ap.add_argument("--initial", type=int, default=32)
    ap.add_argument("--offspring", type=int, default=16)
    ap.add_argument("--generations", type=int, default=10)
    ap.add_argument("--evopress-race", default="2048:2,8192:1", help="FIDELITY:SURVIVORS,... for (a)")
    ap.add_argument("--budget", type=int, default=200, help="(b)'s evaluation budget (dpopt's default)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 of each configuration")
    ap.add_argument("--configs", default="evopress,dpopt")
    ap.add_argument("--target", type=float, default=0.803, help="held-out KL that EvoPress's own code reached")
    ap.add_argument("--json", default=None, help="write every run's numbers here")
    ap.add_argument("--config", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.config:
        return child(a)

    import dpopt
    from dpopt.genome import LayerMask

    lm = dpopt.load(a.model, device=a.device)
    seqs = load_stream(lm, a.calib_tokens + a.heldout_tokens, a.seq_len)
    n_held = -(-a.heldout_tokens // a.seq_len)  # ceil: whole sequences
    held = seqs[-n_held:]  # the stream's last heldout_tokens, never the calibration's first ones
    cache: dict[tuple, tuple[float, float]] = {}

    def held_out(removed):
        key = tuple(removed)
        if key not in cache:
            cache[key] = heldout_scores(lm, held, LayerMask.from_removed(lm.n_blocks, removed))
        return cache[key]

    dense_kl, dense_ppl = held_out([])
    runs = []
    for seed in range(a.seeds):  # each run is scored on held-out data as it ends, so a cut grid keeps its rows
        for config in a.configs.split(","):
            cmd = [sys.executable, __file__, "--config", config, "--seed", str(seed)] + sys.argv[1:]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{config} seed {seed} failed:\n{proc.stderr[-3000:]}")
            r = json.loads(line[len("RESULT "):])
            r["heldout_kl"], r["heldout_ppl"] = held_out(r["removed"])
            if config == "dpopt":
                ref = [e for e in runs if e["config"] == "evopress" and e["seed"] == seed]
                r["goal"] = min(a.target, ref[0]["heldout_kl"]) if ref else a.target
                r["reached_s"] = next((t for t, rem in r["trail"] if held_out(rem)[0] <= r["goal"] + 1e-12), None)
            runs.append(r)
            print(f"  {config} seed {seed}: {r['wall']:.0f} s, {r['peak_rss_mb']:.0f} MB, {r['evaluations']} evals, "
                  f"{r['scored_tokens']} tokens, race {r['race']}, removed {r['removed']}, held-out KL "
                  f"{r['heldout_kl']:.4f}, ppl {r['heldout_ppl']:.2f}"
                  + (f", reached {r['goal']:.3f} at {r['reached_s']} s" if config == "dpopt" else ""), flush=True)
            if a.json:
                with open(a.json, "w") as fh:
                    json.dump({"args": vars(a), "runs": runs, "dense_heldout_ppl": dense_ppl}, fh, indent=1)

    print(f"\n{lm.n_blocks}-block {a.model}, remove {a.remove}, calibration {a.calib_tokens} tokens "
          f"(top-{a.kl_topk} KL), held-out {a.heldout_tokens} tokens (full-vocabulary KL); dense held-out ppl "
          f"{dense_ppl:.2f}\n")
    print("| config | seed | wall s | peak RSS MB | evaluations | scored tokens | held-out KL | held-out ppl | "
          "removed | (b) reached goal at s (goal) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        reach = "" if r["config"] != "dpopt" else (
            f"{r['reached_s']:.0f} ({r['goal']:.3f})" if r["reached_s"] is not None else f"never ({r['goal']:.3f})")
        print(f"| {r['config']} | {r['seed']} | {r['wall']:.0f} | {r['peak_rss_mb']:.0f} | {r['evaluations']} | "
              f"{r['scored_tokens']} | {r['heldout_kl']:.4f} | {r['heldout_ppl']:.2f} | {r['removed']} | {reach} |")
    for config in a.configs.split(","):
        rs = [r for r in runs if r["config"] == config]
        print(f"median {config}: wall {statistics.median(r['wall'] for r in rs):.0f} s, held-out KL "
              f"{statistics.median(r['heldout_kl'] for r in rs):.4f}, peak RSS "
              f"{statistics.median(r['peak_rss_mb'] for r in rs):.0f} MB")


if __name__ == "__main__":
    main()
