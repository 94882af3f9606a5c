"""The trainer's rollout path with tools (issue 32): GRPOTrainer with the real ToolExecutor (worker
processes), environments with get_reward and a failing reset, rewards that see the exchange, the
update, async rollouts with a tool batch in flight resumed exactly, and rollout_func.

The engine is scripted (the tiny model does not call tools): a RolloutEngine whose turns are a
function of (prefix, seed), so runs are deterministic; everything else is the real trainer."""

from __future__ import annotations

import re
import sys

import datasets
import pytest
import torch
from _configs import demo_config
from accelerate import Accelerator
from test_tool_loop import TOOL_TEMPLATE, call
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlreason.build import assemble
from rlreason.data import prepare
from rlreason.loop.async_rollout import PENDING_ROLLOUT
from rlreason.loop.trainer import GRPOTrainer
from rlreason.rollout.base import Sample
from rlreason.rollout.tools import ToolExecutor

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the tool workers are Linux-first")

EOS = "<|im_end|>"


def mul(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: the first factor
        b: the second factor
    """
    return a * b


class Calculator:
    """An environment: reset adds a hint to the prompt, mul is its tool, get_reward says whether it was used.
    A row whose answer is "reset-fails" cannot be reset."""

    def reset(self, **row) -> str:
        if row.get("answer") == "reset-fails":
            raise RuntimeError("no calculator for this one")
        self.used = False
        return " (a calculator is at hand)"

    def times(self, a: int, b: int) -> int:
        """Multiply two integers.

        Args:
            a: the first factor
            b: the second factor
        """
        self.used = True
        return a * b

    def get_reward(self) -> float:
        return 1.0 if self.used else 0.0


class ScriptedEngine:
    """Sample j of a prompt calls the tool (``tool``) when (seed + j) is even, else answers 150; after a
    tool answer it states the answer it read. Token ids as the tokenizer reads the text, log-prob -1."""

    def __init__(self, tokenizer, tool: str = "mul") -> None:
        self.tok, self.tool, self.calls = tokenizer, tool, []

    def generate(self, prompts, n, sampling, seeds=None):
        self.calls.append((prompts, n, seeds))
        out = []
        for i, p in enumerate(prompts):
            text = self.tok.decode(p)
            group = []
            for j in range(n):
                seed = (seeds[i] if seeds is not None else 0) + j
                answered = re.findall(r"<tool_response>\n(.*?)\n</tool_response>", text)
                if answered:
                    reply = f"The answer is {answered[-1]}." + EOS
                else:
                    a, b = map(int, re.findall(r"What is (\d+) times (\d+)", text)[-1])
                    reply = call(self.tool, a=a, b=b) + EOS if seed % 2 == 0 else "The answer is 150." + EOS
                ids = self.tok(reply, add_special_tokens=False)["input_ids"][:sampling.max_tokens]
                reason = "stop" if ids[-1] == self.tok.eos_token_id else "length"
                group.append(Sample(ids, self.tok.decode(ids, skip_special_tokens=True), [-1.0] * len(ids), reason))
            out.append(group)
        return out

    def load_weights(self, named_tensors) -> None:
        for _ in named_tensors:
            pass

    def close(self) -> None:
        pass


SEEN: list[dict] = []  # what the reward was called with (reward_num_workers: 0, in this process)


def answer_reward(prompts, completions, answer, **kw) -> list[float]:
    SEEN.append({"prompts": prompts, "completions": completions})
    return [1.0 if re.search(rf"answer is {a}\.", c[-1]["content"]) else 0.0 for c, a in zip(completions, answer,
                                                                                          strict=True)]


def dataset(answers: list[str] | None = None) -> datasets.Dataset:
    pairs = [(12, 13), (21, 11), (14, 15), (31, 3)]
    return datasets.Dataset.from_list([
        {"prompt": [{"role": "user", "content": f"What is {a} times {b}?"}],
         "answer": answers[k] if answers else str(a * b)} for k, (a, b) in enumerate(pairs)])


def trainer(tiny_path, tmp_path, executor, name="run", answers=None, **overrides) -> GRPOTrainer:
    cfg = demo_config(output_dir=str(tmp_path / name), **{
        "num_generations": 2, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1,
        "max_completion_length": 200, "learning_rate": 1e-3, "max_steps": 2, "eval_steps": 0, "save_steps": 0,
        "progress": False, "log_completions_steps": 0, "final_eval_size": 0, "reward_num_workers": 0,
        "generation_seed_per_prompt": True, **overrides})
    tok = AutoTokenizer.from_pretrained(tiny_path)
    tok.chat_template = TOOL_TEMPLATE
    torch.manual_seed(0)
    # the rendered tool schema makes prompts longer than the tiny model's 192 positions; its rotary
    # embedding does not depend on the setting
    model = AutoModelForCausalLM.from_pretrained(tiny_path, max_position_embeddings=1024)
    train = prepare(dataset(answers), tokenizer=tok)
    engine = ScriptedEngine(tok, "times" if executor.factories else "mul")
    return GRPOTrainer(cfg, assemble(cfg, model, tok, train, [answer_reward], engine=engine, tools=executor,
                                     accelerator=Accelerator(cpu=True)))


def test_a_tool_step_runs_the_tools_scores_the_exchange_and_trains(tiny_path, tmp_path):
    SEEN.clear()
    tr = trainer(tiny_path, tmp_path, ToolExecutor([mul], num_workers=1, timeout_s=5.0))
    ro = tr.collect()
    first_prompts = tr.engine.calls[0][0]
    assert all("<tools>" in tr.tokenizer.decode(p) and '"name": "mul"' in tr.tokenizer.decode(p) for p in first_prompts)
    callers = [s for s in ro.samples if s.tool_stats["calls"]]
    assert callers and len(callers) < len(ro.samples)  # some called, some answered in their head
    for s in ro.samples:
        assert len(s.loss_mask) == len(s.token_ids) == len(s.logprobs)
        assert s.tool_stats["masked_tokens"] == s.loss_mask.count(0)
    for s in callers:
        roles = [m["role"] for m in s.messages]
        assert roles == ["assistant", "tool", "assistant"] and s.messages[1]["name"] == "mul"
        a, b = s.messages[0]["tool_calls"][0]["function"]["arguments"].values()
        assert s.messages[1]["content"] == str(a * b) and s.messages[2]["content"] == f"The answer is {a * b}."
    # the reward saw the exchanges as TRL's conversational completions, and scored the tool users right
    assert SEEN[-1]["completions"] == [s.messages for s in ro.samples]
    assert ro.per_func["answer_reward"].tolist() == [1.0 if s.tool_stats["calls"] else 0.0 for s in ro.samples]
    assert ro.metrics["tools/call_frequency"] == len(callers) / len(ro.samples)
    assert ro.metrics["tools/failure_frequency"] == 0.0 and ro.metrics["tools/calls/mul"] > 0
    # lengths count the model's tokens only
    assert ro.metrics["completion/mean_length"] == sum(sum(s.loss_mask) for s in ro.samples) / len(ro.samples)
    before = {k: v.clone() for k, v in tr.acc.unwrap_model(tr.model).named_parameters()}
    m = tr.update(ro)
    assert m["grad_norm"] > 0 and any(not torch.equal(v, before[k])
                                      for k, v in tr.acc.unwrap_model(tr.model).named_parameters())
    tr.close()


def test_an_environment_reward_is_a_column_and_a_failed_reset_is_unknown(tiny_path, tmp_path):
    SEEN.clear()
    executor = ToolExecutor(environment_factory=Calculator, num_workers=1, timeout_s=5.0)
    tr = trainer(tiny_path, tmp_path, executor, answers=["156", "reset-fails", "210", "93"])
    ro = tr.collect()
    # the reset's observation is appended to the last user message, in the prompt and in the rewards' prompts
    assert SEEN[-1]["prompts"][0][-1]["content"] == "What is 12 times 13? (a calculator is at hand)"
    env = ro.per_func["Calculator"]
    for i, s in enumerate(ro.samples):
        if i // 2 == 1:  # the row whose reset fails: no tool ran, the reward is unknown
            assert s.error is not None and "no calculator" in s.error and s.tool_stats["calls"] == 0
            assert ro.failed[i] and torch.isnan(ro.rewards[i]) and torch.isnan(env[i])
        else:
            assert s.error is None and not ro.failed[i]
            assert env[i].item() == (1.0 if s.tool_stats["calls"] else 0.0)  # get_reward, weight 1
            assert ro.rewards[i].item() == ro.per_func["answer_reward"][i].item() + env[i].item()
    assert ro.metrics["tools/reset/failures"] == 2.0 and ro.metrics["rewards/Calculator/failures"] == 2.0
    assert "tools/calls/times" in ro.metrics
    tr.update(ro)  # the unknown ones are out of the loss: it trains on the rest
    tr.close()


def test_async_tool_batch_in_flight_resumes_exactly(tiny_path, tmp_path):
    """async_rollouts: the checkpoint after step 2 holds step 3's tool batch in flight; a run resumed
    from it ends with the uninterrupted run's weights, bit for bit."""
    def run(name: str, **kw) -> dict[str, torch.Tensor]:
        tr = trainer(tiny_path, tmp_path, ToolExecutor([mul], num_workers=1, timeout_s=5.0), name=name,
                     async_rollouts=True, max_steps=3, save_steps=1, **kw)
        tr.train()
        out = {k: v.detach().clone() for k, v in tr.acc.unwrap_model(tr.model).named_parameters()}
        tr.close()
        return out

    straight = run("straight")
    ckpt = tmp_path / "straight" / "checkpoints" / "step-0000002"
    pending = torch.load(ckpt / PENDING_ROLLOUT, weights_only=True)  # the next step's batch, a tool batch
    in_flight = pending["shards"][0]["rollout"]["samples"]
    assert pending["step"] == 2 and any(s["tool_stats"]["calls"] and 0 in s["loss_mask"] for s in in_flight)
    resumed = run("resumed", resume_from_checkpoint=str(ckpt))
    for k, v in straight.items():
        assert torch.equal(resumed[k], v), k


def my_rollout(prompts, trainer):
    """TRL's rollout_func contract: prompt ids, completion ids, log-probs, an env_mask and a column."""
    tok = trainer.processing_class
    out = {"prompt_ids": [], "completion_ids": [], "logprobs": [], "env_mask": [], "source": []}
    for i, p in enumerate(prompts):
        prompt = tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=False)
        model = tok("I ask.", add_special_tokens=False)["input_ids"]
        env = tok(" [env says 42] ", add_special_tokens=False)["input_ids"]
        end = tok(f"The answer is {42 + i % 2}." + EOS, add_special_tokens=False)["input_ids"]
        out["prompt_ids"].append(prompt)
        out["completion_ids"].append(model + env + end)
        out["logprobs"].append([-0.5] * (len(model) + len(env) + len(end)))
        out["env_mask"].append([1] * len(model) + [0] * len(env) + [1] * len(end))
        out["source"].append(f"rollout {i}")
    return out


