"""The benchmarks' peak-RSS figure belongs to the process that reports it, not to its parent.

A search started by a benchmark whose parent holds a model must report its own peak:
``ru_maxrss`` carries the parent's high-water mark across exec on Linux, VmHWM does not.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM and exec's carried-over ru_maxrss are Linux's")
def test_a_child_reports_its_own_peak_not_its_parents():
    held = np.ones(400 * 2**20 // 8)  # 400 MB, touched, held while the child runs
    code = f"import sys; sys.path.insert(0, {str(BENCHMARKS)!r}); from _memory import peak_rss_mb; print(peak_rss_mb())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    child_peak = float(out.stdout)
    assert held.sum() > 0
    assert 1 < child_peak < 200, f"the child reported {child_peak:.0f} MB: its parent's 400 MB leaked into its figure"
