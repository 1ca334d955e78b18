"""The two kinds of data an objective reads, and the checks every source of them shares.

Calibration text is a list of documents; multiple-choice data is a list of questions with
their choices and gold answer, validated once here so a bad record names its file and line.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from ..errors import UserError

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


def question_prompt(question: str) -> str:
    return f"Question: {question.strip()}\nAnswer:"
