"""The sandbox's behaviour: statuses, stdin/stdout, one launch for many inputs, parallel runs, the
bubblewrap command line, the unsafe opt-in, and refusing to start without bubblewrap.
The attacks are in tests/test_sandbox_attacks.py."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from _sandbox import require_bwrap

from rlreason.rewards.sandbox import Job, Limits, Sandbox, SandboxUnavailable, check_available
from rlreason.rewards.sandbox import sandbox as sandbox_module
from rlreason.rewards.sandbox.bwrap import SANDBOX_UID, BwrapConfig, bwrap_argv, python_binds

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def box() -> Sandbox:
    """A bwrap sandbox with short limits (the tests stay fast)."""
    require_bwrap()
    return Sandbox(Limits(wall_s=2.0, cpu_s=1.0, memory_mb=256, file_size_mb=4, processes=32, output_bytes=100_000))


def test_run_reads_stdin_and_returns_stdout(box):
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
def test_statuses(box, code, status, returncode):
    r = box.run(code)
    assert r.status == status, r
    if returncode is not None:
        assert r.returncode == returncode


def test_run_inputs_one_fresh_process_per_input(box):
    code = "import os\nn = int(input())\nprint(n * 2, os.getpid())"
    results = box.run_inputs(code, [f"{i}\n" for i in range(5)])
    assert [r.stdout.split()[0] for r in results] == ["0", "2", "4", "6", "8"]
    assert len({r.stdout.split()[1] for r in results}) == 5  # a new process each time
    assert all(r.status == "ok" for r in results)


def test_run_many_keeps_order(box):
    jobs = [Job(f"print({i} + int(input()))", ["1\n", "2\n"]) for i in range(6)] + [Job("print('none')")]
    results = box.run_many(jobs)
    assert [[r.stdout for r in rs] for rs in results[:6]] == [[f"{i + 1}\n", f"{i + 2}\n"] for i in range(6)]
    assert [r.stdout for r in results[6]] == ["none\n"]


def test_limits_checked():
    with pytest.raises(ValueError, match="Limits.wall_s"):
        Limits(wall_s=0)


def test_total_wall_limit_bounds_the_launch(box):
    """total_wall_s stops the launch: the input running at the deadline and those not reached are
    "timeout"; the ones before are kept."""
    code = "import time\nn = int(input())\ntime.sleep(n)\nprint(n)"
    start = time.monotonic()
    results = box.run_inputs(code, ["0", "5", "0", "0"], total_wall_s=1.0)
    assert time.monotonic() - start < 4.0
    assert [r.status for r in results] == ["ok", "timeout", "timeout", "timeout"]
    assert results[0].stdout == "0\n" and "total time limit" in results[2].detail


def test_runs_as_unprivileged_uid(box):
    """As root, programs run as the sandbox's uid (RLIMIT_NPROC does not bind root)."""
    r = box.run("import os\nprint(os.getuid(), os.geteuid())")
    uid = SANDBOX_UID if os.geteuid() == 0 else os.geteuid()
    assert r.stdout == f"{uid} {uid}\n"


def test_output_is_decoded_and_cut(box):
    """Invalid UTF-8 does not break the result; output over the cap is cut to the cap."""
    r = box.run("import sys\nsys.stdout.buffer.write(b'ok \\xff')")
    assert r.status == "ok" and r.stdout == "ok \ufffd"
    r = box.run("import sys\nsys.stderr.write('e' * 150_000)")
    assert r.status == "output_limit" and r.stderr == "e" * 100_000


def test_no_child_process_left_on_the_host(box):
    """After runs that time out, blow the output cap or fork, the trainer has no child process left
    (no zombie, no stray)."""
    box.run_many([Job("import time\ntime.sleep(30)"), Job("print('x' * 10**6)"),
                  Job("import os\nos.fork()\nos.fork()\nprint(1)")])
    children = [Path(f"/proc/self/task/{tid}/children").read_text().split() for tid in os.listdir("/proc/self/task")]
    assert [c for cs in children for c in cs] == []


