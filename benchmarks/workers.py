"""Benchmark: masks per second on 1 and 2 ``dpopt worker`` processes, and the queue's cost per mask.

A tiny random llama checkpoint (``--blocks`` blocks), objective kl on a synthetic text,
``--masks`` random masks with ``--remove`` blocks removed, all asked in one batch (a GA
generation). Three timings, each on a fresh evaluator (empty memo, cold prefix cache):

* direct   - ``Evaluator.evaluate(masks)`` in this process: no study, no queue;
* 1 worker - the same batch through the study: the search process enqueues it as WAITING
             trials, one ``dpopt worker`` subprocess takes, scores and completes them, the
             search reads the values back (what ``dpopt search --workers 1`` does per batch);
* 2 workers - the same with two worker subprocesses sharing the queue.

Workers are started and warmed (model loaded, evaluator prepared) before the clock starts:
a search pays that once, not per batch. The queue overhead per mask is
``(t_1worker - t_direct) / masks``: storage round trips, polling and the lock.

The storage is a throwaway PostgreSQL server (tests/services.py, Debian's package) when one
can start, else a journal file; ``--storage URL`` picks one.

Set ``OMP_NUM_THREADS=1`` on a shared or small machine: an oversubscribed OpenMP pool spins,
and a 2-thread process then runs several times slower than a 1-thread one. ``--workers N`` on CPU
already gives each worker ``cpu_count // N`` threads.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/workers.py
    PYTHONPATH=. python benchmarks/workers.py --masks 32 --repeats 1   # quicker
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from dpopt import api  # noqa: E402
from dpopt.genome import LayerMask  # noqa: E402
from dpopt.models.tiny import save_tiny_checkpoint  # noqa: E402
from dpopt.record.worker import LocalWorkers  # noqa: E402


def start_storage(tmp: Path, url: str | None):
    if url:
        return url, None
    try:
        from services import PostgresServer, _pg_bindir, _server_os_user

        server = PostgresServer(_pg_bindir(), _server_os_user())
        server.start()
        return server.create_database("bench"), server
    except Exception as exc:  # noqa: BLE001
        print(f"(no PostgreSQL: {exc}; using a journal file)")
        return f"journal:{tmp}/bench.log", None


def fresh_evaluator(lm, text, args):
    return api.make_evaluator(lm, "kl", data=str(text), tokens=args.tokens, seq_len=args.seq_len)


def timed_queue(lm, text, args, storage, masks, n_workers, study):
    ev = fresh_evaluator(lm, text, args)
    record = api.open_record(lm, ev, "bench", args.remove, 0, storage, study)
    record.queue = True
    pool = LocalWorkers(record.url, study, n_workers, device="cpu")
    record.monitor = pool.check
    try:
        deadline = time.monotonic() + 600
        while sum(k.startswith("run:") and v.get("algo") == "worker" for k, v in record.study.user_attrs.items()) \
                < n_workers:  # every worker has loaded the model and opened the study
            pool.check()
            if time.monotonic() > deadline:
                raise TimeoutError("workers did not start")
            time.sleep(0.2)
        with ev.recording(record):
            start = time.perf_counter()
            ev.evaluate(masks)
            wall = time.perf_counter() - start
        assert ev.n_scored == 0  # every value came from a worker
    finally:
        pool.stop()
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=16)
    ap.add_argument("--remove", type=int, default=4)
    ap.add_argument("--masks", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2, help="fresh batches per setting (the best is kept)")
    ap.add_argument("--storage", default=None)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="dpopt-bench-workers-"))
    ck = save_tiny_checkpoint(tmp / "tiny", "llama", args.blocks, seed=0)
    text = tmp / "calib.txt"
    text.write_text("\n\n".join(f"Paragraph {i}: the quick brown fox number {i} jumps over {i * 7} lazy dogs."
                                for i in range(400)))
    storage, server = start_storage(tmp, args.storage)
    lm = api.load(str(ck), device="cpu")
    rng = random.Random(0)
    batches = [[LayerMask.from_removed(args.blocks, rng.sample(range(args.blocks), args.remove))
                for _ in range(args.masks)] for _ in range(args.repeats)]
    batches = [list(dict.fromkeys(b)) for b in batches]
    try:
        direct = []
        for b in batches:
            ev = fresh_evaluator(lm, text, args)
            start = time.perf_counter()
            ev.evaluate(b)
            direct.append(time.perf_counter() - start)
        queued = {n: [timed_queue(lm, text, args, storage, b, n, f"bench-{n}w-{i}") for i, b in enumerate(batches)]
                  for n in (1, 2)}
    finally:
        if server is not None:
            server.stop()
    n = len(batches[0])
    t_direct, t1, t2 = min(direct), min(queued[1]), min(queued[2])
    print(f"storage {storage.split('@')[0].split(':')[0]}, {os.cpu_count()} CPUs, tiny llama {args.blocks} blocks, "
          f"kl on {args.tokens} tokens, {n} masks per batch, best of {args.repeats}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"direct (in process)  {n / t_direct:8.1f} masks/s   {t_direct:6.2f} s")
    print(f"1 worker (queue)     {n / t1:8.1f} masks/s   {t1:6.2f} s")
    print(f"2 workers (queue)    {n / t2:8.1f} masks/s   {t2:6.2f} s")
    print(f"2 workers / 1 worker: {t1 / t2:.2f}x")
    print(f"queue overhead per mask: {1000 * (t1 - t_direct) / n:.1f} ms "
          f"({100 * (t1 - t_direct) / t_direct:.0f}% of direct scoring on this model)")


if __name__ == "__main__":
    main()
