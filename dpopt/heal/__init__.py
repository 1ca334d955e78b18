"""Healing a pruned model by distillation from the dense one, exported as a plain checkpoint.

``dpopt heal`` builds the pruned model with the export's own code (kept blocks renumbered,
config rewritten), so the student is exactly the checkpoint ``dpopt export`` would write;
trains the parts ``--train`` names to match the dense model's next-token distributions on
calibration text (KL, optionally over the teacher's top-k); and writes the healed model the
same way, with ``heal.json`` beside it (the settings, every step's loss, tokens/s, and the
held-out ppl, kl and acc before and after, with intervals).

A run is resumable: the state folder (``--state``, default ``OUT.heal-state``) holds the last
checkpoint, and the same command run again continues from it with the same loss curve; it
is removed once the healed model is written.
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..data import DEFAULT_DATA_SEED, DEFAULT_TEXT
from ..errors import UserError
from .heldout import HELDOUT, HeldOut, Interval, parse_heldout
from .loop import Loop, Stream
from .parts import METHODS, make_method, parse_train

__all__ = ["HealPlan", "HealResult", "heal", "distil", "HELDOUT", "METHODS"]


@dataclass(frozen=True)
class HealPlan:
    """How to heal; :meth:`validate` catches every user mistake before a model loads."""

    tokens: int
    out: str
    method: str = "distill"
    train: str = "all"
    lr: float = 1e-4
    warmup: float = 0.05  # fraction of the steps
    weight_decay: float = 0.0
    seq_len: int = 512
    batch_size: int = 2
    topk: int | None = None
    seed: int = 0
    data: str | None = None
    data_seed: int = DEFAULT_DATA_SEED
    checkpoint_every: float = 300.0  # seconds
    state: str | None = None
    lora_rank: int = 16
    lora_alpha: float = 32.0
    heldout: str = "ppl,kl,acc"
    tasks: str | None = None
    eval_tokens: int = 4096
    questions: int = 256
    force: bool = False

    def validate(self) -> "HealPlan":
        from ..data import check_data_ref
        from ..models.export import prepare_out_dir

        for flag, value, low in (("--tokens", self.tokens, 1), ("--seq-len", self.seq_len, 2),
                                 ("--batch-size", self.batch_size, 1), ("--seed", self.seed, 0),
                                 ("--data-seed", self.data_seed, 0), ("--lora-rank", self.lora_rank, 1),
                                 ("--eval-tokens", self.eval_tokens, 1), ("--questions", self.questions, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise UserError(f"{flag} must be an integer >= {low}, got {value!r}")
        for flag, value, ok in (("--lr", self.lr, lambda v: v > 0), ("--warmup", self.warmup, lambda v: 0 <= v < 1),
                                ("--weight-decay", self.weight_decay, lambda v: v >= 0),
                                ("--checkpoint-every", self.checkpoint_every, lambda v: v >= 0),
                                ("--lora-alpha", self.lora_alpha, lambda v: v > 0)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
                raise UserError(f"{flag} is out of range: {value!r}")
        if self.topk is not None and (not isinstance(self.topk, int) or self.topk < 1):
            raise UserError(f"--topk must be an integer >= 1, got {self.topk!r}")
        METHODS.get(self.method)
        parse_train(self.train)
        names = parse_heldout(self.heldout)
        if "acc" in names and self.tasks is not None:
            check_data_ref(self.tasks, "--tasks")
        check_data_ref(self.data or DEFAULT_TEXT, "--data")
        out = prepare_out_dir(self.out, self.force)
        if self.state is not None and Path(self.state).expanduser().resolve() == out.resolve():
            raise UserError("--state must be another folder than --out")
        make_method(self.method, self.lora_rank, self.lora_alpha)  # --method lora without peft: one line
        return self

    @property
    def steps(self) -> int:
        return -(-self.tokens // (self.seq_len * self.batch_size))

    @property
    def state_dir(self) -> Path:
        return Path(self.state).expanduser() if self.state else Path(str(Path(self.out).expanduser()) + ".heal-state")

    def trajectory(self) -> dict:
        """The settings that decide the loss curve: a resumed run must agree on all of them."""
        d = asdict(self)
        for k in ("out", "state", "checkpoint_every", "heldout", "tasks", "eval_tokens", "questions", "force"):
            d.pop(k)
        return d


@dataclass
class HealResult:
    out: Path
    steps: int
    tokens: int  # trained on
    losses: list[float]
    seconds: float
    tokens_per_second: float
    resumed_at: int
    calib_tokens: int  # distinct calibration tokens the steps cycle through
    removed_units: list[str]
    dense: dict[str, Interval] = field(default_factory=dict)
    before: dict[str, Interval] = field(default_factory=dict)
    after: dict[str, Interval] = field(default_factory=dict)
    change: dict[str, Interval] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("dense", "before", "after", "change")}
        d["out"] = str(self.out)
        for k in ("dense", "before", "after", "change"):
            d[k] = {name: iv.to_dict() for name, iv in getattr(self, k).items()}
        return d


def _calibration(lm, plan: HealPlan) -> torch.Tensor:
    """The calibration split as full-length sequences, at most ``plan.tokens`` of them."""
    from ..data import load_data
    from ..objectives.base import require_text, text_stream_batches

    data = require_text(load_data(plan.data or DEFAULT_TEXT, "calib", plan.data_seed), "heal")
    batches = text_stream_batches(lm.tokenizer, data.documents, plan.tokens, plan.seq_len, 1 << 30)
    return torch.cat([b.input_ids for b in batches])


def _student(lm, removed: list[str], folder: Path):
    """The pruned model exactly as ``dpopt export`` writes it, loaded back as a model of its own."""
    from transformers import AutoModelForCausalLM

    from ..models.export import export_pruned_units

    path = export_pruned_units(lm.masked, None, removed, folder / "pruned", source=lm.source)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=lm.masked.dtype).to(lm.masked.device)
    return model.eval()


def _zeroed_projections(lm, student, removed: list[str]) -> list:
    """The output projections export zeroed for removed sub-layers, in the student's numbering."""
    from ..models.families import family_of, get_path
    from ..models.units import plan_units

    plan = plan_units(lm.masked, removed)
    kept = list(plan.kept())
    family = family_of(student)
    blocks = family.block_list(student)
    return [get_path(blocks[kept.index(b)], path) for b, kinds in plan.silenced.items() if b in kept
            for kind in kinds for path in family.sublayers[kind].zero]


