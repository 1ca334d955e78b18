"""Shared fixtures: a char-level toy tokenizer and tiny random models of every family.

Nothing here downloads anything: the models are built from
:func:`dpopt.models.tiny.tiny_config` with random weights, the tokenizer maps characters
to ids below 128 so it fits every tiny vocabulary.
"""
from __future__ import annotations

import json
import os
import random

import pytest
import torch

from dpopt.evaluator import LoadedModel

# real services (PostgreSQL, Chromium): fail in CI when missing, skip elsewhere; see tests/services.py
from services import chromium, fresh_postgres_url, postgres_server, postgres_url  # noqa: E402,F401


class ToyTokenizer:
    """Char-level tokenizer: id = 2 + (ord(c) % 120); 0 = BOS, 1 = EOS = PAD."""

    eos_token_id = 1
    bos_token_id = 0
    pad_token_id = 1
    add_bos_token = False

    def __call__(self, text, add_special_tokens=False):
        ids = [2 + (ord(c) % 120) for c in text]
        if add_special_tokens:
            ids = [self.bos_token_id] + ids
        return {"input_ids": ids}

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(i - 2 + 32) if i >= 2 else "" for i in ids)

    def save_pretrained(self, folder):
        """Export writes the tokenizer beside the model; a tiny json file stands in for it."""
        path = os.path.join(str(folder), "toy_tokenizer.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"kind": "char", "offset": 2, "modulus": 120}, f)
        return (path,)


def make_tiny_lm(family: str, n_blocks: int = 6, seed: int = 0, vocab_size: int | None = None,
                 dtype: torch.dtype = torch.float32) -> LoadedModel:
    """A tiny random model of ``family`` wrapped as the evaluator and objectives expect it."""
    from transformers import AutoModelForCausalLM

    from dpopt.models.masked import MaskedModel
    from dpopt.models.tiny import tiny_config, tiny_model

    if vocab_size is None:
        model = tiny_model(family, n_blocks, seed=seed, dtype=dtype)
    else:
        torch.manual_seed(seed)
        config = tiny_config(family, n_blocks)
        config.vocab_size = vocab_size
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    return LoadedModel(model, ToyTokenizer(), MaskedModel(model), source=f"tiny-{family}")


def run_cli(args, capsys):
    """``dpopt ARGS`` in this process: (exit status, stdout, stderr); arguments may be paths or numbers."""
    from dpopt.cli import main

    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture
def toy_tokenizer() -> ToyTokenizer:
    return ToyTokenizer()


@pytest.fixture
def tiny_lm():
    """Factory fixture: ``tiny_lm(family, n_blocks=6, seed=0, vocab_size=None)``; each call builds a fresh model."""
    return make_tiny_lm


_WORDS = ("the cat sat on a mat while rain fell over old stone bridges and small boats drifted "
          "past quiet houses where people read books about rivers mountains birds and stars").split()


def make_documents(n_docs: int = 40, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(8, 30))).capitalize() + "." for _ in range(n_docs)]


def make_questions(n: int = 12, seed: int = 0):
    from dpopt.data import MCQuestion

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        context = "Question: " + " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 7))) + "?\nAnswer:"
        choices = [" " + " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(2, 4))]
        out.append(MCQuestion(context=context, choices=choices, gold=rng.randrange(len(choices))))
    return out


@pytest.fixture
def text_data():
    from dpopt.data import TextData

    return TextData("toy-text", make_documents())


@pytest.fixture
def mc_data():
    from dpopt.data import MCData

    return MCData("toy-mc", make_questions())


@pytest.fixture(scope="session")
def text_file(tmp_path_factory):
    """Eighty short numbered paragraphs as a .txt calibration file (modules may define their own)."""
    path = tmp_path_factory.mktemp("data") / "calib.txt"
    path.write_text("\n\n".join(f"Paragraph {i}: the quick brown fox number {i} jumps over {i * 7} lazy dogs."
                                for i in range(80)))
    return path


@pytest.fixture
def one_thread():
    """Tiny models: one torch thread is faster than two, and far faster on a loaded machine
    (a module takes it with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
