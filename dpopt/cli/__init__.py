"""``dpopt`` command line: argument parsing only; every command calls :mod:`dpopt.api`.

A mistake the user can fix (bad model name, bad mask, unreadable data, unwritable output)
ends with one line on stderr and exit status 2; an interrupted run exits 130 with what it
had already recorded kept in the study.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Sequence

from ..errors import UserError
from .parser import build_parser


def _objective_options(a) -> dict:
    """The objective's options the user set (an unset one is not passed, so it keeps its default)."""
    given = dict(tokens=a.tokens, seq_len=a.seq_len, batch_size=a.batch_size, questions=a.questions,
                 topk=a.kl_topk, metric=a.acc_metric)
    return {k: v for k, v in given.items() if v is not None}


def _problem(a, objective: str, split: str | None = None, shared: Sequence[str] = (), **extra):
    """The Problem the arguments describe, validated before anything loads. ``shared``: every
    objective of a run that hands them all the same options (checked together first)."""
    from ..api import Problem, validate_objective_spec

    if shared:
        validate_objective_spec(list(shared), _objective_options(a))
    return Problem(model=a.model, objective=objective, options=_objective_options(a), data=a.data, tasks=a.tasks,
                   split=split or a.split, data_seed=a.data_seed, dtype=a.dtype, prefix_sharing=not a.no_prefix_sharing,
                   cache_mb=a.cache_mb, memory_mb=a.memory_mb, patch=a.patch, patch_tokens=a.patch_tokens,
                   **extra).validate(shared_options=bool(shared))


def _grid_options(a) -> dict[str, dict]:
    """``--option ALGO.KEY=VALUE`` grouped by searcher."""
    out: dict[str, dict] = {}
    for text in a.option:
        key, value = _parse_option(text)
        algo, dot, opt = key.rpartition(".")
        if not dot or not algo or not opt:
            raise UserError(f"--option {text!r} must be ALGO.KEY=VALUE, e.g. genetic.population=48")
        out.setdefault(algo, {})[opt] = value
    return out


def _grid_kwargs(a) -> dict:
    return dict(algos=a.algos, remove=a.remove, budget=a.budget, seeds=a.seeds, report=a.report, storage=a.storage,
                data=a.data, tasks=a.tasks, data_seed=a.data_seed, protect=a.protect,
                brute_force=True if a.brute_force else None, reference_budget=a.reference_budget,
                seconds=a.time_budget, algo_options=_grid_options(a),
                overwrite=a.overwrite, progress=not a.no_progress,
                evaluator_options=dict(prefix_sharing=not a.no_prefix_sharing, cache_mb=a.cache_mb,
                                       memory_mb=a.memory_mb, patch=a.patch, patch_tokens=a.patch_tokens),
                heldout_options=dict(tokens=a.heldout_tokens, questions=a.heldout_questions),
                repair=_repair_plan(a), **_objective_options(a))


def _repair_plan(a):
    """``--repair KIND`` as a plan (None without it); the options that only mean something with it are refused alone."""
    from ..api import RepairPlan

    if a.repair is None:
        for flag, value, default in (("--repair-top", a.repair_top, 5), ("--repair-tokens", a.repair_tokens, 16384)):
            if value != default:
                raise UserError(f"{flag} needs --repair patch|heal")
        return None
    return RepairPlan(a.repair, top=a.repair_top, tokens=a.repair_tokens, patch_tokens=a.patch_tokens).validate()


