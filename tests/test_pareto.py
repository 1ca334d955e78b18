"""Size ranges, parameter budgets and Pareto fronts: the space, NSGA-II, the record, the files.

Synthetic objectives with a brute-forced true front say whether a front is right; a tiny
random model runs the whole path (study, pareto.json, export of a point).
"""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from dpopt.costs import CachedCost
from dpopt.errors import UserError
from dpopt.fitness import FunctionEvaluator
from dpopt.genome import Constraint, LayerMask, parse_params, parse_remove
from dpopt.optim import SEARCHERS, Budget, run_search
from dpopt.costs.pareto import front_points, hypervolume_2d, nondominated, point_units
from conftest import run_cli

N = 10
SIZES = np.array([3.0, 1.0, 2.0, 5.0, 1.0, 4.0, 2.0, 3.0, 1.0, 2.0])
HARM = np.array([0.9, 0.2, 0.5, 0.3, 0.8, 0.1, 0.6, 0.4, 0.7, 0.25])


def quality(mask: LayerMask) -> float:
    """Harm of the removed units, with a pair that interacts (removing 3 and 5 together costs extra)."""
    r = list(mask.removed())
    return float(HARM[r].sum() + (1.5 if 3 in r and 5 in r else 0.0))


class SizeCost(CachedCost):
    """Parameters kept (SIZES of the kept units); counts what it computes."""

    name, unit = "size", "units"

    def _compute(self, masks):
        return [float(SIZES[list(m.kept())].sum()) for m in masks]


def true_front(constraint: Constraint) -> np.ndarray:
    rows = []
    for combo in constraint.enumerate():
        m = LayerMask.from_removed(N, combo)
        rows.append([quality(m), float(SIZES[list(m.kept())].sum())])
    rows = np.array(rows)
    return rows[nondominated(rows)]


# --- the space ------------------------------------------------------------------------------
def test_parse_remove_and_params():
    assert parse_remove("6") == (6, 6) and parse_remove("4:10") == (4, 10) and parse_remove(3) == (3, 3)
    assert parse_params("100M") == 100e6 and parse_params("1.5G") == 1.5e9 and parse_params("90000") == 90000
    for bad in ("10:4", "a:3", "4-10"):
        with pytest.raises(UserError):
            parse_remove(bad)
    for bad in ("abc", "-5M", "0"):
        with pytest.raises(UserError):
            parse_params(bad)


def test_range_constraint_operators_stay_inside():
    c = Constraint.build(N, remove="2:5", protect=[0])
    rng = np.random.default_rng(0)
    counts = set()
    for _ in range(300):
        m = c.random_mask(rng)
        assert c.is_valid(m)
        counts.add(len(m.removed()))
        assert c.is_valid(c.swap_mutation(m, rng, 2))
        assert c.is_valid(c.resize_mutation(m, rng))
        assert c.is_valid(c.repair(rng.random(N) < 0.5, rng))
    assert counts == {2, 3, 4, 5}  # the whole range is sampled
    assert len(c.from_scores(rng.random(N)).removed()) == 2  # ranking removes the fewest allowed
    assert c.size() == sum(len(list(itertools.combinations(range(1, N), j))) for j in range(2, 6))
    assert c.size() == len(list(c.enumerate()))


def test_param_budget_constraint():
    total = SIZES.sum() + 10.0  # 10 for what no unit owns (embeddings)
    c = Constraint.build(N, max_params=total - 9.0, unit_params=SIZES, total_params=total)
    assert c.k == 2  # the two largest units (5 + 4) are the fewest that can meet the budget
    rng = np.random.default_rng(1)
    for _ in range(300):
        m = c.random_mask(rng)
        assert c.is_valid(m)
        kept = c.params_kept(m)
        assert kept <= total - 9.0
        # tight: no removed unit could come back within the budget
        assert all(kept + SIZES[u] > total - 9.0 for u in m.removed())
        assert c.is_valid(c.swap_mutation(m, rng, 1))
    m = c.from_scores(-SIZES)  # scores rank the largest units lowest: removed first
    assert set(m.removed()) == {3, 5}
    with pytest.raises(UserError, match="below what removing"):
        Constraint.build(N, max_params=9.0, unit_params=SIZES, total_params=total)
    with pytest.raises(UserError, match="already has"):
        Constraint.build(N, max_params=total + 1, unit_params=SIZES, total_params=total)
    with pytest.raises(UserError, match="empty"):
        Constraint.build(N, remove="5:2")


