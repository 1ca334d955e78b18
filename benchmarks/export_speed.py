"""Benchmark: what an exported checkpoint gains in speed, whole blocks vs attention/MLP sub-layers.

On the real SmolLM2-135M (30 blocks) three checkpoints are exported with dpopt and each is
reloaded with plain ``AutoModelForCausalLM.from_pretrained`` (no dpopt code involved):

* dense     - nothing removed (the reference);
* blocks    - 6 whole blocks removed (``block.18`` .. ``block.23``): they leave the checkpoint;
* sublayers - 12 sub-layers removed, 6 attention (blocks 6..11) + 6 MLP (blocks 18..23), on
              different blocks so no block loses both: plain ``transformers`` cannot leave
              a sub-layer out, so their output projections are stored as zeros and still run.

For each: prefill tokens/s (one forward over ``--prefill`` tokens, no cache) and decode
tokens/s (greedy ``generate`` with the KV cache, ``--new`` tokens after a 16-token prompt;
the short prompt's prefill is included), the median over ``--repeats`` rounds in which the
three models take turns. Ratios are against dense. Throughput is counted per second of
this process's CPU time on one torch thread (``time.process_time``): on a machine shared
with other jobs wall time mostly measures the neighbours; wall-clock rates are printed too.

    PYTHONPATH=. python benchmarks/export_speed.py               # a few CPU-minutes
    PYTHONPATH=. python benchmarks/export_speed.py --repeats 2   # quicker, noisier
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dpopt.models.export import export_pruned_units  # noqa: E402
from dpopt.models.loading import load_model  # noqa: E402
from dpopt.models.masked import MaskedModel  # noqa: E402

MODEL = "smollm2-135m"
VARIANTS = {
    "dense": [],
    "blocks": [f"block.{i}" for i in range(18, 24)],
    "sublayers": [f"attn.{i}" for i in range(6, 12)] + [f"mlp.{i}" for i in range(18, 24)],
}


def _stored_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def _rates(n_tokens: int, fn) -> tuple[float, float]:
    """(tokens per CPU second, tokens per wall second) of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return n_tokens / (time.process_time() - cpu), n_tokens / (time.perf_counter() - wall)


@torch.no_grad()
def _prefill_tps(model, ids: torch.Tensor) -> tuple[float, float]:
    return _rates(ids.numel(), lambda: model(input_ids=ids, use_cache=False))


@torch.no_grad()
def _decode_tps(model, prompt: torch.Tensor, new: int) -> tuple[float, float]:
    return _rates(new, lambda: model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new,
                                              min_new_tokens=new, do_sample=False, use_cache=True, pad_token_id=0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prefill", type=int, default=128, help="tokens in the prefill forward")
    ap.add_argument("--new", type=int, default=16, help="tokens generated in the decode timing")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)  # CPU time then equals the work done, whatever else the machine runs
    source_model, tokenizer, _ = load_model(MODEL, device="cpu", dtype="float32")
    masked = MaskedModel(source_model)
    g = torch.Generator().manual_seed(0)
    vocab = source_model.config.vocab_size
    ids = torch.randint(10, vocab, (1, args.prefill), generator=g)
    prompt = torch.randint(10, vocab, (1, 16), generator=g)

    models, info = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, units in VARIANTS.items():
            out = export_pruned_units(masked, tokenizer, units, Path(tmp) / name, source=MODEL)
            model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
            models[name] = model
            info[name] = dict(units=units, blocks=model.config.num_hidden_layers, stored_mb=_stored_bytes(out) / 2**20,
                              params_m=sum(p.numel() for p in model.parameters()) / 1e6,
                              nonzero_params_m=sum(int((p != 0).sum()) for p in model.parameters()) / 1e6)
    del masked, source_model

    for model in models.values():  # warm-up: first calls allocate
        _prefill_tps(model, ids[:, :32])
        _decode_tps(model, prompt, 4)
    prefill = {n: [] for n in models}
    decode = {n: [] for n in models}
    for _ in range(args.repeats):
        for name, model in models.items():
            prefill[name].append(_prefill_tps(model, ids))
            decode[name].append(_decode_tps(model, prompt, args.new))

    print(f"{MODEL}, CPU float32, 1 torch thread, {args.prefill}-token prefill, {args.new} decoded tokens, "
          f"median of {args.repeats} rounds; tok/s per CPU second (wall-clock in brackets)")
    print(f"{'export':<10}{'blocks':>7}{'params M':>10}{'nonzero M':>11}{'stored MB':>11}"
          f"{'prefill tok/s':>22}{'x dense':>9}{'decode tok/s':>20}{'x dense':>9}")
    result = {}
    for name in models:
        p = statistics.median(c for c, _ in prefill[name])
        d = statistics.median(c for c, _ in decode[name])
        pw = statistics.median(w for _, w in prefill[name])
        dw = statistics.median(w for _, w in decode[name])
        result[name] = dict(info[name], prefill_tps=p, decode_tps=d, prefill_wall_tps=pw, decode_wall_tps=dw,
                            prefill_runs=prefill[name], decode_runs=decode[name])
    for name, r in result.items():
        r["prefill_x_dense"] = r["prefill_tps"] / result["dense"]["prefill_tps"]
        r["decode_x_dense"] = r["decode_tps"] / result["dense"]["decode_tps"]
        print(f"{name:<10}{r['blocks']:>7}{r['params_m']:>10.1f}{r['nonzero_params_m']:>11.1f}{r['stored_mb']:>11.1f}"
              f"{r['prefill_tps']:>12.0f} [{r['prefill_wall_tps']:>6.0f}]{r['prefill_x_dense']:>9.2f}"
              f"{r['decode_tps']:>10.1f} [{r['decode_wall_tps']:>6.1f}]{r['decode_x_dense']:>9.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
