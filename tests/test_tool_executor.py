"""Running tools isolated (issue 32): rlreason/rollout/tools/executor.py over real worker processes.

Each misbehaviour the issue names (a tool that raises, hangs, returns 10 MB, allocates 2 GB, calls
os._exit; an environment whose reset raises or whose method hangs) becomes a failed ToolResult or an
EpisodeStart error the model / the trainer can read, never an exception, and the run goes on: later
calls are served, other episodes' environments (on other workers) are untouched. Environments
(stateful, async, dict factories, pooled across batches) and the schemas are checked here too."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import pytest
from _procs import alive, assert_all_end, wait_until

from rlreason.rewards._pool import _children
from rlreason.rollout.tools import ToolExecutor, ToolSchemaError, tool_schemas

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the worker processes are Linux-first")


# ------------------------------------------------------------------ tools (module level: real functions)


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: The first factor.
        b: The second factor.
    """
    return a * b


def fail(message: str) -> str:
    """Raise an error.

    Args:
        message: What the error says.
    """
    raise RuntimeError(message)


def hang(seconds: float) -> str:
    """Sleep.

    Args:
        seconds: How long.
    """
    time.sleep(seconds)
    return "woke up"


def flood(megabytes: int) -> str:
    """Return a huge text.

    Args:
        megabytes: Its size in MB.
    """
    return "x" * (megabytes * 1_000_000)


def hog(gigabytes: float) -> str:
    """Allocate memory.

    Args:
        gigabytes: How much.
    """
    block = bytearray(int(gigabytes * 2**30))
    return str(len(block))


def die(code: int) -> str:
    """Exit the process at once.

    Args:
        code: The exit code.
    """
    os._exit(code)


async def async_multiply(a: int, b: int) -> int:
    """Multiply, asynchronously.

    Args:
        a: The first factor.
        b: The second factor.
    """
    await asyncio.sleep(0.01)
    return a * b


def call(name: str, **arguments: object) -> dict:
    """A tool call as transformers' parse_response gives it."""
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def test_in_process_mode_drops_an_environment_whose_call_hung() -> None:
    Built.made = 0
    with pytest.warns(UserWarning, match="tool_isolation: none"):
        ex = ToolExecutor(environment_factory=SlowBuilt, timeout_s=0.3, isolation="none")
    ex.start([{}, {}])
    [[hung], [fine]] = ex.call([(0, [call("wait", seconds=2)]), (1, [call("serial_number")])])
    [[lost]] = ex.call([(0, [call("serial_number")])])
    values, failed = ex.rewards()
    ex.start([{}, {}])  # the abandoned instance (it may still be changing) is never handed out again
    serials = {r[0].content for r in ex.call([(0, [call("serial_number")]), (1, [call("serial_number")])])}
    assert (hung.reason, lost.reason) == ("timeout", "environment_lost")
    assert failed == {"SlowBuilt": [True, False]} and values["SlowBuilt"][1] == 1.0
    # the probe built 1 (episode 0 took it and hung), episode 1 built 2; the next batch gets 2 back and builds 3
    assert fine.content == "2" and serials == {"2", "3"} and Built.made == 3


# ------------------------------------------------------------------ environments


class Counter:
    """A stateful environment: reset sets the count from the row, inc adds, get_reward reads it."""

    def reset(self, start: int = 0, **row: object) -> str:
        self.count = start
        return f"The count is {start}."

    def inc(self, by: int) -> int:
        """Add to the count.

        Args:
            by: How much to add.
        """
        self.count += by
        return self.count

    def wait(self, seconds: float) -> str:
        """Wait.

        Args:
            seconds: How long.
        """
        time.sleep(seconds)
        return "done"

    def get_reward(self) -> float:
        return float(self.count)


class BrokenReset:
    def reset(self, **row: object) -> str:
        if row.get("bad"):
            raise ValueError("no such level")
        return "ok"

    def look(self) -> str:
        """Look around."""
        return "a room"


class AsyncCounter:
    """Async reset, methods and get_reward: run on the worker's event loop."""

    async def reset(self, **row: object) -> None:
        self.count = 0

    async def inc(self, by: int) -> int:
        """Add to the count.

        Args:
            by: How much to add.
        """
        await asyncio.sleep(0.001)
        self.count += by
        return self.count

    async def get_reward(self) -> float:
        return float(self.count)


