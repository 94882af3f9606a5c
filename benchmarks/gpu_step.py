"""GRPO steps on a realistic-size, random-initialised model: step time, tokens/s, peak memory
and the training phase's MFU. Needs only torch, transformers and accelerate (plus this
repository's torch-only modules: rlreason.algorithms, rlreason.loop.logprobs, rlreason.rollout.hf).

    python benchmarks/gpu_step.py                       # Qwen2.5-1.5B architecture, bf16, on the GPU
    python benchmarks/gpu_step.py --size tiny --steps 1 # smoke test on CPU (what the test suite runs)

Each step is the trainer's: generate ``num_generations`` samples per prompt with transformers
(one prefill per group), score them, group-normalised advantages, then one optimizer step of
the clipped surrogate over the whole batch in micro-batches, with the chunked log-prob pass.
The model is random, so its answers mean nothing: the reward is a synthetic function of the
sampled tokens (the fraction of even token ids), which gives every group a spread of rewards
and the update real gradients. Prompts are random token ids of a fixed length.

MFU counts the training phase only (forward + backward of the policy over prompt and
completion tokens): 6 * parameters * tokens FLOPs (attention's quadratic term left out, a few
percent at these lengths) over the phase's seconds and the GPU's peak dense bf16 FLOP/s.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from transformers import Qwen2Config, Qwen2ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from rlreason import algorithms as A  # noqa: E402
from rlreason.data.batching import pack  # noqa: E402
from rlreason.loop.logprobs import completion_logprobs, enable_gradient_checkpointing  # noqa: E402
from rlreason.rollout.base import SamplingConfig  # noqa: E402
from rlreason.rollout.hf import HFEngine  # noqa: E402

# Published model configs (config.json values); vocabulary as released.
SIZES = {
    "qwen2.5-1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                         rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True),
    "qwen2.5-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                         rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=32, max_position_embeddings=1024, tie_word_embeddings=True),
}
# Peak dense bf16 tensor FLOP/s, from the vendors' datasheets (no sparsity).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "L4": 121e12,
             "RTX 4090": 165e12, "RTX 3090": 71e12}


class IdTokenizer:
    """Just what the transformers engine needs of a tokenizer: pad/eos ids and decode."""

    def __init__(self, vocab_size: int) -> None:
        self.pad_token_id = vocab_size - 1
        self.eos_token_id = vocab_size - 2

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return " ".join(map(str, ids))


def even_fraction(token_ids: list[int]) -> float:
    return sum(t % 2 == 0 for t in token_ids) / max(len(token_ids), 1)


def peak_flops(name: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def run(args) -> dict:
    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    acc = Accelerator(mixed_precision="bf16" if cuda and not args.fp32 else "no", cpu=not cuda)
    cfg = Qwen2Config(**SIZES[args.size], dtype="float32")
    tok = IdTokenizer(cfg.vocab_size)
    cfg.eos_token_id, cfg.pad_token_id, cfg.bos_token_id = tok.eos_token_id, tok.pad_token_id, None
    model = Qwen2ForCausalLM(cfg)  # fp32 master weights; bf16 autocast from accelerate on the GPU
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    if args.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    model, opt = acc.prepare(model, opt)
    policy = acc.unwrap_model(model)
    engine = HFEngine(policy, tok, max_batch_prompts=args.prompts)
    sampling = SamplingConfig(max_tokens=args.completion_len, temperature=1.0)
    g = torch.Generator().manual_seed(1)
    steps = []
    for step in range(args.warmup + args.steps):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        prompts = torch.randint(0, cfg.vocab_size - 2, (args.prompts, args.prompt_len), generator=g).tolist()
        t0 = time.perf_counter()
        policy.eval()
        with torch.no_grad(), acc.autocast():
            groups = engine.generate(prompts, args.num_generations, sampling)
        if cuda:
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        flat = [s for grp in groups for s in grp]
        rewards = torch.tensor([even_fraction(s.token_ids) for s in flat])
        adv, _ = A.group_advantages(rewards, args.num_generations, scale="group")
        t2 = time.perf_counter()
        model.train()
        prompt_rows = [p for p in prompts for _ in range(args.num_generations)]
        n_tok = 0
        for lo in range(0, len(flat), args.micro_batch):
            part = flat[lo:lo + args.micro_batch]
            batch = pack(prompt_rows[lo:lo + args.micro_batch], [s.token_ids for s in part], tok.pad_token_id)
            batch = {k: v.to(acc.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            n_tok += int(batch["attention_mask"].sum())
            logp, _ = completion_logprobs(model, batch, 1.0, chunk_size=args.chunk_size)
            mask = batch["completion_mask"]
            loss_tok, _ = A.token_surrogate(logp, logp.detach(), adv[lo:lo + len(part)].to(acc.device), 0.2, 0.28,
                                            mask=mask)
            loss = A.aggregate(loss_tok, mask, "token_mean", denom=float(sum(len(s.token_ids) for s in flat)))
            acc.backward(loss)
        acc.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        t3 = time.perf_counter()
        gen_tokens = sum(len(s.token_ids) for s in flat)
        row = {"step": step, "generation_s": t1 - t0, "scoring_s": t2 - t1, "training_s": t3 - t2,
               "step_s": t3 - t0, "samples": len(flat), "generated_tokens": gen_tokens, "trained_tokens": n_tok,
               "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}
        if step >= args.warmup:
            steps.append(row)
        print(json.dumps(row), flush=True)
    name = torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine()
    peak = peak_flops(name, args.peak_tflops) if cuda else None
    train_s = sum(r["training_s"] for r in steps)
    trained = sum(r["trained_tokens"] for r in steps)
    out = {
        "date": datetime.date.today().isoformat(), "device": name, "torch": torch.__version__,
        "size": args.size, "parameters": n_params, "precision": "bf16 autocast" if acc.mixed_precision == "bf16"
        else "fp32", "prompts": args.prompts, "num_generations": args.num_generations,
        "prompt_len": args.prompt_len, "completion_len": args.completion_len, "micro_batch": args.micro_batch,
        "steps": len(steps),
        "step_s": sum(r["step_s"] for r in steps) / len(steps),
        "generation_s": sum(r["generation_s"] for r in steps) / len(steps),
        "training_s": train_s / len(steps),
        "samples_per_s": sum(r["samples"] for r in steps) / sum(r["step_s"] for r in steps),
        "generated_tokens_per_s": sum(r["generated_tokens"] for r in steps) / sum(r["generation_s"] for r in steps),
        "trained_tokens_per_s": trained / train_s,
        "peak_mem_gib": max((r["peak_mem_gib"] or 0.0) for r in steps) if cuda else None,
        "train_tflops": 6 * n_params * trained / train_s / 1e12,
    }
    out["mfu"] = out["train_tflops"] * 1e12 / peak if peak else None
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="qwen2.5-1.5b")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--completion-len", type=int, default=512)
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--chunk-size", type=int, default=512, help="log-prob chunk (0: full logits)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast on the GPU")
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU's peak dense bf16 TFLOP/s for MFU")
    p.add_argument("--out", default=None, help="write the summary JSON here")
    args = p.parse_args(argv)
    res = run(args)
    print(json.dumps(res, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
