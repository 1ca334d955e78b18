"""Readers for local files and Hugging Face data sets, each failure a one-line UserError."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import UserError
from .types import MCData, MCQuestion, TextData, make_question, question_prompt


# --- reading files ------------------------------------------------------------------------

def read_text(path: Path) -> str:
    """Read UTF-8 (a BOM is tolerated), turning every failure into a one-line UserError."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"data file {path} does not exist") from None
    except OSError as exc:
        raise UserError(f"cannot read data file {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"data file {path} is not UTF-8 text (bad byte at offset {exc.start})") from None
    if not text.strip():
        raise UserError(f"data file {path} is empty")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def iter_jsonl(path: Path) -> Iterator[tuple[str, dict]]:
    """Yield ``("file:line", record)``; the location is what every later error names."""
    for lineno, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}")
        yield where, record


def _split_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.split(r"\n[ \t]*\n", text) if b.strip()]


# --- records (jsonl lines, Hugging Face rows) -> TextData | MCData ------------------------

def _record_kind(record: dict, where: str) -> str:
    if "text" in record:
        return "text"
    if ("question" in record or "context" in record) and "choices" in record:
        return "mc"
    raise UserError(
        f"{where}: record is neither text (a 'text' field) nor multiple-choice "
        f"('question' or 'context', 'choices', 'gold' or 'answer'); fields: {sorted(record)}"
    )


def _text_of(record: dict, where: str) -> str:
    text = record.get("text")
    if not isinstance(text, str):
        raise UserError(f"{where}: field 'text' is missing or not a string")
    return text.strip()


def _question_of(record: dict, where: str) -> MCQuestion:
    if isinstance(record.get("context"), str):
        context = record["context"]
    elif isinstance(record.get("question"), str):
        context = question_prompt(record["question"])
    else:
        raise UserError(f"{where}: field 'question' or 'context' is missing or not a string")
    choices = record.get("choices")
    if not isinstance(choices, (list, tuple)):
        raise UserError(f"{where}: field 'choices' is missing or not a list")
    gold = record["gold"] if record.get("gold") is not None else record.get("answer")
    return make_question(context, choices, gold, where)


def _from_records(name: str, records: Iterable[tuple[str, dict]], source: str) -> TextData | MCData:
    """The first record fixes the kind; every later record must match it."""
    kind, docs, questions = None, [], []
    for where, record in records:
        kind = kind or _record_kind(record, where)
        if kind == "text":
            text = _text_of(record, where)
            if text:
                docs.append(text)
        else:
            questions.append(_question_of(record, where))
    if not docs and not questions:
        raise UserError(f"data {source} holds no documents or questions")
    return TextData(name, docs) if kind == "text" else MCData(name, questions)


def _load_txt(path: Path, name: str) -> TextData:
    docs = _split_blocks(read_text(path))
    return TextData(name, docs)  # read_text already refused a blank file


def _load_jsonl(path: Path, name: str) -> TextData | MCData:
    return _from_records(name, iter_jsonl(path), str(path))


# --- Hugging Face datasets (saved folders and the offline hub cache) ----------------------

def _rows(ds: Any, source: str) -> Iterator[tuple[str, dict]]:
    """Flatten a Dataset or DatasetDict (splits in name order) into located records."""
    parts = [(k, ds[k]) for k in sorted(ds)] if hasattr(ds, "keys") else [(None, ds)]
    for split, part in parts:
        label = f"{source}[{split}]" if split else source
        for i, row in enumerate(part):
            yield f"{label} row {i}", dict(row)


def _is_saved_dataset(folder: Path) -> bool:
    return any((folder / f).exists() for f in ("state.json", "dataset_dict.json"))


def _load_saved(folder: Path, name: str) -> TextData | MCData:
    if not _is_saved_dataset(folder):
        raise UserError(f"{folder} is a folder but not one written by datasets' save_to_disk")
    import datasets

    try:
        ds = datasets.load_from_disk(str(folder))
    except Exception as exc:  # corrupt or foreign folder: the user's to fix
        raise UserError(f"cannot load saved data set {folder}: {exc}") from None
    return _from_records(name, _rows(ds, str(folder)), str(folder))


def _parse_hf_spec(spec: str) -> tuple[str, str | None, str | None]:
    parts = spec[len("hf:"):].split(":")
    if not parts[0] or len(parts) > 3:
        raise UserError(f"data spec {spec!r} is not of the form hf:NAME[:CONFIG][:SPLIT]")
    parts += [None] * (3 - len(parts))
    return parts[0], parts[1] or None, parts[2] or None


def _load_hf(spec: str) -> TextData | MCData:
    """Offline on purpose: the hub is unreachable here, so only the local HF cache counts."""
    from unittest import mock

    import datasets
    import datasets.config
    import huggingface_hub.constants

    name, config, split = _parse_hf_spec(spec)
    try:
        with mock.patch.object(datasets.config, "HF_HUB_OFFLINE", True), \
                mock.patch.object(huggingface_hub.constants, "HF_HUB_OFFLINE", True):
            ds = datasets.load_dataset(name, config, split=split)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot load {spec} from the local Hugging Face cache (offline): {first}") from None
