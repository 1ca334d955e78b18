"""The Evaluator returns exactly what a naive per-mask loop through the model's own forward does.

The naive reference runs every mask separately: ``MaskedModel.applied(mask)`` then
``model(input_ids, attention_mask=..., position_ids=...)`` per objective batch, then
``objective.score`` / ``finish`` and the sign convention (minimise; maximised objectives
negated; non-finite -> inf). The evaluator must match it with prefix sharing on and off,
with its prefix cache cold and warm, on the mask sets real searchers produce.
"""
from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch

from dpopt.evaluator import Evaluator
from dpopt.fitness import race
from dpopt.genome import Constraint, LayerMask
from dpopt.objectives.acc import Accuracy
from dpopt.objectives.composite import Composite
from dpopt.objectives.kl import KLDivergence
from dpopt.objectives.ppl import Perplexity

N = 6
K = 2
REL = 1e-5


# --- the naive reference ---------------------------------------------------------------

@torch.no_grad()
def naive_raw(lm, objective, mask: LayerMask, fidelity=None) -> float:
    parts = []
    with lm.masked.applied(mask) as model:
        for b in objective.batches(fidelity):
            kwargs = {"use_cache": False}
            if b.attention_mask is not None:
                kwargs["attention_mask"] = b.attention_mask
            if b.position_ids is not None:
                kwargs["position_ids"] = b.position_ids
            logits = model(b.input_ids, **kwargs).logits
            parts.append(objective.score(logits, b))
    try:
        return float(objective.finish(parts))
    except (FloatingPointError, ValueError, ZeroDivisionError, OverflowError):
        return float("nan")


def naive_fitness(lm, objective, masks, fidelity=None) -> np.ndarray:
    out = []
    for m in masks:
        r = naive_raw(lm, objective, m, fidelity)
        if not math.isfinite(r):
            out.append(float("inf"))
        else:
            out.append(r if objective.direction == "minimize" else -r)
    return np.array(out)


def assert_close(got, want, rel=REL):
    got, want = np.asarray(got, float), np.asarray(want, float)
    assert got.shape == want.shape
    both_inf = np.isinf(got) & np.isinf(want)
    assert np.array_equal(np.isinf(got), np.isinf(want)), (got, want)
    g, w = got[~both_inf], want[~both_inf]
    diff = np.abs(g - w) / np.maximum(np.abs(w), 1e-12)
    # values that are ~0 (KL of a near-identical model) are compared absolutely
    diff = np.where(np.abs(w) < 1e-6, np.abs(g - w), diff)
    assert diff.size == 0 or diff.max() < rel, (got, want, diff.max())


# --- the mask sets searchers produce ----------------------------------------------------

def workloads(seed: int = 0) -> dict[str, list[LayerMask]]:
    rng = np.random.default_rng(seed)
    c = Constraint(N, K)
    random_masks = list(dict.fromkeys(c.random_mask(rng) for _ in range(12)))[:6]
    base = LayerMask.from_removed(N, [int(rng.integers(N))])
    greedy = [base.with_removed(i) for i in base.kept()]  # all single removals from a mask
    parent = c.random_mask(rng)
    offspring = [c.swap_mutation(parent, rng, n_swaps=int(rng.integers(1, 4))) for _ in range(6)]
    return {"random": random_masks, "greedy": greedy, "ga": [parent] + offspring}


# --- objectives --------------------------------------------------------------------------

def build_objective(name: str, lm, text_data, mc_data):
    if name == "ppl":
        obj, data = Perplexity(tokens=128, seq_len=32, batch_size=2), text_data
    elif name == "kl":
        obj, data = KLDivergence(tokens=128, seq_len=32, batch_size=2), text_data
    elif name == "kl_topk":
        obj, data = KLDivergence(tokens=128, seq_len=32, batch_size=2, topk=512), text_data
    elif name == "acc":
        obj, data = Accuracy(questions=8, batch_size=4), mc_data
    elif name == "composite":
        obj = Composite([(Perplexity(tokens=64, seq_len=32, batch_size=2), 0.5, text_data),
                         (Accuracy(questions=4, batch_size=4), 0.5, mc_data)])
        data = None
    else:
        raise KeyError(name)
    obj.prepare(lm, data)
    return obj


