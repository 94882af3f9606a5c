"""``python -m rlreason.eval``: score a checkpoint on benchmark suites or on problems of your own
with your own rewards, or compare two results files.

    python -m rlreason.eval --model PATH --suites math500,gsm8k --n 4 --k 1,4 --limit 50 --out results/
    python -m rlreason.eval --model PATH --data countdown.jsonl --reward my_rewards.py:countdown --out results/
    python -m rlreason.eval --model PATH --suite-file docs/examples/countdown/countdown.yaml --suites countdown,math500
    python -m rlreason.eval --compare results_a/ results_b/          (or two results_<date>.json files)
    python -m rlreason.eval --model run/final_model --data mul.jsonl --tools rlreason.data.tasks.mul:multiply
    python -m rlreason.eval --model PATH --suites humaneval --n 10 --k 1,5,10 --temperature 0.8 --out results/

A code suite (humaneval) runs each completion's program with the problem's tests in the sandbox
(bubblewrap; ``--sandbox``, ``--code-timeout-s``, ``--code-memory-mb``, ``--code-workers``): pass@k
of the programs, and each program, run status and stderr tail in the per-sample details.

With ``--tools`` / ``--environment-factory`` (named like the training config's ``tools`` and
``environment_factory``) every completion is a multi-turn exchange in which the model may call them,
run isolated as in training (``--tool-timeout-s``, ``--tool-memory-mb``, ...): suites score the
exchange's final answer (pass@k, maj@k), ``--reward`` gets the whole exchange, and the per-sample
details keep each exchange's messages.

With ``--data`` the problems are rendered and the completions scored as training renders and scores
them: each ``--reward`` is called with every column of the file, a sample is correct when the first
reward gives it >= 1.0, and the results are written as a suite's (named after the file). A suite
file's ``scoring: reward`` suite is such a task declared once and named like a benchmark: its file,
prompt column and ``reward_funcs`` (docs/evaluation.md, "Suites scored by a reward").

``--out DIR`` writes lighteval's layout, never overwriting an earlier run (rlreason.eval.report):
``DIR/results/<model>/results_<date_id>.json`` (metrics with ``_stderr``, the "all" row, the config),
``DIR/details/<model>/<date_id>/`` (per suite, lighteval's per-sample details parquet and the full
records as ``samples_<task>_<date_id>.jsonl``) and ``DIR/results.md`` (each run's tables, appended).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from rlreason.eval.protocols import PROTOCOLS
from rlreason.eval.suites import SUITES, TEMPLATES, check_data, get_suite, load_suite_file, quiet_hub_log
from rlreason.run import stopping


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m rlreason.eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model folder or hub id; 'tiny' = the embedded tiny model")
    p.add_argument("--suites", default=None,
                   help=f"comma-separated; built in: {','.join(SUITES)} (default math500, none with --data)")
    p.add_argument("--data", default=None,
                   help="your own problems: a .jsonl/.json/.parquet/.csv file or save_to_disk folder, one per row, "
                        "scored with --reward")
    p.add_argument("--reward", action="append", default=None,
                   help="reward scoring --data (repeatable; the first decides what is correct, >= 1.0): a built-in "
                        "name, 'pkg.module:fn' or 'path/file.py:fn'; default accuracy")
    p.add_argument("--prompt_column", "--prompt-column", default="prompt", help="--data's prompt column")
    p.add_argument("--rewards_plain_text", "--rewards-plain-text", action="store_true",
                   help="--data: pass prompts and completions to the rewards as plain text, as the training config "
                        "key rewards_plain_text does")
    p.add_argument("--suite-file", action="append", default=[],
                   help="YAML file defining more suites (repeatable); 'scoring: reward' with 'reward_funcs' scores a "
                        "suite of any task with rewards")
    p.add_argument("--limit", type=int, default=None, help="first N problems of each suite")
    # The sampling and prompt flags default to None, "not given": a given flag overrides --protocol's value,
    # and the defaults named in the help apply only where neither sets one (build_protocol).
    p.add_argument("--protocol", default="default",
                   help=f"named settings ({', '.join(PROTOCOLS)}) or a YAML file of EvalProtocol fields; flags "
                        f"given explicitly override it (docs/evaluation.md, Protocols)")
    p.add_argument("--n", type=int, default=None, help="samples per problem (default 1)")
    p.add_argument("--k", default=None, help="comma-separated k for pass@k and maj@k (default: 1 and n)")
    p.add_argument("--temperature", type=float, default=None, help="default 0 (greedy) for n=1, else 0.6")
    p.add_argument("--top-p", type=float, default=None, help="default 1.0 for greedy, else 0.95")
    p.add_argument("--top-k", type=int, default=None, help="default 0 (off)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="new tokens per completion (default 1024), capped at the model's context minus the suite's "
                        "longest prompt")
    p.add_argument("--seed", type=int, default=None, help="default 0")
    p.add_argument("--template", choices=sorted(TEMPLATES), default=None, help="default: each suite's own")
    p.add_argument("--user-template", default=None, help="str.format template over the row, with {prompt}")
    p.add_argument("--system-prompt", default=None, help="overrides the template's ('' for none)")
    p.add_argument("--chat-template", choices=("auto", "on", "off"), default=None, help="default auto")
    p.add_argument("--extract-fallback", default=None,
                   help="comma-separated answer fallbacks when no marker is found (whole,answer_phrase,last_math,"
                        "last_number); default none")
    # Scoring runs in the reward runner's worker processes, as training rewards do; the names
    # match rlreason/config/'s keys (the dashed spelling works too).
    p.add_argument("--reward_num_workers", "--reward-num-workers", type=int, default=2,
                   help="worker processes scoring completions; 0 = in this process (no timeout or memory cap)")
    p.add_argument("--reward_timeout_s", "--reward-timeout-s", type=float, default=10.0,
                   help="seconds per scoring call (a chunk of at most 64 completions); past it the call is "
                        "stopped and its completions rescored one by one, those that fail again scored wrong")
    p.add_argument("--reward_memory_mb", "--reward-memory-mb", type=int, default=1024,
                   help="address space a scoring worker may add, in MB; 0 = no cap")
    # Tools, as the training config's keys name them (rlreason/config/: tools, environment_factory, ...).
    p.add_argument("--tools", nargs="+", action="extend", default=[], metavar="SPEC",
                   help="functions the model may call: 'pkg.module:fn' or 'path/file.py:fn' (type hints and a "
                        "Google-style docstring, as TRL's tools)")
    p.add_argument("--environment-factory", "--environment_factory", action="append", default=[], metavar="SPEC",
                   help="'pkg.module:Class' or 'path/file.py:Class' (TRL's environment_factory: reset(**row), public "
                        "methods as tools); repeat as NAME=SPEC for several, chosen by each row's 'environment'")
    p.add_argument("--max-tool-calling-iterations", "--max_tool_calling_iterations", type=int, default=None,
                   help="tool rounds per completion (TRL's key); default no limit but --max-tokens")
    p.add_argument("--tool-timeout-s", "--tool_timeout_s", type=float, default=10.0, help="seconds per tool call")
    p.add_argument("--tool-memory-mb", "--tool_memory_mb", type=int, default=1024,
                   help="address space a tool worker may add, in MB; 0 = no cap")
    p.add_argument("--tool-max-output-chars", "--tool_max_output_chars", type=int, default=4096,
                   help="a tool's answer is cut to this many characters")
    p.add_argument("--tool-num-workers", "--tool_num_workers", type=int, default=2, help="tool worker processes")
    p.add_argument("--tool-isolation", "--tool_isolation", choices=("process", "none"), default="process",
                   help="none: tools run in this process (debugging: no kill, no memory cap)")
    # Code suites (humaneval): each completion's program runs with the suite's tests in the sandbox
    # (rlreason.rewards.sandbox; docs/code.md).
    p.add_argument("--sandbox", choices=("bwrap", "unsafe-rlimits"), default="bwrap",
                   help="code suites: bwrap (bubblewrap namespaces + rlimits; refused where bubblewrap is missing) or "
                        "unsafe-rlimits (explicit opt-in: rlimits and a process-group kill only, no isolation)")
    p.add_argument("--code-timeout-s", "--code_timeout_s", type=float, default=10.0,
                   help="code suites: wall-clock and CPU seconds of one completion's run (program and tests)")
    p.add_argument("--code-memory-mb", "--code_memory_mb", type=int, default=512,
                   help="code suites: address space of one completion's run, in MB")
    p.add_argument("--code-workers", "--code_workers", type=int, default=None,
                   help="code suites: sandboxes run at once (default: twice the CPUs)")
    p.add_argument("--engine", choices=("hf", "vllm"), default="hf")
    p.add_argument("--engine-kwargs", default="{}", help="JSON dict passed to the engine's constructor")
    p.add_argument("--dtype", default="auto", help="hf engine: auto (bf16 on GPU, fp32 on CPU), float32, bfloat16")
    p.add_argument("--batch-prompts", type=int, default=64, help="hf engine: prompts per generate() call")
    p.add_argument("--no-hub", action="store_true", help="never download a suite from the hub")
    p.add_argument("--out", default=None,
                   help="folder for the results (lighteval's layout: results/<model>/results_<date_id>.json, "
                        "details/<model>/<date_id>/, results.md), never overwriting an earlier run's")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"),
                   help="print two runs side by side and exit: results files, or --out folders (their newest run)")
    args = p.parse_args(argv)
    if not args.compare and not args.model:
        p.error("--model is required (or use --compare A B)")
    if args.data is None and (args.reward or args.rewards_plain_text or args.prompt_column != "prompt"):
        p.error("--reward, --prompt_column and --rewards_plain_text score --data's problems: give --data")
    if args.suites is None:
        args.suites = "" if args.data else "math500"
    if args.reward_num_workers < 0 or not args.reward_timeout_s > 0 or args.reward_memory_mb < 0:
        p.error("--reward_num_workers must be >= 0, --reward_timeout_s > 0 and --reward_memory_mb >= 0")
    if not args.code_timeout_s > 0 or args.code_memory_mb < 1 or (args.code_workers is not None
                                                                  and args.code_workers < 1):
        p.error("--code-timeout-s must be > 0, --code-memory-mb and --code-workers >= 1")
    if args.max_tool_calling_iterations is not None and args.max_tool_calling_iterations < 0:
        p.error("--max-tool-calling-iterations must be >= 0")
    if (args.max_tool_calling_iterations is not None or args.tool_isolation != "process") and not uses_tools(args):
        p.error("--max-tool-calling-iterations and --tool-isolation set how tools run: give --tools or "
                "--environment-factory")
    if args.tool_num_workers < 1 or not args.tool_timeout_s > 0 or args.tool_memory_mb < 0 \
            or args.tool_max_output_chars < 1:
        p.error("--tool-num-workers and --tool-max-output-chars must be >= 1, --tool-timeout-s > 0 and "
                "--tool-memory-mb >= 0")
    return args


def uses_tools(args: argparse.Namespace) -> bool:
    return bool(args.tools or args.environment_factory)


def load_tools(args: argparse.Namespace) -> tuple[list, Any]:
    """``--tools`` and ``--environment-factory`` loaded (specs resolved as the training config's
    ``tools`` / ``environment_factory`` and reward specs are): (tool functions, the factory or
    ``{name: factory}``, or None). Each error names the flag and the spec."""
    from rlreason.rewards.registry import RewardImportError, RewardSpecError, load_object

    def load(flag: str, spec: str) -> Any:
        try:
            return load_object(spec, flag)
        except (RewardSpecError, RewardImportError) as e:
            raise ValueError(str(e)) from None

    tools = [load("--tools", spec) for spec in args.tools]
    named = [e.partition("=") for e in args.environment_factory]
    if len(named) > 1 or any(sep for _, sep, _ in named):  # TRL's dict of factories
        if not all(sep and name for name, sep, _ in named):
            raise ValueError("--environment-factory: several environments need names, NAME=SPEC each (a row picks "
                             "one by its 'environment' column)")
        return tools, {name: load("--environment-factory", spec) for name, _, spec in named}
    return tools, load("--environment-factory", args.environment_factory[0]) if named else None


def build_tools(args: argparse.Namespace, tools: list, factory: Any):
    """The ``ToolExecutor`` the tool flags describe (rlreason/rollout/tools/executor.py); the caller
    closes it."""
    from rlreason.rollout.tools.executor import ToolExecutor

    return ToolExecutor(tools, factory, timeout_s=args.tool_timeout_s, memory_mb=args.tool_memory_mb or None,
                        max_output_chars=args.tool_max_output_chars, num_workers=args.tool_num_workers,
                        isolation=args.tool_isolation)


def tool_rollouts(args: argparse.Namespace, executor: Any, tokenizer: Any, engine: Any, model_path: str):
    """What the evaluation needs to run rollouts with tools (``ToolRollouts``): the executor, the
    tokenizer (checked to render tool calls) and the engine's context length."""
    from rlreason.rollout.tools.parse import check_tool_template
    from rlreason.rollout.tools.rollouts import ToolRollouts

    check_tool_template(tokenizer, args.model)
    return ToolRollouts(executor, tokenizer, args.max_tool_calling_iterations, context_length(engine, model_path))


