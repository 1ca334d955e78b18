"""`dpopt dashboard` end to end: a real search's study, served by optuna-dashboard, read back over HTTP and in Chromium.

The dashboard runs as the venv's own ``bin/dpopt`` with the venv's bin directory off PATH, as
``make`` runs it: finding optuna-dashboard must not depend on PATH.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from dpopt.cli import main
from dpopt.models.tiny import save_tiny_checkpoint
from services import screenshot

STUDY = "dash-study"


@pytest.fixture(scope="module")
def study_storages(tmp_path_factory):
    """One real genetic search recorded in SQLite, and the same study copied to a journal file."""
    import optuna

    root = tmp_path_factory.mktemp("dash")
    ck = root / "tiny-llama"
    save_tiny_checkpoint(ck, "llama", 8, seed=0)
    text = root / "calib.txt"
    text.write_text("\n\n".join(f"Paragraph {i}: a fox number {i} jumps over {i * 3} dogs." for i in range(40)))
    sqlite = f"sqlite:///{root}/studies.db"
    rc = main(["search", "--model", str(ck), "--algo", "genetic", "--objective", "ppl", "--data", str(text),
               "--remove", "2", "--budget", "16", "--tokens", "128", "--seq-len", "32", "--seed", "0",
               "--storage", sqlite, "--study", STUDY, "--output", str(root / "result.json"), "--no-progress"])
    assert rc == 0
    journal = root / "studies.journal"
    from dpopt.record.storage import open_storage

    optuna.copy_study(from_study_name=STUDY, from_storage=sqlite, to_storage=open_storage(f"journal:{journal}"))
    return {"sqlite": sqlite, "journal": f"journal:{journal}"}


def _dpopt_command() -> list[str]:
    exe = Path(sys.executable).parent / "dpopt"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "dpopt.cli"]


def _env_without_venv_on_path() -> dict:
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != venv_bin)
    repo = str(Path(__file__).resolve().parents[1])
    return dict(os.environ, PATH=path or "/usr/bin:/bin",
                PYTHONPATH=os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))


class Dashboard:
    """A running ``dpopt dashboard`` subprocess and the URL it printed."""

    def __init__(self, storage: str):
        self.proc = subprocess.Popen(_dpopt_command() + ["dashboard", "--storage", storage, "--port", "0"],
                                     env=_env_without_venv_on_path(), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        line = self.proc.stdout.readline().strip()  # blocks until the URL, or EOF if it died
        if not line.startswith("http://"):
            self.stop()
            raise AssertionError(f"dpopt dashboard printed {line!r}, stderr: {self.proc.stderr.read()[-2000:]}")
        self.url = line
        self.base = line.rsplit("/dashboard", 1)[0]

    def get_json(self, route: str):
        with urllib.request.urlopen(self.base + route, timeout=30) as r:
            return json.loads(r.read())

    def study_id(self, name: str) -> int:
        return next(s["study_id"] for s in self.get_json("/api/studies")["study_summaries"] if s["study_name"] == name)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()


@pytest.fixture(scope="module")
def sqlite_dashboard(study_storages):
    dash = Dashboard(study_storages["sqlite"])
    try:
        yield dash
    finally:
        dash.stop()
    assert dash.proc.poll() is not None


def _assert_api_matches_study(dash: Dashboard, storage: str) -> None:
    import optuna

    from dpopt.record.storage import open_storage

    study = optuna.load_study(study_name=STUDY, storage=open_storage(storage))
    detail = dash.get_json(f"/api/studies/{dash.study_id(STUDY)}")
    assert detail["name"] == STUDY
    assert detail["directions"] == [d.name.lower() for d in study.directions]
    assert len(study.trials) >= 2
    served = {t["number"]: t for t in detail["trials"]}
    assert sorted(served) == [t.number for t in study.trials]
    for t in study.trials:
        s = served[t.number]
        assert s["state"].upper() == t.state.name
        assert {p["name"]: p["param_external_value"] for p in s["params"]} == {k: str(v) for k, v in t.params.items()}
        if t.values is not None:
            assert s["values"] == pytest.approx(t.values)
    best = detail["best_trials"]
    assert [b["number"] for b in best] == [study.best_trial.number]


def test_dashboard_serves_the_search_study(sqlite_dashboard, study_storages):
    assert sqlite_dashboard.url.startswith("http://127.0.0.1:")
    _assert_api_matches_study(sqlite_dashboard, study_storages["sqlite"])


def test_dashboard_reads_a_journal_file(study_storages):
    dash = Dashboard(study_storages["journal"])
    try:
        _assert_api_matches_study(dash, study_storages["journal"])
    finally:
        dash.stop()


def test_dashboard_reads_postgresql(study_storages, fresh_postgres_url):
    import optuna

    optuna.copy_study(from_study_name=STUDY, from_storage=study_storages["sqlite"], to_storage=fresh_postgres_url)
    dash = Dashboard(fresh_postgres_url)
    try:
        _assert_api_matches_study(dash, fresh_postgres_url)
    finally:
        dash.stop()


def test_dashboard_renders_in_chromium(sqlite_dashboard, chromium, tmp_path):
    """The JS app draws the study page: its DOM names the study, and the screenshot is not blank."""
    import numpy as np
    from matplotlib.image import imread

    page = f"{sqlite_dashboard.url}/studies/{sqlite_dashboard.study_id(STUDY)}"
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", page],
                         capture_output=True, text=True, timeout=120).stdout
    assert STUDY in dom, dom[-2000:]
    png = screenshot(chromium, page, tmp_path / "study.png")
    keep = os.environ.get("DPOPT_KEEP_SCREENSHOT")
    if keep:
        Path(keep).write_bytes(png.read_bytes())
    img = imread(png)
    assert img.shape[:2] == (1000, 1400)
    colours = np.unique((img[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 50  # text, plots and widgets; a blank or error page has a handful
    assert png.stat().st_size > 20_000


@pytest.mark.parametrize("storage, needle", [("sqlite:///{tmp}/missing.db", "does not exist"),
                                             ("journal:{tmp}/missing.journal", "does not exist"),
                                             ("{tmp}/bare-path.db", "not a url")])
def test_dashboard_on_a_missing_storage_is_one_line(storage, needle, tmp_path, capsys):
    rc = main(["dashboard", "--storage", storage.format(tmp=tmp_path), "--port", "0"])
    err = capsys.readouterr().err
    assert rc == 2
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("dpopt: error") and needle in lines[0].lower(), err
    assert not (tmp_path / "missing.db").exists()  # looking must not create an empty database


def test_dashboard_on_a_busy_port_is_one_line(sqlite_dashboard, study_storages, capsys):
    port = sqlite_dashboard.base.rsplit(":", 1)[1]
    rc = main(["dashboard", "--storage", study_storages["sqlite"], "--port", port])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "cannot serve" in err, err

