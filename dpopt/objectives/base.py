"""The Objective protocol and the pieces every objective shares.

An objective turns data into batches once (``prepare``), scores the logits of one batch
into additive sufficient statistics (``score``), and folds those into one number
(``finish``). Keeping per-batch statistics additive is what lets the evaluator memoise
per (mask, batch), share prefixes across masks, and raise the fidelity of a mask later by
scoring only the batches it has not seen.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from ..errors import UserError
from ..registry import Registry


@dataclass
class Batch:
    index: int  # stable id: the evaluator memoises partial scores per (mask, index)
    input_ids: torch.Tensor  # (B, T)
    size: int  # what this batch adds to the fidelity: tokens scored, or questions
    attention_mask: torch.Tensor | None = None  # 2D padding mask or a custom 4D mask
    position_ids: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # targets the objective needs


@runtime_checkable
class Objective(Protocol):
    name: str
    direction: Literal["minimize", "maximize"]

    def prepare(self, lm, data) -> None: ...

    def batches(self, fidelity: int | None = None) -> Sequence[Batch]: ...

    def score(self, logits: torch.Tensor, batch: Batch) -> Any: ...

    def finish(self, partials: Sequence[Any]) -> float: ...


OBJECTIVES: Registry[type] = Registry("objective")
register_objective = OBJECTIVES.register

REQUIRED = ("prepare", "batches", "score", "finish")


def check_objective(obj: Any, spec: str) -> Any:
    """Fail with one clear line when a user's class does not meet the protocol."""
    missing = [m for m in REQUIRED if not callable(getattr(obj, m, None))]
    if missing or not isinstance(getattr(obj, "name", None), str):
        what = ", ".join(missing) if missing else "a string attribute 'name'"
        raise UserError(f"objective {spec!r} does not meet the Objective protocol: missing {what}")
    if getattr(obj, "direction", None) not in ("minimize", "maximize"):
        raise UserError(f"objective {spec!r} must declare direction 'minimize' or 'maximize'")
    return obj


def take_fidelity(batches: Sequence[Batch], fidelity: int | None) -> list[Batch]:
    """The shortest leading run of batches whose sizes add up to at least ``fidelity``."""
    if fidelity is None:
        return list(batches)
    out, total = [], 0
    for b in batches:
        if total >= fidelity:
            break
        out.append(b)
        total += b.size
    return out


def sum_partials(partials: Iterable[np.ndarray]) -> np.ndarray:
    return np.sum(np.stack([np.asarray(p, dtype=np.float64) for p in partials]), axis=0)


def text_stream_batches(tokenizer, documents: Sequence[str], tokens: int, seq_len: int, batch_size: int,
                        first_index: int = 0) -> list[Batch]:
    """Cut the documents, joined by EOS, into ``batch_size x seq_len`` batches.

    Every sequence is full length, so no padding mask is needed and all masks of a batch
    see the same attention pattern (this is what lets blocks be stacked across masks).
    Where the tokenizer starts its inputs with BOS (Llama, Gemma), every sequence does
    too: Gemma in particular is far off its trained distribution without it.
    """
    if seq_len < 2:
        raise UserError("--seq-len must be at least 2")
    eos = tokenizer.eos_token_id
    bos = leading_bos(tokenizer)
    body = seq_len - (bos is not None)
    need = tokens + seq_len  # a little slack to fill the last sequence
    ids: list[int] = []
    for doc in documents:
        ids.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
        if len(ids) >= need:
            break
    n_seq = max(1, -(-tokens // seq_len))
    n_seq = min(n_seq, len(ids) // body)
    if n_seq == 0:
        raise UserError(f"the data holds only {len(ids)} tokens, fewer than one sequence of {seq_len}")
    seqs = torch.tensor(ids[: n_seq * body], dtype=torch.long).view(n_seq, body)
    if bos is not None:
        seqs = torch.cat([torch.full((n_seq, 1), bos, dtype=torch.long), seqs], dim=1)
    out = []
    for i, start in enumerate(range(0, n_seq, batch_size)):
        chunk = seqs[start : start + batch_size]
        out.append(Batch(first_index + i, chunk, size=int(chunk.numel())))
    return out


def leading_bos(tokenizer) -> int | None:
    """The BOS id if this tokenizer puts one in front of its inputs by default, else None."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    try:
        ids = tokenizer("a")["input_ids"]
    except Exception:
        return None
    return bos if ids and ids[0] == bos else None


def require_text(data, objective: str):
    from ..data import TextData

    if not isinstance(data, TextData):
        raise UserError(f"objective {objective!r} needs text data; {getattr(data, 'name', data)!r} is a multiple-choice set")
    return data
