"""Rollout speed: the transformers engine vs the colocated vLLM engine, same prompts, same sampling.

Two models: the embedded tiny model, and a randomly initialised model with Qwen2.5-0.5B's
architecture (built from its config values, nothing downloaded; the tiny tokenizer's
vocabulary, so the embedding is small but every transformer layer is full size; its random
samples mostly run to ``max_tokens``). Tokens/s counts generated tokens. One engine at a
time; each timed run follows an untimed warm-up call.

    VLLM_CPU_KVCACHE_SPACE=2 .venv-vllm/bin/python benchmarks/rollout_speed.py [--threads 2] [--out FILE]

Writes a markdown table (and prints it); docs/benchmarks.md records a run.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import time

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

QWEN25_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, head_dim=64, max_position_embeddings=32768, rope_theta=1_000_000.0,
                  rms_norm_eps=1e-6, tie_word_embeddings=True)


def build_models(threads: int):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from rlreason.tiny import TinySpec, ensure

    path = ensure(TinySpec())
    tok = AutoTokenizer.from_pretrained(path)
    tiny = AutoModelForCausalLM.from_pretrained(path).eval()
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), bos_token_id=None, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, dtype="float32", **QWEN25_05B)
    big = Qwen2ForCausalLM(cfg).eval()
    big.generation_config.eos_token_id = tok.eos_token_id
    big.generation_config.pad_token_id = tok.pad_token_id
    return tok, {"tiny (0.8M)": tiny, "Qwen2.5-0.5B arch, random (358M)": big}


def prompts_for(tok, n: int) -> list[list[int]]:
    from rlreason.data import arith_dataset
    from rlreason.tiny import prompt_text

    rows = arith_dataset(n, 123, "heldout")
    return [tok(prompt_text(tok, r["prompt"]), add_special_tokens=False)["input_ids"] for r in rows]


def timed(engine, prompts, n, sampling) -> dict:
    engine.generate(prompts[:2], 2, sampling)  # warm-up
    t0 = time.perf_counter()
    groups = engine.generate(prompts, n, sampling)
    dt = time.perf_counter() - t0
    samples = [s for g in groups for s in g]
    toks = sum(len(s.token_ids) for s in samples)
    return {"s": dt, "samples_per_s": len(samples) / dt, "tokens_per_s": toks / dt,
            "mean_len": toks / len(samples)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="also write the markdown table here")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    from rlreason.rollout.base import SamplingConfig
    from rlreason.rollout.hf import HFEngine
    from rlreason.rollout.vllm import VLLMEngine

    tok, models = build_models(args.threads)
    # (prompts, n, max_tokens) per model: the default recipe's group shape on the tiny model,
    # a smaller batch on the 0.5B-size one (CPU time)
    work = {"tiny (0.8M)": (16, 8, 64), "Qwen2.5-0.5B arch, random (358M)": (4, 4, 32)}
    sampling_of = {name: SamplingConfig(max_tokens=w[2], temperature=1.0) for name, w in work.items()}
    rows = []
    for name, model in models.items():
        n_prompts, n, _ = work[name]
        prompts = prompts_for(tok, n_prompts)
        res_hf = timed(HFEngine(model, tok), prompts, n, sampling_of[name])
        t0 = time.perf_counter()
        eng = VLLMEngine(model, tok, seed=0)
        start = time.perf_counter() - t0
        t0 = time.perf_counter()
        eng.load_weights(model.named_parameters())
        sync = time.perf_counter() - t0
        res_vl = timed(eng, prompts, n, sampling_of[name])
        eng.close()
        del eng
        gc.collect()
        for engine, r in (("transformers (HFEngine)", res_hf), ("vLLM (VLLMEngine)", res_vl)):
            rows.append((name, f"{n_prompts}x{n}, {work[name][2]} tok", engine, r))
        rows[-1][3].update(start=start, sync=sync)
        print(rows[-2], rows[-1], flush=True)
    lines = [
        f"Measured {datetime.date.today()} on {platform.processor() or platform.machine()}, "
        f"{args.threads} threads, torch {torch.__version__}, fp32, temperature 1.0.",
        "",
        "| model | prompts x n, max tokens | engine | samples/s | tokens/s | mean length | vLLM start / weight sync |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for name, shape, engine, r in rows:
        extra = f"{r['start']:.1f} s / {r['sync'] * 1000:.0f} ms" if "start" in r else ""
        lines.append(f"| {name} | {shape} | {engine} | {r['samples_per_s']:.1f} | {r['tokens_per_s']:.0f} | "
                     f"{r['mean_len']:.1f} | {extra} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
