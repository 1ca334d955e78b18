"""The study as the record: fingerprinted, complete at every fidelity, resumable, shared by processes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest

import dpopt
from dpopt.cli import main
from dpopt.models.tiny import save_tiny_checkpoint
from dpopt.record.storage import open_storage

from services import wait_for

IDENTITY = (2, 5, 9)
RACE = [[64, 4], [None, 2]]


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "tiny", "llama", 12, seed=0, identity_blocks=IDENTITY)


def cli(args, capsys):
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def trials(storage: str, study: str) -> list:
    return optuna.load_study(study_name=study, storage=open_storage(storage)).get_trials(deepcopy=False)


def evaluations(ts) -> list[tuple[tuple, int]]:
    """(mask params, fidelity) of every trial, as the record's identity of an evaluation."""
    return [(tuple(sorted(t.params.items())), t.user_attrs["fidelity"]) for t in ts]


# --- stale values: the fingerprint --------------------------------------------------------------

def test_changed_tokens_never_reuse_the_old_value(ck, text_file, tmp_path, capsys):
    db = f"sqlite:///{tmp_path}/s.db"
    base = ["search", "--model", ck, "--algo", "random", "--objective", "ppl", "--data", text_file, "--remove", 2,
            "--budget", 6, "--seq-len", 32, "--no-progress"]
    for tokens in (64, 256):
        rc, _, err = cli(base + ["--tokens", tokens, "--storage", db, "--output", tmp_path / f"r{tokens}.json"], capsys)
        assert rc == 0, err
    rc, _, err = cli(base + ["--tokens", 256, "--storage", "none", "--output", tmp_path / "fresh.json"], capsys)
    assert rc == 0, err
    r64, r256, fresh = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("r64", "r256", "fresh"))
    assert r64["study"] != r256["study"] and r64["fingerprint"] != r256["fingerprint"]
    assert r256["fitness"] == fresh["fitness"] and r256["dense_fitness"] == fresh["dense_fitness"]
    assert r64["fitness"] != r256["fitness"]
    assert r256["settings"]["options"]["tokens"] == 256 and r256["data_seed"] == 0 and r256["split"] == "calib"
    # the same study name with other settings is refused, naming what differs
    named = base + ["--storage", db, "--study", "mine", "--output", tmp_path / "n.json"]
    assert cli(named + ["--tokens", 64], capsys)[0] == 0
    rc, _, err = cli(named + ["--tokens", 256], capsys)
    assert rc == 2 and "other settings" in err and "options.tokens 64 (study) vs 256 (now)" in err
    assert len(trials(db, "mine")) == 7  # six masks and the dense model, nothing from the refused run


def test_same_folder_name_other_weights_is_another_model(text_file, tmp_path, capsys):
    a = save_tiny_checkpoint(tmp_path / "a" / "model", "llama", 6, seed=1)
    b = save_tiny_checkpoint(tmp_path / "b" / "model", "llama", 6, seed=2)
    db = f"sqlite:///{tmp_path}/s.db"
    args = ["search", "--algo", "random", "--data", text_file, "--remove", 1, "--budget", 3, "--tokens", 64,
            "--seq-len", 32, "--storage", db, "--no-progress", "--output", tmp_path / "r.json"]
    assert cli(args + ["--model", a], capsys)[0] == 0
    assert cli(args + ["--model", b], capsys)[0] == 0
    assert len(optuna.get_all_study_names(db)) == 2  # same basename, two studies
    assert cli(args + ["--model", a, "--study", "x"], capsys)[0] == 0
    rc, _, err = cli(args + ["--model", b, "--study", "x"], capsys)
    assert rc == 2 and "model.weights" in err


def test_search_seed_never_moves_the_data(ck, text_file, tmp_path, capsys):
    for seed in (0, 3):
        rc, _, err = cli(["search", "--model", ck, "--algo", "random", "--data", text_file, "--remove", 2, "--budget", 2,
                          "--tokens", 64, "--seq-len", 32, "--seed", seed, "--storage", "none", "--no-progress",
                          "--output", tmp_path / f"{seed}.json"], capsys)
        assert rc == 0, err
    r0, r3 = (json.loads((tmp_path / f"{s}.json").read_text()) for s in (0, 3))
    assert r0["fingerprint"] == r3["fingerprint"] and r0["dense_fitness"] == r3["dense_fitness"]


# --- resume and races: every evaluation is a trial -----------------------------------------------

