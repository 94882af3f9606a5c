"""The vLLM engines on CPU, against the transformers engine on the real tiny model: greedy
outputs token for token, sampler log-probs, weight sync into the repacked CPU kernels, and a
short GRPO run generating with vLLM. Every test runs twice: with the colocated engine (vLLM in
this process) and with the server engine (a real ``rlreason-vllm-serve`` subprocess on
localhost, weights pushed over the gloo transfer backend).

Needs vLLM (skipped without it); run in the vLLM environment (scripts/setup_vllm_cpu.sh):
    VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python -m pytest -q -m vllm tests/test_vllm.py
One engine of each kind is shared by the module (each takes ~10-30 s to start).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache; before the engine starts

import datasets  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from _configs import DEMO, demo_config
from _logprobs import trainer_logprobs  # noqa: E402
from _vllm_server import free_port, running_server  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from rlreason.build import assemble  # noqa: E402
from rlreason.data import arith_dataset, prepare  # noqa: E402
from rlreason.eval.core import heldout_scorer  # noqa: E402
from rlreason.eval.suites import arith_suite  # noqa: E402
from rlreason.loop.trainer import GRPOTrainer  # noqa: E402
from rlreason.lora import merged_named_parameters  # noqa: E402
from rlreason.rewards import accuracy_reward, format_reward  # noqa: E402
from rlreason.rollout.base import RolloutEngine, SamplingConfig  # noqa: E402
from rlreason.rollout.hf import HFEngine  # noqa: E402
from rlreason.rollout.vllm import VLLMEngine, hf_to_vllm_layout  # noqa: E402
from rlreason.rollout.vllm_server import VLLMServerEngine  # noqa: E402
from rlreason.tiny import prompt_text  # noqa: E402

pytestmark = pytest.mark.vllm

QUESTIONS = ["3+4", "47+38-19", "5-9+12-1", "80-7", "1+2+3+4", "12+30", "99-45+3", "7+8+9"]
GREEDY = SamplingConfig(max_tokens=60, temperature=0.0)
# Measured on the tiny model (fp32, oneDNN GEMMs): greedy-token log-probs differ from the HF
# model's by at most 5.5e-6; sampled-token log-probs by about 1e-5.
LOGPROB_ATOL = 1e-4


@pytest.fixture(scope="module")
def tok(tiny_path):
    return AutoTokenizer.from_pretrained(tiny_path)


@pytest.fixture(scope="module")
def prompts(tok):
    return [tok(prompt_text(tok, q), add_special_tokens=False)["input_ids"] for q in QUESTIONS]


@pytest.fixture(scope="module")
def server_url(tiny_path, tmp_path_factory, request):
    """A real vLLM server on localhost, started the way users start it (``rlreason-vllm-serve``);
    a failing test's report ends with its log's tail (tests/_vllm_server.py)."""
    with running_server(tiny_path, tmp_path_factory.mktemp("vllm-server") / "server.log", request.node) as (url, _):
        yield url


@pytest.fixture(scope="module", params=["colocate", "server"])
def engine(request, tiny_path, tok):
    if request.param == "colocate":
        model = AutoModelForCausalLM.from_pretrained(tiny_path).eval()
        eng = VLLMEngine(model, tok, seed=0)  # starts on dummy weights; the model's arrive via load_weights
    else:
        eng = VLLMServerEngine(request.getfixturevalue("server_url"), tok, weight_transfer="gloo",
                               group_port=free_port(), seed=0)
    yield eng
    eng.close()


@pytest.fixture()
def fresh_model(tiny_path, engine):
    """The tiny model, with the engine holding exactly its weights."""
    model = AutoModelForCausalLM.from_pretrained(tiny_path).eval()
    engine.load_weights(model.named_parameters())
    return model


def _assert_kernels_hold(engine, model):
    """The weights vLLM's kernels compute with (linear layers read back through their repacked
    oneDNN weights) equal the HF model's, in vLLM's fused layout. (The server's workers are in
    another process: there the greedy outputs and log-probs after a sync are the check.)"""
    if not isinstance(engine, VLLMEngine):
        return
    got = engine.kernel_weights()
    want = hf_to_vllm_layout({k: v.detach() for k, v in model.named_parameters()}, model.config)
    assert set(want) <= {k.split(":")[0] for k in got}
    for name, w in got.items():
        ref = want[name.split(":")[0]]
        w = w[:ref.shape[0]]  # the vocabulary is padded to a multiple of 64
        torch.testing.assert_close(w, ref, atol=1e-6, rtol=0, msg=lambda m, n=name: f"{n}: {m}")


def test_engine_satisfies_protocol(engine):
    assert isinstance(engine, RolloutEngine)


def test_greedy_equals_hf_engine_token_for_token(engine, fresh_model, tok, prompts):
    hf = HFEngine(fresh_model, tok).generate(prompts, 1, GREEDY)
    vl = engine.generate(prompts, 2, GREEDY)
    assert len(vl) == len(prompts)
    worst = 0.0
    for h, group in zip(hf, vl, strict=True):
        assert len(group) == 2
        for s in group:
            assert s.token_ids == h[0].token_ids  # including the eos that stopped it
            assert s.text == h[0].text
            assert s.finish_reason == h[0].finish_reason == "stop"
            assert s.token_ids[-1] == tok.eos_token_id
            assert len(s.logprobs) == len(s.token_ids)
            worst = max(worst, max(abs(a - b) for a, b in zip(s.logprobs, h[0].logprobs, strict=True)))
    assert worst < LOGPROB_ATOL, worst


def test_sampled_logprobs_match_the_trainers(engine, fresh_model, tok, prompts):
    groups = engine.generate(prompts, 4, SamplingConfig(max_tokens=40, temperature=1.0))
    assert all(len(g) == 4 for g in groups)
    flat, logp = trainer_logprobs(fresh_model, prompts, groups, tok.pad_token_id)
    assert len({tuple(s.token_ids) for s in flat}) > len(prompts)  # n samples of a prompt differ
    for i, s in enumerate(flat):
        n = len(s.token_ids)
        assert len(s.logprobs) == n
        torch.testing.assert_close(torch.tensor(s.logprobs), logp[i, :n], atol=LOGPROB_ATOL, rtol=0)
        if s.finish_reason == "stop":
            assert s.token_ids[-1] == tok.eos_token_id
        else:
            assert n == 40


def test_temperature_and_top_p_logprobs_are_the_sampling_distributions(engine, fresh_model, tok, prompts):
    # logprobs_mode="processed_logprobs": after temperature (top-p 1 keeps the whole distribution)
    groups = engine.generate(prompts[:4], 2, SamplingConfig(max_tokens=30, temperature=0.7))
    flat, logp = trainer_logprobs(fresh_model, prompts[:4], groups, tok.pad_token_id, temperature=0.7)
    for i, s in enumerate(flat):
        torch.testing.assert_close(torch.tensor(s.logprobs), logp[i, :len(s.token_ids)], atol=LOGPROB_ATOL, rtol=0)
    # top-k 1 is greedy; its processed log-probs are all 0
    top1 = engine.generate(prompts[:3], 2, SamplingConfig(max_tokens=30, temperature=1.0, top_k=1))
    greedy = engine.generate(prompts[:3], 1, SamplingConfig(max_tokens=30, temperature=0.0))
    for g, ref in zip(top1, greedy, strict=True):
        for s in g:
            assert s.token_ids == ref[0].token_ids
            assert max(abs(x) for x in s.logprobs) < 1e-5


def test_min_p_repetition_penalty_and_generation_kwargs_reach_vllm(engine, fresh_model, tok, prompts):
    """TRL's repetition_penalty, min_p and generation_kwargs reach vLLM's SamplingParams (colocated) and
    the server's request, change the output, and mean what they mean in the transformers engine."""
    penalised = SamplingConfig(max_tokens=60, temperature=0.0, repetition_penalty=1.5)
    hf = HFEngine(fresh_model, tok).generate(prompts, 1, penalised)
    plain = engine.generate(prompts, 1, GREEDY)
    vl = engine.generate(prompts, 1, penalised)
    assert sum(p[0].token_ids != h[0].token_ids for p, h in zip(plain, hf, strict=True)) >= 2  # it changes answers
    for v, h in zip(vl, hf, strict=True):  # ... as in transformers, and the processed log-probs agree
        assert v[0].token_ids == h[0].token_ids
        assert max(abs(a - b) for a, b in zip(v[0].logprobs, h[0].logprobs, strict=True)) < LOGPROB_ATOL
    # min_p 1 keeps only the most likely token: sampling at temperature 0.7 is then greedy, log-probs 0
    top = engine.generate(prompts[:4], 2, SamplingConfig(max_tokens=40, temperature=0.7, min_p=1.0))
    for g, ref in zip(top, engine.generate(prompts[:4], 1, SamplingConfig(max_tokens=40, temperature=0.0)),
                      strict=True):
        assert [s.token_ids for s in g] == [ref[0].token_ids] * 2
        assert max(abs(x) for s in g for x in s.logprobs) < 1e-5
    # generation_kwargs override the named settings (TRL's rule): repetition_penalty 1.5 from extra
    extra = engine.generate(prompts, 1, SamplingConfig(max_tokens=60, temperature=0.7, min_p=1.0,
                                                       extra=(("repetition_penalty", 1.5),)))
    assert [e[0].token_ids for e in extra] == [h[0].token_ids for h in hf]


