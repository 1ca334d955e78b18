"""Objectives' declared options: a misspelt name or a bad value is one line and exit 2, never dropped.

None of these loads a model: the checks need the objective's class alone.
"""
from __future__ import annotations

import textwrap

import numpy as np
import pytest

from dpopt.cli import main
from dpopt.errors import UserError
from dpopt.objectives import MCData, build_objective, validate_objective_spec
from dpopt.objectives.base import ObjectiveBase, UserObjective
from dpopt.objectives.composite import Composite

USER_MODULE = '''
import numpy as np
from dpopt.objectives import Option


class Scaled:
    """A user's objective that does not subclass the base and declares one option."""
    name = "scaled"
    direction = "maximize"
    data_kind = "mc"
    OPTIONS = {"alpha": Option(float, 1.0, "scale")}

    def __init__(self, alpha=1.0):
        self.alpha = alpha

    def prepare(self, lm, data):
        pass

    def batches(self, fidelity=None):
        return []

    def score(self, logits, batch):
        return np.zeros(1)

    def finish(self, partials):
        return self.alpha


class Bare(Scaled):
    """No options declared, no data wanted."""
    name = "bare"
    OPTIONS = {}
    wants_data = False

    def __init__(self):
        self.alpha = 2.0
'''


@pytest.fixture()
def user_module(tmp_path, monkeypatch):
    (tmp_path / "user_objectives.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_objectives"


@pytest.fixture()
def mc_file(tmp_path):
    path = tmp_path / "mc.jsonl"
    path.write_text('{"question": "2+2?", "choices": ["3", "4"], "answer": 1}\n' * 4)
    return path


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and text
    return text


@pytest.mark.parametrize("spec", ["ppl", "kl", "acc", "ppl:0.5,acc:0.5", "user_objectives:Scaled"])
def test_a_misspelt_option_is_one_line_naming_it(spec, user_module):
    for check in (lambda: validate_objective_spec(spec, {"tokenz": 64}), lambda: build_objective(spec, tokenz=64)):
        with pytest.raises(UserError) as exc:
            check()
        assert "'tokenz'" in one_line(exc)


@pytest.mark.parametrize("spec,options,needle", [
    ("ppl", {"tokens": "abc"}, "--tokens must be a positive integer, got 'abc'"),
    ("ppl", {"seq_len": 0}, "--seq-len must be a positive integer"),
    ("kl", {"topk": -1}, "--kl-topk (option topk) must be an integer of at least 512, got -1"),
    ("kl", {"tokens": True}, "--tokens must be a positive integer"),
    ("acc", {"metric": "top1"}, "--acc-metric (option metric) must be one of acc, acc_norm, got 'top1'"),
    ("acc", {"questions": 2.5}, "--questions must be a positive integer, got 2.5"),
    ("ppl:0.5,kl:0.5", {"topk": 100}, "--kl-topk"),
    ("user_objectives:Scaled", {"alpha": "x"}, "--alpha must be a number, got 'x'"),
])
def test_a_bad_value_is_one_line_naming_the_option(spec, options, needle, user_module):
    for check in (lambda: validate_objective_spec(spec, options), lambda: build_objective(spec, **options)):
        with pytest.raises(UserError) as exc:
            check()
        assert needle in one_line(exc)


def test_an_option_no_objective_of_the_run_takes_is_an_error(user_module):
    """The run is the judge: an option goes to the objectives that take it, and one that none takes is a mistake."""
    with pytest.raises(UserError) as exc:
        validate_objective_spec("ppl", {"questions": 5})
    assert one_line(exc) == "objective 'ppl' has no option 'questions' (its options: tokens, seq_len, batch_size)"
    with pytest.raises(UserError, match="none of the objectives ppl, kl has option 'metric'"):
        validate_objective_spec(["ppl", "kl"], {"metric": "acc"})
    with pytest.raises(UserError, match="'user_objectives:Bare' has no option 'tokens' .it takes no options"):
        validate_objective_spec("user_objectives:Bare", {"tokens": 64})
    # taken by one objective of the run: fine for all; options not set (None) are not options
    validate_objective_spec(["ppl", "acc"], {"tokens": 64, "questions": 5, "topk": None})
    validate_objective_spec("ppl:0.5,acc:0.5", {"tokens": 64, "metric": "acc_norm"})
    validate_objective_spec(["user_objectives:Scaled", "kl"], {"alpha": 0.5, "topk": 512})


def test_each_objective_gets_the_options_it_declares(text_file, mc_file, user_module):
    obj, _ = build_objective("ppl:1,kl:2,acc:1", data=str(text_file), tasks=str(mc_file),
                             tokens=64, seq_len=16, topk=512, questions=3, metric="acc_norm", batch_size=4)
    ppl, kl, acc = (o for o, _, _ in obj.parts)
    assert ppl.settings() == {"tokens": 64, "seq_len": 16, "batch_size": 4}
    assert kl.settings() == {"tokens": 64, "seq_len": 16, "batch_size": 4, "kl_topk": 512}
    assert acc.settings() == {"questions": 3, "batch_size": 4, "metric": "acc_norm"}
    assert [w for _, w, _ in obj.parts] == [1.0, 2.0, 1.0]
    user, data = build_objective("user_objectives:Scaled", tasks=str(mc_file), alpha=3, tokens=64)
    assert isinstance(user, UserObjective) and user.inner.alpha == 3.0
    assert user.settings() == {"class": "user_objectives:Scaled", "alpha": 3.0}
    assert isinstance(data, MCData) and user.data_kind == "mc"  # the multiple-choice set, as the class declares


def test_the_adapter_declares_what_a_user_class_leaves_out(user_module):
    bare, data = build_objective("user_objectives:Bare")
    assert data is None and isinstance(bare, UserObjective)
    assert (bare.wants_data, bare.rows_additive, bare.positions_additive) == (False, False, False)
    assert bare.report([]) == {"bare": 2.0}
    base = ObjectiveBase()
    assert (base.data_kind, base.wants_data, base.rows_additive, base.positions_additive) == ("text", True, False, False)
    with pytest.raises(UserError, match="has no option 'x'"):
        ObjectiveBase(x=1)


class _Fixed:
    """An objective whose value is fixed, to read the composite's arithmetic."""

    def __init__(self, name, direction):
        self.name, self.direction = name, direction

    def finish(self, partials):
        return float(partials[0])


@pytest.mark.parametrize("direction,dense,better,worse", [
    ("minimize", 10.0, 8.0, 12.0), ("maximize", 0.5, 0.6, 0.4),
    ("minimize", -4.0, -5.0, -3.0),  # a log-likelihood-like loss below zero
    ("maximize", -4.0, -3.0, -5.0), ("minimize", 0.0, -1.0, 1.0),
])
def test_composite_terms_are_one_at_dense_and_grow_as_the_model_gets_worse(direction, dense, better, worse):
    comp = Composite([(_Fixed("f", direction), 2.0, None)])
    comp.dense = [dense]
    at = {v: comp.finish([(0, v)]) for v in (better, dense, worse)}
    assert at[better] < at[dense] < at[worse]
    if dense:
        assert at[dense] == pytest.approx(2.0)
    assert np.isnan(comp.finish([(0, float("nan"))]))


def test_composite_keeps_the_ratio_to_the_dense_value():
    ppl, acc = _Fixed("ppl", "minimize"), _Fixed("acc", "maximize")
    comp = Composite([(ppl, 0.5, None), (acc, 0.5, None)])
    comp.dense = [20.0, 0.4]
    assert comp.finish([(0, 30.0), (1, 0.3)]) == pytest.approx(0.5 * 30 / 20 + 0.5 * (1 + (0.4 - 0.3) / 0.4))


# --- through the command line, before any model loads ------------------------------------------------

@pytest.fixture()
def no_model(monkeypatch):
    """A loader that fails the test: the option checks must come first."""
    from dpopt import api

    def load(*_, **__):
        raise AssertionError("the model was loaded before the objective's options were checked")

    monkeypatch.setattr(api, "load", load)


@pytest.mark.parametrize("command,extra,needle", [
    ("search", ["--objective", "ppl", "--questions", "5"], "objective 'ppl' has no option 'questions'"),
    ("search", ["--objective", "kl", "--acc-metric", "acc_norm"], "objective 'kl' has no option 'metric'"),
    ("search", ["--objective", "acc", "--tokens", "64"], "objective 'acc' has no option 'tokens'"),
    ("search", ["--objective", "ppl:0.5,kl:0.5", "--questions", "5"], "none of the objectives ppl, kl has option 'questions'"),
    ("search", ["--objective", "user_objectives:Bare", "--tokens", "64"], "has no option 'tokens'"),
    ("search", ["--objective", "kl", "--kl-topk", "-1"], "--kl-topk (option topk) must be an integer of at least 512"),
    ("search", ["--objective", "ppl", "--tokens", "0"], "--tokens must be a positive integer"),
    ("search", ["--objective", "ppl", "--tokens", "abc"], "--tokens: invalid int value"),
    ("eval", ["--objective", "ppl;kl", "--questions", "5"], "none of the objectives ppl, kl has option 'questions'"),
    ("eval", ["--objective", "ppl;acc", "--kl-topk", "512"], "none of the objectives ppl, acc has option 'topk'"),
    ("eval", ["--objective", "ppl;kl", "--kl-topk", "100"], "--kl-topk (option topk) must be an integer of at least 512"),
])
def test_cli_option_mistakes_are_one_line_exit_2_before_the_model_loads(command, extra, needle, user_module, no_model,
                                                                       tmp_path, capsys):
    args = [command, "--model", str(tmp_path / "no-such-model")] + extra
    if command == "search":
        args += ["--remove", "1", "--storage", "none"]
    rc = main(args)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("dpopt: error"), err
    assert needle in lines[0], lines[0]


def test_cli_hands_each_objective_of_eval_the_options_it_takes(no_model, capsys):
    """``--questions`` with ``ppl;acc`` is for acc: the check passes and the run goes on to load the model."""
    with pytest.raises(AssertionError, match="the model was loaded"):
        main(["eval", "--model", "org/none", "--objective", "ppl;acc", "--questions", "5", "--tokens", "64"])
