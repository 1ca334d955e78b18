"""What decides a mask's value, hashed: two runs may share values iff their fingerprints are equal.

The settings name contents, never paths: a data file or a weight file enters by the SHA-256
of every byte (:func:`file_sha256`), so a file rewritten under the same name is another
setting and one file reached by two path strings is the same one. Hashing a checkpoint is
seconds per GB, so each file's digest is kept in ``$DPOPT_CACHE/fingerprint/files.json``
keyed by its resolved path, size, mtime and ctime: a second run costs a ``stat`` per file.
The ctime is in the key because no user-space call can set it back, so a file written in
place whose size and mtime were then restored is still hashed again. A digest is remembered
only once the file has been still for ``_RACY_NS`` before it was read: a write landing in the
same timestamp tick as the one before it leaves the stat unchanged (git's "racy clean").
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_CHUNK = 8 << 20
_RACY_NS = 2_000_000_000  # wider than any file system's timestamp tick, NFS's included


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
    text = " ".join(text.split())  # the refusal is one line, whatever a setting holds
    return text if len(text) <= 24 else text[:12] + "…"


# --- contents by their bytes, each file hashed once -----------------------------------------------

def _sha256_of_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _stat_key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _cache_file() -> Path:
    from ..downloads import cache_dir

    return cache_dir("fingerprint") / "files.json"


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(path: Path, key: str, entry: list) -> None:
    """Add one entry, dropping those whose file is gone or changed; a lost race only costs a rehash."""
    entries = _read_cache(path)
    entries[key] = entry
    for name in list(entries):
        try:
            if _stat_key(os.stat(name)) != entries[name][:4]:
                del entries[name]
        except (OSError, TypeError, ValueError):
            del entries[name]
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".files-", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(entries, fh)
        os.replace(tmp, path)
    except OSError:  # a read-only cache: the digest is still right, only not remembered
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of every byte of ``path``; remembered per (resolved path, size, mtime, ctime, inode)."""
    real = Path(path).resolve()
    before = _stat_key(os.stat(real))
    try:
        cache = _cache_file()
    except OSError:
        cache = None
    if cache is not None:
        hit = _read_cache(cache).get(str(real))
        if isinstance(hit, list) and hit[:4] == before and len(hit) == 5:
            return hit[4]
    digest = _sha256_of_file(real)
    still = _stat_key(os.stat(real)) == before and time.time_ns() - max(before[1], before[2]) > _RACY_NS
    if cache is not None and still:  # not written to while read, nor recently enough to hide a write
        _write_cache(cache, str(real), before + [digest])
    return digest


def folder_sha256(folder: str | os.PathLike) -> str:
    """One digest of every file under ``folder``: their names relative to it and their bytes."""
    root = Path(folder).resolve()
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(root).as_posix()}\0{file_sha256(f)}\n".encode())
    return h.hexdigest()
