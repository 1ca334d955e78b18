"""Perplexity of the masked model: exp of the token-weighted mean next-token NLL."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .base import Batch, TextObjective, register_objective, sum_partials


@register_objective("ppl", "perplexity")
class Perplexity(TextObjective):
    name = "ppl"
    direction = "minimize"

    def __init__(self, tokens: int = 4096, seq_len: int = 512, batch_size: int = 2, **_):
        super().__init__(tokens, seq_len, batch_size)

    def prepare(self, lm, data) -> None:
        self._prepare_text(lm, data)

    def score(self, logits: torch.Tensor, batch: Batch) -> np.ndarray:
        ids = batch.input_ids.to(logits.device)
        # targets shifted left, the last position ignored: no copy of the (B*T, V) logits
        targets = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], dim=1)
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                              ignore_index=-100, reduction="sum")
        return np.array([nll.item(), ids[:, 1:].numel()], dtype=np.float64)

    def finish(self, partials) -> float:
        total, count = sum_partials(partials)
        mean = total / max(count, 1)
        return math.exp(mean) if math.isfinite(mean) else float("nan")
