"""Training math that only shows with several processes, in real processes (gloo on CPU):
the learning-rate schedule, and matched forward passes across ranks."""

from __future__ import annotations

import json
import sys

import pytest
from _launch import ROOT, assert_clean_exit, run

WORKER = ROOT / "tests" / "_dist_math_worker.py"


def _launch(nproc: int, *args: str) -> list[str]:
    if nproc == 1:
        return [sys.executable, str(WORKER), *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            str(WORKER), *args]


def _linear(step: int, warmup: int, total: int) -> float:
    """transformers' linear schedule factor after ``step`` scheduler steps."""
    if step < warmup:
        return step / warmup
    return max(0.0, (total - step) / (total - warmup))


@pytest.mark.slow
def test_lr_schedule_on_two_processes_equals_one_process(tiny_path, tmp_path):
    from _dist_math_worker import LR, LR_ITERATIONS, LR_STEPS, LR_WARMUP

    got = {}
    for n in (1, 2):
        out = tmp_path / f"lr{n}.json"
        assert_clean_exit(run(_launch(n, "lr", "--model", str(tiny_path), "--out", str(out))))
        got[n] = json.loads(out.read_text())
        assert got[n]["world"] == n
    total = LR_STEPS * LR_ITERATIONS
    # the LR logged after step s: s * num_iterations scheduler steps taken
    expected = [LR * _linear(s * LR_ITERATIONS, LR_WARMUP, total) for s in range(1, LR_STEPS + 1)]
    assert got[1]["lr"] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    # before the fix, 2 processes stepped the schedule twice per update: [8.9e-4, 4.4e-4, 0, 0, 0, 0]
    # instead of [6.7e-4, 8.9e-4, 6.7e-4, 4.4e-4, 2.2e-4, 0]
    assert got[2]["lr"] == pytest.approx(got[1]["lr"], rel=1e-9, abs=1e-12)


@pytest.mark.slow
def test_ranks_run_equal_forwards_with_skipped_groups(tiny_path, tmp_path):
    """Process 0 keeps three live groups (micro-batches of 2 and 1 groups), process 1 one (flat
    groups skipped, num_iterations 2): both must run the same forward passes (a sharded policy's
    all-gathers hang otherwise), and the update must still be the one-process update of the same
    batch."""
    got = {}
    for n in (1, 2):
        out = tmp_path / f"fw{n}.json"
        assert_clean_exit(run(_launch(n, "forwards", "--model", str(tiny_path), "--out", str(out))))
        got[n] = json.loads(out.read_text())
    two, one = got[2], got[1]
    assert two["live_groups"] == [3, 1]  # the shards really differ
    # 2 micro-batches x (old pass + 2 updates) on both; before the fix process 1 ran 1 x 3
    assert two["forwards"] == [6, 6]
    assert one["skipped_groups_frac"] == two["skipped_groups_frac"] == 0.5
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-4, abs=1e-7)
    assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-4)
