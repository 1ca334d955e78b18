"""The test services themselves: the throwaway PostgreSQL serves an Optuna study to two processes at once."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from services import PostgresServer, _pg_bindir, in_ci, wait_for

WORKER = textwrap.dedent("""
    import os, sys, optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="two-procs", storage=sys.argv[1])
    def objective(trial):
        trial.set_user_attr("pid", os.getpid())
        x = trial.suggest_float("x", -1, 1)
        return x * x
    study.optimize(objective, n_trials=int(sys.argv[2]))
""")


def test_two_processes_share_a_study_on_postgres(fresh_postgres_url):
    import optuna

    assert fresh_postgres_url.startswith("postgresql+psycopg2://")
    optuna.create_study(study_name="two-procs", storage=fresh_postgres_url)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, fresh_postgres_url, "4"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    trials = optuna.load_study(study_name="two-procs", storage=fresh_postgres_url).trials
    assert len(trials) == 8
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert {t.user_attrs["pid"] for t in trials} == {p.pid for p in procs}
    assert sorted(t.number for t in trials) == list(range(8))


def test_each_test_gets_its_own_database(postgres_server, fresh_postgres_url):
    import optuna

    other = postgres_server.create_database()
    assert other != fresh_postgres_url
    optuna.create_study(study_name="only-here", storage=fresh_postgres_url)
    assert [s.study_name for s in optuna.get_all_study_summaries(storage=fresh_postgres_url)] == ["only-here"]
    assert optuna.get_all_study_summaries(storage=other) == []


def test_a_server_that_cannot_start_says_why(tmp_path):
    """A start failure is an error with a reason (the fixture turns it into a CI failure or a skip)."""
    bindir = _pg_bindir()
    if bindir is None:
        if in_ci():
            pytest.fail("PostgreSQL is not installed", pytrace=False)
        pytest.skip("PostgreSQL is not installed: apt-get install postgresql")
    server = PostgresServer(bindir, "postgres" if os.geteuid() == 0 else None)
    try:
        server.bindir = tmp_path  # no initdb here
        with pytest.raises((RuntimeError, OSError)):
            server.start()
    finally:
        server.stop()
    assert not server.root.exists()


@pytest.mark.parametrize("ci, outcome", [("true", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_a_missing_service_fails_in_ci_and_skips_elsewhere(monkeypatch, ci, outcome):
    from services import service_missing

    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="no such service"):
        service_missing("no such service")


def test_wait_for_times_out_with_what_it_waited_for():
    with pytest.raises(TimeoutError, match="the moon"):
        wait_for(lambda: False, timeout=0.3, what="the moon")