def _search(ck, text_file, storage, study="raced", budget=40, **kw):
    lm = dpopt.load(str(ck), device="cpu")
    ev = dpopt.make_evaluator(lm, "kl", data=str(text_file), tokens=256, seq_len=32, batch_size=2)
    opts = dict(population=2, offspring=8, initial=8, race=RACE)
    res = dpopt.search(lm, ev, "genetic", remove=3, budget=budget, seed=0, storage=storage, study=study,
                       progress=False, algo_options=opts, **kw)
    return res, ev


def test_every_raced_evaluation_is_a_trial_with_its_fidelity(ck, text_file, tmp_path):
    db = f"sqlite:///{tmp_path}/r.db"
    lm = dpopt.load(str(ck), device="cpu")
    ev = dpopt.make_evaluator(lm, "kl", data=str(text_file), tokens=256, seq_len=32, batch_size=2)
    scored = []
    inner = ev._score
    ev._score = lambda masks, fid: (scored.extend((m.key(), fid) for m in masks), inner(masks, fid))[1]
    dpopt.search(lm, ev, "genetic", remove=3, budget=30, seed=0, storage=db, study="raced", progress=False,
                 algo_options=dict(population=2, offspring=8, initial=8, race=RACE))
    ts = trials(db, "raced")
    assert len(ts) == len(scored) == len(set(scored))
    by_fid = {}
    for t in ts:
        by_fid.setdefault(t.user_attrs["fidelity"], []).append(t)
        assert t.user_attrs["computed"]
        # candidates are COMPLETE; the dense reference is PRUNED with its value, never the best trial
        assert t.state == (optuna.trial.TrialState.COMPLETE if t.user_attrs["n_removed"] == 3
                           else optuna.trial.TrialState.PRUNED) and t.values is not None
        assert t.datetime_complete >= t.datetime_start
    assert set(by_fid) == {64, 256}  # the cheap stage and the full set, named by tokens scored
    assert len(by_fid[64]) > len(by_fid[256]) - 1  # every mask raced at 64 tokens; survivors (and dense) at 256
    assert {t.user_attrs["batch"] for t in ts if t.user_attrs["n_removed"]} >= {0, 1, 2}
    assert {t.user_attrs["algo"] for t in ts} == {"genetic"} and len({t.user_attrs["run"] for t in ts}) == 1


def test_resume_recomputes_nothing(ck, text_file, tmp_path):
    db = f"sqlite:///{tmp_path}/r.db"
    first, ev1 = _search(ck, text_file, db)
    assert ev1.n_scored > 0
    n = len(trials(db, "raced"))
    again, ev2 = _search(ck, text_file, db)
    assert ev2.n_scored == 0 and ev2.block_calls == 0  # every value, at every fidelity, came from the study
    assert again.removed_layers == first.removed_layers and again.fitness == first.fitness
    assert len(trials(db, "raced")) == n


KILL_SCRIPT = textwrap.dedent('''
    import sys, dpopt
    ck, text, db = sys.argv[1:4]
    lm = dpopt.load(ck, device="cpu")
    ev = dpopt.make_evaluator(lm, "kl", data=text, tokens=256, seq_len=32, batch_size=2)
    dpopt.search(lm, ev, "genetic", remove=3, budget=40, seed=0, storage=db, study="raced", progress=False,
                 algo_options=dict(population=2, offspring=8, initial=8, race=%r))
''' % RACE)


