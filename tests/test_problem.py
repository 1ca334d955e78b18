"""Problem and SearchPlan: every user mistake is caught once, before any model loads.

Each CLI case runs with a loader that fails the test if it is called, so a check that only
fires after loading (or not at all) fails here.
"""
from __future__ import annotations

import json

import pytest

import dpopt
from dpopt.errors import UserError
from dpopt.models.tiny import save_tiny_checkpoint
from dpopt.problem import Problem, SearchPlan


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "tiny", "llama", 4, seed=0)


@pytest.fixture
def no_load(monkeypatch):
    """Loading a model is a test failure: the mistake must be refused before."""
    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the mistake was caught")

    monkeypatch.setattr("dpopt.models.loading.load_model", refuse)


def _one_line_exit_2(args, capsys) -> str:
    from dpopt.cli import main

    rc = main([str(a) for a in args])
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("dpopt: error")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("extra,needle", [
    (["--seed", "-1"], "--seed must be at least 0"),
    (["--budget", "0"], "--budget must be at least 1"),
    (["--workers", "-2"], "--workers must be at least 0"),
    (["--workers", "2", "--storage", "none"], "need a study storage"),
    (["--option", "populaton=3"], "unexpected keyword argument 'populaton'"),
    (["--option", "population=abc"], "population must be an integer"),
    (["--algo", "random", "--option", "nope=1"], "unexpected keyword argument 'nope'"),
    (["--tie"], "--tie ties a block's attention"),
    (["--data", "{missing}"], "does not exist"),
    (["--data", "{empty}"], "is empty"),
    (["--objective", "ppl", "--questions", "5"], "has no option 'questions'"),
    (["--objective", "nosuch"], "nosuch"),
    (["--minimize", "nosuch", "--algo", "nsga2"], "nosuch"),
    (["--cost-option", "repeets=3", "--minimize", "latency", "--algo", "nsga2"], "--cost-option repeets"),
    (["--minimize", "params", "--algo", "genetic"], "multi-objective searcher"),
    (["--output", "/dev/null"], "not a regular file"),
    (["--output", "{dir}"], "is a directory"),
    (["--model", "no-such-model"], "unknown model"),
    (["--remove", "2:1"], "range is empty"),
])
def test_search_mistakes_are_one_line_before_the_model_loads(extra, needle, ck, text_file, tmp_path, capsys,
                                                              no_load):
    (tmp_path / "empty.txt").write_text("")
    subs = {"{missing}": str(tmp_path / "missing.txt"), "{empty}": str(tmp_path / "empty.txt"),
            "{dir}": str(tmp_path)}
    args = ["search", "--model", ck, "--algo", "genetic", "--data", text_file, "--remove", 2, "--budget", 4,
            "--tokens", 64, "--seq-len", 32, "--storage", f"sqlite:///{tmp_path}/s.db", "--no-progress",
            "--output", tmp_path / "r.json"]
    extra = [subs.get(e, e) for e in extra]
    for flag in ("--model", "--data", "--remove", "--output", "--algo", "--storage"):  # the case's value wins
        if flag in extra and flag in args:
            i = args.index(flag)
            del args[i:i + 2]
    line = _one_line_exit_2(args + extra, capsys)
    assert needle in line, line