def context_length(engine: Any, model_path: str) -> int:
    """Tokens the engine can hold (prompt and exchange): vLLM's ``max_model_len``, else the model's
    ``max_position_embeddings``."""
    known = getattr(engine, "max_model_len", None)
    if isinstance(known, int):
        return known
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(model_path).max_position_embeddings)


def known_context(engine: Any, model_path: str) -> int | None:
    """:func:`context_length`, or None where neither the engine nor the model's config says it (a
    config without ``max_position_embeddings``): the budget is then not capped."""
    try:
        return context_length(engine, model_path)
    except (OSError, AttributeError, TypeError, ValueError):
        return None


def build_scorer(args: argparse.Namespace):
    """The suites' scoring runner with the arguments' timeout, workers and memory cap
    (``rlreason.eval.core.suite_scorer``); the caller closes it."""
    from rlreason.eval.core import suite_scorer

    return suite_scorer(num_workers=max(args.reward_num_workers, 1), timeout_s=args.reward_timeout_s,
                        memory_mb=args.reward_memory_mb or None, in_process=args.reward_num_workers == 0)


def load_task(args: argparse.Namespace) -> tuple[str, Any, list]:
    """``--data`` checked before any model loads: (the task's name, its rows as a ``datasets.Dataset``,
    the ``--reward`` functions, checked against its columns). Each error names the flag at fault."""
    import datasets

    from rlreason.rewards.dataset_io import load_dataset_any
    from rlreason.rewards.registry import RewardSpecError, build_rewards
    from rlreason.rewards.runner import refuse_reserved_columns

    datasets.disable_progress_bars()  # no "Generating train split" bars around the results (as a run's)
    try:
        data = load_dataset_any(args.data, "train")
    except (ValueError, OSError) as e:
        raise type(e)(f"--data {args.data!r}: {e}") from None
    if args.prompt_column not in data.column_names:
        raise ValueError(f"--prompt_column {args.prompt_column!r}: no such column in --data {args.data!r}; its "
                         f"columns are {', '.join(data.column_names)}")
    columns = set(data.column_names) - {args.prompt_column}
    refuse_reserved_columns(columns, f"--data {args.data!r}")
    funcs = []
    for spec in args.reward or ["accuracy"]:
        try:
            (fn,), _ = build_rewards([spec], columns=columns | {"completion_ids"})
        except RewardSpecError as e:
            raise ValueError(f"--reward {spec!r}: {str(e).removeprefix('reward_funcs[0]: ')}") from None
        funcs.append(fn)
    name = Path(args.data.rstrip("/")).stem or "data"
    return name, data, funcs


