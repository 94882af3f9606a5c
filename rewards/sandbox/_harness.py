"""The trusted harness: the first program that runs inside a sandbox, before any untrusted code.

Stdlib only, run as ``python3 -I -S -c <this file's text>`` (so nothing of the trainer's
environment, site-packages or files is needed inside). The host (:mod:`._launch`) writes one
JSON request to the harness's stdin and closes it: ``{"code", "inputs", "limits", "total_wall_s",
"workdir", "kill_all"}``. The harness answers on its stdout, the *result channel*, one JSON line
``{"ready": 1}`` once it is set up and before any untrusted code runs, then one line per input.

For each input the harness forks a fresh child, which:

1. moves into its own process group, takes the input as stdin (a memfd: no pipe to keep fed) and
   capped pipes as stdout/stderr, and closes every other descriptor, so the result channel and the
   request pipe are gone before the program starts;
2. sets the run's rlimits (CPU, AS, FSIZE, NPROC, NOFILE, CORE=0; soft = hard except CPU, whose
   extra second turns SIGXCPU into SIGKILL for a program that ignores SIGXCPU);
3. reports "set up" by one byte on a pipe it then closes (so a program cannot fake a set-up failure:
   its exit code never says "sandbox error"), and only then returns to run the program as
   ``__main__``.

In the bwrap mode the harness is pid 1 of the sandbox's pid namespace (``bwrap --as-pid-1``): a
program cannot kill it, and orphans become its children (reaped as the run goes). It is
non-dumpable (``prctl(PR_SET_DUMPABLE, 0)``): a program running as the same uid cannot open
``/proc/<harness>/fd/1`` or ``/mem``, ptrace it or ``pidfd_getfd`` its result channel to forge
results. It reads the child's output with a per-input wall-clock deadline, kills on overflow, and
after each input kills every stray process (``kill(-1)`` inside the pid namespace; in the unsafe
mode, where ``kill(-1)`` would reach the host's processes of that uid, it is the subreaper of the
run and kills its descendants found in /proc) and empties the working directory.
"""

import contextlib
import ctypes
import json
import math
import os
import resource
import selectors
import signal
import sys
import time

RESULT_FD = 1  # the result channel: the harness's stdout, never open in a child
MEMORY_EXIT = 113  # the child's exit code after an uncaught MemoryError
_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36
_NOFILE = 256  # open files per process: Python needs a handful; 256 is plenty and bounds fd floods
_REAP_EVERY_S = 0.05  # how often orphaned zombies are reaped while a program runs
_GRACE_S = 0.5  # after the child exits, how long strays may hold its pipes before they are read no more


_LIBC = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, value: int) -> None:
    if _LIBC.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}, {value}) failed")


def _send(message: dict) -> None:
    data = memoryview((json.dumps(message) + "\n").encode())
    while data:
        data = data[os.write(RESULT_FD, data):]


def _read_request() -> dict:
    chunks = []
    while chunk := os.read(0, 1 << 20):
        chunks.append(chunk)
    return json.loads(b"".join(chunks))


