"""Export a pruned model as one GGUF file that llama.cpp and the tools built on it load.

From a GGUF source the kept tensors are copied byte for byte, so the file keeps the
quantization it arrived with: re-quantizing dequantized weights would change them, and the
pruned file would no longer be the masked model dpopt measured. Blocks are renumbered
``blk.0..n-1``, and every metadata entry that has one value per block is cut to the kept
blocks: ``{arch}.block_count``, any ``{arch}.*`` array as long as the block count (per-layer
head counts, feed-forward sizes, sliding-window patterns), and a sliding-window pattern that
llama.cpp would otherwise derive from the layer index (Gemma3 makes every sixth layer global
when the file names no pattern): after removals that rule would pick other layers, so the
kept layers' pattern is written out as an explicit array. A file whose header disagrees with
the kept tensors does not load (llama.cpp refuses a missing ``blk.N`` tensor and an array of
the wrong length), which is why only architectures listed in :data:`GGUF_ARCHS`, whose
per-layer metadata is known, are exported.

A removed attention or MLP sub-layer of a kept block is written as its output projection
with every byte zero: each ggml type, quantized or not, decodes all-zero bytes to 0 (the
block scales are 0), so the branch adds exactly 0, as masked execution does.

The file is written to a temporary sibling and renamed, so an interrupted export leaves
nothing behind under the target name.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import UserError
from ..registry import Registry
from .gguf_io import _field, atomic_write, gguf_writer


@dataclass(frozen=True)
class GGUFArch:
    """What the exporter must know about one ``general.architecture`` to keep its header true."""

    name: str
    # llama.cpp's implied sliding-window period when the file has a window and no pattern key:
    # layer il is windowed unless il % period == period - 1 (None: no implied pattern)
    swa_period: int | None = None
    # sub-layer unit kind -> the tensors inside blk.N zeroed when that sub-layer is removed
    zero: dict[str, tuple[str, ...]] = field(default_factory=lambda: {
        "attn": ("attn_output.weight", "attn_output.bias"), "mlp": ("ffn_down.weight", "ffn_down.bias")})


GGUF_ARCHS: Registry[GGUFArch] = Registry("GGUF architecture")
for _name, _period in (("llama", None), ("qwen2", None), ("qwen3", None), ("phi3", None), ("gpt2", None),
                       ("gptneox", None), ("granite", None), ("smollm3", None), ("gemma", None),
                       ("gemma2", 2), ("gemma3", 6), ("olmo2", 4)):
    GGUF_ARCHS.register(_name)(GGUFArch(_name, _period))

_BLOCK_TENSOR = re.compile(r"^blk\.(\d+)\.(.+)$")


def gguf_source(lm) -> Path | None:
    """The GGUF file ``lm``'s weights came from (a zoo model's too), or None for a transformers source."""
    from .zoo import ZOO

    if lm.spec in ZOO:
        return ZOO.get(lm.spec).gguf_path()
    path = Path(lm.path) if lm.path else None
    if path is not None and path.is_file() and path.suffix.lower() == ".gguf":
        return path
    if path is not None and path.is_dir() and not (path / "config.json").exists():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ggufs[0]
    return None


def prepare_out_file(out: str | os.PathLike, force: bool = False) -> Path:
    """Check ``out`` before any work, so a bad path fails fast and nothing is half-written."""
    out = Path(out).expanduser()
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give a file name such as {out / 'pruned.gguf'}")
    if out.exists() and not force:
        raise UserError(f"--out {out} exists (pass --force to replace it)")
    probe = out.parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"--out {out} is not writable")
    return out


def open_reader(path: Path):
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:  # the reader raises many kinds on a bad file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"cannot read GGUF file {path}: {first}") from None
    arch = _field(reader, "general.architecture")
    if arch not in GGUF_ARCHS:
        raise UserError(f"GGUF architecture {arch!r} of {path} is not one the exporter knows; "
                        f"known: {', '.join(GGUF_ARCHS.names())}")
    if (_field(reader, "split.count") or 1) > 1:
        raise UserError(f"{path} is one shard of a split GGUF; merge it first (llama-gguf-split --merge)")
    return reader, GGUF_ARCHS.get(arch)


def rewritten_metadata(reader, arch: GGUFArch, kept: tuple[int, ...], extra: dict) -> list[tuple]:
    """Every key of the source as ``(key, value, type, sub_type)``, per-layer entries cut to ``kept``."""
    import gguf

    n = _field(reader, f"{arch.name}.block_count")
    window_key = gguf.Keys.Attention.SLIDING_WINDOW.format(arch=arch.name)
    pattern_key = gguf.Keys.Attention.SLIDING_WINDOW_PATTERN.format(arch=arch.name)
    out: list[tuple] = []
    has_pattern = False
    for f in reader.fields.values():
        key = f.name
        if key.startswith(("GGUF.", "split.", "dpopt.")) or key == gguf.Keys.General.ARCHITECTURE:
            continue  # written by the writer itself; a split source was refused; provenance is rewritten
        vtype = f.types[0]
        # an array's item type from its header: ``types`` has none for an empty array
        sub = gguf.GGUFValueType(int(f.parts[3][0])) if vtype == gguf.GGUFValueType.ARRAY else None
        value = f.contents()
        if key == f"{arch.name}.block_count":
            value = len(kept)
        elif key == pattern_key and sub is None:  # a period: write the kept layers' explicit pattern
            value, vtype, sub = _pattern(int(value), kept), gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.BOOL
        elif sub is not None and key.startswith(f"{arch.name}.") and len(value) == n:
            value = [value[i] for i in kept]
        has_pattern |= key == pattern_key
        out.append((key, value, vtype, sub))
    if not has_pattern and arch.swa_period and (_field(reader, window_key) or 0) > 0:
        out.append((pattern_key, _pattern(arch.swa_period, kept), gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.BOOL))
    for key, value in extra.items():
        out.append((key, *_typed(value)))
    return out


def _pattern(period: int, kept: Iterable[int]) -> list[bool]:
    """llama.cpp's ``set_swa_pattern(period)`` evaluated at the ORIGINAL layer indices of ``kept``."""
    return [period == 0 or i % period < period - 1 for i in kept]