def reward_suites(args: argparse.Namespace, names: list[str], protocol: Any) -> dict[str, tuple[Any, list]]:
    """The suites of ``names`` scored by rewards (``scoring: reward``), checked before any model loads:
    ``{name: (its rows, its reward functions)}`` (``rlreason.eval.core.reward_suite_data``: the data
    read, the rewards built and checked against its columns). Errors name ``--suites`` and the suite."""
    from rlreason.eval.core import reward_suite_data

    out = {}
    for name in names:
        suite = get_suite(name)
        if suite.scoring == "reward":
            try:
                out[name] = reward_suite_data(suite, protocol.limit, allow_hub=not args.no_hub)
            except ValueError as e:
                raise ValueError(f"--suites {name}: {e}") from None
    return out


def build_task_scorer(args: argparse.Namespace, funcs: list):
    """The ``--data`` task's scoring runner over its ``--reward`` functions, with the arguments'
    timeout, workers and memory cap (``rlreason.eval.core.task_scorer``); the caller closes it."""
    from rlreason.eval.core import task_scorer

    return task_scorer(funcs, num_workers=max(args.reward_num_workers, 1), timeout_s=args.reward_timeout_s,
                       memory_mb=args.reward_memory_mb or None, in_process=args.reward_num_workers == 0)