def _set_limits(limits: dict) -> None:
    mb = 1 << 20
    cpu = max(1, math.ceil(limits["cpu_s"]))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    for kind, value in ((resource.RLIMIT_AS, limits["memory_mb"] * mb),
                        (resource.RLIMIT_FSIZE, limits["file_size_mb"] * mb),
                        (resource.RLIMIT_NPROC, limits["processes"]),
                        (resource.RLIMIT_NOFILE, _NOFILE),
                        (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(kind, (value, value))


def _child(stdin_fd: int, out_w: int, err_w: int, ok_w: int, limits: dict, workdir: str) -> None:
    """In the forked child: isolate the descriptors, set the limits, say "set up"; raise on failure."""
    os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in `python -c` (the harness ignores it)
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # the harness killed (host deadline): the child goes too
    os.dup2(stdin_fd, 0)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    os.dup2(ok_w, 3)
    os.closerange(4, os.sysconf("SC_OPEN_MAX") if os.sysconf("SC_OPEN_MAX") > 0 else 65536)
    os.chdir(workdir)
    _prctl(_PR_SET_DUMPABLE, 1)  # the program's own process behaves normally (/proc/self readable)
    _set_limits(limits)
    os.write(3, b"k")
    os.close(3)


def _descendants(root: int) -> list[int]:
    """Processes whose parent is ``root`` (the unsafe mode's subreaper finds strays this way)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if int(fields[1]) == root:
            found.append(int(name))
    return found


def _reap_others(main: int) -> None:
    """Reap exited processes other than ``main`` (the harness is pid 1 / the subreaper: orphans become
    its children, and unreaped zombies would count against the program's process limit)."""
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None or info.si_pid == main:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(info.si_pid, 0)


def _kill_strays(kill_all: bool, deadline: float) -> None:
    if kill_all:  # we are pid 1 of our own pid namespace: every other process in it
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, signal.SIGKILL)
    me = os.getpid()
    while time.monotonic() < deadline:
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        strays = _descendants(me)
        if not strays:
            return
        for pid in strays:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.001)


def _empty(workdir: str) -> None:
    """Each input starts with an empty working directory (best effort: the run is over)."""
    import shutil

    for entry in os.scandir(workdir):
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
        except OSError:
            pass


def _memfd(data: bytes) -> int:
    fd = os.memfd_create("stdin")
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _status(wstatus: int, usage, killed: str, setup_ok: bool, cpu_s: float) -> tuple[str, int | None, str]:
    code = os.waitstatus_to_exitcode(wstatus)
    if not setup_ok:
        return "sandbox_error", code, "the child failed to set up its limits"
    if killed:
        return ("timeout" if killed == "wall" else "output_limit"), code, f"killed: {killed} limit"
    if code == 0:
        return "ok", 0, ""
    if code == MEMORY_EXIT:
        return "memory", code, "MemoryError (address-space limit)"
    if code < 0:
        sig = -code
        cpu = usage.ru_utime + usage.ru_stime
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= cpu_s):
            return "timeout", code, f"CPU time limit ({cpu:.2f} s used)"
        return "error", code, f"killed by signal {signal.Signals(sig).name}"
    return "error", code, f"exit code {code}"