OBJECTIVES = ["ppl", "kl", "kl_topk", "acc", "composite"]
IDENTITY_FAMILIES = ["llama", "gemma3", "gpt2", "opt"]


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("family", IDENTITY_FAMILIES)
def test_evaluator_equals_naive_loop(family, objective, tiny_lm, text_data, mc_data):
    lm = tiny_lm(family, N, vocab_size=1024 if objective == "kl_topk" else None)
    obj = build_objective(objective, lm, text_data, mc_data)
    if objective == "kl_topk":
        assert obj.topk == 512 and isinstance(obj.batches()[0].extra["target"], tuple)
    sets = workloads(seed=zlib.crc32(f"{family}-{objective}".encode()) % 1000)
    want = {name: naive_fitness(lm, obj, masks) for name, masks in sets.items()}
    if objective == "kl":  # the dense model has KL 0, a pruned one more
        assert naive_fitness(lm, obj, [LayerMask.dense(N)])[0] < 1e-6
        assert all((w > 0).all() for w in want.values())

    for sharing in (True, False):
        ev = Evaluator(lm, obj, prefix_sharing=sharing)
        cold_calls = {}
        for name, masks in sets.items():
            before = ev.block_calls
            if name == "ga":  # a GA generation: the parent was scored in the previous one
                ev.evaluate(masks[:1])
            assert_close(ev.evaluate(masks), want[name])
            cold_calls[name] = ev.block_calls - before
        # raw() gives the objective's own value
        m0 = sets["random"][0]
        assert_close([ev.raw(m0)], [naive_raw(lm, obj, m0)])
        # warm: memo and partial scores forgotten, prefix cache kept
        ev.memo.clear()
        ev.partials.clear()
        seen: set[LayerMask] = set()
        for name, masks in sets.items():
            before = ev.block_calls
            assert_close(ev.evaluate(masks), want[name])
            new = [m for m in dict.fromkeys(masks) if m not in seen]
            seen.update(masks)
            if sharing:
                assert ev.block_calls - before <= cold_calls[name]
            else:  # nothing to share: every new mask runs all its kept blocks on every batch
                assert ev.block_calls - before == sum(len(m.kept()) for m in new) * len(obj.batches())
        assert not ev.failures
    # a fresh evaluator over all sets at once (one big prefix tree, some masks repeated)
    everything = [m for masks in sets.values() for m in masks]
    ev2 = Evaluator(lm, obj, prefix_sharing=True)
    assert_close(ev2.evaluate(everything), np.concatenate([want[k] for k in sets]))
    assert not ev2.failures


@pytest.mark.parametrize("objective", ["ppl", "kl", "kl_topk", "composite"])
def test_head_is_computed_a_few_sequences_and_positions_at_a_time(objective, tiny_lm, text_data, mc_data):
    """Under a memory budget below one position's logits, the head of ppl and kl sees one
    position of one sequence at a time, and the values are those of whole batches (ppl's
    next token past a slice included)."""
    lm = tiny_lm("gemma3", N, vocab_size=1024 if objective == "kl_topk" else None)
    obj = build_objective(objective, lm, text_data, mc_data)
    masks = workloads(3)["ga"]
    want = naive_fitness(lm, obj, masks)
    seen = []
    head = lm.masked.head

    def spy(hidden):
        seen.append(tuple(hidden.shape[:2]))
        return head(hidden)

    lm.masked.head = spy
    try:
        for sharing in (True, False):
            seen.clear()
            ev = Evaluator(lm, obj, prefix_sharing=sharing, memory_mb=1e-6)
            assert_close(ev.evaluate(masks), want)
            if objective == "composite":  # partials that are not plain sums: whole batches
                assert sorted({r for r, _ in seen}) == sorted({b.input_ids.shape[0] for b in obj.batches()})
            else:
                assert seen and set(seen) == {(1, 1)}
            seen.clear()
            big = Evaluator(lm, obj, prefix_sharing=sharing, memory_mb=64)  # a whole batch fits: one call each
            assert_close(big.evaluate(masks), want)
            assert {s for s in seen if s != (1, 1)} == {tuple(b.input_ids.shape[:2]) for b in obj.batches()}
    finally:
        del lm.masked.head