def test_open_r1_protocol_gives_vllm_open_r1s_sampling_params(engine, tiny_path):
    """Issue 34: ``--protocol open-r1`` as vLLM receives it: open-r1's README's lighteval run,
    generation_parameters={max_new_tokens:32768,temperature:0.6,top_p:0.95}, top-k off (0 in vLLM 0.32);
    the eval CLI then caps max_tokens at the engine's max_model_len minus the prompt (tests/test_eval_protocols.py)."""
    from rlreason.eval.core import EvalProtocol
    from rlreason.eval.protocols import protocol_fields, resolve_protocol

    if not isinstance(engine, VLLMEngine):
        pytest.skip("the server engine builds its request from the same SamplingConfig fields (_request)")
    sampling = EvalProtocol(**protocol_fields(resolve_protocol("open-r1"))).sampling()
    params = engine.sampling_params(4, sampling, 0)
    assert (params.n, params.temperature, params.top_p, params.top_k, params.max_tokens) == (4, 0.6, 0.95, 0, 32768)
    assert engine.max_model_len == AutoConfig.from_pretrained(tiny_path).max_position_embeddings == 192


def test_length_finish_reason_and_extra_stop_tokens(engine, fresh_model, tok, prompts):
    out = engine.generate(prompts[:2], 1, SamplingConfig(max_tokens=3, temperature=0.0))
    assert all(g[0].finish_reason == "length" and len(g[0].token_ids) == 3 for g in out)
    full = engine.generate(prompts[:1], 1, GREEDY)[0][0]
    stop_at = full.token_ids[4]  # stop on a token the greedy answer contains: it ends there, included
    cut = engine.generate(prompts[:1], 1, SamplingConfig(max_tokens=60, temperature=0.0,
                                                         stop_token_ids=(stop_at,)))[0][0]
    end = full.token_ids.index(stop_at)
    assert cut.token_ids == full.token_ids[:end + 1] and cut.finish_reason == "stop"
    ref = HFEngine(fresh_model, tok).generate(prompts[:1], 1, SamplingConfig(max_tokens=60, temperature=0.0,
                                                                              stop_token_ids=(stop_at,)))[0][0]
    assert cut.token_ids == ref.token_ids and cut.text == ref.text


