"""Distillation: the rejection filter, the dataset's provenance, the token-level reverse-KL
signal against hand-computed values, the tokenizer check, the SFT loss, and both recipe modes
end to end on the real tiny model."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import _recipes
import datasets
import pytest
import torch
from _configs import demo_config
from accelerate import Accelerator
from test_trainer import SMALL
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlreason import algorithms as A
from rlreason.build import assemble
from rlreason.config import ConfigError, DistillConfig, GRPOConfig
from rlreason.data import arith_dataset, prepare
from rlreason.distill import teacher as distill
from rlreason.distill.offline import for_student
from rlreason.loop.sft import SFTTrainer
from rlreason.loop.trainer import GRPOTrainer
from rlreason.rewards import accuracy_reward
from rlreason.rewards.runner import RewardRunner
from rlreason.rollout.base import SamplingConfig
from rlreason.rollout.hf import HFEngine
from rlreason.tiny import build_tokenizer

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------- rejection filter

# 0: verified  1: same text as 0 up to spaces  2: verified, long  3: wrong  4: reward failed  5: verified, short
TEXTS = ["a = 5 so 5", "a = 5  so 5", "a is five, so the answer is 5", "4", "5", "so 5"]
LENGTHS = [5, 6, 9, 1, 1, 3]
REWARDS = [1.0, 1.0, 1.0, 0.0, None, 1.0]


def test_all_correct_keeps_distinct_verified_answers_in_order_up_to_the_cap():
    assert distill.select_completions(TEXTS, REWARDS, LENGTHS, "all_correct") == [0, 2, 5]
    assert distill.select_completions(TEXTS, REWARDS, LENGTHS, "all_correct", max_per_problem=2) == [0, 2]


def test_shortest_correct_and_best_of_k():
    assert distill.select_completions(TEXTS, REWARDS, LENGTHS, "shortest_correct") == [5]
    # best of k: the highest reward; among equal rewards the shortest
    assert distill.select_completions(TEXTS, REWARDS, LENGTHS, "best_of_k") == [5]
    graded = [1.0, 1.0, 1.5, 0.0, None, 1.0]
    assert distill.select_completions(TEXTS, graded, LENGTHS, "best_of_k") == [2]
    # the threshold: only the 1.5 passes at min_reward 1.2; none passes at 2
    assert distill.select_completions(TEXTS, graded, LENGTHS, "all_correct", min_reward=1.2) == [2]
    assert distill.select_completions(TEXTS, graded, LENGTHS, "best_of_k", min_reward=2.0) == []


def test_failed_rewards_never_pass_and_bad_rules_are_named():
    assert distill.select_completions(["x", "y"], [None, math.nan], [1, 1], "all_correct", min_reward=-1e9) == []
    with pytest.raises(ValueError, match="distill_selection"):
        distill.select_completions(TEXTS, REWARDS, LENGTHS, "majority")


def test_rejection_sample_keeps_only_verified_answers_of_the_real_model(tiny_model):
    model, tok = tiny_model
    rows = list(prepare(arith_dataset(12, 3, "train"), tokenizer=tok))
    runner = RewardRunner([accuracy_reward], None, in_process=True)
    sampling = SamplingConfig(max_tokens=40, temperature=1.0)
    records, stats = distill.rejection_sample(HFEngine(model, tok), rows, 6, sampling, runner.score, "all_correct",
                                              1.0, 2, seeds=list(range(12)))
    assert stats.problems == 12 and stats.samples == 72 and stats.kept == len(records) > 0
    assert stats.verified >= stats.kept and stats.problems_kept == len({r["prompt"] for r in records})
    for r in records:
        # every kept answer is correct when scored again, and its ids are what its text came from
        text = r["completion"]
        assert accuracy_reward([r["prompt"]], [r["completion"]], answer=[r["answer"]]) == [1.0]
        assert r["reward"] == 1.0 and r["reward_accuracy_reward"] == 1.0
        assert tok.decode(r["completion_ids"], skip_special_tokens=True) == text
        assert r["prompt_ids"] and 0 < r["pass_rate"] <= 1
    per_problem = {}
    for r in records:
        per_problem.setdefault(r["prompt"], []).append(r)
    for kept in per_problem.values():
        assert len(kept) <= 2  # the cap
        assert len({" ".join(k["completion"].split()) for k in kept}) == len(kept)  # no duplicates
    # seeded per problem: the same problems sampled again in another batching give the same answers
    again, _ = distill.rejection_sample(HFEngine(model, tok), rows[6:] + rows[:6], 6, sampling, runner.score,
                                        "all_correct", 1.0, 2, seeds=list(range(6, 12)) + list(range(6)))
    key = lambda r: (r["prompt"], r["sample_index"], r["completion"])  # noqa: E731
    assert sorted(map(key, again)) == sorted(map(key, records))


# ---------------------------------------------------------------------------- dataset and provenance


def test_dataset_round_trips_with_its_provenance(tmp_path, tiny_model):
    _, tok = tiny_model
    stats = distill.RejectionStats(problems=2, samples=8, verified=3, kept=2, problems_kept=2)
    sampling = SamplingConfig(max_tokens=64, temperature=0.8, top_p=0.95)
    settings = distill.dataset_settings("teacher-dir", tok, sampling, 4, ["accuracy_reward"], [1.0], "best_of_k", 1.0,
                                        None, {"dataset_name": "arith"}, 7)
    prov = distill.make_provenance(settings, stats, 12.34)
    records = [{"prompt": [{"role": "user", "content": "1+1"}], "completion": [{"role": "assistant", "content": "2"}],
                "prompt_ids": [1, 2], "completion_ids": [3, 4], "reward": 1.0, "answer": "2"},
               {"prompt": [{"role": "user", "content": "2+2"}], "completion": [{"role": "assistant", "content": "4"}],
                "prompt_ids": [1, 5], "completion_ids": [6], "reward": 1.0, "answer": "4"}]
    ds = distill.build_dataset(records, prov)
    path = distill.save_dataset(ds, tmp_path / "data")
    loaded, p = distill.load_dataset(path)
    assert p == json.loads(json.dumps(prov)) == json.loads((path / "provenance.json").read_text())
    s = p["settings"]
    assert s["teacher"] == "teacher-dir" and s["samples_per_problem"] == 4 and s["seed"] == 7
    assert s["sampling"] == {"max_tokens": 64, "temperature": 0.8, "top_p": 0.95, "top_k": 0, "stop_token_ids": [],
                             "min_p": 0.0, "repetition_penalty": 1.0, "extra": []}
    assert s["selection"]["rule"] == "best_of_k" and s["rewards"]["names"] == ["accuracy_reward"]
    assert s["tokenizer"] == distill.tokenizer_fingerprint(tok)
    assert p["counts"]["kept"] == 2 and p["sampling_seconds"] == 12.3 and p["rlreason_version"]
    assert loaded.to_list() == ds.to_list()
    # TRL's conversational prompt-completion format
    assert loaded[0]["prompt"][0]["role"] == "user" and loaded[0]["completion"][0]["role"] == "assistant"
    with pytest.raises(ValueError, match="distill_min_reward"):
        distill.build_dataset([], prov)
    with pytest.raises(FileNotFoundError, match="distill_dataset_path"):
        distill.load_dataset(tmp_path / "nothing")


# ---------------------------------------------------------------------------- the token-level signal


def test_teacher_advantages_against_hand_computed_values():
    student = torch.tensor([[-1.0, -2.0, -0.5], [-0.1, -3.0, -1.0]])
    teacher = torch.tensor([[-1.5, -1.0, -9.0], [-0.1, -1.0, -2.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    adv, rkl = A.teacher_advantages(student, teacher, mask)
    # reverse KL per token = log p_student - log p_teacher; the advantage is its negation; 0 off the mask
    assert torch.allclose(rkl, torch.tensor([[0.5, -1.0, 0.0], [0.0, -2.0, 1.0]]))
    assert torch.allclose(adv, torch.tensor([[-0.5, 1.0, 0.0], [0.0, 2.0, -1.0]]))
    # scaled, plus half the verifier's sequence advantage on every completion token
    adv, _ = A.teacher_advantages(student, teacher, mask, kl_coef=2.0, seq_adv=torch.tensor([0.4, -1.0]),
                                  reward_weight=0.5)
    assert torch.allclose(adv, torch.tensor([[-1.0 + 0.2, 2.0 + 0.2, 0.0], [0.0 - 0.5, 4.0 - 0.5, -2.0 - 0.5]]))


def test_per_token_advantages_reach_the_surrogate_token_by_token():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.7]], requires_grad=True)
    adv = torch.tensor([[0.3, -2.0], [1.0, 0.0]])
    loss, clipped = A.token_surrogate(logp, logp.detach(), adv, 0.2, 0.2)
    loss.sum().backward()
    # at ratio 1 (on-policy) d loss_t / d logp_t = -A_t: each token gets its own advantage
    assert torch.allclose(logp.grad, -adv) and not clipped.any()


def test_the_expected_update_is_the_gradient_of_the_reverse_kl():
    """Over the student's own samples, the surrogate with teacher advantages has, in expectation,
    exactly the gradient of KL(student || teacher): enumerate a 6-token vocabulary, weight each
    token's gradient by its probability, compare with autograd of the closed-form KL."""
    torch.manual_seed(0)
    theta = torch.randn(6, requires_grad=True)
    teacher_logp = torch.log_softmax(torch.randn(6), -1)
    expected = torch.zeros(6)
    for x in range(6):
        logp = torch.log_softmax(theta, -1)[x].reshape(1, 1)
        adv, _ = A.teacher_advantages(logp.detach(), teacher_logp[x].reshape(1, 1), torch.ones(1, 1))
        loss, _ = A.token_surrogate(logp, logp.detach(), adv, 0.2, 0.2)
        (g,) = torch.autograd.grad(loss.sum(), theta)
        expected += torch.softmax(theta, -1)[x].detach() * g
    p = torch.log_softmax(theta, -1)
    (kl_grad,) = torch.autograd.grad((p.exp() * (p - teacher_logp)).sum(), theta)
    assert torch.allclose(expected, kl_grad, atol=1e-6)


