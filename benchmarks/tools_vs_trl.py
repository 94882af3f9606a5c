"""rlreason vs TRL 1.16's ``GRPOTrainer(tools=...)`` on the same tiny tool task, alternating in one
invocation: seconds per optimizer step and rollouts (completions, each a whole tool exchange) per
second.

Both trainers are driven through their Python API with the same objects: the embedded tool-calling
model (``tiny-tools``, rlreason/tiny.py: its chat template renders the tool list and
``<tool_call>{json}</tool_call>`` calls, its tokenizer carries the ``response_template`` that
transformers' ``parse_response`` reads, so TRL needs no template of its own), the multiplication
task's prompts (``rlreason.data.tasks.mul``; each trainer draws them in its own order), the task's
``multiply`` tool, the same reward (``final_answer``: 1.0 when the exchange's last assistant turn
holds the product in ``<answer>``), group size, per-step batch, completion length (the whole
exchange), ``max_tool_calling_iterations``, sampling (temperature 1.0, no top-p/top-k, no vLLM:
TRL's transformers ``generate``, rlreason's ``HFEngine``), learning rate, optimizer (AdamW, constant
schedule), loss (``dapo``, beta 0) and seed, fp32, one thread. rlreason scores in-process
(``reward_num_workers: 0``, as TRL does) and runs tools in its isolated workers (its default,
``tool_isolation: process``; TRL calls them in the trainer's process). Each run is a fresh
subprocess; the trainers alternate (TRL, rlreason, TRL, ...) so a drift in machine load hits both.
A step is timed from one ``on_step_end`` callback to the next (both trainers call transformers'
``TrainerCallback``), so everything in the loop counts; the first ``--warmup`` steps are not counted.
Each run also reports the tool calls per completion it logged (``tools/call_frequency``, TRL's
name in both) so that the two did comparable tool work.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tools_vs_trl.py                  # 3 reps, docs table
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tools_vs_trl.py --reps 1 --steps 3 --no-docs

Prints a markdown table and (unless ``--no-docs``) writes it into docs/benchmarks.md between the
``tools-vs-trl`` markers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from _common import replace_block  # benchmarks/ is on sys.path when a script runs

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- tools-vs-trl:begin -->", "<!-- tools-vs-trl:end -->"
MODEL = "tiny-tools"


@dataclass
class Work:
    """Everything both trainers share."""

    steps: int
    prompts: int  # per optimizer step
    num_generations: int
    max_completion_length: int  # the whole exchange: model turns and tool output
    max_tool_calling_iterations: int
    learning_rate: float
    seed: int = 0


def final_answer(completions, answer, **kwargs) -> list[float]:
    """1.0 when the exchange's last assistant turn holds ``<answer>gold</answer>``, else 0.0: the
    task's rule (the product must be the model's final answer, not a tool's output)."""
    out = []
    for comp, gold in zip(completions, answer, strict=True):
        last = next((m.get("content") or "" for m in reversed(comp) if m.get("role") == "assistant"), "")
        m = re.search(r"<answer>\s*(-?\d+)\s*</answer>", last)
        out.append(float(m is not None and m.group(1) == str(gold)))
    return out


# --------------------------------------------------------------------------- child: one training run


