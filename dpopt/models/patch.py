"""Linear patch: a least-squares map stands in for each removed span and is folded into the weights.

Where it acts, and why there. A pre-norm block adds its branches to the residual stream,
``h_out = r + s * z`` with ``r = h_in + attn(...)`` and ``z`` the output of the MLP's last
module (``down_proj``; ``s`` is Granite's residual multiplier, 1 elsewhere). A map on the
whole stream (``h_out -> h_out W``) cannot be written into a plain checkpoint: ``r`` passes
through the block untouched and every later norm sees the stream. A map on ``z`` can:
``z T`` is what a ``down_proj`` with weight ``T^T W_down`` (bias ``b T``) computes. So a
removed span ``[i..j]`` is replaced, as ReplaceMe does, by ``T = I + Delta`` on the MLP
output of the kept block ``p = i - 1``, with ``Delta`` the ridge least-squares solution of

    (s z) Delta  ~  Y_j - h_out           (float64, over calibration tokens)

where ``h_out`` and ``z`` come from the masked model itself (earlier spans already patched)
and ``Y_j`` is the dense model's hidden state after block ``j``. Fitting the residual and
shrinking toward ``Delta = 0`` makes a heavily regularised patch the plain drop, not zero.
The masked model applies it as ``h_out + (s z) Delta`` after the span; export folds ``T``.

- Gemma2/3 and OLMo2 normalise the MLP output (``post_feedforward_layernorm``) before the add.
  A matrix cannot pass through an RMSNorm, but the norm's weight is per channel, so there
  the patch is diagonal (``Delta`` a vector, fitted per channel) and folds into that weight.
- A span from block 0 has no block before it; the hidden state entering it is the sum of the
  embedding outputs, so the patch is a full map on it, ``h0 T``, folded into every embedding
  matrix (``E T``; a projection after the embeddings, OPT's ``project_in``, takes it as a
  linear layer). Where the token embeddings are tied to the LM head, the export unties them:
  the head keeps the original matrix (the checkpoint grows by one vocab x d matrix).
- Post-norm blocks (OPT with ``do_layer_norm_before=False``) normalise the stream after the
  add; nothing exact exists there, and ``--patch linear`` is refused for them.

A span's fit depends only on the mask's bits up to and including the span (the blocks before
it, their patches, and where the span ends), so fits are memoised by that prefix and shared
by every mask that has it.
"""
from __future__ import annotations

import contextlib
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn

from ..errors import UserError
from .families import PatchPoint, get_path

PATCHES = ("linear",)
DEFAULT_PATCH_TOKENS = 4096
DEFAULT_RIDGE = 1e-4  # times the mean diagonal of the normal matrix
# Objectives read the calibration split from its first document on; the fits read it from its
# last document back, so a mask scored with its patch inside a search is scored on tokens its
# maps were not fitted to (in-sample, a mask with more spans has more free parameters and looks
# better the more it overfits). They meet only where the split holds fewer tokens than both.
FIT_READS = "calib split, last document first"


@dataclass(frozen=True)
class PatchSettings:
    """What decides every fit: the fingerprint hashes these (and the data's bytes)."""

    kind: str = "linear"
    data: str | None = None  # text data whose calibration split the fits use (default: the zoo's)
    data_seed: int = 0
    tokens: int = DEFAULT_PATCH_TOKENS
    seq_len: int = 512
    batch_size: int = 2
    ridge: float = DEFAULT_RIDGE

    def identity(self) -> dict:
        from ..data import DEFAULT_TEXT
        from ..data.identity import data_identity

        return dict(kind=self.kind, data=data_identity(self.data or DEFAULT_TEXT), split="calib",
                    data_seed=self.data_seed, tokens=self.tokens, seq_len=self.seq_len, ridge=self.ridge,
                    reads=FIT_READS)


def check_patch(patch: str | None, units: str = "block") -> None:
    if patch is None:
        return
    if patch not in PATCHES:
        raise UserError(f"--patch must be one of {', '.join(PATCHES)}, got {patch!r}")
    if units != "block":
        raise UserError("--patch linear replaces runs of removed blocks: it needs --units block and whole blocks")


