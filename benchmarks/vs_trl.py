"""rlreason vs TRL's GRPOTrainer on identical work, alternating in one invocation.

Both trainers get the same model (the embedded tiny model, and a randomly initialised model
with Qwen2.5-0.5B's architecture and the tiny tokenizer's vocabulary), the same prompts in the
same order (rlreason's arithmetic task in the chat template; TRL gets the rendered prompt text
in rlreason's seeded order, with its own shuffling off), group size, per-step batch, completion
length, sampling (temperature 1.0, no top-p/top-k, no vLLM: TRL's transformers ``generate``,
rlreason's ``HFEngine`` decode loop), learning rate, optimizer (AdamW, betas 0.9/0.99, constant
schedule, grad-norm clip 1.0), seed and loss (``loss_type: dapo``, beta 0, clip 0.2/0.28,
group-scaled advantages, one update per rollout batch), fp32. Each run is a fresh subprocess
(so its peak RSS is its own: the ``ru_maxrss`` that ``wait4`` reports for it, which includes
its waited-for children such as rlreason's reward workers), and the trainers alternate: TRL,
rlreason, TRL, rlreason, ...

Per run it records the wall time of every optimizer step (step end to step end, so logging
and everything else in the loop is included), split into generation (rlreason:
``engine.generate``; TRL: ``GRPOTrainer._generate``), scoring (rlreason: the reward runner;
TRL: ``_calculate_rewards``), training (rlreason: ``update``, i.e. packing, log-prob passes,
backward, optimizer; TRL: the rest of the step after ``_generate_and_score_completions``) and
other (what is left: advantages, padding, metrics, logging). The first ``--warmup`` steps are
not counted. After the fixed step budget both final models are evaluated by the same code
(``rlreason.eval.core.evaluate`` with greedy decoding on the same held-out problems). On the
random-initialised model accuracy is meaningless (always ~0) and only speed is reported; its
reward is ``varied_reward`` (a hash of the text) in both trainers, so that its groups carry
signal and both run real updates.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/vs_trl.py                 # both sizes, 3 reps, docs table
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/vs_trl.py --sizes tiny --reps 1 --steps 2 --no-docs

Prints a markdown table and (unless ``--no-docs``) writes it into docs/benchmarks.md between
the ``vs-trl`` markers.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from _common import replace_block  # benchmarks/ is on sys.path when a script runs

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- vs-trl:begin -->", "<!-- vs-trl:end -->"

# Qwen2.5-0.5B's config values (as in benchmarks/rollout_speed.py); the vocabulary is the tiny
# tokenizer's, so the embedding is small but every decoder layer is full size.
QWEN25_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, head_dim=64, max_position_embeddings=32768, rope_theta=1_000_000.0,
                  rms_norm_eps=1e-6, tie_word_embeddings=True)


@dataclass
class Work:
    """Everything both trainers share for one model size."""

    size: str  # "tiny" | "large"
    steps: int
    prompts: int  # per optimizer step
    num_generations: int
    micro_batch: int  # completions per micro-batch (per_device_train_batch_size)
    max_completion_length: int
    learning_rate: float
    eval_n: int
    seed: int = 0
    layers: int = 24  # large model only
    reward: str = "accuracy"  # accuracy | varied (see varied_reward)

    @property
    def accumulation(self) -> int:
        return self.prompts * self.num_generations // self.micro_batch


def default_work(size: str, args) -> Work:
    if size == "tiny":  # the default recipe's step shape (recipes/configs/tiny_cpu.yaml)
        return Work("tiny", args.steps, 16, 8, 64, 64, 3e-5, args.eval_n)
    # CPU time: a 358M fp32 model takes minutes per step here, so a small batch and few steps
    return Work("large", args.large_steps, 4, 4, 8, 32, 1e-6, 0, layers=args.large_layers, reward="varied")


def varied_reward(completions, **kwargs) -> list[float]:
    """The random large model's reward: 0, 1 or 2 from a hash of each completion's text. Its
    answers are never right, so with the accuracy reward every group would be flat (advantage 0)
    and there would be nothing to learn from: rlreason leaves such groups out of the update
    (``skip_zero_advantage_groups``), which would make that a test of nothing. With this reward
    groups vary and both trainers run real updates."""
    from rlreason.rewards import completion_text

    return [float(int(hashlib.md5(completion_text(c).encode()).hexdigest(), 16) % 3) for c in completions]


def reward_func(work: Work):
    from rlreason.rewards import accuracy_reward

    return accuracy_reward if work.reward == "accuracy" else varied_reward


# --------------------------------------------------------------------------- child: one training run


def build(work: Work):
    """(model, tokenizer, train rows in rlreason's order for the whole run, held-out rows)."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from rlreason.data import arith_dataset, prepare
    from rlreason.eval.suites import arith_suite
    from rlreason.tiny import TinySpec, ensure

    path = ensure(TinySpec(), log=lambda *a: None)
    tok = AutoTokenizer.from_pretrained(path)
    if work.size == "tiny":
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    else:
        torch.manual_seed(work.seed)  # same random weights in both trainers
        cfg = Qwen2Config(vocab_size=len(tok), bos_token_id=None, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id, dtype="float32",
                          **{**QWEN25_05B, "num_hidden_layers": work.layers})
        model = Qwen2ForCausalLM(cfg)
        model.generation_config.eos_token_id = tok.eos_token_id
        model.generation_config.pad_token_id = tok.pad_token_id
    n_train = work.steps * work.prompts
    train = prepare(arith_dataset(max(n_train, 64), work.seed, "train"), tokenizer=tok)
    heldout = list(prepare(datasets.Dataset.from_list(arith_suite(work.eval_n)), tokenizer=tok)) if work.eval_n else []
    return model, tok, train, heldout


def heldout_accuracy(model, tok, rows: list[dict], max_tokens: int) -> float | None:
    """Greedy accuracy of ``model`` on ``rows``: the same code for both trainers' final models."""
    if not rows:
        return None
    from rlreason.eval.core import evaluate, heldout_scorer
    from rlreason.rewards import accuracy_reward
    from rlreason.rollout.base import SamplingConfig
    from rlreason.rollout.hf import HFEngine

    model.eval()
    # "spawn": this process may be running threads by now (a fork would copy their locks)
    with heldout_scorer(accuracy_reward, start_method="spawn") as scorer:
        res = evaluate(HFEngine(model, tok), rows, scorer, SamplingConfig(max_tokens=max_tokens, temperature=0.0))
    return res["accuracy"]


def run_rlreason(work: Work, out_dir: str) -> dict:
    from rlreason.build import assemble
    from rlreason.config import GRPOConfig
    from rlreason.loop.trainer import GRPOTrainer

    model, tok, train, heldout = build(work)
    cfg = GRPOConfig(output_dir=out_dir, seed=work.seed, max_steps=work.steps, num_threads=1,
                     num_generations=work.num_generations, per_device_train_batch_size=work.micro_batch,
                     gradient_accumulation_steps=work.accumulation, max_completion_length=work.max_completion_length,
                     temperature=1.0, learning_rate=work.learning_rate, loss_type="dapo", scale_rewards="group",
                     beta=0.0, epsilon=0.2, epsilon_high=0.28, lr_scheduler_type="constant", eval_steps=0,
                     save_steps=0, log_completions_steps=0, progress=False,
                     # rlreason's defaults before they became TRL 1.16's, which this benchmark was measured with
                     adam_beta2=0.99, optim="adamw_torch", gradient_checkpointing=False, max_prompt_length=128)
    trainer = GRPOTrainer(cfg, assemble(cfg, model, tok, train, [reward_func(work)]))
    steps = []
    t_prev = time.perf_counter()
    # The trainer's own loop minus its before/after evaluation and final checkpoint (TRL's run
    # here saves nothing either); the held-out evaluation below is the same for both.
    for _ in range(work.steps):
        m, n = trainer._one_step()
        t = time.perf_counter()
        steps.append({"wall": t - t_prev, "samples": n, "generation": m["time/generation_s"],
                      "scoring": m["time/scoring_s"], "training": m["time/training_s"],
                      "reward": m["reward/mean"]})
        t_prev = t
    trainer.close()
    return {"steps": steps, "heldout": heldout_accuracy(trainer.acc.unwrap_model(trainer.model), tok, heldout,
                                                         work.max_completion_length)}


def run_trl(work: Work, out_dir: str) -> dict:
    import datasets
    import trl
    from transformers import TrainerCallback

    model, tok, train, heldout = build(work)
    # rlreason's prompt order for the whole run (its seeded permutation, epoch 0), as rendered
    # prompt text; TRL's own shuffling is off so step i sees the same prompts in both.
    import torch

    g = torch.Generator().manual_seed(work.seed * 100_003)
    order = torch.randperm(len(train), generator=g)[:work.steps * work.prompts].tolist()
    rows = [train[i] for i in order]
    ds = datasets.Dataset.from_dict({"prompt": [r["prompt_text"] for r in rows], "answer": [r["answer"] for r in rows]})
    args = trl.GRPOConfig(
        output_dir=out_dir, seed=work.seed, max_steps=work.steps, per_device_train_batch_size=work.micro_batch,
        gradient_accumulation_steps=work.accumulation, num_generations=work.num_generations,
        max_completion_length=work.max_completion_length, temperature=1.0, top_p=1.0, top_k=0,
        learning_rate=work.learning_rate, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.99, max_grad_norm=1.0, loss_type="dapo", beta=0.0, epsilon=0.2,
        epsilon_high=0.28, scale_rewards="group", num_iterations=1, shuffle_dataset=False, use_cpu=True,
        bf16=False, report_to=[], logging_steps=1, save_strategy="no", disable_tqdm=True, log_completions=False,
        dataloader_num_workers=0)
    steps: list[dict] = []
    cur: dict[str, float] = {}

    class Clock(TrainerCallback):
        last = 0.0

        def on_train_begin(self, *a, **k):
            Clock.last = time.perf_counter()

        def on_step_end(self, *a, **k):
            t = time.perf_counter()
            steps.append({"wall": t - Clock.last, "samples": work.prompts * work.num_generations, **cur})
            cur.clear()
            Clock.last = t

    trainer = trl.GRPOTrainer(model=model, reward_funcs=[reward_func(work)], args=args, train_dataset=ds,
                              processing_class=tok, callbacks=[Clock()])

    def timed(name: str, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                cur[name] = cur.get(name, 0.0) + time.perf_counter() - t0
        return wrapper

    # instance attributes shadow the methods: TRL calls them as self._generate(...) etc.
    trainer._generate = timed("generation", trainer._generate)
    trainer._calculate_rewards = timed("scoring", trainer._calculate_rewards)
    trainer._generate_and_score_completions = timed("gen_and_score", trainer._generate_and_score_completions)
    orig_log = trainer.log

    def log(logs, *a, **k):
        if "reward" in logs and steps:
            steps[-1]["reward"] = logs["reward"]
        return orig_log(logs, *a, **k)

    trainer.log = log
    trainer.train()
    for s in steps:  # training: the step after generation and scoring (forward, backward, optimizer, logging)
        s["training"] = s["wall"] - s.pop("gen_and_score", 0.0)
    return {"steps": steps, "heldout": heldout_accuracy(trainer.model, tok, heldout, work.max_completion_length)}


def child(spec: str, result: str) -> None:
    import torch

    torch.set_num_threads(1)
    d = json.loads(spec)
    trainer = d.pop("trainer")
    work = Work(**d)
    with tempfile.TemporaryDirectory() as tmp:
        out = (run_trl if trainer == "trl" else run_rlreason)(work, tmp)
    Path(result).write_text(json.dumps(out))


# --------------------------------------------------------------------------- parent: alternate, summarise


def run_child(trainer: str, work: Work) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        res = Path(tmp) / "result.json"
        spec = json.dumps({"trainer": trainer, **asdict(work)})
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, __file__, "--child", spec, "--result", str(res)], env=env,
                                cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"{trainer} run failed (exit {proc.returncode}); its output is above")
        out = json.loads(res.read_text())
    out["peak_rss_mib"] = usage.ru_maxrss / 1024  # Linux: KiB
    out["total_s"] = time.perf_counter() - t0
    return out