def _perturbed_copy(model, scale: float, seed: int):
    teacher = AutoModelForCausalLM.from_pretrained(model.name_or_path)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * p.std().nan_to_num(0.02))
    return teacher.eval()


def _nll_tokens(model, prompt_ids, completion_ids) -> torch.Tensor:
    """Log-probs of a completion's tokens from one plain forward of [prompt | completion]. [T]"""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1:-1]
    return torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(completion_ids)[:, None])[:, 0]


def test_trainer_reverse_kl_metric_equals_a_hand_computation(tiny_path, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_path)
    student = AutoModelForCausalLM.from_pretrained(tiny_path)
    teacher = _perturbed_copy(student, 0.3, 1)
    cfg = demo_config(output_dir=str(tmp_path / "run"), teacher_model_name_or_path="perturbed",
                      **{**SMALL, "learning_rate": 1e-9})
    train = prepare(arith_dataset(64, 0, "train"), tokenizer=tok)
    tr = GRPOTrainer(cfg, assemble(cfg, student, tok, train, [accuracy_reward], accelerator=Accelerator(cpu=True),
                                   teacher=teacher))
    torch.manual_seed(0)
    ro = tr.collect()
    m = tr.update(ro)
    s_lp = [_nll_tokens(tr.acc.unwrap_model(tr.model), p, s.token_ids) for p, s in zip(ro.prompt_ids, ro.samples,
                                                                                       strict=True)]
    t_lp = [_nll_tokens(teacher, p, s.token_ids) for p, s in zip(ro.prompt_ids, ro.samples, strict=True)]
    hand = sum((a - b).sum().item() for a, b in zip(s_lp, t_lp, strict=True)) / sum(len(a) for a in s_lp)
    assert m["distill/reverse_kl"] == pytest.approx(hand, abs=1e-4)
    # the perturbation makes the two models differ token by token (their mean difference can be small either way)
    assert sum((a - b).abs().sum().item() for a, b in zip(s_lp, t_lp, strict=True)) / sum(map(len, s_lp)) > 0.02


