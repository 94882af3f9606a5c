"""MoE policies: router metrics on a model whose routing is set by hand, routing replay, and
the trainer's MoE path on a small Qwen2-MoE."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

from rlreason import moe

sys.path.insert(0, str(Path(__file__).parent))
from test_trainer import _varied_reward, make_trainer, one_step, params  # noqa: E402

H, E, K, VOCAB = 32, 4, 2, 8

# Router logits per token id (rows) and expert (columns), the same in both layers. The top-2:
# token 0 -> {0, 1}, 1 -> {0, 2}, 2 -> {1, 3}, 3 -> {2, 3}.
LOGITS = torch.tensor([[3.0, 2.0, 0.0, -1.0],
                       [2.0, 0.0, 1.0, -2.0],
                       [0.0, 4.0, -1.0, 1.0],
                       [-1.0, 0.0, 2.0, 3.0]])
TOP2 = {0: {0, 1}, 1: {0, 2}, 2: {1, 3}, 3: {2, 3}}


def known_routing_model(num_layers: int = 2) -> Qwen2MoeForCausalLM:
    """A Qwen2-MoE whose every MoE layer sees token t's hidden state as sqrt(H) e_t.

    Attention and every MLP write nothing (zero output projections), so the residual stream
    stays the embedding e_t; RMSNorm makes it sqrt(H) e_t and the router's logits are
    sqrt(H) x its weight column t, set to LOGITS[t] / sqrt(H).
    """
    cfg = Qwen2MoeConfig(vocab_size=VOCAB, hidden_size=H, intermediate_size=16, num_hidden_layers=num_layers,
                         num_attention_heads=1, num_key_value_heads=1, head_dim=H, num_experts=E,
                         num_experts_per_tok=K, moe_intermediate_size=8, shared_expert_intermediate_size=8,
                         norm_topk_prob=False, rms_norm_eps=1e-12, tie_word_embeddings=False,
                         pad_token_id=VOCAB - 1)
    torch.manual_seed(0)
    model = Qwen2MoeForCausalLM(cfg).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.eye(VOCAB, H))
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.experts.down_proj.zero_()
            layer.mlp.shared_expert.down_proj.weight.zero_()
            w = torch.zeros(E, H)
            w[:, :4] = LOGITS.T / math.sqrt(H)
            layer.mlp.gate.weight.copy_(w)
    return model


def _entropy(row: torch.Tensor) -> float:
    p = torch.softmax(row, -1)
    return float(-(p * p.log()).sum())


def test_router_metrics_on_known_routing():
    model = known_routing_model()
    ids = torch.tensor([[0, 0, 1, 2], [3, 3, 0, 7]])  # 7 = pad, masked out
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    with moe.RoutingCapture(model) as cap:
        model(input_ids=ids, attention_mask=mask)
    assert len(cap.records) == 2
    for rec in cap.records:
        assert torch.allclose(rec.logits[:7], LOGITS[ids.flatten()[:7]], atol=1e-4)
        assert [set(r.tolist()) for r in rec.chosen[:7]] == [TOP2[t] for t in ids.flatten()[:7].tolist()]
    s = cap.stats(mask)
    # 7 real tokens: 0,0,1,2,3,3,0 -> expert 0: tokens 0,0,1,0 = 4; 1: 0,0,2,0 = 4; 2: 1,3,3 = 3; 3: 2,3,3 = 3
    load = torch.tensor([4, 4, 3, 3]) / 14
    m = s.metrics()
    for layer in range(2):
        for e in range(E):
            assert m[f"moe/layer{layer}/load/{e}"] == pytest.approx(load[e].item(), abs=1e-6)
    mean = 0.25
    cv = math.sqrt(sum((x - mean) ** 2 for x in load.tolist()) / E) / mean  # = 1/7
    assert cv == pytest.approx(1 / 7)
    assert m["moe/load_cv"] == pytest.approx(cv, abs=1e-6)
    assert m["moe/max_expert_load"] == pytest.approx(4 / 14, abs=1e-6)
    ent = (3 * _entropy(LOGITS[0]) + _entropy(LOGITS[1]) + _entropy(LOGITS[2]) + 2 * _entropy(LOGITS[3])) / 7
    assert m["moe/router_entropy"] == pytest.approx(ent, abs=1e-4)
    assert "moe/routing_flip_frac" not in m  # no reference pass given
    # Switch aux loss: E * sum_e f_e P_e, f_e = tokens with e in their top-2 / tokens, P_e = mean prob
    probs = torch.softmax(LOGITS[ids.flatten()[:7]], -1)
    f = torch.tensor([4, 4, 3, 3]) / 7
    aux = E * float((f * probs.mean(0)).sum())
    assert cap.aux_loss(mask).item() == pytest.approx(aux, abs=1e-4)


def test_aux_loss_matches_transformers():
    from transformers.models.qwen2_moe.modeling_qwen2_moe import load_balancing_loss_func

    torch.manual_seed(0)
    layers = [torch.randn(12, 6) for _ in range(3)]
    mask = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0]])
    ours = moe.load_balancing_loss(layers, 2, mask)
    theirs = load_balancing_loss_func(tuple(layers), 6, 2, mask)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    assert moe.load_balancing_loss(layers, 2).item() == pytest.approx(
        load_balancing_loss_func(tuple(layers), 6, 2).item(), rel=1e-5)


def test_load_cv_extremes():
    assert moe.load_cv(torch.full((8,), 1 / 8)).item() == pytest.approx(0.0)
    collapsed = moe.load_fractions(torch.tensor([5.0, 5.0, 0, 0, 0, 0, 0, 0]))  # every token on the same 2 of 8
    assert moe.load_cv(collapsed).item() == pytest.approx(math.sqrt(8 / 2 - 1))


def test_topk_changed_ignores_order():
    a = torch.tensor([[0, 1], [2, 3], [1, 2]])
    b = torch.tensor([[1, 0], [2, 1], [1, 2]])
    assert moe.topk_changed(a, b).tolist() == [False, True, False]


def _swap_preference(model) -> None:
    """Move token 0's router preference from experts {0, 1} to {2, 3} in every layer."""
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate.weight[:, 0] = torch.tensor([-1.0, 0.0, 2.0, 3.0]) / math.sqrt(H)


