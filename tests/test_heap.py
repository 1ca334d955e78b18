"""The heap trim the evaluator runs after each scored batch really returns freed memory."""
from __future__ import annotations

import ctypes

import pytest

from dpopt import heap


def _rss_kb() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS"))


@pytest.mark.skipif(heap._TRIM is None, reason="malloc_trim needs glibc on Linux")
def test_release_returns_freed_heap_pages_to_the_os():
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    # 200 MB in 64 KB blocks (under the mmap threshold, so on the heap), touched so they
    # are resident; freeing all but the last leaves them as holes glibc keeps
    blocks = [libc.malloc(64 << 10) for _ in range(3200)]
    for b in blocks:
        ctypes.memset(b, 1, 64 << 10)
    for b in blocks[:-1]:
        libc.free(b)
    held = _rss_kb()
    assert heap.release_freed_memory()
    released = held - _rss_kb()
    libc.free(blocks[-1])
    assert released > 150_000, f"only {released} kB returned"


def test_evaluator_trims_once_per_scored_batch(tiny_lm, text_data, monkeypatch):
    import dpopt.evaluator as evaluator
    from dpopt.genome import LayerMask
    from dpopt.objectives.ppl import Perplexity

    calls = []
    monkeypatch.setattr(evaluator, "release_freed_memory", lambda: calls.append(1))
    lm = tiny_lm("llama", 4)
    obj = Perplexity(tokens=128, seq_len=32, batch_size=2)
    obj.prepare(lm, text_data)
    ev = evaluator.Evaluator(lm, obj)
    ev.evaluate([LayerMask.from_removed(4, [1]), LayerMask.from_removed(4, [2])])
    assert len(calls) == len(obj.batches()) > 1
    ev.evaluate([LayerMask.from_removed(4, [1])])  # memo hit: nothing scored, nothing to trim
    assert len(calls) == len(obj.batches())
