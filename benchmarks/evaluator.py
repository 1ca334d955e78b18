"""Benchmark: dpopt's Evaluator against the naive per-mask loop and the unique-work floor.

On the real SmolLM2-135M (30 blocks), objective ppl on the default calibration data
(``wikipedia``, calib split), the same calibration tokens for every method. Three
workloads a block-removal search produces:

* greedy  - one greedy step: every single removal from a mask with 6 blocks removed;
* ga      - one GA generation: 32 offspring, each 1-3 swaps away from one parent (6 removed);
            also ``ga warm``: the same generation after the parent itself was evaluated;
* random  - 32 random masks with 6 removed.

For each, three timings:

(a) naive  - as published tools do it: each mask separately, through the HF model's own
             forward under ``MaskedModel.applied(mask)``, one calibration sequence at a time;
(b) dpopt  - a fresh :class:`dpopt.evaluator.Evaluator` (cold prefix cache, batch preparation
             included);
(c) floor  - exactly the distinct (prefix, block) block calls, each once at the calibration
             batch, plus one head + score per distinct mask, run directly (no bookkeeping,
             no preparation: the block arguments are captured beforehand, untimed).

Peak memory: a subprocess loads the model and scores the dense mask once (the footprint
of plain evaluation); another runs only the dpopt workloads; the ratio of their peak RSS
(VmHWM) is the evaluator's memory overhead (target < 1.5x). The main process's own peak
is printed too.

    PYTHONPATH=. python benchmarks/evaluator.py            # full run, a few minutes on 2 cores
    PYTHONPATH=. python benchmarks/evaluator.py --quick    # smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from _memory import peak_rss_mb  # noqa: E402  (benchmarks/ is sys.path[0])
from dpopt.api import load  # noqa: E402
from dpopt.evaluator import Evaluator  # noqa: E402
from dpopt.genome import Constraint, LayerMask  # noqa: E402
from dpopt.objectives.base import Batch  # noqa: E402

MODEL = "smollm2-135m"
REMOVE = 6


# --- helpers --------------------------------------------------------------------------------

def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def gpu_peak_mb(device) -> float | None:
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return None


def timed(fn, device):
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def build(args):
    """Model + prepared ppl objective on the default calibration data."""
    from dpopt.objectives import build_objective

    lm = load(MODEL, device=args.device)
    obj, data = build_objective("ppl", tokens=args.tokens, seq_len=args.seq_len, batch_size=args.batch_size)
    obj.prepare(lm, data)
    return lm, obj


def make_workloads(n_units: int, n_masks: int, seed: int):
    rng = np.random.default_rng(seed)
    c = Constraint(n_units, REMOVE)
    base = c.random_mask(rng)
    greedy = [base.with_removed(i) for i in base.kept()]
    parent = c.random_mask(rng)
    offspring = [c.swap_mutation(parent, rng, n_swaps=int(rng.integers(1, 4))) for _ in range(n_masks)]
    random_masks = [c.random_mask(rng) for _ in range(n_masks)]
    return {"greedy": greedy, "ga": offspring, "random": random_masks}, parent


# --- (a) naive -----------------------------------------------------------------------------

def sequences(obj) -> list[Batch]:
    return [Batch(0, b.input_ids[r : r + 1], size=b.input_ids.shape[1])
            for b in obj.batches() for r in range(b.input_ids.shape[0])]


@torch.no_grad()
def naive(lm, obj, masks: list[LayerMask]) -> dict[LayerMask, float]:
    """Each distinct mask through the model's own forward, one calibration sequence at a time."""
    seqs = sequences(obj)
    device = lm.masked.device
    values: dict[LayerMask, float] = {}
    for m in masks:
        if m in values:  # even a naive loop does not re-run an identical mask
            continue
        parts = []
        with lm.masked.applied(m) as model:
            for s in seqs:
                logits = model(input_ids=s.input_ids.to(device), use_cache=False).logits
                parts.append(obj.score(logits, s))
        values[m] = float(obj.finish(parts))
    return values


# --- (c) the unique-work floor ---------------------------------------------------------------

def distinct_pairs(masks, exclude=()) -> int:
    """Distinct (prefix, block) pairs of ``masks``, minus those on the paths of ``exclude``."""
    def pairs(m):
        return {(m.bits[:lv].tobytes(), lv) for lv in m.kept()}

    have = set().union(*(pairs(m) for m in exclude)) if exclude else set()
    return len(set().union(*(pairs(m) for m in dict.fromkeys(masks))) - have)