def test_a_batch_cut_by_positions_cuts_every_per_token_tensor():
    from dpopt.objectives.base import Batch

    ids = torch.arange(12).reshape(2, 6)
    b = Batch(3, ids, 12, attention_mask=torch.ones(2, 6), position_ids=ids + 100,
              extra={"pair": (ids * 2, ids * 3), "mask4d": torch.zeros(2, 1, 6, 6), "meta": "x"})
    part = b.positions(2, 5)
    assert part.index == 3 and part.size == 6
    assert part.input_ids.tolist() == [[2, 3, 4], [8, 9, 10]]
    assert part.position_ids.tolist() == [[102, 103, 104], [108, 109, 110]]
    assert part.attention_mask.shape == (2, 3)
    assert part.extra["pair"][1].tolist() == [[6, 9, 12], [24, 27, 30]]
    assert part.extra["mask4d"].shape == (2, 1, 6, 6) and part.extra["meta"] == "x"  # not per token: shared


def _distinct_block_calls(masks) -> int:
    """(prefix, block) pairs: what prefix sharing must compute once per batch."""
    pairs = set()
    for m in dict.fromkeys(masks):
        for level in m.kept():
            pairs.add((m.bits[:level].tobytes(), level))
    return len(pairs)


def test_prefix_sharing_does_less_work_on_a_greedy_step(tiny_lm, text_data):
    lm = tiny_lm("llama", N)
    obj = Perplexity(tokens=128, seq_len=32, batch_size=2)
    obj.prepare(lm, text_data)
    n_batches = len(obj.batches())
    base = LayerMask.from_removed(N, [3])
    step = [base.with_removed(i) for i in base.kept()]
    shared = Evaluator(lm, obj, prefix_sharing=True)
    plain = Evaluator(lm, obj, prefix_sharing=False)
    assert_close(shared.evaluate(step), plain.evaluate(step))
    assert plain.block_calls == sum(len(m.kept()) for m in step) * n_batches
    assert shared.block_calls == _distinct_block_calls(step) * n_batches
    assert shared.block_calls < plain.block_calls


def test_masks_go_through_the_blocks_a_few_at_a_time_in_prefix_order(tiny_lm, text_data):
    """Under a budget of two masks in flight, eight masks given interleaved are run in pairs
    of prefix neighbours: the values and the shared work are those of all eight at once."""
    lm = tiny_lm("llama", N)
    obj = Perplexity(tokens=128, seq_len=32, batch_size=2)
    obj.prepare(lm, text_data)
    pairs = [(LayerMask.from_removed(N, [i, N - 1]), LayerMask.from_removed(N, [i, N - 2])) for i in range(4)]
    masks = [p[0] for p in pairs] + [p[1] for p in pairs]  # each mask's neighbour is 4 places away
    wide = Evaluator(lm, obj)
    want = wide.evaluate(masks)
    h0 = lm.masked.prepare(obj.batches()[0].input_ids).h0
    budget = 2 * 4 * h0.numel() * h0.element_size()  # two masks' worth (about four hidden states each)
    ev = Evaluator(lm, obj, memory_mb=(budget + 1) / 2**20)
    sizes = []
    run = ev._run_batch
    ev._run_batch = lambda batch, group: sizes.append(len(group)) or run(batch, group)
    assert_close(ev.evaluate(masks), want)
    assert sizes == [2] * 4 * len(obj.batches())
    assert ev.block_calls == wide.block_calls == _distinct_block_calls(masks) * len(obj.batches())