def test_load_weights_reaches_the_repacked_cpu_kernels(engine, fresh_model, tok, prompts):
    before = HFEngine(fresh_model, tok).generate(prompts, 1, GREEDY)
    _assert_kernels_hold(engine, fresh_model)
    # a training-like change of every weight, big enough to change greedy answers
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in fresh_model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3 * p.std())
    after = HFEngine(fresh_model, tok).generate(prompts, 1, GREEDY)
    assert sum(a[0].token_ids != b[0].token_ids for a, b in zip(before, after, strict=True)) >= 2
    stale = engine.generate(prompts, 1, GREEDY)  # the prefix cache now holds these prompts' KV
    assert [s[0].token_ids for s in stale] == [b[0].token_ids for b in before]
    engine.load_weights(fresh_model.named_parameters())
    synced = engine.generate(prompts, 1, GREEDY)
    assert [s[0].token_ids for s in synced] == [a[0].token_ids for a in after]
    for s, a in zip(synced, after, strict=True):
        assert max(abs(x - y) for x, y in zip(s[0].logprobs, a[0].logprobs, strict=True)) < LOGPROB_ATOL
    # every weight, including the tied LM head's own packed copy, is the new one
    _assert_kernels_hold(engine, fresh_model)


def test_load_weights_rejects_an_incomplete_or_unknown_set(engine, fresh_model):
    with pytest.raises(NotImplementedError):
        engine.load_weights([("model.layers.0.self_attn.q_proj.lora_A.weight", torch.zeros(1))])


