"""The record under attack: frozen lock holders, racing opens, killed coordinators, Ctrl-C,
workers completing greedy's steps, full disks, device nodes, and storages that do not exist."""
from __future__ import annotations

import multiprocessing
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import optuna
import pytest

from dpopt.cli import main
from dpopt.errors import UserError
from dpopt.fitness import FunctionEvaluator
from dpopt.genome import Constraint, LayerMask
from dpopt.models.tiny import save_tiny_checkpoint
from dpopt.optim import SEARCHERS, Budget, run_search
from dpopt.record.fingerprint import Fingerprint
from dpopt.record.liveness import _proc_state, pid_alive
from dpopt.record.storage import open_storage
from dpopt.record.study import RunInfo, StudyRecord
from dpopt.result import write_json

from services import wait_for

ROOT = str(Path(__file__).resolve().parents[1])
UNITS = [f"{i:02d}" for i in range(8)]
S = optuna.trial.TrialState


def env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))


def record(storage: str, study: str = "s", x: int = 1, **kw) -> StudyRecord:
    return StudyRecord(storage, study, Fingerprint({"x": x}), "m", "minimize", UNITS, RunInfo(algo="t"), **kw)


def states(storage: str, study: str = "s") -> list[str]:
    st = open_storage(storage)
    return sorted(t.state.name for t in st.get_all_trials(st.get_study_id_from_name(study), deepcopy=False))


def storage_url(kind: str, tmp_path, request) -> str:
    if kind == "postgresql":
        return request.getfixturevalue("fresh_postgres_url")
    return f"sqlite:///{tmp_path}/s.db" if kind == "sqlite" else f"journal:{tmp_path}/s.log"


def small_search(rec: StudyRecord | None, budget: int = 12) -> float:
    """A random search over 8 units (no model), recorded in ``rec``: its best value."""
    ev = FunctionEvaluator(lambda m: float(sum(m.removed())))
    searcher = SEARCHERS.get("random")(Constraint(8, 2), seed=0, batch_size=4)
    with ev.recording(rec):
        return run_search(searcher, ev, Budget(budget), rec).fitness


# --- 6: a frozen lock holder stops nobody for longer than the lease -------------------------------

HOLDER = """
import os, signal, sys
from dpopt.record.fingerprint import Fingerprint
from dpopt.record.study import RunInfo, StudyRecord
r = StudyRecord(sys.argv[1], "s", Fingerprint({"x": 1}), "m", "minimize", [f"{i:02d}" for i in range(8)],
                RunInfo(algo="frozen"))
with r._lock():
    print("holding", flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)
"""


@pytest.mark.parametrize("kind", ["sqlite", "journal", "postgresql"])
def test_a_frozen_lock_holder_delays_a_search_by_one_lease_at_most(kind, tmp_path, request, monkeypatch):
    url = storage_url(kind, tmp_path, request)
    monkeypatch.setenv("DPOPT_LEASE_SECONDS", "2")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, url], env=env(), stdout=subprocess.PIPE, text=True)
    out: dict = {}
    search = threading.Thread(target=lambda: out.setdefault("best", small_search(record(url, candidate_size=2))),
                              daemon=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        wait_for(lambda: _proc_state(holder.pid) == "T", timeout=10, what="the frozen holder")
        start = time.monotonic()
        search.start()
        search.join(40)
        took = time.monotonic() - start
        assert not search.is_alive(), f"the search is still blocked by the frozen holder after {took:.0f} s"
    finally:
        holder.kill()  # frees an flock or an advisory lock, so a blocked search ends and the test can finish
        holder.wait()
        search.join(60)
    assert out["best"] == small_search(None) and took < 30
    assert "RUNNING" not in states(url)


# --- 7: two processes opening one new study with other settings at once ---------------------------

def _open_at(url: str, name: str, x: int, go, answers) -> None:
    go.wait()
    try:
        record(url, name, x).close()
        answers.put(("opened", x))
    except UserError:
        answers.put(("refused", x))


def test_two_processes_opening_one_new_study_with_other_settings_never_both_proceed(tmp_path):
    url = f"sqlite:///{tmp_path}/r.db"
    record(url, "warm").close()  # the tables exist: the race is on the study, not on Optuna's schema
    ctx = multiprocessing.get_context("fork")
    answers = ctx.Queue()
    for round_ in range(50):  # an unguarded check loses this race about once in ten
        go = ctx.Event()
        name = f"race{round_}"
        procs = [ctx.Process(target=_open_at, args=(url, name, x, go, answers)) for x in (1, 2)]
        for p in procs:
            p.start()
        go.set()
        got = sorted(answers.get(timeout=60) for _ in procs)
        for p in procs:
            p.join(30)
        opened = [x for what, x in got if what == "opened"]
        assert len(opened) == 1, (round_, got)
        st = open_storage(url)
        assert st.get_study_user_attrs(st.get_study_id_from_name(name))["fingerprint"] == \
            Fingerprint({"x": opened[0]}).digest


# --- 8: killing the coordinator of --workers N takes its workers with it ---------------------------

@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "tiny", "llama", 12, seed=0)


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rpartition(")")[2].split()[1]) == pid:
                    kids.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return kids