def _exact_reverse_kl(student, teacher, seqs) -> float:
    """KL(student || teacher) over the whole vocabulary at every completion position of fixed
    sequences, averaged over positions: a noiseless measure of how far apart the two are."""
    total, n = 0.0, 0
    with torch.no_grad():
        for prompt, completion in seqs:
            ids = torch.tensor([prompt + completion])
            ls = torch.log_softmax(student(input_ids=ids).logits[0, len(prompt) - 1:-1], -1)
            lt = torch.log_softmax(teacher(input_ids=ids).logits[0, len(prompt) - 1:-1], -1)
            total += (ls.exp() * (ls - lt)).sum().item()
            n += len(completion)
    return total / n


def test_on_policy_distillation_moves_the_student_towards_the_teacher(tiny_path, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_path)
    teacher = AutoModelForCausalLM.from_pretrained(tiny_path).eval()
    student = _perturbed_copy(teacher, 0.5, 2)
    held = prepare(arith_dataset(16, 9, "heldout"), tokenizer=tok)
    greedy = HFEngine(teacher, tok).generate([r["prompt_ids"] for r in held], 1, SamplingConfig(40, temperature=0))
    seqs = [(r["prompt_ids"], g[0].token_ids) for r, g in zip(held, greedy, strict=True)]
    cfg = demo_config(output_dir=str(tmp_path / "run"), teacher_model_name_or_path="tiny",
                      **{**SMALL, "learning_rate": 1e-4})
    train = prepare(arith_dataset(64, 0, "train"), tokenizer=tok)
    tr = GRPOTrainer(cfg, assemble(cfg, student, tok, train, [accuracy_reward], accelerator=Accelerator(cpu=True),
                                   teacher=teacher))
    torch.manual_seed(0)
    before = _exact_reverse_kl(student, teacher, seqs)
    for _ in range(16):
        tr.update(tr.collect())
        tr.step += 1
    after = _exact_reverse_kl(tr.acc.unwrap_model(tr.model), teacher, seqs)
    # measured: 0.48 -> 0.32 after 8 steps, 0.20 after 16, falling at every step but the first (the
    # 2-thread tiny build of 2026-11-30; the 1-thread one went 0.38 -> 0.09 in 8). The held-out
    # contexts are not the training prompts.
    assert before > 0.2 and after < 0.5 * before, (before, after)