def code_scoring(args: argparse.Namespace, suites: list[str]):
    """The code suites' sandbox settings (``rlreason.eval.code.CodeScoring``), with the sandbox checked
    when a code suite is among ``suites``: no bubblewrap is an error before any model loads (unless
    ``--sandbox unsafe-rlimits``)."""
    from rlreason.eval.code import CodeScoring

    code = CodeScoring(mode=args.sandbox, timeout_s=args.code_timeout_s, memory_mb=args.code_memory_mb,
                       max_workers=args.code_workers)
    coded = [name for name in suites if get_suite(name).scoring == "code"]
    if coded and code.mode == "bwrap":
        from rlreason.rewards.sandbox import SandboxUnavailable, check_available

        try:
            check_available()
        except SandboxUnavailable as e:
            raise OSError(f"--suites {coded[0]}: its programs run in the sandbox, which cannot start here: {e}") \
                from None
    return code


# EvalProtocol field <- the flag that sets it (argparse's attribute), for the flags a protocol may set.
PROTOCOL_FLAGS: dict[str, str] = {"n": "n", "ks": "k", "temperature": "temperature", "top_p": "top_p",
                                  "top_k": "top_k", "max_tokens": "max_tokens", "seed": "seed",
                                  "template": "template", "user_template": "user_template",
                                  "system_prompt": "system_prompt", "chat_template": "chat_template",
                                  "extract_fallback": "extract_fallback"}


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The EvalProtocol fields set by flags given on the command line (their parser default is None)."""
    given = {field: getattr(args, flag) for field, flag in PROTOCOL_FLAGS.items() if getattr(args, flag) is not None}
    if "ks" in given:
        given["ks"] = tuple(int(k) for k in given["ks"].split(","))
    if "extract_fallback" in given:
        given["extract_fallback"] = tuple(given["extract_fallback"].split(","))
    return given


def build_protocol(args: argparse.Namespace):
    """The ``EvalProtocol`` the arguments describe: flags given explicitly > ``--protocol``'s values
    (rlreason.eval.protocols) > the defaults, of which temperature and top_p depend on n (greedy
    for n=1, else 0.6 / 0.95) and ks is 1 and n. Its name is the protocol's; ``extra`` records the
    protocol's description and ``overridden_by_flags`` (the fields flags changed)."""
    from rlreason.eval.core import EvalProtocol
    from rlreason.eval.protocols import protocol_fields, resolve_protocol

    named = resolve_protocol(args.protocol)
    flags = flag_values(args)
    values = {**protocol_fields(named), **flags}
    n = values.setdefault("n", 1)
    temperature = values.setdefault("temperature", 0.0 if n == 1 else 0.6)
    values.setdefault("top_p", 1.0 if temperature == 0 else 0.95)
    values.setdefault("ks", tuple(sorted({1, n})))
    # what the flags replaced: {field: the protocol's value} (the value used is the protocol's field)
    overridden = {k: named[k] for k in sorted(flags) if k in named and protocol_fields({k: named[k]})[k] != flags[k]}
    extra = {"description": named.get("description"), "overridden_by_flags": overridden,
             **({"based_on": named["based_on"]} if "based_on" in named else {}),
             **({"file": str(Path(args.protocol).resolve())} if args.protocol not in PROTOCOLS else {})}
    return EvalProtocol(**values, limit=args.limit, extra=extra)


