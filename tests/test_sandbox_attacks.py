"""The attack suite: model-written programs that try to get out of the sandbox, each held.

Every test names, in its docstring, the defence it checks; it fails if that defence is removed
(where two defences hold the same line, both are named, and the test asserts the outcome only
the named one gives, e.g. EROFS from a read-only mount rather than EACCES from the uid). Each
attack runs under short limits (wall 2 s, CPU 1 s, 256 MB, 4 MB files, 32 processes, 100 kB of
output) so the whole file takes seconds. ``benchmarks/sandbox_attacks.py`` runs them all
repeatedly with timings.

Host-side fixtures give the attacks real targets: a secret file in a fake home, a world-writable
file and folder in the host's /tmp and /var/tmp (a "run folder"), a secret environment variable,
a TCP and a UDP listener and an abstract unix socket on the host, a file in the host's /dev/shm, and
a bystander process running as the sandbox's own uid (what kill(-1), kill and ptrace would reach
without the pid namespace).
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
from _sandbox import require_bwrap

from rlreason.rewards.sandbox import Job, Limits, Sandbox
from rlreason.rewards.sandbox.bwrap import sandbox_user

REPO = Path(__file__).resolve().parents[1]
LIMITS = Limits(wall_s=2.0, cpu_s=1.0, memory_mb=256, file_size_mb=4, processes=32, output_bytes=100_000)
SECRET = f"rlreason-secret-{uuid.uuid4().hex}"

# Put before each attack: `attempt(f)` prints "refused <ERRNO or exception>" or "done <result>".
PRELUDE = """
import errno, os, sys
def attempt(label, f):
    try:
        r = f()
    except OSError as e:
        print(label, "refused", errno.errorcode.get(e.errno, e.errno), flush=True)
        return
    except Exception as e:
        print(label, "refused", type(e).__name__, flush=True)
        return
    print(label, "done", repr(r)[:300], flush=True)
print("pidns", os.readlink("/proc/self/ns/pid"), flush=True)
"""


@pytest.fixture(scope="module")
def box() -> Sandbox:
    require_bwrap()
    return Sandbox(LIMITS)


def attack(box: Sandbox, code: str, limits: Limits | None = None, stdin: str = ""):
    result = box.run(PRELUDE + code, stdin=stdin, limits=limits)
    assert result.status != "sandbox_error", result
    return result


def outcomes(result) -> dict[str, str]:
    """label -> "refused ERRNO" / "done ..." from the attack's output."""
    found = {}
    for line in result.stdout.splitlines():
        label, _, rest = line.partition(" ")
        if rest.startswith(("refused", "done")):
            found[label] = rest
    return found


def pidns_of(result) -> str:
    for line in result.stdout.splitlines():
        if line.startswith("pidns "):
            return line.split()[1]
    raise AssertionError(f"the attack did not report its pid namespace: {result}")


def alive_in(pidns: str) -> list[int]:
    """Host pids of the processes still in the pid namespace ``pidns`` ("pid:[inode]")."""
    alive = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{name}/ns/pid") == pidns:
                    alive.append(int(name))
    return alive


