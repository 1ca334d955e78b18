"""Read a GGUF file into a transformers model (dequantized) and its tokenizer."""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError, one_line as _one_line
from .export import strip_quantization


def load_gguf(path: Path, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(path.parent), path.name
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except Exception as exc:  # the gguf reader raises many kinds on a bad file
        raise UserError(f"cannot load GGUF file {path}: {_one_line(exc)}") from None
    strip_quantization(model)
    return model, tok
