"""KL divergence of the masked model's next-token distribution from the dense model's.

This is EvoPress's default fitness. The dense targets are computed once in ``prepare``.
For large vocabularies they can be kept as the dense model's top-k tokens plus one "rest"
bucket holding the remaining probability mass (``topk``): the KL is then computed between
both distributions coarsened to those k+1 outcomes. By the data-processing inequality this
is a lower bound on the full KL, and it is exact up to the mass the dense model puts
outside its top-k (typically < 1e-3 for k >= 512).
"""
from __future__ import annotations

import numpy as np
import torch

from ..spill import spill
from .base import SCORE_CHUNK_BYTES, Batch, TextObjective, position_chunks, register_objective, row_chunks, sum_partials
from .options import Option

AUTO_TOPK_BYTES = 1 << 31  # above ~2 GB of dense targets, fall back to top-k
TARGET_CHUNK_BYTES = 1 << 26  # dense logits + log-softmax computed per this much, while preparing


@register_objective("kl")
class KLDivergence(TextObjective):
    name = "kl"
    direction = "minimize"
    OPTIONS = {**TextObjective.OPTIONS,
               "topk": Option(int, None, "keep the dense model's top-k log-probs (default: all, or 1024 "
                              "past ~2 GB of targets)", minimum=512, flag="--kl-topk")}
    topk: int | None

    def settings(self):
        # the top-k in effect, which prepare picks when it was left unset
        return {"tokens": self.tokens, "seq_len": self.seq_len, "batch_size": self.batch_size, "kl_topk": self.topk}

    def prepare(self, lm, data) -> None:
        from ..genome import LayerMask

        self._prepare_text(lm, data)
        vocab = lm.model.config.get_text_config().vocab_size if hasattr(lm.model.config, "get_text_config") else lm.model.config.vocab_size
        n_tok = sum(b.input_ids.numel() for b in self._batches)
        if self.topk is None and n_tok * vocab * 4 > AUTO_TOPK_BYTES:
            self.topk = 1024
        dense = LayerMask.dense(lm.n_blocks)
        self.dense_partials = {}
        for b in self._batches:
            # the dense model as the evaluator runs it (its blocks, then the head), a few
            # sequences at a time: a whole batch's logits and their log-softmax would be
            # the largest tensors of the run
            h = lm.masked.last_hidden(dense, lm.masked.prepare(b.input_ids, b.attention_mask, b.position_ids))
            parts = []
            for start, stop in row_chunks(h.shape[0], 8 * h.shape[1] * vocab, TARGET_CHUNK_BYTES):
                logp = torch.log_softmax(lm.masked.head(h[start:stop]).float(), dim=-1)
                if self.topk:
                    top, idx = logp.topk(min(self.topk, logp.shape[-1]), dim=-1)
                    parts.append((top, idx.to(torch.int32)))  # int32 ids: half the bytes, same values
                else:
                    parts.append(logp)
                del logp
            # targets stay on the model's device: moving them per scored mask would cost
            # more than the score itself on a GPU
            # on CPU mapped from a file: a batch's targets take RAM only once a mask is
            # scored on it, and a race that stops at half the data never reads the rest
            if self.topk:
                b.extra["target"] = (spill(torch.cat([p[0] for p in parts])), spill(torch.cat([p[1] for p in parts])))
            else:
                b.extra["target"] = spill(torch.cat(parts))
            # the dense model's own partial, as score would give it: a KL of 0 over every position
            self.dense_partials[b.index] = np.array([0.0, b.input_ids.numel()], dtype=np.float64)
            del h, parts

    def score(self, logits: torch.Tensor, batch: Batch) -> np.ndarray:
        # a few positions at a time: the log-softmax of a whole sequence would double the
        # memory its logits already take
        target = batch.extra["target"]
        total = torch.zeros((), dtype=torch.float64, device=logits.device)
        for lo, hi in position_chunks(logits, SCORE_CHUNK_BYTES):
            logq = torch.log_softmax(logits[:, lo:hi].float(), dim=-1)
            if isinstance(target, tuple):
                top, idx = (t[:, lo:hi].to(logq.device) for t in target)
                q_top = logq.gather(-1, idx.long())
                p = top.exp()
                p_rest = (1 - p.sum(-1)).clamp_min(0)
                q_rest = (1 - q_top.exp().sum(-1)).clamp_min(1e-30)
                kl = (p * (top - q_top)).sum(-1) + torch.where(p_rest > 0, p_rest * (p_rest.clamp_min(1e-30).log() - q_rest.log()), torch.zeros_like(p_rest))
            else:
                logp = target[:, lo:hi].to(logq.device)
                kl = (logp.exp() * (logp - logq)).sum(-1)
            total += kl.sum(dtype=torch.float64)
            del logq
        return np.array([total.item(), logits.shape[0] * logits.shape[1]], dtype=np.float64)

    def finish(self, partials) -> float:
        total, count = sum_partials(partials)
        return float(total / max(count, 1))
