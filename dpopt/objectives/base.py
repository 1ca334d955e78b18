"""The Objective protocol and the pieces every objective shares.

An objective turns data into batches once (``prepare``), scores the logits of one batch
into additive sufficient statistics (``score``), and folds those into one number
(``finish``). Keeping per-batch statistics additive is what lets the evaluator memoise
per (mask, batch), share prefixes across masks, and raise the fidelity of a mask later by
scoring only the batches it has not seen.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Literal, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from ..errors import UserError
from ..registry import Registry
from .options import Option, with_defaults


@dataclass
class Batch:
    index: int  # stable id: the evaluator memoises partial scores per (mask, index)
    input_ids: torch.Tensor  # (B, T)
    size: int  # what this batch adds to the fidelity: tokens scored, or questions
    attention_mask: torch.Tensor | None = None  # 2D padding mask or a custom 4D mask
    position_ids: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # targets the objective needs
    # (B, P) positions whose logits ``score`` reads, or None for all: the head is the largest
    # cost of a mask (Gemma 3's is 168M parameters per token), so an objective that reads a
    # few positions (a choice's tokens, not its context) has the head run on those alone and
    # gets logits of shape (B, P, V), column j for position ``head_positions[:, j]``
    head_positions: torch.Tensor | None = None

    def rows(self, start: int, stop: int) -> "Batch":
        """Sequences ``start:stop`` of this batch, with every per-sequence tensor cut alike.

        Tensors (and tuples of tensors) in ``extra`` whose first dimension is the batch's
        are cut; anything else is shared. ``size`` counts the part's share of the tokens.
        """
        return self._cut(0, start, stop)

    def positions(self, lo: int, hi: int) -> "Batch":
        """Positions ``lo:hi`` of every sequence, with every per-token tensor cut alike.

        Tensors (and tuples of tensors) whose first two dimensions are the batch's
        (sequences, positions) are cut along positions; anything else (a 4D attention mask)
        is shared. So a target that needs the token after a position (ppl's next token) must
        be stored per position in ``extra``, not derived from ``input_ids``.
        """
        return self._cut(1, lo, hi)

    def _cut(self, dim: int, lo: int, hi: int) -> "Batch":
        """``lo:hi`` along ``dim`` of every tensor whose leading ``dim + 1`` sizes are ``input_ids``'s."""
        lead = tuple(self.input_ids.shape[:dim + 1])
        span = (slice(None),) * dim + (slice(lo, hi),)

        def cut(x):
            if isinstance(x, torch.Tensor) and tuple(x.shape[:dim + 1]) == lead:
                return x[span]
            if isinstance(x, tuple):
                return tuple(cut(v) for v in x)
            return x

        if dim == 1 and self.head_positions is not None:
            raise ValueError("a batch with head_positions cannot be cut along positions")
        part = self.input_ids[span]
        return Batch(self.index, part, int(self.size * part.shape[dim] // max(lead[dim], 1)), cut(self.attention_mask),
                     cut(self.position_ids), {k: cut(v) for k, v in self.extra.items()}, cut(self.head_positions))


@runtime_checkable
class Objective(Protocol):
    """What the evaluator and the search read of an objective.

    ``data_kind``: ``"text"`` or ``"mc"`` (multiple-choice), which data set it is handed;
    ``wants_data``: False for one that brings its own; ``rows_additive`` and
    ``positions_additive``: its partials add over a batch's sequences or positions (see
    :class:`TextObjective`). ``OPTIONS``: what it accepts (:mod:`.options`).
    :class:`ObjectiveBase` gives each a default; a user's class that does not subclass it
    is wrapped in :class:`UserObjective`, which does.
    """

    name: str
    direction: Literal["minimize", "maximize"]
    data_kind: Literal["text", "mc"]
    wants_data: bool
    rows_additive: bool
    positions_additive: bool
    OPTIONS: ClassVar[Mapping[str, Option]]

    def prepare(self, lm, data) -> None: ...

    def batches(self, fidelity: int | None = None) -> Sequence[Batch]: ...

    def score(self, logits: torch.Tensor, batch: Batch) -> Any: ...

    def finish(self, partials: Sequence[Any]) -> float: ...

    def settings(self) -> dict[str, Any]:
        """The effective options that decide the values (part of the study fingerprint)."""
        ...

    def report(self, partials: Sequence[Any]) -> dict[str, float]:
        """Every number worth showing for these partials (``acc`` also gives ``acc_norm``)."""
        ...


class ObjectiveBase:
    """The protocol's defaults, and options set from ``OPTIONS`` (checked, defaults filled in)."""

    name = ""
    direction: Literal["minimize", "maximize"] = "minimize"
    data_kind: Literal["text", "mc"] = "text"
    wants_data = True
    rows_additive = False
    positions_additive = False
    OPTIONS: ClassVar[Mapping[str, Option]] = {}
    # batch index -> the dense model's partial, where ``prepare`` ran the dense model anyway:
    # the evaluator takes the dense reference from here instead of a second forward
    dense_partials: dict[int, Any] | None = None

    def __init__(self, **options: Any):
        self.options = with_defaults(self.OPTIONS, options, self.name)
        for key, value in self.options.items():
            setattr(self, key, value)

    def settings(self) -> dict[str, Any]:
        return dict(self.options)

    def report(self, partials: Sequence[Any]) -> dict[str, float]:
        return {self.name: float(self.finish(partials))}


OBJECTIVES: Registry[type] = Registry("objective")
register_objective = OBJECTIVES.register

REQUIRED = ("prepare", "batches", "score", "finish")
CAPABILITIES = ("data_kind", "wants_data", "rows_additive", "positions_additive", "OPTIONS")


def declared(obj: Any, capability: str) -> Any:
    """A capability of a user's class or object, the base's default where it declares none.

    The one place a capability is looked up by name: a user's class need not subclass
    :class:`ObjectiveBase`, so it may leave any of them out.
    """
    assert capability in CAPABILITIES, capability
    return getattr(obj, capability, getattr(ObjectiveBase, capability))


def check_objective(obj: Any, spec: str, options: Mapping[str, Any] | None = None) -> Any:
    """Fail with one clear line when a user's class does not meet the protocol.

    A user's class needs only the four methods, ``name`` and ``direction``; one that does
    not subclass :class:`ObjectiveBase` is wrapped in :class:`UserObjective`, which supplies
    the rest. ``options``: what it was built with, for its fingerprint.
    """
    if isinstance(obj, ObjectiveBase):
        return obj
    missing = [m for m in REQUIRED if not callable(getattr(obj, m, None))]
    if missing or not isinstance(getattr(obj, "name", None), str):
        what = ", ".join(missing) if missing else "a string attribute 'name'"
        raise UserError(f"objective {spec!r} does not meet the Objective protocol: missing {what}")
    if getattr(obj, "direction", None) not in ("minimize", "maximize"):
        raise UserError(f"objective {spec!r} must declare direction 'minimize' or 'maximize'")
    return UserObjective(obj, spec, options or {})


class UserObjective(ObjectiveBase):
    """Adapter giving a user's objective the protocol's optional parts.

    Its own ``settings``/``report`` are used where it has them; its capabilities are read
    once here, so nothing past this adapter asks an objective what it declares.
    """

    def __init__(self, inner: Any, spec: str, options: Mapping[str, Any] | None = None):
        self.inner, self.spec, self.options = inner, spec, dict(options or {})
        self.name, self.direction = inner.name, inner.direction
        self.data_kind = declared(inner, "data_kind")
        self.wants_data = bool(declared(inner, "wants_data"))
        self.rows_additive = bool(declared(inner, "rows_additive"))
        self.positions_additive = bool(declared(inner, "positions_additive"))
        self.OPTIONS = declared(inner, "OPTIONS")
        self._settings = getattr(inner, "settings", None)
        self._report = getattr(inner, "report", None)

    def prepare(self, lm, data) -> None:
        self.inner.prepare(lm, data)

    def batches(self, fidelity: int | None = None) -> Sequence[Batch]:
        return self.inner.batches(fidelity)

    def score(self, logits, batch):
        return self.inner.score(logits, batch)

    def finish(self, partials) -> float:
        return self.inner.finish(partials)

    def settings(self) -> dict[str, Any]:
        if callable(self._settings):
            return self._settings()
        return {"class": self.spec, **self.options}

    def report(self, partials) -> dict[str, float]:
        if callable(self._report):
            return self._report(partials)
        return {self.name: float(self.finish(partials))}


def check_seq_len(lm, seq_len: int) -> None:
    """Past the positions a model was trained for: learned positions fail, RoPE degrades."""
    cfg = lm.model.config.get_text_config() if hasattr(lm.model.config, "get_text_config") else lm.model.config
    limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    if not limit or seq_len <= limit:
        return
    rotary = any(getattr(cfg, a, None) is not None for a in ("rope_theta", "rope_parameters", "rope_scaling", "rotary_pct"))
    if not rotary:
        raise UserError(f"--seq-len {seq_len} is past the {limit} positions this model has")
    import sys

    print(f"dpopt: warning: --seq-len {seq_len} is past the {limit} positions this model was trained on; "
          "its scores there mean little", file=sys.stderr)


class TextObjective(ObjectiveBase):
    """What ppl and kl share: calibration sizes and the protocol's optional parts.

    ``rows_additive``: scoring a batch's sequences in parts and adding the partials gives
    the whole batch's partial. The evaluator then computes the head a few sequences at a
    time, so the full-vocabulary logits of a batch (1 GB for 4 x 256 tokens of Gemma's
    262k vocabulary) are never held at once.

    ``positions_additive``: the same along positions (a slice from :meth:`Batch.positions`).
    The head then runs on a few positions of one sequence at a time when one sequence's
    logits exceed the memory budget (a 512-token sequence of Gemma 3 is 540 MB).
    """

    name = "text"
    rows_additive = True
    positions_additive = True
    OPTIONS: ClassVar[Mapping[str, Option]] = {
        "tokens": Option(int, 4096, "calibration tokens scored", minimum=1),
        "seq_len": Option(int, 512, "tokens per sequence", minimum=1),
        "batch_size": Option(int, 2, "sequences per batch", minimum=1),
    }
    tokens: int
    seq_len: int
    batch_size: int

    def __init__(self, **options: Any):
        super().__init__(**options)
        self._batches: list[Batch] = []

    def _prepare_text(self, lm, data) -> None:
        data = require_text(data, self.name)
        check_seq_len(lm, self.seq_len)
        self._batches = text_stream_batches(lm.tokenizer, data.documents, self.tokens, self.seq_len, self.batch_size)

    def batches(self, fidelity: int | None = None):
        return take_fidelity(self._batches, fidelity)


def row_chunks(n_rows: int, row_bytes: int, budget_bytes: int) -> list[tuple[int, int]]:
    """``(start, stop)`` runs of rows holding at most ``budget_bytes`` each (at least one row)."""
    step = max(1, budget_bytes // max(row_bytes, 1))
    return [(s, min(s + step, n_rows)) for s in range(0, n_rows, step)]


SCORE_CHUNK_BYTES = 1 << 24  # float32 log-probs a text objective holds at once while scoring


def position_chunks(logits: torch.Tensor, budget_bytes: int) -> list[tuple[int, int]]:
    """``(lo, hi)`` runs of positions (dim 1) whose float32 logits fit ``budget_bytes``."""
    per = 4 * logits.shape[0] * logits.shape[-1]
    return row_chunks(logits.shape[1], per, budget_bytes)


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
