"""Multiple-choice accuracy by the log-likelihood of each answer continuation.

As in lm-evaluation-harness, a question is answered by the choice whose continuation gets
the highest total log-probability after the context (``acc``), or the highest per
character (``acc_norm``, which removes the bias toward short answers).

The choices of one question share their context, so the context is run once: each
question becomes ONE packed sequence ``[context][choice 1][choice 2]...`` with position
ids restarting after the context and a 4D attention mask in which every choice sees the
context and itself only ("tree attention"). The logits of a choice are then exactly those
of ``context + choice`` run alone, at a fraction of the tokens.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import UserError
from .base import Batch, ObjectiveBase, leading_bos, register_objective, take_fidelity
from .options import Option


def pack_question(tokenizer, context: str, choices: list[str]) -> tuple[list[int], list[int], list[tuple[int, int]], list[int]]:
    """Token ids, position ids, each choice's (start, length) and its token ids."""
    plain_ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    bos = leading_bos(tokenizer)
    ctx = ([bos] if bos is not None else []) + plain_ctx
    if not ctx:
        ctx = [tokenizer.eos_token_id]
    ids, pos, spans = list(ctx), list(range(len(ctx))), []
    for choice in choices:
        # encode context+choice together and take the tail, as lm-evaluation-harness does
        whole = tokenizer(context + choice, add_special_tokens=False)["input_ids"]
        cont = whole[len(plain_ctx):] or tokenizer(choice, add_special_tokens=False)["input_ids"]
        spans.append((len(ids), len(cont)))
        pos.extend(range(len(ctx), len(ctx) + len(cont)))
        ids.extend(cont)
    return ids, pos, spans, [len(c) for c in choices]


def tree_mask(n_ctx: int, spans: list[tuple[int, int]], length: int) -> torch.Tensor:
    """Boolean (length, length): causal over the context, each choice sees context + itself."""
    allowed = torch.zeros(length, length, dtype=torch.bool)
    allowed[:n_ctx, :n_ctx] = torch.tril(torch.ones(n_ctx, n_ctx, dtype=torch.bool))
    for start, n in spans:
        allowed[start : start + n, :n_ctx] = True
        allowed[start : start + n, start : start + n] = torch.tril(torch.ones(n, n, dtype=torch.bool))
    used = spans[-1][0] + spans[-1][1] if spans else n_ctx
    idx = torch.arange(used, length)
    allowed[idx, idx] = True  # padding attends to itself only, so no row is empty
    return allowed


def _predicting(spans: list[tuple[int, int]], start: int, n: int) -> list[int]:
    """The positions whose logits predict the choice at ``start`` (length ``n``): the first
    token of every choice is predicted by the last context token, the rest by their own."""
    return [spans[0][0] - 1] + list(range(start, start + n - 1))


def predicting_positions(rows: list[list[tuple[int, int]]]) -> torch.Tensor:
    """(questions, P): each packed question's positions whose logits any choice reads,
    padded by repeating the last (a choice's context tokens need no head)."""
    per = [sorted({p for start, n in spans for p in _predicting(spans, start, n)}) for spans in rows]
    width = max(len(p) for p in per)
    return torch.tensor([p + [p[-1]] * (width - len(p)) for p in per], dtype=torch.long)


