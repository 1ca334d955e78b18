"""A weighted sum of objectives, each normalised to the dense model's value.

``ppl:0.5,acc:0.5`` scores ``0.5 * ppl/ppl_dense + 0.5 * (1 + (acc_dense - acc)/acc_dense)``:
every term is 1 for the dense model and grows as the pruned model gets worse, so terms
with different units and directions add up meaningfully. The result is minimised.
Each term is ``1 + (loss - loss_dense) / |dense|`` with the raw values turned into losses
by :func:`dpopt.fitness.to_minimize`, so this module never decides a sign itself.
"""
from __future__ import annotations

import numpy as np

from ..fitness import to_minimize
from .base import Batch, ObjectiveBase


class Composite(ObjectiveBase):
    """Options go to the parts (each takes those it declares), so the composite declares none."""

    direction = "minimize"

    def __init__(self, parts: list[tuple[object, float, object]]):
        """``parts``: (objective, weight, data) triples."""
        self.parts = parts
        self.name = ",".join(f"{o.name}:{w:g}" for o, w, _ in parts)
        self._owner: dict[int, tuple[int, Batch]] = {}  # composite batch index -> (part, child batch)
        self.dense: list[float] = []

    def prepare(self, lm, data=None) -> None:
        self._owner.clear()
        self.dense = []
        self.dense_partials = {}
        index = 0
        for p, (obj, _, part_data) in enumerate(self.parts):
            obj.prepare(lm, part_data)
            known = obj.dense_partials or {}  # a part whose preparation ran the dense model
            partials = []
            for b in obj.batches(None):
                self._owner[index] = (p, b)
                part = known.get(b.index)
                if part is None:
                    prepared = lm.masked.prepare(b.input_ids, b.attention_mask, b.position_ids, dense=True)
                    part = obj.score(prepared.dense_logits, b)
                partials.append(part)
                self.dense_partials[index] = (p, part)
                index += 1
            self.dense.append(obj.finish(partials))
        self._batches = [Batch(i, b.input_ids, b.size, b.attention_mask, b.position_ids, {"part": p, "child": b})
                         for i, (p, b) in self._owner.items()]

    def batches(self, fidelity: int | None = None):
        out = []
        for p, (obj, _, _) in enumerate(self.parts):
            wanted = {id(b) for b in obj.batches(fidelity)}
            out.extend(b for b in self._batches if b.extra["part"] == p and id(b.extra["child"]) in wanted)
        return out

    def score(self, logits, batch):
        p = batch.extra["part"]
        return (p, self.parts[p][0].score(logits, batch.extra["child"]))

    def settings(self) -> dict:
        return {f"{o.name}:{w:g}": o.settings() for o, w, _ in self.parts}

    def report(self, partials) -> dict[str, float]:
        out = {}
        for p, (obj, _, _) in enumerate(self.parts):
            out.update(obj.report([s for q, s in partials if q == p]))
        out[self.name] = self.finish(partials)
        return out

    def finish(self, partials) -> float:
        total = 0.0
        for p, (obj, weight, _) in enumerate(self.parts):
            mine = [s for q, s in partials if q == p]
            value, dense = obj.finish(mine), self.dense[p]
            if not np.isfinite(value):
                return float("nan")
            loss = to_minimize(value, obj.direction)
            term = 1 + (loss - to_minimize(dense, obj.direction)) / abs(dense) if dense else loss
            total += weight * term
        return total
