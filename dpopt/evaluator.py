"""The one fitness evaluator: every searcher's masks are scored here, in batches.

Masks that agree on their first units compute the same hidden states up to there. For
each input batch the evaluator walks the masks block by block as a prefix tree over the
units of its :class:`~dpopt.genome.UnitSpace`: at block ``l`` the prefixes are split by
the bits of block ``l``'s own units (one bit for a whole block; attention and MLP bits for
sub-layer units), which decide what the block does: nothing (removed, pass through) or
a run with some sub-layers skipped. Every prefix that runs block ``l`` with the same skip
set is stacked into one batched call (chunked to a memory budget), and each distinct mask
gets one head + score at the end. So each (prefix, block) pair is computed once per call;
masks that differ only in a later unit share all work before that unit's block (a block
is the smallest call, so ``mlp.3`` and ``attn.3`` masks part at block 3).

Two memos make repeated work free: per-(mask, batch) partial scores (a mask seen before
costs nothing, and raising its fidelity scores only the new batches), and an LRU of prefix
activations shared by several masks, kept across calls within ``cache_mb``.

With a linear patch (:mod:`dpopt.models.patch`) each prefix also carries the MLP branch
term of its last kept block, and a run of removed blocks is replaced, where the next kept
block (or the head) reads the stream, by ``hidden + branch @ Delta``: the span's fit is
keyed by the prefix that ends with it, which is exactly what decides it, so the tree still
shares every block before a span.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from .fitness import MemoEvaluator
from .genome import LayerMask, UnitSpace
from .heap import release_freed_memory


@dataclass
class LoadedModel:
    """A model with what every objective and the evaluator need beside it."""

    model: Any
    tokenizer: Any
    masked: Any  # MaskedModel
    source: str = ""
    path: str | None = None  # the checkpoint folder or GGUF file it was loaded from, if any
    spec: str | None = None  # --model as the user gave it (a path made absolute): what a worker loads again
    _identity: dict | None = field(default=None, repr=False)

    @property
    def n_blocks(self) -> int:
        return self.masked.n_blocks

    def identity(self) -> dict:
        """What makes these weights and this tokenizer what they are, independent of folder names and devices."""
        if self._identity is None:
            from .models.identity import model_identity

            self._identity = model_identity(self.model, self.path, self.tokenizer)
        return self._identity


@dataclass
class _Group:
    hidden: torch.Tensor
    masks: list[LayerMask]
    branch: torch.Tensor | None = None  # with a patch: the last kept block's MLP term (or h0)


def _nbytes(x) -> int:
    if isinstance(x, tuple):
        return sum(_nbytes(t) for t in x)
    return x.numel() * x.element_size()


class PrefixCache:
    """LRU of hidden states keyed by (batch index, prefix bits), bounded in bytes."""

    def __init__(self, limit_bytes: int):
        self.limit = limit_bytes
        self.used = 0
        self.store: OrderedDict[tuple[int, bytes], torch.Tensor] = OrderedDict()

    def get(self, key):
        t = self.store.get(key)
        if t is not None:
            self.store.move_to_end(key)
        return t

    def put(self, key, tensor: torch.Tensor) -> None:
        size = _nbytes(tensor)
        if size > self.limit or key in self.store:
            return
        self.store[key] = tensor
        self.used += size
        while self.used > self.limit:
            _, old = self.store.popitem(last=False)
            self.used -= _nbytes(old)

    def clear(self) -> None:
        self.store.clear()
        self.used = 0


def _merge(active: dict[bytes, _Group], joining: dict[bytes, _Group]) -> None:
    for key, g in joining.items():
        if key in active:
            active[key].masks.extend(g.masks)
        else:
            active[key] = g


def _prefix_key(mask: LayerMask, level: int) -> bytes:
    return mask.bits[:level].tobytes()


class Evaluator(MemoEvaluator):
    """Scores masks of one loaded model on one prepared objective.

    ``fingerprint`` (made by :meth:`dpopt.Problem.build`) names everything that decides the
    values; the study record refuses to mix values across fingerprints.
    """

    def __init__(self, lm: LoadedModel, objective, prefix_sharing: bool = True, cache_mb: float | None = None,
                 memory_mb: float | None = None, fingerprint=None, units: UnitSpace | None = None,
                 costs: Sequence = (), problem=None, patch=None):
        super().__init__()
        self.patch = patch  # a LinearPatcher: every removed span is scored with its fitted map
        self.costs = list(costs)  # what a multi-objective search minimises beside the objective
        self.problem = problem  # the dpopt.Problem it was built from: a worker rebuilds it from its recipe
        self.lm = lm
        self.units = units or UnitSpace.blocks(lm.n_blocks)  # what each bit of a mask removes
        if self.units.n_blocks != lm.n_blocks:
            raise ValueError(f"unit space over {self.units.n_blocks} blocks for a model of {lm.n_blocks}")
        self._bounds = self.units.bounds
        if patch is not None and self.units.kind != "block":
            raise ValueError("a linear patch replaces runs of removed blocks: it needs the block space")
        family = lm.masked.family
        self._all_kinds = frozenset(family.sublayers or ())
        self._empty_is_identity = bool(family.empty_block_is_identity(lm.model.config))
        self.objective = objective
        self.direction = objective.direction
        self.metric = objective.name
        self.fingerprint = fingerprint
        self.units_scored = 0  # tokens (or questions) pushed through a head: the grid's real work
        self.prefix_sharing = prefix_sharing
        # Defaults scale with the model so that the evaluator's extra memory stays a
        # fraction of what the dense model's own evaluation needs (weights + one pass).
        # On a CPU, stacking more prefixes into one call buys no speed (one batch already
        # fills the cores), so the CPU default is lean; a GPU gains from wider calls.
        weights = sum(p.numel() * p.element_size() for p in lm.model.parameters())
        on_gpu = lm.masked.device.type != "cpu"
        default_mem = weights // 2 if on_gpu else weights // 8
        self.memory_bytes = int(memory_mb * 2**20) if memory_mb else max(default_mem, 64 * 2**20)
        cache_bytes = int(cache_mb * 2**20) if cache_mb is not None else max(weights // 20, 16 * 2**20)
        self.cache = PrefixCache(cache_bytes if prefix_sharing else 0)
        self.partials: dict[tuple[bytes, int], Any] = {}
        self._prepared: dict[int, Any] = {}
        self._token_bytes: int | None = None  # one position's float32 logits, learnt on the first head call
        self.block_calls = 0  # (prefix, block) computations at batch granularity: the work done
        self.prepare_seconds: float | None = None  # the objective's preparation, as Problem.build timed it
        # the dense model's partials from the objective's own preparation pass (KL's targets
        # are the dense model's; its KL to itself is 0 by definition): the dense reference
        # then costs no second forward, and is still scored and recorded like any mask
        dense_key = LayerMask.dense(self.n_units).key()
        for index, part in (objective.dense_partials or {}).items():
            self.partials[(dense_key, index)] = part

    @property
    def n_units(self) -> int:
        return self.units.n_units

    @property
    def n_blocks(self) -> int:
        return self.lm.n_blocks

    def _action(self, block: int, bits) -> frozenset[str] | None:
        """What block ``block`` does under its units' ``bits``: None = pass through, else run skipping these."""
        skip = self.units.block_removal(block, bits)
        if skip is not None and skip and skip >= self._all_kinds and self._empty_is_identity:
            return None  # a pre-norm block without any sub-layer is the identity: no call at all
        return skip

    def dense_value(self, fidelity: int | None = None) -> float:
        return self.raw(LayerMask.dense(self.n_units), fidelity)

    @property
    def full_fidelity(self) -> int:
        return int(sum(b.size for b in self.objective.batches(None)))

    def resolve_fidelity(self, fidelity: int | None) -> int:
        """Tokens (or questions) really scored at ``fidelity``: 2048 and None are one key when
        the data holds 2048, so a race stage and a full evaluation share their values."""
        return int(sum(b.size for b in self.objective.batches(fidelity)))

    def scored_masks(self) -> list[LayerMask]:
        """Every mask this evaluator holds at full fidelity (its memo), in the order first scored:
        what a study correlates objectives over without scoring anything again."""
        need = {b.index for b in self.objective.batches(None)}
        have: dict[bytes, set[int]] = {}
        for key, index in self.partials:
            have.setdefault(key, set()).add(index)
        return [LayerMask.from_key(k) for k, got in have.items() if need <= got]

    def details(self, mask: LayerMask, fidelity: int | None = None) -> dict[str, float]:
        """The objective's full report for a mask (e.g. acc and acc_norm), from its memoised partials."""
        self.evaluate([mask], fidelity)
        batches = self.objective.batches(self.resolve_fidelity(fidelity))
        return self.objective.report([self.partials[(mask.key(), b.index)] for b in batches])

    # --- the memo layer -----------------------------------------------------------------
    def _score(self, masks: Sequence[LayerMask], fidelity: int | None) -> list[float]:
        for m in masks:
            if m.n_units != self.n_units:
                raise ValueError(f"mask of {m.n_units} units for a {self.units.kind} space of {self.n_units} units")
        batches = self.objective.batches(fidelity)
        for b in batches:
            todo = [m for m in masks if (m.key(), b.index) not in self.partials]
            if todo:
                self.units_scored += b.size * len(todo)
                for group in self._in_flight_groups(b, todo):
                    for m, part in zip(group, self._run_batch(b, group)):
                        self.partials[(m.key(), b.index)] = part
                    release_freed_memory()  # else a long search's resident size creeps up (dpopt/heap.py)
        out = []
        for m in masks:
            try:
                out.append(float(self.objective.finish([self.partials[(m.key(), b.index)] for b in batches])))
            except (FloatingPointError, ValueError, ZeroDivisionError, OverflowError):
                out.append(float("nan"))
        return out

    def _in_flight_groups(self, batch, masks: list[LayerMask]) -> list[list[LayerMask]]:
        """``masks`` in prefix order, cut into runs of about equal size that fit the memory budget.

        The prefix tree advances every mask in flight one block at a time, so each holds its
        hidden state, the next block's output and its share of a stacked call (about four
        hidden states) at once. Sent all together, 32 initial masks held 300+ MB of hidden
        states on SmolLM2 and set a search's peak; runs of neighbours in prefix order keep
        nearly all the sharing (a shared prefix lies within one run, or is cached at its edge).
        """
        h0 = self._prep(batch).h0
        per_mask = 4 * h0.numel() * h0.element_size()
        most = max(1, self.memory_bytes // max(per_mask, 1))
        if len(masks) <= most:
            return [masks]
        ordered = sorted(masks, key=lambda m: m.bits.tobytes())
        n_runs = -(-len(ordered) // most)
        cuts = [len(ordered) * i // n_runs for i in range(n_runs + 1)]
        return [ordered[a:b] for a, b in zip(cuts, cuts[1:])]

    def _prep(self, batch):
        p = self._prepared.get(batch.index)
        if p is None:
            p = self.lm.masked.prepare(batch.input_ids, batch.attention_mask, batch.position_ids)
            self._prepared[batch.index] = p
        return p

    # --- the prefix tree ----------------------------------------------------------------
    @torch.no_grad()
    def _run_batch(self, batch, masks: list[LayerMask]) -> list[Any]:
        prep = self._prep(batch)
        if not self.prefix_sharing:
            return [self._score_hidden(self._forward_one(m, prep), batch) for m in masks]
        n, bounds = self.n_blocks, self._bounds
        # start each mask from its deepest cached prefix (or from the embeddings); a prefix
        # is the bits of every unit before block ``level``
        pending: dict[int, dict[bytes, _Group]] = {}
        for m in masks:
            level, hidden, branch = 0, prep.h0, prep.h0 if self.patch else None
            for lv in range(n, 0, -1):
                t = self.cache.get((batch.index, _prefix_key(m, bounds[lv])))
                if t is not None:
                    level, (hidden, branch) = lv, (t if self.patch else (t, None))
                    break
            groups = pending.setdefault(level, {})
            groups.setdefault(_prefix_key(m, bounds[level]), _Group(hidden, [], branch)).masks.append(m)
        active: dict[bytes, _Group] = {}
        for level in range(n):
            _merge(active, pending.pop(level, {}))
            lo, hi = bounds[level], bounds[level + 1]
            runs: dict[frozenset[str], list[tuple[bytes, _Group]]] = {}  # skip set -> prefixes to run
            nxt: dict[bytes, _Group] = {}
            for key, g in active.items():
                split: dict[bytes, list[LayerMask]] = {}
                for m in g.masks:
                    split.setdefault(m.bits[lo:hi].tobytes(), []).append(m)
                for own, members in split.items():
                    action = self._action(level, np.frombuffer(own, dtype=bool))
                    if action is None:
                        nxt[key + own] = _Group(g.hidden, members, g.branch)
                    else:
                        hidden = self._after_span(key, g)
                        runs.setdefault(action, []).append((key + own, _Group(hidden, members, g.branch)))
            for skip, need in runs.items():
                outs = self._stacked_block(level, [g.hidden for _, g in need], prep, skip)
                for (key, g), (out, branch) in zip(need, outs):
                    g.hidden, g.branch = out, branch
                    nxt[key] = g
                    if len(g.masks) > 1:  # shared prefixes are what later calls reuse
                        self.cache.put((batch.index, key), (out, branch) if self.patch else out)
            active = nxt
            del runs
        _merge(active, pending.pop(n, {}))
        results: dict[bytes, Any] = {}
        for key, g in active.items():
            part = self._score_hidden(self._after_span(key, g), batch)
            for m in g.masks:
                results[m.key()] = part
        return [results[m.key()] for m in masks]

    def _after_span(self, key: bytes, g: _Group) -> torch.Tensor:
        """The group's hidden state where the stream is read next: patched if ``key`` (its
        prefix) ends with a removed block and the evaluator patches spans."""
        if self.patch is None or not key or key[-1]:
            return g.hidden
        return self.patch.apply(key, g.hidden, g.branch)

    def _stacked_block(self, level: int, hiddens: list[torch.Tensor], prep,
                       skip: frozenset[str] = frozenset()) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Run block ``level`` (skipping the ``skip`` sub-layers) on many prefixes at once, in
        chunks that fit the memory budget; each output comes with its MLP branch term when
        the evaluator patches spans (else None)."""
        if not hiddens:
            return []
        self.block_calls += len(hiddens)
        h = hiddens[0]
        cfg = self.lm.model.config
        width = max(h.shape[-1], getattr(cfg, "intermediate_size", 0) or 0, getattr(cfg, "ffn_dim", 0) or 0)
        per = h.shape[0] * h.shape[1] * width * h.element_size() * 4  # rough activation peak per prefix
        chunk = max(1, self.memory_bytes // max(per, 1))
        out: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        for i in range(0, len(hiddens), chunk):
            part = hiddens[i : i + chunk]
            stacked = torch.cat(part, dim=0) if len(part) > 1 else part[0]
            if self.patch is not None:
                res, branch = self.patch.run_block(level, stacked, prep)
                out.extend(zip(res.split(h.shape[0], dim=0), branch.split(h.shape[0], dim=0)))
            else:
                res = self.lm.masked.run_block(level, stacked, prep, skip=skip)
                out.extend((r, None) for r in res.split(h.shape[0], dim=0))
        return out

    def _forward_one(self, mask: LayerMask, prep) -> torch.Tensor:
        if self.patch is not None:
            self.block_calls += len(mask.kept())
            return self.patch.last_hidden(mask, prep)
        h = prep.h0
        bounds = self._bounds
        for i in range(self.n_blocks):
            action = self._action(i, mask.bits[bounds[i]:bounds[i + 1]])
            if action is not None:
                h = self.lm.masked.run_block(i, h, prep, skip=action)
                self.block_calls += 1
        return h

    def _score_hidden(self, hidden: torch.Tensor, batch) -> Any:
        """The head and the objective's score for one mask's last hidden state.

        The head's output is the largest tensor of a whole evaluation (one 256-token
        sequence of SmolLM2 is 50 MB of logits; of Gemma 3, 270 MB), and it would otherwise
        set the peak memory of a search. So an objective whose partials add over sequences
        (``rows_additive``) gets the logits a few sequences at a time, and one whose partials
        also add over positions (``positions_additive``) a few positions at a time: pieces
        of at most the memory budget. The partials are added with ``+``.
        No isfinite scan of the logits here (it would cost as much as the score itself): a NaN or
        Inf reaches the objective's statistics and makes ``finish`` non-finite, which the
        memo layer records as the worst fitness with its reason.
        """
        if batch.head_positions is not None:  # only these positions' logits are read
            idx = batch.head_positions.to(hidden.device)
            hidden = torch.gather(hidden, 1, idx.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        by_pos = self.objective.positions_additive and batch.head_positions is None
        by_row = by_pos or self.objective.rows_additive
        n, t = hidden.shape[0], hidden.shape[1]
        if not by_row or (n == 1 and not by_pos):
            return self.objective.score(self.lm.masked.head(hidden), batch)
        if self._token_bytes is None:  # float32 logits of one position: what a piece is sized by
            self._token_bytes = 4 * self.lm.masked.head(hidden[:1, :1]).numel()
        # positions per piece: as many as the budget holds (the objective chunks its own
        # log-softmax). Not fewer: each piece reads the whole head matrix again, so smaller
        # pieces cost time without lowering the peak
        piece = max(1, self.memory_bytes // self._token_bytes)
        rows = max(1, piece // t)
        step = t if rows > 1 or not by_pos else min(t, piece)
        total = None
        for r0 in range(0, n, rows):
            r1 = min(r0 + rows, n)
            part_rows = batch.rows(r0, r1) if (r0, r1) != (0, n) else batch
            for p0 in range(0, t, step):
                p1 = min(p0 + step, t)
                logits = self.lm.masked.head(hidden[r0:r1, p0:p1])
                part = self.objective.score(logits, part_rows if (p0, p1) == (0, t) else part_rows.positions(p0, p1))
                total = part if total is None else total + part
                del logits
        return total

    def fidelities(self) -> list[int]:
        """Cumulative batch sizes: the fidelities at which the objective's data can be cut."""
        sizes = np.cumsum([b.size for b in self.objective.batches(None)])
        return [int(s) for s in sizes]

    @torch.no_grad()
    def block_stats(self, max_batches: int = 4) -> dict[str, np.ndarray]:
        """Similarity of the dense model's hidden states between every pair of depths.

        ``cos[i, j]`` is the mean cosine similarity over tokens between the hidden state
        entering block i and entering block j (j = n is the last block's output);
        ``angular[i, j]`` is the mean angular distance arccos(cos)/pi. ShortGPT's block
        influence is ``1 - cos[l, l+1]``; Gromov et al.'s span score is ``angular[l, l+k]``.
        """
        n = self.n_blocks
        cos = np.zeros((n + 1, n + 1))
        ang = np.zeros((n + 1, n + 1))
        batches = self.objective.batches(None)[:max_batches]
        for b in batches:
            prep = self._prep(b)
            states = [prep.h0]
            for i in range(n):
                states.append(self.lm.masked.run_block(i, states[-1], prep))
            flat = [torch.nn.functional.normalize(s.float().flatten(0, -2), dim=-1) for s in states]
            for i in range(n + 1):
                for j in range(i, n + 1):
                    c = (flat[i] * flat[j]).sum(-1).clamp(-1, 1)
                    cos[i, j] += c.mean().item() / len(batches)
                    ang[i, j] += (torch.arccos(c) / np.pi).mean().item() / len(batches)
        return {"cos": cos, "angular": ang}
