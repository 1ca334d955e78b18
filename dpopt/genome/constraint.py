"""Constraint: which masks a run may answer with, and the operators that keep a mask inside it."""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from ..errors import UserError
from .mask import LayerMask, parse_index_list
from .space import UnitSpace


def parse_remove(text: str | int | None) -> tuple[int, int] | None:
    """``--remove``: ``"6"`` (exactly six units) or ``"4:10"`` (any count from 4 to 10)."""
    if text is None or text == "":
        return None
    if isinstance(text, int):
        return text, text
    lo, sep, hi = str(text).strip().partition(":")
    try:
        k_min = int(lo)
        k_max = int(hi) if sep else k_min
    except ValueError:
        raise UserError(f"--remove takes a count K or a range MIN:MAX, got {text!r}") from None
    if k_min > k_max:
        raise UserError(f"--remove {text}: the range is empty ({k_min} > {k_max}); write MIN:MAX")
    return k_min, k_max


_SCALE = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "B": 1e9}


def parse_params(text: str | float | int | None) -> float | None:
    """``--max-params``: ``100M``, ``1.2G``, ``90e6`` or a plain count, as a number of parameters."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        t = str(text).strip().upper()
        suffix = t[-1] if t and t[-1] in _SCALE and t[-1] != "" else ""
        try:
            value = float(t[: len(t) - len(suffix)]) * _SCALE[suffix]
        except ValueError:
            raise UserError(f"--max-params takes a parameter count such as 100M, 1.2G or 90000000, got {text!r}") from None
    if not value > 0:
        raise UserError(f"--max-params must be positive, got {text!r}")
    return value


def _fmt_params(n: float) -> str:
    return f"{n / 1e9:.3g}G" if n >= 1e9 else f"{n / 1e6:.4g}M"


@dataclass(frozen=True)
class Constraint:
    """The search space: which masks over ``n_units`` units a run may answer with.

    A valid mask removes between ``k`` and ``k_max`` units (``k == k_max``: exactly K, the
    default), never a protected one, and, with ``max_params``, leaves a model of at most
    that many parameters (``unit_params[u]``: what unit ``u`` owns; ``total_params``: the
    dense model). ``k`` is the smallest count a valid mask can have, so a searcher that
    removes units one at a time (greedy) stops at the first valid mask, and one that ranks
    units (CMA-ES, one-shot scores) removes the fewest that satisfy the constraint.

    Operators here (random masks, swap mutation, crossover + repair, ranking) keep a mask
    inside that space, because DEAP's stock ``mutFlipBit``/``cxTwoPoint`` would change how
    many units are removed. ``what`` only words the errors (``blocks``, ``sub-layer units``).
    """

    n_units: int
    k: int
    protect: tuple[int, ...] = field(default_factory=tuple)
    what: str = field(default="blocks", compare=False)
    k_max: int | None = None
    max_params: float | None = None
    unit_params: tuple[float, ...] | None = field(default=None, compare=False)
    total_params: float | None = field(default=None, compare=False)
    # a budget on a measured quantity: (name, unit, mask -> value, maximum), e.g. latency in ms/token;
    # the function is called on candidate masks (a cost that caches per mask keeps that cheap)
    limit: tuple[str, str, Callable[[LayerMask], float], float] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.k_max is None:
            object.__setattr__(self, "k_max", self.k)
        if self.n_units < 1:
            raise UserError(f"the model has no {self.what} to remove")
        for p in self.protect:
            if not 0 <= p < self.n_units:
                raise UserError(f"protected unit {p} is out of range (0..{self.n_units - 1})")
        if not self.budgeted and not 0 < self.k <= self.k_max < self.n_units:
            span = str(self.k) if self.k == self.k_max else f"{self.k}:{self.k_max}"
            raise UserError(
                f"--remove must be between 1 and {self.n_units - 1} for a model with {self.n_units} {self.what} "
                f"(got {span})"
            )
        if len(self.removable) < self.k:
            raise UserError(
                f"--protect leaves {len(self.removable)} removable {self.what}, fewer than the {self.k} to remove"
            )
        if self.max_params is not None:
            self._check_params()
        if self.limit is not None:
            self._check_limit()

    def _check_limit(self) -> None:
        name, unit, fn, maximum = self.limit
        dense = fn(LayerMask.dense(self.n_units))
        if dense <= maximum:
            raise UserError(f"--max-{name} {maximum:g}: the dense model already measures {dense:.4g} {unit}, "
                            "so nothing needs removing")
        smallest = LayerMask.from_removed(self.n_units, self.removable[: self.k_max])
        if fn(smallest) > maximum:
            raise UserError(f"--max-{name} {maximum:g} is below what removing {self.k_max} of the "
                            f"{len(self.removable)} removable {self.what} measures ({fn(smallest):.4g} {unit})")

    @property
    def budgeted(self) -> bool:
        """A parameter or measured budget decides validity beside the count (operators repair to it)."""
        return self.max_params is not None or self.limit is not None

    def _check_params(self) -> None:
        if self.unit_params is None or self.total_params is None:
            raise ValueError("a parameter budget needs unit_params and total_params")
        if self.max_params >= self.total_params:
            raise UserError(f"--max-params {_fmt_params(self.max_params)}: the dense model already has "
                            f"{_fmt_params(self.total_params)}, so nothing needs removing")
        sizes = sorted((self.unit_params[u] for u in self.removable), reverse=True)
        floor = self.total_params - sum(sizes[: self.k_max])
        if floor > self.max_params:
            raise UserError(f"--max-params {_fmt_params(self.max_params)} is below what removing the largest "
                            f"{self.k_max} of the {len(sizes)} removable {self.what} reaches ({_fmt_params(floor)})")
        need, removed = 0, self.total_params
        for s in sizes:  # the fewest units that can meet the budget: largest first
            if removed <= self.max_params:
                break
            removed -= s
            need += 1
        object.__setattr__(self, "k", max(self.k, need))

    @classmethod
    def build(
        cls,
        n_units: int,
        remove: int | str | tuple[int, int] | None = None,
        sparsity: float | None = None,
        protect: str | Sequence[int] | None = None,
        space: UnitSpace | None = None,
        max_params: float | str | None = None,
        unit_params: Sequence[float] | None = None,
        total_params: float | None = None,
        limit: tuple[str, str, Callable[[LayerMask], float], float] | None = None,
    ) -> "Constraint":
        """``protect`` names blocks; in a sub-layer ``space`` every unit of a protected block is kept.

        ``remove`` is a count, ``"MIN:MAX"`` or a (min, max) pair; ``max_params`` a count or
        ``"100M"`` (needs ``unit_params``/``total_params``), alone or with ``remove``.
        """
        if space is not None and space.kind != "block":
            if space.n_units != n_units:
                raise ValueError(f"space of {space.n_units} units for a constraint over {n_units}")
            blocks = parse_index_list(protect, space.n_blocks, "protected block")
            what = "sub-layer units" if space.kind == "sublayer" else "units"
            prot = space.units_of_blocks(blocks)
        else:
            what, prot = "blocks", parse_index_list(protect, n_units, "protected block")
        budget = parse_params(max_params)
        span = remove if isinstance(remove, tuple) else parse_remove(remove)
        if limit is not None and not limit[3] > 0:
            raise UserError(f"--max-{limit[0]} must be positive, got {limit[3]:g}")
        if budget is not None or limit is not None:
            if sparsity is not None:
                raise UserError("give a budget (--max-params, --max-latency) with --remove MIN:MAX or alone, "
                                "not with --sparsity")
            lo, hi = span or (1, min(n_units - len(set(prot)), n_units - 1))
            if not 0 < lo <= hi < n_units + 1:
                raise UserError(f"--remove must be between 1 and {n_units - 1} for a model with {n_units} {what}")
            return cls(n_units, lo, tuple(prot), what, k_max=hi, max_params=budget,
                       unit_params=tuple(float(p) for p in unit_params) if unit_params is not None else None,
                       total_params=total_params, limit=limit)
        if (span is None) == (sparsity is None):
            raise UserError("give exactly one of --remove K, --remove MIN:MAX, --sparsity F or --max-params N")
        if sparsity is not None:
            if not 0.0 < sparsity < 1.0:
                raise UserError(f"--sparsity must be in (0, 1), got {sparsity}")
            k = int(round(sparsity * n_units))
            if k == 0:
                raise UserError(f"--sparsity {sparsity} removes none of {n_units} {what}")
            span = (k, k)
        return cls(n_units, int(span[0]), tuple(prot), what, k_max=int(span[1]))

    # --- describing ---------------------------------------------------------------------
    @property
    def exact(self) -> bool:
        """Exactly K units removed and nothing else: the space every searcher was first built for."""
        return self.k == self.k_max and not self.budgeted

    def describe(self) -> str:
        """The space in words, for messages: ``4 blocks``, ``4 to 10 blocks``, ``... under 100M params``."""
        count = f"{self.k}" if self.k == self.k_max else f"{self.k} to {self.k_max}"
        out = f"{count} {self.what} removed"
        if self.max_params is not None:
            out += f", at most {_fmt_params(self.max_params)} parameters kept"
        if self.limit is not None:
            out += f", {self.limit[0]} at most {self.limit[3]:g} {self.limit[1]}"
        return out

    def label(self) -> str:
        """A short name for study names: ``k4``, ``k4-10``, ``p100M``, ``k2-8-p100M``."""
        out = f"k{self.k}" if self.k == self.k_max else f"k{self.k}-{self.k_max}"
        if self.max_params is not None:
            out += f"-p{_fmt_params(self.max_params)}"
        if self.limit is not None:
            out += f"-{self.limit[0]}{self.limit[3]:g}"
        return out

    def to_dict(self) -> dict:
        return dict(remove=self.k if self.k == self.k_max else [self.k, self.k_max], protect=list(self.protect),
                    max_params=self.max_params, **({f"max_{self.limit[0]}": self.limit[3]} if self.limit else {}))

    @property
    def removable(self) -> tuple[int, ...]:
        prot = set(self.protect)
        return tuple(i for i in range(self.n_units) if i not in prot)

    def params_kept(self, mask: LayerMask) -> float | None:
        if self.unit_params is None or self.total_params is None:
            return None
        return self.total_params - sum(self.unit_params[u] for u in mask.removed())

    def _fits(self, bits: np.ndarray) -> bool:
        if self.max_params is not None and \
                self.total_params - sum(self.unit_params[u] for u in np.flatnonzero(~bits)) > self.max_params:
            return False
        return self.limit is None or self.limit[2](LayerMask(bits)) <= self.limit[3]

    def is_valid(self, mask: LayerMask) -> bool:
        if mask.n_units != self.n_units or not self.k <= len(mask.removed()) <= self.k_max:
            return False
        return all(mask.bits[p] for p in self.protect) and self._fits(mask.bits)

    # --- sampling and operators (all stay inside the space) ----------------------------
    def _prot_bits(self) -> np.ndarray:
        prot = np.zeros(self.n_units, dtype=bool)
        prot[list(self.protect)] = True
        return prot

    def random_mask(self, rng: np.random.Generator) -> LayerMask:
        """Uniform over the count range, then uniform over which units; with a parameter
        budget, units are removed in a random order until it is met (then made tight)."""
        if not self.budgeted:
            k = int(rng.integers(self.k, self.k_max + 1))
            removed = rng.choice(np.array(self.removable), size=k, replace=False)
            return LayerMask.from_removed(self.n_units, removed)
        return self.repair(np.ones(self.n_units, dtype=bool), rng)

    def swap_mutation(self, mask: LayerMask, rng: np.random.Generator, n_swaps: int = 1) -> LayerMask:
        """Exchange ``n_swaps`` kept-removable units with removed ones (EvoPress's move); the
        count stays, and a parameter budget is restored by :meth:`repair`."""
        bits = mask.bits.copy()
        prot = self._prot_bits()
        for _ in range(n_swaps):
            kept = np.flatnonzero(bits & ~prot)
            removed = np.flatnonzero(~bits)
            if len(kept) == 0 or len(removed) == 0:
                break
            i = rng.choice(kept)
            j = rng.choice(removed)
            bits[i], bits[j] = False, True
        return LayerMask(bits) if not self.budgeted else self.repair(bits, rng)

    def resize_mutation(self, mask: LayerMask, rng: np.random.Generator) -> LayerMask:
        """Remove one more unit or put one back (whichever the count range allows, at random):
        the move that walks a multi-objective search along the size axis."""
        bits = mask.bits.copy()
        n = len(mask.removed())
        grow = n < self.k_max and (n <= self.k or rng.random() < 0.5)
        if grow:
            candidates = np.flatnonzero(bits & ~self._prot_bits())
            if len(candidates):
                bits[rng.choice(candidates)] = False
        elif n > self.k:
            bits[rng.choice(np.flatnonzero(~bits))] = True
        return self.repair(bits, rng, tight=False)

    def repair(self, bits: np.ndarray, rng: np.random.Generator, tight: bool = True) -> LayerMask:
        """Project any bitstring onto the space: restore protected units, then fix the count
        and the parameter budget.

        Units to flip are chosen at random so that repair does not bias the search toward
        either end of the network. With a parameter budget and ``tight``, removed units are
        then put back (in random order) while the budget still holds: removing more than
        the budget needs only costs quality.
        """
        bits = np.array(bits, dtype=bool).copy()
        prot = self._prot_bits()
        bits[prot] = True
        removed = np.flatnonzero(~bits)
        if len(removed) > self.k_max:
            bits[rng.choice(removed, size=len(removed) - self.k_max, replace=False)] = True
        self._remove_until_enough(bits, rng.permutation(np.flatnonzero(bits & ~prot)))
        if self.budgeted and tight:
            for u in rng.permutation(np.flatnonzero(~bits)):
                if int((~bits).sum()) <= self.k:
                    break
                bits[u] = True
                if not self._fits(bits):
                    bits[u] = False
        return LayerMask(bits)

    def from_scores(self, scores: Sequence[float]) -> LayerMask:
        """Remove the lowest-scoring units until the mask is valid; protected ones are always kept.

        This is how continuous searchers (CMA-ES, Bayesian optimisation over scores) land
        inside the space without any repair step: exactly ``k`` removed for ``--remove K``,
        the fewest that meet a range or a parameter budget otherwise. Ties break toward
        lower index.
        """
        scores = np.asarray(scores, dtype=float)
        removable = np.array(self.removable)
        order = removable[np.lexsort((removable, scores[removable]))]  # ascending score
        bits = np.ones(self.n_units, dtype=bool)
        self._remove_until_enough(bits, order)
        return LayerMask(bits)

    def _remove_until_enough(self, bits: np.ndarray, order: Iterable[int]) -> None:
        """Remove units in ``order`` (in place) until at least ``k`` are removed and the budgets hold."""
        for u in order:
            if int((~bits).sum()) >= self.k and self._fits(bits):
                break
            bits[u] = False

    def size(self) -> int | None:
        """How many masks the space holds; None when a budget makes it uncounted."""
        if self.budgeted:
            return None
        r = len(self.removable)
        return sum(math.comb(r, j) for j in range(self.k, self.k_max + 1))

    def enumerate(self) -> Iterator[tuple[int, ...]]:
        """Every valid mask's removed units (small spaces only: brute force, exhaustive random)."""
        for j in range(self.k, self.k_max + 1):
            for combo in itertools.combinations(self.removable, j):
                if not self.budgeted or self._fits(LayerMask.from_removed(self.n_units, combo).bits):
                    yield combo
