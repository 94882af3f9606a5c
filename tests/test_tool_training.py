"""Tool output in training: masked from every term of the loss, counted out of its denominators and
lengths (issue 32). A tool batch is built from real generations of the tiny model with a tool
suffix inserted by hand (loss mask 0, sampler log-prob 0.0) and trained by the real update."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from test_trainer import make_trainer

from rlreason import algorithms as A
from rlreason.data.batching import pack, pack_groups, right_pad
from rlreason.loop.experience import Rollout, sample_metrics
from rlreason.loop.logprobs import completion_logprobs
from rlreason.rollout.base import Sample, SamplingConfig
from rlreason.tiny import prompt_text

LOSS_TYPES = list(A.PRESETS)
SUFFIX = "\n<|im_start|>user\n<tool_response>\n156\n</tool_response><|im_end|>\n<|im_start|>assistant\n"


def tool_rollout(tr) -> Rollout:
    """2 prompts x 2: samples 0 and 3 are two turns around an inserted tool answer, 1 and 2 one turn."""
    tok, engine = tr.tokenizer, tr.engine
    prompts = [tok(prompt_text(tok, q), add_special_tokens=False)["input_ids"] for q in ["12+345", "123*45"]]
    sampling = SamplingConfig(max_tokens=12, temperature=1.0)
    torch.manual_seed(0)
    first = [s for g in engine.generate(prompts, 2, sampling) for s in g]
    suffix = tok(SUFFIX, add_special_tokens=False)["input_ids"]
    samples = []
    for i, s in enumerate(first):
        if i in (0, 3):
            prefix = prompts[i // 2] + s.token_ids + suffix
            (t2,), = engine.generate([prefix], 1, sampling)
            ids = s.token_ids + suffix + t2.token_ids
            samples.append(Sample(ids, tok.decode(ids), s.logprobs + [0.0] * len(suffix) + t2.logprobs, "stop",
                                  loss_mask=[1] * len(s.token_ids) + [0] * len(suffix) + [1] * len(t2.token_ids)))
        else:
            samples.append(Sample(s.token_ids, s.text, s.logprobs, "stop", loss_mask=[1] * len(s.token_ids)))
    ro = Rollout([p for p in prompts for _ in range(2)], samples, torch.tensor([1.0, 0.0, 0.0, 1.0]), {},
                 ["a", "a", "b", "b"], 2, {})
    ro.advantages = torch.tensor([1.0, -1.0, -0.5, 0.5])
    return ro


def update_and_grads(tr, ro) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """One update from the trainer's current weights; the gradient before the optimizer moves them."""
    model = tr.acc.unwrap_model(tr.model)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    opt = tr.optimizer.state_dict()
    grads, step = {}, tr.optimizer.step

    def record_then_step(*a, **k):
        grads.update({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        return step(*a, **k)

    tr.optimizer.step = record_then_step
    try:
        metrics = tr.update(ro)
    finally:
        tr.optimizer.step = step
        model.load_state_dict(start)
        tr.optimizer.load_state_dict(opt)
    return metrics, grads


def by_hand(tr, ro) -> tuple[float, dict[str, torch.Tensor]]:
    """The loss and gradient of the same batch, from the loss function with the mask written out:
    the model's tokens 1, the tool answer 0, and the denominator counting model tokens only."""
    model = tr.acc.unwrap_model(tr.model)
    model.zero_grad()
    model.train()
    batch = pack(ro.prompt_ids, [s.token_ids for s in ro.samples], tr.tokenizer.pad_token_id)
    mask = right_pad([s.loss_mask for s in ro.samples], 0, min_width=batch["completion_mask"].shape[1])[0]
    model_tokens = sum(sum(s.loss_mask) for s in ro.samples)
    assert model_tokens < sum(len(s.token_ids) for s in ro.samples)
    coef = tr.actor.loss_settings.entropy_coef
    logp, ent = completion_logprobs(model, batch, tr.cfg.temperature, with_entropy=True, entropy_grad=coef > 0)
    ref = tr.actor.frozen_logprobs(tr.actor.ref_model, [(None, batch)])[0] if tr.cfg.beta else None
    loss, _ = A.policy_loss(logp, logp.detach(), ro.advantages, mask, tr.actor.loss_settings, entropy=ent,
                            ref_logp=ref, denom=tr.actor.denominator(model_tokens, len(ro.samples)))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return loss.item(), grads


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_tool_tokens_are_out_of_every_term_and_every_denominator(tiny_path, tmp_path, loss_type):
    """For every loss_type (with the KL and the entropy bonus on): the update's loss and gradient on a
    tool batch are the loss function's with the hand-written mask and a model-token denominator; the
    same batch with its tool tokens in the loss (no masks) trains differently."""
    tr = make_trainer(tiny_path, tmp_path, loss_type=loss_type, num_generations=2, per_device_train_batch_size=4,
                      gradient_accumulation_steps=1, beta=0.04, entropy_coef=0.01, learning_rate=1e-3,
                      max_completion_length=40, reward_num_workers=0, pack_prompt_groups=False,
                      max_grad_norm=1e9)  # the gradient as the loss made it, not clipped
    ro = tool_rollout(tr)
    metrics, grads = update_and_grads(tr, ro)
    loss, hand = by_hand(tr, ro)
    assert metrics["loss"] == pytest.approx(loss, rel=1e-5, abs=1e-7)
    for k, g in hand.items():
        torch.testing.assert_close(grads[k], g, atol=1e-6 * (1 + g.abs().max().item()), rtol=1e-4)
    unmasked = Rollout(ro.prompt_ids, [Sample(s.token_ids, s.text, s.logprobs, s.finish_reason) for s in ro.samples],
                       ro.rewards, {}, ro.prompts, 2, {}, ro.advantages)
    other, other_grads = update_and_grads(tr, unmasked)
    assert other["loss"] != pytest.approx(metrics["loss"], rel=1e-4) or any(
        not torch.allclose(other_grads[k], g, rtol=1e-3, atol=1e-7) for k, g in grads.items())
    tr.close()


def test_sampler_logprobs_at_tool_tokens_change_nothing(tiny_path, tmp_path):
    """With the sampler correction on (it reads the sampler's log-probs, 0.0 at tool tokens), any value
    there leaves the loss and gradient as they are."""
    tr = make_trainer(tiny_path, tmp_path, loss_type="dapo", num_generations=2, per_device_train_batch_size=4,
                      gradient_accumulation_steps=1, beta=0.0, learning_rate=1e-3, max_completion_length=40,
                      reward_num_workers=0, importance_sampling_cap=2.0)
    ro = tool_rollout(tr)
    # a sampler that found the model's tokens less likely than the policy does: weights e^0.5 (under the cap 2)
    ro.samples = [Sample(s.token_ids, s.text, [lp - 0.5 * m for lp, m in zip(s.logprobs, s.loss_mask, strict=True)],
                         s.finish_reason, loss_mask=s.loss_mask) for s in ro.samples]
    base, grads = update_and_grads(tr, ro)
    assert base["is_weight_mean"] == pytest.approx(2.718281828 ** 0.5, rel=1e-3)  # the weight is at work
    moved = [Sample(s.token_ids, s.text, [lp if m else -7.0 for lp, m in zip(s.logprobs, s.loss_mask, strict=True)],
                    s.finish_reason, loss_mask=s.loss_mask) for s in ro.samples]
    assert moved != ro.samples
    other, other_grads = update_and_grads(tr, Rollout(ro.prompt_ids, moved, ro.rewards, {}, ro.prompts, 2, {},
                                                      ro.advantages))
    assert other["loss"] == base["loss"] and other["is_weight_mean"] == base["is_weight_mean"]
    for k, g in grads.items():
        assert torch.equal(other_grads[k], g), k
    tr.close()


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_packed_update_equals_padded_with_tool_masks(tiny_path, tmp_path, loss_type):
    tr = make_trainer(tiny_path, tmp_path, loss_type=loss_type, num_generations=2, per_device_train_batch_size=4,
                      gradient_accumulation_steps=1, beta=0.04, learning_rate=1e-3, max_completion_length=40,
                      reward_num_workers=0)
    ro = tool_rollout(tr)
    out = {}
    for packed in (False, True):
        tr.cfg.pack_prompt_groups = packed
        assert ("src" in tr.actor.micro_batches(ro)[0][1]) == packed
        out[packed] = update_and_grads(tr, ro)
    (m_a, g_a), (m_b, g_b) = out[False], out[True]
    for k in ("loss", "entropy", "kl", "grad_norm"):
        assert m_b[k] == pytest.approx(m_a[k], rel=1e-4, abs=1e-6), k
    for k, g in g_a.items():
        torch.testing.assert_close(g_b[k], g, atol=1e-5 * (1 + g.abs().max().item()), rtol=1e-3)
    tr.close()


def test_pack_and_pack_groups_multiply_the_loss_masks_in():
    prompts, completions = [[5, 6], [5, 6]], [[1, 2, 3, 4], [7, 8]]
    masks = [[1, 0, 0, 1], None]
    by_hand = torch.tensor([[1, 0, 0, 1], [1, 1, 0, 0]])
    assert torch.equal(pack(prompts, completions, 0, loss_masks=masks)["completion_mask"], by_hand)
    packed = pack_groups(prompts, completions, 0, 2, loss_masks=masks)
    assert torch.equal(packed["completion_mask"], by_hand)
    assert torch.equal(packed["token_mask"], torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]))  # still scored