class Built:
    """Counts its constructions across the process, to see instances pooled."""

    made = 0

    def __init__(self) -> None:
        Built.made += 1
        self.serial = Built.made

    def reset(self, **row: object) -> None:
        return None

    def serial_number(self) -> int:
        """The instance's serial number."""
        return self.serial


class SlowBuilt(Built):
    def wait(self, seconds: float) -> str:
        """Wait.

        Args:
            seconds: How long.
        """
        time.sleep(seconds)
        return "done"

    def get_reward(self) -> float:
        return 1.0


class Echo:
    def reset(self, **row: object) -> str:
        return f"echo row {row['prompt']}"

    def echo(self, text: str) -> str:
        """Echo.

        Args:
            text: What to say.
        """
        return text


class NoReset:
    def step(self) -> str:
        """Step."""
        return ""


# ------------------------------------------------------------------ tools


def test_tool_that_raises_is_an_error_message_and_the_run_goes_on() -> None:
    with ToolExecutor([multiply, fail], num_workers=1) as ex:
        ex.start([{}])
        [[bad, good]] = ex.call([(0, [call("fail", message="division by zero"), call("multiply", a=6, b=7)])])
    assert (bad.failed, bad.reason, bad.content) == (True, "raised", "{'error': 'division by zero'}")  # TRL's shape
    assert (good.failed, good.content) == (False, "42")


def test_hanging_tool_is_killed_at_the_timeout_and_later_episodes_are_served() -> None:
    with ToolExecutor([multiply, hang], timeout_s=1.0, num_workers=1) as ex:
        ex.start([{}, {}, {}])
        t0 = time.monotonic()
        [[hung], [after]] = ex.call([(0, [call("hang", seconds=60)]), (1, [call("multiply", a=2, b=3)])])
        took = time.monotonic() - t0
        [[later]] = ex.call([(2, [call("multiply", a=4, b=5)])])
    assert (hung.failed, hung.reason) == (True, "timeout") and "timed out after 1 s" in hung.content
    assert 1.0 <= took < 10, took  # killed at the deadline, not after 60 s
    assert (after.failed, after.content) == (False, "6")  # the same (only) worker, restarted
    assert (later.failed, later.content) == (False, "20")


def test_huge_output_is_cut_in_the_worker() -> None:
    with ToolExecutor([flood], max_output_chars=1000, num_workers=1) as ex:
        ex.start([{}])
        t0 = time.monotonic()
        [[result]] = ex.call([(0, [call("flood", megabytes=10)])])
        took = time.monotonic() - t0
    assert (result.failed, result.truncated, result.content) == (False, True, "x" * 1000)
    assert took < 2.0, took


def test_memory_blowup_hits_the_cap_and_the_worker_serves_on() -> None:
    with ToolExecutor([hog, multiply], memory_mb=256, num_workers=1) as ex:
        ex.start([{}])
        [[blown, small, fine]] = ex.call([(0, [call("hog", gigabytes=2), call("hog", gigabytes=0.01),
                                               call("multiply", a=3, b=3)])])
    assert (blown.failed, blown.reason) == (True, "memory") and "memory" in blown.content
    assert (small.failed, small.content) == (False, str(int(0.01 * 2**30)))  # under the cap: runs
    assert (fine.failed, fine.content) == (False, "9")


def test_os_exit_is_a_crashed_worker_and_the_next_call_is_served() -> None:
    with ToolExecutor([die, multiply], num_workers=1) as ex:
        ex.start([{}, {}])
        [[crashed], [next_one]] = ex.call([(0, [call("die", code=3)]), (1, [call("multiply", a=1, b=9)])])
    assert (crashed.failed, crashed.reason) == (True, "crashed") and "exit code 3" in crashed.content
    assert (next_one.failed, next_one.content) == (False, "9")