@pytest.mark.parametrize("args,needle", [
    (["dashboard", "--port", "-5"], "--port must be"),
    (["dashboard", "--port", "70000"], "--port must be"),
    (["export", "--from-result", "{binary}", "--out", "{out}"], "not a dpopt result file"),
    (["export", "--from-result", "{five}", "--out", "{out}"], "removed_units must be a list"),
    (["compare", "--remove", "1", "--report", "/proc/dpopt-report", "--seeds", "1"], "cannot be written"),
    (["compare", "--remove", "1", "--report", "{out}", "--seeds", "0"], "--seeds must be at least 1"),
    (["eval", "--objective", "ppl;acc", "--questions", "0"], "--questions must be"),
])
def test_other_commands_refuse_mistakes_before_the_model_loads(args, needle, ck, text_file, tmp_path, capsys,
                                                               no_load):
    (tmp_path / "bin.json").write_bytes(bytes(range(256)))
    (tmp_path / "five.json").write_text(json.dumps({"removed_units": 5}))
    subs = {"{binary}": str(tmp_path / "bin.json"), "{five}": str(tmp_path / "five.json"), "{out}": str(tmp_path / "out")}
    args = [subs.get(a, a) for a in args]
    if args[0] in ("compare", "eval", "export"):
        args += ["--model", str(ck)]
    if args[0] in ("compare", "eval"):
        args += ["--data", str(text_file), "--storage", f"sqlite:///{tmp_path}/s.db"] if args[0] == "compare" \
            else ["--data", str(text_file)]
    line = _one_line_exit_2(args, capsys)
    assert needle in line, line


def test_a_recipe_recorded_before_problems_rebuilds_the_same_problem():
    """A worker reads the recipe a study stored: the keys written before Problems existed still work."""
    old = dict(model="/m", dtype="float32", objective="kl", data="/d.txt", tasks=None, split="calib", data_seed=0,
               prefix_sharing=True, units="block", tie=False, options={"tokens": 128, "seq_len": 32})
    p = Problem.from_recipe(old)
    assert (p.model, p.objective, p.data, p.options, p.minimize) == ("/m", "kl", "/d.txt", old["options"], ())
    assert Problem.from_recipe(p.recipe()) == p  # and a new recipe round-trips
    with pytest.raises(UserError, match="does not know"):
        Problem.from_recipe(dict(old, shiny_new_setting=1))


def test_validate_makes_local_paths_absolute_and_drops_unset_options(text_file, ck, monkeypatch):
    monkeypatch.chdir(text_file.parent)
    p = Problem(model=str(ck), objective="ppl", data=text_file.name, options={"tokens": 64, "seq_len": None}).validate()
    assert p.data == str(text_file.resolve()) and p.options == {"tokens": 64}


def test_search_plan_refuses_an_unknown_searcher_option_value_and_name():
    with pytest.raises(UserError, match="unexpected keyword"):
        SearchPlan(algo="anneal", algo_options={"temprature": 1}, remove=2, storage="none").validate()
    SearchPlan(algo="anneal", remove=2, storage="none").validate()  # the defaults are fine


def test_one_search_problem_builds_the_evaluator_a_worker_rebuilds(ck, text_file):
    """The evaluator built from a Problem and from its recipe have one fingerprint: what lets a
    worker score a search's masks."""
    p = Problem(model=str(ck), objective="kl", data=str(text_file), options={"tokens": 64, "seq_len": 32}).validate()
    lm = p.load("cpu")
    a = p.build(lm)
    b = Problem.from_recipe(json.loads(json.dumps(p.recipe()))).build(lm)
    assert a.fingerprint.digest == b.fingerprint.digest and a.problem == p
    other = Problem.from_recipe(dict(p.recipe(), data_seed=1)).build(lm)
    assert other.fingerprint.digest != a.fingerprint.digest


def test_result_carries_raw_values_whatever_the_direction(ck, text_file, tmp_path):
    """An objective to maximise: the result, its history and the dense value are accuracies, not negated."""
    mc = tmp_path / "mc.jsonl"
    mc.write_text("".join(json.dumps({"question": f"{i} plus {i}?", "choices": [str(2 * i), str(2 * i + 1)],
                                      "answer": i % 2}) + "\n" for i in range(24)))
    lm = dpopt.load(str(ck), device="cpu")
    ev = dpopt.make_evaluator(lm, "acc", tasks=str(mc), split="all", questions=16)
    res = dpopt.search(lm, ev, "random", remove=1, budget=3, storage="none", progress=False)
    assert res.direction == "maximize"
    assert 0.0 <= res.fitness <= 1.0 and 0.0 <= res.dense_fitness <= 1.0
    assert all(0.0 <= v <= 1.0 for _, v in res.history)
    assert res.history[-1][1] == max(v for _, v in res.history) == res.fitness