@torch.no_grad()
def floor(lm, obj, masks: list[LayerMask], prepared) -> tuple[float, np.ndarray, int]:
    """Time exactly one call per distinct (prefix, block) and one head+score per distinct mask."""
    mm = lm.masked
    distinct = list(dict.fromkeys(masks))
    n = mm.n_blocks
    device = mm.device
    calls = 0
    parts: dict[LayerMask, list] = {m: [] for m in distinct}
    sync(device)
    t = time.perf_counter()
    for b, prep in zip(obj.batches(), prepared):
        frontier = [(prep.h0, distinct)]  # (hidden, masks sharing this prefix)
        for level in range(n):
            nxt = []
            for h, ms in frontier:
                keep = [m for m in ms if m.bits[level]]
                skip = [m for m in ms if not m.bits[level]]
                if skip:
                    nxt.append((h, skip))
                if keep:
                    nxt.append((mm.run_block(level, h, prep), keep))
                    calls += 1
            frontier = nxt
        for h, ms in frontier:  # one leaf per distinct mask
            part = obj.score(mm.head(h), b)
            for m in ms:
                parts[m].append(part)
    values = {m: float(obj.finish(p)) for m, p in parts.items()}
    sync(device)
    return time.perf_counter() - t, np.array([values[m] for m in masks]), calls


# --- subprocess phases -----------------------------------------------------------------------

def child_args(args) -> list[str]:
    out = ["--tokens", str(args.tokens), "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size),
           "--device", args.device, "--masks", str(args.masks), "--seed", str(args.seed)]
    return out