def test_sample_metrics_count_model_tokens_and_tool_use():
    def s(n_model, n_tool, calls, failures, per_tool):
        return Sample([1] * (n_model + n_tool), "", [0.0] * (n_model + n_tool),
                      loss_mask=[1] * n_model + [0] * n_tool,
                      tool_stats={"calls": calls, "failures": failures, "turns": calls + 1, "masked_tokens": n_tool,
                                  "per_tool": per_tool})
    samples = [s(10, 6, 2, 1, {"mul": 1, "add": 1}), s(4, 0, 0, 0, {}), s(8, 3, 1, 0, {"mul": 1}), s(2, 0, 0, 0, {})]
    ro = Rollout([[1]] * 4, samples, torch.tensor([1.0, 0.0, 1.0, 0.0]), {}, ["p"] * 4, 2, {})
    m = sample_metrics(Accelerator(cpu=True), ro, with_tools=True)
    assert m["completion/mean_length"] == (10 + 4 + 8 + 2) / 4 and m["completion/max_length"] == 10
    assert m["tools/call_frequency"] == 3 / 4 and m["tools/failure_frequency"] == 1 / 3
    assert m["tools/turns_mean"] == (3 + 1 + 2 + 1) / 4 and m["tools/masked_tokens_mean"] == 9 / 4
    assert m["tools/calls/mul"] == 2 / 4 and m["tools/calls/add"] == 1 / 4
    assert not any(k.startswith("tools/") for k in sample_metrics(Accelerator(cpu=True), ro))


