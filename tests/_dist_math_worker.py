"""Worker for tests/test_distributed_math.py: run as a plain script (one process) or under
``torch.distributed.run`` (several processes, gloo on CPU).

    python tests/_dist_math_worker.py lr --model DIR --out FILE
    python -m torch.distributed.run --nproc_per_node 2 tests/_dist_math_worker.py lr --model DIR --out FILE

``lr``: GRPOTrainer.train() with a linear warmup + decay schedule; the main process writes the
learning rate every step logged (metrics.jsonl), so one process and N processes can be compared.

``forwards``: one GRPOTrainer.update per process on a rollout where the processes hold
different numbers of live groups (skip_zero_advantage_groups on, several micro-batches): every
process writes how many forward passes its policy ran.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

# The LR run: 6 steps x 2 updates = 12 scheduler steps, 3 of warmup.
LR_STEPS, LR_ITERATIONS, LR_WARMUP, LR = 6, 2, 3, 1e-3


def _hash_reward(completions, **kw) -> list[float]:
    from rlreason.rewards import completion_text  # completions are messages for chat-templated prompts

    return [float(int(hashlib.md5(completion_text(c).encode()).hexdigest(), 16) % 3) for c in completions]


def _run_dir(acc, tmp: str) -> Path:
    from accelerate.utils import broadcast_object_list

    run_dir = Path(tmp) / "run"
    if acc.num_processes > 1:  # one folder for all processes: the main process's
        run_dir = Path(broadcast_object_list([str(run_dir)])[0])
    return run_dir


def lr_run(model_dir: str, out: Path) -> None:
    from _configs import demo_config
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlreason.build import assemble
    from rlreason.data import arith_dataset, prepare
    from rlreason.loop.trainer import GRPOTrainer

    acc = Accelerator(cpu=True)
    tok = AutoTokenizer.from_pretrained(model_dir)
    train = prepare(arith_dataset(32, 0, "train"), tokenizer=tok)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = _run_dir(acc, tmp)
        cfg = demo_config(output_dir=str(run_dir), seed=0, max_steps=LR_STEPS, num_iterations=LR_ITERATIONS,
                          lr_scheduler_type="linear", warmup_steps=LR_WARMUP, learning_rate=LR, num_generations=2,
                          per_device_train_batch_size=2, gradient_accumulation_steps=1, max_completion_length=8,
                          reward_num_workers=0, eval_steps=0, save_steps=0, final_eval_size=0,
                          log_completions_steps=0, progress=False)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        trainer = GRPOTrainer(cfg, assemble(cfg, model, tok, train, [_hash_reward], accelerator=acc))
        trainer.train()
        if acc.is_main_process:
            rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
            out.write_text(json.dumps({"world": acc.num_processes,
                                       "lr": [r["lr"] for r in rows if "lr" in r]}))
        acc.wait_for_everyone()
    acc.end_training()


# The forward-count run: 8 prompts x 2 samples per step over all processes, two micro-batches per
# process (2 processes: two groups per micro-batch), two updates per rollout. The prompts at these
# positions of the step's global batch have no signal (flat groups, skipped): with 2 processes,
# process 0 keeps 3 groups (micro-batches of 2 and 1), process 1 keeps 1 (one micro-batch, half full).
FW_PROMPTS, FW_G, FW_MICRO, FW_FLAT = 8, 2, 2, (3, 5, 6, 7)


def _alternating(prompts, completions, **kw) -> list[float]:
    """0, 1, 0, 1, ...: every group has signal (advantages +-1), whatever was sampled."""
    return [float(i % 2) for i in range(len(completions))]


def forwards_run(model_dir: str, out: Path) -> None:
    """One step with the flat groups of FW_FLAT skipped: the processes keep different numbers of
    groups, and micro-batches that are not full."""
    from _configs import demo_config
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlreason.build import assemble
    from rlreason.data import arith_dataset, prepare
    from rlreason.loop.trainer import GRPOTrainer

    acc = Accelerator(cpu=True)
    world = acc.num_processes
    tok = AutoTokenizer.from_pretrained(model_dir)
    train = prepare(arith_dataset(32, 0, "train"), tokenizer=tok)
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(0 * 100_003 + 0))
    flat = {train[int(perm[i])]["prompt"] for i in FW_FLAT}

    def reward(prompts, completions, **kw) -> list[float]:
        return [0.0 if p in flat else r for p, r in zip(prompts, _alternating(prompts, completions), strict=True)]

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = _run_dir(acc, tmp)
        cfg = demo_config(output_dir=str(run_dir), seed=0, max_steps=1, num_iterations=2, num_generations=FW_G,
                          per_device_train_batch_size=FW_PROMPTS * FW_G // world // FW_MICRO,
                          gradient_accumulation_steps=FW_MICRO, max_completion_length=12, learning_rate=1e-4,
                          generation_seed_per_prompt=True, skip_zero_advantage_groups=True, reward_num_workers=0,
                          rewards_plain_text=True,  # the reward matches prompts as text
                          eval_steps=0, save_steps=0, final_eval_size=0, log_completions_steps=0, progress=False)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        trainer = GRPOTrainer(cfg, assemble(cfg, model, tok, train, [reward], accelerator=acc))
        ro = trainer.collect()
        calls: list[int] = []
        core = acc.unwrap_model(trainer.model).model
        handle = core.register_forward_pre_hook(lambda *a: calls.append(1))
        metrics = trainer.update(ro)
        handle.remove()
        forwards = acc.gather(torch.tensor([len(calls)])).tolist()
        live = acc.gather(torch.tensor([int(ro.advantages.view(-1, FW_G).ne(0).any(1).sum())])).tolist()
        # each process's loss is its share of DDP's averaged objective (the trainer's _reduce averages it)
        loss = acc.gather(torch.tensor([metrics["loss"]], dtype=torch.float64)).mean().item()
        if acc.is_main_process:
            out.write_text(json.dumps({"world": world, "forwards": forwards, "live_groups": live,
                                       "loss": loss, "grad_norm": metrics["grad_norm"],
                                       "skipped_groups_frac": metrics["skipped_groups_frac"]}))
        acc.wait_for_everyone()
        trainer.close()
    acc.end_training()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["lr", "forwards"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    {"lr": lr_run, "forwards": forwards_run}[args.mode](args.model, args.out)
    if torch.distributed.is_initialized():  # a clean exit: no gloo teardown at interpreter shutdown
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