def test_greedy_goes_on_until_a_budget_holds():
    """The fewest units that can meet this budget are two (the largest); greedy's second step
    still misses it, and it must go on rather than stop at two removed."""
    total = SIZES.sum()
    c = Constraint.build(N, max_params=total - 8.0, unit_params=SIZES, total_params=total)
    assert c.k == 2
    ev = FunctionEvaluator(quality)
    res = run_search(SEARCHERS.get("greedy")(c, seed=0), ev, Budget(500))
    best = min((LayerMask.from_removed(N, combo) for combo in c.enumerate()), key=quality)
    assert c.is_valid(res.best) and quality(res.best) == pytest.approx(quality(best))  # 0.7; stopping at two: 1.9


# --- fronts ----------------------------------------------------------------------------------
def test_nondominated_and_hypervolume_against_brute_force():
    rng = np.random.default_rng(3)
    pts = rng.random((60, 2))
    keep = set(nondominated(pts))
    for i, p in enumerate(pts):
        dominated = any(np.all(q <= p) and np.any(q < p) for q in pts)
        assert (i in keep) == (not dominated)
    # hypervolume of a staircase, computed by hand
    assert hypervolume_2d(np.array([[1.0, 3.0], [2.0, 1.0]]), (4.0, 4.0)) == pytest.approx(3 * 1 + 2 * 2)
    # a grid estimate of the same area for random points
    front = pts[list(keep)]
    xs, ys = np.meshgrid(np.linspace(0, 1, 400, endpoint=False) + 1 / 800, np.linspace(0, 1, 400, endpoint=False) + 1 / 800)
    grid = np.stack([xs.ravel(), ys.ravel()], 1)
    covered = np.any(np.all(front[None, :, :] <= grid[:, None, :], axis=2), axis=1).mean()
    assert hypervolume_2d(front, (1.0, 1.0)) == pytest.approx(covered, abs=0.01)


def _run_front(algo, seed, budget, constraint):
    ev = FunctionEvaluator(quality)
    ev.costs = [SizeCost()]
    res = run_search(SEARCHERS.get(algo)(constraint, seed=seed), ev, Budget(budget))
    return np.array([r for _, r in res.extra["front"]]), res


def test_nsga2_finds_the_true_front_and_beats_random():
    c = Constraint.build(N, remove="1:8")
    truth = true_front(c)
    ref = (float(HARM.sum()) + 2.0, float(SIZES.sum()) + 1.0)
    hv_true = hypervolume_2d(truth, ref)
    hv = {"nsga2": [], "random": []}
    for seed in range(3):
        for algo in hv:
            front, res = _run_front(algo, seed, 200, c)
            hv[algo].append(hypervolume_2d(front, ref))
            # every reported point is a valid mask and no evaluated valid mask dominates it
            rows = np.array([r for _, r in res.extra["evaluated"]])
            for p in front:
                assert not any(np.all(r <= p) and np.any(r < p) for r in rows)
    assert min(hv["nsga2"]) >= 0.98 * hv_true, (hv, hv_true)
    assert np.median(hv["nsga2"]) > np.median(hv["random"]), hv
    assert c.size() > 200  # the space is larger than the budget: the front was searched, not listed


def test_single_objective_searcher_is_refused_with_costs():
    ev = FunctionEvaluator(quality)
    ev.costs = [SizeCost()]
    with pytest.raises(UserError, match="multi-objective"):
        run_search(SEARCHERS.get("greedy")(Constraint.build(N, remove=2), seed=0), ev, Budget(50))


def test_point_units_reads_fronts_and_results(tmp_path):
    pareto = tmp_path / "pareto.json"
    pareto.write_text(json.dumps({"points": [{"removed_units": ["block.1"]}, {"removed_units": ["attn.2", "block.4"]}]}))
    assert point_units(pareto, 1)[0] == ["attn.2", "block.4"]
    for bad, match in ((None, "choose one"), (2, "out of range"), (-1, "out of range")):
        with pytest.raises(UserError, match=match):
            point_units(pareto, bad)
    result = tmp_path / "result.json"
    result.write_text(json.dumps({"removed_units": ["block.3"]}))
    assert point_units(result, None)[0] == ["block.3"]
    with pytest.raises(UserError, match="no Pareto front"):
        point_units(result, 0)
    with pytest.raises(UserError, match="no such file"):
        point_units(tmp_path / "missing.json", None)


# --- the whole path on a tiny checkpoint --------------------------------------------------------
BLOCKS = 6


@pytest.fixture(scope="module")
def tiny_ck(tmp_path_factory):
    from dpopt.models.tiny import save_tiny_checkpoint

    path = tmp_path_factory.mktemp("ck") / "tiny-llama"
    save_tiny_checkpoint(path, "llama", BLOCKS, seed=0)
    return path


@pytest.fixture(scope="module")
def calib(text_file):
    return text_file