def test_sys_exit_is_the_tools_failure_and_the_worker_lives_on() -> None:
    def leave(code: int) -> str:
        """Exit.

        Args:
            code: The exit code.
        """
        raise SystemExit(code)

    with ToolExecutor([leave], Counter, num_workers=1) as ex:
        ex.start([{"start": 1}])
        worker = _children(ex.manager_pid)
        [[left, inc]] = ex.call([(0, [call("leave", code=4), call("inc", by=1)])])
        assert _children(ex.manager_pid) == worker  # not replaced: the episode's environment lives on
    assert (left.reason, left.content) == ("raised", "{'error': 'called sys.exit(4)'}")
    assert (inc.failed, inc.content) == (False, "2")


def test_no_process_outlives_close_even_after_kills() -> None:
    ex = ToolExecutor([hang, die], timeout_s=0.5, num_workers=2)
    manager = ex.manager_pid
    first = _children(manager)
    assert manager is not None and len(first) == 2
    ex.start([{}, {}])
    ex.call([(0, [call("hang", seconds=60)]), (1, [call("die", code=1)])])  # both workers replaced
    second = _children(manager)
    assert len(second) == 2 and not set(first) & set(second)
    assert not any(alive(p) for p in first)  # the killed ones are gone, not left as zombies or strays
    ex.close()
    assert_all_end([manager, *second])


def test_a_killed_manager_is_replaced_and_its_environments_count_as_lost() -> None:
    with ToolExecutor([multiply], Counter, num_workers=1) as ex:
        ex.start([{"start": 1}])
        manager = ex.manager_pid
        os.kill(manager, signal.SIGKILL)  # the OOM killer, an operator's kill, between two requests
        assert wait_until(lambda: not alive(manager))
        [[inc, product]] = ex.call([(0, [call("inc", by=1), call("multiply", a=2, b=3)])])
        values, failed = ex.rewards()
        ex.start([{"start": 5}])  # the next batch runs on the new manager
        [[again]] = ex.call([(0, [call("inc", by=1)])])
    assert (inc.reason, product.content) == ("environment_lost", "6")
    assert values == {"Counter": [None]} and failed == {"Counter": [True]}
    assert again.content == "6"
    assert ex.manager_pid != manager


def test_unknown_tool_and_bad_arguments() -> None:
    with ToolExecutor([multiply], num_workers=1) as ex:
        ex.start([{}])
        as_text = [{"type": "function", "function": {"name": "multiply", "arguments": text}}
                   for text in ("{not json", '{"a": 2, "b": 5}')]
        [results] = ex.call([(0, [call("divide", a=1, b=2), call("multiply", a=1), *as_text])])
    assert [(r.name, r.reason) for r in results] == [("divide", "unknown_tool"), ("multiply", "bad_arguments"),
                                                     ("multiply", "bad_arguments"), ("multiply", None)]
    assert results[0].content == "{'error': 'Tool divide not found.'}"  # TRL's text
    assert "missing a required argument: 'b'" in results[1].content
    assert results[3].content == "10"  # JSON text arguments are parsed


def test_async_tool_runs_in_the_worker() -> None:
    with ToolExecutor([async_multiply], num_workers=1) as ex:
        assert [s["function"]["name"] for s in ex.start([{}])[0].schemas] == ["async_multiply"]
        [[result]] = ex.call([(0, [call("async_multiply", a=7, b=8)])])
    assert (result.failed, result.content) == (False, "56")


def test_in_process_mode_has_the_same_api_and_warns() -> None:
    with pytest.warns(UserWarning, match="tool_isolation: none"):
        ex = ToolExecutor([multiply, fail, hang], timeout_s=0.5, isolation="none")
    ex.start([{}])
    [[ok, bad, hung]] = ex.call([(0, [call("multiply", a=2, b=2), call("fail", message="no"),
                                      call("hang", seconds=3)])])
    assert [(r.content, r.reason) for r in (ok, bad)] == [("4", None), ("{'error': 'no'}", "raised")]
    assert hung.reason == "timeout"


# ------------------------------------------------------------------ environments


