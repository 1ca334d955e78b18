"""Peak memory of the current process, as the benchmarks report it.

VmHWM, not ``getrusage(RUSAGE_SELF).ru_maxrss``: on Linux a process's ru_maxrss carries over
the high-water mark of the image it exec'd from, so a search started by a benchmark whose
parent already holds a model reports the parent's peak whenever that is larger (a small child of a
parent holding 1.5 GB reports 1.5 GB, while its own VmHWM is small). VmHWM belongs to the
address space, which exec replaces.
"""
from __future__ import annotations


def peak_rss_mb() -> float:
    """Peak resident set size of this process since its exec, in MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    import sys

    # no /proc (macOS): ru_maxrss is the only figure there, in bytes (KiB on Linux)
    per_mib = 2**20 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / per_mib