def _unit_params(model) -> dict[str, int]:
    """attn.I / mlp.I parameter counts read straight off the llama modules (norm with its branch)."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    out = {}
    for i, layer in enumerate(model.model.layers):
        out[f"attn.{i}"] = count(layer.self_attn) + count(layer.input_layernorm)
        out[f"mlp.{i}"] = count(layer.mlp) + count(layer.post_attention_layernorm)
    return out


def test_search_minimize_params_writes_a_front_the_study_agrees_with(tiny_ck, calib, tmp_path, capsys):
    import optuna
    from transformers import AutoModelForCausalLM

    db = f"sqlite:///{tmp_path}/s.db"
    rc, stdout, err = run_cli(["search", "--model", tiny_ck, "--algo", "nsga2", "--objective", "kl", "--data", calib,
                               "--units", "sublayer", "--remove", "2:8", "--minimize", "params", "--budget", 60,
                               "--tokens", 128, "--seq-len", 32, "--storage", db, "--study", "mo",
                               "--output", tmp_path / "result.json", "--no-progress"], capsys)
    assert rc == 0, err
    doc = json.loads((tmp_path / "pareto.json").read_text())
    assert (tmp_path / "pareto.png").stat().st_size > 1000
    assert doc["metrics"] == ["kl", "params"] and "Pareto front" in stdout and "--point N" in stdout
    model = AutoModelForCausalLM.from_pretrained(tiny_ck)
    sizes, total = _unit_params(model), sum(p.numel() for p in model.parameters())

    study = optuna.load_study(study_name="mo", storage=db)
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    assert study.metric_names == ["kl", "params"]
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) >= 40
    for t in done:
        assert 2 <= t.user_attrs["n_removed"] <= 8
        want = (total - sum(sizes[u] for u in t.user_attrs["removed"])) / 1e6
        assert t.values[1] == pytest.approx(want, rel=1e-9)
    # the front is exactly the non-dominated set of the study's candidates
    rows = np.array([t.values for t in done])
    want_front = {tuple(sorted(done[i].user_attrs["removed"])) for i in nondominated(rows)}
    got_front = set()
    for p in doc["points"]:
        names = []
        for u in p["removed_units"]:
            names += [f"attn.{u[6:]}", f"mlp.{u[6:]}"] if u.startswith("block.") else [u]
        got_front.add(tuple(sorted(names)))
    assert got_front == want_front and len(got_front) >= 3
    assert [p["values"]["params"] for p in doc["points"]] == sorted(p["values"]["params"] for p in doc["points"])

    point = doc["points"][1]
    rc, stdout, err = run_cli(["export", "--model", tiny_ck, "--from-result", tmp_path / "pareto.json", "--point", 1,
                               "--out", tmp_path / "pt1"], capsys)
    assert rc == 0, err
    assert json.loads((tmp_path / "pt1" / "config.json").read_text())["dpopt_removed_units"] == point["removed_units"]
    rc, _, err = run_cli(["export", "--model", tiny_ck, "--from-result", tmp_path / "pareto.json", "--point", 99,
                          "--out", tmp_path / "pt99"], capsys)
    assert rc == 2 and "out of range" in err and len(err.strip().splitlines()) == 1


def test_resume_reads_costs_from_the_study(tiny_ck, calib, tmp_path):
    from dpopt import api

    lm = api.load(str(tiny_ck))
    runs = []
    for _ in range(2):
        ev = api.make_evaluator(lm, "kl", data=str(calib), tokens=128, seq_len=32, minimize="params")
        res = api.search(lm, ev, "nsga2", remove="1:4", budget=30, storage=f"sqlite:///{tmp_path}/r.db",
                         output=str(tmp_path / "r.json"), progress=False)
        runs.append((ev.n_scored, ev.costs[0].n_computed, res.pareto["points"]))
    assert runs[0][0] > 20 and runs[0][1] > 20
    assert runs[1][0] == 0 and runs[1][1] == 0  # neither the objective nor the cost is computed again
    assert runs[1][2] == runs[0][2]


@pytest.mark.parametrize("args,match", [
    (["--remove", "10:4"], "range is empty"),
    (["--remove", "x:4"], "count K or a range"),
    (["--remove", "2", "--minimize", "params"], "multi-objective searcher"),
    (["--remove", "2", "--minimize", "speed", "--algo", "nsga2"], "speed"),
    (["--max-params", "1K"], "below what removing the largest 5 of the 6 removable blocks"),
    (["--max-params", "10G"], "already has"),
])
def test_bad_sizes_are_one_line(args, match, tiny_ck, calib, tmp_path, capsys):
    rc, _, err = run_cli(["search", "--model", tiny_ck, "--data", calib, "--algo", "greedy", "--tokens", 64,
                          "--seq-len", 32, "--storage", "none", "--output", tmp_path / "r.json", "--no-progress",
                          *args], capsys)
    lines = [x for x in err.splitlines() if x.strip() and not x.startswith("Loading weights")]
    assert rc == 2 and match in err and len(lines) == 1 and "Traceback" not in err, err


def test_minimize_latency_records_measured_values(tiny_ck, calib, tmp_path):
    """The measured cost travels the same path: one value per mask in the study, its settings in the fingerprint."""
    import optuna

    from dpopt import api

    lm = api.load(str(tiny_ck))
    ev = api.make_evaluator(lm, "kl", data=str(calib), tokens=64, seq_len=32, minimize="latency",
                            cost_options=dict(repeats=1, new_tokens=2, prompt_len=8))
    db = f"sqlite:///{tmp_path}/l.db"
    res = api.search(lm, ev, "random", remove="1:3", budget=12, storage=db, study="lat", output=None, progress=False)
    assert ev.fingerprint.settings["costs"]["latency"]["repeats"] == 1
    study = optuna.load_study(study_name="lat", storage=db)
    assert study.metric_names == ["kl", "latency"]
    cost = ev.costs[0]
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 12
    for t in done:
        mask = LayerMask([bool(t.params[f"keep_{i:02d}"]) for i in range(BLOCKS)])
        assert t.values[1] == cost.cache[mask.key()] > 0
    assert res.pareto["noise"]["latency"]["repeats"] == 1 and res.pareto["points"]


# --- a budget on a measured quantity ------------------------------------------------------------
TIME = np.array([2.0, 1.0, 3.0, 1.0, 2.0, 1.0, 4.0, 2.0, 1.0, 3.0])  # per unit: a stand-in for a latency


def _timed(calls):
    def fn(mask):
        calls.append(mask.key())
        return 5.0 + float(TIME[list(mask.kept())].sum())
    return fn


def test_measured_budget_constraint_keeps_every_operator_inside():
    calls = []
    dense = 5.0 + TIME.sum()
    c = Constraint.build(N, limit=("latency", "ms", _timed(calls), dense - 6.0))
    rng = np.random.default_rng(2)
    for _ in range(200):
        m = c.random_mask(rng)
        assert c.is_valid(m) and 5.0 + TIME[list(m.kept())].sum() <= dense - 6.0
        assert c.is_valid(c.swap_mutation(m, rng, 2))
        assert c.is_valid(c.repair(rng.random(N) < 0.8, rng))
    ranked = c.from_scores(-TIME)  # slowest units ranked lowest: removed first, the fewest that meet it
    assert set(ranked.removed()) == {6, 2} and c.is_valid(ranked)
    ev = FunctionEvaluator(quality)
    res = run_search(SEARCHERS.get("greedy")(c, seed=0), ev, Budget(500))
    best = min((m for m in (LayerMask.from_removed(N, r) for j in range(1, N) for r in itertools.combinations(range(N), j))
                if 5.0 + TIME[list(m.kept())].sum() <= dense - 6.0), key=quality)
    assert c.is_valid(res.best) and quality(res.best) <= quality(best) * 1.5
    assert "latency at most" in c.describe() and calls
    with pytest.raises(UserError, match="already measures"):
        Constraint.build(N, limit=("latency", "ms", _timed([]), dense + 1))
    with pytest.raises(UserError, match="below what removing"):
        Constraint.build(N, remove="1:3", limit=("latency", "ms", _timed([]), 6.0))


class BlockClock(CachedCost):
    """A latency that is exactly 1 + the blocks kept: the CLI's --max-latency path without timing noise
    (a tiny model's real latency is mostly per-call overhead; tests/test_latency.py covers measuring)."""

    name, unit = "latency", "ms/token"

    def __init__(self, lm, space, **options):
        super().__init__()
        self.calls = 0

    def _compute(self, masks):
        return [1.0 + len(m.kept()) for m in masks]


def test_max_latency_reaches_the_searcher_from_the_cli(tiny_ck, calib, tmp_path, capsys, monkeypatch):
    from dpopt.costs import COSTS

    monkeypatch.setitem(COSTS._items, "latency", BlockClock)
    out = tmp_path / "r.json"
    rc, stdout, err = run_cli(["search", "--model", tiny_ck, "--data", calib, "--algo", "greedy", "--objective", "kl",
                               "--max-latency", 4.5, "--tokens", 64, "--seq-len", 32, "--storage", "none",
                               "--output", out, "--no-progress"], capsys)
    assert rc == 0, err
    res = json.loads(out.read_text())
    assert len(res["removed_layers"]) == 3 and res["max_latency"] == 4.5  # 1 + 3 kept blocks <= 4.5 < 1 + 4
    rc, _, err = run_cli(["search", "--model", tiny_ck, "--data", calib, "--algo", "greedy", "--max-latency", 1.5,
                          "--remove", "1:2", "--storage", "none", "--output", out, "--no-progress"], capsys)
    assert rc == 2 and "below what removing 2 of the 6 removable blocks measures" in err