def test_stateful_environment_keeps_its_state_across_calls_and_scores_it() -> None:
    with ToolExecutor(environment_factory=Counter, num_workers=2) as ex:
        assert ex.reward_names == ["Counter"]
        starts = ex.start([{"start": 10}, {"start": 20}, {"start": 30}])
        assert [s.observation for s in starts] == ["The count is 10.", "The count is 20.", "The count is 30."]
        assert [f["function"]["name"] for f in starts[0].schemas] == ["inc", "wait"]  # not reset / get_reward
        first = ex.call([(0, [call("inc", by=1)]), (1, [call("inc", by=2)]), (2, [call("inc", by=3)])])
        second = ex.call([(0, [call("inc", by=1), call("inc", by=1)]), (2, [call("inc", by=100)])])
        values, failed = ex.rewards()
    assert [[r.content for r in rs] for rs in first] == [["11"], ["22"], ["33"]]
    assert [[r.content for r in rs] for rs in second] == [["12", "13"], ["133"]]
    assert values == {"Counter": [13.0, 22.0, 133.0]} and failed == {"Counter": [False, False, False]}


def test_reset_that_raises_is_an_episode_error_and_the_run_goes_on() -> None:
    with ToolExecutor(environment_factory=BrokenReset, num_workers=1) as ex:
        starts = ex.start([{"bad": True}, {"bad": False}])
        [[looked], [cannot]] = ex.call([(1, [call("look")]), (0, [call("look")])])
    assert starts[0].error is not None and "no such level" in starts[0].error and starts[0].observation is None
    assert (starts[1].error, starts[1].observation) == (None, "ok")
    assert (looked.failed, looked.content) == (False, "a room")
    assert (cannot.reason, "its reset failed" in cannot.content) == ("environment_lost", True)


def test_hanging_method_loses_its_workers_environments_only() -> None:
    # episode i lives in worker i % 2: episodes 0 and 2 share worker 0, 1 and 3 worker 1
    with ToolExecutor([multiply], Counter, timeout_s=1.0, num_workers=2) as ex:
        ex.start([{"start": 0}, {"start": 1}, {"start": 2}, {"start": 3}])
        ex.call([(2, [call("inc", by=5)]), (3, [call("inc", by=5)])])
        [[hung], [other]] = ex.call([(0, [call("wait", seconds=60)]), (1, [call("inc", by=1)])])
        [[lost], [tool], [fine]] = ex.call([(2, [call("inc", by=1)]), (2, [call("multiply", a=2, b=4)]),
                                            (3, [call("inc", by=1)])])
        values, failed = ex.rewards()
        # the next batch: the worker was replaced, its environments built afresh
        ex.start([{"start": 7}, {"start": 8}])
        [[again]] = ex.call([(0, [call("inc", by=1)])])
        values2, failed2 = ex.rewards()
    assert (hung.reason, other.content) == ("timeout", "2")
    assert (lost.failed, lost.reason) == (True, "environment_lost") and "environment lost" in lost.content
    assert (tool.failed, tool.content) == (False, "8")  # standalone tools hold no state: still served
    assert fine.content == "9"
    # reward unknown (failed), never a zero, for the two episodes of the killed worker
    assert failed == {"Counter": [True, False, True, False]}
    assert values["Counter"][1] == 2.0 and values["Counter"][3] == 9.0
    assert values["Counter"][0] is None and values["Counter"][2] is None
    assert again.content == "8" and values2 == {"Counter": [8.0, 8.0]} and failed2 == {"Counter": [False, False]}


def test_hanging_reset_fails_its_episode_and_its_workers_other_resets_are_redone() -> None:
    class SlowReset(Counter):
        def reset(self, start: int = 0, **row: object) -> str:
            if row.get("slow"):
                time.sleep(60)
            return super().reset(start)

    with ToolExecutor(environment_factory=SlowReset, timeout_s=1.0, num_workers=1) as ex:
        starts = ex.start([{"start": 5}, {"start": 1, "slow": True}, {"start": 6}])
        [[a], [b]] = ex.call([(0, [call("inc", by=1)]), (2, [call("inc", by=1)])])
        values, failed = ex.rewards()
    assert starts[1].error is not None and "timed out" in starts[1].error
    assert [starts[0].error, starts[2].error] == [None, None]
    assert (a.content, b.content) == ("6", "7")  # episode 0 was reset again on the fresh worker
    assert failed == {"SlowReset": [False, True, False]} and values["SlowReset"] == [6.0, None, 7.0]