def test_replay_of_own_routing_changes_nothing():
    model = known_routing_model()
    torch.manual_seed(1)
    with torch.no_grad():  # non-zero expert outputs, so routing matters for the logits
        for layer in model.model.layers:
            layer.mlp.experts.down_proj.normal_()
    ids = torch.tensor([[0, 1, 2, 3, 0]])
    with torch.no_grad(), moe.RoutingCapture(model) as rec:
        plain = model(input_ids=ids).logits
    with torch.no_grad(), moe.RoutingCapture(model, replay=rec.chosen_indices()) as again:
        replayed = model(input_ids=ids).logits
    assert torch.equal(plain, replayed)
    assert all(torch.equal(a, b) for a, b in zip(rec.chosen_indices(), again.chosen_indices(), strict=True))


def test_replay_keeps_recorded_experts_after_the_router_changed():
    model = known_routing_model()
    torch.manual_seed(1)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.experts.down_proj.normal_()
    ids = torch.tensor([[0, 1, 2, 0]])
    with torch.no_grad(), moe.RoutingCapture(model) as old:
        model(input_ids=ids)
    recorded = old.chosen_indices()
    _swap_preference(model)  # "after the optimizer step": token 0 now prefers experts {2, 3}
    with torch.no_grad(), moe.RoutingCapture(model) as free:
        free_logits = model(input_ids=ids).logits
    # without replay the two token-0 positions of each layer route elsewhere
    for rec, ref in zip(free.records, recorded, strict=True):
        assert moe.topk_changed(rec.chosen, ref).tolist() == [True, False, False, True]
    assert free.stats(reference=recorded).metrics()["moe/routing_flip_frac"] == pytest.approx(0.5)
    with moe.RoutingCapture(model, replay=recorded) as rep:
        out = model(input_ids=ids)
    for rec, ref in zip(rep.records, recorded, strict=True):
        assert torch.equal(rec.chosen, ref)  # the recorded experts ran ...
        assert moe.topk_changed(rec.natural, ref).tolist() == [True, False, False, True]  # ... not the router's
    assert not torch.allclose(out.logits[0, 0], free_logits[0, 0])
    # the weights of the replayed experts come from the current router: gradients reach it
    out.logits[0, 0].sum().backward()
    assert all(layer.mlp.gate.weight.grad is not None and layer.mlp.gate.weight.grad.abs().sum() > 0
               for layer in model.model.layers)
    # the replayed experts get the router's own gating function of the current logits
    logits = rep.records[0].logits.detach()
    expected = torch.softmax(logits, -1).gather(-1, recorded[0])
    assert torch.allclose(moe.gate_weights(logits, recorded[0], normalise=False), expected)