def check_chat_template(protocol: Any, tokenizer: Any, model: str) -> None:
    """``chat_template`` "on" (the open-r1 protocol's, lighteval's ``--use-chat-template``) needs a
    tokenizer with one: said now, once, naming the protocol and the way out."""
    if protocol.chat_template == "on" and not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"--protocol {protocol.name}: prompts go through the model's chat template (chat_template "
                         f"'on'), and --model {model!r}'s tokenizer has none; for a base model add --chat-template off")


def resolve_model(model: str) -> str:
    """``tiny`` -> the embedded model's cached folder; anything else unchanged, once checked: a path
    (``./x``, ``/x``, ``~/x``, ``a/b/c``) must be a model folder; ``name`` or ``org/name`` is a local
    folder when one exists, else a hub id (``load_tokenizer`` says when it cannot be loaded)."""
    if model == "tiny":
        from rlreason.tiny import ensure

        return str(ensure(log=lambda *a: print(*a, file=sys.stderr)))
    local = Path(model).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise FileNotFoundError(f"--model {model!r}: no config.json there; give a model folder (a run's "
                                    f"final_model/, or a checkpoint folder holding the model's files)")
    elif model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise FileNotFoundError(f"--model {model!r}: no such folder; give the model folder of a run (its "
                                f"final_model/) or a hub id")
    return model


