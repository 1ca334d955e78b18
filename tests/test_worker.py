"""One search on many workers: the study is the work queue (``dpopt worker``, ``search --workers/--queue``)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import optuna
import pytest

from dpopt.cli import main
from dpopt.genome import LayerMask
from dpopt.models.tiny import save_tiny_checkpoint
from dpopt.record.fingerprint import Fingerprint
from dpopt.record.study import RunInfo, StudyRecord
from dpopt.record.liveness import pid_alive as _pid_alive, _proc_state
from dpopt.record.storage import open_storage

from services import wait_for

RUNNING, WAITING, COMPLETE, PRUNED = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING,
                                      optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def scored(t) -> bool:
    """Scored as the search would without workers: an answer (3 removed) COMPLETE, the dense model PRUNED."""
    return t.state == (COMPLETE if t.user_attrs["n_removed"] == 3 else PRUNED)


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "tiny", "llama", 12, seed=0, identity_blocks=(2, 5, 9))


def cli(args, capsys=None):
    rc = main([str(a) for a in args])
    if capsys is None:
        return rc, "", ""
    out = capsys.readouterr()
    return rc, out.out, out.err


_STORAGES: dict = {}


def storage_of(url: str):
    """One storage (one connection pool) per URL: polling must not exhaust PostgreSQL's connections."""
    if url not in _STORAGES:
        _STORAGES[url] = open_storage(url)
    return _STORAGES[url]


def trials(storage: str, study: str) -> list:
    return optuna.load_study(study_name=study, storage=storage_of(storage)).get_trials(deepcopy=False)


def evaluations(ts) -> list[tuple[tuple, int]]:
    return [(tuple(sorted(t.params.items())), t.user_attrs["fidelity"]) for t in ts]


def search_args(ck, text_file, budget=30):
    return ["search", "--model", ck, "--algo", "genetic", "--objective", "kl", "--data", text_file, "--remove", 3,
            "--budget", budget, "--tokens", 128, "--seq-len", 32, "--no-progress", "--option", "population=8",
            "--option", "race=[[64,4],[null,2]]"]


def test_two_workers_score_every_mask_once_and_match_one_process(ck, text_file, fresh_postgres_url, tmp_path,
                                                                   capsys):
    """A raced genetic search on 2 local workers over PostgreSQL: same masks, same answer, one score each."""
    rc, _, err = cli(search_args(ck, text_file) + ["--storage", fresh_postgres_url, "--study", "q", "--workers", 2,
                                                    "--output", tmp_path / "queued.json"], capsys)
    assert rc == 0, err
    rc, _, err = cli(search_args(ck, text_file) + ["--storage", "none", "--output", tmp_path / "alone.json"], capsys)
    assert rc == 0, err
    queued, alone = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("queued", "alone"))
    assert queued["removed_layers"] == alone["removed_layers"] and queued["fitness"] == alone["fitness"]
    assert queued["evaluations"] == alone["evaluations"]
    ts = trials(fresh_postgres_url, "q")
    evals = evaluations(ts)
    assert len(evals) == len(set(evals))  # one trial per (mask, fidelity)
    assert {t.user_attrs["fidelity"] for t in ts} >= {64}  # the race's cheap fidelity went through the queue too
    assert all(scored(t) and t.user_attrs["computed"] for t in ts)
    takers = [t.user_attrs.get("workers", []) for t in ts]
    assert all(len(w) == 1 for w in takers)  # every mask taken, and scored, by exactly one worker
    assert len({w[0] for w in takers}) == 2  # and the two workers shared the work
    assert all(t.user_attrs["algo"] == "genetic" for t in ts)  # who asked is kept beside who scored


