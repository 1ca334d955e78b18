"""What a search returns: one object, from which ``result.json`` is written.

Values are raw, as the objective reports them (perplexity, KL, accuracy) with the
objective's direction beside them; nothing here is signed for minimising.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError


@dataclass
class Result:
    """One run's answer, its raw values with their direction, and where it came from (``result.json``)."""

    removed_layers: list[int]
    kept_layers: list[int]
    fitness: float
    dense_fitness: float
    objective: str
    direction: str
    algo: str
    evaluations: int
    seed: int
    model: str
    n_blocks: int
    remove: int | list[int]  # K, or [MIN, MAX] for a range
    protect: list[int]
    wall_seconds: float
    history: list[tuple[int, float]]  # (evaluations asked, best value so far)
    fingerprint: str
    settings: dict[str, Any]  # what the fingerprint hashes: data, split, data seed, tokens, kl_topk, ...
    data: str | None = None
    split: str = "calib"
    data_seed: int = 0
    kl_topk: int | None = None
    study: str | None = None
    storage: str | None = None
    run: str | None = None
    interrupted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    # what was removed by unit name: ``block.I`` for whole blocks, ``attn.I``/``mlp.I`` for sub-layers
    # (``removed_layers`` lists only the blocks dropped whole); ``units`` names the search space
    removed_units: list[str] = field(default_factory=list)
    units: str = "block"
    max_params: float | None = None  # --max-params, in parameters
    max_latency: float | None = None  # --max-latency, ms per token as the latency cost measures it
    minimize: list[str] = field(default_factory=list)  # costs minimised beside the objective
    pareto: dict[str, Any] | None = None  # the front (what pareto.json holds) of a multi-objective run
    # the objective's preparation before the search (data tokenized, dense targets computed),
    # beside ``wall_seconds``, the search's own time; None for an evaluator built elsewhere
    prepare_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["history"] = [list(h) for h in self.history]
        if not self.interrupted:
            d.pop("interrupted")
        for key in ("kl_topk", "max_params", "max_latency", "pareto", "prepare_seconds"):
            if d[key] is None:
                d.pop(key)
        if not self.minimize:
            d.pop("minimize")
        return d

    def write_json(self, path: str | os.PathLike) -> None:
        """Atomically, so an interrupted run never leaves half a result.json."""
        write_json(path, self.to_dict())


def write_json(path: str | os.PathLike, data: dict) -> None:
    """Write beside the target, flush it to disk, then rename over it: never half a file.

    The rename replaces whatever the name points at, so a target that exists and is not a
    regular file (``/dev/full``, a pipe, a folder) is refused rather than replaced; a write
    that fails (a full disk, caught at flush or fsync, before the rename) removes the
    temporary file. Either is one line (UserError)."""
    p = Path(path).expanduser()
    p = p.resolve() if p.is_symlink() else p  # write the file a link names, keep the link
    if p.exists() and not p.is_file():
        raise UserError(f"{path} is not a regular file: give a file path to write the JSON to")
    tmp = p.with_name(f".{p.name}.tmp")
    try:
        with open(tmp, "w") as fh:
            fh.write(json.dumps(data, indent=2) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
