"""Benchmark: does the search-time latency of a mask predict its exported checkpoint's latency?

On the real SmolLM2-135M (30 blocks), for the dense model and K = 4, 8, 12 whole blocks
removed (and one sub-layer mask, whose zeroed projections still run), the latency cost
measures each mask through :func:`dpopt.latency.pruned_view` (the one loaded model, no copy);
then the mask is exported with dpopt, reloaded with plain ``from_pretrained`` and measured
again with :func:`dpopt.latency.measure_checkpoint` on the same workload. Printed per mask:
both values in ms per token (prefill+decode workload), their ratio, each one's noise
((max - min) / median over the repeats), prefill and decode parts, and the wall seconds one
measurement took. The search's latency is only worth optimising if that ratio stays near 1.

    PYTHONPATH=. nice -n 10 python benchmarks/latency.py                 # ~40 s on one core
    PYTHONPATH=. nice -n 10 python benchmarks/latency.py --threads 2 --clock wall
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import dpopt  # noqa: E402
from dpopt.genome import UnitSpace  # noqa: E402
from dpopt.costs.latency import LatencyCost, device_name, measure_checkpoint  # noqa: E402
from dpopt.models.export import export_pruned_units  # noqa: E402

MODEL = "smollm2-135m"


def masks(n_blocks: int) -> dict[str, list[str]]:
    """Dense, then K whole blocks from the upper-middle of the stack, then attention of 6 blocks + MLP of 6 others."""
    out = {"dense": []}
    for k in (4, 8, 12):
        start = n_blocks - 2 - k
        out[f"K={k}"] = [f"block.{i}" for i in range(start, start + k)]
    out["sub 6a+6m"] = [f"attn.{i}" for i in range(6, 12)] + [f"mlp.{i}" for i in range(18, 24)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch threads while timing (default: 1 on a CPU)")
    ap.add_argument("--clock", default="auto", choices=("auto", "wall", "cpu"))
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    opts = dict(prompt_len=args.prompt_len, new_tokens=args.new_tokens, repeats=args.repeats, warmup=args.warmup,
                threads=args.threads, clock=args.clock)

    lm = dpopt.load(MODEL, device="cpu")
    n = lm.n_blocks
    named = masks(n)
    block_space = UnitSpace.blocks(n)
    sub_space = UnitSpace.sublayers(n, lm.masked.sublayer_names())
    t = time.perf_counter()
    costs = {"block": LatencyCost(lm, block_space, **opts)}
    costs["sublayer"] = LatencyCost(lm, sub_space, **opts)
    print(f"{MODEL} on {device_name(lm.masked.device)}, {lm.masked.dtype}, threads={costs['block'].settings()['threads']}, "
          f"clock={costs['block'].clock}; workload: {args.prompt_len}-token prefill + {args.new_tokens} cached decode steps, "
          f"fastest of {args.repeats} runs after {args.warmup} warm-up; two dense references took "
          f"{time.perf_counter() - t:.1f} s")
    print(f"{'mask':<11}{'blocks':>7}{'view ms/tok':>12}{'noise':>7}{'ckpt ms/tok':>12}{'noise':>7}{'ckpt/view':>10}"
          f"{'view pre/dec ms':>17}{'ckpt pre/dec ms':>17}{'s/meas':>8}")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, units in named.items():
            space = block_space if all(u.startswith("block.") for u in units) else sub_space
            cost = costs["block" if space is block_space else "sublayer"]
            mask = space.mask(units)
            if units:
                [value] = cost.values([mask])
            view = cost.timings[mask.key()]
            out = export_pruned_units(lm.masked, lm.tokenizer, units, Path(tmp) / name.replace(" ", "_"), source=MODEL)
            ckpt = measure_checkpoint(out, args.prompt_len, args.new_tokens, args.warmup, args.repeats, device="cpu",
                                      dtype=lm.masked.dtype, threads=args.threads, clock=args.clock)
            ratio = ckpt.total_ms / view.total_ms
            kept = n - sum(u.startswith("block.") for u in units)
            rows[name] = dict(units=units, blocks=kept, view=view.to_dict(), checkpoint=ckpt.to_dict(), ratio=ratio)
            print(f"{name:<11}{kept:>7}{view.total_ms:>12.2f}{view.noise:>7.2f}{ckpt.total_ms:>12.2f}{ckpt.noise:>7.2f}"
                  f"{ratio:>10.3f}{view.prefill_ms:>8.2f}/{view.decode_ms:<8.2f}{ckpt.prefill_ms:>8.2f}/{ckpt.decode_ms:<8.2f}"
                  f"{view.seconds:>8.2f}")
    for kind, cost in costs.items():
        print(f"noise ({kind} cost): {json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in cost.noise().items()})}")
    worst = max(abs(r["ratio"] - 1) for r in rows.values())
    print(f"largest |ckpt/view - 1| = {worst:.3f} ({'within' if worst <= 0.10 else 'OUTSIDE'} 10%)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