def summarise(run: dict, warmup: int) -> dict:
    steps = run["steps"][warmup:] or run["steps"][-1:]  # with no step after warm-up, the last one
    n = len(steps)
    wall = sum(s["wall"] for s in steps)
    parts = {k: sum(s.get(k, 0.0) for s in steps) / n for k in ("generation", "scoring", "training")}
    parts["other"] = wall / n - sum(parts.values())
    return {"samples_per_s": sum(s["samples"] for s in steps) / wall, "step_s": wall / n, **parts,
            "peak_rss_mib": run["peak_rss_mib"], "heldout": run["heldout"]}


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def fmt_spread(xs: list[float], spec: str) -> str:
    if len(xs) == 1:
        return format(xs[0], spec)
    return f"{format(med(xs), spec)} ({format(min(xs), spec)}-{format(max(xs), spec)})"


def table(results: dict[str, dict[str, list[dict]]], works: dict[str, Work], args) -> str:
    import torch

    label = {"tiny": "tiny (0.8M)",
             "large": f"Qwen2.5-0.5B arch, {works['large'].layers if 'large' in works else 24} layers, random"}
    lines = [
        f"Measured {datetime.date.today()} on {platform.machine()} (no GPU), OMP_NUM_THREADS=1 and "
        f"torch.set_num_threads(1) in every run, torch {torch.__version__}, TRL {_version('trl')}, "
        f"transformers {_version('transformers')}, fp32; {args.reps} runs per trainer and size, alternating, "
        f"first {args.warmup} step(s) of each run not counted. Values: median (min-max) over the runs.",
        "",
        "| model | work per step | trainer | samples/s | s/step | generation | scoring | training | other "
        "| peak RSS (MiB) | held-out acc after |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ratios = []
    for size, by_trainer in results.items():
        w = works[size]
        shape = f"{w.prompts}x{w.num_generations}, {w.max_completion_length} tok, {w.steps} steps"
        for trainer in ("trl", "rlreason"):
            rs = by_trainer[trainer]
            col = {k: [r[k] for r in rs] for k in rs[0]}
            acc = "n/a (random model)" if size == "large" else (
                fmt_spread(col["heldout"], ".3f") + f" (n={w.eval_n})")
            lines.append(
                f"| {label[size]} | {shape} | {'TRL GRPOTrainer' if trainer == 'trl' else 'rlreason'} | "
                f"{fmt_spread(col['samples_per_s'], '.2f')} | {fmt_spread(col['step_s'], '.2f')} | "
                f"{med(col['generation']):.2f} | {med(col['scoring']):.3f} | {med(col['training']):.2f} | "
                f"{med(col['other']):.2f} | {med(col['peak_rss_mib']):.0f} | {acc} |")
        sp = [r["samples_per_s"] for r in by_trainer["rlreason"]]
        st = [r["samples_per_s"] for r in by_trainer["trl"]]
        ratios.append(f"{label[size]}: rlreason / TRL samples/s = {med(sp) / med(st):.2f}x "
                      f"(range over run pairs {min(sp) / max(st):.2f}x-{max(sp) / min(st):.2f}x)")
    return "\n".join(lines + [""] + [f"- {r}" for r in ratios])


def _version(pkg: str) -> str:
    from importlib.metadata import version

    return version(pkg)


def write_docs(text: str, command: str) -> None:
    body = f"```bash\n{command}\n```\n\n{text}"
    if not replace_block(DOCS, BEGIN, END, body):  # first run: the section does not exist yet
        DOCS.write_text(DOCS.read_text().rstrip("\n") + f"\n\n## rlreason vs TRL\n\n{BEGIN}\n{body}\n{END}\n")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="tiny,large", help="comma-separated: tiny, large")
    ap.add_argument("--reps", type=int, default=3, help="runs per trainer and size")
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps per run on the tiny model")
    ap.add_argument("--large-steps", type=int, default=3, help="optimizer steps per run on the large model")
    ap.add_argument("--large-layers", type=int, default=24, help="decoder layers of the large model (Qwen2.5-0.5B: 24)")
    ap.add_argument("--eval-n", type=int, default=200, help="held-out problems for the accuracy after training")
    ap.add_argument("--warmup", type=int, default=1, help="first steps of each run not counted in the speed")
    ap.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    ap.add_argument("--json", default=None, help="also write all per-run results here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.result)
        return {}
    works = {s: default_work(s, args) for s in args.sizes.split(",")}
    results: dict[str, dict[str, list[dict]]] = {s: {"trl": [], "rlreason": []} for s in works}
    raw: dict[str, dict[str, list[dict]]] = {s: {"trl": [], "rlreason": []} for s in works}
    for size, work in works.items():
        for rep in range(args.reps):
            for trainer in ("trl", "rlreason"):  # alternating, so drifts in machine load hit both
                run = run_child(trainer, work)
                raw[size][trainer].append(run)
                s = summarise(run, args.warmup)
                results[size][trainer].append(s)
                print(f"[{size} rep {rep + 1}/{args.reps}] {trainer}: {s['samples_per_s']:.2f} samples/s, "
                      f"{s['step_s']:.2f} s/step (gen {s['generation']:.2f}, score {s['scoring']:.3f}, "
                      f"train {s['training']:.2f}), RSS {s['peak_rss_mib']:.0f} MiB, held-out {s['heldout']}, "
                      f"run {run['total_s']:.0f} s", flush=True)
    text = table(results, works, args)
    print(text)
    command = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/vs_trl.py " + " ".join(argv if argv is not None
                                                                                  else sys.argv[1:])
    if args.json:
        Path(args.json).write_text(json.dumps({"works": {k: asdict(v) for k, v in works.items()}, "runs": raw,
                                               "summary": results}, indent=1))
    if not args.no_docs:
        write_docs(text, command.strip())
    return results


if __name__ == "__main__":
    main()
