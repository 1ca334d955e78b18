"""The distillation loop: data order, learning-rate schedule, loss, and a resumable state.

A run must continue after a kill as if nothing had happened: every step's batch is a
function of the seed and the step alone (:class:`Stream`), dropout is off (the student
stays in eval mode, so a step's loss is a function of the weights and the batch), and a
checkpoint holds everything that changes while training (the trainable weights, the
optimizer's moments, the schedule's position, every RNG, the step and the losses so far).
It is written to a temporary file in the state folder and renamed over the last one, so a
kill during the write leaves the previous checkpoint whole.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError

STATE_FILE = "state.pt"
GRAD_CLIP = 1.0  # the usual guard against a first step that throws a freshly pruned model far off
FINAL_LR = 0.1  # the cosine decays to this fraction of --lr


class Stream:
    """Calibration sequences in an order fixed by (seed, step): epoch ``e`` is a permutation
    drawn from ``(seed, e)``, and step ``s`` takes the ``batch_size`` rows after ``s * batch_size``."""

    def __init__(self, sequences: torch.Tensor, batch_size: int, seed: int):
        self.seqs, self.batch_size, self.seed = sequences, batch_size, seed
        self._orders: dict[int, np.ndarray] = {}

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders[epoch] = np.random.default_rng([self.seed, epoch]).permutation(len(self.seqs))
        return self._orders[epoch]

    def batch(self, step: int) -> torch.Tensor:
        n = len(self.seqs)
        rows = [self._order(i // n)[i % n] for i in range(step * self.batch_size, (step + 1) * self.batch_size)]
        return self.seqs[torch.as_tensor(rows)]


def schedule(steps: int, warmup: int):
    """Linear warm-up over ``warmup`` steps, then a cosine from 1 down to ``FINAL_LR``."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(steps - warmup, 1)
        return FINAL_LR + (1 - FINAL_LR) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return factor


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, topk: int | None) -> torch.Tensor:
    """Mean over positions of KL(teacher || student), in float32.

    With ``topk`` both distributions are coarsened to the teacher's top-k tokens plus one bucket
    for the rest, as the ``kl`` objective's ``--kl-topk`` does (a lower bound, tight for k >= 512).
    """
    logq = torch.log_softmax(student_logits.float(), dim=-1)
    logp = torch.log_softmax(teacher_logits.float(), dim=-1)
    if not topk:
        return (logp.exp() * (logp - logq)).sum(-1).mean()
    top, idx = logp.topk(min(topk, logp.shape[-1]), dim=-1)
    q_top = logq.gather(-1, idx)
    p = top.exp()
    p_rest = (1 - p.sum(-1)).clamp_min(0)
    q_rest = (1 - q_top.exp().sum(-1)).clamp_min(1e-12)
    rest = p_rest * (p_rest.clamp_min(1e-30).log() - q_rest.log())
    return ((p * (top - q_top)).sum(-1) + rest).mean()


@dataclass
class TrainState:
    step: int = 0
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0  # training time so far, across resumes


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(folder: Path, settings: dict, st: TrainState, params, optimizer, scheduler) -> None:
    """Write the checkpoint atomically: a temporary file beside it, fsynced, then renamed over it."""
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"settings": settings, "step": st.step, "losses": list(st.losses), "seconds": st.seconds,
           "params": {n: p.detach().cpu().clone() for n, p in params}, "optimizer": optimizer.state_dict(),
           "scheduler": scheduler.state_dict(), "rng": _rng_state()}
    fd, tmp = tempfile.mkstemp(prefix=".state-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / STATE_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_state(folder: Path, settings: dict) -> dict | None:
    """The checkpoint in ``folder`` if there is one; refused when it was made with other settings."""
    path = folder / STATE_FILE
    if not path.is_file():
        return None
    try:
        doc = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a file that is not a checkpoint of this code
        raise UserError(f"cannot read the healing state {path}: {exc}; remove it to start over") from None
    old = doc.get("settings", {})
    differ = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
    if differ:
        raise UserError(f"{folder} holds a healing run with other settings ({', '.join(differ)} differ); "
                        "remove it to start over, or give another --state")
    return doc


def restore(doc: dict, params, optimizer, scheduler) -> TrainState:
    named = dict(params)
    missing = set(named) ^ set(doc["params"])
    if missing:
        raise UserError(f"the healing state does not match the model's trainable parameters ({sorted(missing)[0]}); "
                        "remove it to start over")
    with torch.no_grad():
        for n, p in named.items():
            p.copy_(doc["params"][n].to(p.device, p.dtype))
    optimizer.load_state_dict(doc["optimizer"])
    scheduler.load_state_dict(doc["scheduler"])
    _set_rng_state(doc["rng"])
    return TrainState(doc["step"], list(doc["losses"]), float(doc["seconds"]))


class Loop:
    """One healing run: ``run()`` trains from ``state.step`` to ``steps``, checkpointing every
    ``every`` seconds, after the step a Ctrl-C or SIGTERM falls in (then raising
    KeyboardInterrupt), and once more at the end."""

    def __init__(self, teacher, student, params, stream: Stream, steps: int, lr: float, warmup: int,
                 weight_decay: float, topk: int | None, folder: Path, settings: dict, every: float, bar=None):
        self.teacher, self.student, self.params, self.stream = teacher, student, params, stream
        self.steps, self.topk, self.folder, self.settings, self.every, self.bar = steps, topk, folder, settings, every, bar
        self.optimizer = torch.optim.AdamW([p for _, p in params], lr=lr, weight_decay=weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule(steps, warmup))
        self.state = TrainState()
        self.device = next(student.parameters()).device

    def resume(self) -> int:
        """Continue from the checkpoint in the state folder, if any; returns the step it resumes at."""
        doc = load_state(self.folder, self.settings)
        if doc is not None:
            self.state = restore(doc, self.params, self.optimizer, self.scheduler)
        return self.state.step

    def save(self) -> None:
        save_state(self.folder, self.settings, self.state, self.params, self.optimizer, self.scheduler)

    def one_step(self, step: int) -> float:
        ids = self.stream.batch(step).to(self.device)
        with torch.no_grad():
            target = self.teacher(input_ids=ids).logits
        loss = distill_loss(self.student(input_ids=ids).logits, target, self.topk)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in self.params], GRAD_CLIP)
        self.optimizer.step()
        self.scheduler.step()
        return float(loss.detach())

    def run(self) -> TrainState:
        st = self.state
        last_save = time.monotonic()
        tokens_per_step = self.stream.batch_size * self.stream.seqs.shape[1]
        with _deferred_interrupts() as stop:
            while st.step < self.steps:
                t0 = time.perf_counter()
                loss = self.one_step(st.step)
                st.seconds += time.perf_counter() - t0
                st.losses.append(loss)
                st.step += 1
                if self.bar is not None:
                    self.bar.update(st.step, loss, tokens_per_step * len(st.losses) / max(st.seconds, 1e-9))
                if stop:
                    self.save()
                    raise KeyboardInterrupt(f"at step {st.step} of {self.steps}; the state is saved in {self.folder}")
                if st.step < self.steps and time.monotonic() - last_save >= self.every:
                    self.save()
                    last_save = time.monotonic()
        self.save()
        return st


@contextlib.contextmanager
def _deferred_interrupts():
    """Ctrl-C (or SIGTERM) during a step is acted on after it: a half-applied optimizer step must
    never be saved. The list it yields becomes non-empty on the first signal; a second one
    interrupts at once (the last checkpoint on disk is still whole)."""
    flag: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag:
            raise KeyboardInterrupt
        flag.append(signum)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