@contextlib.contextmanager
def clean_start() -> Iterator[None]:
    """An error before the first suite runs (a model, suite or argument to fix) is one line on stderr,
    ``error: ...``, and exit status 1, as a recipe's (rlreason/run/); RLREASON_TRACEBACK=1 keeps the
    traceback."""
    try:
        yield
    except (ValueError, OSError, ImportError, yaml.YAMLError) as e:
        if os.environ.get("RLREASON_TRACEBACK"):
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def load_tokenizer(model_path: str) -> Any:
    """The model's tokenizer, checked to read text (``rlreason.data.check_tokenizer``); a model that
    is neither a local folder nor loadable from the hub is named with the hub's first line."""
    from transformers import AutoTokenizer

    from rlreason.data import check_tokenizer

    try:
        with quiet_hub_log():  # the error below says it once
            tokenizer = AutoTokenizer.from_pretrained(model_path)
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OSError(f"--model {model_path!r}: no local folder of that name, and no hub model of that name could "
                      f"be loaded ({first})") from e
    check_tokenizer(tokenizer, model_path, f"--model {model_path!r}")
    return tokenizer


def build_engine(args: argparse.Namespace, model_path: str) -> tuple[Any, Any]:
    """(engine, tokenizer) for ``--engine``, from the one engine factory (rlreason/rollout/factory.py).
    vLLM is imported only when asked for; its engine gets ``args.seed``, the protocol's (``main``)."""
    from rlreason.rollout import factory

    kwargs = json.loads(args.engine_kwargs)
    if args.engine == "vllm":
        try:
            import vllm  # noqa: F401  (fail here, with a clear message, before anything loads)
        except ImportError as e:
            raise SystemExit(f"--engine vllm needs vLLM ({e}); install vllm (GPU) or use --engine hf") from e
        if args.dtype != "auto":
            kwargs.setdefault("dtype", args.dtype)
        tokenizer = load_tokenizer(model_path)
        # VLLMEngine(model, tokenizer, *, seed, dtype, gpu_memory_utilization, ...) in rlreason/rollout/vllm.py
        engine = factory.make_engine("vllm", model_path, tokenizer, seed=kwargs.pop("seed", args.seed), **kwargs)
        return engine, tokenizer
    tokenizer = load_tokenizer(model_path)
    import torch
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"auto": torch.bfloat16 if device == "cuda" else torch.float32,
             "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, **kwargs).to(device).eval()
    if tokenizer.pad_token_id is None:
        # Batched generation needs padding; eos as pad is safe here since nothing is trained.
        tokenizer.pad_token = tokenizer.eos_token
    return factory.make_engine("transformers", model, tokenizer, batch_prompts=args.batch_prompts), tokenizer


