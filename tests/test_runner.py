"""Tests for the sandboxed reward runner (rlreason.rewards.runner.RewardRunner): timeouts,
crashes, memory caps, worker replacement, async and file-loaded rewards, process hygiene,
equality with in-process scoring, and a seeded fuzz run with adversarial completions.

Timeouts here are small (0.5-2 s) so the whole file stays well under 90 s on two busy cores.
"""

from __future__ import annotations

import asyncio
import ctypes
import faulthandler
import functools
import gc
import logging
import math
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from _procs import alive, wait_until

from rlreason.rewards import accuracy_reward, format_reward, resolve, score, tag_count_reward
from rlreason.rewards.runner import RewardOutput, RewardRunner

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the worker pool is Linux-first")

# Where the deliberately crashed worker's faulthandler dump goes (fixed here, before any fork).
SEGV_DUMP = Path(tempfile.gettempdir()) / f"rlreason-test-segv-{os.getpid()}.txt"
TIMEOUT = 0.5  # seconds per call in most tests: a hang costs a chunk timeout plus an item timeout

# ---------------------------------------------------------------------------------------------
# Reward functions (module level: they must also pickle for the "spawn" start method)


def length_reward(prompts: list, completions: list, **kwargs: object) -> list[float]:
    return [float(len(c)) for c in completions]


def evil_reward(prompts: list, completions: list, **kwargs: object) -> list[float]:
    """Misbehaves on completions that say how; scores the others by length."""
    out = []
    for c in completions:
        if c == "SLEEP":
            time.sleep(1e9)
        elif c == "SPIN":
            while True:
                pass
        elif c == "SYMPY":  # 9^(9^(9^9)): sympy tries to build the integer
            import sympy

            sympy.parse_expr("9**9**9**9")
        elif c == "RAISE":
            raise ZeroDivisionError("evil division")
        elif c == "OOM":
            bytearray(10 * 2**30)  # 10 GB
        elif c == "EXIT":
            os._exit(3)
        elif c == "SEGV":
            # pytest's faulthandler writes the crash dump to the terminal (a dup of its stderr the
            # worker inherits): send it to a file the test reads, so a green run prints no dump
            with open(SEGV_DUMP, "w") as dump:  # noqa: PTH123 (open: faulthandler needs a real file)
                faulthandler.enable(file=dump)
                ctypes.string_at(0)  # reads address 0: SIGSEGV
        out.append(float(len(c)))
    return out


def prompt_marked_evil(prompts: list, completions: list, **kwargs: object) -> list[float | None]:
    """The fuzz run's evil reward: the prompt says how to misbehave, so the count is known."""
    out: list[float | None] = []
    for p, c in zip(prompts, completions, strict=True):
        if p == "evil:sleep":
            time.sleep(1e9)
        elif p == "evil:oom":
            bytearray(10 * 2**30)
        elif p == "evil:raise":
            raise RuntimeError("evil " + c[:50])
        elif p == "evil:exit":
            os._exit(7)
        out.append(None if len(c) % 7 == 0 else float(len(c) % 3))
    return out


def always_hangs(prompts: list, completions: list, **kwargs: object) -> list[float]:
    time.sleep(1e9)
    return []


async def async_reward(prompts: list, completions: list, **kwargs: object) -> list[float]:
    await asyncio.sleep(0.001)
    return [float(c.count("a")) for c in completions]


def invalid_values(prompts: list, completions: list, **kwargs: object) -> list:
    return [math.nan if c == "nan" else "1" if c == "str" else 0.5 for c in completions]


def drops_bad(prompts: list, completions: list, **kwargs: object) -> list[float]:
    """Returns the wrong number of values when a completion is "DROP": a length failure."""
    return [1.0 for c in completions if c != "DROP"]


class ContainsScorer:
    """A callable instance with state: must pickle and behave the same in workers."""

    def __init__(self, needle: str) -> None:
        self.needle = needle

    def __call__(self, prompts: list, completions: list, **kwargs: object) -> list[float]:
        return [float(self.needle in c) for c in completions]


def weighted_answer(prompts: list, completions: list, answer: list, scale: list, **kwargs: object) -> list[float]:
    return [s * float(str(a) in c) for c, a, s in zip(completions, answer, scale, strict=True)]


# ---------------------------------------------------------------------------------------------
# Helpers


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) for every process, from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # it exited meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # the name may contain spaces and parentheses
        table[int(entry)] = (int(fields[1]), fields[0])
    return table


def _descendants(pid: int) -> set[int]:
    """Live (non-zombie) descendants of ``pid``, except multiprocessing's own resource tracker
    (started once per process by the "spawn" start method, and meant to outlive runners)."""
    table = _process_table()
    found, frontier = set(), [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, _) in table.items():
            if ppid == parent and child not in found:
                found.add(child)
                frontier.append(child)
    return {p for p in found if table[p][1] != "Z" and not _is_resource_tracker(p)}


