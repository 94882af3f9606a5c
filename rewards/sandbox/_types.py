"""The sandbox's value types: limits, a run's result, a job, and the "no sandbox here" error."""

from __future__ import annotations

from dataclasses import asdict, dataclass

STATUSES = ("ok", "error", "timeout", "memory", "output_limit", "sandbox_error")


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or unusable here; the message says why, how to install it and how to opt
    in to the unsafe rlimit-only mode."""


@dataclass(frozen=True)
class Limits:
    """Per-run limits; each input of :meth:`Sandbox.run_inputs` gets all of them afresh."""

    wall_s: float = 10.0  # wall-clock kill of the run's whole process tree
    cpu_s: float = 10.0  # RLIMIT_CPU (per process; rounded up to whole seconds)
    memory_mb: int = 512  # RLIMIT_AS
    file_size_mb: int = 16  # RLIMIT_FSIZE, and the size of the private /tmp
    processes: int = 64  # RLIMIT_NPROC, counted in the sandbox's own user namespace
    output_bytes: int = 1_000_000  # stdout and stderr each; beyond: cut, status "output_limit"

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"Limits.{name} must be a positive number, got {value!r}")


@dataclass
class RunResult:
    """One program run on one input.

    status: "ok" (exit 0) | "error" (non-zero exit, uncaught exception, killed its harness) |
    "timeout" (wall or CPU limit) | "memory" (MemoryError under RLIMIT_AS) | "output_limit" |
    "sandbox_error" (the sandbox itself failed to start or broke: not the program's fault, so a
    reward built on it is unknown, never 0).
    """

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    detail: str = ""


@dataclass(frozen=True)
class Job:
    """A program for :meth:`Sandbox.run_many`: one run with empty stdin (``inputs=None``) or one run per
    input, all in one sandbox launch."""

    code: str  # a Python program (stdlib only)
    inputs: list[str] | None = None