def assert_nothing_left(pidns: str) -> None:
    deadline = time.monotonic() + 2.0  # the kernel tears a pid namespace down asynchronously
    while (left := alive_in(pidns)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"processes left running after the run: {left}"


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """Targets on the host, readable/writable by anyone, so only the sandbox stands in the way."""
    root = Path(tempfile.mkdtemp(prefix="rlreason-attack-"))
    os.chmod(root, 0o777)
    home = root / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text(f"-----BEGIN OPENSSH PRIVATE KEY-----\n{SECRET}\n")
    victim = root / "victim.txt"
    victim.write_text("original")
    run_dir = Path(tempfile.mkdtemp(prefix="rlreason-attack-run-", dir="/var/tmp" if os.path.isdir("/var/tmp")
                                    else None))
    (run_dir / "checkpoint.pt").write_text("weights")
    shm = Path(f"/dev/shm/rlreason-attack-{uuid.uuid4().hex}")
    shm.write_text(SECRET)
    for path in (home, home / ".ssh", run_dir):
        os.chmod(path, 0o777)
    for path in (home / ".ssh" / "id_rsa", victim, run_dir / "checkpoint.pt", shm):
        os.chmod(path, 0o666)
    yield {"root": root, "home": home, "victim": victim, "run_dir": run_dir, "shm": shm}
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(run_dir, ignore_errors=True)
    shm.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def bystander():
    """A process on the host running as the sandbox's uid, in its own process group: what a
    program could signal or ptrace if it shared the host's pid namespace."""
    proc = subprocess.Popen(["/usr/bin/sleep", "600"], start_new_session=True, **sandbox_user())
    yield proc
    proc.kill()
    proc.wait()


def held_alive(proc: subprocess.Popen) -> bool:
    time.sleep(0.05)
    return proc.poll() is None


# --------------------------------------------------------------------------------------------------
# Writing outside /tmp


def test_write_root_refused(box):
    """Creating files at / is refused with EROFS. Defence: bwrap's root tmpfs remounted read-only
    (--remount-ro /); without it the root is a writable tmpfs owned by the sandbox uid."""
    out = outcomes(attack(box, 'attempt("root", lambda: open("/evil", "w").write("x"))\n'
                               'attempt("mkdir", lambda: os.mkdir("/home"))'))
    assert out == {"root": "refused EROFS", "mkdir": "refused EROFS"}


def test_write_usr_refused(box):
    """Writing into /usr (the interpreter, the stdlib) is refused with EROFS. Defence: /usr is
    bound read-only (--ro-bind); the unprivileged uid alone would give EACCES."""
    out = outcomes(attack(box, 'attempt("lib", lambda: open("/usr/lib/evil.py", "w"))\n'
                               'attempt("chmod", lambda: os.chmod("/usr/bin/python3", 0o777))\n'
                               'attempt("touch", lambda: os.utime("/usr/bin/python3"))'))
    assert out == {"lib": "refused EROFS", "chmod": "refused EROFS", "touch": "refused EROFS"}


def test_etc_absent_and_unwritable(box):
    """/etc does not exist and cannot be made. Defence: only /usr and its links are bound; the root is
    read-only."""
    out = outcomes(attack(box, 'attempt("exists", lambda: os.listdir("/etc"))\n'
                               'attempt("mkdir", lambda: os.mkdir("/etc"))'))
    assert out == {"exists": "refused ENOENT", "mkdir": "refused EROFS"}


def test_repo_invisible(box):
    """The repository (and the virtual environment in it) is not there to read or write. Defence:
    the mount namespace shows only /usr."""
    out = outcomes(attack(box, f'attempt("read", lambda: open({str(REPO / "pyproject.toml")!r}).read())\n'
                               f'attempt("write", lambda: open({str(REPO / "evil.py")!r}, "w"))\n'
                               f'attempt("venv", lambda: os.listdir({str(REPO / ".venv")!r}))'))
    assert out == {"read": "refused ENOENT", "write": "refused ENOENT", "venv": "refused ENOENT"}
    assert not (REPO / "evil.py").exists()


def test_host_tmp_file_untouched(box, host):
    """A world-writable file and folder in the host's /tmp stay untouched. Defence: the private /tmp
    (a fresh tmpfs in the mount namespace); the host's /tmp would let anyone write them."""
    victim = host["victim"]
    out = outcomes(attack(box, f'attempt("append", lambda: open({str(victim)!r}, "a").write("pwned"))\n'
                               f'attempt("create", lambda: open({str(victim.parent / "new")!r}, "w"))'))
    assert out == {"append": "refused ENOENT", "create": "refused ENOENT"}
    assert victim.read_text() == "original"
    assert not (victim.parent / "new").exists()


def test_run_output_folder_untouched(box, host):
    """The run's output folder (a world-writable checkpoint folder the test made) is neither seen nor
    written. Defence: the mount namespace binds no run folder."""
    run_dir = host["run_dir"]
    out = outcomes(attack(box, f'attempt("list", lambda: os.listdir({str(run_dir)!r}))\n'
                               f'attempt("overwrite", lambda: open({str(run_dir / "checkpoint.pt")!r}, "w"))\n'
                               f'attempt("add", lambda: open({str(run_dir / "evil.pt")!r}, "w"))'))
    assert out == {"list": "refused ENOENT", "overwrite": "refused ENOENT", "add": "refused ENOENT"}
    assert sorted(os.listdir(run_dir)) == ["checkpoint.pt"]
    assert (run_dir / "checkpoint.pt").read_text() == "weights"


def test_dev_unwritable_and_minimal(box):
    """/dev holds only harmless devices and no new node can be made; /dev/null still works.
    Defence: bwrap's minimal --dev, remounted read-only."""
    code = ('attempt("create", lambda: open("/dev/evil", "w"))\n'
            'attempt("null", lambda: open("/dev/null", "w").write("x"))\n'
            'attempt("full", lambda: os.write(os.open("/dev/full", os.O_WRONLY), b"x"))\n'
            'print("devices", sorted(os.listdir("/dev")))')
    result = attack(box, code)
    out = outcomes(result)
    assert out["create"] == "refused EROFS" and out["null"] == "done 1"
    assert out["full"] == "refused ENOSPC"
    devices = eval(result.stdout.split("devices ", 1)[1])
    assert set(devices) <= {"console", "core", "fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr",
                            "stdin", "stdout", "tty", "urandom", "zero"}


# --------------------------------------------------------------------------------------------------
# Reading secrets


def test_shadow_and_passwd_absent(box):
    """/etc/shadow and /etc/passwd cannot be read: they are not there (ENOENT), not merely
    forbidden. Defence: the mount namespace binds no /etc."""
    out = outcomes(attack(box, 'attempt("shadow", lambda: open("/etc/shadow").read())\n'
                               'attempt("passwd", lambda: open("/etc/passwd").read())'))
    assert out == {"shadow": "refused ENOENT", "passwd": "refused ENOENT"}


def test_ssh_key_invisible(box, host):
    """A readable private key in a home folder is not visible. Defence: the mount namespace (no home);
    HOME points at the private /tmp."""
    key = host["home"] / ".ssh" / "id_rsa"
    result = attack(box, f'attempt("key", lambda: open({str(key)!r}).read())\n'
                         'attempt("home", lambda: os.listdir(os.path.expanduser("~/.ssh")))\n'
                         'print("HOME", os.environ.get("HOME"))')
    assert outcomes(result) == {"key": "refused ENOENT", "home": "refused ENOENT"}
    assert "HOME /tmp" in result.stdout and SECRET not in result.stdout


def test_trainer_environment_invisible(box, monkeypatch):
    """A secret in the trainer's environment does not reach the program. Defence: bwrap --clearenv
    (and a minimal environment for bwrap itself)."""
    monkeypatch.setenv("RLREASON_ATTACK_SECRET", SECRET)
    result = attack(box, 'print(dict(os.environ))\nprint(open("/proc/self/environ").read())')
    assert SECRET not in result.stdout
    names = eval(result.stdout.splitlines()[1])
    assert set(names) <= {"PATH", "LANG", "HOME", "PWD"}


@pytest.mark.parametrize("part", ["environ", "cmdline", "mem", "status"])
def test_trainer_proc_files_absent(box, part):
    """/proc/<trainer pid>/{environ,cmdline,mem,status} do not exist for the program (cmdline and
    status are world-readable on the host). Defence: the pid namespace and its own /proc."""
    out = outcomes(attack(box, f'attempt("proc", lambda: open("/proc/{os.getpid()}/{part}", "rb").read(100))'))
    assert out == {"proc": "refused ENOENT"}


def test_host_processes_invisible(box, bystander):
    """Only the sandbox's own processes are listed in /proc. Defence: the pid namespace."""
    result = attack(box, 'print("pids", sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))')
    pids = eval(result.stdout.split("pids ", 1)[1])
    assert pids == [1, 2], pids  # the harness (pid 1) and the program
    assert bystander.pid not in pids


def test_proc_self_root_and_proc_1_root(box):
    """/proc/self/root is the sandbox's own root, and the harness's (/proc/1/root) is closed.
    Defence: the mount namespace; the harness is non-dumpable (PR_SET_DUMPABLE 0)."""
    result = attack(box, 'print("self", sorted(os.listdir("/proc/self/root")))\n'
                         'attempt("init", lambda: os.listdir("/proc/1/root"))')
    listed = eval(result.stdout.split("self ", 1)[1].splitlines()[0])
    assert not {"work", "root", "home", "etc", "var"} & set(listed)
    assert outcomes(result)["init"] == "refused EACCES"


def test_host_dev_shm_invisible(box, host):
    """A file in the host's /dev/shm cannot be read; the program's /dev/shm is empty. Defence: a
    private tmpfs on /dev/shm."""
    result = attack(box, f'attempt("read", lambda: open({str(host["shm"])!r}).read())\n'
                         'print("shm", os.listdir("/dev/shm"))')
    assert outcomes(result) == {"read": "refused ENOENT"}
    assert "shm []" in result.stdout and SECRET not in result.stdout


def test_no_sysfs_and_proc_sys_read_only(box):
    """/sys is absent and /proc/sys cannot be written. Defence: no /sys mount; bwrap's /proc keeps
    /proc/sys read-only and the program has no capabilities."""
    out = outcomes(attack(box, 'attempt("sys", lambda: os.listdir("/sys/class/net"))\n'
                               'attempt("hostname", lambda: open("/proc/sys/kernel/hostname", "w").write("x"))\n'
                               'attempt("sysrq", lambda: open("/proc/sysrq-trigger", "w").write("b"))'))
    assert out["sys"] == "refused ENOENT"
    assert out["hostname"] in ("refused EROFS", "refused EACCES")
    assert out["sysrq"] in ("refused ENOENT", "refused EROFS", "refused EACCES")


# --------------------------------------------------------------------------------------------------
# Network


def test_tcp_to_host_loopback_not_reached(box):
    """A TCP listener on the host's 127.0.0.1 gets no connection. Defence: the network namespace
    (its own loopback, nothing listening)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        out = outcomes(attack(box, f'import socket\nattempt("tcp", lambda: socket.create_connection('
                                   f'("127.0.0.1", {port}), timeout=1))'))
        assert out == {"tcp": "refused ECONNREFUSED"}
        with pytest.raises(BlockingIOError):
            listener.accept()


def test_udp_to_host_loopback_not_reached(box):
    """A UDP socket on the host's 127.0.0.1 receives nothing. Defence: the network namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        port = receiver.getsockname()[1]
        attack(box, f'import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n'
                    f'attempt("udp", lambda: [s.sendto(b"{SECRET}", ("127.0.0.1", {port})) for _ in range(5)])')
        assert select.select([receiver], [], [], 0.3)[0] == []


def test_dns_and_outside_unreachable(box):
    """No name resolution, no route out, no interface but loopback. Defence: the network namespace."""
    result = attack(box, 'import socket\nattempt("dns", lambda: socket.getaddrinfo("example.com", 80))\n'
                         'attempt("out", lambda: socket.create_connection(("1.1.1.1", 53), timeout=1))\n'
                         'print("ifaces", socket.if_nameindex())')
    out = outcomes(result)
    assert out["dns"].startswith("refused") and out["out"] == "refused ENETUNREACH"
    assert "ifaces [(1, 'lo')]" in result.stdout


def test_abstract_unix_socket_not_reached(box):
    """An abstract unix socket the host listens on is not reachable (abstract names belong to a
    network namespace). Defence: the network namespace."""
    name = f"\0rlreason-attack-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(name)
        listener.listen()
        listener.setblocking(False)
        out = outcomes(attack(box, f'import socket\ns = socket.socket(socket.AF_UNIX)\n'
                                   f'attempt("unix", lambda: s.connect({name!r}))'))
        assert out == {"unix": "refused ECONNREFUSED"}
        with pytest.raises(BlockingIOError):
            listener.accept()


def test_raw_socket_refused(box):
    """Raw and packet sockets are refused. Defence: no capabilities (CAP_NET_RAW dropped)."""
    out = outcomes(attack(box, 'import socket\n'
                               'attempt("raw", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, 1))\n'
                               'attempt("packet", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW))'))
    assert out == {"raw": "refused EPERM", "packet": "refused EPERM"}


# --------------------------------------------------------------------------------------------------
# Processes, CPU, memory, output


def test_fork_count_bounded(box):
    """Forking stops at the process limit. Defence: RLIMIT_NPROC (enforced: the sandbox runs as an
    unprivileged uid, in its own user namespace)."""
    code = ("import time\nn = 0\ntry:\n    while n < 500:\n        if os.fork() == 0:\n            time.sleep(5)\n"
            "            os._exit(0)\n        n += 1\nexcept OSError as e:\n"
            "    print('forks', n, errno.errorcode[e.errno], flush=True)\n")
    result = attack(box, code)
    forks = result.stdout.split("forks ", 1)[1].split()
    assert int(forks[0]) < LIMITS.processes and forks[1] == "EAGAIN"


def test_fork_bomb_ends_and_leaves_nothing(box):
    """The classic fork bomb ends within its limits and leaves no process behind. Defences:
    RLIMIT_NPROC bounds it, the wall-clock kill ends it, the pid namespace takes every process with it."""
    start = time.monotonic()
    result = attack(box, "while True:\n    try:\n        os.fork()\n    except OSError:\n        pass")
    assert time.monotonic() - start < LIMITS.wall_s + 5
    assert result.status in ("timeout", "error")
    assert_nothing_left(pidns_of(result))


def test_memory_bomb(box):
    """Growing memory without end stops at the address-space limit. Defence: RLIMIT_AS."""
    result = attack(box, "a = []\nwhile True:\n    a.append(bytearray(10**7))")
    assert result.status == "memory", result


def test_infinite_loop_hits_cpu_limit(box):
    """A busy loop is stopped by the CPU limit (SIGXCPU), well before a long wall limit. Defence:
    RLIMIT_CPU."""
    result = attack(box, "while True:\n    pass", limits=Limits(**{**LIMITS.__dict__, "wall_s": 15.0}))
    assert result.status == "timeout" and result.returncode == -signal.SIGXCPU, result


def test_ignoring_sigxcpu_does_not_help(box):
    """A busy loop that ignores SIGXCPU is killed at the hard CPU limit. Defence: RLIMIT_CPU's hard
    limit (one second above the soft one) sends SIGKILL."""
    code = "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass"
    result = attack(box, code, limits=Limits(**{**LIMITS.__dict__, "wall_s": 15.0}))
    assert result.status == "timeout" and result.returncode == -signal.SIGKILL, result
    assert result.detail.startswith("CPU time limit"), result  # not the wall-clock kill


def test_sleep_past_wall_limit(box):
    """Sleeping (no CPU used) is ended by the wall-clock kill. Defence: the harness's per-run deadline."""
    result = attack(box, "import time\ntime.sleep(60)")
    assert result.status == "timeout" and result.wall_s < LIMITS.wall_s + 1.5, result


def test_stopped_program_killed(box):
    """A program that stops itself (SIGSTOP) is killed at the wall limit. Defence: the wall-clock kill
    with SIGKILL (which a stopped process still receives)."""
    result = attack(box, "import signal\nos.kill(os.getpid(), signal.SIGSTOP)")
    assert result.status == "timeout", result


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_gigabyte_of_output_capped(box, stream):
    """1 GB written to stdout / stderr is cut at the cap and the program killed at once, long before
    the wall limit. Defence: the harness's output cap."""
    code = f"chunk = b'x' * (1 << 20)\nfor _ in range(1024):\n    sys.{stream}.buffer.write(chunk)"
    result = attack(box, code)
    assert result.status == "output_limit", result
    assert len(getattr(result, stream)) <= LIMITS.output_bytes
    assert result.wall_s < LIMITS.wall_s


def test_grandchild_outliving_parent_is_gone(box):
    """A double-forked, setsid() grandchild that outlives the program is killed when the run ends, and
    the run does not wait for it. Defences: the harness kills every other process of the namespace
    after the run (kill(-1)); the pid namespace dies with its pid 1."""
    code = ("import time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            "        time.sleep(600)\n    os._exit(0)\nos.wait()\nprint('parent done', flush=True)")
    result = attack(box, code)
    assert result.status == "ok" and "parent done" in result.stdout
    assert_nothing_left(pidns_of(result))


def test_grandchild_gone_before_next_input(box):
    """A daemon left by one input is gone when the next input starts (same launch). Defence: the
    harness's kill(-1) after each input."""
    code = PRELUDE + ("import time\nif input() == 'first':\n    if os.fork() == 0:\n        os.setsid()\n"
                      "        time.sleep(600)\n    print('left a daemon')\nelse:\n"
                      "    print('pids', sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))")
    first, second = box.run_inputs(code, ["first", "second"])
    assert first.status == second.status == "ok"
    assert "pids [1, " in second.stdout and len(eval(second.stdout.split("pids ", 1)[1])) == 2


def test_kill_minus_one(box, bystander):
    """kill(-1, SIGKILL) reaches only the program's own processes: a host bystander of the same uid and
    the harness survive, and the run goes on. Defences: the pid namespace; the harness is its pid 1
    (kill(-1) spares pid 1)."""
    code = ("import signal, time\nchild = os.fork()\nif child == 0:\n    time.sleep(600)\n"
            'attempt("kill", lambda: os.kill(-1, signal.SIGKILL))\n'
            "print('child', os.waitpid(child, 0)[1] & 0x7f)")
    result = attack(box, code)
    assert held_alive(bystander)
    assert result.status == "ok" and "kill done None" in result.stdout, result
    assert f"child {signal.SIGKILL.value}" in result.stdout  # it did reach its own namespace


def test_kill_trainer_and_bystander(box, bystander):
    """Signals to the trainer's pid and to a host process of the same uid find no such process.
    Defence: the pid namespace."""
    out = outcomes(attack(box, f'import signal\nattempt("trainer", lambda: os.kill({os.getpid()}, signal.SIGKILL))\n'
                               f'attempt("bystander", lambda: os.kill({bystander.pid}, signal.SIGKILL))'))
    assert out == {"trainer": "refused ESRCH", "bystander": "refused ESRCH"}
    assert held_alive(bystander)


def test_signal_caller_process_group(box, bystander):
    """killpg on the trainer's and the bystander's process groups finds nothing. Defence: the pid
    namespace."""
    out = outcomes(attack(box, f'import signal\nattempt("trainer", lambda: os.killpg({os.getpgrp()}, 9))\n'
                               f'attempt("bystander", lambda: os.killpg({os.getpgid(bystander.pid)}, 9))'))
    assert out == {"trainer": "refused ESRCH", "bystander": "refused ESRCH"}
    assert held_alive(bystander)


def test_killing_the_harness_fails(box):
    """SIGKILL, SIGTERM and SIGINT to the harness (the program's parent) change nothing: both inputs
    are reported. Defences: the harness is pid 1 of the namespace (signals without a handler dropped)
    and ignores SIGINT."""
    code = ("import os, signal\nfor sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):\n"
            "    os.kill(os.getppid(), sig)\nimport time\ntime.sleep(0.2)\nprint('after', input())")
    results = box.run_inputs(code, ["a", "b"])
    assert [r.stdout for r in results] == ["after a\n", "after b\n"], results


def test_ptrace_host_process(box, bystander):
    """ptrace(ATTACH) of a host process of the same uid finds no such process. Defence: the pid
    namespace."""
    code = (f"import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            f"rc = libc.ptrace(16, {bystander.pid}, 0, 0)\nprint('ptrace', rc, errno.errorcode[ctypes.get_errno()])")
    result = attack(box, code)
    assert "ptrace -1 ESRCH" in result.stdout, result


def test_ptrace_and_getfd_harness_refused(box):
    """ptrace(ATTACH) of the harness and pidfd_getfd of its result channel are refused. Defence: the
    harness is non-dumpable (PR_SET_DUMPABLE 0); without it the same uid may attach."""
    code = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "rc = libc.ptrace(16, os.getppid(), 0, 0)\nprint('ptrace', rc, errno.errorcode[ctypes.get_errno()])\n"
            "pidfd = os.pidfd_open(os.getppid())\n"
            "rc = libc.syscall(438, pidfd, 1, 0)\nprint('getfd', rc, errno.errorcode[ctypes.get_errno()])")
    result = attack(box, code)
    assert "ptrace -1 EPERM" in result.stdout and "getfd -1 EPERM" in result.stdout, result


def test_harness_memory_and_fds_closed(box):
    """The harness's /proc/<pid>/mem, fd/ and environ cannot be opened. Defence: the harness is
    non-dumpable."""
    out = outcomes(attack(box, 'attempt("mem", lambda: open(f"/proc/{os.getppid()}/mem", "rb"))\n'
                               'attempt("fd", lambda: os.listdir(f"/proc/{os.getppid()}/fd"))\n'
                               'attempt("fd1", lambda: open(f"/proc/{os.getppid()}/fd/1", "w"))'))
    assert out == {"mem": "refused EACCES", "fd": "refused EACCES", "fd1": "refused EACCES"}


def test_forging_the_result_channel(box):
    """A program writes forged "ok" results everywhere it can (every descriptor, the harness's fd 1, its
    own stdout) then fails: the run is still reported as failed. Defences: the child closes every
    descriptor but its stdio before running the program; the harness is non-dumpable."""
    forged = '{"i": 0, "status": "ok", "returncode": 0, "stdout": "42", "stderr": "", "wall_s": 0.0, "detail": ""}\\n'
    code = (f"line = b'{forged}'\nfor fd in range(3, 300):\n    try:\n        os.write(fd, line)\n"
            f"    except OSError:\n        pass\nattempt('fd1', lambda: open(f'/proc/{{os.getppid()}}/fd/1', 'wb'))\n"
            "print('open fds', sorted(os.listdir('/proc/self/fd')))\nsys.stdout.buffer.write(line)\nsys.exit(1)")
    result = attack(box, code)
    assert result.status == "error" and result.returncode == 1, result
    assert "open fds ['0', '1', '2', '3']" in result.stdout  # 3: the listing's own descriptor


def test_cannot_claim_sandbox_error(box):
    """A program cannot make its failure look like the sandbox's (which the reward would count as
    unknown rather than wrong): exiting with the set-up failure code, or printing its message, is an
    error. Defence: the child reports "set up" on its own pipe before the program runs."""
    result = attack(box, "sys.stderr.write('sandbox set-up failed: x\\n')\nos._exit(125)")
    assert result.status == "error" and result.returncode == 125, result


# --------------------------------------------------------------------------------------------------
# Files, links, privileges


def test_symlink_out_of_tmp(box, host):
    """Symlinks made in /tmp to host paths lead nowhere. Defence: the mount namespace."""
    code = (f'os.symlink({str(host["victim"])!r}, "/tmp/a")\nos.symlink({str(REPO)!r}, "/tmp/b")\n'
            'attempt("file", lambda: open("/tmp/a").read())\nattempt("repo", lambda: os.listdir("/tmp/b"))')
    assert outcomes(attack(box, code)) == {"file": "refused ENOENT", "repo": "refused ENOENT"}


def test_hard_links_refused(box, host):
    """Hard links from /tmp to system or host files fail. Defences: /tmp is its own filesystem (EXDEV);
    host files are not visible."""
    out = outcomes(attack(box, 'attempt("usr", lambda: os.link("/usr/bin/python3", "/tmp/py"))\n'
                               f'attempt("host", lambda: os.link({str(host["victim"])!r}, "/tmp/v"))'))
    assert out == {"usr": "refused EXDEV", "host": "refused ENOENT"}


def test_mount_refused(box):
    """mount(2) of a tmpfs over /usr and a bind of / are refused. Defence: no capabilities (bwrap
    drops them all) and the root is read-only."""
    code = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "for target, fs, flags in ((b'/usr', b'tmpfs', 0), (b'/tmp', None, 4096)):\n"
            "    rc = libc.mount(b'none', target, fs, flags, None)\n"
            "    print('mount', rc, errno.errorcode[ctypes.get_errno()])")
    result = attack(box, code)
    assert result.stdout.count("mount -1 EPERM") == 2, result


def test_unshare_refused(box):
    """A new user namespace (the usual way to regain capabilities) cannot be made, by syscall or by the
    unshare tool. Defence: bwrap --disable-userns."""
    code = ("import ctypes, subprocess\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "rc = libc.unshare(0x10000000)\nprint('unshare', rc, errno.errorcode[ctypes.get_errno()])\n"
            "p = subprocess.run(['/usr/bin/unshare', '-r', 'id'], capture_output=True)\nprint('tool', p.returncode)")
    result = attack(box, code)
    assert "unshare -1 " in result.stdout and "tool 0" not in result.stdout, result


def test_chroot_setuid_reboot_hostname_refused(box):
    """chroot, setuid(0), reboot and sethostname are refused. Defences: no capabilities; only the
    sandbox's uid is mapped in its user namespace."""
    code = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            'attempt("chroot", lambda: os.chroot("/tmp"))\nattempt("setuid", lambda: os.setuid(0))\n'
            "rc = libc.reboot(0x4321FEDC)\nprint('reboot', rc, errno.errorcode[ctypes.get_errno()])\n"
            "rc = libc.sethostname(b'pwned', 5)\nprint('hostname', rc, errno.errorcode[ctypes.get_errno()])")
    result = attack(box, code)
    out = outcomes(result)
    assert out["chroot"] == "refused EPERM"
    assert out["setuid"] in ("refused EPERM", "refused EINVAL")  # EINVAL: no uid 0 in the user namespace
    assert "reboot -1 EPERM" in result.stdout and "hostname -1 EPERM" in result.stdout


