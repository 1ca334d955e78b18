"""Give memory freed by a batch's activations back to the OS (glibc only; elsewhere a no-op).

glibc keeps freed blocks in its arenas (one per thread that allocated) and returns only
the top of each heap. The tensors of one scored batch (blocks' activations, the logits of
a few sequences) come and go in sizes the next batch seldom fits exactly, so without a trim
the resident size of a long search creeps up by hundreds of MB over its early level.
``malloc_trim(0)`` hands every free page of every arena back; the next batch faults the
few it needs in again, which costs milliseconds against a batch's seconds.
"""
from __future__ import annotations

import ctypes
import sys


def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library this process already runs on
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def release_freed_memory() -> bool:
    """Trim the C heap; True where that was possible."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