def test_memo_makes_repeats_free(tiny_lm, text_data):
    lm = tiny_lm("gpt2", N)
    obj = Perplexity(tokens=128, seq_len=32, batch_size=2)
    obj.prepare(lm, text_data)
    masks = workloads(1)["random"]
    for sharing in (True, False):
        ev = Evaluator(lm, obj, prefix_sharing=sharing)
        first = ev.evaluate(masks)
        calls, scored = ev.block_calls, ev.n_scored
        again = ev.evaluate(masks + masks[::-1])
        assert ev.block_calls == calls and ev.n_scored == scored
        assert np.array_equal(again[: len(masks)], first)
        # duplicates inside one call are scored once
        ev3 = Evaluator(lm, obj, prefix_sharing=sharing)
        ev3.evaluate([masks[0]] * 4)
        assert ev3.n_scored == 1 and ev3.block_calls == len(masks[0].kept()) * len(obj.batches())


def test_fidelity_and_racing(tiny_lm, text_data):
    lm = tiny_lm("llama", N)
    obj = Perplexity(tokens=256, seq_len=32, batch_size=2)  # 4 batches of 64 tokens
    obj.prepare(lm, text_data)
    assert len(obj.batches()) == 4
    ev = Evaluator(lm, obj)
    assert ev.fidelities() == [64, 128, 192, 256]
    masks = workloads(2)["random"]
    low = ev.evaluate(masks, fidelity=64)
    assert {idx for _, idx in ev.partials} == {0}  # one batch only
    assert_close(low, naive_fitness(lm, obj, masks, fidelity=64))
    calls_low = ev.block_calls
    full = ev.evaluate(masks)
    assert {idx for _, idx in ev.partials} == {0, 1, 2, 3}
    assert_close(full, naive_fitness(lm, obj, masks))
    assert ev.block_calls - calls_low > calls_low  # raising fidelity only scored the 3 new batches
    assert not np.allclose(low, full)  # different data, different value

    ev = Evaluator(lm, obj)
    pool, fit = race(ev, masks, [(64, 3), (128, 2), (None, 1)])
    assert len(pool) == 1 and fit.shape == (1,)
    low = ev.evaluate(masks, fidelity=64)
    top3 = [masks[i] for i in np.argsort(low, kind="stable")[:3]]
    mid = ev.evaluate(top3, fidelity=128)
    top2 = [top3[i] for i in np.argsort(mid, kind="stable")[:2]]
    best = min(top2, key=lambda m: ev.evaluate([m])[0])
    assert pool[0] == best
    assert_close(fit, naive_fitness(lm, obj, [best]))
    # masks that were cut after the first round were never scored on the last batches
    losers = [m for m in masks if m not in top3]
    assert all((m.key(), 3) not in ev.partials for m in losers)


@pytest.mark.parametrize("sharing", [True, False])
def test_nan_block_gives_worst_fitness_and_goes_on(sharing, tiny_lm, text_data):
    lm = tiny_lm("llama", N)
    with torch.no_grad():
        for p in lm.masked.blocks[2].parameters():
            p.fill_(float("nan"))
    obj = Perplexity(tokens=128, seq_len=32, batch_size=2)
    obj.prepare(lm, text_data)
    c = Constraint(N, K)
    rng = np.random.default_rng(3)
    masks = list(dict.fromkeys(c.random_mask(rng) for _ in range(12)))
    masks += [LayerMask.from_removed(N, [2, 4]), LayerMask.from_removed(N, [0, 1])]
    ev = Evaluator(lm, obj, prefix_sharing=sharing)
    fit = ev.evaluate(masks)
    for m, f in zip(masks, fit):
        if m.bits[2]:
            assert f == float("inf")
            assert m.key() in ev.failures and "non-finite" in ev.failures[m.key()]
        else:
            assert np.isfinite(f)
            assert m.key() not in ev.failures
    # the finite ones are right, and the evaluator keeps working afterwards
    assert_close(fit, naive_fitness(lm, obj, masks))
    more = ev.evaluate([LayerMask.from_removed(N, [2, 5]), LayerMask.from_removed(N, [3, 5])])
    assert np.isfinite(more[0]) and more[1] == float("inf")


