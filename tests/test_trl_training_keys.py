"""TRL 1.16 keys that change the training loop: sync_ref_model, multi_objective_aggregation's wiring,
steps_per_generation / generation_batch_size, num_generations_eval (on the embedded model)."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from test_trainer import _alternating_reward, _varied_reward, make_trainer, one_step, params
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlreason import algorithms as A
from rlreason.build import assemble
from rlreason.config import ConfigError, GRPOConfig, from_dict
from rlreason.data import arith_dataset, prepare
from rlreason.loop.trainer import GRPOTrainer

BASE = dict(num_generations=4, per_device_train_batch_size=8, gradient_accumulation_steps=1, max_completion_length=24,
            learning_rate=1e-3, epsilon=0.2, epsilon_high=0.2, scale_rewards="group", loss_type="dapo",
            num_iterations=1, eval_steps=0, save_steps=0, final_eval_size=0, log_completions_steps=0,
            reward_num_workers=0, progress=False)


def _ref(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.actor.ref_model.named_parameters()}


def test_reference_is_the_mixture_of_policy_snapshots(tiny_path, tmp_path):
    """sync_ref_model with alpha 0.6 every 2 optimizer steps: after 4 steps the reference is
    0.6 * theta_4 + 0.4 * (0.6 * theta_2 + 0.4 * theta_0), computed here from the policy's snapshots."""
    torch.manual_seed(0)
    tr = make_trainer(tiny_path, tmp_path, [_varied_reward], **{**BASE, "beta": 0.05, "sync_ref_model": True,
                                                                  "ref_model_mixup_alpha": 0.6,
                                                                  "ref_model_sync_steps": 2, "max_steps": 4})
    theta = [params(tr)]
    refs = [_ref(tr)]
    for _ in range(4):
        one_step(tr)
        theta.append(params(tr))
        refs.append(_ref(tr))
    for name, t0 in theta[0].items():
        assert torch.equal(refs[1][name], t0)  # step 1: not a multiple of 2
        mixed2 = 0.6 * theta[2][name] + 0.4 * t0
        torch.testing.assert_close(refs[2][name], mixed2, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(refs[3][name], mixed2, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(refs[4][name], 0.6 * theta[4][name] + 0.4 * mixed2, rtol=1e-6, atol=1e-7)
    assert any(not torch.equal(theta[4][n], t) for n, t in theta[0].items())  # the policy moved
    assert tr.actor.ref_sync.optimizer_steps == 4 and tr.actor.ref_sync.syncs == 2


def test_resume_restores_the_mixed_reference_exactly(tiny_path, tmp_path):
    """A run stopped at step 2 (a checkpoint) and resumed ends with the reference of the run that went on."""
    kw = {**BASE, "beta": 0.05, "sync_ref_model": True, "ref_model_sync_steps": 1, "max_steps": 3, "save_steps": 2}
    torch.manual_seed(0)
    full = make_trainer(tiny_path, tmp_path / "a", [_varied_reward], **kw)
    full.train()
    ckpt = tmp_path / "a" / "run" / "checkpoints" / "step-0000002"
    assert (ckpt / "reference_model.pt").is_file()
    resumed = make_trainer(tiny_path, tmp_path / "b", [_varied_reward], **{**kw, "resume_from_checkpoint": str(ckpt)})
    initial = _ref(resumed)
    resumed.train()
    assert resumed.actor.ref_sync.optimizer_steps == 3
    for name, want in _ref(full).items():
        assert torch.equal(_ref(resumed)[name], want), name
    assert any(not torch.equal(initial[n], w) for n, w in _ref(full).items())  # it was not the initial one


def test_sync_ref_model_needs_a_reference():
    base = {"per_device_train_batch_size": 8, "num_generations": 4, "max_steps": 2}
    with pytest.raises(ConfigError, match="config key 'sync_ref_model': needs a reference model"):
        from_dict({**base, "sync_ref_model": True, "beta": 0.0})
    with pytest.raises(ConfigError, match="config key 'sync_ref_model': with use_peft"):
        from_dict({**base, "sync_ref_model": True, "beta": 0.1, "use_peft": True})
    for key, value in (("ref_model_mixup_alpha", 1.5), ("ref_model_sync_steps", 0)):
        with pytest.raises(ConfigError, match=f"config key '{key}'"):
            from_dict({**base, key: value})
    # TRL's defaults load (a full TRL config dump carries them)
    cfg = from_dict({**base, "sync_ref_model": False, "ref_model_mixup_alpha": 0.6, "ref_model_sync_steps": 512})
    assert cfg.sync_ref_model is False


def test_normalize_then_sum_gives_the_advantages_of_the_reward_matrix(tiny_path, tmp_path):
    """multi_objective_aggregation: normalize_then_sum reaches the rollout's advantages: those of the
    step's reward matrix (each reward's column as the rewards returned it) under GDPO, with the weights."""
    torch.manual_seed(0)
    cfg = GRPOConfig(output_dir=str(tmp_path / "run"), **{**BASE, "multi_objective_aggregation": "normalize_then_sum",
                                                           "max_steps": 1})
    tok = AutoTokenizer.from_pretrained(tiny_path)
    train = prepare(arith_dataset(64, 0, "train"), tokenizer=tok)
    tr = GRPOTrainer(cfg, assemble(cfg, AutoModelForCausalLM.from_pretrained(tiny_path), tok, train,
                                   [_varied_reward, _alternating_reward], reward_weights=[1.0, 0.5],
                                   accelerator=Accelerator(cpu=True)))
    ro = tr.collect()
    per_func = torch.stack([ro.per_func["_varied_reward"], ro.per_func["_alternating_reward"]], dim=1)
    assert torch.equal(per_func[:, 1], torch.tensor([float(i % 2) for i in range(len(per_func))], dtype=per_func.dtype))
    want, _ = A.gdpo_advantages(per_func, torch.tensor([1.0, 0.5], dtype=torch.float64), 4)
    torch.testing.assert_close(ro.advantages, want.float())
    summed, _ = tr.compute_advantages(ro.rewards)
    assert not torch.allclose(ro.advantages, summed)  # not the default aggregation's
    tr.close()


# ---------------------------------------------------------------------- steps_per_generation

SPG_CASES = [("dapo", "dapo"), ("grpo", "grpo"), ("bnpo", "bnpo"), ("dr_grpo", "dr_grpo")]


@pytest.mark.parametrize(("preset", "trl_loss"), SPG_CASES)
def test_one_generation_makes_two_optimizer_steps_with_trls_gradients(tiny_path, tmp_path, preset, trl_loss):
    """steps_per_generation = 2 * gradient_accumulation_steps: one rollout batch of 2 micro-batches makes
    two optimizer steps, the first on micro-batch 0, the second on micro-batch 1 (disjoint halves) with
    the old log-probs of the weights that generated it; each step's gradient equals TRL 1.16's
    _compute_loss backward on the same micro-batch at the same weights (its normaliser included:
    num_items_in_batch / num_processes * gradient_accumulation_steps / steps_per_generation)."""
    from datasets import Dataset
    from test_trl_crosscheck import _trl_inputs, update_capturing_steps

    trl = pytest.importorskip("trl")
    micro_size, beta = 4, 0.04
    tok = AutoTokenizer.from_pretrained(tiny_path)
    cfg = GRPOConfig(output_dir=str(tmp_path / "ours"), **{
        **BASE, "loss_type": preset, "beta": beta, "kl_estimator": "k3", "num_generations": 2,
        "per_device_train_batch_size": micro_size, "gradient_accumulation_steps": 1, "steps_per_generation": 2,
        "learning_rate": 2e-5, "max_grad_norm": 1e9, "max_steps": 2, "epsilon": 0.2, "epsilon_high": 0.28})
    assert cfg.completions_per_step == 8 and cfg.optimizer_steps_per_generation == 2
    train = prepare(arith_dataset(64, 0, "train"), tokenizer=tok)
    torch.manual_seed(0)
    ours = GRPOTrainer(cfg, assemble(cfg, AutoModelForCausalLM.from_pretrained(tiny_path), tok, train,
                                     [_alternating_reward], accelerator=Accelerator(cpu=True)))
    ro = ours.collect()
    # every group has a signal: both halves carry a policy gradient (not the KL term's alone)
    assert len(ro.samples) == 8 and ro.advantages.view(-1, 2).ne(0).all()
    metrics, captured = update_capturing_steps(ours, ro)
    assert len(captured) == 2
    assert metrics["ratio/max_abs_log"] > 1e-3  # the second step's ratios left 1 (old = the generating weights)

    args = trl.GRPOConfig(output_dir=str(tmp_path / "trl"), loss_type=trl_loss, beta=beta, epsilon=0.2,
                          epsilon_high=0.28, per_device_train_batch_size=micro_size, gradient_accumulation_steps=1,
                          steps_per_generation=2, num_generations=2,
                          max_completion_length=BASE["max_completion_length"],
                          report_to=[], use_cpu=True, logging_steps=1, bf16=False)  # both: TRL's bias-corrected KL
    trainer = trl.GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_path),
                              reward_funcs=[lambda completions, **kw: [0.0] * len(completions)], args=args,
                              train_dataset=Dataset.from_dict({"prompt": ["1+1"] * 8}), processing_class=tok)
    trainer.current_gradient_accumulation_steps = 1
    model = trainer.model
    micro = [_trl_inputs(ro, range(i, i + micro_size), tok.pad_token_id) for i in (0, micro_size)]
    n_items = sum(b["completion_mask"].sum() for b in micro)  # the whole generation batch, as TRL counts it
    with torch.no_grad():  # old (the generating weights) and reference log-probs, once per generation
        for b in micro:
            ids = torch.cat([b["prompt_ids"], b["completion_ids"]], 1)
            mask = torch.cat([b["prompt_mask"], b["completion_mask"]], 1)
            width = b["completion_ids"].shape[1]
            b["old_per_token_logps"] = trainer._get_per_token_logps_and_entropies(model, ids, mask, width)[0]
            b["ref_per_token_logps"] = trainer._get_per_token_logps_and_entropies(trainer.ref_model, ids, mask,
                                                                                   width)[0]
            b["num_items_in_batch"] = n_items
    model.train()
    errors = []
    for (weights, grads), b in zip(captured, micro, strict=True):  # step s trains on micro-batch s only
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(weights[n])
        model.zero_grad(set_to_none=True)
        trainer._compute_loss(model, b).backward()
        theirs = torch.cat([p.grad.flatten() for _, p in model.named_parameters()])
        mine = torch.cat([grads[n].flatten() for n, _ in model.named_parameters()])
        errors.append(((mine - theirs).norm() / theirs.norm()).item())
    # measured (this machine, 2026-12-07): 1.1e-6 to 1.2e-6 at the first step, 3.6e-6 to 6.4e-6 at the second
    # (float32 log-prob numerics, amplified by its ratios); a wrong normaliser or slice moves it by percents
    assert all(e <= 1e-5 for e in errors), (preset, errors)  # (NaN fails too)
    # the second step's weights moved: it is not the first step's gradient again
    assert any(not torch.equal(captured[0][0][n], w) for n, w in captured[1][0].items())


