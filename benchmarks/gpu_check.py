"""One pass of GPU checks: environment, the real recipe in bf16, HF rollout speed and training
throughput on a Qwen2-0.5B-shaped random model. Results as JSON and a markdown table.

    python benchmarks/gpu_check.py --out-dir results/         # on a GPU (bf16)
    python benchmarks/gpu_check.py --smoke --out-dir /tmp/gc  # CPU, tiny sizes: the script still works
    benchmarks/gpu_bundle.sh run results/                     # on a GPU machine without our dependencies

Sections (each runs even when an earlier one failed; its error is recorded, the exit status is
1 if any failed):

1. ``env``: python, torch, transformers, accelerate, peft versions, the GPU, bf16 support, and
   which of this project's dependencies import.
2. ``recipe``: ``accelerate launch --mixed_precision bf16 recipes/grpo_math.py`` on the embedded
   tiny model (tiny_cpu.yaml with fewer steps and smaller evals), as a subprocess; checks that
   every step's loss and grad_norm are finite and that the held-out evals (before and after)
   ran. The tiny model is taken from ``$RLREASON_CACHE`` (built there if missing).
3. ``rollout``: ``rlreason.rollout.hf.HFEngine`` generating on a random-init model of
   Qwen2-0.5B's shape in bf16 (weights in bf16, as an inference engine holds them): random
   prompt ids, ``--prompts`` x ``--samples`` x ``--new-tokens`` (random weights rarely sample
   eos, so nearly every row runs to the limit; the generated tokens are counted, not assumed).
4. ``train``: the same shape as the trainer holds it (fp32 master weights, bf16 autocast via
   accelerate, AdamW): the chunked ``rlreason.loop.logprobs.completion_logprobs`` pass over packed
   prompt+completion rows, ``rlreason.algorithms`` clipped surrogate + token-mean aggregation,
   backward, grad clipping and an AdamW step; tokens/s over prompt+completion tokens, peak
   memory, and 6 * parameters * tokens FLOP/s. Not the trainer's ``update`` (that needs a
   whole run's parts); section 2 runs that one.

Nothing imports this script; the test suite does not run it.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # gpu_step's model shapes
try:  # the installed package (rlreason.rewards and rlreason.eval exist only installed: setuptools package-dir)
    import rlreason  # noqa: F401
except ImportError:  # a bare checkout: the torch-only modules (rollout, logprobs, algorithms) still import
    sys.path.insert(1, str(ROOT))

DEPENDENCIES = ["transformers", "accelerate", "datasets", "tokenizers", "safetensors", "yaml", "rich", "matplotlib",
                "sympy", "latex2sympy2_extended", "math_verify", "antlr4", "peft", "trl", "hypothesis", "tensorboard",
                "vllm", "rlreason", "rlreason.rewards", "rlreason.eval", "rlreason.loop.trainer"]


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def env_section() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
           "torch_cuda": torch.version.cuda}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out.update(gpu=torch.cuda.get_device_name(0), capability=f"{p.major}.{p.minor}",
                   gpu_mem_gib=round(p.total_memory / 2**30, 1), multiprocessors=p.multi_processor_count,
                   bf16_supported=torch.cuda.is_bf16_supported())
    deps = {}
    for name in DEPENDENCIES:
        try:
            mod = importlib.import_module(name)
            deps[name] = getattr(mod, "__version__", "ok")
        except Exception as e:  # noqa: BLE001 - report any import failure
            deps[name] = f"MISSING: {type(e).__name__}: {str(e)[:160]}"
    out["imports"] = deps
    for k in ("transformers", "accelerate", "peft"):
        out[k] = deps.get(k)
    return out


def recipe_section(args, work: Path) -> dict:
    """The real recipe, launched as users launch it, for a few steps."""
    run_dir = Path(tempfile.mkdtemp(prefix="gpu_check_")) / "run"  # checkpoints, final model: not in the results
    mp = "no" if args.smoke else "bf16"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
           "--mixed_precision", mp, "--dynamo_backend", "no", str(ROOT / "recipes" / "grpo_math.py"),
           "--config", str(ROOT / "recipes" / "configs" / "tiny_cpu.yaml"), "--output_dir", str(run_dir),
           "--overwrite_output_dir", "true", "--max_steps", str(args.recipe_steps),
           "--eval_steps", str(args.recipe_steps), "--save_steps", str(args.recipe_steps),
           "--eval_size", str(args.recipe_eval), "--final_eval_size", str(args.recipe_eval),
           "--arith_train_size", "2000", "--num_threads", "4"]
    if args.smoke:  # 2 prompts x 4 samples, short completions: seconds on a CPU
        cmd += ["--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1", "--num_generations", "4",
                "--max_completion_length", "16"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.recipe_timeout)
    wall = time.perf_counter() - t0
    log = proc.stdout + proc.stderr
    (work / "recipe_log.txt").write_text(" ".join(cmd) + "\n\n" + log)
    out = {"command": " ".join(["accelerate launch"] + cmd[3:]).replace(str(ROOT) + "/", ""),
           "mixed_precision": mp, "returncode": proc.returncode, "wall_s": round(wall, 1),
           "log_tail": log[-2500:]}
    rows = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "loss" in r]
    out["steps_logged"] = len(steps)
    out["loss"] = [r.get("loss") for r in steps]
    out["grad_norm"] = [r.get("grad_norm") for r in steps]
    out["reward_mean"] = [r.get("reward/mean") for r in steps]
    out["generation_s"] = [r.get("time/generation_s") for r in steps]
    out["finite"] = bool(steps) and all(isinstance(r.get("loss"), float | int) and math.isfinite(r["loss"])
                                        and isinstance(r.get("grad_norm"), float | int)
                                        and math.isfinite(r["grad_norm"]) for r in steps)
    summary = run_dir / "summary.json"
    for name in ("metrics.jsonl", "summary.json"):
        if (run_dir / name).exists():
            shutil.copy(run_dir / name, work / f"recipe_{name}")
    if summary.exists():
        s = json.loads(summary.read_text())
        out["summary"] = {k: s.get(k) for k in ("steps", "train_time_s", "samples_per_s", "heldout_n",
                                                "heldout_before", "heldout_after", "gain")}
    out["heldout_ran"] = "heldout_before" in out.get("summary", {}) and out["summary"]["heldout_after"] is not None
    out["ok"] = proc.returncode == 0 and out["finite"] and out["heldout_ran"] and len(steps) == args.recipe_steps
    shutil.rmtree(run_dir.parent, ignore_errors=True)
    if not out["ok"]:
        raise RuntimeError(f"recipe run failed: rc={proc.returncode}, steps={len(steps)}, finite={out['finite']}, "
                           f"heldout={out['heldout_ran']}; log tail:\n{log[-1500:]}")
    return out


def build_model(size: str, dtype: torch.dtype, device: torch.device):
    from gpu_step import SIZES, IdTokenizer
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(**SIZES[size])
    tok = IdTokenizer(cfg.vocab_size)
    cfg.eos_token_id, cfg.pad_token_id, cfg.bos_token_id = tok.eos_token_id, tok.pad_token_id, None
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg)
    model = model.to(dtype)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok, cfg


def rollout_section(args, device: torch.device) -> dict:
    from rlreason.rollout.base import SamplingConfig
    from rlreason.rollout.hf import HFEngine

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model, tok, cfg = build_model(args.size, dtype, device)
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    engine = HFEngine(model, tok, max_batch_prompts=args.prompts)
    g = torch.Generator().manual_seed(1)
    # warm-up: kernels, allocator
    warm = torch.randint(0, cfg.vocab_size - 2, (min(4, args.prompts), args.prompt_len), generator=g).tolist()
    engine.generate(warm, 2, SamplingConfig(max_tokens=8, temperature=1.0))
    _sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    runs = []
    for _ in range(args.rollout_repeats):
        prompts = torch.randint(0, cfg.vocab_size - 2, (args.prompts, args.prompt_len), generator=g).tolist()
        _sync()
        t0 = time.perf_counter()
        groups = engine.generate(prompts, args.samples, SamplingConfig(max_tokens=args.new_tokens, temperature=1.0))
        _sync()
        dt = time.perf_counter() - t0
        gen = sum(len(s.token_ids) for grp in groups for s in grp)
        runs.append({"seconds": round(dt, 3), "generated_tokens": gen, "tokens_per_s": round(gen / dt, 1)})
        print(json.dumps({"rollout": runs[-1]}), flush=True)
    best = max(runs, key=lambda r: r["tokens_per_s"])
    out = {"model": f"{args.size} shape, random init", "parameters": n_params, "dtype": str(dtype).split(".")[-1],
           "prompts": args.prompts, "samples_per_prompt": args.samples, "prompt_len": args.prompt_len,
           "new_tokens": args.new_tokens, "runs": runs, "tokens_per_s": best["tokens_per_s"],
           "seconds": best["seconds"],
           "sequences_per_s": round(args.prompts * args.samples / best["seconds"], 1),
           "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None}
    del engine, model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def train_section(args, device: torch.device) -> dict:
    from accelerate import Accelerator

    from rlreason import algorithms as A
    from rlreason.data.batching import pack
    from rlreason.loop.logprobs import completion_logprobs

    cuda = device.type == "cuda"
    acc = Accelerator(mixed_precision="bf16" if cuda else "no", cpu=not cuda)
    model, tok, cfg = build_model(args.size, torch.float32, acc.device)  # fp32 master weights, as the trainer
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    model, opt = acc.prepare(model, opt)
    model.train()
    g = torch.Generator().manual_seed(2)
    N, G = args.train_seqs, args.samples
    L, T = args.prompt_len, args.new_tokens
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    steps = []
    settings = A.LossSettings(eps_low=0.2, eps_high=0.28)
    for step in range(args.train_warmup + args.train_steps):
        prompts = torch.randint(0, cfg.vocab_size - 2, (N // G, L), generator=g).tolist()
        prompt_rows = [p for p in prompts for _ in range(G)]
        completions = torch.randint(0, cfg.vocab_size - 2, (N, T), generator=g).tolist()
        rewards = torch.rand(N, generator=g)
        adv, _ = A.group_advantages(rewards, G, scale="group")
        denom = float(N * T)
        _sync()
        t0 = time.perf_counter()
        n_tok, loss_sum, norm = 0, 0.0, None
        for lo in range(0, N, args.micro_batch):
            hi = min(lo + args.micro_batch, N)
            batch = pack(prompt_rows[lo:hi], completions[lo:hi], tok.pad_token_id)
            batch = {k: v.to(acc.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            n_tok += int(batch["attention_mask"].sum())
            logp, _ = completion_logprobs(model, batch, 1.0, chunk_size=args.chunk_size)
            mask = batch["completion_mask"]
            # the trainer's loss function (DAPO's clip range, token mean over the whole batch)
            loss, _ = A.policy_loss(logp, logp.detach(), adv[lo:hi].to(acc.device), mask, settings, denom=denom)
            acc.backward(loss)
            loss_sum += float(loss.detach())
        norm = float(acc.clip_grad_norm_(model.parameters(), 1.0))
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync()
        dt = time.perf_counter() - t0
        row = {"step": step, "seconds": round(dt, 3), "tokens": n_tok, "tokens_per_s": round(n_tok / dt, 1),
               "loss": loss_sum, "grad_norm": norm}
        print(json.dumps({"train": row}), flush=True)
        if step >= args.train_warmup:
            steps.append(row)
    secs = sum(r["seconds"] for r in steps)
    toks = sum(r["tokens"] for r in steps)
    flops = 6 * n_params * toks / secs
    out = {"model": f"{args.size} shape, random init", "parameters": n_params,
           "precision": "fp32 weights + bf16 autocast (accelerate)" if cuda else "fp32",
           "sequences_per_step": N, "micro_batch": args.micro_batch, "prompt_len": L, "completion_len": T,
           "logprob_chunk_size": args.chunk_size, "steps_timed": len(steps), "step_s": round(secs / len(steps), 3),
           "tokens_per_s": round(toks / secs, 1), "train_tflops": round(flops / 1e12, 2),
           "mfu_vs_989_tflops": round(flops / 989e12, 3) if cuda else None,
           "finite": all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in steps),
           "steps": steps,
           "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None}
    if not out["finite"]:
        raise RuntimeError(f"non-finite loss or grad_norm: {steps}")
    return out


def markdown(res: dict) -> str:
    e = res["sections"].get("env", {})
    lines = [f"# GPU check ({res['date']}, commit {res['commit']})", "",
             f"device: {e.get('gpu', 'cpu')}, torch {e.get('torch')}, transformers {e.get('transformers')}, "
             f"accelerate {e.get('accelerate')}, bf16 {e.get('bf16_supported')}", "",
             "| check | result |", "| --- | --- |"]
    for name, sec in res["sections"].items():
        if "error" in sec:
            lines.append(f"| {name} | FAILED: {sec['error'].splitlines()[0][:200]} |")
    r = res["sections"].get("recipe", {})
    if "error" not in r and r:
        s = r.get("summary", {})
        lines.append(f"| recipe ({r['mixed_precision']}) | {r['steps_logged']} steps, loss/grad_norm finite: "
                     f"{r['finite']}, held-out {s.get('heldout_n')}: {s.get('heldout_before')} -> "
                     f"{s.get('heldout_after')}, {s.get('samples_per_s')} samples/s, wall {r['wall_s']} s |")
    ro = res["sections"].get("rollout", {})
    if "error" not in ro and ro:
        lines.append(f"| HF rollout, {ro['model']} ({ro['dtype']}) | {ro['prompts']} prompts x "
                     f"{ro['samples_per_prompt']} x {ro['new_tokens']} new tokens: "
                     f"{ro['tokens_per_s']:.0f} tokens/s ({ro['seconds']} s), peak {ro['peak_mem_gib']} GiB |")
    tr = res["sections"].get("train", {})
    if "error" not in tr and tr:
        lines.append(f"| train step, {tr['model']} ({tr['precision']}) | {tr['sequences_per_step']} x "
                     f"({tr['prompt_len']}+{tr['completion_len']}) tokens/step, micro-batch {tr['micro_batch']}: "
                     f"{tr['tokens_per_s']:.0f} tokens/s, {tr['step_s']} s/step, {tr['train_tflops']} TFLOP/s, "
                     f"peak {tr['peak_mem_gib']} GiB |")
    missing = [k for k, v in e.get("imports", {}).items() if str(v).startswith("MISSING")]
    lines += ["", f"imports missing: {', '.join(missing) or 'none'}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="CPU-sized everything (tiny shapes, few tokens)")
    p.add_argument("--out-dir", default=".")
    p.add_argument("--sections", default="env,recipe,rollout,train")
    p.add_argument("--size", default=None, help="gpu_step.SIZES key (default qwen2.5-0.5b; --smoke: tiny)")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--rollout-repeats", type=int, default=2)
    p.add_argument("--train-seqs", type=int, default=128)
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--chunk-size", type=int, default=512)
    p.add_argument("--train-steps", type=int, default=3)
    p.add_argument("--train-warmup", type=int, default=1)
    p.add_argument("--recipe-steps", type=int, default=5)
    p.add_argument("--recipe-eval", type=int, default=200)
    p.add_argument("--recipe-timeout", type=int, default=240)
    args = p.parse_args(argv)
    if args.smoke:
        args.size = args.size or "tiny"
        args.prompts, args.samples, args.prompt_len, args.new_tokens = 2, 2, 8, 8
        args.rollout_repeats, args.train_seqs, args.micro_batch, args.chunk_size = 1, 4, 2, 16
        args.train_steps, args.train_warmup, args.recipe_steps, args.recipe_eval = 1, 0, 1, 4
    args.size = args.size or "qwen2.5-0.5b"
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    commit = os.environ.get("GPU_CHECK_COMMIT")  # a copy of the checkout may have no .git (gpu_bundle.sh sets it)
    if not commit:
        try:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                    text=True).stdout.strip() or "unknown"
        except OSError:
            commit = "unknown"
    res = {"date": datetime.date.today().isoformat(), "commit": commit, "argv": sys.argv[1:], "smoke": args.smoke,
           "sections": {}}
    funcs = {"env": lambda: env_section(), "recipe": lambda: recipe_section(args, out_dir),
             "rollout": lambda: rollout_section(args, device), "train": lambda: train_section(args, device)}
    for name in args.sections.split(","):
        t0 = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            res["sections"][name] = funcs[name]()
        except Exception as e:  # noqa: BLE001 - record and go on to the next check
            traceback.print_exc()
            res["sections"][name] = {"error": f"{type(e).__name__}: {e}"}
        res["sections"][name]["section_s"] = round(time.perf_counter() - t0, 1)
        (out_dir / "gpu_check.json").write_text(json.dumps(res, indent=2))  # partial results survive a timeout
    (out_dir / "gpu_check.md").write_text(markdown(res))
    print(markdown(res), flush=True)
    return 1 if any("error" in s for s in res["sections"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