def test_sandbox_pickles(box):
    """A Sandbox holds no open resource: it pickles (reward workers may receive it) and still runs."""
    again = pickle.loads(pickle.dumps(box))
    assert again.run("print(6 * 7)").stdout == "42\n"


def test_closed_sandbox_refuses(box):
    closed = copy.copy(box)
    closed.close()
    with pytest.raises(RuntimeError, match="closed"):
        closed.run("print(1)")


def test_bad_arguments_named():
    with pytest.raises(ValueError, match="mode='docker'"):
        Sandbox(mode="docker")
    with pytest.raises(ValueError, match="max_workers"):
        Sandbox(mode="unsafe-rlimits", max_workers=0)
    with pytest.raises(TypeError, match="Limits"):
        Sandbox({"wall_s": 1}, mode="unsafe-rlimits")
    unsafe = Sandbox(mode="unsafe-rlimits")
    with pytest.raises(TypeError, match=r"jobs\[1\] must be a Job"):
        unsafe.run_many([Job("print(1)"), "print(2)"])
    with pytest.raises(TypeError, match="input"):
        unsafe.run_inputs("print(1)", [b"1"])
    with pytest.raises(ValueError, match="Limits.memory_mb"):
        Limits(memory_mb=-1)


# --------------------------------------------------------------------------------------------------
# The command line, and refusing to start without bubblewrap


