"""Isolation for model-written code: each program runs in bubblewrap namespaces under rlimits.

Programs see only a read-only Python (stdlib only) and system libraries, a private writable /tmp,
their own /proc and /dev; no network, no home, no repository, no checkpoint folder and none of the
trainer's environment variables. See docs/code.md, "Sandbox", for what a program can and cannot do
and the threat model; :mod:`.sandbox` for the process layout, :mod:`._harness` for what runs first
inside, :mod:`.bwrap` for the command line.

    from rlreason.rewards.sandbox import Sandbox, Limits, Job
    box = Sandbox(Limits(wall_s=2))
    box.run("print(input()[::-1])", stdin="abc\\n").stdout        # 'cba\\n'
    box.run_inputs(code, ["1\\n", "2\\n"])                        # one launch, one fresh process per input
    box.run_many([Job(code_a, ["1\\n"]), Job(code_b)])            # launches in parallel
"""

from ._types import STATUSES, Job, Limits, RunResult, SandboxUnavailable
from .bwrap import PYTHON_ENV
from .sandbox import MODES, Sandbox, check_available

__all__ = ["MODES", "PYTHON_ENV", "STATUSES", "Job", "Limits", "RunResult", "Sandbox", "SandboxUnavailable",
           "check_available"]
