"""Peak memory and time of the policy log-prob pass: full logits vs the chunked LM head.

A randomly initialised Qwen2 (nothing downloaded) with Qwen2.5's real vocabulary (151,936
tokens, tied embeddings) and a small backbone, so the logits dominate as they do for
0.5B-7B models, on a realistic micro-batch of random token ids. One pass = the trainer's
policy forward (``completion_logprobs`` with entropy, as ``GRPOTrainer.update`` calls it)
plus the backward of a policy-gradient loss. Each variant runs in a fresh subprocess.

Memory: on CPU, the growth of the process's peak RSS (``ru_maxrss``) over its value after
the model, its gradients' buffers and the batch exist, i.e. what the pass itself adds at its
peak. On a GPU, ``torch.cuda.max_memory_allocated`` over the allocation before the pass.
Time: the median of ``--repeats`` passes after the first (which sets the peak).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/logprob_memory.py [--batch 8 --prompt 64 --completion 512]

Prints a markdown table; docs/benchmarks.md records a run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

QWEN25_VOCAB = 151_936


def worker(args: argparse.Namespace) -> dict:
    """One variant in this process: build, measure the baseline, run the passes."""
    import resource

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rlreason.data.batching import pack
    from rlreason.loop.logprobs import completion_logprobs

    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 4,
                      num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                      num_key_value_heads=max(args.hidden // 256, 1), head_dim=64, tie_word_embeddings=True,
                      max_position_embeddings=args.prompt + args.completion, pad_token_id=0)
    model = Qwen2ForCausalLM(cfg).to(device).train()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, args.vocab, (args.batch, args.prompt + args.completion), generator=g).tolist()
    batch = pack([r[:args.prompt] for r in ids], [r[args.prompt:] for r in ids], 0)
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    adv = torch.randn(args.batch, 1, generator=g).to(device)
    for p in model.parameters():  # gradient buffers exist before the baseline: both variants need them
        p.grad = torch.zeros_like(p)

    def one_pass() -> float:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        logp, ent = completion_logprobs(model, batch, args.temperature, with_entropy=True,
                                        chunk_size=args.chunk_size or None)
        mask = batch["completion_mask"]
        loss = -(logp * adv * mask).sum() / mask.sum()
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    times = [one_pass() for _ in range(args.repeats + 1)]
    out = {"chunk_size": args.chunk_size, "peak_rss_growth_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                                                   - base_rss) / 1024,
           "s_per_pass": statistics.median(times[1:]) if args.repeats else times[0], "device": device.type,
           "params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    if cuda:
        out["cuda_peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", type=int, default=QWEN25_VOCAB)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8, help="sequences per micro-batch")
    ap.add_argument("--prompt", type=int, default=64, help="prompt tokens per sequence")
    ap.add_argument("--completion", type=int, default=512, help="completion tokens per sequence")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--chunk-sizes", default="0,512,2048", help="comma-separated; 0 = full logits")
    ap.add_argument("--repeats", type=int, default=2, help="timed passes after the first")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cpu", action="store_true", help="stay on the CPU even with a GPU")
    ap.add_argument("--worker-chunk-size", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker_chunk_size is not None:
        args.chunk_size = args.worker_chunk_size
        print(json.dumps(worker(args)))
        return

    forwarded = [a for a in sys.argv[1:] if not a.startswith("--chunk-sizes")]
    if "--chunk-sizes" in sys.argv:  # drop its value too
        i = sys.argv.index("--chunk-sizes")
        forwarded = sys.argv[1:i] + sys.argv[i + 2:]
    rows = []
    for cs in (int(c) for c in args.chunk_sizes.split(",")):
        res = subprocess.run([sys.executable, __file__, *forwarded, "--worker-chunk-size", str(cs)],
                             capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        if res.returncode != 0:
            sys.exit(f"chunk size {cs} failed:\n{res.stderr[-3000:]}")
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))

    import torch

    n_tok = args.batch * (args.prompt + args.completion)
    full_logits_mib = n_tok * args.vocab * 4 / 2**20
    print(f"{datetime.date.today()}, {platform.machine()}, {args.threads} thread(s), torch {torch.__version__}, "
          f"device {rows[0]['device']}; model: Qwen2, {args.layers} layers, hidden {args.hidden}, vocab {args.vocab}, "
          f"tied, {rows[0]['params_m']:.0f}M params, fp32; batch {args.batch} x ({args.prompt} prompt + "
          f"{args.completion} completion) tokens; full fp32 logits [N, L, V] = {full_logits_mib:,.0f} MiB\n")
    cuda = "cuda_peak_mib" in rows[0]
    print("| log-prob pass | peak memory growth (MiB) | vs full | s / pass (fwd + bwd) |")
    print("|---|---:|---:|---:|")
    ref = rows[0]["cuda_peak_mib" if cuda else "peak_rss_growth_mib"]
    for r in rows:
        mem = r["cuda_peak_mib" if cuda else "peak_rss_growth_mib"]
        name = "full logits (`logprob_chunk_size: 0`)" if not r["chunk_size"] else \
            f"chunked, `logprob_chunk_size: {r['chunk_size']}`"
        print(f"| {name} | {mem:,.0f} | {mem / ref:.2f}x | {r['s_per_pass']:.2f} |")


if __name__ == "__main__":
    main()
