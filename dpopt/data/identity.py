"""A data set's identity for the study fingerprint: what it holds, never how its path was spelled.

A value depends on the text or questions read, so a local file enters by the SHA-256 of its
bytes (and the reader its suffix picks: the same bytes read as .txt and as .jsonl are other
items), a ``save_to_disk`` folder by every file in it, a zoo set by the package and version
it ships in (a published version never changes), and an ``hf:`` set, which the local
Hugging Face cache may hold at another revision tomorrow, by the rows it loads now. Nothing
here fetches: a zoo name is known from the registry alone.

The spec is resolved in the order :func:`dpopt.data.load_data` resolves it (``hf:``, then a
zoo name, then a path), so the identity always describes what the objective reads.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..record.fingerprint import file_sha256, folder_sha256
from .types import MCData, TextData
from .zoo import DATASETS

_DIGEST = 16  # hex characters kept: one readable word in a refusal, 64 bits against a chance match


def _items_sha256(data: TextData | MCData) -> str:
    if isinstance(data, TextData):
        items = ["text", data.documents]
    else:
        items = ["mc", [[q.context, q.choices, q.gold] for q in data.questions]]
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode("utf-8", "surrogatepass")).hexdigest()


def data_identity(spec: str | None) -> dict | str | None:
    """What the study fingerprint records for ``--data``/``--tasks`` ``spec``.

    ``{"zoo": name, "package": "pkg==version"}``, ``{"file": "txt"|"jsonl", "sha256": ...}``,
    ``{"saved": "folder", "sha256": ...}`` or ``{"hf": "NAME[:CONFIG][:SPLIT]", "sha256": ...}``;
    None for no data; the spec itself when it names nothing that exists (loading it then
    fails with the user's error, so no value is ever recorded under it).
    """
    if spec is None:
        return None
    spec = spec.strip()
    if spec.startswith("hf:"):
        from . import readers

        return {"hf": spec[len("hf:"):], "sha256": _items_sha256(readers._load_hf(spec))[:_DIGEST]}
    if spec in DATASETS:
        entry = DATASETS.get(spec)
        return {"zoo": spec, "package": f"{entry.package}=={entry.version}"}
    path = Path(spec).expanduser()
    if path.is_dir():
        return {"saved": "folder", "sha256": folder_sha256(path)[:_DIGEST]}
    if path.is_file():
        return {"file": path.suffix.lower().lstrip("."), "sha256": file_sha256(path)[:_DIGEST]}
    return spec