def _sigkill_holding_claims(storage: str, study: str, deadline: float = 240) -> tuple[str, set[int], set[int]]:
    """Freeze a worker that holds RUNNING trials, check it still holds them, SIGKILL it.

    Returns (its owner, the trial numbers it held, the numbers finished at the kill)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        held = {}
        for t in trials(storage, study):
            if t.state == RUNNING and t.system_attrs.get("dpopt:owner"):
                held.setdefault(t.system_attrs["dpopt:owner"], set()).add(t.number)
        if not held:
            time.sleep(0.02)
            continue
        owner = next(iter(held))
        pid = int(owner.split(":")[1])
        os.kill(pid, signal.SIGSTOP)
        ts = trials(storage, study)
        still = {t.number for t in ts if t.state == RUNNING and t.system_attrs.get("dpopt:owner") == owner}
        if still:
            os.kill(pid, signal.SIGKILL)
            return owner, still, {t.number for t in ts if t.state.is_finished()}
        os.kill(pid, signal.SIGCONT)
    raise TimeoutError("no worker ever held a claim")


def test_sigkilled_worker_loses_nothing(ck, text_file, fresh_postgres_url, tmp_path, monkeypatch):
    """One of two workers is SIGKILLed holding claims: they go back to the queue and the other scores them."""
    # a dead pid on this host (a zombie too) is seen at once, so the lease never delays this
    # test; at the default's length, a live worker's claim is never taken for a dead one's
    monkeypatch.setenv("DPOPT_LEASE_SECONDS", "60")
    out = {}
    search = threading.Thread(target=lambda: out.setdefault("rc", cli(
        search_args(ck, text_file, budget=40) + ["--storage", fresh_postgres_url, "--study", "k", "--workers", 2,
                                                 "--tokens", 256, "--output", tmp_path / "k.json"])[0]))
    search.start()
    try:
        wait_for(lambda: _study_exists(fresh_postgres_url, "k"), timeout=120, what="the study")
        killed, held, done_at_kill = _sigkill_holding_claims(fresh_postgres_url, "k")
    finally:
        search.join(300)
    assert out.get("rc") == 0
    ts = {t.number: t for t in trials(fresh_postgres_url, "k")}
    evals = evaluations(ts.values())
    assert len(evals) == len(set(evals))  # the killed claims were re-queued, not duplicated
    assert all(scored(t) for t in ts.values())  # every mask scored
    for n in held:  # the killed worker's claims were scored by the other worker
        assert ts[n].user_attrs["workers"][0] == killed and ts[n].user_attrs["workers"][-1] != killed
    for n in done_at_kill:  # what had completed was never taken, nor scored, again
        assert len(ts[n].user_attrs["workers"]) == 1
    for t in ts.values():  # taken twice only when the killed worker took it first (perhaps dying mid-take)
        w = t.user_attrs["workers"]
        assert len(w) == 1 or (len(w) == 2 and w[0] == killed != w[1]), (t.number, w, killed)


def _study_exists(storage, name):
    try:
        return any(s.study_name == name and "recipe" in s.user_attrs
                   for s in optuna.get_all_study_summaries(storage_of(storage)))
    except Exception:
        return False


def queue_record(storage: str, owner: str | None = None) -> StudyRecord:
    """A process's record of study "q" over 6 units: the queue tests' searcher or worker."""
    return StudyRecord(storage, "q", Fingerprint({"x": 1}), "m", "minimize", [f"{i:02d}" for i in range(6)],
                       RunInfo(algo="t"), owner=owner)


def test_stale_claims_go_back_to_the_queue(tmp_path, monkeypatch):
    """Directly: queue claims are WAITING; a worker's take is exclusive; a worker silent past the lease
    (another machine: no pid to check) loses its claims back to WAITING, never to a FAIL row."""
    storage = f"sqlite:///{tmp_path}/q.db"
    searcher, remote, local = queue_record(storage), queue_record(storage, "elsewhere:1:remote"), queue_record(storage)
    searcher.queue = True
    masks = [LayerMask.from_removed(6, [i]) for i in range(4)]
    todo, waiting = searcher.claim(masks, 64, {}, {})
    assert todo == [] and waiting == masks
    assert [t.state for t in trials(storage, "q")] == [WAITING] * 4
    assert remote.take(2) == {64: masks[:2]}
    mine = [m for _ in range(4) for m in local.take(10).get(64, [])]
    assert mine == masks[2:]  # a take never hands out a trial another worker holds
    local.complete(masks[2:], 64, [3.0, 4.0], {}, 0.1)
    memo = {}
    assert searcher.claim(masks, 64, memo, {}) == ([], masks[:2])
    assert [t.state for t in trials(storage, "q")][:2] == [RUNNING] * 2  # remote is inside its lease
    monkeypatch.setenv("DPOPT_LEASE_SECONDS", "0")
    searcher.claim(masks, 64, memo, {})
    assert [t.state for t in trials(storage, "q")] == [WAITING, WAITING, COMPLETE, COMPLETE]
    assert local.take(10) == {64: masks[:2]}
    remote.complete(masks[:2], 64, [9.0, 9.0], {}, 0.1)  # the silent worker comes back: its values don't count
    local.complete(masks[:2], 64, [1.0, 2.0], {}, 0.1)
    ts = trials(storage, "q")
    assert len(ts) == 4 and [t.value for t in ts] == [1.0, 2.0, 3.0, 4.0]
    assert [len(t.user_attrs["workers"]) for t in ts] == [2, 2, 1, 1]
    # and a search with nobody alive to score its queue says so instead of waiting forever
    searcher.claim([LayerMask.from_removed(6, [5])], 64, {}, {})
    with pytest.raises(Exception, match="no dpopt worker has been alive"):
        searcher.wait([LayerMask.from_removed(6, [5])], 64, {}, {})


def test_a_killed_child_worker_is_dead_before_it_is_reaped():
    """``--workers`` children are the search's: killed, each is a zombie until reaped, and its
    claims must go back to the queue at once, not after the lease."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert _pid_alive(child.pid)
        child.kill()
        wait_for(lambda: _proc_state(child.pid) == "Z", timeout=10, what="the zombie")
        assert not _pid_alive(child.pid)
    finally:
        child.kill()
        child.wait()


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, nothing catches it."""


@pytest.mark.parametrize("kill_at", range(1, 7))
def test_a_worker_killed_mid_take_never_owns_a_trial_its_record_does_not_name(tmp_path, monkeypatch, kill_at):
    """A take is three writes per trial (RUNNING, workers, owner). Killed after any of them, every
    trial it owns names it last in ``workers``, and another worker scores them all; the one test
    with real processes (SIGKILL) once caught an owner missing from ``workers``."""
    storage = f"sqlite:///{tmp_path}/q.db"
    searcher, doomed, other = (queue_record(storage), queue_record(storage, "elsewhere:1:doomed"),
                               queue_record(storage, "elsewhere:2:other"))
    searcher.queue = True
    masks = [LayerMask.from_removed(6, [i]) for i in range(2)]
    searcher.claim(masks, 64, {}, {})
    writes = 0

    def dies_at_write(fn):
        def write(*args, **kwargs):
            nonlocal writes
            writes += 1
            out = fn(*args, **kwargs)
            if writes == kill_at:
                raise _Killed
            return out
        return write

    for name in ("set_trial_state_values", "set_trial_user_attr", "set_trial_system_attr"):
        monkeypatch.setattr(doomed.storage, name, dies_at_write(getattr(doomed.storage, name)))
    with pytest.raises(_Killed):
        doomed.take(10)
    for t in trials(storage, "q"):
        owner = t.system_attrs.get("dpopt:owner")
        assert owner is None or t.user_attrs["workers"][-1] == owner, (t.number, owner, t.user_attrs.get("workers"))
    monkeypatch.setenv("DPOPT_LEASE_SECONDS", "0")  # the doomed worker is silent from now on
    assert searcher.claim(masks, 64, {}, {}) == ([], masks)
    got = [m for _ in range(4) for m in other.take(10).get(64, [])]
    assert sorted(m.key() for m in got) == sorted(m.key() for m in masks)
    other.complete(got, 64, [1.0, 2.0], {}, 0.1)
    for t in trials(storage, "q"):
        assert t.state == COMPLETE and t.user_attrs["workers"][-1] == "elsewhere:2:other"
        assert set(t.user_attrs["workers"]) <= {"elsewhere:1:doomed", "elsewhere:2:other"}


# --- bad input: one line, exit 2 ------------------------------------------------------------------

def _one_error(rc, err):
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("dpopt: error")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_worker_bad_input(ck, text_file, tmp_path, capsys, monkeypatch):
    import dpopt

    db = f"sqlite:///{tmp_path}/b.db"
    line = _one_error(*cli(["worker", "--storage", "postgresql+psycopg2://dpopt@127.0.0.1:1/none", "--study", "q"],
                           capsys)[:3:2])
    assert "cannot open storage" in line
    model = tmp_path / "m"
    shutil.copytree(ck, model)
    lm = dpopt.load(str(model), device="cpu")
    ev = dpopt.make_evaluator(lm, "kl", data=str(text_file), tokens=128, seq_len=32)
    dpopt.api.open_record(lm, ev, "genetic", 3, 0, db, "q").close()
    assert "no study named 'nope'" in _one_error(*cli(["worker", "--storage", db, "--study", "nope"], capsys)[:3:2])
    save_tiny_checkpoint(tmp_path / "other", "llama", 12, seed=7)  # same shape, other weights, same path
    shutil.rmtree(model)
    shutil.copytree(tmp_path / "other", model)
    assert "another model or data" in _one_error(*cli(["worker", "--storage", db, "--study", "q"], capsys)[:3:2])
    shutil.rmtree(model)  # the model is not on this machine at all
    line = _one_error(*cli(["worker", "--storage", db, "--study", "q"], capsys)[:3:2])
    assert "cannot rebuild study 'q'" in line and str(model) in line
    line = _one_error(*cli(search_args(ck, text_file) + ["--storage", "none", "--workers", 2], capsys)[:3:2])
    assert "need a study storage" in line
    monkeypatch.setenv("DPOPT_LEASE_SECONDS", "1")  # --queue and no worker ever comes: say so, don't hang
    rc, _, err = cli(search_args(ck, text_file) + ["--storage", db, "--study", "lonely", "--queue"], capsys)
    assert "start workers with: dpopt worker --storage" in err
    assert "no dpopt worker has been alive on study 'lonely' for 1 s" in _one_error(rc, err)