def spans(bits) -> list[tuple[int, int]]:
    """The maximal runs ``(first, last)`` of removed blocks (``bits[i]`` False)."""
    out, start = [], None
    for i, kept in enumerate(list(bits) + [True]):
        if not kept and start is None:
            start = i
        elif kept and start is not None:
            out.append((start, i - 1))
            start = None
    return out


@dataclass(frozen=True)
class SpanPatch:
    """The fitted map of one span: the stream after it is ``h + branch @ delta`` (or ``* delta``)."""

    start: int
    end: int
    delta: torch.Tensor  # float64: (d, d), or (d,) for a diagonal patch
    point: PatchPoint | None  # None: the span starts at block 0 and the map acts on the embeddings

    @property
    def diagonal(self) -> bool:
        return self.delta.ndim == 1

    def apply(self, hidden: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        delta = self.delta.to(device=hidden.device, dtype=torch.float32)
        b = branch.float()
        update = b * delta if self.diagonal else b @ delta
        return (hidden.float() + update).to(hidden.dtype)

    def matrix(self) -> torch.Tensor:
        """``T = I + Delta`` (a vector of per-channel scales for a diagonal patch)."""
        return 1.0 + self.delta if self.diagonal else torch.eye(self.delta.shape[0], dtype=torch.float64) + self.delta

    def describe(self, family: str) -> dict:
        where = "embeddings" if self.point is None else f"block {self.start - 1} {self.point.module}"
        return dict(span=[self.start, self.end], into=where, diagonal=self.diagonal, family=family)


def fit_delta(normal: torch.Tensor, cross: torch.Tensor, ridge: float) -> torch.Tensor:
    """Ridge least squares from accumulated ``B^T B`` and ``B^T R`` (or their diagonals), float64."""
    lam = ridge * float(normal.diagonal().mean() if normal.ndim == 2 else normal.mean())
    lam = max(lam, 1e-30)
    if normal.ndim == 1:
        return cross / (normal + lam)
    eye = torch.eye(normal.shape[0], dtype=normal.dtype)
    return torch.linalg.solve(normal + lam * eye, cross)


class LinearPatcher:
    """Fits, memoises and applies the patch of every span a mask removes, on calibration batches.

    Its states are the masked model's own (patched) hidden states on the calibration data,
    memoised by mask prefix; the dense model's states at each depth are computed once.
    """

    def __init__(self, masked, settings: PatchSettings, input_ids: Sequence[torch.Tensor],
                 cache_mb: float = 256, fits_mb: float = 512):
        point = masked.family.patch_point(masked.model.config)
        if point is None:
            raise UserError(f"--patch linear: {masked.family.name} blocks of this configuration normalise the "
                            "residual stream after the MLP's add (post-norm); no weight takes the patch exactly")
        self.masked, self.point, self.settings = masked, point, settings
        self.scale = float(point.scale(masked.model.config) or 1.0)
        self.prepared = [masked.prepare(ids) for ids in input_ids]
        self._dense: dict[int, list[torch.Tensor]] = {0: [p.h0 for p in self.prepared]}
        self._states: OrderedDict[bytes, list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
        self._fits: OrderedDict[bytes, SpanPatch] = OrderedDict()
        self._limits = (int(cache_mb * 2**20), int(fits_mb * 2**20))
        self.fitted = 0  # fits computed (not taken from the memo): what sharing saves

    # --- running blocks with the branch captured ------------------------------------------------
    @contextlib.contextmanager
    def capturing(self, block: int) -> Iterator[list[torch.Tensor]]:
        """While inside, block ``block``'s patch-point output (times the branch scale) is appended to the list."""
        caught: list[torch.Tensor] = []
        module = get_path(self.masked.blocks[block], self.point.module)

        def hook(mod, args, out):
            caught.append(out * self.scale if self.scale != 1.0 else out)

        handle = module.register_forward_hook(hook)
        try:
            yield caught
        finally:
            handle.remove()

    def run_block(self, block: int, hidden: torch.Tensor, prepared) -> tuple[torch.Tensor, torch.Tensor]:
        """The block's output and its MLP branch term (the patch's input for a span after it)."""
        with self.capturing(block) as caught:
            out = self.masked.run_block(block, hidden, prepared)
        return out, caught[-1].reshape(out.shape)  # OPT runs its MLP on (tokens, d)

    # --- the patched masked model ---------------------------------------------------------------
    def patch_for(self, prefix: bytes) -> SpanPatch:
        """The patch of the span that ``prefix`` (mask bits, one byte per block) ends with."""
        fit = self._fits.get(prefix)
        if fit is None:
            fit = self._fit(prefix)
            self._fits[prefix] = fit
            size = lambda f: f.delta.numel() * 8  # noqa: E731
            while sum(size(f) for f in self._fits.values()) > self._limits[1] and len(self._fits) > 1:
                self._fits.popitem(last=False)
        else:
            self._fits.move_to_end(prefix)
        return fit

    def apply(self, prefix: bytes, hidden: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        return self.patch_for(prefix).apply(hidden, branch)

    def last_hidden(self, mask, prepared) -> torch.Tensor:
        """The masked model's last hidden state with every span's patch applied (unfolded)."""
        bits = bytes(mask.bits.tobytes())
        h = branch = prepared.h0
        for i in range(len(bits)):
            if not bits[i]:
                continue
            if i and not bits[i - 1]:
                h = self.apply(bits[:i], h, branch)
            h, branch = self.run_block(i, h, prepared)
        if not bits[-1]:
            h = self.apply(bits, h, branch)
        return h

    def patches(self, mask) -> list[SpanPatch]:
        bits = bytes(mask.bits.tobytes())
        return [self.patch_for(bits[: end + 1]) for _, end in spans(mask.bits)]

    # --- fitting --------------------------------------------------------------------------------
    def _fit(self, prefix: bytes) -> SpanPatch:
        end = len(prefix) - 1
        start = end
        while start > 0 and not prefix[start - 1]:
            start -= 1
        if prefix[end]:
            raise ValueError("a patch prefix must end with a removed block")
        states = [(h, h) for h in self._dense[0]] if start == 0 else self._state(prefix[:start])
        diagonal = start > 0 and self.point.diagonal
        normal = cross = None
        for (h, b), y in zip(states, self._dense_at(end + 1)):
            b64 = b.reshape(-1, b.shape[-1]).double().cpu()
            r64 = (y.double() - h.double()).reshape(-1, b.shape[-1]).cpu()
            n_part, c_part = ((b64 * b64).sum(0), (b64 * r64).sum(0)) if diagonal else (b64.T @ b64, b64.T @ r64)
            normal = n_part if normal is None else normal + n_part
            cross = c_part if cross is None else cross + c_part
        self.fitted += 1
        delta = fit_delta(normal, cross, self.settings.ridge)
        return SpanPatch(start, end, delta, None if start == 0 else self.point)

    def _state(self, prefix: bytes) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(hidden, branch) per calibration batch after the kept block ``prefix`` ends with."""
        hit = self._states.get(prefix)
        if hit is not None:
            self._states.move_to_end(prefix)
            return hit
        level, states = 0, [(h, h) for h in self._dense[0]]
        for lv in range(len(prefix) - 1, 0, -1):
            if prefix[lv - 1] and prefix[:lv] in self._states:
                level, states = lv, self._states[prefix[:lv]]
                break
        for i in range(level, len(prefix)):
            if not prefix[i]:
                continue
            if i and not prefix[i - 1]:
                patch = self.patch_for(prefix[:i])
                states = [(patch.apply(h, b), b) for h, b in states]
            states = [self.run_block(i, h, p) for (h, _), p in zip(states, self.prepared)]
            self._remember(prefix[: i + 1], states)
        return states

    def _remember(self, key: bytes, states) -> None:
        self._states[key] = states
        per = sum(h.numel() * h.element_size() * 2 for h, _ in states)
        while len(self._states) > 1 and per * len(self._states) > self._limits[0]:
            self._states.popitem(last=False)

    def _dense_at(self, depth: int) -> list[torch.Tensor]:
        """The dense model's hidden states entering block ``depth`` (``n``: after the last block)."""
        if depth not in self._dense:
            below = max(d for d in self._dense if d < depth)
            states = self._dense[below]
            for i in range(below, depth):
                states = [self.masked.run_block(i, h, p) for h, p in zip(states, self.prepared)]
                self._dense[i + 1] = states
        return self._dense[depth]


# --- making one, shared per model -----------------------------------------------------------------
_PATCHERS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def patcher_for(lm, settings: PatchSettings) -> LinearPatcher:
    """The patcher of ``lm`` for these settings, made once per model: every evaluator of a grid,
    its held-out scores and ``dpopt eval``'s objectives share its fits."""
    per_model = _PATCHERS.setdefault(lm.model, {})
    if settings not in per_model:
        from ..data import DEFAULT_TEXT, load_data
        from ..objectives.base import check_seq_len, require_text, text_stream_batches

        data = require_text(load_data(settings.data or DEFAULT_TEXT, "calib", settings.data_seed), "--patch linear")
        check_seq_len(lm, settings.seq_len)
        batches = text_stream_batches(lm.tokenizer, data.documents[::-1], settings.tokens, settings.seq_len,
                                      settings.batch_size)  # FIT_READS
        per_model[settings] = LinearPatcher(lm.masked, settings, [b.input_ids for b in batches])
    return per_model[settings]


# --- folding into the weights -----------------------------------------------------------------------
def _folded_params(module: nn.Module, t: torch.Tensor, point: PatchPoint | None) -> dict[str, torch.Tensor]:
    """New values of ``module``'s parameters that make its output ``out @ T`` (or ``out * t``)."""
    w = module.weight.detach().double().cpu()
    bias = getattr(module, "bias", None)
    if t.ndim == 1:  # an elementwise norm: (offset + w) * t - offset
        if isinstance(bias, torch.Tensor):
            raise UserError(f"--patch linear: {type(module).__name__} has a bias; a diagonal patch cannot fold into it")
        off = point.norm_offset if point is not None else 0.0
        return {"weight": (off + w) * t - off}
    if isinstance(module, nn.Embedding):
        out = {"weight": w @ t}
    elif isinstance(module, nn.Linear):
        out = {"weight": t.T @ w}
    elif type(module).__name__ == "Conv1D":  # GPT-2: out = x W + b, weight (in, out)
        out = {"weight": w @ t}
    else:
        raise UserError(f"--patch linear: cannot fold a map into a {type(module).__name__}")
    if isinstance(bias, torch.Tensor):
        out["bias"] = bias.detach().double().cpu() @ t
    return out


@contextlib.contextmanager
def folded(masked, patches: Sequence[SpanPatch]) -> Iterator[list[str]]:
    """While inside, each patch is folded into the weights (the live parameters are swapped for
    new ones and put back on exit); yields what was done, one line each, for the export's config."""
    model = masked.model
    swapped: list[tuple[nn.Module, str, nn.Parameter]] = []
    notes: list[str] = []
    config = model.config
    tie_saved = getattr(config, "tie_word_embeddings", None)
    head = get_path(model, masked.family.head)

    def swap(module, name, value):
        old = getattr(module, name)
        swapped.append((module, name, old))
        setattr(module, name, nn.Parameter(value.to(dtype=old.dtype, device=old.device), requires_grad=False))

    try:
        for p in patches:
            t = p.matrix()
            if p.point is None:
                for path in masked.family.embeddings(model):
                    module = get_path(model, path)
                    if module.weight is head.weight:  # tied to the LM head: the head keeps the original
                        swap(head, "weight", head.weight.detach().clone())
                        config.tie_word_embeddings = False
                        notes.append(f"untied {masked.family.head} from {path}")
                    for name, value in _folded_params(module, t, None).items():
                        swap(module, name, value)
                notes.append(f"blocks {p.start}-{p.end}: full map folded into the embeddings")
            else:
                module = get_path(masked.blocks[p.start - 1], p.point.module)
                for name, value in _folded_params(module, t, p.point).items():
                    swap(module, name, value)
                kind = "per-channel scale" if p.diagonal else "full map"
                notes.append(f"blocks {p.start}-{p.end}: {kind} folded into block {p.start - 1} {p.point.module}")
        yield notes
    finally:
        for module, name, old in reversed(swapped):
            setattr(module, name, old)
        if tie_saved is not None:
            config.tie_word_embeddings = tie_saved