def heal(lm, removed: list[str], plan: HealPlan, progress: bool = True) -> HealResult:
    """Heal the model ``lm`` without the ``removed`` units (canonical names) as ``plan`` says.

    Raises KeyboardInterrupt (after saving the state) on Ctrl-C or SIGTERM; the same call
    then resumes where it stopped."""
    part, seqs, res = _setup(lm, removed, plan, progress)
    heldout = HeldOut(lm, parse_heldout(plan.heldout), plan.data, plan.tasks, plan.data_seed, plan.eval_tokens,
                      plan.seq_len, plan.questions, plan.topk) if plan.heldout.strip() else None
    student = _student_of(lm, removed)
    before = None
    if heldout is not None:
        res.dense = heldout.summary(heldout.items(lm))
        before = heldout.items(_as_loaded(lm, student))
        res.before = heldout.summary(before)
    healed = _train(lm, student, removed, part, seqs, plan, res, progress)
    if heldout is not None:
        after = heldout.items(_as_loaded(lm, healed))
        res.after, res.change = heldout.summary(after), heldout.changes(before, after)
    _write(healed, lm.tokenizer, plan, res)
    shutil.rmtree(plan.state_dir, ignore_errors=True)
    return res


def distil(lm, removed: list[str], plan: HealPlan, progress: bool = True):
    """Train the pruned model as :func:`heal` does and return ``(healed LoadedModel, HealResult)``
    without scoring or writing it: what re-ranking after repair runs for each candidate mask.
    ``plan.out`` is not written; its state folder is used while training and removed after."""
    part, seqs, res = _setup(lm, removed, plan, progress)
    healed = _train(lm, _student_of(lm, removed), removed, part, seqs, plan, res, progress)
    shutil.rmtree(plan.state_dir, ignore_errors=True)
    return _as_loaded(lm, healed), res


def _setup(lm, removed: list[str], plan: HealPlan, progress: bool):
    """What training needs before the student exists: the trained parts (checked before any slow
    step), the frozen teacher, the seeded RNG, the calibration sequences, the result to fill."""
    if not progress:  # transformers' own bars (loading and writing weights) too
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    from ..models.units import plan_units

    part = parse_train(plan.train, len(list(plan_units(lm.masked, removed).kept())))
    torch.manual_seed(plan.seed)
    for p in lm.model.eval().parameters():
        p.requires_grad_(False)
    seqs = _calibration(lm, plan)
    res = HealResult(Path(plan.out), plan.steps, plan.steps * plan.batch_size * plan.seq_len, [], 0.0, 0.0, 0,
                     int(seqs.numel()), list(removed))
    return part, seqs, res