def test_rollout_func_samples_masks_and_columns(tiny_path, tmp_path):
    SEEN.clear()
    cfg_tok = AutoTokenizer.from_pretrained(tiny_path)
    seen_columns = []

    def reward(completions, source, **kw):
        seen_columns.extend(source)
        return [1.0 if "42." in c[-1]["content"] else 0.0 for c in completions]

    cfg = demo_config(output_dir=str(tmp_path / "rf"), num_generations=2, per_device_train_batch_size=4,
                      gradient_accumulation_steps=1, max_completion_length=60, learning_rate=1e-3, max_steps=1,
                      eval_steps=0, save_steps=0, progress=False, log_completions_steps=0, final_eval_size=0,
                      reward_num_workers=0)
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    train = prepare(dataset(), tokenizer=cfg_tok)
    tr = GRPOTrainer(cfg, assemble(cfg, model, cfg_tok, train, [reward], rollout_func=my_rollout,
                                   accelerator=Accelerator(cpu=True)))
    ro = tr.collect()
    env = cfg_tok(" [env says 42] ", add_special_tokens=False)["input_ids"]
    for s in ro.samples:
        assert s.loss_mask.count(0) == len(env) and s.finish_reason == "stop"
    assert seen_columns == [f"rollout {i}" for i in range(len(ro.samples))]
    assert ro.per_func["reward"].tolist() == [1.0, 0.0] * (len(ro.samples) // 2)
    assert tr.update(ro)["grad_norm"] > 0
    tr.close()


@pytest.mark.slow
def test_two_processes_train_with_tools_as_one_process(tiny_path, tmp_path):
    """Two processes (gloo), each with its own tool executor and half the prompts, make one process's
    update on the same global batch and log its tool metrics."""
    from _launch import ROOT, assert_clean_exit, run

    worker = ROOT / "tests" / "_tool_dist_worker.py"
    one = run([sys.executable, str(worker), "--model", str(tiny_path), "--out", str(tmp_path / "one.pt")])
    assert_clean_exit(one)
    two = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker),
               "--model", str(tiny_path), "--out", str(tmp_path / "two.pt")])
    assert_clean_exit(two)
    r1, r2 = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert (r1["world"], r2["world"], r2["spread"]) == (1, 2, 0.0)
    d1 = torch.cat([(r1["after"][k] - r1["before"][k]).flatten() for k in r1["before"]])
    d2 = torch.cat([(r2["after"][k] - r2["before"][k]).flatten() for k in r1["before"]])
    assert (d1 != 0).float().mean() > 0.9  # the update moved (nearly) every weight
    assert (d2 - d1).norm() <= 1e-4 * d1.norm()  # tests/test_distributed.py's tolerance
    for m1, m2 in zip(r1["metrics"], r2["metrics"], strict=True):
        for key in ("tools/call_frequency", "tools/turns_mean", "tools/masked_tokens_mean", "tools/calls/mul",
                    "completion/mean_length", "reward/mean", "loss"):
            assert m2[key] == pytest.approx(m1[key], rel=1e-4, abs=1e-7), (m1["step"], key)
        assert 0 < m1["tools/call_frequency"] < 1
