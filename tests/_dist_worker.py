"""Worker for tests/test_distributed.py and benchmarks/dist_shutdown.py: run as a plain script
(one process) or under ``torch.distributed.run`` (several processes, gloo on CPU).

    python tests/_dist_worker.py train --model DIR --out FILE [--cases a,b]
    python -m torch.distributed.run --nproc_per_node 2 tests/_dist_worker.py train --model DIR --out FILE
    python -m torch.distributed.run --nproc_per_node 2 tests/_dist_worker.py gather --model DIR --out FILE
    python -m torch.distributed.run --nproc_per_node 2 tests/_dist_worker.py stop --model DIR --out FILE

``train``: for each case, GRPOTrainer.train() for two steps on the tiny model, with the global
batch fixed (per-device sizes divided by the number of processes) and seeded per-prompt
generation, so the rollouts are the same whatever the process count. The main process saves
the initial and final full weights, the logged metrics and the checkpoint's file list;
every process checks that all processes hold the same weights after training.

``stop``: a SIGTERM to one process in the middle of step 2: all abandon it together.

``gather``: wrap the tiny model in DDP, and shard it with FSDP2 (``fully_shard``), and read
the full weights back with ``rlreason.loop.distributed.full_named_parameters``.
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

GLOBAL_PROMPTS = 8  # per step, over all processes
G = 4
MICRO_BATCHES = 2

# name -> config overrides; each is compared between one process and several
CASES: dict[str, dict] = {
    # token mean over the global token count (DAPO) + advantages scaled by the global batch std
    "dapo_batch": dict(loss_type="dapo", scale_rewards="batch"),
    # per-sequence mean over the global sequence count, KL to a reference, two updates per rollout
    "grpo_kl": dict(loss_type="grpo", beta=0.04, num_iterations=2),
    # dynamic sampling leaves the shards unequal (process 1 keeps nothing in step 1) with
    # batch-scaled advantages and the global token count
    "dynamic_uneven": dict(loss_type="dapo", scale_rewards="batch", dynamic_sampling=True, max_resample_rounds=0),
    # overlapped rollouts: step 1's batch generated on each process's rollout thread during update 0
    "async": dict(loss_type="dapo", scale_rewards="batch", async_rollouts=True),
    # TRL 1.16's options that do not depend on how a batch is split: LUSPO's per-sequence sums over the global
    # sequence count, the off-policy sequence mask, two-sided clipping, the ratio-weighted KL, two updates
    "luspo_options": dict(loss_type="luspo", importance_sampling_level="sequence", beta=0.04, num_iterations=2,
                          off_policy_mask_threshold=0.0, delta=1.5, use_bias_correction_kl=True),
}


def _hash_reward(completions, **kw) -> list[float]:
    """0, 1 or 2 from the completion's text: varies within groups of sampled completions."""
    from rlreason.rewards import completion_text

    return [float(int(hashlib.md5(completion_text(c).encode()).hexdigest(), 16) % 3) for c in completions]


def _blocking_reward(blocked: set[str]):
    """The hash reward, but a constant for the prompts in ``blocked`` (no signal: dynamic
    sampling drops their groups)."""
    def reward(prompts, completions, **kw) -> list[float]:
        from rlreason.rewards import completion_text  # the prompt's last (user) message: the raw prompt

        return [1.0 if completion_text(p) in blocked else r
                for p, r in zip(prompts, _hash_reward(completions), strict=True)]
    reward.__name__ = "blocking_reward"
    return reward