# ---------------------------------------------------------------------------- tokenizer check


def test_a_teacher_with_another_tokenizer_is_refused(tiny_model):
    _, tok = tiny_model
    distill.check_same_tokenizer(tok, AutoTokenizer.from_pretrained(tok.name_or_path), "s", "t")  # same: fine
    other = build_tokenizer(["a different corpus 12+34=46 <answer>46</answer>"] * 10, 300)
    with pytest.raises(ValueError, match="teacher_model_name_or_path.*must share a tokenizer"):
        distill.check_same_tokenizer(tok, other, "student-dir", "teacher-dir")


def test_offline_data_is_re_encoded_for_a_student_with_another_tokenizer(tiny_model):
    _, tok = tiny_model
    other = build_tokenizer(["a different corpus 12+34=46 <think>12+34=46</think><answer>46</answer>"] * 10, 300)
    rows = list(prepare(arith_dataset(3, 1, "train"), tokenizer=tok))
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    records = [{**r, "completion": f"<answer>{r['answer']}</answer>",
                "completion_ids": tok(f"<answer>{r['answer']}</answer>", add_special_tokens=False)["input_ids"] + [eos]}
               for r in rows]
    prov = {"settings": {"tokenizer": distill.tokenizer_fingerprint(tok)}}
    ds = datasets.Dataset.from_list(records)
    cfg = DistillConfig(teacher_model_name_or_path="t")
    assert for_student(ds, prov, cfg, tok) is ds  # same tokenizer: the teacher's ids as they are
    out = for_student(ds, prov, cfg, other)
    for r in out:
        rendered = other.apply_chat_template([{"role": "user", "content": r["prompt"]}], tokenize=False,
                                             add_generation_prompt=True)
        assert r["prompt_ids"] == other(rendered, add_special_tokens=False)["input_ids"]
        assert r["completion_ids"][-1] == other.eos_token_id
        assert other.decode(r["completion_ids"], skip_special_tokens=True) == r["completion"]
    assert out[0]["prompt_ids"] != ds[0]["prompt_ids"]