def _student_of(lm, removed: list[str]):
    with tempfile.TemporaryDirectory(prefix="dpopt-heal-") as tmp:  # the weights are read in full before it goes
        return _student(lm, removed, Path(tmp))


def _as_loaded(lm, model):
    from ..evaluator import LoadedModel
    from ..models.masked import MaskedModel

    return LoadedModel(model, lm.tokenizer, MaskedModel(model), lm.source)


def _train(lm, student, removed: list[str], part, seqs: torch.Tensor, plan: HealPlan, res: HealResult,
           progress: bool):
    """Run (or resume) the loop; return the healed plain model, frozen."""
    from ..models.families import family_of

    family = family_of(student)
    method = make_method(plan.method, plan.lora_rank, plan.lora_alpha)
    module, params = method.wrap(student, family, part, _zeroed_projections(lm, student, removed), plan.seed)
    settings = dict(plan.trajectory(), model=lm.identity(), removed=list(removed), dtype=str(lm.masked.dtype))
    bar = _Bar(plan.steps) if progress else None
    loop = Loop(lm.model, module, params, Stream(seqs, plan.batch_size, plan.seed), plan.steps, plan.lr,
                int(plan.warmup * plan.steps), plan.weight_decay, plan.topk, plan.state_dir, settings,
                plan.checkpoint_every, bar)
    try:
        res.resumed_at = loop.resume()
        if bar is not None:
            bar.start(res.resumed_at)
        state = loop.run()
    finally:
        if bar is not None:
            bar.close()
    res.losses, res.seconds = state.losses, state.seconds
    res.tokens_per_second = res.tokens / max(state.seconds, 1e-9)
    healed = method.unwrap(module).eval()
    for p in healed.parameters():
        p.requires_grad_(False)
    return healed


def _write(model, tokenizer, plan: HealPlan, res: HealResult) -> None:
    """The healed checkpoint and heal.json, written to a temporary sibling and renamed into place."""
    import os

    from ..models.export import prepare_out_dir

    out = prepare_out_dir(plan.out, plan.force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.config.dpopt_healed = dict(method=plan.method, train=plan.train, tokens=res.tokens, steps=res.steps,
                                         lr=plan.lr, seed=plan.seed, data=plan.data or DEFAULT_TEXT)
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / "heal.json").write_text(json.dumps(dict(res.to_dict(), out=str(out), plan=asdict(plan)), indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    res.out = out


class _Bar:
    """Steps against the total, with the last loss and the training tokens per second."""

    def __init__(self, total: int):
        from tqdm.auto import tqdm

        self.tqdm = tqdm(total=total, desc="heal", unit="step", dynamic_ncols=True)
        self.t0 = time.perf_counter()

    def start(self, step: int) -> None:
        self.tqdm.n = step
        self.tqdm.refresh()

    def update(self, step: int, loss: float, tokens_per_second: float) -> None:
        self.tqdm.n = step
        self.tqdm.set_postfix_str(f"loss={loss:.4g} {tokens_per_second:,.0f} tok/s", refresh=False)
        self.tqdm.refresh()

    def close(self) -> None:
        self.tqdm.close()


def describe(res: HealResult) -> list[str]:
    """The lines ``dpopt heal`` prints: held-out values before and after, and the paired change."""
    lines = [f"healed {res.steps} steps, {res.tokens} tokens ({res.calib_tokens} distinct calibration tokens) in "
             f"{res.seconds:.1f} s, {res.tokens_per_second:,.0f} tok/s"
             + (f", resumed at step {res.resumed_at}" if res.resumed_at else "")
             + (f"; loss {res.losses[0]:.4g} -> {res.losses[-1]:.4g}" if res.losses else "")]
    if res.after:
        lines.append(f"held-out, 95% intervals {'dense':>24}  {'pruned':>26}  {'healed':>26}  change")
        for name in res.after:
            ch = res.change[name]
            what = "x" if HELDOUT.get(name).change == "ratio" else "+"
            lines.append(f"  {name:>6}  {res.dense[name].text():>26}  {res.before[name].text():>26}  "
                         f"{res.after[name].text():>26}  {what}{ch.text()}")
    lines.append(f"wrote {res.out}")
    return lines

