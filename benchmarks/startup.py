"""Start-up of a KL search: process start to the first scored mask, against one dense forward.

For each model, in one run and one after the other (never side by side, so they do not
share cores):

1. ``dense``: a fresh process loads the model and the calibration tokens a search would
   score (untimed), then times one plain dense forward over them with the log-softmax and
   the top-k a KL search keeps: the least any search must spend before its first mask.
2. ``search``: a fresh process runs ``dpopt search`` at the CLI's defaults (storage, memory
   and cache budgets, algorithm) on the same tokens. A hook on the evaluator notes when the
   first mask that removes a unit starts and ends being scored; the clock starts just
   before the process is spawned, so interpreter start, imports, loading, hashing and the
   objective's preparation all count. Its peak resident size (VmHWM) is the whole run's,
   or up to the first scored mask with ``--stop-at-first`` (a full search of a large
   vocabulary takes many dense passes on a CPU).

The ratio search-start / dense-forward is what the start-up costs beyond the one pass that
cannot be avoided; 1.0 is the floor.

    python benchmarks/startup.py --models smollm2-135m,gemma3-270m --stop-at-first gemma3-270m
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

_SEARCH_CHILD = r"""
import json, os, sys, time
sys.path.insert(0, os.environ["STARTUP_BENCH_DIR"])
from _memory import peak_rss_mb
from dpopt.fitness import MemoEvaluator

out, stop = os.environ["STARTUP_OUT"], os.environ.get("STARTUP_STOP") == "1"
seen = {}
inner = MemoEvaluator._compute

def _compute(self, todo, fid):
    first = "first_start" not in seen and any(len(m.removed()) for m in todo)
    if first:
        seen["first_start"] = time.time()
    inner(self, todo, fid)
    if first:
        seen["first_end"] = time.time()
        seen["first_masks"] = len(todo)
        if stop:
            _write()
            os._exit(0)

def _write():
    seen["peak_rss_mb"] = peak_rss_mb()
    with open(out, "w") as f:
        json.dump(seen, f)

MemoEvaluator._compute = _compute
import dpopt
seen["dpopt"] = os.path.dirname(dpopt.__file__)  # which tree ran: the working directory comes first on the path
from dpopt.cli import main
rc = main(sys.argv[1:])
_write()
sys.exit(rc)
"""

_DENSE_CHILD = r"""
import json, sys, time
import torch
import dpopt
from dpopt.objectives import build_objective

model, data, split, tokens, seq_len, topk, out = sys.argv[1:8]
lm = dpopt.load(model, device="cpu")
obj, text = build_objective("ppl", data=None if data == "-" else data, split=split, tokens=int(tokens),
                            seq_len=int(seq_len))
obj.prepare(lm, text)  # ppl's preparation only tokenizes: the same tokens a KL search scores
batches = obj.batches(None)
start = time.perf_counter()
with torch.no_grad():
    for b in batches:
        logits = lm.model(input_ids=b.input_ids).logits
        logp = torch.log_softmax(logits.float(), dim=-1)
        top = logp.topk(min(int(topk), logp.shape[-1]), dim=-1)
        del logits, logp, top
seconds = time.perf_counter() - start
json.dump({"dense_seconds": seconds, "tokens": sum(b.input_ids.numel() for b in batches)}, open(out, "w"))
"""


def load_average() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def run_dense(python: str, model: str, args, tmp: Path) -> dict:
    out = tmp / f"dense-{model}.json"
    subprocess.run([python, "-c", _DENSE_CHILD, model, args.data or "-", args.split, str(args.tokens),
                    str(args.seq_len), str(args.topk), str(out)], check=True)
    return json.loads(out.read_text())


def run_search(python: str, model: str, args, tmp: Path, stop: bool) -> dict:
    out = tmp / f"search-{model}.json"
    argv = ["search", "--model", model, "--objective", "kl", "--tokens", str(args.tokens), "--seq-len",
            str(args.seq_len), "--split", args.split, "--remove", str(args.remove), "--seed", "0",
            "--budget", str(args.budget), "--storage", f"sqlite:///{tmp}/studies-{model}.db",
            "--output", str(tmp / f"result-{model}.json")]
    if args.data:
        argv += ["--data", args.data]
    env = dict(os.environ, STARTUP_OUT=str(out), STARTUP_STOP="1" if stop else "0", STARTUP_BENCH_DIR=str(HERE))
    t0 = time.time()
    proc = subprocess.run([python, "-c", _SEARCH_CHILD, *argv], env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        sys.exit(f"search of {model} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    row = json.loads(out.read_text())
    first_line = next((line for line in proc.stderr.replace("\r", "\n").splitlines() if "prepared in" in line), "")
    row.update(first_start_s=row["first_start"] - t0, first_end_s=row["first_end"] - t0, wall_s=wall,
               progress_line=first_line.strip())
    result = tmp / f"result-{model}.json"
    if result.exists():
        doc = json.loads(result.read_text())
        row.update(prepare_seconds=doc.get("prepare_seconds"), wall_seconds=doc.get("wall_seconds"))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2-135m,gemma3-270m")
    ap.add_argument("--stop-at-first", default="", help="models whose search stops at its first scored mask")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--data", default=None, help="text data (default: the CLI's)")
    ap.add_argument("--split", default="calib")
    ap.add_argument("--remove", type=int, default=6)
    ap.add_argument("--budget", type=int, default=16)
    ap.add_argument("--topk", type=int, default=1024, help="the top-k the dense forward keeps (KL's past ~2 GB)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args()
    stop_first = set(filter(None, args.stop_at_first.split(",")))
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for model in filter(None, args.models.split(",")):
            before = load_average()
            dense = run_dense(sys.executable, model, args, tmp)
            search = run_search(sys.executable, model, args, tmp, stop=model in stop_first)
            row = dict(model=model, tokens=dense["tokens"], seq_len=args.seq_len, dense_s=round(dense["dense_seconds"], 1),
                       first_mask_start_s=round(search["first_start_s"], 1),
                       first_mask_end_s=round(search["first_end_s"], 1),
                       ratio=round(search["first_start_s"] / dense["dense_seconds"], 2),
                       peak_rss_mb=round(search["peak_rss_mb"]), whole_run=model not in stop_first,
                       budget=args.budget, prepare_seconds=search.get("prepare_seconds"),
                       search_seconds=search.get("wall_seconds"), progress_line=search["progress_line"],
                       load_before=before, load_after=load_average(), dpopt=search["dpopt"])
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{'model':<14} {'tokens':>6} {'dense s':>8} {'1st mask s':>10} {'ratio':>6} {'peak MB':>8}  peak of")
    for r in rows:
        print(f"{r['model']:<14} {r['tokens']:>6} {r['dense_s']:>8} {r['first_mask_start_s']:>10} {r['ratio']:>6} "
              f"{r['peak_rss_mb']:>8}  {'whole run, budget %d' % r['budget'] if r['whole_run'] else 'up to 1st mask'}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