def test_async_environment() -> None:
    with ToolExecutor(environment_factory=AsyncCounter, num_workers=1) as ex:
        ex.start([{}, {}])
        [[a, b], [c]] = ex.call([(0, [call("inc", by=2), call("inc", by=3)]), (1, [call("inc", by=4)])])
        values, failed = ex.rewards()
    assert [a.content, b.content, c.content] == ["2", "5", "4"]
    assert values == {"AsyncCounter": [5.0, 4.0]} and failed == {"AsyncCounter": [False, False]}


def test_instances_are_pooled_and_reset_across_batches() -> None:
    Built.made = 0
    with ToolExecutor(environment_factory=Built, num_workers=1, isolation="process") as ex:
        ex.start([{}, {}, {}])
        first = {r[0].content for r in ex.call([(i, [call("serial_number")]) for i in range(3)])}
        ex.start([{}, {}, {}])
        second = {r[0].content for r in ex.call([(i, [call("serial_number")]) for i in range(3)])}
        ex.start([{}, {}, {}, {}])
        third = {r[0].content for r in ex.call([(i, [call("serial_number")]) for i in range(4)])}
    # the probe built instance 1 (pooled); a batch of 3 builds 2 more; the next reuses them; 4 builds one more
    assert first == second == {"1", "2", "3"}
    assert third == {"1", "2", "3", "4"}


def test_dict_factory_routes_rows_and_exposes_only_their_tools() -> None:
    with ToolExecutor(environment_factory={"count": Counter, "echo": Echo}, num_workers=2) as ex:
        assert ex.reward_names == ["Counter"]  # Echo has no get_reward
        starts = ex.start([{"environment": "count", "prompt": "p0", "start": 4},
                           {"environment": "echo", "prompt": "p1"}])
        assert [[s["function"]["name"] for s in st.schemas] for st in starts] == [["inc", "wait"], ["echo"]]
        assert starts[1].observation == "echo row p1"  # reset gets the row without its 'environment' column
        [[inc], [echo], [wrong]] = ex.call([(0, [call("inc", by=1)]), (1, [call("echo", text="hi")]),
                                            (1, [call("inc", by=1)])])
        values, failed = ex.rewards()
        with pytest.raises(ValueError, match=r"environment='chess'.*'count', 'echo'"):
            ex.start([{"environment": "chess"}])
    assert (inc.content, echo.content, wrong.reason) == ("5", "hi", "unknown_tool")
    assert values == {"Counter": [5.0, None]} and failed == {"Counter": [False, False]}


def test_environment_without_reset_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match=r"environment_factory\['x'\].*NoReset.*no reset method"):
        ToolExecutor(environment_factory={"x": NoReset}, num_workers=1)


# ------------------------------------------------------------------ schemas


def test_schemas_of_sync_async_and_bound_methods() -> None:
    schemas = tool_schemas([multiply, async_multiply, Counter().inc])
    assert schemas[0] == {"type": "function", "function": {
        "name": "multiply", "description": "Multiply two integers.",
        "parameters": {"type": "object", "properties": {
            "a": {"type": "integer", "description": "The first factor."},
            "b": {"type": "integer", "description": "The second factor."}}, "required": ["a", "b"]},
        "return": {"type": "integer"}}}
    assert schemas[1]["function"]["name"] == "async_multiply"
    assert list(schemas[2]["function"]["parameters"]["properties"]) == ["by"]  # no self


def test_unusable_tools_are_refused_naming_them() -> None:
    def no_doc(a: int) -> int:
        return a

    def no_hint(a):  # noqa: ANN001, ANN202
        """Do.

        Args:
            a: x
        """

    with pytest.raises(ToolSchemaError, match="tool 'no_doc'.*docstring"):
        tool_schemas([no_doc])
    with pytest.raises(ToolSchemaError, match="tool 'no_hint'.*type hint"):
        tool_schemas([no_hint])
    with pytest.raises(ToolSchemaError, match="tool 'multiply': two tools"):
        tool_schemas([multiply, multiply])
    with pytest.raises(ToolSchemaError, match="not a function"):
        tool_schemas(["multiply"])