def test_raising_rlimits_refused(box):
    """Raising any hard limit (or a soft one above it) is refused. Defences: the harness sets soft =
    hard, and the program has no CAP_SYS_RESOURCE."""
    code = ("import resource\nfor name in ('RLIMIT_CPU', 'RLIMIT_AS', 'RLIMIT_FSIZE', 'RLIMIT_NPROC', "
            "'RLIMIT_NOFILE', 'RLIMIT_CORE'):\n    kind = getattr(resource, name)\n"
            "    soft, hard = resource.getrlimit(kind)\n"
            "    attempt(name, lambda: resource.setrlimit(kind, (resource.RLIM_INFINITY, resource.RLIM_INFINITY)))\n"
            "    attempt(name + '_soft', lambda: resource.setrlimit(kind, (hard + 1, hard)))")
    out = outcomes(attack(box, code))
    assert len(out) == 12 and all(v.startswith("refused") for v in out.values()), out


def test_limits_are_set(box):
    """The limits the program runs under are the ones asked for. Defence: the harness's setrlimit
    calls in the child."""
    result = attack(box, "import resource\nfor name in ('RLIMIT_CPU', 'RLIMIT_AS', 'RLIMIT_FSIZE', 'RLIMIT_NPROC',"
                         " 'RLIMIT_NOFILE', 'RLIMIT_CORE'):\n"
                         "    print(name, resource.getrlimit(getattr(resource, name)))")
    mb = 1 << 20
    for name, value in (("CPU", (1, 2)), ("AS", (256 * mb,) * 2), ("FSIZE", (4 * mb,) * 2), ("NPROC", (32, 32)),
                        ("NOFILE", (256, 256)), ("CORE", (0, 0))):
        assert f"RLIMIT_{name} {value}" in result.stdout, result.stdout


