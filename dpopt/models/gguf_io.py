"""GGUF files in and out: a transformers model (dequantized) from a file, the header fields,
the writer and the write-then-rename every GGUF export goes through."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

import torch

from ..errors import UserError, one_line as _one_line
from .export import strip_quantization


def load_gguf(path: Path, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(path.parent), path.name
    try:
        # a pruned file's per-layer attention pattern
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype, config=gguf_config(path))
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except Exception as exc:  # the gguf reader raises many kinds on a bad file
        raise UserError(f"cannot load GGUF file {path}: {_one_line(exc)}") from None
    strip_quantization(model)
    return model, tok


def _field(reader, key: str):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def gguf_writer(path: Path, arch: str, **kw):
    """A ``GGUFWriter`` that also writes an empty array (a byte-level vocabulary without merges).

    The format allows length 0 and llama.cpp reads it; the ``gguf`` package's writer refuses it.
    """
    import gguf

    class Writer(gguf.GGUFWriter):
        def _pack_val(self, val, vtype, add_vtype, sub_type=None):
            if vtype == gguf.GGUFValueType.ARRAY and len(val) == 0:
                head = self._pack("I", vtype) if add_vtype else b""
                return head + self._pack("I", sub_type or gguf.GGUFValueType.STRING) + self._pack("Q", 0)
            return super()._pack_val(val, vtype, add_vtype, sub_type)

    return Writer(path, arch, **kw)


def atomic_write(out: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` on a temporary sibling of ``out``, then rename it onto ``out``."""
    tmp = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent)
        os.close(fd)
        tmp = Path(name)
        write(tmp)
        os.replace(tmp, out)
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()
    return out


def gguf_config(path: Path):
    """The ``transformers`` config of a GGUF file, with the layer types its header names.

    ``transformers`` derives sliding/full attention from a fixed period and ignores the
    per-layer ``sliding_window_pattern`` array a pruned file carries, so without this the
    reloaded model would window other layers than llama.cpp does. None: nothing to override.
    """
    import gguf
    from transformers import AutoConfig

    reader = gguf.GGUFReader(path)
    arch = _field(reader, gguf.Keys.General.ARCHITECTURE)
    pattern = _field(reader, gguf.Keys.Attention.SLIDING_WINDOW_PATTERN.format(arch=arch))
    if not isinstance(pattern, list):
        return None
    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    text = config.get_text_config()
    if getattr(text, "layer_types", None) is None or len(pattern) != len(text.layer_types):
        return None
    text.layer_types = ["sliding_attention" if swa else "full_attention" for swa in pattern]
    return config