def test_lora_policy_reaches_the_engine_as_merged_weights(engine, tiny_path, tok, prompts):
    peft = pytest.importorskip("peft")
    torch.manual_seed(3)
    lora = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_path), peft.LoraConfig(
        r=8, lora_alpha=32, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"], init_lora_weights=False))
    lora.eval()
    with lora.disable_adapter():
        base = HFEngine(lora, tok).generate(prompts, 1, GREEDY)
    want = HFEngine(lora, tok).generate(prompts, 1, GREEDY)
    assert sum(a[0].token_ids != b[0].token_ids for a, b in zip(base, want, strict=True)) >= 2
    engine.load_weights(merged_named_parameters(lora))
    got = engine.generate(prompts, 1, GREEDY)
    assert [g[0].token_ids for g in got] == [w[0].token_ids for w in want]
    for g, w in zip(got, want, strict=True):
        assert max(abs(x - y) for x, y in zip(g[0].logprobs, w[0].logprobs, strict=True)) < LOGPROB_ATOL


def test_sleep_mode(engine, tiny_path, tok):
    if not isinstance(engine, VLLMEngine):
        pytest.skip("sleep mode is the colocated engine's (a server keeps its memory)")
    with pytest.raises(RuntimeError, match="enable_sleep_mode"):
        engine.sleep()
    # vLLM has no sleep mode on CPU: it refuses the option while building its config, before any engine starts
    from vllm.platforms import current_platform

    if not current_platform.is_sleep_mode_available():
        with pytest.raises(ValueError, match="[Ss]leep mode is not supported"):
            VLLMEngine(str(tiny_path), tok, enable_sleep_mode=True)


STEPS, EVAL_N = 20, 300


def _grpo_run(tiny_path, tmp_path, tok, name, engine=None) -> tuple[dict, list[dict], GRPOTrainer]:
    """The default recipe's settings (16 prompts x 8 samples per step, DAPO loss), a short run."""
    cfg = demo_config(output_dir=str(tmp_path / name), seed=0, num_generations=8, per_device_train_batch_size=64,
                      gradient_accumulation_steps=2, max_completion_length=64, temperature=1.0, learning_rate=1e-4,
                      loss_type="dapo", beta=0.0, epsilon=0.2, epsilon_high=0.28, max_steps=STEPS, eval_steps=0,
                      save_steps=0, final_eval_size=EVAL_N, eval_size=EVAL_N, progress=False,
                      log_completions_steps=0, importance_sampling_cap=2.0)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    train = prepare(arith_dataset(2000, 0, "train"), tokenizer=tok)
    eval_rows = list(prepare(datasets.Dataset.from_list(arith_suite(EVAL_N)), tokenizer=tok))
    if engine is not None:
        engine.load_weights(model.named_parameters())  # the engine starts from the policy's weights
    tr = GRPOTrainer(cfg, assemble(cfg, model, tok, train, [accuracy_reward], eval_rows=eval_rows,
                                   eval_accuracy_fn=accuracy_reward, eval_format_fn=format_reward, engine=engine,
                                   accelerator=Accelerator(cpu=True)))
    summary = tr.train()
    rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return summary, [r for r in rows if "loss" in r], tr


@pytest.fixture(scope="module")
def hf_run(tiny_path, tmp_path_factory, tok):
    """The same short run generating with transformers: the reference for both vLLM engines."""
    s_hf, steps_hf, _ = _grpo_run(tiny_path, tmp_path_factory.mktemp("hf"), tok, "hf")
    return s_hf, steps_hf


def test_short_grpo_run_with_vllm_matches_the_hf_engine_run(tiny_path, tmp_path, tok, engine, hf_run):
    s_vl, steps_vl, tr = _grpo_run(tiny_path, tmp_path, tok, "vllm", engine)
    s_hf, steps_hf = hf_run
    assert len(steps_vl) == len(steps_hf) == STEPS
    for r_vl, r_hf in zip(steps_vl, steps_hf, strict=True):
        assert set(r_vl) == set(r_hf)  # the same metrics, whichever engine generated
        assert all(v == v for v in r_vl.values() if isinstance(v, float))  # no NaN
        # pi_old / pi_sampler ~ 1 at every step: vLLM samples from the policy the trainer holds,
        # so each step's weight sync reached the kernels (a stale engine drifts away from 1)
        assert r_vl["is_weight_mean"] == pytest.approx(1.0, abs=2e-3), r_vl["is_weight_mean"]
    assert s_vl["nonfinite_skipped"] == 0
    # the synced engine's held-out eval is the trained policy's own greedy eval
    policy = copy.deepcopy(tr.acc.unwrap_model(tr.model)).eval()
    hf_eval = GRPOTrainer.evaluate(_EvalOnly(tr, HFEngine(policy, tok)), EVAL_N)
    assert hf_eval["eval/correct"] == round(s_vl["heldout_after"] * EVAL_N)
    assert s_vl["heldout_before"] == s_hf["heldout_before"]  # same model, greedy: identical

    def reward(steps, sl):
        return sum(r["reward/mean"] for r in steps[sl]) / len(steps[sl])

    for name, s, st in (("vLLM", s_vl, steps_vl), ("HF", s_hf, steps_hf)):
        print(f"\n{name}: {STEPS} steps in {s['train_time_s']:.0f}s, held-out ({EVAL_N}) {s['heldout_before']:.3f} -> "
              f"{s['heldout_after']:.3f}, batch reward {reward(st, slice(0, 5)):.3f} -> "
              f"{reward(st, slice(-5, None)):.3f}")
    assert s_vl["gain"] > 0 and reward(steps_vl, slice(-5, None)) > reward(steps_vl, slice(0, 5))
    # the two runs differ only in sampling noise: their end points agree within it
    assert abs(s_vl["heldout_after"] - s_hf["heldout_after"]) <= 0.08


class _EvalOnly:
    """Just enough of a trainer for ``GRPOTrainer.evaluate`` with another engine."""

    def __init__(self, tr, engine):
        # the trainer's own scorer closed with it: the same rewards, scored in this process
        self.eval_scorer = heldout_scorer(accuracy_reward, format_reward, in_process=True)
        self.eval_rows, self.acc, self.cfg = tr.eval_rows, tr.acc, tr.cfg
        self.eval_sampling, self.engine, self.trainer_state = tr.eval_sampling, engine, tr.trainer_state
        self.eval_n = tr.eval_n  # answers per held-out problem (num_generations_eval; 1: greedy)
        self.eval_tools = tr.eval_tools  # the run's tools (None here: a single-turn run)


def test_teacher_rejection_sampling_through_vllm(engine, fresh_model, tok):
    """Offline distillation's sampling step (rlreason.distill.teacher) with a vLLM engine as the teacher's."""
    from rlreason.distill.teacher import rejection_sample
    from rlreason.rewards.runner import RewardRunner

    rows = list(prepare(arith_dataset(8, 4, "train"), tokenizer=tok))
    runner = RewardRunner([accuracy_reward], None, in_process=True)
    sampling = SamplingConfig(max_tokens=40, temperature=1.0)
    records, stats = rejection_sample(engine, rows, 4, sampling, runner.score, "all_correct", 1.0, 2,
                                      seeds=list(range(8)))
    assert stats.samples == 32 and stats.kept == len(records) > 0
    for r in records:
        assert r["reward"] == 1.0 and accuracy_reward([r["prompt"]], [r["completion"]], answer=[r["answer"]]) == [1.0]
        assert tok.decode(r["completion_ids"], skip_special_tokens=True) == r["completion"]
    again, _ = rejection_sample(engine, rows, 4, sampling, runner.score, "all_correct", 1.0, 2, seeds=list(range(8)))
    assert [r["completion"] for r in again] == [r["completion"] for r in records]  # seeded per problem


def test_server_engine_refuses_a_mismatched_or_missing_server(engine, tok):
    if not isinstance(engine, VLLMServerEngine):
        pytest.skip("server mode only")
    with pytest.raises(RuntimeError, match="weight-transfer backend 'gloo'.*'nccl'"):
        VLLMServerEngine(engine.base_url, tok, weight_transfer="nccl")
    with pytest.raises(ConnectionError, match="no vLLM server answered.*vllm_server_base_url"):
        VLLMServerEngine(f"http://127.0.0.1:{free_port()}", tok, connect_timeout_s=2)


def test_recipe_yaml_switches_to_server_mode(engine, tmp_path):
    """Last in the module: the recipe's engine takes over the server's weight-transfer group."""
    if not isinstance(engine, VLLMServerEngine):
        pytest.skip("server mode only")
    import _recipes

    engine.close()  # one trainer at a time drives a server's weight transfer
    cfg = tmp_path / "server.yaml"
    # the demo's settings (rlreason's defaults are TRL's: 512-token completions, metrics every 10 steps)
    cfg.write_text(yaml.safe_dump({**DEMO, "use_vllm": True, "vllm_mode": "server",
                                   "vllm_server_base_url": engine.base_url,
                                   "vllm_weight_transfer": "gloo", "vllm_group_port": free_port(),
                                   "importance_sampling_cap": 2.0}))
    out = tmp_path / "run"
    summary = _recipes.grpo(["--config", str(cfg), "--output_dir", str(out), "--max_steps", "6",
                              "--learning_rate", "1e-4", "--eval_steps", "0", "--final_eval_size", "100",
                              "--eval_size", "100", "--save_steps", "0", "--progress", "false"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 6 and summary["steps"] == 6
    # every step sampled from the weights the trainer held: the server was synced each step
    assert all(r["is_weight_mean"] == pytest.approx(1.0, abs=2e-3) for r in steps), [r["is_weight_mean"] for r in steps]
    assert (out / "final_model" / "model.safetensors").exists()


def test_moe_policy_generates_and_its_weight_sync_is_refused(tiny_moe_path):
    """vLLM (CPU MoE backend) serves the tiny Qwen2-MoE from its folder; an in-memory sync of
    expert weights is refused, because after one the engine's log-probs no longer match the
    policy's (docs/moe.md has the measurements)."""
    res = subprocess.run([sys.executable, str(Path(__file__).parent / "_vllm_moe.py"), str(tiny_moe_path)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    print(out)  # greedy agreement and the log-prob gap, for the record (-s)
    assert out["arch"] == "Qwen2MoeForCausalLM"
    assert out["samples"] == 4 * out["greedy_n"]
    assert "mixture-of-experts" in out["sync_refused"]