@register_objective("acc", "accuracy")
class Accuracy(ObjectiveBase):
    name = "acc"
    data_kind = "mc"
    direction = "maximize"
    OPTIONS = {
        "questions": Option(int, 256, "questions scored", minimum=1),
        "batch_size": Option(int, 8, "questions per batch", minimum=1),
        "metric": Option(str, "acc", "acc, or acc_norm (per character)", choices=("acc", "acc_norm"),
                         flag="--acc-metric"),
    }
    questions: int
    batch_size: int
    metric: str
    # the accuracy of guessing on the questions prepared: the mean of 1/(number of choices);
    # a dense model not clearly above it gives an accuracy with no signal
    chance: float | None = None

    def __init__(self, **options):
        super().__init__(**options)
        self._batches: list[Batch] = []

    def prepare(self, lm, data) -> None:
        from ..data import MCData

        if not isinstance(data, MCData):
            raise UserError(f"objective 'acc' needs a multiple-choice data set; {data.name!r} is text (try --tasks mmlu)")
        dtype = lm.masked.dtype
        qs = data.questions[: self.questions]
        self.chance = float(np.mean([1.0 / max(len(q.choices), 1) for q in qs])) if qs else None
        self._batches = []
        for bi, start in enumerate(range(0, len(qs), self.batch_size)):
            chunk = qs[start : start + self.batch_size]
            packed = [pack_question(lm.tokenizer, q.context, q.choices) for q in chunk]
            length = max(len(p[0]) for p in packed)
            pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
            ids = torch.full((len(chunk), length), pad, dtype=torch.long)
            pos = torch.zeros((len(chunk), length), dtype=torch.long)
            mask = torch.zeros((len(chunk), 1, length, length), dtype=dtype)
            for r, (tok, p, spans, _) in enumerate(packed):
                ids[r, : len(tok)] = torch.tensor(tok)
                pos[r, : len(p)] = torch.tensor(p)
                pos[r, len(p):] = torch.arange(len(p), length)
                allowed = tree_mask(spans[0][0], spans, length)
                mask[r, 0] = torch.where(allowed, 0.0, torch.finfo(dtype).min)
            extra = {"spans": [p[2] for p in packed], "chars": [p[3] for p in packed], "gold": [q.gold for q in chunk]}
            self._batches.append(Batch(bi, ids, size=len(chunk), attention_mask=mask, position_ids=pos, extra=extra,
                                       head_positions=predicting_positions(extra["spans"])))

    def batches(self, fidelity: int | None = None):
        return take_fidelity(self._batches, fidelity)

    def score(self, logits: torch.Tensor, batch: Batch) -> np.ndarray:
        correct = correct_norm = 0.0
        # the evaluator runs the head at ``head_positions`` only; a plain forward gives every
        # position. A question's predicting positions are always fewer than its tokens (the
        # context and each choice's last token predict nothing read), so the width tells.
        gathered = batch.head_positions is not None and logits.shape[1] != batch.input_ids.shape[1]
        for ll, chars, gold in zip(self.logliks(logits, batch, gathered), batch.extra["chars"], batch.extra["gold"]):
            if not np.all(np.isfinite(ll)):
                return np.array([np.nan, np.nan, np.nan])
            correct += float(np.argmax(ll) == gold)
            correct_norm += float(np.argmax(ll / np.maximum(chars, 1)) == gold)
        return np.array([correct, correct_norm, len(batch.extra["gold"])], dtype=np.float64)

    @staticmethod
    def logliks(logits: torch.Tensor, batch: Batch, gathered: bool) -> list[np.ndarray]:
        """Each question's total log-probability per choice; ``logits`` at ``batch.head_positions``
        only (``gathered``: what the evaluator passes), or at every position of the batch."""
        logp = torch.log_softmax(logits.float(), dim=-1)
        ids = batch.input_ids.to(logp.device)
        where = batch.head_positions if gathered else None
        out = []
        for r, spans in enumerate(batch.extra["spans"]):
            column = {int(p): j for j, p in enumerate(where[r].tolist())} if where is not None else None
            ll = []
            for start, n in spans:
                pred = _predicting(spans, start, n)
                cols = pred if column is None else [column[p] for p in pred]
                ll.append(logp[r, torch.tensor(cols, device=logp.device), ids[r, start : start + n]].sum().item())
            out.append(np.array(ll))
        return out

    def finish(self, partials) -> float:
        acc, acc_norm = self.report(partials).values()
        return acc if self.metric == "acc" else acc_norm

    def report(self, partials) -> dict[str, float]:
        total = np.sum(np.stack(partials), axis=0)
        n = max(total[2], 1)
        return {"acc": float(total[0] / n), "acc_norm": float(total[1] / n)}