def run_compare(a_path: str, b_path: str) -> str:
    """Two runs side by side: each a results file or an ``--out`` folder (its newest results file;
    an old-style results.json is read too)."""
    from rlreason.eval.report import compare_table, config_differences, newest_results_file, read_results

    a, b = (read_results(p)["rlreason"] for p in (a_path, b_path))
    lines = [f"A = {newest_results_file(a_path)}", f"B = {newest_results_file(b_path)}"]
    diffs = config_differences(a, b)
    if diffs:
        lines.append("protocol differs: " + "; ".join(diffs))
    lines.append(compare_table(a, b, ("A", "B")))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    start_time = time.time()  # the results' config_general.start_time
    if args.compare:
        with clean_start():  # a path with no results file is one error line
            print(run_compare(*args.compare))
        return None
    from rlreason.eval.core import evaluate_suites, reward_suite_rows, task_rows
    from rlreason.eval.report import results_model_name, run_table, write_results

    names = [s.strip() for s in args.suites.split(",") if s.strip()]
    task = None
    with clean_start():  # what can be checked before any model loads: the suites, the data, the rewards, the protocol
        for f in args.suite_file:
            load_suite_file(f)
        try:
            for name in names:
                get_suite(name)
        except ValueError as e:
            raise ValueError(f"--suites: {e}") from None
        for name in names:  # each suite's data is here (or on the hub), else one line saying how to supply it
            check_data(get_suite(name), allow_hub=not args.no_hub)
        if args.data is not None:
            task = load_task(args)
            if task[0] in names:
                raise ValueError(f"--data {args.data!r} is named {task[0]!r} in the results, as a suite of --suites; "
                                 f"rename the file")
            names.insert(0, task[0])  # scored first
        protocol = build_protocol(args)
        args.seed = protocol.seed  # the resolved seed (flag, protocol or default), the vLLM engine's too
        rewarded = reward_suites(args, names[1:] if task else names, protocol)
        code = code_scoring(args, names[1:] if task else names)
        loaded_tools = load_tools(args) if uses_tools(args) else None
    results: dict[str, Any] = {"config": {"suites": {}}, "suites": {}, "problems": {}}
    model_path = args.model
    # SIGTERM / Ctrl-C stop at once (rlreason/run/stopping.py); the suites finished by then are written,
    # the interrupted one is named, and the exit status is 0: a clean, expected stop.
    with stopping.handle_stop_signals():
        try:
            with stopping.stop_at_once():
                with clean_start():
                    model_path = resolve_model(args.model)
                # Built before the engine: a "fork" runner forks this process, best while it is small
                # and has no engine threads yet.
                with contextlib.ExitStack() as stack:
                    suites = [name for name in (names[1:] if task else names) if name not in rewarded]
                    scorer = stack.enter_context(build_scorer(args)) if suites else None
                    own = stack.enter_context(build_task_scorer(args, task[2])) if task else None
                    # each reward suite's runner over its own rewards, built here too: before the engine
                    owns = {name: stack.enter_context(build_task_scorer(args, funcs))
                            for name, (_, funcs) in rewarded.items()}
                    with clean_start():
                        executor = stack.enter_context(build_tools(args, *loaded_tools)) if loaded_tools else None
                        engine, tokenizer = build_engine(args, model_path)
                        check_chat_template(protocol, tokenizer, args.model)
                        # the budget per suite is capped at what the context leaves after its longest prompt
                        # (core.fit_budget); tool rollouts cap each turn themselves (ToolRollouts)
                        context = None if executor else known_context(engine, model_path)
                        rows = task_rows(task[1], tokenizer, protocol, prompt_column=args.prompt_column,
                                         source=f"--data {args.data!r}") if task else []
                        suite_rows = {name: reward_suite_rows(get_suite(name), data, tokenizer, protocol)
                                      for name, (data, _) in rewarded.items()}
                        tools = tool_rollouts(args, executor, tokenizer, engine, model_path) if executor else None
                    for name in names:  # one at a time: a stop keeps the suites already scored
                        if task and name == task[0]:
                            done = _run_task(engine, rows, own, protocol, args, name, tools, context)
                        elif name in rewarded:
                            done = _run_reward_suite(engine, get_suite(name), suite_rows[name], owns[name], protocol,
                                                     tools, context)
                        else:
                            done = evaluate_suites(engine, tokenizer, [name], protocol, scorer=scorer,
                                                   allow_hub=not args.no_hub,
                                                   log=lambda line: print(line, file=sys.stderr), tools=tools,
                                                   code=code, context=context)
                        results["config"] = {**done["config"], "suites": {**results["config"]["suites"],
                                                                          **done["config"]["suites"]}}
                        results["suites"].update(done["suites"])
                        results["problems"].update(done["problems"])
        except stopping.Stopped as e:
            results["config"]["interrupted"] = {"signal": str(e), "suites_not_done": names[len(results["suites"]):]}
            print(f"{e}: evaluation stopped; {len(results['suites'])} of {len(names)} suites done "
                  f"({', '.join(names[len(results['suites']):])} not)", file=sys.stderr)
            if not results["suites"]:
                return results
    extra = {"model": args.model, "model_path": model_path, "engine": args.engine,
             "engine_kwargs": json.loads(args.engine_kwargs), "dtype": args.dtype, "argv": argv or sys.argv[1:],
             "start_time": start_time}
    if any(get_suite(name).scoring == "code" for name in (names[1:] if task else names)):
        extra["code_scoring"] = code.to_dict()
    if uses_tools(args):
        extra["tools"] = {"tools": args.tools, "environment_factory": args.environment_factory,
                          "max_tool_calling_iterations": args.max_tool_calling_iterations,
                          "tool_timeout_s": args.tool_timeout_s, "tool_memory_mb": args.tool_memory_mb,
                          "tool_max_output_chars": args.tool_max_output_chars,
                          "tool_isolation": args.tool_isolation}
    table = run_table(results)
    if args.out:
        paths = write_results(results, args.out, extra, model_name=results_model_name(args.model))
        print(f"wrote {paths['results']}, the per-sample details under {Path(args.out) / 'details'} and the tables "
              f"in {paths['markdown']}", file=sys.stderr)
    print(table)
    return results