def _check_grid(a) -> None:
    from ..api import GridPlan, parse_names

    GridPlan(parse_names(a.algos, "--algos"), a.seeds, a.budget, a.report, a.overwrite, a.storage,
             a.reference_budget).validate()
    _grid_options(a)
    for flag, value in (("--heldout-tokens", a.heldout_tokens), ("--heldout-questions", a.heldout_questions)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    _repair_plan(a)


def cmd_compare(a) -> int:
    from .. import api

    _check_grid(a)  # every mistake before the model loads
    heldout = api.parse_names(a.heldout, "--heldout") if a.heldout.strip() else []
    api.check_repair(_repair_plan(a), heldout or [a.objective])
    problem = _problem(a, a.objective, split="calib", shared=[a.objective, *heldout])
    for spec in heldout:
        _problem(a, spec, split="eval", shared=[a.objective, *heldout])
    lm = api.load(problem.model, a.device, problem.dtype)
    res = api.compare(lm, a.objective, heldout=heldout, **_grid_kwargs(a))
    g = res.grid
    failed = [f"{r.algo} seed {r.seed}" for r in g.experiment.runs if not r.ok]
    print(f"{len(g.experiment.runs)} runs ({len(failed)} failed{': ' + ', '.join(failed) if failed else ''}); "
          f"{g.evaluations} evaluations counted, {g.masks_computed} distinct masks computed")
    ref = res.report.get("reference")
    if ref is not None:
        print(f"reference {g.experiment.objective} = {ref.value:.6g} removing {list(ref.removed)} "
              f"({'exact optimum, brute force' if ref.exact else 'best known, not proven'})")
    for row in res.report.get("rows", []):
        print(f"  {row.algo:<14} median {row.median:.6g}  best {row.best:.6g}  ok {row.n_ok}/{row.n_ok + row.n_failed}")
    if res.repair is not None:
        print("\n".join(res.repair.lines()))
    print(f"report: {os.path.join(a.report, 'index.html')} (and report.md); studies in {res.storage}")
    return 0


def cmd_study(a) -> int:
    from .. import api

    _check_grid(a)
    objectives = api.parse_names(a.objectives, "--objectives")
    if len(objectives) < 2:
        raise UserError("study needs at least two --objectives (e.g. ppl,kl); for one use dpopt compare")
    if a.random_masks < 0:
        raise UserError(f"--random-masks must be >= 0, got {a.random_masks}")
    held = api.parse_names(a.heldout, "--heldout") if a.heldout else []
    api.check_repair(_repair_plan(a), held or objectives)
    problem = [_problem(a, spec, split="calib", shared=objectives + held) for spec in objectives][0]
    for spec in held:
        _problem(a, spec, split="eval", shared=objectives + held)
    lm = api.load(problem.model, a.device, problem.dtype)
    res = api.run_study(lm, a.objectives, random_masks=a.random_masks, heldout=a.heldout, **_grid_kwargs(a))
    print(res.report.get("headline", ""))
    for c in res.report.get("correlations", []):
        print(f"  {c.a} vs {c.b}: Spearman {c.spearman:.3f}, Kendall {c.kendall:.3f} over {c.n} masks")
    if res.repair is not None:
        print("\n".join(res.repair.lines()))
    print(f"report: {os.path.join(a.report, 'index.html')} (and report.md); studies in {res.storage}")
    return 0


def cmd_worker(a) -> int:
    from .. import api

    api.stop_on_sigterm()
    api.run_worker(a.storage, a.study, device=a.device, take=a.take, idle_exit=a.idle_exit)
    return 0


def _parse_option(text: str):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UserError(f"--option {text!r} must be KEY=VALUE")
    try:
        return key.replace("-", "_"), json.loads(value)
    except json.JSONDecodeError:
        return key.replace("-", "_"), value


def cmd_search(a) -> int:
    from .. import api

    minimize = tuple(m.strip() for m in (a.minimize or "").split(",") if m.strip())
    pareto = a.pareto or (str(Path(a.output).with_name("pareto.json")) if minimize and a.output else None)
    plan = api.SearchPlan(algo=a.algo, algo_options=dict(_parse_option(o) for o in a.option), remove=a.remove,
                          sparsity=a.sparsity, protect=a.protect, max_params=a.max_params, max_latency=a.max_latency,
                          budget=a.budget, seconds=a.time_budget, seed=a.seed, storage=a.storage, study=a.study,
                          output=a.output, pareto=pareto, workers=a.workers,
                          queue=a.queue).validate(minimizes=bool(minimize))
    problem = _problem(a, a.objective, units=a.units, tie=a.tie, minimize=minimize,
                       cost_options=dict(_parse_option(o) for o in a.cost_option))
    lm = api.load(problem.model, a.device, problem.dtype)
    res = api.run(lm, problem.build(lm), plan, progress=not a.no_progress, cost_options=problem.cost_options)
    what = f"{res.removed_layers} of {res.n_blocks} blocks" if res.units == "block" else \
        f"{', '.join(res.removed_units)} ({res.units} units of a {res.n_blocks}-block model)"
    print(f"best mask: remove {what} ({a.algo}, {res.evaluations} evaluations, {res.wall_seconds:.1f} s)")
    print(f"{res.objective}: {res.fitness:.6g}  (dense model: {res.dense_fitness:.6g})")
    if res.pareto:
        print(_front_table(res.pareto))
    if a.output:
        print(f"wrote {a.output}")
    if res.study:
        print(f"study {res.study!r} in {res.storage} ({res.evaluations} evaluations recorded)")
    print(_next_commands(a, res))
    if res.interrupted:
        print("dpopt: interrupted; this is the best so far. Rerun the same command to resume.", file=sys.stderr)
        return 130
    return 0


def _front_table(doc: dict) -> str:
    """The Pareto front, one line per point, as ``dpopt export --point N`` numbers them."""
    metrics = doc["metrics"]
    lines = [f"Pareto front: {len(doc['points'])} points of {doc['evaluated']} masks scored"
             + (f" (written to {doc['file']}, plot {doc.get('plot')})" if doc.get("file") else ""),
             "  point  " + "  ".join(f"{m:>12}" for m in metrics) + "  removed"]
    for p in doc["points"]:
        lines.append(f"  {p['point']:>5}  " + "  ".join(f"{p['values'][m]:>12.5g}" for m in metrics)
                     + f"  {','.join(u.removeprefix('block.') for u in p['removed_units'])}")
    for name, noise in (doc.get("noise") or {}).items():
        lines.append(f"  {name} noise: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                                       for k, v in noise.items()))
    return "\n".join(lines)


def _next_commands(a, res) -> str:
    """What a user runs next with this mask: export it, judge it on held-out data, look at the study."""
    exe = "dpopt"
    removed = ",".join(u.removeprefix("block.") for u in res.removed_units) if res.removed_units \
        else ",".join(map(str, res.removed_layers))
    model = a.model if " " not in a.model else repr(a.model)
    data = f" --data {a.data}" if a.data else ""
    patch = f" --patch {a.patch}{data}" if a.patch else ""
    lines = ["next:",
             f"  {exe} export --model {model} --remove {removed}{patch} --out pruned-model",
             *([f"  {exe} export --model {model} --from-result {res.pareto['file']} --point N --out pruned-model"
                "   # any point of the front"] if res.pareto and res.pareto.get("file") else []),
             f"  {exe} eval --model {model} --remove {removed} --objective 'ppl;kl'{data}"
             f"{' --patch ' + a.patch if a.patch else ''}   # held-out split"]
    if res.study:
        lines.append(f"  {exe} dashboard --storage {res.storage}")
    return "\n".join(lines)


def cmd_eval(a) -> int:
    from .. import api

    specs = [s.strip() for s in a.objective.split(";") if s.strip()]
    if not specs:
        raise UserError("--objective is empty")
    problem = [_problem(a, spec, shared=specs) for spec in specs][0]
    lm = api.load(problem.model, a.device, problem.dtype)
    res = api.evaluate_mask(lm, a.remove, specs, data=a.data, tasks=a.tasks, split=a.split, data_seed=a.data_seed,
                            prefix_sharing=not a.no_prefix_sharing, cache_mb=a.cache_mb, memory_mb=a.memory_mb,
                            patch=a.patch, patch_tokens=a.patch_tokens, **_objective_options(a))
    if a.json:
        print(json.dumps(res, indent=2))
        return 0
    patch = f", each span patched ({a.patch}, fitted on the calib split)" if a.patch else ""
    print(f"model {res['model']}, removed {', '.join(res['removed_units']) or 'nothing'}{patch}, {res['split']} split "
          f"(data seed {res['data_seed']})")
    for name, row in res["objectives"].items():
        extra = "".join(f"  {k}={v:.4f}" for k, v in row["details"].items() if k != name)
        print(f"{name:>10}: pruned {row['pruned']:.6g}   dense {row['dense']:.6g}{extra}")
    return 0


def cmd_export(a) -> int:
    from .. import api

    remove = a.remove
    if a.from_result:
        remove = api.removal_from_result(a.from_result, a.point)
    elif a.point is not None:
        raise UserError("--point picks a point of --from-result pareto.json")
    fmt = a.format or ("gguf" if str(a.out).lower().endswith(".gguf") else "transformers")
    api.prepare_export(a.out, a.force, fmt)  # fail before the model loads
    options = {"seq_len": a.seq_len} if a.seq_len is not None else {}
    problem = api.Problem(model=a.model, dtype=a.dtype, data=a.data, data_seed=a.data_seed, options=options,
                          patch=a.patch, patch_tokens=a.patch_tokens).validate()
    lm = api.load(problem.model, a.device, problem.dtype)
    out = api.export(lm, remove, a.out, force=a.force, format=fmt, gguf_type=a.gguf_type, patch=problem)
    space, mask = api.parse_removed_units(lm, remove)
    units = api.removed_unit_names(lm, space, mask)
    dropped = sum(u.startswith("block.") for u in units)
    print(f"wrote {out}: {lm.n_blocks - dropped} of {lm.n_blocks} blocks kept (removed {', '.join(units)})")
    if a.patch:  # where each span's map went, as the export's config records it
        for note in json.loads((Path(out) / "config.json").read_text()).get("dpopt_patch") or []:
            print(f"  patch: {note}")
    return 0


def cmd_heal(a) -> int:
    from .. import api

    remove = a.remove
    if a.from_result:
        remove = api.removal_from_result(a.from_result, a.point)
    elif a.point is not None:
        raise UserError("--point picks a point of --from-result pareto.json")
    plan = api.HealPlan(tokens=a.tokens, out=a.out, method=a.method, train=a.train, lr=a.lr, warmup=a.warmup,
                        weight_decay=a.weight_decay, seq_len=a.seq_len, batch_size=a.batch_size, topk=a.topk,
                        seed=a.seed, data=a.data, data_seed=a.data_seed, checkpoint_every=a.checkpoint_every,
                        state=a.state, lora_rank=a.lora_rank, lora_alpha=a.lora_alpha, heldout=a.heldout,
                        tasks=a.tasks, eval_tokens=a.eval_tokens, questions=a.questions, force=a.force).validate()
    problem = api.Problem(model=a.model, dtype=a.dtype).validate()
    lm = api.load(problem.model, a.device, problem.dtype)
    space, mask = api.parse_removed_units(lm, remove)
    try:
        res = api.heal(lm, api.removed_unit_names(lm, space, mask), plan, progress=not a.no_progress)
    except KeyboardInterrupt as exc:
        where = f" {exc};" if str(exc) else ";"  # before training started there is nothing to keep
        print(f"dpopt: interrupted{where} rerun the same command to resume", file=sys.stderr)
        return 130
    print(json.dumps(res.to_dict(), indent=2) if a.json else "\n".join(api.describe_heal(res)))
    return 0


def cmd_models(a) -> int:
    from .. import api

    print(f"{'name':<16}{'family':<10}{'blocks':>7}{'params':>9}  license")
    for name, m, default in api.zoo_models():
        star = " (default)" if default else ""
        print(f"{name:<16}{m.family:<10}{m.n_blocks:>7}{m.params:>9}  {m.license}  [{m.package}=={m.version}]{star}")
    print("Also accepted: a checkpoint folder, a .gguf file, or a hub id already in the local cache.")
    return 0


def cmd_data(a) -> int:
    from .. import api

    print(f"{'name':<13}{'kind':<6}{'size':>7}  {'license':<18}description")
    for row in api.zoo_data():
        print(f"{row.name:<13}{row.kind:<6}{row.size if row.size is not None else '?':>7}  {row.license:<18}{row.description}")
    print("Also accepted: a local .txt or .jsonl file, a save_to_disk folder, or hf:NAME[:CONFIG][:SPLIT].")
    return 0


def cmd_algos(a) -> int:
    from .. import api

    rows, prefixes = api.searchers()
    for name, doc in rows:
        print(f"{name:<12}{doc}")
    for prefix, help in prefixes:  # whole foreign registries: ng:NAME, optuna:NAME
        print(f"{prefix + ':NAME':<12}{help}")
    return 0


def cmd_fetch(a) -> int:
    from .. import api

    for name in a.names:
        print(f"{name}: {api.fetch(name)}")
    return 0


def cmd_dashboard(a) -> int:
    from .. import api

    return api.serve_dashboard(a.storage, host=a.host, port=a.port)


COMMANDS = {"search": cmd_search, "eval": cmd_eval, "export": cmd_export, "heal": cmd_heal, "models": cmd_models, "data": cmd_data,
            "algos": cmd_algos, "compare": cmd_compare, "study": cmd_study, "fetch": cmd_fetch,
            "dashboard": cmd_dashboard, "worker": cmd_worker}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub is reachable: never wait on it
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"dpopt: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        detail = f" {exc};" if str(exc) else ";"  # e.g. before any mask was scored: no result.json
        print(f"dpopt: interrupted{detail} evaluations so far are kept in the study", file=sys.stderr)
        return 130