def train_cases(model_dir: str, out: Path, cases: list[str]) -> None:
    from _configs import demo_config
    from accelerate import Accelerator
    from accelerate.utils import broadcast_object_list
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlreason.build import assemble
    from rlreason.data import arith_dataset, prepare
    from rlreason.loop.distributed import full_state_dict
    from rlreason.loop.trainer import GRPOTrainer

    acc = Accelerator(cpu=True)
    world = acc.num_processes
    if GLOBAL_PROMPTS % world:
        raise SystemExit(f"{GLOBAL_PROMPTS} prompts per step do not split over {world} processes")
    tok = AutoTokenizer.from_pretrained(model_dir)
    train = prepare(arith_dataset(64, 0, "train"), tokenizer=tok)
    # The second half of step 1's global batch: process 1's shard when two processes run.
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(0 * 100_003 + 0))
    blocked = {train[int(i)]["prompt"] for i in perm[GLOBAL_PROMPTS // 2:GLOBAL_PROMPTS]}
    results = {}
    for case in cases:
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp) / "run"
            if world > 1:  # one folder for all processes: the main process's
                run_dir = Path(broadcast_object_list([str(run_dir)])[0])
            cfg = demo_config(
                output_dir=str(run_dir), seed=0, max_steps=2, num_generations=G,
                per_device_train_batch_size=GLOBAL_PROMPTS * G // world // MICRO_BATCHES,
                gradient_accumulation_steps=MICRO_BATCHES, max_completion_length=24, learning_rate=1e-4,
                generation_seed_per_prompt=True, reward_num_workers=0, eval_steps=0, save_steps=0,
                final_eval_size=0, log_completions_steps=0, progress=False, **CASES[case])
            reward = _blocking_reward(blocked) if case == "dynamic_uneven" else _hash_reward
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
            trainer = GRPOTrainer(cfg, assemble(cfg, model, tok, train, [reward], accelerator=acc))
            before = full_state_dict(trainer.model, acc)
            trainer.train()
            after = full_state_dict(trainer.model, acc)
            # every process must hold the same weights after the update
            flat = torch.cat([v.flatten() for v in after.values()]).to(acc.device)
            spread = (acc.gather(flat.unsqueeze(0)) - flat).abs().max().item()
            if acc.is_main_process:
                ckpt = run_dir / "checkpoints" / "step-0000002"
                results[case] = {
                    "before": before, "after": after, "rank_spread": spread,
                    "metrics": [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()],
                    "checkpoint_files": sorted(p.name for p in ckpt.iterdir()),
                }
            acc.wait_for_everyone()  # the main process's folder outlives the others' reads
            acc.free_memory()  # forget this case's model and optimizer: the next checkpoint holds one
    if acc.is_main_process:
        torch.save({"world": world, "cases": results}, out)
    acc.end_training()


def stop(model_dir: str, out: Path) -> None:
    """A stop signal to the last process only, while it scores step 2: every process abandons step 2
    at the same stop point (a collective), step 1 is checkpointed once, and all exit cleanly."""
    import signal

    from _configs import demo_config
    from accelerate import Accelerator
    from accelerate.utils import broadcast_object_list
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlreason.build import assemble
    from rlreason.data import arith_dataset, prepare
    from rlreason.loop.trainer import GRPOTrainer

    acc = Accelerator(cpu=True)
    world = acc.num_processes
    tok = AutoTokenizer.from_pretrained(model_dir)
    train = prepare(arith_dataset(64, 0, "train"), tokenizer=tok)

    def signalling_reward(completions, trainer_state, **kw) -> list[float]:
        if trainer_state.global_step == 1 and acc.process_index == world - 1:
            os.kill(os.getpid(), signal.SIGTERM)  # in-process reward: this is the trainer
        return _hash_reward(completions)

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(broadcast_object_list([str(Path(tmp) / "run")])[0]) if world > 1 else Path(tmp) / "run"
        cfg = demo_config(
            output_dir=str(run_dir), seed=0, max_steps=3, num_generations=G,
            per_device_train_batch_size=GLOBAL_PROMPTS * G // world // MICRO_BATCHES,
            gradient_accumulation_steps=MICRO_BATCHES, max_completion_length=24, learning_rate=1e-4,
            generation_seed_per_prompt=True, reward_num_workers=0, eval_steps=0, save_steps=0,
            final_eval_size=0, log_completions_steps=0, progress=False, loss_type="dapo")
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        summary = GRPOTrainer(cfg, assemble(cfg, model, tok, train, [signalling_reward], accelerator=acc)).train()
        acc.wait_for_everyone()
        if acc.is_main_process:
            out.write_text(json.dumps({
                "world": world, "steps": summary["steps"], "interrupted": summary["interrupted"],
                "checkpoints": sorted(p.name for p in (run_dir / "checkpoints").iterdir()),
                "logged_steps": [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()
                                 if "loss" in x]}))
        acc.wait_for_everyone()
    acc.end_training()


def gather(model_dir: str, out: Path) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor
    from torch.nn.parallel import DistributedDataParallel
    from transformers import AutoModelForCausalLM

    from rlreason.loop.distributed import full_named_parameters

    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    expected = {k: v.detach().clone() for k, v in reference.named_parameters()}
    ddp = DistributedDataParallel(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32))
    ddp_got = {k: v.clone() for k, v in full_named_parameters(ddp)}  # names lose DDP's "module."
    ddp_ok = sorted(ddp_got) == sorted(expected) and all(torch.equal(ddp_got[k], v) for k, v in expected.items())
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    sharded = sum(isinstance(p, DTensor) for p in model.parameters())
    local = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in model.parameters())
    got = {k: v.clone() for k, v in full_named_parameters(model)}
    worst = max((got[k] - v).abs().max().item() for k, v in expected.items())
    if dist.get_rank() == 0:
        out.write_text(json.dumps({"world": dist.get_world_size(), "sharded": sharded,
                                   "n_params": len(list(model.parameters())), "local_numel": local,
                                   "full_numel": sum(v.numel() for v in expected.values()),
                                   "same_names": sorted(got) == sorted(expected), "max_abs_diff": worst,
                                   "ddp_ok": ddp_ok}))
    dist.barrier()
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["train", "gather", "stop"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--cases", default=",".join(CASES))
    args = ap.parse_args(argv)
    if args.mode in ("train", "stop"):
        if args.mode == "train":
            train_cases(args.model, args.out, args.cases.split(","))
        else:
            stop(args.model, args.out)
        if torch.distributed.is_initialized():  # a clean exit: no gloo teardown at interpreter shutdown
            torch.distributed.destroy_process_group()
    else:
        gather(args.model, args.out)


if __name__ == "__main__":
    sys.exit(main())
