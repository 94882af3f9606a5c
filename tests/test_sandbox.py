"""The sandbox's behaviour: statuses, stdin/stdout, one launch for many inputs, parallel runs, the
bubblewrap command line, the unsafe opt-in, and refusing to start without bubblewrap.
The attacks are in tests/test_sandbox_attacks.py."""

from __future__ import annotations

import pytest
from _sandbox import box  # noqa: F401 - a fixture

from rlreason.rewards.sandbox import Job, Limits


def test_run_reads_stdin_and_returns_stdout(box):  # noqa: F811
    r = box.run("print(input()[::-1])", stdin="abc\n")
    assert (r.status, r.returncode, r.stdout, r.stderr) == ("ok", 0, "cba\n", "")


@pytest.mark.parametrize(("code", "status", "returncode"), [
    ("import sys; sys.exit(3)", "error", 3),
    ("raise ValueError('boom')", "error", 1),
    ("def f(:\n  pass", "error", 1),
    ("import sys; sys.exit('message')", "error", 1),
    ("import sys; sys.exit(0)", "ok", 0),
    ("x = bytearray(10**10)", "memory", None),
    ("while True: pass", "timeout", None),
    ("import time; time.sleep(30)", "timeout", None),
    ("import sys; sys.stdout.write('a' * 300_000)", "output_limit", None),
])
def test_statuses(box, code, status, returncode):  # noqa: F811
    r = box.run(code)
    assert r.status == status, r
    if returncode is not None:
        assert r.returncode == returncode


def test_run_inputs_one_fresh_process_per_input(box):  # noqa: F811
    code = "import os\nn = int(input())\nprint(n * 2, os.getpid())"
    results = box.run_inputs(code, [f"{i}\n" for i in range(5)])
    assert [r.stdout.split()[0] for r in results] == ["0", "2", "4", "6", "8"]
    assert len({r.stdout.split()[1] for r in results}) == 5  # a new process each time
    assert all(r.status == "ok" for r in results)


def test_run_many_keeps_order(box):  # noqa: F811
    jobs = [Job(f"print({i} + int(input()))", ["1\n", "2\n"]) for i in range(6)] + [Job("print('none')")]
    results = box.run_many(jobs)
    assert [[r.stdout for r in rs] for rs in results[:6]] == [[f"{i + 1}\n", f"{i + 2}\n"] for i in range(6)]
    assert [r.stdout for r in results[6]] == ["none\n"]


def test_limits_checked():
    with pytest.raises(ValueError, match="Limits.wall_s"):
        Limits(wall_s=0)
