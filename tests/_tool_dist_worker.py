"""Worker for tests/test_tool_trainer.py's two-process test: run as a plain script (one process) or
under ``torch.distributed.run`` (two, gloo on CPU).

    python tests/_tool_dist_worker.py --model DIR --out FILE

Trains two steps with tools (the real ToolExecutor, a scripted engine whose turns are a function of
the prompt and its seed) with the global batch fixed (per-device sizes divided by the process
count) and seeded per-prompt generation, so both runs roll out the same exchanges. The main process
saves the initial and final weights and the logged metrics; every process checks that all hold the
same weights.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

torch.set_num_threads(1)

GLOBAL_PROMPTS, G = 4, 2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    from _configs import demo_config
    from accelerate import Accelerator
    from accelerate.utils import broadcast_object_list
    from test_tool_loop import TOOL_TEMPLATE
    from test_tool_trainer import ScriptedEngine, answer_reward, dataset, mul
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlreason.build import assemble
    from rlreason.data import prepare
    from rlreason.loop.distributed import full_state_dict
    from rlreason.loop.trainer import GRPOTrainer
    from rlreason.rollout.tools import ToolExecutor

    acc = Accelerator(cpu=True)
    world = acc.num_processes
    tok = AutoTokenizer.from_pretrained(args.model)
    tok.chat_template = TOOL_TEMPLATE
    train = prepare(dataset(), tokenizer=tok)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        if world > 1:
            run_dir = Path(broadcast_object_list([str(run_dir)])[0])
        cfg = demo_config(output_dir=str(run_dir), seed=0, max_steps=2, num_generations=G,
                          per_device_train_batch_size=GLOBAL_PROMPTS * G // world, gradient_accumulation_steps=1,
                          max_completion_length=200, learning_rate=1e-3, generation_seed_per_prompt=True,
                          reward_num_workers=0, eval_steps=0, save_steps=0, final_eval_size=0,
                          log_completions_steps=0, progress=False, loss_type="dapo", beta=0.04)
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, max_position_embeddings=1024)
        executor = ToolExecutor([mul], num_workers=1, timeout_s=10.0)
        trainer = GRPOTrainer(cfg, assemble(cfg, model, tok, train, [answer_reward], engine=ScriptedEngine(tok),
                                            tools=executor, accelerator=acc))
        before = full_state_dict(trainer.model, acc)
        trainer.train()
        after = full_state_dict(trainer.model, acc)
        trainer.close()
        flat = torch.cat([v.flatten() for v in after.values()]).to(acc.device)
        spread = (acc.gather(flat.unsqueeze(0)) - flat).abs().max().item()
        if acc.is_main_process:
            metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
            torch.save({"world": world, "before": before, "after": after, "spread": spread, "metrics": metrics},
                       args.out)
        acc.wait_for_everyone()
    acc.end_training()


if __name__ == "__main__":
    main()
