"""Perplexity of the masked model: exp of the token-weighted mean next-token NLL."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .base import SCORE_CHUNK_BYTES, Batch, TextObjective, position_chunks, register_objective, sum_partials


IGNORE = -100  # cross_entropy's ignore_index: the last position has no next token


def next_token_targets(ids: torch.Tensor) -> torch.Tensor:
    """``ids`` shifted left by one, the last position ``IGNORE``."""
    return torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], IGNORE)], dim=1)


@register_objective("ppl", "perplexity")
class Perplexity(TextObjective):
    name = "ppl"
    direction = "minimize"

    def prepare(self, lm, data) -> None:
        self._prepare_text(lm, data)
        for b in self._batches:
            # each position's next token, stored per position so that a slice of positions
            # (Batch.positions) still knows the token after its last one
            b.extra["next_ids"] = next_token_targets(b.input_ids)

    def score(self, logits: torch.Tensor, batch: Batch) -> np.ndarray:
        targets = batch.extra.get("next_ids")
        if targets is None:  # a batch made elsewhere: its own ids, shifted
            targets = next_token_targets(batch.input_ids)
        targets = targets.to(logits.device)
        # a few positions at a time, as cross_entropy's log-softmax of a whole sequence
        # would double the logits' memory
        nll = torch.zeros((), dtype=torch.float64, device=logits.device)
        for lo, hi in position_chunks(logits, SCORE_CHUNK_BYTES):
            part = logits[:, lo:hi]
            nll += F.cross_entropy(part.reshape(-1, part.shape[-1]).float(), targets[:, lo:hi].reshape(-1),
                                   ignore_index=IGNORE, reduction="sum").double()
        return np.array([nll.item(), int((targets != IGNORE).sum())], dtype=np.float64)

    def finish(self, partials) -> float:
        total, count = sum_partials(partials)
        mean = total / max(count, 1)
        return math.exp(mean) if math.isfinite(mean) else float("nan")