def _is_resource_tracker(pid: int) -> bool:
    try:
        return b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False




def _same(a: RewardOutput, b: RewardOutput) -> bool:
    """Equal outputs, NaN equal to NaN."""
    return (
        torch.equal(a.total, b.total)
        and list(a.per_func) == list(b.per_func)
        and all(torch.equal(a.per_func[k].nan_to_num(-99.0), b.per_func[k].nan_to_num(-99.0)) for k in a.per_func)
        and a.failures == b.failures
    )


def _values(out: RewardOutput, name: str) -> list[float | None]:
    return [None if math.isnan(v) else v for v in out.per_func[name].tolist()]


@pytest.fixture()
def no_leaks():
    """Fails a test that leaves processes behind once its runners are closed."""
    before = _descendants(os.getpid())
    yield
    gc.collect()
    assert wait_until(lambda: _descendants(os.getpid()) <= before), _descendants(os.getpid()) - before


# ---------------------------------------------------------------------------------------------
# Equality with in-process scoring


def _realistic_batch(n: int = 384) -> tuple[list, list, dict]:
    rng = random.Random(1234)
    completions, answers = [], []
    for i in range(n):
        gold = rng.randint(0, 50)
        guess = gold if rng.random() < 0.4 else rng.randint(0, 50)
        template = rng.choice(
            [
                "<think>a={g}</think><answer>{g}</answer>",
                "<think>hmm</think>\n<answer>\n{g}\n</answer>",
                "so the answer is \\boxed{{{g}}}",
                "Therefore #### {g}",
                "I think it is {g}",
                "<think>{g}</think><answer>\\frac{{{g2}}}{{2}}</answer>",
            ]
        )
        completions.append(template.format(g=guess, g2=2 * guess))
        answers.append(str(gold) if i % 3 else gold)
    prompts = [f"What is problem {i}?" for i in range(n)]
    return prompts, completions, {"answer": answers, "scale": [0.5] * n}


def test_pool_equals_in_process_on_a_realistic_batch(no_leaks) -> None:
    funcs = [
        accuracy_reward,
        format_reward,
        tag_count_reward,
        ContainsScorer("think"),
        functools.partial(weighted_answer),
        length_reward,
    ]
    weights = [1.0, 0.5, 0.25, 0.1, 2.0, 0.001]
    prompts, completions, columns = _realistic_batch()
    reference = score(funcs, weights, prompts, completions, columns)
    with RewardRunner(funcs, weights, num_workers=2, timeout_s=10.0) as pool:
        pooled = pool.score(prompts, completions, columns)
        again = pool.score(prompts, completions, columns)
    in_process = RewardRunner(funcs, weights, in_process=True).score(prompts, completions, columns)
    assert _same(reference, pooled), (reference, pooled)
    assert _same(pooled, again)
    assert _same(pooled, in_process)
    assert set(pooled.failures.values()) == {0}
    assert 0 < pooled.per_func["accuracy_reward"].sum() < len(completions)  # a real mix of right and wrong


def test_chunk_size_does_not_change_results(no_leaks) -> None:
    prompts, completions, columns = _realistic_batch(100)
    funcs = [accuracy_reward, ContainsScorer("answer")]
    outs = []
    for chunk_size in (1, 7, 100):
        with RewardRunner(funcs, num_workers=2, chunk_size=chunk_size) as runner:
            outs.append(runner.score(prompts, completions, columns))
    assert _same(outs[0], outs[1]) and _same(outs[1], outs[2])


def test_runner_matches_score_semantics_for_weights_columns_and_empty_batches(no_leaks) -> None:
    with RewardRunner([weighted_answer, length_reward], [2.0, 1.0], num_workers=1) as runner:
        out = runner.score(["p", "p"], ["x=3", "x=4"], {"answer": [3, 3], "scale": [1.5, 1.5]})
        assert out.total.tolist() == [2 * 1.5 + 3, 0 + 3]
        empty = runner.score([], [], {"answer": [], "scale": []})
        assert empty.total.shape == (0,) and empty.failures == {"weighted_answer": 0, "length_reward": 0}
        with pytest.raises(ValueError, match="2 completions but 1 prompts"):
            runner.score(["p"], ["a", "b"], {})
    no_funcs = RewardRunner([], num_workers=1)
    assert no_funcs.score(["p"], ["a"], {}).total.tolist() == [0.0]
    with pytest.raises(ValueError, match="2 reward functions but 1 reward weights"):
        RewardRunner([length_reward, length_reward], [1.0])
    with pytest.raises(ValueError, match="num_workers"):
        RewardRunner([length_reward], num_workers=0)