def test_bwrap_argv_is_what_the_contract_says():
    config = BwrapConfig(bwrap="/usr/bin/bwrap", tmp_size_bytes=4 << 20,
                         root_layout=(("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "")),
                         ro_binds=("/usr", "/opt/py"))
    argv = bwrap_argv(config)
    assert argv[0] == "/usr/bin/bwrap" and argv[-1] == "--"
    for flag in ("--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
                 "--as-pid-1", "--clearenv"):
        assert flag in argv
    pairs = list(zip(argv, argv[1:], argv[2:], strict=False))
    assert ("--ro-bind", "/usr", "/usr") in pairs and ("--ro-bind", "/opt/py", "/opt/py") in pairs
    assert ("--symlink", "usr/bin", "/bin") in pairs and ("--ro-bind", "/lib64", "/lib64") in pairs
    assert ("--size", str(4 << 20), "--tmpfs") in pairs  # /tmp and /dev/shm are both sized
    assert [a for a in argv if a.startswith("/") and a not in ("/usr/bin/bwrap",)] == [
        "/usr", "/usr", "/opt/py", "/opt/py", "/bin", "/lib", "/lib64", "/lib64", "/proc", "/dev", "/tmp",
        "/dev/shm", "/dev", "/", "/tmp", "/usr/bin:/bin", "/tmp"]  # nothing else of the host is shown
    # the root and /dev become read-only after every mount is made
    assert argv.index("/") > max(i for i, a in enumerate(argv) if a in ("--ro-bind", "--tmpfs", "--symlink"))
    env = {argv[i + 1]: argv[i + 2] for i, a in enumerate(argv) if a == "--setenv"}
    assert env == {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp"}


def test_python_binds():
    assert python_binds("/usr/bin/python3") == ("/usr",)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "bin").mkdir()
        exe = Path(d) / "bin" / "python3"
        exe.symlink_to("/usr/bin/python3")  # a link into /usr: only /usr is needed
        assert python_binds(str(exe)) == ("/usr",)
        exe.unlink()
        exe.write_text("")
        assert python_binds(str(exe)) == ("/usr", str(Path(d).resolve()))


def test_refuses_to_start_without_bwrap(monkeypatch, tmp_path):
    """No bubblewrap on PATH: SandboxUnavailable saying how to install it and how to opt in."""
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SandboxUnavailable) as info:
        Sandbox()
    message = str(info.value)
    assert "not installed" in message and "apt-get install bubblewrap" in message
    assert "docs/install.md" in message and "unsafe-rlimits" in message
    with pytest.raises(SandboxUnavailable):
        check_available()


@pytest.fixture
def broken_bwrap():
    """A `bwrap` that fails as a kernel without unprivileged user namespaces makes it fail."""
    folder = Path(tempfile.mkdtemp(prefix="rlreason-fake-bwrap-"))
    fake = folder / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n")
    for path in (folder, fake):
        os.chmod(path, 0o755)
    yield fake
    shutil.rmtree(folder)


def test_refuses_to_start_with_broken_bwrap(monkeypatch, broken_bwrap):
    monkeypatch.setenv("PATH", f"{broken_bwrap.parent}:/usr/bin:/bin")
    with pytest.raises(SandboxUnavailable, match="setting up uid map: Permission denied"):
        Sandbox()


def test_sandbox_breaking_later_is_sandbox_error(box, broken_bwrap):
    """bubblewrap failing after construction: every input is "sandbox_error" (unknown, not the
    program's fault), with bwrap's own message."""
    broken = copy.copy(box)
    broken._config = dataclasses.replace(box._config, bwrap=str(broken_bwrap))
    results = broken.run_inputs("print(1)", ["", ""])
    assert [r.status for r in results] == ["sandbox_error", "sandbox_error"]
    assert "uid map" in results[0].detail
    broken._config = dataclasses.replace(box._config, bwrap="/nonexistent/bwrap")
    assert broken.run("print(1)").status == "sandbox_error"


# --------------------------------------------------------------------------------------------------
# The unsafe opt-in


@pytest.fixture
def unsafe(caplog):
    with caplog.at_level(logging.WARNING, logger="rlreason.rewards.sandbox.sandbox"):
        box = Sandbox(Limits(wall_s=2.0, cpu_s=1.0, memory_mb=256), mode="unsafe-rlimits")
    return box


def test_unsafe_mode_warns_loudly_and_runs(caplog, monkeypatch):
    monkeypatch.setattr(sandbox_module, "_warned_unsafe", False)
    with caplog.at_level(logging.WARNING, logger="rlreason.rewards.sandbox.sandbox"):
        box = Sandbox(mode="unsafe-rlimits")
        Sandbox(mode="unsafe-rlimits")
    warnings = [r for r in caplog.records if "UNSAFE SANDBOX" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING  # once per process
    assert box.run_inputs("print(int(input()) + 1)", ["1", "2"])[1].stdout == "3\n"


def test_unsafe_mode_keeps_limits_and_kills(unsafe):
    assert unsafe.run("a = bytearray(10**9)").status == "memory"
    assert unsafe.run("import time\ntime.sleep(30)").status == "timeout"


def test_unsafe_mode_kills_escaped_grandchild(unsafe):
    """Without a pid namespace, a setsid() grandchild is still killed after the run: the harness is the
    run's subreaper and kills its orphans."""
    code = ("import os, time\nr, w = os.pipe()\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            "        os.write(w, str(os.getpid()).encode())\n        time.sleep(600)\n    os._exit(0)\n"
            "os.wait()\nprint(os.read(r, 20).decode())")
    r = unsafe.run(code)
    pid = int(r.stdout)
    deadline = time.monotonic() + 2
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists()


def test_unsafe_mode_program_killing_its_harness_is_an_error(unsafe):
    """Where a program can kill its harness (no pid namespace), that is the program's failure, not a
    sandbox error (which would make its reward unknown instead of wrong)."""
    results = unsafe.run_inputs("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", ["", ""])
    assert [r.status for r in results] == ["error", "error"]
    assert "harness was killed" in results[0].detail


def test_speed_benchmark_runs(tmp_path):
    """benchmarks/sandbox_speed.py in its smallest form, so it does not rot (no speed asserted)."""
    require_bwrap()
    out = tmp_path / "speed.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sandbox_speed.py"), "--programs", "4", "--inputs", "2",
                    "--reps", "1", "--json", str(out)], check=True, capture_output=True, timeout=120,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 4 and all(row["runs_per_s"] > 0 for row in rows.values())