def test_fill_tmp(box):
    """Filling /tmp stops at its size (4 MB here). Defence: the private /tmp's size (--size)."""
    code = ("n = 0\ntry:\n    while n < 100:\n        with open(f'/tmp/f{n}', 'wb') as f:\n"
            "            f.write(b'x' * (1 << 20))\n        n += 1\nexcept OSError as e:\n"
            "    print('filled', n, errno.errorcode[e.errno])")
    result = attack(box, code)
    filled = result.stdout.split("filled ", 1)[1].split()
    assert int(filled[0]) <= 4 and filled[1] == "ENOSPC", result


def test_fill_dev_shm(box):
    """Filling /dev/shm stops at its size. Defence: the private /dev/shm's size (--size)."""
    code = ("n = 0\ntry:\n    while n < 100:\n        with open(f'/dev/shm/f{n}', 'wb') as f:\n"
            "            f.write(b'x' * (1 << 20))\n        n += 1\nexcept OSError as e:\n"
            "    print('filled', n, errno.errorcode[e.errno])")
    result = attack(box, code)
    filled = result.stdout.split("filled ", 1)[1].split()
    assert int(filled[0]) <= 4 and filled[1] == "ENOSPC", result


def test_huge_single_file(box):
    """One file cannot grow past the file-size limit (EFBIG, before /tmp is full). Defence:
    RLIMIT_FSIZE."""
    out = outcomes(attack(box, 'attempt("big", lambda: open("/tmp/big", "wb").write(b"x" * (5 << 20)))'))
    assert out == {"big": "refused EFBIG"}