def test_sigkilled_raced_search_resumes_without_recomputing(ck, text_file, tmp_path):
    """Killed mid-way with SIGKILL, rerun: nothing scored is scored again, and the answer is unchanged."""
    db = f"sqlite:///{tmp_path}/k.db"
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(Path(dpopt.__file__).parents[1]))
    proc = subprocess.Popen([sys.executable, str(script), str(ck), str(text_file), db], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def completed():
        try:
            return sum(t.state.is_finished() for t in trials(db, "raced"))
        except Exception:
            return 0

    try:
        wait_for(lambda: completed() >= 12 or proc.poll() is not None, timeout=240, what="12 completed trials")
        assert proc.poll() is None, f"the search ended before it could be killed: {proc.stderr.read()[-500:]}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = trials(db, "raced")
    done_before = {e for e, t in zip(evaluations(before), before) if t.state.is_finished()}
    assert 12 <= len(done_before) and len(before) > 12
    resumed, ev = _search(ck, text_file, db)
    straight, ev_straight = _search(ck, text_file, f"sqlite:///{tmp_path}/straight.db")
    after = trials(db, "raced")
    assert sorted(evaluations(after)) == sorted(evaluations(trials(f"sqlite:///{tmp_path}/straight.db", "raced")))
    assert ev.n_scored == ev_straight.n_scored - len(done_before)  # zero recomputation of what was scored
    assert resumed.removed_layers == straight.removed_layers and resumed.fitness == straight.fitness
    assert all(t.state.is_finished() for t in after)  # the killed claims were adopted


# --- two processes, one study ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["journal", "postgresql"])
def test_two_processes_on_one_study_score_each_mask_once(kind, ck, text_file, tmp_path, request):
    storage = f"journal:{tmp_path}/j.log" if kind == "journal" else request.getfixturevalue("fresh_postgres_url")
    env = dict(os.environ, PYTHONPATH=str(Path(dpopt.__file__).parents[1]))
    cmd = [sys.executable, "-m", "dpopt.cli", "search", "--model", str(ck), "--algo", "genetic", "--objective", "kl",
           "--data", str(text_file), "--remove", 3, "--budget", 35, "--tokens", 128, "--seq-len", 32,
           "--storage", storage, "--study", "shared", "--no-progress", "--option", "population=8"]
    procs = [subprocess.Popen([str(c) for c in cmd] + ["--output", str(tmp_path / f"r{i}.json")], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-800:]
    ts = trials(storage, "shared")
    evals = evaluations(ts)
    assert len(evals) == len(set(evals))  # no (mask, fidelity) recorded twice
    assert all(t.user_attrs["computed"] for t in ts)  # and none scored twice
    # identical searches: whichever claims a batch first scores it, the other reads the values
    r0, r1 = (json.loads((tmp_path / f"r{i}.json").read_text()) for i in range(2))
    assert r0["removed_layers"] == r1["removed_layers"] and r0["fitness"] == r1["fitness"]


# --- bad input: one line, exit 2, nothing half-written -------------------------------------------------

NAN_OBJECTIVE = '''
import numpy as np

from dpopt.objectives.base import TextObjective

class Broken(TextObjective):
    """Takes --tokens and --seq-len as ppl does (the search below sets them), and scores NaN."""
    name = "broken"
    direction = "minimize"

    def prepare(self, lm, data):
        self._prepare_text(lm, data)

    def score(self, logits, batch):
        return np.array([np.nan])

    def finish(self, partials):
        return float(np.sum(partials))
'''


@pytest.mark.parametrize("extra,needle", [
    (["--batch-size", "0"], "--batch-size must be a positive integer"),
    (["--tokens", "0"], "--tokens must be a positive integer"),
    (["--tokens", "-5"], "--tokens must be a positive integer"),
    (["--questions", "0", "--objective", "acc", "--tasks", "{mc}"], "--questions must be a positive integer"),
    (["--objective", "ppl:-1"], "must be a positive number"),
    (["--objective", "ppl:0.5,kl:0"], "must be a positive number"),
    (["--model", "{gpt2}", "--seq-len", "512"], "past the 256 positions"),
    (["--time-budget", "1e-9", "--algo", "greedy"], "raise --time-budget"),
    (["--objective", "nan_objective:Broken"], "failed to score"),
    (["--model", "no-such-model", "--storage", "sqlite:////no/such/dir/s.db"], "--storage"),
    (["--model", "no-such-model", "--output", "/no/such/dir/r.json"], "--output"),
    (["--model", "no-such-model", "--storage", "nonsense"], "not a storage URL"),
])
def test_bad_input_is_one_line_exit_2(extra, needle, ck, text_file, tmp_path, capsys, monkeypatch):
    (tmp_path / "nan_objective.py").write_text(NAN_OBJECTIVE)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "mc.jsonl").write_text('{"question": "2+2?", "choices": ["3", "4"], "answer": 1}\n' * 4)
    gpt2 = tmp_path / "gpt2"
    if "{gpt2}" in extra:
        save_tiny_checkpoint(gpt2, "gpt2", 4)
    subs = {"{mc}": str(tmp_path / "mc.jsonl"), "{gpt2}": str(gpt2)}
    args = ["search", "--model", ck, "--algo", "random", "--data", text_file, "--remove", 2, "--budget", 4,
            "--tokens", 64, "--seq-len", 32, "--storage", f"sqlite:///{tmp_path}/s.db", "--no-progress",
            "--output", tmp_path / "r.json"]
    args += [subs.get(e, e) for e in extra]
    rc, _, err = cli(args, capsys)
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("dpopt: error")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert needle in lines[0], lines[0]
    assert not (tmp_path / "r.json").exists()


def test_seq_len_past_rope_positions_warns_and_runs(ck, text_file, tmp_path, capsys):
    rc, _, err = cli(["eval", "--model", ck, "--data", text_file, "--tokens", 300, "--seq-len", 300], capsys)
    assert rc == 0 and "warning: --seq-len 300 is past the 256 positions" in err


# --- claims, directly ------------------------------------------------------------------------------

def _record(storage, owner_tag=""):
    from dpopt.record.fingerprint import Fingerprint
    from dpopt.record.study import RunInfo, StudyRecord

    return StudyRecord(storage, "claims", Fingerprint({"x": 1}), "m", "minimize", [f"{i:02d}" for i in range(6)],
                       RunInfo(algo=f"a{owner_tag}", seed=0))


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_claims_are_exclusive_and_dead_owners_are_adopted(kind, tmp_path, monkeypatch):
    import threading

    from dpopt.genome import LayerMask

    storage = f"sqlite:///{tmp_path}/c.db" if kind == "sqlite" else f"journal:{tmp_path}/c.log"
    a, b = _record(storage, "a"), _record(storage, "b")
    masks = [LayerMask.from_removed(6, [i]) for i in range(4)]
    todo, waiting = a.claim(masks, 64, {}, {})
    assert todo == masks and waiting == []
    todo, waiting = b.claim(masks, 64, {}, {})
    assert todo == [] and waiting == masks  # a RUNNING claim of a live owner is waited for
    a.complete(masks[:2], 64, [1.0, 2.0], {}, 0.1)
    memo = {}
    todo, waiting = b.claim(masks, 64, memo, {})
    assert memo == {(masks[0].key(), 64): 1.0, (masks[1].key(), 64): 2.0} and waiting == masks[2:]

    # the storage-wide lock: b cannot claim while a holds it
    done = threading.Event()
    with a._lock():
        t = threading.Thread(target=lambda: (b.claim([LayerMask.from_removed(6, [5])], 64, {}, {}), done.set()))
        t.start()
        assert not done.wait(1.0)
    assert done.wait(30)
    t.join()

    # a claim whose owner process is gone is adopted at once; one without a heartbeat after the lease
    a.owner = f"{a.owner.split(':')[0]}:999999999:dead"
    dead = LayerMask.from_removed(6, [4])
    a.claim([dead], 64, {}, {})
    todo, _ = b.claim([dead], 64, {}, {})
    assert todo == [dead]
    a.owner = "elsewhere:1:remote"
    far = LayerMask.from_removed(6, [3, 4])
    a.claim([far], 64, {}, {})
    assert b.claim([far], 64, {}, {})[0] == []
    monkeypatch.setenv("DPOPT_LEASE_SECONDS", "0")
    assert b.claim([far], 64, {}, {})[0] == [far]
    b.complete([dead, far], 64, [3.0, 4.0], {}, 0.1)
    evals = evaluations(trials(storage, "claims"))
    assert len(evals) == len(set(evals)) == 7


def test_search_attaches_its_best_so_far_plot_and_names_the_metric(ck, text_file, tmp_path, capsys):
    from optuna.artifacts import get_all_artifact_meta

    db = f"sqlite:///{tmp_path}/a.db"
    rc, _, err = cli(["search", "--model", ck, "--algo", "random", "--objective", "kl", "--data", text_file,
                      "--remove", 2, "--budget", 4, "--tokens", 64, "--seq-len", 32, "--storage", db, "--no-progress",
                      "--output", tmp_path / "r.json"], capsys)
    assert rc == 0, err
    study = optuna.load_study(study_name=json.loads((tmp_path / "r.json").read_text())["study"], storage=db)
    assert study.metric_names == ["kl"]
    assert study.best_trial.user_attrs["n_removed"] == 2  # the dense model (KL 0) is no answer
    (meta,) = get_all_artifact_meta(study)
    assert meta.mimetype == "image/png"
    png = tmp_path / "a.db.artifacts" / meta.artifact_id
    assert png.read_bytes()[:4] == b"\x89PNG"
