"""Files a run attaches to its study: the best-so-far plot, in Optuna's artifact store.

Optuna keeps artifacts outside the storage; for a file storage (SQLite, journal) dpopt puts
them in a folder beside it (``<file>.artifacts/``), which ``dpopt dashboard`` finds, so the
study page shows the plot. A server storage (PostgreSQL) has no natural place beside it:
there the plot is skipped unless ``DPOPT_ARTIFACTS`` names a folder.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence


def artifact_dir(storage_url: str) -> Path | None:
    if os.environ.get("DPOPT_ARTIFACTS"):
        return Path(os.environ["DPOPT_ARTIFACTS"]).expanduser()
    if storage_url.startswith("journal:"):
        path = storage_url[len("journal:"):]
    elif storage_url.startswith("sqlite:///") and storage_url[len("sqlite:///"):] not in ("", ":memory:"):
        path = storage_url[len("sqlite:///"):]
    else:
        return None
    return Path(path).expanduser().with_name(Path(path).name + ".artifacts")


def artifact_store(storage_url: str, create: bool = False):
    """Optuna's file artifact store for this storage, or None where it has no folder."""
    from optuna.artifacts import FileSystemArtifactStore

    folder = artifact_dir(storage_url)
    if folder is None or (not create and not folder.is_dir()):
        return None
    folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(folder))


def upload_best_so_far(storage_url: str, study, history: Sequence[tuple[int, float]], metric: str,
                       title: str) -> str | None:
    """Plot best value against evaluations asked and attach it to the study; returns the artifact id."""
    store = artifact_store(storage_url, create=True)
    if store is None or not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.artifacts import upload_artifact

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    xs, ys = zip(*history)
    ax.step(xs, ys, where="post")
    ax.set_xlabel("evaluations asked")
    ax.set_ylabel(f"best {metric} so far")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "best_so_far.png"
        fig.savefig(path)
        plt.close(fig)
        return upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=study,
                               mimetype="image/png")