def test_open_file_exhaustion(box):
    """Opening files without end stops at the descriptor limit. Defence: RLIMIT_NOFILE."""
    code = ("fds = []\ntry:\n    while len(fds) < 100000:\n        fds.append(os.open('/dev/null', os.O_RDONLY))\n"
            "except OSError as e:\n    print('opened', len(fds), errno.errorcode[e.errno])")
    result = attack(box, code)
    opened = result.stdout.split("opened ", 1)[1].split()
    assert int(opened[0]) < 256 and opened[1] == "EMFILE", result


def test_no_terminal_to_inject_into(box):
    """There is no controlling terminal to push keystrokes into (TIOCSTI), and the program's session is
    the sandbox's own (its leader, the harness, is pid 1 inside). Defence: bwrap --new-session; without
    it the session's leader is outside the namespace (getsid gives 0)."""
    result = attack(box, 'attempt("tty", lambda: open("/dev/tty", "w"))\nprint("sid", os.getsid(0))')
    assert outcomes(result) == {"tty": "refused ENXIO"}
    assert "sid 1\n" in result.stdout, result


def test_tmp_not_shared_between_inputs(box):
    """A file one input leaves in /tmp is gone for the next (no caching answers across test cases).
    Defence: the harness empties the working directory after each input."""
    code = ("import os\nif input() == 'first':\n    open('/tmp/cache', 'w').write('answer')\n"
            "print(os.listdir('/tmp'))")
    first, second = box.run_inputs(code, ["first", "second"])
    assert first.stdout == "['cache']\n" and second.stdout == "[]\n"