def _heartbeats(url: str, study: str) -> list[str]:
    st = open_storage(url)
    return [k for k in st.get_study_system_attrs(st.get_study_id_from_name(study)) if k.startswith("dpopt:hb:")]


def test_workers_exit_when_their_coordinator_is_killed(ck, text_file, tmp_path):
    url = f"sqlite:///{tmp_path}/w.db"
    coordinator = subprocess.Popen(
        [sys.executable, "-m", "dpopt.cli", "search", "--model", ck, "--data", text_file, "--algo", "random",
         "--remove", "3", "--budget", "10000", "--tokens", "128", "--seq-len", "32", "--no-progress",
         "--storage", url, "--study", "w", "--workers", "2"], env=env(), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        wait_for(lambda: len(_children(coordinator.pid)) == 2, timeout=120, what="two workers")
        workers = _children(coordinator.pid)
        wait_for(lambda: len(_heartbeats(url, "w")) >= 2, timeout=120, what="the workers' heartbeats")
        coordinator.kill()
        coordinator.wait()
        wait_for(lambda: not any(pid_alive(w) for w in workers), timeout=15, what="the orphaned workers to exit")
    finally:
        for pid in [coordinator.pid] + workers:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        coordinator.wait()


# --- 9: Ctrl-C anywhere puts the claims back --------------------------------------------------------

def _interrupt_on_call(storage, name: str, n: int, monkeypatch, when=lambda *a, **kw: True):
    real, calls = getattr(storage, name), []

    def flaky(*args, **kwargs):
        out = real(*args, **kwargs)
        if when(*args, **kwargs):
            calls.append(1)
            if len(calls) == n:
                raise KeyboardInterrupt  # as if Ctrl-C arrived right after this write
        return out

    monkeypatch.setattr(storage, name, flaky)


@pytest.mark.parametrize("where", ["claim", "complete"])
def test_ctrl_c_while_claiming_or_completing_puts_the_claims_back(where, tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path}/i.db"
    rec = record(url)
    ev = FunctionEvaluator(lambda m: float(sum(m.removed())))
    masks = [LayerMask.from_removed(8, [i, i + 1]) for i in range(5)]
    if where == "claim":
        _interrupt_on_call(rec.storage, "create_new_trial", 3, monkeypatch)
    else:
        _interrupt_on_call(rec.storage, "set_trial_state_values", 2, monkeypatch,
                           when=lambda tid, state, values=None: state == S.COMPLETE)
    with pytest.raises(KeyboardInterrupt):
        with ev.recording(rec):
            ev.evaluate(masks)
    got = states(url)
    assert "RUNNING" not in got
    assert got == (["WAITING"] * 3 if where == "claim" else ["COMPLETE"] * 2 + ["WAITING"] * 3)


def _claiming(url: str, study: str, poller: dict) -> bool:
    """The first batch is being claimed: RUNNING trials beside the dense model's (one storage, polled fast)."""
    try:
        st = poller.setdefault("storage", open_storage(url))
        ts = st.get_all_trials(st.get_study_id_from_name(study), deepcopy=False)
    except Exception:  # not created yet
        poller.clear()
        return False
    return len(ts) > 3 and any(t.state.name == "RUNNING" for t in ts)


def test_sigint_during_the_first_batch_exits_130_and_leaves_nothing_running(ck, tmp_path):
    """No answer yet, so no result.json (it would hold no mask): exit 130 with one line, every
    claim back to WAITING for the rerun that resumes. The interrupt lands while the first batch's
    claims are written (with a tiny model, most of a batch's time)."""
    data = tmp_path / "calib.txt"
    data.write_text("\n\n".join(f"Paragraph {i}: the quick brown fox {i} jumps over {i * 7} dogs." for i in range(600)))
    url = f"sqlite:///{tmp_path}/c.db"
    search = subprocess.Popen(
        [sys.executable, "-m", "dpopt.cli", "search", "--model", ck, "--data", data, "--algo", "random", "--remove",
         "3", "--budget", "200", "--option", "batch_size=200", "--tokens", "64", "--seq-len", "32", "--no-progress",
         "--storage", url, "--study", "c", "--output", tmp_path / "r.json"],
        env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        poller: dict = {}
        wait_for(lambda: _claiming(url, "c", poller), timeout=180, interval=0.01, what="the first batch's claims")
        search.send_signal(signal.SIGINT)
        _, err = search.communicate(timeout=120)
    finally:
        search.kill()
        search.wait()
    assert search.returncode == 130 and "Traceback" not in err, err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("dpopt:")]
    assert line.startswith("dpopt: interrupted") and "kept in the study" in line, err
    assert not (tmp_path / "r.json").exists()
    got = states(url, "c")
    assert "RUNNING" not in got and "WAITING" in got, got


# --- 10: a worker completes by the asker's rule -----------------------------------------------------

@pytest.mark.parametrize("rule", ["size", "constraint"])
def test_a_worker_prunes_the_dense_mask_and_greedys_steps_like_the_search_would(rule, tmp_path):
    url = f"sqlite:///{tmp_path}/q.db"
    rule_kw = dict(candidate_size=2) if rule == "size" else dict(candidate=Constraint(8, 2).is_valid)
    asker = record(url, **rule_kw)
    asker.queue = True
    worker = record(url, create=False, owner="elsewhere:1:worker")  # a worker's record knows no constraint
    dense, step, answer = (LayerMask.from_removed(8, r) for r in ([], [3], [3, 5]))
    assert asker.claim([dense, step, answer], None, {}, {}) == ([], [dense, step, answer])
    taken = worker.take(10)[None]
    worker.complete(taken, None, [1.0, 2.0, 5.0], {}, 0.1)
    by_removed = {tuple(t.user_attrs["removed"]): t.state for t in optuna.load_study(study_name="s", storage=url).trials}
    assert by_removed == {(): S.PRUNED, ("03",): S.PRUNED, ("03", "05"): S.COMPLETE}
    assert optuna.load_study(study_name="s", storage=url).best_trial.user_attrs["removed"] == ["03", "05"]


# --- 11, 12: a full disk, and a target that is no regular file --------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs: {done.stderr.strip() or 'not root'}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


def test_a_full_disk_for_the_output_is_one_line_and_leaves_no_temporary_file(small_disk):
    fill(small_disk)
    with pytest.raises(UserError, match="No space left"):
        write_json(small_disk / "result.json", {"removed_layers": [1, 2, 3], "pad": "x" * 10000})
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


FULL_SEARCH = """
import sys
from pathlib import Path
from dpopt.errors import UserError
from dpopt.fitness import FunctionEvaluator
from dpopt.genome import Constraint
from dpopt.optim import SEARCHERS, Budget, run_search
from dpopt.record.fingerprint import Fingerprint
from dpopt.record.study import RunInfo, StudyRecord

def score(mask):  # the disk fills up while the first batch is scored
    with open(sys.argv[2], "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(bytes(4096))
        except OSError:
            pass
    return float(sum(mask.removed()))

try:
    rec = StudyRecord(sys.argv[1], "s", Fingerprint({"x": 1}), "m", "minimize", [f"{i:02d}" for i in range(8)],
                      RunInfo(algo="full"), candidate_size=2)
    ev = FunctionEvaluator(score)
    with ev.recording(rec):
        run_search(SEARCHERS.get("random")(Constraint(8, 2), seed=0, batch_size=4), ev, Budget(12), rec)
except UserError as exc:  # what dpopt.cli.main does with one
    print(f"dpopt: error: {exc}", file=sys.stderr)
    sys.exit(2)
"""


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_full_disk_for_the_storage_is_one_line_and_loses_no_claim(kind, small_disk):
    url = f"sqlite:///{small_disk}/s.db" if kind == "sqlite" else f"journal:{small_disk}/s.log"
    filler = small_disk / "filler"
    done = subprocess.run([sys.executable, "-c", FULL_SEARCH, url, str(filler)], env=env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "failed" in done.stderr, done.stderr
    filler.unlink()
    assert small_search(record(url, candidate_size=2)) == small_search(None)  # the dead run's claims are taken over at once
    assert "RUNNING" not in states(url)


def _nodes(tmp_path) -> list[Path]:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    nodes = [fifo]
    try:
        os.mknod(tmp_path / "full", 0o666 | stat.S_IFCHR, os.makedev(1, 7))  # /dev/full's numbers
        nodes.append(tmp_path / "full")
    except PermissionError:
        pass
    return nodes


def test_write_json_refuses_a_target_that_is_not_a_regular_file(tmp_path):
    for node in _nodes(tmp_path) + [tmp_path]:
        kind = stat.S_IFMT(node.stat().st_mode)
        with pytest.raises(UserError, match="not a regular file"):
            write_json(node, {"removed_layers": [1]})
        assert stat.S_IFMT(node.stat().st_mode) == kind  # still the node it was
    assert not list(tmp_path.glob(".*.tmp"))


# --- 15: a worker never creates the storage it was pointed at ----------------------------------------

@pytest.mark.parametrize("url", ["sqlite:///{}/none.db", "journal:{}/none.log"])
def test_a_worker_on_a_storage_that_does_not_exist_refuses_without_creating_it(url, tmp_path, capsys):
    url = url.format(tmp_path)
    rc = main(["worker", "--storage", url, "--study", "q"])
    err = capsys.readouterr().err
    assert rc == 2 and "does not exist" in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []
