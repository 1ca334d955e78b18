"""Turn a ``--model`` argument into a loaded model and tokenizer.

Accepted: a zoo name, a local checkpoint folder, a ``.gguf`` file, or a hub id that is
already in the local Hugging Face cache (nothing is downloaded at run time). Every failure
a user can cause becomes a one-line :class:`UserError`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError, one_line as _one_line
from .export import strip_quantization
from .gguf_io import load_gguf

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown --device {device!r}; use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available")
    return dev


def resolve_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise UserError(f"unknown --dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _folder_tokenizer(path: Path, model):
    """The folder's tokenizer; for a bare random-init checkpoint, a byte-level stand-in.

    Checkpoints built from a config for experiments often come without a tokenizer. Bytes
    are valid token ids for any vocabulary of 257 or more, so such a model can still be
    searched; smaller vocabularies cannot be fed text and are refused.
    """
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        vocab = getattr(model.config.get_text_config(), "vocab_size", 0) or 0
        if vocab < 257:
            raise UserError(f"cannot load a tokenizer from {path}: {_one_line(exc)}") from None
        import sys

        from .tiny import tiny_tokenizer

        print(f"dpopt: {path} has no tokenizer; using a byte-level one (token ids 0..256)", file=sys.stderr)
        return tiny_tokenizer()


def check_model_ref(spec: str) -> None:
    """Refuse a ``--model`` that names nothing loadable, before anything loads (what
    :func:`load_model` would refuse first, without reading weights)."""
    from .zoo import ZOO

    path = Path(spec).expanduser()
    if spec in ZOO:
        return
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise UserError(f"--model {spec}: a file must be a .gguf model")
        return
    if path.is_dir():
        if not (path / "config.json").exists() and len(list(path.glob("*.gguf"))) != 1:
            raise UserError(f"--model {spec}: folder has no config.json (nor a single .gguf)")
        return
    if "/" in spec and not spec.startswith((".", "/", "~")):
        return  # a hub id: only the local cache can tell, at load
    raise UserError(
        f"unknown model {spec!r}: give a zoo name ({', '.join(ZOO.names())}), a checkpoint folder, a .gguf file or a cached hub id"
    )


def load_model(spec: str, device: str = "auto", dtype: str = "float32"):
    """Return ``(model, tokenizer, source, weights_path)``; the model is in eval mode on ``device``.

    ``weights_path`` is the folder or GGUF file the weights came from (the model's identity
    in the study fingerprint hashes those files rather than the tensors).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .zoo import ZOO

    torch_dtype = resolve_dtype(dtype)
    dev = resolve_device(device)
    path = Path(spec).expanduser()
    if spec in ZOO:
        folder = ZOO.get(spec).converted_dir()
        weights = folder
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype)
        tok = AutoTokenizer.from_pretrained(folder)
    elif path.is_file():
        if path.suffix.lower() != ".gguf":
            raise UserError(f"--model {spec}: a file must be a .gguf model")
        model, tok = load_gguf(path, torch_dtype)
        weights = path
    elif path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        weights = path
        if not (path / "config.json").exists() and len(ggufs) == 1:
            model, tok = load_gguf(ggufs[0], torch_dtype)
        elif not (path / "config.json").exists():
            raise UserError(f"--model {spec}: folder has no config.json (nor a single .gguf)")
        else:
            try:
                model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
            except Exception as exc:
                raise UserError(f"cannot load model from {path}: {_one_line(exc)}") from None
            tok = _folder_tokenizer(path, model)
    elif "/" in spec and not spec.startswith((".", "/", "~")):
        try:  # a hub id, only from the local cache: no hub is reachable
            model = AutoModelForCausalLM.from_pretrained(spec, dtype=torch_dtype, local_files_only=True)
            tok = AutoTokenizer.from_pretrained(spec, local_files_only=True)
            from huggingface_hub import snapshot_download

            weights = snapshot_download(spec, local_files_only=True)
        except Exception:
            raise UserError(f"hub model {spec!r} is not in the local Hugging Face cache (no hub is reachable)") from None
    else:
        raise UserError(
            f"unknown model {spec!r}: give a zoo name ({', '.join(ZOO.names())}), a checkpoint folder, a .gguf file or a cached hub id"
        )
    strip_quantization(model)
    model.to(dev).eval()
    if tok is not None and tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model, tok, spec, str(weights)