# --------------------------------------------------------------------------------------------------
# Threads, multiprocessing, parallel sandboxes


def test_thread_bomb_bounded(box):
    """Starting threads without end stops early and the run ends. Defences: RLIMIT_AS (each thread's
    stack and malloc arena are address space) and RLIMIT_NPROC (threads count as processes)."""
    code = ("import threading, time\nn = 0\ntry:\n    while n < 10000:\n"
            "        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n        n += 1\n"
            "except RuntimeError as e:\n    print('threads', n, flush=True)\nos._exit(0)")
    result = attack(box, code)
    assert int(result.stdout.split("threads ", 1)[1].split()[0]) < LIMITS.processes, result


def test_multiprocessing_works_and_leftovers_killed(box):
    """multiprocessing works inside (a Pool computes), and a process left running at exit is killed
    with the run. Defences: the private /dev/shm (semaphores); the wall-clock kill and the pid
    namespace."""
    code = ("import multiprocessing, time\nwith multiprocessing.Pool(2) as pool:\n"
            "    print('squares', pool.map(abs, [-1, -2, -3]), flush=True)\n"
            "multiprocessing.Process(target=time.sleep, args=(600,)).start()")
    result = attack(box, code)
    assert "squares [1, 2, 3]" in result.stdout, result
    assert result.status == "timeout"  # multiprocessing joins its child at exit: the wall limit ends it
    assert_nothing_left(pidns_of(result))