# ---------------------------------------------------------------------------------------------
# Failures: each costs only its completion


def _evil_batch(bad: str, n: int = 12, at: int = 5) -> list[str]:
    completions = [f"ok{i}" for i in range(n)]
    completions[at] = bad
    return completions


def _expected_lengths(completions: list[str], bad_at: int) -> list[float | None]:
    return [None if i == bad_at else float(len(c)) for i, c in enumerate(completions)]


@pytest.mark.parametrize("hang", ["SLEEP", "SPIN", "SYMPY"])
def test_hanging_call_is_killed_and_only_its_completion_scores_none(hang: str, caplog, no_leaks) -> None:
    completions = _evil_batch(hang)
    with caplog.at_level(logging.WARNING, logger="rlreason.rewards"), RewardRunner(
        [evil_reward, length_reward], num_workers=2, timeout_s=TIMEOUT, chunk_size=4
    ) as runner:
        start = time.monotonic()
        out = runner.score(["p"] * 12, completions, {})
        elapsed = time.monotonic() - start
        assert _values(out, "evil_reward") == _expected_lengths(completions, 5)
        assert out.failures == {"evil_reward": 1, "length_reward": 0}
        assert elapsed < 6 * TIMEOUT + 2.0  # the chunk's timeout, then the item's: not a hang
        # The pool goes on: the next batch is scored normally.
        assert _values(runner.score(["p"], ["fine"], {}), "evil_reward") == [4.0]
    warnings = [r.getMessage() for r in caplog.records if "evil_reward" in r.getMessage()]
    if hang == "SYMPY":  # building 9^(9^(9^9)) may hit the memory cap before the timeout
        assert len(warnings) == 1 and ("timed out" in warnings[0] or "memory" in warnings[0]), warnings
    else:
        assert len(warnings) == 1 and "timed out after 0.5 s" in warnings[0], warnings
    assert f"'{hang}'" in warnings[0] and "completion 5" in warnings[0]  # the input that caused it


def test_raising_call_costs_only_its_completion(caplog, no_leaks) -> None:
    completions = _evil_batch("RAISE")
    with caplog.at_level(logging.WARNING, logger="rlreason.rewards"), RewardRunner(
        [evil_reward], num_workers=2, timeout_s=TIMEOUT
    ) as runner:
        out = runner.score(["p"] * 12, completions, {})
    assert _values(out, "evil_reward") == _expected_lengths(completions, 5)
    assert out.failures == {"evil_reward": 1}
    (message,) = [r.getMessage() for r in caplog.records]
    assert "ZeroDivisionError('evil division')" in message and "in evil_reward" in message and "'RAISE'" in message


def test_memory_exhaustion_is_contained(caplog, no_leaks) -> None:
    completions = _evil_batch("OOM")
    parent_rss = _rss_mb()
    with caplog.at_level(logging.WARNING, logger="rlreason.rewards"), RewardRunner(
        [evil_reward], num_workers=2, timeout_s=5.0, memory_mb=256
    ) as runner:
        out = runner.score(["p"] * 12, completions, {})
        assert _values(out, "evil_reward") == _expected_lengths(completions, 5)
        assert out.failures == {"evil_reward": 1}
        assert runner.score(["p"], ["after"], {}).total.tolist() == [5.0]
    assert any("ran out of memory" in r.getMessage() for r in caplog.records)
    assert _rss_mb() - parent_rss < 100


def test_memory_cap_leaves_room_for_normal_work(no_leaks) -> None:
    def allocates_100mb(prompts: list, completions: list, **kwargs: object) -> list[float]:
        block = bytearray(100 * 2**20)
        return [float(len(block) > 0)] * len(completions)

    with RewardRunner([allocates_100mb], num_workers=1, memory_mb=256) as runner:
        assert runner.score(["p"], ["c"], {}).failures == {"allocates_100mb": 0}


