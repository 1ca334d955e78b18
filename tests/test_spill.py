"""KL's dense targets live in a mapped file on CPU, so batches a run never scores take no RAM."""
import sys

import numpy as np
import pytest
import torch

from dpopt.spill import spill


def _mapping_of(t: torch.Tensor) -> str | None:
    """The /proc/self/maps line whose range holds the tensor's data."""
    addr = t.data_ptr()
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= addr < hi:
                return line.strip()
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_a_spilled_tensor_is_a_mapping_of_a_deleted_file_with_the_same_values(tmp_path, monkeypatch):
    monkeypatch.setenv("DPOPT_CACHE", str(tmp_path))
    x = torch.randn(64, 1024)
    ids = torch.randint(0, 50_000, (64, 1024), dtype=torch.int32)
    for t in (x, ids):
        s = spill(t)
        assert s.dtype == t.dtype and torch.equal(s, t)
        line = _mapping_of(s)
        assert line is not None and str(tmp_path / "spill") in line and line.endswith("(deleted)"), line
    assert list((tmp_path / "spill").iterdir()) == []  # unlinked at once: nothing left behind
    s[0, 0] += 1  # copy-on-write: writable, the file (and other mappings) untouched
    assert not torch.equal(s, ids)


def test_spill_keeps_the_tensor_in_memory_when_it_cannot_write(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setenv("DPOPT_CACHE", str(tmp_path))

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", full_disk)
    x = torch.randn(8, 8)
    assert spill(x) is x


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_kl_targets_are_spilled_on_cpu(tiny_lm, text_data, tmp_path, monkeypatch):
    from dpopt.objectives.kl import KLDivergence

    monkeypatch.setenv("DPOPT_CACHE", str(tmp_path))
    lm = tiny_lm("llama", 4, vocab_size=1024)
    for topk in (None, 512):
        obj = KLDivergence(tokens=128, seq_len=32, batch_size=2, topk=topk)
        obj.prepare(lm, text_data)
        target = obj.batches()[0].extra["target"]
        for t in (target if isinstance(target, tuple) else (target,)):
            assert "(deleted)" in (_mapping_of(t) or ""), topk
