"""Tensors written to an unlinked file and mapped back: only the pages a run reads are resident.

KL's dense targets cover the whole calibration set (top-1024 of 16,384 tokens is 128 MB),
but a raced search often never scores its last batches (EvoPress's race stops at half the
data). Held in anonymous memory, every batch's targets count against the process from the
start; mapped from a file, a batch costs RAM only once a mask is scored on it, and its clean
pages can be dropped by the kernel under pressure, like the weights' own safetensors mapping.

The file lives under dpopt's cache folder (a disk on most systems; ``/tmp`` is often RAM)
and is unlinked as soon as it is mapped, so nothing is left behind, even after a crash.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
import torch

from .downloads import cache_dir


def spill(t: torch.Tensor) -> torch.Tensor:
    """``t`` (a CPU tensor) as a copy-on-write mapping of a file; other devices are returned as they are.

    Any failure to write (read-only or full disk) keeps the tensor in memory: this saves
    memory, it is never a reason for a run to fail.
    """
    if t.device.type != "cpu" or t.numel() == 0:
        return t
    arr = t.detach().contiguous().numpy()
    try:
        fd, path = tempfile.mkstemp(dir=cache_dir("spill"), suffix=".bin")
    except OSError:
        return t
    try:
        with os.fdopen(fd, "wb") as f:
            arr.tofile(f)
        mapped = np.memmap(path, dtype=arr.dtype, mode="c", shape=arr.shape)  # "c": writable view, file untouched
    except OSError:
        return t
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
    return torch.from_numpy(mapped)