def build(work: Work):
    """(model, tokenizer, dataset in the order both trainers consume it)."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlreason.data.tasks import mul
    from rlreason.tiny import SPECS, ensure

    path = ensure(SPECS[MODEL], log=lambda *a: None)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    problems = mul.generate(work.steps * work.prompts, work.seed, "train")
    return model, tok, datasets.Dataset.from_list(mul.to_records(problems))


class _Clock:
    """Each step's wall time, step end to step end, and the step's logged tool metrics (fed by
    :func:`_callback`'s ``TrainerCallback``, which both trainers call)."""

    def __init__(self) -> None:
        self.steps: list[dict] = []
        self.last = 0.0

    def on_train_begin(self, *a, **k):
        self.last = time.perf_counter()

    def on_step_end(self, *a, **k):
        t = time.perf_counter()
        self.steps.append({"wall": t - self.last})
        self.last = t

    def on_log(self, args, state, control, logs=None, **k):
        if logs and self.steps and "tools/call_frequency" in logs:
            self.steps[-1].update({k: float(v) for k, v in logs.items()
                                   if k in ("tools/call_frequency", "tools/failure_frequency", "reward")})


def _callback(clock: _Clock):
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            clock.on_train_begin()

        def on_step_end(self, *a, **k):
            clock.on_step_end()

        def on_log(self, *a, **k):
            clock.on_log(*a, **k)

    return Clock()


def common_args(work: Work, out_dir: str) -> dict:
    """The config keys both trainers take under the same name (TRL's)."""
    rollouts = work.prompts * work.num_generations
    return dict(output_dir=out_dir, seed=work.seed, max_steps=work.steps, per_device_train_batch_size=rollouts,
                gradient_accumulation_steps=1, num_generations=work.num_generations,
                max_completion_length=work.max_completion_length,
                max_tool_calling_iterations=work.max_tool_calling_iterations, temperature=1.0, top_p=1.0,
                top_k=0, learning_rate=work.learning_rate, lr_scheduler_type="constant", warmup_steps=0,
                weight_decay=0.0, max_grad_norm=1.0, loss_type="dapo", beta=0.0, num_iterations=1,
                logging_steps=1, save_strategy="no", log_completions=False,
                gradient_checkpointing=False)


def run_trl(work: Work, out_dir: str) -> dict:
    import trl

    from rlreason.data.tasks.mul import multiply

    model, tok, ds = build(work)
    clock = _Clock()
    args = trl.GRPOConfig(**common_args(work, out_dir), use_cpu=True, bf16=False, report_to=[], disable_tqdm=True,
                          dataloader_num_workers=0, shuffle_dataset=False)
    trainer = trl.GRPOTrainer(model=model, reward_funcs=[final_answer], args=args, train_dataset=ds,
                              processing_class=tok, callbacks=[_callback(clock)], tools=[multiply])
    trainer.train()
    return {"steps": clock.steps}


def run_rlreason(work: Work, out_dir: str) -> dict:
    import rlreason
    from rlreason.data.tasks.mul import multiply

    model, tok, ds = build(work)
    clock = _Clock()
    args = rlreason.GRPOConfig(**common_args(work, out_dir), num_threads=1, reward_num_workers=0, eval_steps=0,
                               progress=False)
    trainer = rlreason.GRPOTrainer(model=model, reward_funcs=[final_answer], args=args, train_dataset=ds,
                                   processing_class=tok, callbacks=[_callback(clock)], tools=[multiply])
    trainer.train()
    return {"steps": clock.steps}


def child(spec: str, result: str) -> None:
    import torch

    torch.set_num_threads(1)
    d = json.loads(spec)
    trainer = d.pop("trainer")
    work = Work(**d)
    with tempfile.TemporaryDirectory() as tmp:
        out = (run_trl if trainer == "trl" else run_rlreason)(work, str(Path(tmp) / "run"))
    Path(result).write_text(json.dumps(out))


# --------------------------------------------------------------------------- parent: alternate, summarise


def run_child(trainer: str, work: Work) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        res = Path(tmp) / "result.json"
        spec = json.dumps({"trainer": trainer, **asdict(work)})
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--child", spec, "--result", str(res)], env=env, cwd=ROOT)
        if proc.returncode != 0:
            raise RuntimeError(f"{trainer} run failed (exit {proc.returncode}); its output is above")
        out = json.loads(res.read_text())
    out["total_s"] = time.perf_counter() - t0
    return out


def summarise(run: dict, work: Work, warmup: int) -> dict:
    steps = run["steps"][warmup:] or run["steps"][-1:]  # with no step after warm-up, the last one
    wall = sum(s["wall"] for s in steps)
    calls = [s["tools/call_frequency"] for s in steps if "tools/call_frequency" in s]
    return {"step_s": wall / len(steps), "rollouts_per_s": len(steps) * work.prompts * work.num_generations / wall,
            "calls_per_completion": statistics.mean(calls) if calls else None}


def fmt_spread(xs: list[float], spec: str) -> str:
    if len(xs) == 1:
        return format(xs[0], spec)
    return f"{format(statistics.median(xs), spec)} ({format(min(xs), spec)}-{format(max(xs), spec)})"


def table(results: dict[str, list[dict]], work: Work, args) -> str:
    from importlib.metadata import version

    import torch

    lines = [
        f"Measured {datetime.date.today()} on {platform.machine()} (no GPU), one thread per run, torch "
        f"{torch.__version__}, TRL {version('trl')}, transformers {version('transformers')}, fp32, model "
        f"`{MODEL}`; {work.prompts} prompts x {work.num_generations} completions per step, "
        f"{work.max_completion_length} tokens per exchange, at most {work.max_tool_calling_iterations} tool "
        f"calls, {work.steps} steps; {args.reps} runs per trainer, alternating, first {args.warmup} step(s) of "
        "each run not counted. Values: median (min-max) over the runs.",
        "",
        "| trainer | s/step | rollouts/s | tool calls per completion |",
        "|---|---:|---:|---:|",
    ]
    for trainer in ("trl", "rlreason"):
        rs = results[trainer]
        calls = [r["calls_per_completion"] for r in rs if r["calls_per_completion"] is not None]
        lines.append(f"| {'TRL GRPOTrainer(tools=...)' if trainer == 'trl' else 'rlreason GRPOTrainer(tools=...)'} | "
                     f"{fmt_spread([r['step_s'] for r in rs], '.2f')} | "
                     f"{fmt_spread([r['rollouts_per_s'] for r in rs], '.1f')} | "
                     f"{fmt_spread(calls, '.2f') if calls else 'n/a'} |")
    ours = statistics.median(r["rollouts_per_s"] for r in results["rlreason"])
    theirs = statistics.median(r["rollouts_per_s"] for r in results["trl"])
    return "\n".join(lines + ["", f"- rlreason / TRL rollouts/s = {ours / theirs:.2f}x"])


def write_docs(text: str, command: str) -> None:
    body = f"```bash\n{command}\n```\n\n{text}"
    if not replace_block(DOCS, BEGIN, END, body):  # first run: the section does not exist yet
        DOCS.write_text(DOCS.read_text().rstrip("\n")
                        + f"\n\n## Tool calling: rlreason vs TRL\n\n{BEGIN}\n{body}\n{END}\n")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3, help="runs per trainer")
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per run")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per step")
    ap.add_argument("--num-generations", type=int, default=4, help="completions per prompt")
    ap.add_argument("--max-completion-length", type=int, default=64, help="tokens per exchange")
    ap.add_argument("--max-tool-calling-iterations", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1, help="first steps of each run not counted")
    ap.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    ap.add_argument("--json", default=None, help="also write all per-run results here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.result)
        return {}
    work = Work(args.steps, args.prompts, args.num_generations, args.max_completion_length,
                args.max_tool_calling_iterations, 1e-5)
    results: dict[str, list[dict]] = {"trl": [], "rlreason": []}
    raw: dict[str, list[dict]] = {"trl": [], "rlreason": []}
    for rep in range(args.reps):
        for trainer in ("trl", "rlreason"):  # alternating, so drifts in machine load hit both
            run = run_child(trainer, work)
            raw[trainer].append(run)
            s = summarise(run, work, args.warmup)
            results[trainer].append(s)
            print(f"[rep {rep + 1}/{args.reps}] {trainer}: {s['step_s']:.2f} s/step, {s['rollouts_per_s']:.1f} "
                  f"rollouts/s, {s['calls_per_completion']} tool calls per completion, run {run['total_s']:.0f} s",
                  flush=True)
    text = table(results, work, args)
    print(text)
    command = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tools_vs_trl.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    if args.json:
        Path(args.json).write_text(json.dumps({"work": asdict(work), "runs": raw, "summary": results}, indent=1))
    if not args.no_docs:
        write_docs(text, command.strip())
    return results


if __name__ == "__main__":
    main()