def run_child(args, phase: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", phase] + child_args(args)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"phase {phase} failed (rc {proc.returncode})")
    return json.loads(lines[-1])


def phase_main(args) -> None:
    lm, obj = build(args)
    if args.phase == "dense":
        ev = Evaluator(lm, obj)
        value = ev.raw(LayerMask.dense(lm.n_blocks))
    else:  # "dpopt": only the evaluator's workloads, as in the main run
        sets, parent = make_workloads(lm.n_blocks, args.masks, args.seed)
        for name, masks in sets.items():
            Evaluator(lm, obj).evaluate(masks)
        ev = Evaluator(lm, obj)
        ev.evaluate([parent])
        value = float(ev.evaluate(sets["ga"]).min())
    print(json.dumps({"vmhwm_mb": peak_rss_mb(), "gpu_peak_mb": gpu_peak_mb(lm.masked.device), "value": value}))


# --- main ------------------------------------------------------------------------------------

def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=1024, help="calibration tokens (default 1024)")
    p.add_argument("--seq-len", type=int, default=256, help="calibration sequence length (default 256)")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per objective batch (default: all, up to 8)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--masks", type=int, default=32, help="offspring / random masks per workload (default 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny smoke run: 64 tokens in sequences of 32, 4 masks")
    p.add_argument("--naive-masks", type=int, default=4,
                   help="run the naive loop on this many distinct masks per workload and scale its time to all "
                        "(its cost per mask is the same for every mask of a workload); 0 = all (default 4)")
    p.add_argument("--no-memory", action="store_true", help="skip the dense-footprint subprocess")
    p.add_argument("--isolated-memory", action="store_true",
                   help="also measure the dpopt workloads' peak RSS alone, in a subprocess (runs them again)")
    p.add_argument("--phase", choices=["dense", "dpopt"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.tokens, args.seq_len, args.masks, args.naive_masks = 64, 32, 4, 2
    if args.batch_size is None:
        args.batch_size = max(1, min(8, -(-args.tokens // args.seq_len)))
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.phase:
        return phase_main(args)

    dense_mem = None if args.no_memory else run_child(args, "dense")

    t0 = time.perf_counter()
    lm, obj = build(args)
    device = lm.masked.device
    n = lm.n_blocks
    n_seq = sum(b.input_ids.shape[0] for b in obj.batches())
    print(f"# {MODEL}: {n} blocks, device {device}, {n_seq} x {args.seq_len} calibration tokens "
          f"in {len(obj.batches())} batch(es) of {args.batch_size}; {torch.get_num_threads()} threads; "
          f"load+prepare {time.perf_counter() - t0:.1f}s")

    sets, parent = make_workloads(n, args.masks, args.seed)
    seqs = sequences(obj)
    # warm-up (first-call allocations, kernel selection), untimed
    with torch.no_grad():
        lm.model(input_ids=seqs[0].input_ids.to(device), use_cache=False)
    prepared = [lm.masked.prepare(b.input_ids, b.attention_mask, b.position_ids) for b in obj.batches()]

    rows, max_rel = [], 0.0
    for name, masks in list(sets.items()) + [("ga warm", sets["ga"])]:
        distinct = list(dict.fromkeys(masks))
        ev = Evaluator(lm, obj)
        if name == "ga warm":
            ev.evaluate([parent])  # the previous generation scored the parent
        calls0 = ev.block_calls
        t_dpopt, fit = timed(lambda: ev.evaluate(masks), device)
        dpopt_calls = ev.block_calls - calls0
        raw = {m: ev.raw(m) for m in distinct}  # memo hits: no model work
        if name == "ga warm":  # same masks as "ga": naive and floor are not rerun
            prev = rows[1]
            t_naive, naive_calls, sampled, rel = prev["naive"], prev["naive_calls"], prev["sampled"], prev["rel"]
            floor_calls = distinct_pairs(masks, exclude=[parent]) * len(prepared)
            t_floor = prev["floor"] * floor_calls / prev["floor_calls"]  # an ideal cache of the parent's path
        else:
            sample = distinct if args.naive_masks <= 0 else distinct[: args.naive_masks]
            t_sample, naive_vals = timed(lambda: naive(lm, obj, sample), device)
            sampled = len(sample) < len(distinct)
            t_naive = t_sample * len(distinct) / len(sample)
            naive_calls = sum(len(m.kept()) for m in distinct) * len(seqs)
            rel = max(abs(raw[m] - v) / abs(v) for m, v in naive_vals.items())
            t_floor, floor_vals, floor_calls = floor(lm, obj, masks, prepared)
            assert floor_calls == distinct_pairs(masks) * len(prepared)
            rel_floor = float(np.max(np.abs(np.array([raw[m] for m in masks]) - floor_vals) / np.abs(floor_vals)))
            max_rel = max(max_rel, rel, rel_floor)
        rows.append(dict(name=name, masks=len(masks), distinct=len(distinct), naive=t_naive, dpopt=t_dpopt,
                         floor=t_floor, naive_calls=naive_calls, dpopt_calls=dpopt_calls, floor_calls=floor_calls,
                         sampled=sampled, rel=rel, best=float(np.min(fit))))
        print(f"#   {name}: naive {t_naive:.2f}s{' (scaled)' if sampled else ''} dpopt {t_dpopt:.2f}s "
              f"floor {t_floor:.2f}s (max rel diff dpopt vs naive {rel:.1e})", flush=True)

    print()
    print("| workload | masks (distinct) | naive s | dpopt s | floor s | naive/dpopt | dpopt/floor "
          "| block calls: naive (bs 1) | dpopt (batch) | floor (batch) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        star = "*" if r["sampled"] else ""
        print(f"| {r['name']} | {r['masks']} ({r['distinct']}) | {r['naive']:.1f}{star} | {r['dpopt']:.1f} | {r['floor']:.1f} "
              f"| {r['naive'] / r['dpopt']:.1f}x | {r['dpopt'] / r['floor']:.2f}x "
              f"| {r['naive_calls']} | {r['dpopt_calls']} | {r['floor_calls']} |")
    print()
    if any(r["sampled"] for r in rows):
        print(f"* naive timed on {args.naive_masks} distinct masks per workload and scaled to all of them.")
    print("ga warm: a fresh evaluator that already scored the parent; its floor assumes an ideal cache of the "
          "parent's whole path (ga floor time scaled by block calls). dpopt includes preparing the batches "
          "(one partial dense pass each) except in ga warm; the floor does not.")
    print(f"naive vs dpopt vs floor fitness (ppl): max rel diff {max_rel:.2e}")

    main_peak = peak_rss_mb()
    if dense_mem is not None:
        base = dense_mem["vmhwm_mb"]
        print()
        print("| peak RSS (VmHWM) | MiB | x dense |")
        print("|---|---|---|")
        print(f"| dense evaluation (subprocess: load + score the dense mask once) | {base:.0f} | 1.00 |")
        print(f"| this process after all workloads (naive + dpopt + floor) | {main_peak:.0f} | {main_peak / base:.2f} |")
        ratio = main_peak / base
        if args.isolated_memory:
            dpopt_mem = run_child(args, "dpopt")
            print(f"| dpopt workloads only (subprocess) | {dpopt_mem['vmhwm_mb']:.0f} | {dpopt_mem['vmhwm_mb'] / base:.2f} |")
            ratio = dpopt_mem["vmhwm_mb"] / base
        print(f"peak / dense peak = {ratio:.2f}x (target < 1.5x): {'OK' if ratio < 1.5 else 'OVER'}")
        gpu = gpu_peak_mb(device)
        if gpu is not None and dense_mem.get("gpu_peak_mb") is not None:
            print(f"GPU peak allocated: dense {dense_mem['gpu_peak_mb']:.0f} MiB, this process {gpu:.0f} MiB")
    print(f"total {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