def test_environment_reward_columns_add_with_weight_one_and_failures_are_unknown():
    from rlreason.rewards.runner import RewardOutput, add_reward_columns

    out = RewardOutput(total=torch.tensor([1.0, 2.0, 0.5, 0.0, 1.0], dtype=torch.float64),
                       per_func={"acc": torch.tensor([1.0, 2.0, 0.5, 0.0, 1.0], dtype=torch.float64)},
                       failures={"acc": 0})
    values = {"Env": [0.5, None, float("nan"), 3, 2.0]}
    failed = {"Env": [False, False, False, False, True]}
    got = add_reward_columns(out, values, failed)
    assert got.total[[0, 1, 3]].tolist() == [1.5, 2.0, 3.0]  # None: left out of the sum, not a failure
    assert got.failed.tolist() == [False, False, True, False, True]  # NaN returned, or flagged failed
    assert got.known.tolist() == [True, True, False, True, False]
    assert got.failures["Env"] == 2 and "Env" in got.errors and out.failed is None  # out is left as it was
    env = got.per_func["Env"]
    assert env[0] == 0.5 and env[3] == 3.0 and torch.isnan(env[[1, 2, 4]]).all()
    with pytest.raises(ValueError, match="named twice"):
        add_reward_columns(out, {"acc": [1.0] * 5}, {})