# ---------------------------------------------------------------------------- SFT


def _sft_dataset(tok, n: int):
    """Arithmetic problems with their gold traces as completions (as a teacher's verified answers)."""
    rows = list(prepare(arith_dataset(n, 5, "train"), tokenizer=tok))
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    out = []
    for r in rows:
        text = f"<think>{r['prompt']}={r['answer']}</think><answer>{r['answer']}</answer>"
        out.append({**r, "completion": text,
                    "completion_ids": tok(text, add_special_tokens=False)["input_ids"] + [eos], "reward": 1.0})
    return datasets.Dataset.from_list(out)


def test_sft_loss_is_the_token_mean_nll_of_the_completions(tiny_path, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    ds = _sft_dataset(tok, 16)
    cfg = demo_config(output_dir=str(tmp_path / "run"), **{**SMALL, "learning_rate": 1e-9,
                                                          "per_device_train_batch_size": 4,
                                                          "gradient_accumulation_steps": 4})
    tr = SFTTrainer(cfg, assemble(cfg, model, tok, ds, [], accelerator=Accelerator(cpu=True), keep_dropout=True))
    ro = tr.collect()
    assert len(ro.samples) == 16 and [s.token_ids for s in ro.samples] != []
    # by hand: one plain forward per example, the completion tokens' NLL, averaged over all tokens
    nll = [-_nll_tokens(model, p, s.token_ids) for p, s in zip(ro.prompt_ids, ro.samples, strict=True)]
    hand = torch.cat(nll).mean().item()
    m = tr.update(ro)  # 4 micro-batches of 4 examples, packed
    assert m["loss"] == pytest.approx(hand, rel=1e-4) and m["clip_frac"] == 0.0


def test_sft_learns_its_data_and_packs_examples(tiny_path, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_path)
    ds = _sft_dataset(tok, 32)
    cfg = demo_config(output_dir=str(tmp_path / "run"), **{**SMALL, "learning_rate": 3e-3,
                                                          "per_device_train_batch_size": 32,
                                                          "pack_max_row_tokens": 256})
    tr = SFTTrainer(cfg, assemble(cfg, AutoModelForCausalLM.from_pretrained(tiny_path), tok, ds, [],
                                     accelerator=Accelerator(cpu=True), keep_dropout=True))
    ro = tr.collect()
    (_, batch), = tr.actor.micro_batches(ro)
    assert batch["input_ids"].shape[0] < 32 / 3  # several examples per packed row
    losses = []
    for _ in range(12):
        losses.append(tr.update(tr.collect())["loss"])
        tr.step += 1
    assert losses[-1] < 0.5 * losses[0], losses
    with pytest.raises(ValueError, match="completion_ids"):
        SFTTrainer(cfg, assemble(cfg, AutoModelForCausalLM.from_pretrained(tiny_path), tok,
                                 ds.remove_columns("completion_ids"), [], accelerator=Accelerator(cpu=True)))


# ---------------------------------------------------------------------------- config


def test_distill_config_errors_name_their_keys():
    with pytest.raises(ConfigError, match="teacher_model_name_or_path"):
        DistillConfig()
    with pytest.raises(ConfigError, match="distill_selection"):
        DistillConfig(teacher_model_name_or_path="t", distill_selection="majority")
    with pytest.raises(ConfigError, match="distill_mode"):
        DistillConfig(teacher_model_name_or_path="t", distill_mode="online")
    with pytest.raises(ConfigError, match="dynamic_sampling"):
        GRPOConfig(teacher_model_name_or_path="t", dynamic_sampling=True)
    with pytest.raises(ConfigError, match="teacher_kl_coef"):
        GRPOConfig(teacher_model_name_or_path="t", teacher_kl_coef=-1.0)


# ---------------------------------------------------------------------------- the recipe, end to end


@pytest.fixture(scope="module")
def teacher_dir(tiny_path, tmp_path_factory) -> Path:
    """A teacher that differs from the student (the tiny model with perturbed weights), saved as a model folder."""
    out = tmp_path_factory.mktemp("teacher")
    _perturbed_copy(AutoModelForCausalLM.from_pretrained(tiny_path), 0.2, 3).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_path).save_pretrained(out)
    return out