def _typed(value) -> tuple:
    import gguf

    if isinstance(value, str):
        return value, gguf.GGUFValueType.STRING, None
    return int(value), gguf.GGUFValueType.UINT32, None


def pruned_tensors(reader, arch: GGUFArch, kept: tuple[int, ...], silenced: dict[int, frozenset[str]]):
    """``(name, tensor, zero)`` for every tensor the pruned file holds, in the source's order."""
    new_index = {old: new for new, old in enumerate(kept)}
    for t in reader.tensors:
        m = _BLOCK_TENSOR.match(t.name)
        if m is None:
            yield t.name, t, False
            continue
        old, rest = int(m.group(1)), m.group(2)
        if old not in new_index:
            continue
        zero = any(rest in arch.zero[kind] for kind in silenced.get(old, ()))
        yield f"blk.{new_index[old]}.{rest}", t, zero


def write_gguf(path: Path, arch: str, metadata: list[tuple], tensors: list[tuple[str, object, bool]],
               alignment: int | None, endianess) -> None:
    """Write one GGUF file: header, metadata, tensor infos, then each tensor's bytes (zeros where asked)."""
    writer = gguf_writer(path, arch, endianess=endianess)
    if alignment:
        writer.data_alignment = alignment
    for key, value, vtype, sub in metadata:
        writer.add_key_value(key, value, vtype, sub_type=sub)
    for name, t, _ in tensors:
        writer.add_tensor_info(name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _, t, zero in tensors:
        writer.write_tensor_data(np.zeros_like(t.data) if zero else t.data, tensor_endianess=endianess)
    writer.close()


def export_gguf_from_gguf(source: Path, plan, out: Path, provenance: dict) -> Path:
    """Write ``source`` without ``plan``'s dropped blocks, silenced sub-layers as zeroed projections."""
    reader, arch = open_reader(source)
    n = _field(reader, f"{arch.name}.block_count")
    if n != plan.n_blocks:
        raise UserError(f"{source} has {n} blocks but the loaded model has {plan.n_blocks}")
    kept = plan.kept()
    metadata = rewritten_metadata(reader, arch, kept, provenance)
    tensors = list(pruned_tensors(reader, arch, kept, plan.silenced))
    missing = [f"{k}.{b}" for b, kinds in plan.silenced.items() for k in kinds
               if not any(f"blk.{b}.{t}" in {x.name for x in reader.tensors} for t in arch.zero[k])]
    if missing:
        raise UserError(f"{source} has no output projection to zero for {', '.join(missing)}")
    alignment = _field(reader, "general.alignment")
    return atomic_write(out, lambda tmp: write_gguf(tmp, arch.name, metadata, tensors, alignment, reader.endianess))


def provenance(plan, source: str) -> dict:
    """The ``dpopt.*`` keys that say where a pruned file came from (llama.cpp ignores unknown keys)."""
    # comma-joined strings: GGUF has no empty array, and nothing removed is a valid export
    return {"dpopt.removed_layers": ",".join(map(str, plan.dropped)), "dpopt.removed_units": ",".join(plan.names()),
            "dpopt.original_block_count": plan.n_blocks, "dpopt.source": str(source)}


def export_gguf(lm, removed: Iterable[str], out: str | os.PathLike, force: bool = False,
                out_type: str | None = None) -> Path:
    """Write ``lm`` without the named units (``block.I``/``attn.I``/``mlp.I``) as the GGUF file ``out``.

    A GGUF source (a ``.gguf`` file or a zoo model) keeps its tensors' types; a transformers
    source is converted (:mod:`dpopt.models.gguf_convert`) at ``out_type`` (default f16).
    """
    from .units import plan_units

    plan = plan_units(lm.masked, removed)  # a bad unit name fails before anything is written
    if not plan.kept():
        raise UserError(f"cannot remove all {plan.n_blocks} blocks")
    out = prepare_out_file(out, force)
    source = gguf_source(lm)
    if source is not None:
        if out_type is not None:
            raise UserError("--gguf-type converts a transformers source; a GGUF source keeps its own tensor types")
        return export_gguf_from_gguf(source, plan, out, provenance(plan, lm.source))
    from .gguf_convert import export_gguf_from_transformers

    return export_gguf_from_transformers(lm, plan, out, out_type or "f16", provenance(plan, lm.source))


