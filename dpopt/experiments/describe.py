"""What a compare/study report says about itself: the settings and the machine behind its numbers.

A report read months later, or on another machine, must say which model (and which exact
weights: the identity hash, the studies' fingerprints), which data and how much of it, which
search settings, which software and hardware, and how long it took; otherwise its numbers
cannot be reproduced or even compared. It must not print the path of the machine it was
made on: that says nothing to a reader and leaks a private folder layout. So every path and
storage URL goes through :func:`redact` (relative to the working folder, or the file name).

:func:`describe` gathers the rows; the report builders take them as ``about=`` and show them
as the table at the top.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

from .intervals import above_chance, accuracy_estimate, format_score

PACKAGES = ("dpopt", "torch", "transformers", "optuna")


# --- paths and storage URLs ----------------------------------------------------------------------------
def relative_path(path: str | os.PathLike, start: str | os.PathLike | None = None) -> str:
    """``path`` relative to ``start`` (the working folder) when it lies under it; else its name alone."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        return str(p)
    base = Path(start if start is not None else os.getcwd()).resolve()
    try:
        return str(p.resolve().relative_to(base))
    except ValueError:
        return p.name


def redact(ref: object, start: str | os.PathLike | None = None) -> str:
    """A storage URL or a path as a report may print it: no absolute path, no password.

    ``sqlite:////abs/runs/x.db`` -> ``sqlite:///runs/x.db`` (relative to ``start``) or
    ``sqlite:///x.db``; ``journal:/abs/x.log`` likewise; ``postgresql://user:pw@host/db`` ->
    ``postgresql://host/db``; a plain path -> :func:`relative_path`; anything else as given.
    """
    if ref is None:
        return "none"
    text = str(ref)
    if text.startswith("sqlite:///"):
        rest = text[len("sqlite:///"):]
        return "sqlite:///" + (relative_path(rest, start) if rest and rest != ":memory:" else rest)
    if text.startswith("journal:"):
        return "journal:" + relative_path(text[len("journal:"):], start)
    if "://" in text:
        parts = urlsplit(text)
        host = parts.hostname or ""
        netloc = host + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    if text.startswith(("/", "~")) or re.match(r"^[A-Za-z]:[\\/]", text):
        return relative_path(text, start)
    return text


_ABSOLUTE = re.compile(r"journal:[^\s;,'\"()]+|[A-Za-z][\w+.-]*://[^\s;,'\"()]+|(?<![\w.:/~])~?/[^\s;,'\"()]+")


def redact_text(text: str, start: str | os.PathLike | None = None) -> str:
    """``text`` with every absolute path (or sqlite/journal URL over one) in it redacted."""
    return _ABSOLUTE.sub(lambda m: redact(m.group(0), start), text)


# --- the machine and the software -------------------------------------------------------------------------
def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in PACKAGES:
        try:
            out.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            out.append(f"{name} (not installed)")
    return ", ".join(out)


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo, else what the platform says) and its core count."""
    name = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "unknown"
    return f"{name} ({os.cpu_count() or '?'} cores)"


def gpu_name(device) -> str:
    """The accelerator the model runs on, or 'none (CPU)'."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return "none (CPU)" if device.type == "cpu" else device.type


# --- the model and its data -------------------------------------------------------------------------------
def model_name(lm) -> str:
    """A zoo name or hub id as given; a local folder or file by its name alone."""
    source = str(lm.spec or lm.source or "")
    return redact(source) if Path(source).expanduser().exists() or source.startswith(("/", "~")) else source


def identity_hash(lm) -> str:
    """One short hash of the model's identity (config, weight bytes, tokenizer)."""
    ident = lm.identity()
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{digest} ({ident.get('type')}, weights {ident.get('weights')})"


def _settings(settings: Mapping[str, Any]) -> str:
    return ", ".join(f"{k.replace('_', '-')} {v}" for k, v in settings.items() if v is not None) or "defaults"


def data_line(evaluator) -> str:
    """Which data and how much of it one evaluator scores."""
    from ..data import DEFAULT_TEXT
    from ..objectives import DEFAULT_TASKS

    obj, prob = evaluator.objective, evaluator.problem
    batches = list(obj.batches(None))
    where = ""
    if prob is not None:
        ref = (prob.tasks or DEFAULT_TASKS) if obj.data_kind == "mc" else (prob.data or DEFAULT_TEXT)
        where = f"{redact(ref)} ({prob.split} split, data seed {prob.data_seed}): "
    if obj.data_kind == "mc":
        return where + f"{evaluator.full_fidelity} questions"
    seqs = sum(int(b.input_ids.shape[0]) for b in batches)
    seq_len = int(batches[0].input_ids.shape[1]) if batches else 0
    return where + f"{evaluator.full_fidelity} tokens in {seqs} sequences of {seq_len}"