def _recipe(tmp_path, tiny_path, teacher_dir, *extra: str) -> dict:
    return _recipes.distill([
        "--config", str(ROOT / "recipes" / "configs" / "distill_onpolicy_tiny.yaml"),
        "--model_name_or_path", str(tiny_path), "--teacher_model_name_or_path", str(teacher_dir),
        "--max_steps", "2", "--per_device_train_batch_size", "16", "--gradient_accumulation_steps", "1",
        "--num_generations", "4", "--max_completion_length", "40", "--final_eval_size", "16", "--eval_steps", "0",
        "--save_steps", "0", "--progress", "false", "--num_threads", "1", "--reward_num_workers", "0",
        "--arith_train_size", "200", *extra])


def test_recipe_on_policy(tmp_path, tiny_path, teacher_dir):
    out = tmp_path / "on"
    s = _recipe(tmp_path, tiny_path, teacher_dir, "--output_dir", str(out))
    assert s["steps"] == 2 and (out / "final_model" / "config.json").exists()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["distill/reverse_kl"] > 0 for r in rows if "loss" in r)


def test_recipe_refuses_a_teacher_with_another_tokenizer(tmp_path, tiny_path, teacher_dir):
    other = tmp_path / "other-teacher"
    shutil.copytree(teacher_dir, other)
    # the same model with a tokenizer trained on another corpus: ids differ
    build_tokenizer(["another corpus: 7*8=56 <answer>56</answer>"] * 10, 300).save_pretrained(other)
    with pytest.raises(ValueError, match="teacher_model_name_or_path.*must share a tokenizer"):
        _recipe(tmp_path, tiny_path, other, "--output_dir", str(tmp_path / "bad"))
    assert not (tmp_path / "bad" / "checkpoints").exists()  # refused before any training


def test_recipe_offline_saves_reuses_and_guards_its_dataset(tmp_path, tiny_path, teacher_dir, capsys):
    data = tmp_path / "data"
    args = ["--distill_mode", "offline", "--distill_num_problems", "12", "--distill_samples_per_problem", "4",
            "--distill_selection", "all_correct", "--distill_dataset_path", str(data)]
    s = _recipe(tmp_path, tiny_path, teacher_dir, "--output_dir", str(tmp_path / "off1"), *args)
    assert s["steps"] == 2 and s["distill"]["examples"] > 0 and s["distill"]["teacher_sampling_s"] > 0
    ds, prov = distill.load_dataset(data)
    assert prov["counts"]["problems"] == 12 and prov["counts"]["samples"] == 48 and prov["counts"]["kept"] == len(ds)
    assert prov["settings"]["teacher"] == str(teacher_dir)
    assert all(r["reward"] >= 1.0 for r in ds)
    # a second run with the same settings reuses the dataset (no sampling) ...
    s2 = _recipe(tmp_path, tiny_path, teacher_dir, "--output_dir", str(tmp_path / "off2"), *args)
    assert s2["distill"]["teacher_sampling_s"] == 0.0 and s2["distill"]["examples"] == len(ds)
    # ... and one with other settings refuses to mix them up, naming what differs
    with pytest.raises(ValueError, match="distill_dataset_path.*selection"):
        _recipe(tmp_path, tiny_path, teacher_dir, "--output_dir", str(tmp_path / "off3"),
                *args[:-3], "best_of_k", "--distill_dataset_path", str(data))