def test_replay_needs_matching_shapes():
    model = known_routing_model()
    with torch.no_grad(), moe.RoutingCapture(model) as rec:
        model(input_ids=torch.tensor([[0, 1, 2]]))
    with pytest.raises(ValueError, match="same batch"), moe.RoutingCapture(model, replay=rec.chosen_indices()):
        model(input_ids=torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="routers"):
        moe.RoutingCapture(model, replay=rec.chosen_indices()[:1])


def test_aux_loss_coef_resolution():
    cfg = Qwen2MoeConfig(router_aux_loss_coef=0.02, output_router_logits=False)
    assert moe.aux_loss_coef(cfg, None) == 0.0
    assert moe.aux_loss_coef(cfg, 0.5) == 0.5
    cfg.output_router_logits = True
    assert moe.aux_loss_coef(cfg, None) == 0.02


def test_router_stats_flat_round_trip():
    s = moe.RouterStats.zeros(2, 3)
    s.counts += torch.arange(6, dtype=torch.float64).view(2, 3)
    s.tokens += 5
    s.flip_sum += torch.tensor([1.0, 2.0])
    s.aux_sum, s.aux_n = 4.0, 2
    back = s.from_flat(s.flat())
    assert torch.equal(back.counts, s.counts) and torch.equal(back.flip_sum, s.flip_sum)
    assert back.aux_sum == 4.0 and back.aux_n == 2


# ---------------------------------------------------------------------- the trainer on a tiny MoE


def _capture_expert_calls(model) -> tuple[list[torch.Tensor], list]:
    """Every MoE layer's expert indices as the experts module receives them, in call order."""
    calls: list[torch.Tensor] = []
    handles = [m.register_forward_pre_hook(lambda mod, args: calls.append(args[1].detach().clone()))
               for m in model.modules() if type(m).__name__ == "Qwen2MoeExperts"]
    return calls, handles


@pytest.mark.parametrize("replay", [True, False])
def test_training_pass_routes_like_the_old_pass_only_with_replay(tiny_moe_path, tmp_path, replay):
    """Two updates on one batch with a large learning rate: the second training pass runs after
    an optimizer step. With routing replay its experts are the old pass's; without, some differ."""
    torch.manual_seed(0)
    tr = make_trainer(tiny_moe_path, tmp_path, reward_funcs=[_varied_reward], num_iterations=2,
                      learning_rate=3e-2, routing_replay=replay, per_device_train_batch_size=16)
    ro = tr.collect()
    model = tr.acc.unwrap_model(tr.model)
    n_layers = len(tr.actor.routers)
    calls, handles = _capture_expert_calls(model)
    try:
        m = tr.update(ro)
    finally:
        for h in handles:
            h.remove()
    # one micro-batch: the old pass, then iteration 1 and iteration 2, each n_layers calls
    assert len(calls) == 3 * n_layers
    old, first, second = calls[:n_layers], calls[n_layers:2 * n_layers], calls[2 * n_layers:]
    assert all(torch.equal(a, b) for a, b in zip(old, first, strict=True))  # same weights, same routing
    same = [torch.equal(a, b) for a, b in zip(old, second, strict=True)]
    if replay:
        assert all(same)
        assert m["moe/routing_flip_frac"] > 0  # the router itself would have switched experts
    else:
        assert not all(same)
        assert m["moe/routing_flip_frac"] > 0
    assert m["nonfinite_skipped"] == 0


