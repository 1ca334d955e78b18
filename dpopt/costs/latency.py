"""Latency as a measured cost: the pruned model timed for real, with ``transformers`` and its KV cache.

A mask's latency is not modelled from block counts; the pruned model is run on the device
it will be used on. :func:`pruned_view` makes the one loaded model BE the pruned model for
a while (no weight is copied): the kept blocks in the block list, renumbered as export
renumbers them, so the KV cache, ``generate`` and the model's own forward run exactly what
the exported checkpoint runs. A removed sub-layer of a kept block is given zeroed output
projections, as export saves it, so it is still computed: plain ``transformers`` cannot leave
it out, and timing a skipped sub-layer would promise a speed the checkpoint does not have.

The workload is fixed: one prefill forward over a ``prompt_len``-token prompt (with the cache
on and only the last position's logits, as ``generate`` does it) then ``new_tokens`` greedy
decode steps reading that cache. The scalar cost is the workload's time divided by its
tokens, ``(prefill + decode) / (prompt_len + new_tokens)`` in ms per token: one number that
prefill-heavy and decode-heavy masks both move. Prefill ms per prompt token and decode ms per
generated token are kept beside it (:class:`Timing`) for reports. Each value is the fastest of
``repeats`` timed runs after ``warmup`` short untimed ones; its noise is ``(max - min) / median``.
On a CPU the default is one torch thread timed by this process's CPU time (see
:func:`resolve_threads`, :func:`resolve_clock`); on an accelerator, wall time with the device
synchronised around each phase.

:func:`measure_checkpoint` times an exported folder loaded with plain ``from_pretrained`` the
same way: how a Pareto point's search-time latency is checked on the real checkpoint.
"""
from __future__ import annotations

import contextlib
import inspect
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from .base import CachedCost, register_cost
from ..errors import UserError
from ..genome import LayerMask, UnitSpace

CLOCKS: dict[str, Callable[[], float]] = {
    "wall": time.perf_counter,  # what a user waits; on a shared CPU it also times the neighbours
    "cpu": time.process_time,  # this process's CPU time: with one thread, the work done, whoever else runs
}
AUTO = "auto"


def resolve_threads(threads: int | None, device: torch.device) -> int | None:
    """None means one thread on a CPU (see :func:`resolve_clock`) and torch's own setting on an accelerator.

    On a CPU shared with other jobs, several intra-op threads wait on each other's cores:
    SmolLM2-135M's decode measured 365 ms/token with 2 threads on a loaded 2-core machine
    against 59 with one, with 8x the run-to-run spread.
    """
    if threads is None:
        return 1 if device.type == "cpu" else None
    if int(threads) < 1:
        raise UserError(f"latency threads must be >= 1, got {threads}")
    return int(threads)


def resolve_clock(clock: str, device: torch.device, threads: int) -> str:
    """``auto``: CPU time on a one-thread CPU run (equal to wall time on an idle machine, and not
    inflated by other jobs on a busy one), wall time otherwise (an accelerator, several threads)."""
    if clock == AUTO:
        return "cpu" if device.type == "cpu" and threads == 1 else "wall"
    if clock not in CLOCKS:
        raise UserError(f"unknown latency clock {clock!r}; use one of {AUTO}, {', '.join(CLOCKS)}")
    return clock


