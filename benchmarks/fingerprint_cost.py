"""Benchmark: what the study fingerprint costs, the first time a file is seen and once it is cached.

The fingerprint hashes every byte of the weight files and of a local data file
(:func:`dpopt.record.fingerprint.file_sha256`) and remembers each digest by the file's
resolved path, size, mtime, ctime and inode. This prints, in seconds:

* the weights of the zoo model ``smollm2-135m`` (fetched once by ``dpopt``), hashed into an
  empty digest cache, then again from the cache; and its tokenizer's digest;
* a file of ``--gb`` GB of random bytes written under ``--dir``, the same two ways.

"First" reads the file from the OS page cache when the file was read recently (the 1 GB file
just written always is): it measures hashing, not the disk. Both wall time and this
process's CPU time are printed: on a machine shared with other jobs wall time also measures
the neighbours. A freshly written file is hashed only after it has been still for the
fingerprint's racy-write window, as a checkpoint on disk has.

    PYTHONPATH=. python benchmarks/fingerprint_cost.py            # about 10 s of hashing
    PYTHONPATH=. python benchmarks/fingerprint_cost.py --gb 0.2   # quicker
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def timed(fn, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def report(label: str, nbytes: int, fn, *args) -> None:
    """Hash twice: into the empty cache, then from it."""
    first, w1, c1 = timed(fn, *args)
    again, w2, c2 = timed(fn, *args)
    assert first == again
    print(f"{label:<34} {nbytes / 1e9:6.3f} GB  first {w1:7.3f} s wall {c1:7.3f} s cpu"
          f" ({nbytes / 1e6 / max(w1, 1e-9):6.0f} MB/s)   cached {w2:7.4f} s wall {c2:7.4f} s cpu")


def write_random(path: Path, nbytes: int) -> None:
    chunk = os.urandom(64 << 20)
    with open(path, "wb") as fh:
        left = nbytes
        while left > 0:
            fh.write(chunk[:min(left, len(chunk))])
            left -= len(chunk)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=1.0, help="size of the generated file (default 1)")
    ap.add_argument("--dir", default=None, help="where to write it (default: the system temp folder)")
    ap.add_argument("--model", default="smollm2-135m", help="zoo model whose weights are hashed")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dpopt-fp-cache-") as cache, \
            tempfile.TemporaryDirectory(prefix="dpopt-fp-file-", dir=a.dir) as scratch:
        from dpopt.models.identity import tokenizer_digest, weight_files, weights_digest
        from dpopt.models.zoo import ZOO
        from dpopt.record import fingerprint

        folder = ZOO.get(a.model).converted_dir()  # in the real cache: fetched once, never here
        os.environ["DPOPT_CACHE"] = cache  # digests go to an empty cache, so "first" really is first
        nbytes = sum(f.stat().st_size for f in weight_files(str(folder)))
        report(f"{a.model} weights", nbytes, weights_digest, None, str(folder))
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(folder)
        _, wall, cpu = timed(tokenizer_digest, tok)
        print(f"{a.model + ' tokenizer':<34} {'':9}  digest {wall:6.3f} s wall {cpu:7.3f} s cpu (not cached)")
        big = Path(scratch) / "random.bin"
        size = int(a.gb * 1e9)
        write_random(big, size)
        time.sleep(fingerprint._RACY_NS / 1e9 + 0.1)
        report(f"{a.gb:g} GB file", size, fingerprint.file_sha256, big)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
