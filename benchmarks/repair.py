"""Repair after pruning: the plain drop, the linear patch, a search that scores with the patch,
and healing by distillation, all scored on the same held-out sequences; and whether the best
mask before repair is still the best after.

One model, one objective, K blocks removed. In one run:

1. the plain search: one genetic run (``--budget``) plus the grid's reference (brute force
   where the space fits ``--reference-budget``, else a long genetic run); the ``--top`` best
   distinct masks it recorded are the candidates (a storage that already holds these runs
   answers them without model work);
2. a search that scores every mask with its linear patch fitted (``--patch-budget``);
3. the candidates re-ranked after the patch, then after healing each by distillation
   (``--heal-tokens`` calibration tokens per mask; tokens/s measured);
4. a report (Markdown + HTML, ``repair.json``): held-out ppl and KL with 95% intervals over
   sequences of the dense model, the best plain mask (plain and patched), the best mask of the
   patched search, and every candidate healed; the rank correlations before vs after each
   repair, and whether the best mask changed beyond the noise.

    python benchmarks/repair.py --model smollm2-135m --remove 6 --report benchmarks/reports/repair-smollm2
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

import dpopt
from dpopt.experiments.document import Doc, to_html, to_markdown
from dpopt.fitness import to_minimize
from dpopt.experiments.grid import recorded_values
from dpopt.experiments.report import prepare_dir
from dpopt.experiments.report_repair import repair_section
from dpopt.experiments.rerank import RepairPlan, rerank, top_candidates
from dpopt.genome import LayerMask
from dpopt.heal.heldout import HELDOUT, HeldOut, interval
from dpopt.models.patch import PatchSettings, patcher_for

NAMES = ("ppl", "kl")


def _search(lm, a, storage: str, patch: bool):
    """One genetic run (and, for the plain search, the grid's reference): the grid and its evaluator."""
    from dpopt.experiments.grid import run_grid
    from dpopt.genome import Constraint
    from dpopt.problem import problem_for

    ev_opts = dict(patch="linear", patch_tokens=a.patch_tokens) if patch else {}
    ev = problem_for(lm, a.objective, split="calib", tokens=a.tokens, seq_len=a.seq_len, **ev_opts).build(lm)
    constraint = Constraint.build(lm.n_blocks, remove=a.remove)
    grid = run_grid(ev, constraint, ["genetic"], 1, a.patch_budget if patch else a.budget, storage, lm.source,
                    ev.objective.name, brute_force=None, progress=not a.no_progress, extra=dict(model=lm.source),
                    reference_budget=0 if patch else a.reference_budget)
    return grid, ev


def _loads_and_generates(lm, mask: LayerMask, a) -> list[list[str]]:
    """The patched export and a healed checkpoint, reloaded with plain transformers, each generating
    from one prompt (greedy): the checkpoints a user ships. The healed one is a short heal
    (``--generate-heal-tokens``): it shows the checkpoint, not the healing."""
    import tempfile

    from transformers import AutoModelForCausalLM

    from dpopt.heal import HealPlan, heal
    from dpopt.problem import problem_for

    removed = ",".join(map(str, mask.removed()))
    rows = []
    with tempfile.TemporaryDirectory(prefix="dpopt-repair-") as tmp:
        problem = problem_for(lm, a.objective, patch="linear", patch_tokens=a.patch_tokens, seq_len=a.seq_len)
        outs = {"patched (dpopt export --patch linear)": dpopt.export(lm, removed, f"{tmp}/patched", patch=problem)}
        plan = HealPlan(tokens=a.generate_heal_tokens, out=f"{tmp}/healed", seq_len=a.heal_seq_len, heldout="",
                        lr=a.heal_lr).validate()
        outs[f"healed (dpopt heal, {a.generate_heal_tokens} tokens)"] = heal(
            lm, [f"block.{i}" for i in mask.removed()], plan, progress=False).out
        for what, path in outs.items():
            model = AutoModelForCausalLM.from_pretrained(path).eval()
            ids = lm.tokenizer(a.prompt, return_tensors="pt").input_ids
            with torch.no_grad():
                gen = model.generate(ids, max_new_tokens=12, do_sample=False)
            text = lm.tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
            rows.append([what, f"{model.config.num_hidden_layers} blocks", repr(a.prompt + text)])
    return rows


def _row(label: str, items: dict, note: str = "") -> list[str]:
    return [label] + [interval(HELDOUT.get(n), items[n]).text() for n in NAMES] + [note]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--objective", default="kl")
    ap.add_argument("--remove", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=128, help="calibration tokens of the searches")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--budget", type=int, default=100, help="evaluations of the plain genetic run")
    ap.add_argument("--reference-budget", type=int, default=500)
    ap.add_argument("--patch-budget", type=int, default=100, help="evaluations of the patched genetic run")
    ap.add_argument("--patch-tokens", type=int, default=2048, help="calibration tokens each patch fit reads")
    ap.add_argument("--top", type=int, default=5, help="candidate masks re-ranked after repair")
    ap.add_argument("--heal-tokens", type=int, default=8192, help="calibration tokens each candidate is distilled on")
    ap.add_argument("--heal-seq-len", type=int, default=128)
    ap.add_argument("--heal-lr", type=float, default=1e-4)
    ap.add_argument("--heldout-tokens", type=int, default=1024)
    ap.add_argument("--generate-heal-tokens", type=int, default=1024,
                    help="the short heal whose checkpoint is reloaded and generates")
    ap.add_argument("--prompt", default="The capital of France is")
    ap.add_argument("--storage", default="sqlite:///runs/repair.db")
    ap.add_argument("--report", required=True)
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args()

    start = time.perf_counter()
    out = prepare_dir(a.report, a.overwrite)
    lm = dpopt.load(a.model, device="cpu")
    t0 = time.perf_counter()
    plain, ev = _search(lm, a, a.storage, patch=False)
    plain_s = time.perf_counter() - t0
    values = recorded_values(plain, ev)
    cands = top_candidates({ev.objective.name: values}, {ev.objective.name: plain.experiment.direction}, a.top)
    t0 = time.perf_counter()
    patched, pev = _search(lm, a, a.storage, patch=True)
    patched_s = time.perf_counter() - t0
    pvalues = recorded_values(patched, pev)
    best_patched = min(pvalues, key=lambda r: to_minimize(pvalues[r], patched.experiment.direction))

    held = HeldOut(lm, list(NAMES), None, None, 0, a.heldout_tokens, a.seq_len, None)
    best_plain = LayerMask.from_removed(lm.n_blocks, cands[0].removed)
    patcher = patcher_for(lm, PatchSettings(tokens=a.patch_tokens, seq_len=a.seq_len))
    dense, bp_plain, bps_plain = held.items_for(lm, [LayerMask.dense(lm.n_blocks), best_plain,
                                                     LayerMask.from_removed(lm.n_blocks, best_patched)])
    bp_patched, bps_patched = held.items_for(lm, [best_plain, LayerMask.from_removed(lm.n_blocks, best_patched)],
                                             patch=patcher)
    common = dict(data=None, tasks=None, data_seed=0, tokens=a.heldout_tokens, seq_len=a.seq_len,
                  progress=not a.no_progress, prepared=held)
    by_patch = rerank(lm, cands, RepairPlan("patch", top=a.top, patch_tokens=a.patch_tokens), list(NAMES), **common)
    by_heal = rerank(lm, cands, RepairPlan("heal", top=a.top, tokens=a.heal_tokens, seq_len=a.heal_seq_len,
                                           lr=a.heal_lr), list(NAMES), **common)

    label = lambda r: "{" + ", ".join(map(str, r)) + "}"  # noqa: E731
    took = lambda g, sec: (f"{sec:.0f} s, {g.masks_computed} masks computed" if g.masks_computed  # noqa: E731
                           else f"{sec:.0f} s: every mask answered from the storage")
    heal_rows = [_row(f"{c.label()} healed", r.items, f"{ev.objective.name} #{c.picked_by[ev.objective.name]}; "
                      f"{r.tokens_per_second:,.0f} tok/s") for c, r in zip(by_heal.candidates, by_heal.repaired)]
    doc = Doc(f"dpopt repair: {a.model}, K={a.remove}, {ev.objective.name}")
    doc.table(["setting", "value"], [
        ["model", f"{a.model} ({lm.n_blocks} blocks)"], ["removed blocks (K)", a.remove],
        ["search objective", f"{ev.objective.name} on {a.tokens} calibration tokens, seq-len {a.seq_len}"],
        ["plain search", f"genetic, budget {a.budget}, reference: {plain.reference_note} ({took(plain, plain_s)})"],
        ["patched search", f"genetic, budget {a.patch_budget}, every mask scored with its patch "
                           f"({a.patch_tokens} fit tokens; {took(patched, patched_s)})"],
        ["healing", f"distillation of all weights, {a.heal_tokens} calibration tokens per mask "
                    f"(seq-len {a.heal_seq_len}, lr {a.heal_lr:g}, AdamW, warm-up + cosine)"],
        ["held-out", f"{a.heldout_tokens} tokens of the eval split in sequences of {a.seq_len}; 95% intervals over "
                     f"sequences (ppl: exp of the mean NLL's interval)"],
        ["machine", f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), "
                    f"torch {torch.__version__}, dpopt {dpopt.__version__}"],
    ])
    doc.h("Held-out ppl and KL")
    doc.table(["model", "ppl", "KL", "note"], [
        _row("dense", dense),
        _row(f"best plain mask {label(cands[0].removed)}", bp_plain, f"{ev.objective.name} #1 of the plain search"),
        _row("the same mask, patched", bp_patched),
        _row(f"best mask of the patched search {label(best_patched)}, patched", bps_patched,
             "scored with its patch during the search"),
        _row("the same mask, plain", bps_plain),
        *heal_rows])
    numbers = {"patch": repair_section(by_patch, out, doc), "heal": repair_section(by_heal, out, doc)}
    doc.h("The exports load in plain transformers and generate")
    generated = _loads_and_generates(lm, best_plain, a)
    doc.p(f"The best plain mask {label(cands[0].removed)}, written as a checkpoint, reloaded with "
          "AutoModelForCausalLM.from_pretrained and asked for 12 greedy tokens:")
    doc.table(["checkpoint", "size", "prompt + generated"], generated)
    numbers["generated"] = generated
    wall = time.perf_counter() - start
    doc.p(f"Wall time of this report: {wall:.0f} s.")
    (out / "report.md").write_text(to_markdown(doc), encoding="utf-8")
    (out / "index.html").write_text(to_html(doc), encoding="utf-8")
    numbers.update(best_plain=list(cands[0].removed), best_patched_search=list(best_patched), wall_seconds=wall)
    (out / "repair.json").write_text(json.dumps(numbers, indent=2), encoding="utf-8")
    for res in (by_patch, by_heal):
        print("\n".join(res.lines()))
    print(f"wall {wall:.0f} s; report {out / 'index.html'}")


if __name__ == "__main__":
    main()