@dataclass
class Timing:
    """One mask's measurement: the fastest timed run (its prefill and decode parts), the spread, every run."""

    prompt_len: int
    new_tokens: int
    prefill_ms: float  # per prompt token
    decode_ms: float  # per generated token
    total_ms: float  # the workload's time per token: the cost's scalar
    noise: float  # (max - min) / median of the per-run workload times
    runs: list[tuple[float, float]] = field(default_factory=list)  # (prefill s, decode s) per timed run
    seconds: float = 0.0  # wall time the whole measurement took, warm-up included
    clock: str = "wall"  # the clock the runs were timed with (``auto`` resolved)
    threads: int = 1  # torch intra-op threads while timing

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- the pruned model, in place ---------------------------------------------------------
@contextlib.contextmanager
def pruned_view(lm, space: UnitSpace, mask: LayerMask) -> Iterator[torch.nn.Module]:
    """While inside, ``lm.model`` is the model ``mask`` exports to; everything is put back on exit.

    The kept blocks form the block list, each attention's ``layer_idx``, ``num_hidden_layers``
    and per-layer config lists (``layer_types``, ...) are renumbered, and removed sub-layers
    of kept blocks run with zeroed output projections (the live parameters are swapped, never
    written to): :meth:`MaskedModel.applied_units`, which export itself saves from.
    """
    if mask.n_units != space.n_units or space.n_blocks != lm.masked.n_blocks:
        raise ValueError(f"mask has {mask.n_units} units, space {space.kind} has {space.n_units} "
                         f"over {space.n_blocks} blocks, model has {lm.masked.n_blocks} blocks")
    if not mask.kept():
        raise UserError("cannot time a model with every unit removed")
    was_training = lm.model.training
    lm.model.eval()
    try:
        with lm.masked.applied_units(space.removed_names(mask)) as model:
            yield model
    finally:
        lm.model.train(was_training)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """Run with ``n`` intra-op threads (None: as set), restoring the previous count."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(int(n))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


# --- the measurement --------------------------------------------------------------------
def prompt_ids(model: torch.nn.Module, prompt_len: int, seed: int = 0) -> torch.Tensor:
    """A fixed random prompt: the same ids for the view and the checkpoint (timing ignores content)."""
    vocab = int(getattr(model.config.get_text_config(), "vocab_size", 0) or 100)
    g = torch.Generator().manual_seed(seed)
    return torch.randint(min(10, vocab - 1), vocab, (1, int(prompt_len)), generator=g)


def _call_style(model: torch.nn.Module) -> tuple[str, dict[str, int]]:
    """The KV cache's keyword (``cache``; ``past_key_values`` before transformers 5.2x) and, where the
    model allows it, ``logits_to_keep=1``: ``generate`` computes only the last position's logits."""
    params = inspect.signature(model.forward).parameters
    cache = "cache" if "cache" in params else "past_key_values"
    return cache, ({"logits_to_keep": 1} if "logits_to_keep" in params else {})