def _run_task(engine: Any, rows: list[dict], scorer: Any, protocol: Any, args: argparse.Namespace, name: str,
              tools: Any = None, context: int | None = None) -> dict[str, Any]:
    """The ``--data`` task run and timed, shaped as ``evaluate_suites``' results (its config under
    ``config["suites"][name]``: the file, the prompt column, the rewards and how they were run)."""
    from rlreason.eval.core import run_task

    start = time.perf_counter()
    metrics, records = run_task(engine, rows, scorer, protocol, name=name, prompt_column=args.prompt_column,
                                plain_text=args.rewards_plain_text, tools=tools, context=context)
    budget = _task_done(name, metrics, start)
    described = {"data": args.data, "prompt_column": args.prompt_column, "rewards": args.reward or ["accuracy"],
                 "rewards_plain_text": args.rewards_plain_text, "scoring": scorer.settings(), **budget}
    return {"config": {"protocol": protocol.to_dict(), "suites": {name: described}},
            "suites": {name: metrics}, "problems": {name: records}}


def _task_done(name: str, metrics: dict[str, Any], start: float) -> dict[str, Any]:
    """A task's run finished (``--data``'s or a reward suite's): its time in ``metrics``, its lines on
    stderr (the capped budget, if it was; pass@1 and the mean reward). -> the budget record taken out of
    ``metrics``, for the suite's config."""
    from rlreason.eval.render import BUDGET, budget_line

    budget = metrics.pop(BUDGET, {})
    line = budget_line(name, budget) if budget else None
    if line:
        print(line, file=sys.stderr)
    metrics["seconds"] = time.perf_counter() - start
    print(f"{name}: pass@1 {metrics.get('pass@1', float('nan')):.4f}, mean reward {metrics.get('mean_reward')} on "
          f"{metrics['problems']} problems x {metrics['n_samples']} samples ({metrics['seconds']:.1f}s)",
          file=sys.stderr)
    return budget


def _run_reward_suite(engine: Any, suite: Any, rows: list[dict], scorer: Any, protocol: Any, tools: Any = None,
                      context: int | None = None) -> dict[str, Any]:
    """A reward suite run (``rlreason.eval.core.run_reward_suite``) and timed, shaped as ``_run_task``'s
    results: its config is the suite's definition (``reward_funcs`` as resolved: a file's full path),
    how its rewards were run (``reward_runner``) and its budget where capped."""
    from rlreason.eval.core import run_reward_suite

    start = time.perf_counter()
    metrics, records = run_reward_suite(engine, suite, rows, scorer, protocol, tools, context)
    budget = _task_done(suite.name, metrics, start)
    described = {**suite.describe(), "reward_runner": scorer.settings(), **budget}
    return {"config": {"protocol": protocol.to_dict(), "suites": {suite.name: described}},
            "suites": {suite.name: metrics}, "problems": {suite.name: records}}


if __name__ == "__main__":
    main()