def _run_one(code: str, stdin: str, limits: dict, deadline: float, request: dict) -> dict | None:
    """Run the program on one input; None in the child (which then runs the program)."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    ok_r, ok_w = os.pipe()
    stdin_fd = _memfd(stdin.encode())
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            _child(stdin_fd, out_w, err_w, ok_w, limits, request["workdir"])
        except BaseException as e:  # noqa: BLE001 - report any set-up failure, never run the program
            os.write(2, f"sandbox set-up failed: {e!r}\n".encode())
            os._exit(125)
        return None
    for fd in (out_w, err_w, ok_w, stdin_fd):
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    sel = selectors.DefaultSelector()
    bufs = {out_r: bytearray(), err_r: bytearray()}
    for fd in (out_r, err_r, ok_r, pidfd):
        sel.register(fd, selectors.EVENT_READ)
    cap = limits["output_bytes"]
    killed, setup_ok, exited_at = "", False, None
    wall_deadline = min(start + limits["wall_s"], deadline)
    while len(sel.get_map()) > 0:
        _reap_others(pid)
        now = time.monotonic()
        if exited_at is not None and now > exited_at + _GRACE_S:
            break  # strays still hold the pipes: they are killed below
        if exited_at is None and now >= wall_deadline:
            killed = "wall"
            break
        end = wall_deadline if exited_at is None else exited_at + _GRACE_S
        for key, _ in sel.select(min(_REAP_EVERY_S, max(0.0, end - now))):
            fd = key.fd
            if fd == pidfd:
                sel.unregister(fd)
                exited_at = time.monotonic()
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                sel.unregister(fd)
                continue
            if fd == ok_r:
                setup_ok = True
                continue
            bufs[fd] += chunk
            if len(bufs[fd]) > cap:
                killed = "output"
        if killed:
            break
        if exited_at is not None and not (sel.get_map().keys() & {out_r, err_r}):
            break
    elapsed = time.monotonic() - start
    if killed or exited_at is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _, wstatus, usage = os.wait4(pid, 0)
    if not setup_ok:  # the byte may still sit in the pipe if the loop ended early
        sel.close()
        setup_ok = _drain_ok(ok_r)
    _kill_strays(request["kill_all"], time.monotonic() + 2.0)
    sel.close()
    for fd in (out_r, err_r, ok_r, pidfd):
        os.close(fd)
    _empty(request["workdir"])
    status, returncode, detail = _status(wstatus, usage, killed, setup_ok, limits["cpu_s"])
    return {"status": status, "returncode": returncode, "stdout": bytes(bufs[out_r][:cap]).decode(errors="replace"),
            "stderr": bytes(bufs[err_r][:cap]).decode(errors="replace"), "wall_s": elapsed, "detail": detail}


def _drain_ok(ok_r: int) -> bool:
    os.set_blocking(ok_r, False)
    try:
        return os.read(ok_r, 1) == b"k"
    except BlockingIOError:
        return False


def main() -> str | None:
    """The harness's loop; returns the program's code only in a forked child."""
    request = _read_request()
    _prctl(_PR_SET_DUMPABLE, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as pid 1, handled signals are the only ones a program can send us
    if not request["kill_all"]:
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    start = time.monotonic()
    total = request["total_wall_s"]
    deadline = start + total if total is not None else math.inf
    _send({"ready": 1})
    for i, stdin in enumerate(request["inputs"]):
        if time.monotonic() >= deadline:
            _send({"i": i, "status": "timeout", "returncode": None, "stdout": "", "stderr": "", "wall_s": 0.0,
                   "detail": "not run: the total time limit was reached"})
            continue
        result = _run_one(request["code"], stdin, request["limits"], deadline, request)
        if result is None:
            return request["code"]
        _send({"i": i, **result})
    os._exit(0)


def _exit_code(exc: SystemExit) -> int:
    """What ``python -c`` exits with for ``sys.exit(code)``."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    print(exc.code, file=sys.stderr)
    return 1


def _run_program(code: str) -> None:
    """In the child: run ``code`` as ``__main__`` in a fresh module, as ``python -c`` would, and exit
    as the interpreter does (an uncaught exception's traceback, non-daemon threads joined, atexit
    handlers, streams flushed) but without tearing the interpreter down: os._exit saves ~5 ms a run."""
    import types

    module = types.ModuleType("__main__")
    sys.modules["__main__"] = module
    sys.argv = ["-c"]
    status = 0
    try:
        exec(compile(code, "<program>", "exec"), module.__dict__)
    except MemoryError:
        os.write(2, b"MemoryError\n")
        os._exit(MEMORY_EXIT)
    except SystemExit as e:
        status = _exit_code(e)
    except BaseException as e:  # noqa: BLE001 - the program's uncaught exception, reported as Python does
        tb = e.__traceback__.tb_next  # from the program's own frame, as `python -c` shows it
        sys.excepthook(type(e), e.with_traceback(tb), tb)
        status = 1
    try:
        threading = sys.modules.get("threading")
        if threading is not None and hasattr(threading, "_shutdown"):
            threading._shutdown()  # what the interpreter does at exit: join non-daemon threads
        import atexit

        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
    except MemoryError:
        os._exit(MEMORY_EXIT)
    except SystemExit as e:
        status = _exit_code(e)
    except BaseException:  # noqa: BLE001 - e.g. a flush to a closed stdout: Python exits 120 then
        status = status or 120
    os._exit(status)


if __name__ == "__main__":
    _program = main()
    del main
    _run_program(_program)