def test_router_metrics_and_aux_loss_in_the_update(tiny_moe_path, tmp_path):
    torch.manual_seed(0)
    tr = make_trainer(tiny_moe_path, tmp_path, reward_funcs=[_varied_reward], router_aux_loss_coef=0.0)
    ro = tr.collect()
    m = tr.update(ro)
    E = tr.actor.routers[0].num_experts
    for i in range(len(tr.actor.routers)):
        loads = [m[f"moe/layer{i}/load/{e}"] for e in range(E)]
        assert sum(loads) == pytest.approx(1.0, abs=1e-6)
        assert 0 <= m[f"moe/layer{i}/router_entropy"] <= math.log(E)
    assert m["moe/aux_loss"] >= 2.0 - 1e-4  # >= top_k, its value for a perfectly balanced router
    assert "moe/routing_flip_frac" not in m  # one update per rollout and no replay: no old pass
    # The load-balancing loss changes the update where router logits have a gradient: the
    # routers and everything below them, but not the last layer's experts or the final norm
    # (they are above every router). Same seed, so everything else is equal.
    results = []
    for coef in (0.0, 1.0):
        torch.manual_seed(0)
        # no gradient clipping: the global norm would couple every parameter's update to the aux term
        tr = make_trainer(tiny_moe_path, tmp_path, reward_funcs=[_varied_reward], router_aux_loss_coef=coef,
                          max_grad_norm=1e9)
        before = params(tr)
        one_step(tr)
        results.append({k: v - before[k] for k, v in params(tr).items()})
    changed = {k for k in results[0] if not torch.equal(results[0][k], results[1][k])}
    last = len(tr.actor.routers) - 1
    assert {f"model.layers.{i}.mlp.gate.weight" for i in range(last + 1)} <= changed
    assert not changed & {"model.norm.weight", f"model.layers.{last}.mlp.experts.gate_up_proj",
                          f"model.layers.{last}.mlp.experts.down_proj"}


def test_routing_replay_needs_an_moe_policy(tiny_path, tmp_path):
    with pytest.raises(ValueError, match="routing_replay"):
        make_trainer(tiny_path, tmp_path, routing_replay=True)


@pytest.mark.slow
def test_moe_recipe_runs_from_its_yaml_and_reports_router_health(tiny_moe_path, tmp_path):
    import json

    import _recipes

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "run"
    _recipes.grpo(["--config", str(root / "recipes" / "configs" / "tiny_moe_cpu.yaml"),
                 "--model_name_or_path", str(tiny_moe_path),  # the quick build: same architecture
                 "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "16",
                 "--final_eval_size", "8", "--eval_steps", "0", "--save_steps", "0", "--progress", "false",
                 "--num_threads", "1"])
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "clip_frac" in r]
    assert len(train) == 2
    for r in train:
        for key in ("moe/load_cv", "moe/router_entropy", "moe/aux_loss", "moe/routing_flip_frac",
                    "moe/layer0/load/0", "moe/layer3/load_cv", "ratio/log_std"):
            assert key in r, key
    report = (out / "report.html").read_text()
    assert "Router health" in report and "moe/routing_flip_frac" in report
    assert (out / "router.png").stat().st_size > 0