def test_process_limit_is_per_sandbox():
    """Sandboxes running at once under the same uid each get their own process budget: together they
    hold more processes than one sandbox's limit. Defence: the sandbox's own user namespace (the kernel
    counts RLIMIT_NPROC per user namespace); with one shared count the sandboxes would starve each other."""
    require_bwrap()
    limits = Limits(wall_s=8.0, cpu_s=2.0, memory_mb=256, processes=16)
    box = Sandbox(limits, max_workers=4)
    want = limits.processes - 4  # leave room for the harness and the program itself
    code = PRELUDE + (f"import time\nn = 0\nfor _ in range({want}):\n    if os.fork() == 0:\n        time.sleep(3)\n"
                      "        os._exit(0)\n    n += 1\nprint('forked', n, flush=True)\ntime.sleep(3)")
    samples: list[dict[str, int]] = []
    done = threading.Event()

    def watch() -> None:  # processes per pid namespace, seen from the host, every 0.1 s
        while not done.is_set():
            counts: dict[str, int] = {}
            for name in os.listdir("/proc"):
                if name.isdigit():
                    with contextlib.suppress(OSError):
                        ns = os.readlink(f"/proc/{name}/ns/pid")
                        counts[ns] = counts.get(ns, 0) + 1
            samples.append(counts)
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        results = box.run_many([Job(code) for _ in range(4)])
    finally:
        done.set()
        watcher.join()
    namespaces = [pidns_of(r[0]) for r in results]
    assert all(f"forked {want}" in r[0].stdout for r in results), results
    assert len(set(namespaces)) == 4
    # at one moment, the four sandboxes together held more processes than one sandbox may
    together = max(sum(sample.get(ns, 0) for ns in namespaces) for sample in samples)
    assert together > limits.processes, together


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
