"""What decides a mask's value, hashed: two runs may share values iff their fingerprints are equal."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Fingerprint:
    """Everything that changes a mask's value, hashed; two runs may share values iff equal."""

    settings: dict[str, Any]

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.settings, sort_keys=True, default=str).encode()).hexdigest()

    @property
    def short(self) -> str:
        return self.digest[:8]

    def differences(self, other: dict[str, Any]) -> list[str]:
        """``key: theirs -> ours`` for every setting that differs (nested dicts flattened)."""
        mine, theirs = _flatten(self.settings), _flatten(other)
        out = []
        for key in sorted(set(mine) | set(theirs)):
            if mine.get(key) != theirs.get(key):
                out.append(f"{key} {_short(theirs.get(key))} (study) vs {_short(mine.get(key))} (now)")
        return out


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _short(v: Any) -> str:
    text = json.dumps(v, default=str) if not isinstance(v, str) else v
    return text if len(text) <= 24 else text[:12] + "…"