def _sync(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _one_run(model, ids: torch.Tensor, new_tokens: int, clock: Callable[[], float], sync,
             style: tuple[str, dict[str, int]]) -> tuple[float, float]:
    """(prefill seconds, decode seconds) of one prefill then ``new_tokens`` greedy cached steps."""
    cache, extra = style
    sync()
    t0 = clock()
    out = model(input_ids=ids, use_cache=True, **extra)
    tok = out.logits[:, -1:].argmax(-1)
    sync()
    t1 = clock()
    past = getattr(out, cache)
    for _ in range(new_tokens):
        out = model(input_ids=tok, use_cache=True, **{cache: past})
        past = getattr(out, cache)
        tok = out.logits[:, -1:].argmax(-1)
    sync()
    t2 = clock()
    return t1 - t0, t2 - t1


def measure(model: torch.nn.Module, prompt_len: int = 32, new_tokens: int = 8, warmup: int = 1,
            repeats: int = 3, device: str | torch.device | None = None, input_ids: torch.Tensor | None = None,
            clock: str = AUTO, threads: int | None = None) -> Timing:
    """Time ``model`` on the fixed workload (see the module docstring); ``device`` defaults to the model's.

    A warm-up run is short (the prefill and one decode step): it touches every weight and
    kernel the timed runs use, which is what the first call pays for, at a fraction of a run.
    """
    if repeats < 1 or warmup < 0 or prompt_len < 1 or new_tokens < 1:
        raise UserError(f"latency needs repeats >= 1, warmup >= 0, prompt_len >= 1, new_tokens >= 1 "
                        f"(got {repeats}, {warmup}, {prompt_len}, {new_tokens})")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    ids = (input_ids if input_ids is not None else prompt_ids(model, prompt_len)).to(device)
    prompt_len = int(ids.shape[1])
    sync, style = _sync(device), _call_style(model)
    start = time.perf_counter()
    runs = []
    with torch_threads(resolve_threads(threads, device)) as n_threads, torch.inference_mode():
        clock = resolve_clock(clock, device, n_threads)
        tick = CLOCKS[clock]
        for _ in range(warmup):
            _one_run(model, ids, 1, tick, sync, style)
        for _ in range(repeats):
            runs.append(_one_run(model, ids, new_tokens, tick, sync, style))
    # the fastest run, as timeit reports: interference from the rest of the machine only ever
    # adds time, so the minimum is the estimate least moved by it (the median drifted with load)
    totals = [p + d for p, d in runs]
    med = statistics.median(totals)
    fastest = min(range(len(runs)), key=lambda i: totals[i])
    return Timing(prompt_len=prompt_len, new_tokens=int(new_tokens),
                  prefill_ms=1e3 * runs[fastest][0] / prompt_len,
                  decode_ms=1e3 * runs[fastest][1] / new_tokens,
                  total_ms=1e3 * totals[fastest] / (prompt_len + new_tokens),
                  noise=(max(totals) - min(totals)) / med if med > 0 else 0.0,
                  runs=[(float(p), float(d)) for p, d in runs], seconds=time.perf_counter() - start,
                  clock=clock, threads=n_threads)


def measure_checkpoint(path: str | os.PathLike, prompt_len: int = 32, new_tokens: int = 8, warmup: int = 1,
                       repeats: int = 3, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                       threads: int | None = None, clock: str = AUTO) -> Timing:
    """Load an exported folder with plain ``AutoModelForCausalLM.from_pretrained`` and time it like a mask."""
    from transformers import AutoModelForCausalLM

    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} is not an exported checkpoint (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    return measure(model, prompt_len, new_tokens, warmup, repeats, device, clock=clock, threads=threads)


def device_name(device: torch.device) -> str:
    """The chip a latency was measured on: it decides the value as much as the mask does."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --- the cost ---------------------------------------------------------------------------
@register_cost("latency")
class LatencyCost(CachedCost):
    """Measured ms per token of the pruned model on the model's device; cached per mask.

    The defaults (32-token prompt, 8 decode steps, a short warm-up, 3 timed runs; one thread
    and CPU time on a CPU) take about 1-1.5 s per mask for SmolLM2-135M on one CPU core
    (``benchmarks/latency.py`` prints it). The dense model is measured once on construction
    (``self.dense``): the reference a report divides by, and the dense mask's value.
    """

    name = "latency"
    unit = "ms/token"
    OPTIONS = ("prompt_len", "new_tokens", "repeats", "warmup", "threads", "clock")

    def __init__(self, lm, space: UnitSpace, prompt_len: int = 32, new_tokens: int = 8, repeats: int = 3,
                 warmup: int = 1, threads: int | None = None, clock: str = AUTO):
        super().__init__()
        self.lm, self.space = lm, space
        self.prompt_len, self.new_tokens = int(prompt_len), int(new_tokens)
        self.repeats, self.warmup = int(repeats), int(warmup)
        device = lm.masked.device
        self.threads = resolve_threads(threads, device)  # decided once: it is part of the settings
        self.clock = resolve_clock(clock, device, self.threads or torch.get_num_threads())
        self.timings: dict[bytes, Timing] = {}
        dense = LayerMask.dense(space.n_units)
        # twice: a process's first measurement also pays one-time costs (allocator, lazy kernels)
        # that the short warm-up run does not cover; on a tiny model it came out 3x too slow
        self._measure(dense)
        self.dense: Timing = self._measure(dense)
        self.cache[dense.key()] = self.dense.total_ms

    def _measure(self, mask: LayerMask) -> Timing:
        with pruned_view(self.lm, self.space, mask) as model:
            timing = measure(model, self.prompt_len, self.new_tokens, self.warmup, self.repeats,
                             clock=self.clock, threads=self.threads)
        self.timings[mask.key()] = timing
        return timing

    def _compute(self, masks: Sequence[LayerMask]) -> list[float]:
        return [self._measure(m).total_ms for m in masks]

    def details(self, mask: LayerMask) -> dict[str, Any] | None:
        """Prefill and decode parts of a measured mask (None for one seeded from a record)."""
        t = self.timings.get(mask.key())
        return None if t is None else t.to_dict()

    def settings(self) -> dict[str, Any]:
        device = self.lm.masked.device
        return {"cost": self.name, "unit": self.unit, "device": device.type, "device_name": device_name(device),
                "dtype": str(self.lm.masked.dtype).removeprefix("torch."),
                "threads": self.threads or torch.get_num_threads(), "clock": self.clock, "torch": torch.__version__,
                "prompt_len": self.prompt_len, "new_tokens": self.new_tokens, "warmup": self.warmup,
                "repeats": self.repeats, "estimate": "fastest run", "sublayers": "zeroed-as-exported"}

    def noise(self) -> dict[str, Any]:
        """(max - min) / median of each measured mask's runs, summarised (the dense reference included)."""
        measured = [t.noise for t in self.timings.values()]
        return {"median": statistics.median(measured), "max": max(measured), "repeats": self.repeats,
                "masks": len(measured), "dense_ms": self.dense.total_ms, "dense_noise": self.dense.noise}
