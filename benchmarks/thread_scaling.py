"""How two torch workloads share this machine's two cores: one thread alone, two threads of one
process (how ``async_rollouts`` runs the transformers engine: a rollout thread beside the
trainer), and two processes (a separate generator, e.g. a vLLM server), for matmuls of a few
widths with one intra-op thread each. Small ops spend most of their time in Python and
dispatch, which two threads of one process partly serialize (the GIL); large ones spend it in
kernels that release it.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/thread_scaling.py

Prints, per width, the matmuls per second of each setup and the two-worker totals relative to
one thread alone (2.0: both cores fully used). docs/benchmarks.md ("Overlapped rollouts") cites it.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import threading
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402


def rate(width: int, seconds: float) -> float:
    """[64, width] @ [width, width] + relu, in a loop for ``seconds``: -> per second."""
    torch.set_num_threads(1)
    a, b = torch.randn(64, width), torch.randn(width, width)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(20):
            (a @ b).relu_()
        n += 20
    return n / (time.perf_counter() - t0)


def _thread(width: int, seconds: float, out: list[float]) -> None:
    out.append(rate(width, seconds))


def _proc(width: int, seconds: float, q) -> None:
    q.put(rate(width, seconds))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 896])
    p.add_argument("--seconds", type=float, default=3.0)
    args = p.parse_args()
    print("| width | 1 thread /s | 2 threads, 1 process: total /s (x alone) | 2 processes: total /s (x alone) |")
    print("|---|---|---|---|")
    for w in args.widths:
        alone = rate(w, args.seconds)
        out: list[float] = []
        ts = [threading.Thread(target=_thread, args=(w, args.seconds, out)) for _ in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        threads = sum(out)
        q = mp.get_context("spawn").Queue()
        ps = [mp.get_context("spawn").Process(target=_proc, args=(w, args.seconds, q)) for _ in range(2)]
        for x in ps:
            x.start()
        procs = q.get() + q.get()
        for x in ps:
            x.join()
        print(f"| {w} | {alone:.0f} | {threads:.0f} ({threads / alone:.2f}x) | {procs:.0f} ({procs / alone:.2f}x) |",
              flush=True)


if __name__ == "__main__":
    main()