@pytest.mark.parametrize("objective", ["ppl", "kl", "kl_topk"])
def test_text_objectives_score_a_few_positions_at_a_time(objective, tiny_lm, text_data, mc_data, monkeypatch):
    """Scored one position at a time, a batch's partial is the one scored whole."""
    import dpopt.objectives.kl as kl_mod
    import dpopt.objectives.ppl as ppl_mod

    lm = tiny_lm("llama", N, vocab_size=1024 if objective == "kl_topk" else None)
    obj = build_objective(objective, lm, text_data, mc_data)
    b = obj.batches()[0]
    prep = lm.masked.prepare(b.input_ids)
    logits = lm.masked.forward_masked(LayerMask.from_removed(N, [1, 4]), prep)
    whole = obj.score(logits, b)
    calls = []
    log_softmax = torch.log_softmax
    monkeypatch.setattr(torch, "log_softmax", lambda x, *a, **k: calls.append(x.shape[1]) or log_softmax(x, *a, **k))
    ce = ppl_mod.F.cross_entropy
    rows = b.input_ids.shape[0]
    monkeypatch.setattr(ppl_mod.F, "cross_entropy", lambda x, *a, **k: calls.append(x.shape[0] // rows) or ce(x, *a, **k))
    for mod in (kl_mod, ppl_mod):
        monkeypatch.setattr(mod, "SCORE_CHUNK_BYTES", 1)
    chunked = obj.score(logits, b)
    assert len(calls) == logits.shape[1] and set(calls) == {1}  # one position of every sequence per call
    np.testing.assert_allclose(chunked, whole, rtol=1e-6)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_acc_reads_the_head_at_the_choice_positions_only(family, tiny_lm, mc_data):
    """The evaluator runs the head on ``head_positions`` alone; each choice's log-likelihood
    must equal the one read from the full logits of the same packed question."""
    lm = tiny_lm(family, N)
    obj = Accuracy(questions=8, batch_size=4)
    obj.prepare(lm, mc_data)
    ev = Evaluator(lm, obj)
    mask = LayerMask.from_removed(lm.n_blocks, [2])
    for batch in obj.batches(None):
        assert batch.head_positions.shape[1] < batch.input_ids.shape[1]  # the context is skipped
        hidden = lm.masked.last_hidden(mask, ev._prep(batch))
        full = Accuracy.logliks(lm.masked.head(hidden), batch, gathered=False)
        idx = batch.head_positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        part = Accuracy.logliks(lm.masked.head(torch.gather(hidden, 1, idx)), batch, gathered=True)
        for a, b in zip(full, part):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # and what the evaluator scores is what the full logits give
    want = []
    for batch in obj.batches(None):
        hidden = lm.masked.last_hidden(mask, ev._prep(batch))
        lls = Accuracy.logliks(lm.masked.head(hidden), batch, gathered=False)
        want += [float(np.argmax(ll) == g) for ll, g in zip(lls, batch.extra["gold"])]
    widths, head = [], lm.masked.head
    lm.masked.head = lambda h: widths.append(h.shape[1]) or head(h)
    assert ev.raw(mask) == pytest.approx(np.mean(want))
    assert widths and widths == [b.head_positions.shape[1] for b in obj.batches(None)]  # the head saw those only