@pytest.mark.parametrize("death", ["EXIT", "SEGV"])
def test_dead_worker_is_replaced(death: str, caplog, no_leaks) -> None:
    completions = _evil_batch(death)
    with caplog.at_level(logging.WARNING, logger="rlreason.rewards"), RewardRunner(
        [evil_reward], num_workers=2, timeout_s=5.0
    ) as runner:
        workers_before = _descendants(runner._pool.manager_pid)
        out = runner.score(["p"] * 12, completions, {})
        assert _values(out, "evil_reward") == _expected_lengths(completions, 5)
        assert out.failures == {"evil_reward": 1}
        workers_after = _descendants(runner._pool.manager_pid)
        assert len(workers_after) == 2 and workers_after != workers_before  # replaced, not just fewer
        assert runner.score(["p"] * 3, ["a", "bb", "ccc"], {}).total.tolist() == [1.0, 2.0, 3.0]
    expected = "exit code 3" if death == "EXIT" else "killed by SIGSEGV"
    assert any(expected in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
    if death == "SEGV":  # the dump was captured, not printed
        assert "Segmentation fault" in SEGV_DUMP.read_text()
        SEGV_DUMP.unlink()


def test_invalid_values_and_wrong_lengths_fail_per_completion(no_leaks) -> None:
    completions = ["a", "nan", "b", "str", "DROP", "c"]
    with RewardRunner([invalid_values, drops_bad], num_workers=2) as runner:
        out = runner.score(["p"] * 6, completions, {})
    assert _values(out, "invalid_values") == [0.5, None, 0.5, None, 0.5, 0.5]
    # A wrong-length result fails the call; retried item by item, only "DROP" still fails.
    assert _values(out, "drops_bad") == [1.0, 1.0, 1.0, 1.0, None, 1.0]
    assert out.failures == {"invalid_values": 2, "drops_bad": 1}


def test_timeout_works_from_a_non_main_thread(no_leaks) -> None:
    completions = _evil_batch("SLEEP")
    box: dict = {}
    with RewardRunner([evil_reward], num_workers=2, timeout_s=TIMEOUT) as runner:
        thread = threading.Thread(target=lambda: box.update(out=runner.score(["p"] * 12, completions, {})))
        thread.start()
        thread.join(timeout=30)
        assert not thread.is_alive()
    assert box["out"].failures == {"evil_reward": 1}


def test_a_reward_that_always_hangs_is_given_up_on(caplog, no_leaks) -> None:
    n = 40
    with caplog.at_level(logging.WARNING, logger="rlreason.rewards"), RewardRunner(
        [always_hangs, length_reward], num_workers=2, timeout_s=TIMEOUT, max_timeouts=4
    ) as runner:
        start = time.monotonic()
        out = runner.score(["p"] * n, ["x"] * n, {})
        elapsed = time.monotonic() - start
    assert out.failures == {"always_hangs": n, "length_reward": 0}
    assert out.total.tolist() == [1.0] * n
    assert elapsed < 4 * TIMEOUT + 3.0  # two rounds of timeouts, not n * TIMEOUT
    messages = [r.getMessage() for r in caplog.records]
    # one line per distinct failure, with how many completions it hit (not one line per completion)
    assert len(messages) == 2 and "timed out" in messages[0] and "skipped" in messages[-1], messages
    assert "(and 35 more completions)" in messages[-1]


def test_many_hanging_completions_give_up_after_max_timeouts(no_leaks) -> None:
    completions = ["SLEEP" if i % 2 else "fine" for i in range(20)]
    with RewardRunner([evil_reward], num_workers=2, timeout_s=TIMEOUT, chunk_size=2, max_timeouts=2) as runner:
        start = time.monotonic()
        out = runner.score(["p"] * 20, completions, {})
        elapsed = time.monotonic() - start
    assert out.failures == {"evil_reward": 10 + (10 - 2)}  # 10 hang, and all but 2 "fine" are skipped
    assert elapsed < 6 * TIMEOUT + 3.0


def slow_reward(prompts: list, completions: list, **kwargs: object) -> list[float]:
    time.sleep(0.06 * len(completions))
    return [1.0] * len(completions)


def test_slow_chunks_are_rescored_one_by_one_not_given_up(no_leaks) -> None:
    # Chunks of 16 take about 1 s, over the 0.5 s timeout; one completion takes 0.06 s.
    with RewardRunner([slow_reward], num_workers=2, timeout_s=TIMEOUT, chunk_size=16, max_timeouts=1) as runner:
        out = runner.score(["p"] * 64, ["c"] * 64, {})
    assert out.failures == {"slow_reward": 0}
    assert out.total.tolist() == [1.0] * 64


# ---------------------------------------------------------------------------------------------
# Async and file-loaded rewards


def test_async_reward_in_pool_and_in_process(no_leaks) -> None:
    completions = ["a", "banana", "", "aaa"]
    with RewardRunner([async_reward], num_workers=2) as runner:
        pooled = runner.score(["p"] * 4, completions, {})
    in_process = RewardRunner([async_reward], in_process=True).score(["p"] * 4, completions, {})
    assert pooled.per_func["async_reward"].tolist() == [1.0, 3.0, 0.0, 3.0]
    assert _same(pooled, in_process)


def test_async_reward_in_process_inside_a_running_event_loop() -> None:
    runner = RewardRunner([async_reward], in_process=True)

    async def caller() -> RewardOutput:
        return runner.score(["p"], ["aa"], {})

    assert asyncio.run(caller()).total.tolist() == [2.0]


_REWARD_FILE = textwrap.dedent(
    """
    import dataclasses

    def file_reward(prompts, completions, **kwargs):
        return [float(len(c)) * 10 for c in completions]

    @dataclasses.dataclass
    class Scorer:
        bonus: float
        def __call__(self, prompts, completions, **kwargs):
            return [self.bonus + len(c) for c in completions]

    scorer = Scorer(0.5)
    """
)


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_file_loaded_rewards_work_in_workers(start_method: str, tmp_path, no_leaks) -> None:
    path = tmp_path / "my_rewards.py"
    path.write_text(_REWARD_FILE)
    funcs = [resolve(f"{path}:file_reward"), resolve(f"{path}:scorer")]
    assert funcs[0].__module__.startswith("rlreason_reward_file_")  # not importable by name
    with RewardRunner(funcs, num_workers=2, start_method=start_method) as runner:
        out = runner.score(["p", "p"], ["ab", "abcd"], {})
    assert out.per_func["file_reward"].tolist() == [20.0, 40.0]
    assert out.per_func["Scorer"].tolist() == [2.5, 4.5]


def test_spawn_reports_unpicklable_rewards_at_construction() -> None:
    with pytest.raises(TypeError, match="pickle"):
        RewardRunner([lambda **kw: []], start_method="spawn")


# ---------------------------------------------------------------------------------------------
# Process hygiene


def test_close_leaves_no_processes_and_is_idempotent() -> None:
    before = _descendants(os.getpid())
    runner = RewardRunner([length_reward], num_workers=3)
    manager = runner._pool.manager_pid
    workers = _descendants(manager)
    assert len(workers) == 3 and manager in _descendants(os.getpid())
    runner.score(["p"], ["c"], {})
    runner.close()
    runner.close()
    assert not any(alive(p) for p in workers | {manager})
    assert _descendants(os.getpid()) <= before
    assert not [p for p in multiprocessing.active_children() if p.name == "rlreason-reward-manager"]
    with pytest.raises(RuntimeError, match="closed"):
        runner.score(["p"], ["c"], {})


def test_garbage_collected_runner_stops_its_processes() -> None:
    runner = RewardRunner([length_reward], num_workers=2)
    manager = runner._pool.manager_pid
    pids = _descendants(manager) | {manager}
    del runner
    gc.collect()
    assert wait_until(lambda: not any(alive(p) for p in pids))


def test_killed_manager_is_restarted(caplog, no_leaks) -> None:
    with RewardRunner([length_reward], num_workers=2) as runner:
        old_manager = runner._pool.manager_pid
        old_workers = _descendants(old_manager)
        os.kill(old_manager, signal.SIGKILL)
        assert wait_until(lambda: not alive(old_manager) or not runner._pool._handle.process.is_alive())
        assert runner.score(["p", "p"], ["a", "bb"], {}).total.tolist() == [1.0, 2.0]
        assert runner._pool.manager_pid != old_manager
        # Its orphaned workers die with it (PR_SET_PDEATHSIG).
        assert wait_until(lambda: not any(alive(p) for p in old_workers))


def test_a_forked_copy_of_the_trainer_cannot_use_or_stop_the_pool(no_leaks) -> None:
    with RewardRunner([length_reward], num_workers=1) as runner:
        pid = os.fork()
        if pid == 0:  # e.g. a fork-started data-loader worker holding a reference to the runner
            code = 1
            try:
                try:
                    runner.score(["p"], ["c"], {})
                except RuntimeError:
                    code = 0
                runner.close()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert runner.score(["p"], ["abc"], {}).total.tolist() == [3.0]


def test_trainer_killed_without_closing_leaves_no_processes(tmp_path) -> None:
    script = textwrap.dedent(
        """
        import os, sys, time
        from rlreason.rewards.runner import RewardRunner

        def reward(prompts, completions, **kwargs):
            return [1.0] * len(completions)

        runner = RewardRunner([reward], num_workers=2)
        runner.score(["p"], ["c"], {})
        print(os.getpid(), flush=True)
        time.sleep(120)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(child.stdout.readline())
        assert wait_until(lambda: len(_descendants(pid)) == 3, timeout_s=10)  # manager and two workers
        pool_pids = _descendants(pid)
        child.kill()  # SIGKILL: no atexit, no finalizers
        child.wait()
        assert wait_until(lambda: not any(alive(p) for p in pool_pids), timeout_s=5)
    finally:
        child.kill()
        child.stdout.close()


# ---------------------------------------------------------------------------------------------
# Fuzz: adversarial completions at a real verifier and a deliberately evil reward


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


_LATEX_BITS = ["\\boxed{", "\\fbox{", "{", "}", "\\frac{", "^{", "_", "\\sqrt{", "(", ")", "[", "]", "\\left(",
               "\\right)", "<answer>", "</answer>", "####", "\\\\", "$", "=", ",", "\\pi", "x", "\\infty", "e",
               "-", "+", "*", "/", "!", "\\cdot", "%", "\\text{", " or ", " and "]  # fmt: skip
_UNICODE = ["٣", "½", "π", "∞", "\u202e", "\u0301", "𝟙", "😀", "\ud800", "\ufeff", "ℵ", "\u3000", "Ⅻ"]


def _adversarial(rng: random.Random, i: int) -> str:
    """One adversarial completion. Sizes are either small or linear-time megabytes, so no
    verdict depends on how close a slow parse comes to the timeout (the run must be repeatable)."""
    kind = i % 12
    digits = str(rng.randint(0, 20))
    if kind == 0:  # huge exponents and towers
        return rng.choice(
            ["\\boxed{9^{9^{9^{9}}}}", "<answer>10^{10^{100}}</answer>", "\\boxed{2^{2^{2^{2^{2^{2^{2}}}}}}}",
             f"\\boxed{{{digits}^{{99999999999}}}}", "<answer>9**9**9**9</answer>", "\\boxed{(10^{100})!}",
             "\\boxed{1e999999999}", "\\boxed{" + "9" * 5000 + "}"]
        )  # fmt: skip
    if kind == 1:  # deep nesting, 10^4 levels
        depth = 10_000
        return rng.choice(
            ["\\boxed{" + "(" * depth + digits + ")" * depth + "}",
             "\\boxed{" + "{" * depth + digits + "}" * depth + "}",
             "<answer>" + "\\frac{1}{" * depth + "2" + "}" * depth + "</answer>",
             "\\boxed{" + "\\sqrt{" * depth + "4" + "}" * depth + "}", "(" * depth]
        )  # fmt: skip
    if kind == 2:  # unbalanced braces
        return "".join(rng.choice(["{", "}", "\\boxed{", "\\fbox{", digits]) for _ in range(rng.randint(1, 200)))
    if kind == 3:  # random LaTeX soup
        return "".join(rng.choice(_LATEX_BITS + [digits]) for _ in range(rng.randint(1, 120)))
    if kind == 4:  # unicode
        return "<answer>" + "".join(rng.choice(_UNICODE + [digits]) for _ in range(rng.randint(1, 60))) + "</answer>"
    if kind == 5:  # null bytes and control characters
        return "\\boxed{" + digits + "\x00" * rng.randint(1, 50) + "\x01\x1b[31m}" + "\x00"
    if kind == 6 and i % 1000 == 6:  # megabyte strings (ten of them), each parsed in linear time
        return rng.choice(
            ["a" * 2**20 + f"<answer>{digits}</answer>", "\x00" * 2**20, "π" * 2**19 + f"\\boxed{{{digits}}}",
             "#### " + "1" * 2**20, "x " * 2**19]
        )  # fmt: skip
    # well-formed answers, some right: the verifier must still give real verdicts
    return rng.choice([f"<answer>{digits}</answer>", f"\\boxed{{{digits}}}", f"#### {digits}", digits])


def _fuzz_batch(seed: int, n: int) -> tuple[list[str], list[str], list[str]]:
    rng = random.Random(seed)
    completions = [_adversarial(rng, i) for i in range(n)]
    golds = [str(rng.randint(0, 20)) for _ in range(n)]
    prompts = ["p"] * n
    # A known number of evil calls, spread out so no batch hits max_timeouts.
    moods = ["sleep"] * 2 + ["oom"] * 6 + ["exit"] * 4 + ["raise"] * 30
    for i, mood in zip(rng.sample(range(n), len(moods)), moods, strict=True):
        prompts[i] = f"evil:{mood}"
    return prompts, completions, golds


def test_fuzz_adversarial_completions(no_leaks) -> None:
    n, batch = 10_000, 2_500
    prompts, completions, golds = _fuzz_batch(seed=20240601, n=n)
    evil = {i for i, p in enumerate(prompts) if p.startswith("evil:")}
    rss_before = _rss_mb()
    runs = []
    with RewardRunner(
        [accuracy_reward, prompt_marked_evil], num_workers=2, timeout_s=2.0, memory_mb=512
    ) as runner:
        for _ in range(2):
            start = time.monotonic()
            outs = [
                runner.score(prompts[s : s + batch], completions[s : s + batch], {"answer": golds[s : s + batch]})
                for s in range(0, n, batch)
            ]
            elapsed = time.monotonic() - start
            # 2 sleeps, each a chunk timeout then an item timeout (8 s), plus about 3 s of work.
            assert elapsed < 35.0, elapsed
            runs.append(outs)
    first, second = runs
    assert all(_same(a, b) for a, b in zip(first, second, strict=True))  # deterministic verdicts
    evil_values = sum((_values(o, "prompt_marked_evil") for o in first), [])
    accuracy = sum((_values(o, "accuracy_reward") for o in first), [])
    for i, value in enumerate(evil_values):
        c = completions[i]
        assert value == (None if i in evil or len(c) % 7 == 0 else float(len(c) % 3)), (i, prompts[i], value)
    assert sum(o.failures["prompt_marked_evil"] for o in first) == len(evil)
    assert set(accuracy) <= {0.0, 1.0, None}
    right = [i for i, c in enumerate(completions) if c in (f"<answer>{golds[i]}</answer>", f"\\boxed{{{golds[i]}}}")]
    assert right and all(accuracy[i] == 1.0 for i in right)  # a real verifier ran in the workers
    assert _rss_mb() - rss_before < 300  # the parent held the batch, not the 10 GB allocations


# ---------------------------------------------------------------------------------------------
# TRL's calling convention (issue 17): whole batch, trainer_state, log_extra / log_metric


def batch_size_reward(prompts: list, completions: list, **kwargs: object) -> list[float]:
    """Scores every completion with the size of the batch it was called with (open-r1's
    len_reward compares completions across the batch: it must see all of them)."""
    return [float(len(completions))] * len(completions)


class ChunkedBatchSize:
    """batch_size_reward, opted in to chunked calls."""

    rlreason_chunk_size = 4
    __name__ = "chunked_batch_size"

    def __call__(self, prompts: list, completions: list, **kwargs: object) -> list[float]:
        return batch_size_reward(prompts, completions)


def trl_style_reward(prompts, completions, trainer_state, log_extra, log_metric, **kwargs):
    """Reads trainer_state and logs like a TRL reward."""
    log_extra("doubled", [2 * c for c in completions])
    log_metric("my_metric", float(len(completions)))
    return [float(trainer_state["global_step"])] * len(completions)


def columns_only_reward(prompts, completions, answer):
    """No **kwargs and no trainer arguments: gets only what it names."""
    return [float(a) for a in answer]


def test_each_reward_is_called_once_with_the_whole_batch_by_default(no_leaks) -> None:
    completions = [f"c{i}" for i in range(32)]
    with RewardRunner([batch_size_reward, ChunkedBatchSize()], num_workers=2) as runner:
        out = runner.score(["p"] * 32, completions, {})
    assert out.per_func["batch_size_reward"].tolist() == [32.0] * 32  # not 4 chunks of 8, as before
    assert out.per_func["chunked_batch_size"].tolist() == [4.0] * 32  # the per-reward opt-in
    in_process = RewardRunner([batch_size_reward], in_process=True).score(["p"] * 32, completions, {})
    assert in_process.per_func["batch_size_reward"].tolist() == [32.0] * 32


@pytest.mark.parametrize("in_process", [False, True])
def test_trainer_state_log_extra_and_log_metric_are_passed_as_trl_does(in_process: bool, no_leaks) -> None:
    funcs = [trl_style_reward, columns_only_reward]
    with RewardRunner(funcs, num_workers=2, in_process=in_process, chunk_size=3) as runner:
        out = runner.score(["p"] * 5, list("abcde"), {"answer": [1, 2, 3, 4, 5]},
                           shared={"trainer_state": {"global_step": 7}})
    assert out.per_func["trl_style_reward"].tolist() == [7.0] * 5
    assert out.per_func["columns_only_reward"].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert set(out.failures.values()) == {0}
    assert out.extra == {"doubled": ["aa", "bb", "cc", "dd", "ee"]}  # chunks of 3 and 2, put back in order
    # averaged over the calls (in process: one call per batch)
    assert out.logged == {"my_metric": 5.0 if in_process else 2.5}
    with pytest.raises(ValueError, match="trainer_state"):
        RewardRunner(funcs, in_process=True).score(["p"], ["a"], {"trainer_state": [1]})


def test_no_applicable_term_is_not_a_score_and_a_repeated_failure_is_logged_once(caplog, no_leaks) -> None:
    def none_on_b(prompts, completions, **kw):
        return [None if c == "b" else 1.0 for c in completions]

    def broken(prompts, completions, **kw):
        return [c[0]["content"] for c in completions]  # a TRL reward handed strings: TypeError

    with caplog.at_level(logging.WARNING, logger="rlreason.rewards"), RewardRunner(
            [none_on_b, broken], in_process=True) as runner:
        out = runner.score(["p"] * 3, ["a", "b", "c"], {})
        assert out.applicable.tolist() == [True, False, True]
        assert "TypeError" in out.errors["broken"] and out.failures["broken"] == 3
        first = [r.getMessage() for r in caplog.records]
        runner.score(["p"] * 3, ["a", "b", "c"], {})
    again = [r.getMessage() for r in caplog.records][len(first):]
    assert any("TypeError" in m for m in first)
    assert not any("TypeError" in m for m in again), again  # shown once, counted every batch


def test_a_reward_funcs_entry_opts_a_reward_in_to_chunks(no_leaks) -> None:
    from rlreason.rewards import build_rewards

    funcs, _ = build_rewards([{"name": f"{__name__}:batch_size_reward", "chunk_size": 8},
                              f"{__name__}:batch_size_reward"])
    with RewardRunner(funcs, num_workers=2) as runner:
        out = runner.score(["p"] * 32, [f"c{i}" for i in range(32)], {})
    assert out.per_func["batch_size_reward"].tolist() == [8.0] * 32  # chunks of 8 for the opted-in entry
    assert out.per_func["batch_size_reward_2"].tolist() == [32.0] * 32  # the same function, whole batch
    assert batch_size_reward.__dict__ == {}  # the function itself is not changed


# ---------------------------------------------------------------------------------------------
# One call-and-check (issue 30): score(), the runner in and out of process, and the preflight check
# call a reward through rewards/_call.py call_reward, so a failure reads the same in each.


def misreports(prompts: list, completions: list, **kwargs: object) -> list:
    """Fails as a whole on a batch holding "RAISE" (raises) or "LONG" (one value too many); else one
    value per completion, given as written."""
    if "RAISE" in completions:
        raise ZeroDivisionError("divided by nothing")
    if "LONG" in completions:
        return [1.0] * (len(completions) + 1)
    return [{"NAN": math.nan, "HUGE": 1e39, "TEXT": "1", "NONE": None}.get(c, 0.5) for c in completions]


@pytest.mark.parametrize("completions, whole_batch, retried", [
    (["a", "RAISE"], "raised ZeroDivisionError('divided by nothing') at ", None),
    (["a", "LONG"], "returned 3 values, expected length 2 (one per completion)",
     "returned 2 values, expected length 1 (one per completion)"),
    (["NAN", "a"], "returned nan", None),
    (["HUGE", "a"], "returned 1e+39 (beyond float32's range, |v| > 3.4e38)", None),
    (["TEXT", "a"], "returned '1'", None),
])
def test_every_scoring_path_checks_a_call_the_same_way(no_leaks, completions, whole_batch, retried) -> None:
    """The same failure, named the same way, in score(), the in-process runner and the pool."""
    columns = {"answer": ["1"] * len(completions)}
    whole = score([misreports], None, ["p"] * len(completions), completions, columns)
    in_process = RewardRunner([misreports], in_process=True).score(["p"] * len(completions), completions, columns)
    with RewardRunner([misreports], num_workers=1, timeout_s=5.0) as runner:
        pooled = runner.score(["p"] * len(completions), completions, columns)
    assert whole.errors["misreports"].startswith(whole_batch), whole.errors
    for out in (in_process, pooled):
        assert out.errors["misreports"].startswith(retried or whole_batch), out.errors
    assert _same(in_process, pooled)
    if completions[0] != "a":  # an invalid value: only its own completion fails
        assert whole.failures == in_process.failures == {"misreports": 1} and _same(whole, in_process)
    else:  # a call failing as a whole: all its completions in score(); the runner retries each alone
        assert whole.failures == {"misreports": 2}
        assert in_process.failures == {"misreports": 1} and in_process.per_func["misreports"][0].item() == 0.5


def test_preflight_checks_a_reward_as_training_does(tmp_path: Path) -> None:
    """An invalid value is the row's error, named (the preflight once took NaN as a score and 1e39 as
    a match), and None is still "cannot read the gold", not an error."""
    from rlreason.rewards import preflight as pf

    rows = [{"problem": "p", "solution": "\\boxed{1}", "answer": "1", "case": case}
            for case in ("ok", "NAN", "HUGE", "TEXT", "NONE", "RAISE")]

    def reward(prompts: list, completions: list, case: list, **kwargs: object) -> list:
        return misreports(prompts, case, **kwargs)

    results = pf.check_rows(rows, reward, solution_column="solution", answer_column="answer")
    assert [r.status for r in results] == ["ok", "error", "error", "error", "unparseable_gold", "error"]
    assert [r.detail for r in results[1:4]] == ["returned nan", "returned 1e+39 (beyond float32's range, "
                                                "|v| > 3.4e38)", "returned '1'"]
    assert results[5].detail.startswith("raised ZeroDivisionError('divided by nothing') at ")
    assert results[0].score == 0.5