def dense_accuracy(evaluator):
    """The dense model's accuracy on the evaluator's questions as an :class:`.intervals.Estimate`
    (Wilson interval, chance level); None for an objective other than ``acc``. Whether it carries
    any signal is :func:`.intervals.above_chance` of it."""
    chance = evaluator.objective.chance if evaluator.objective.name == "acc" else None
    if chance is None:
        return None
    return accuracy_estimate(evaluator.dense_value(), evaluator.full_fidelity, chance)


def accuracy_line(evaluator) -> str | None:
    """The dense model's accuracy on the questions searched, with its interval and the chance
    level; "no signal" when it is not clearly above chance. None for other objectives."""
    est = dense_accuracy(evaluator)
    if est is None:
        return None
    verdict = "clearly above chance" if above_chance(est) else "no signal (not clearly above chance)"
    return f"dense {format_score(est)} over {est.n} questions, chance {est.chance:.3g}: {verdict}"


# --- the rows ---------------------------------------------------------------------------------------------
def describe(lm, evaluators, *, constraint=None, algos: Sequence[str] = (), seeds: int | None = None,
             budget: int | None = None, seconds: float | None = None, algo_options: Mapping[str, dict] | None = None,
             heldout: Sequence[str] = (), storage: str | None = None, wall_seconds: float | None = None,
             extra: Mapping[str, object] | None = None) -> dict[str, str]:
    """The rows of the table at the top of a report, in the order shown.

    ``evaluators``: the calibration evaluator, or {objective: evaluator} for a study. Call it
    after the grids: an accuracy objective's row scores the dense model if no run did.
    ``extra``: rows of the caller's own, added before the machine rows.
    """
    evs = dict(evaluators) if isinstance(evaluators, Mapping) else {evaluators.metric: evaluators}
    first = next(iter(evs.values()))
    rows: dict[str, str] = {"model": model_name(lm), "model identity": identity_hash(lm),
                            "blocks": str(lm.n_blocks)}
    space = first.units
    rows["units"] = f"{space.n_units} {space.kind}{'s' if space.n_units != 1 else ''}"
    if constraint is not None:
        k = str(constraint.k) if constraint.k == constraint.k_max else f"{constraint.k}:{constraint.k_max}"
        rows["removed (K)"] = k + (f", protected {list(constraint.protect)}" if constraint.protect else "")
    for name, ev in evs.items():
        rows[f"{name}: data"] = data_line(ev)
        rows[f"{name}: options"] = _settings(ev.objective.settings())
        acc = accuracy_line(ev)
        if acc is not None:
            rows[f"{name}: accuracy signal"] = acc
        if ev.fingerprint is not None:
            rows[f"{name}: fingerprint"] = ev.fingerprint.short
    if heldout:
        rows["held-out objectives"] = ", ".join(heldout) + " (eval split)"
    if algos:
        rows["searchers"] = ", ".join(algos)
    rows["searcher options"] = "; ".join(f"{a}: {_settings(o)}" for a, o in (algo_options or {}).items() if o) or "defaults"
    if budget is not None or seconds is not None:
        rows["budget"] = " and ".join(x for x in (f"{budget} evaluations per run" if budget is not None else "",
                                                  f"{seconds:g} s per run" if seconds is not None else "") if x)
    if seeds is not None:
        rows["seeds"] = str(seeds)
    if storage is not None:
        rows["storage"] = redact(storage)
    rows.update({k: redact_text(str(v)) for k, v in (extra or {}).items()})
    rows["dtype"] = str(lm.masked.dtype).replace("torch.", "")
    rows["versions"] = versions()
    rows["CPU"] = cpu_name()
    rows["GPU"] = gpu_name(lm.masked.device)
    if wall_seconds is not None:
        rows["wall time"] = f"{wall_seconds:.1f} s"
    return rows


def about_rows(about: Mapping[str, object]) -> list[list[str]]:
    """The ``about`` mapping as table rows, every value with its absolute paths redacted."""
    return [[str(k), redact_text(str(v))] for k, v in about.items()]
