"""What each side of an overlapped step loses to the other on this machine: the tiny recipe's
update and its generation timed alone, beside a generator thread in the same process (what
``async_generator: thread`` does), and beside a generator in a child process (``process``).

One trainer is built from recipes/configs/tiny_cpu.yaml (one intra-op thread); one batch is
collected, then, ``--rounds`` times in turn:

- "alone": ``--n`` updates of that batch, then ``--n`` generations of its prompts (16 prompts x
  8 samples, seeded) on a copy of the policy;
- "thread": updates while a thread of this process generates without pause (and the times of
  the generations it finished meanwhile);
- "process": updates while a spawned child process (its own copy of the model) generates
  without pause, likewise.

Prints the median and mean time of each; the update's weights change from one update to the
next as in training (the time of one does not depend on them).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/overlap_contention.py --rounds 4
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import multiprocessing as mp
import os
import statistics
import tempfile
import threading
import time
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _generate_forever(path: str, prompts: list[list[int]], seeds: list[int], sampling: dict[str, Any],
                      stop: Any, out: Any) -> None:
    """The child: load the model and generate the batch until ``stop`` is set; -> its times on ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlreason.rollout.base import SamplingConfig
    from rlreason.rollout.hf import HFEngine

    torch.set_num_threads(1)
    engine = HFEngine(AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path), batch_seeds=True)
    sc = SamplingConfig(**sampling)
    times = []
    out.put("ready")
    while not stop.is_set():
        t0 = time.perf_counter()
        engine.generate(prompts, 8, sc, seeds=seeds)
        times.append(time.perf_counter() - t0)
    out.put(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--n", type=int, default=6, help="updates (and generations) per phase and round")
    args = p.parse_args()


    from rlreason.config import parse_args
    from rlreason.loop.trainer import GRPOTrainer
    from rlreason.rollout.hf import HFEngine
    from rlreason.tiny import TinySpec, ensure

    out_dir = tempfile.mkdtemp(prefix="overlap_contention_")
    cfg = parse_args(["--config", os.path.join(ROOT, "recipes/configs/tiny_cpu.yaml"), "--output_dir", out_dir,
                      "--eval_steps", "0", "--save_steps", "0", "--report_to", "[]", "--progress", "false"])
    from rlreason.build.grpo import build  # the recipe's wiring
    tr = GRPOTrainer(cfg, build(cfg))
    rows = tr.prompts.rows(0)
    seeds = tr.prompts.seeds("train", tr.prompts.positions(0))
    prompts = [r["prompt_ids"] for r in rows]
    engine = HFEngine(copy.deepcopy(tr.acc.unwrap_model(tr.model)), tr.tokenizer, batch_seeds=True)
    batch = tr.collect()

    def updates(n: int) -> list[float]:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            tr.actor.update(copy.copy(batch))
            times.append(time.perf_counter() - t0)
        return times

    def generations(n: int) -> list[float]:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            engine.generate(prompts, 8, tr.sampling, seeds=seeds)
            times.append(time.perf_counter() - t0)
        return times

    ctx = mp.get_context("spawn")
    path = ensure(TinySpec(), log=lambda *a: None)
    updates(2), generations(2)  # warm-up
    res: dict[str, list[float]] = {k: [] for k in ("update alone", "generation alone", "update | thread",
                                                   "generation (thread)", "update | process", "generation (process)")}
    for r in range(args.rounds):
        res["update alone"] += updates(args.n)
        res["generation alone"] += generations(args.n)

        stop, side = threading.Event(), []

        def loop(stop: threading.Event = stop, side: list[float] = side) -> None:
            while not stop.is_set():
                t0 = time.perf_counter()
                engine.generate(prompts, 8, tr.sampling, seeds=seeds)
                side.append(time.perf_counter() - t0)

        th = threading.Thread(target=loop, daemon=True)
        th.start()
        time.sleep(0.3)
        res["update | thread"] += updates(args.n)
        stop.set()
        th.join()
        res["generation (thread)"] += side[1:]  # the first began before the updates

        pstop, q = ctx.Event(), ctx.Queue()
        child = ctx.Process(target=_generate_forever, args=(path, prompts, seeds, dataclasses.asdict(tr.sampling),
                                                            pstop, q), daemon=True)
        child.start()
        q.get()
        time.sleep(1.0)
        res["update | process"] += updates(args.n)
        pstop.set()
        res["generation (process)"] += q.get()[1:]
        child.join()
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {statistics.median(v):.3f}" for k, v in res.items()),
              flush=True)
    tr.close()
    print("\n| phase | median s | mean s | n |\n|---|---|---|---|")
    for k, v in res.items():
        print(f"| {k} | {statistics.median(v):.3f} | {statistics.mean(v):.3f} | {len(v)} |")


if __name__ == "__main__":
    main()