def _seen_steps(prompts, completions, trainer_state, **kw):
    _seen_steps.steps.append(trainer_state.global_step)
    return [float(i % 2) for i in range(len(completions))]


_seen_steps.steps = []


def test_max_steps_and_checkpoints_count_optimizer_steps_and_resume_is_exact(tiny_path, tmp_path):
    """With two optimizer steps per generation, max_steps 4 is two generations (TRL's global_step counts
    optimizer steps); save_steps 1 saves at the generation boundaries (steps 2 and 4), never between
    the two steps of a generation; a run resumed from step 2 ends with the weights of the run that went on."""
    import json

    kw = {**BASE, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1, "steps_per_generation": 2,
          "max_steps": 4, "save_steps": 1, "logging_steps": 1}
    _seen_steps.steps = []
    torch.manual_seed(0)
    full = make_trainer(tiny_path, tmp_path / "a", [_seen_steps], **kw)
    summary = full.train()
    assert _seen_steps.steps == [0, 2] and summary["steps"] == 4
    ckpts = sorted(p.name for p in (tmp_path / "a" / "run" / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert ckpts == ["step-0000002", "step-0000004"]
    logged = [json.loads(line)["step"] for line in (tmp_path / "a" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [s for s in logged if s > 0] == [2, 4]
    resumed = make_trainer(tiny_path, tmp_path / "b", [_seen_steps],
                           **{**kw, "resume_from_checkpoint": str(tmp_path / "a" / "run" / "checkpoints" /
                                                                  "step-0000002")})
    resumed.train()
    assert _seen_steps.steps == [0, 2, 2]  # the resumed run generated the second generation only
    for name, want in params(full).items():
        assert torch.equal(params(resumed)[name], want), name


@pytest.mark.parametrize(("overrides", "match"), [
    ({"steps_per_generation": 3, "gradient_accumulation_steps": 2}, "config key 'steps_per_generation'"),
    ({"steps_per_generation": 2, "generation_batch_size": 24}, "config key 'generation_batch_size': and"),
    ({"generation_batch_size": 12}, "config key 'generation_batch_size': must be a multiple of"),
    ({"steps_per_generation": 2, "max_steps": 3}, "config key 'max_steps': counts optimizer steps"),
    ({"steps_per_generation": 2, "dynamic_sampling": True}, "config key 'dynamic_sampling'"),
])
def test_bad_generation_batches_are_refused(overrides, match):
    base = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, "num_generations": 4,
            "max_steps": 4}
    with pytest.raises(ConfigError, match=match):
        from_dict({**base, **overrides})


def test_generation_batch_size_sets_steps_per_generation():
    base = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, "num_generations": 4, "max_steps": 4}
    cfg = from_dict({**base, "generation_batch_size": 32})
    assert (cfg.generation_steps, cfg.optimizer_steps_per_generation, cfg.completions_per_step) == (4, 4, 32)
    cfg = from_dict({**base, "steps_per_generation": None, "generation_batch_size": None})  # TRL's defaults
    assert (cfg.generation_steps, cfg.optimizer_steps_per_generation) == (1, 1)
    # both, agreeing, as a TRL config dump holds them (TRL resolves one from the other)
    assert from_dict({**base, "steps_per_generation": 4, "generation_batch_size": 32}).generation_steps == 4


# ---------------------------------------------------------------------- num_generations_eval

def _first_digit_right(completions, answer, **kw):
    """1 when the completion's first digit is the answer's: a cheap, often-right-often-wrong accuracy."""
    from rlreason.rewards import completion_text

    def first(t):
        return next((c for c in t if c.isdigit()), None)

    return [float(first(completion_text(c)) == first(str(a))) for c, a in zip(completions, answer, strict=True)]


@pytest.mark.parametrize("n_eval", [None, 3])
def test_num_generations_eval_samples_that_many_per_held_out_problem(tiny_path, tmp_path, n_eval):
    """num_generations_eval 3: each held-out problem is sampled 3 times at the training temperature and
    the accuracy is the mean over the 12 samples (pass@1), recomputed here from the samples themselves;
    None: greedy, one answer per problem (rlreason's held-out eval)."""
    cfg = GRPOConfig(output_dir=str(tmp_path / "run"), **{**BASE, "max_steps": 1, "temperature": 0.9,
                                                           "num_generations_eval": n_eval})
    tok = AutoTokenizer.from_pretrained(tiny_path)
    rows = prepare(arith_dataset(64, 0, "train"), tokenizer=tok)
    tr = GRPOTrainer(cfg, assemble(cfg, AutoModelForCausalLM.from_pretrained(tiny_path), tok, rows, [_varied_reward],
                                   eval_rows=list(rows.select(range(4))), eval_accuracy_fn=_first_digit_right,
                                   accelerator=Accelerator(cpu=True)))
    calls = []
    generate = tr.engine.generate

    def recording(prompts, n, sampling, seeds=None):
        out = generate(prompts, n, sampling, seeds)
        calls.append((n, sampling, out))
        return out

    tr.engine.generate = recording
    torch.manual_seed(0)
    m = tr.evaluate(4)
    tr.close()
    ((n, sampling, groups),) = calls
    answers = [r["answer"] for r in rows.select(range(4))]
    per_sample = [_first_digit_right([s.text], [a])[0] for g, a in zip(groups, answers, strict=True) for s in g]
    if n_eval is None:
        assert n == 1 and sampling.greedy and m["eval/n"] == 4
    else:
        assert n == 3 and sampling.temperature == 0.9 and m["eval/n"] == 12
        assert len({tuple(s.token_ids) for g in groups for s in g}) > 4  # sampled, not one answer copied
    assert m["eval/accuracy"] == pytest.approx(sum(per_sample) / len(per_sample))
    assert from_dict({"num_generations_eval": None}).num_generations_eval is None  # TRL's default loads
    with pytest.raises(ConfigError, match="config key 'num_generations_eval'"):
        from_dict({"num_generations_eval": 0})
