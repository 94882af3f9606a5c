"""Data parallel training in real processes (gloo on CPU): two processes make the same update
as one process with the same global batch and seed.

What is compared: tests/_dist_worker.py trains the tiny model for two steps per case, once in
one process (a plain script) and once in two (``torch.distributed.run``, CPU, gloo), with 8
prompts x 4 samples per step over all processes and two micro-batches per process. Generation
is seeded per prompt (``generation_seed_per_prompt``), so both runs sample the same
completions; the rewards are functions of the text. What must agree: the weights after both
steps (each step is one AdamW update), the logged metrics, and every process's weights.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
from _launch import WORKER, assert_clean_exit, run, torchrun

from rlreason.loop.distributed import clean_name, full_named_parameters, gather_varlen

# make test runs on several workers (--dist loadgroup): the tests compare against the module's
# reference runs (runs), so one worker runs all of them.
pytestmark = pytest.mark.xdist_group("distributed")

CASES = ("dapo_batch", "grpo_kl", "dynamic_uneven", "async", "luspo_options")
# Measured: the largest weight difference between the runs is ~1e-6 (float32 sums in another
# order, through AdamW, whose first steps amplify noise on near-zero gradients); the update
# itself (2e-4 per weight: 2 steps at lr 1e-4) differs by ~1e-5 relative (norm). A per-process
# instead of a global denominator or advantage scale changes it by percents.
WEIGHT_ATOL = 5e-6
UPDATE_RTOL = 1e-4
METRIC_RTOL = 1e-4
# async_rollouts: the loss carries the truncated importance weight pi_prox / pi_sampler (the
# sampler's log-probs from the decode loop, the policy's from the packed passes), one more
# rounding difference between the runs, which AdamW's first steps amplify on near-zero
# gradients. Measured: 2 of 826k weights differ by more than 5e-6 (at most 3.4e-5), the update
# by 2.6e-4 relative; every logged metric still agrees to 1e-4.
TOLERANCES = {"async": (1e-4, 1e-3)}  # case -> (weight atol, update rtol)
# Metrics that must match: batch statistics, not timings.
COMPARED = ("reward/mean", "reward/std", "completion/mean_length", "completion/max_length", "loss", "grad_norm",
            "entropy", "clip_frac", "kl", "frac_zero_std_groups", "dynamic_sampling/kept_groups")


@pytest.fixture(scope="module")
def runs(tiny_path, tmp_path_factory) -> dict[int, dict]:
    out = tmp_path_factory.mktemp("dist")
    one = run([sys.executable, str(WORKER), "train", "--model", str(tiny_path), "--out", str(out / "one.pt")])
    assert_clean_exit(one)
    two = run([*torchrun(2), "train", "--model", str(tiny_path), "--out", str(out / "two.pt")])
    assert_clean_exit(two)
    return {n: torch.load(out / f"{name}.pt") for n, name in ((1, "one"), (2, "two"))}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_two_processes_update_equals_one_process(runs, case):
    assert runs[1]["world"] == 1 and runs[2]["world"] == 2
    one, two = runs[1]["cases"][case], runs[2]["cases"][case]
    assert two["rank_spread"] == 0.0  # DDP kept the processes' weights identical
    assert one["before"].keys() == two["before"].keys()
    for k, v in one["before"].items():
        assert torch.equal(v, two["before"][k]), k
    d1 = torch.cat([(one["after"][k] - one["before"][k]).flatten() for k in one["before"]])
    d2 = torch.cat([(two["after"][k] - two["before"][k]).flatten() for k in one["before"]])
    assert (d1 != 0).float().mean() > 0.9  # the update moved (nearly) every weight: it can fail
    atol, rtol = TOLERANCES.get(case, (WEIGHT_ATOL, UPDATE_RTOL))
    assert (d2 - d1).norm() <= rtol * d1.norm()
    for k in one["after"]:
        torch.testing.assert_close(two["after"][k], one["after"][k], atol=atol, rtol=0, msg=k)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_two_processes_log_the_metrics_of_one_process(runs, case):
    m1, m2 = runs[1]["cases"][case]["metrics"], runs[2]["cases"][case]["metrics"]
    assert [r["step"] for r in m1] == [r["step"] for r in m2] == [1, 2]
    for r1, r2 in zip(m1, m2, strict=True):
        for key in COMPARED:
            if key in r1:
                assert r2[key] == pytest.approx(r1[key], rel=METRIC_RTOL, abs=1e-7), (r1["step"], key)
    if case == "dynamic_uneven":
        # step 1: process 1's prompts carry no signal, so its shard is empty and process 0 trains
        # alone: the groups kept are those of the first half of the batch
        assert 0 < m1[0]["dynamic_sampling/kept_groups"] <= 4
    if case == "async":  # step 2's batch was sampled before update 1, on every process's rollout thread
        assert [r["async/staleness"] for r in m1] == [r["async/staleness"] for r in m2] == [0.0, 1.0]


@pytest.mark.slow
def test_checkpoint_is_written_once(runs):
    one, two = runs[1]["cases"]["dapo_batch"], runs[2]["cases"]["dapo_batch"]
    # the same files as one process (one model, one optimizer), plus process 1's RNG state
    assert two["checkpoint_files"] == sorted([*one["checkpoint_files"], "random_states_1.pkl"])
    assert one["checkpoint_files"].count("model.safetensors") == 1


@pytest.mark.slow
@pytest.mark.slow
def test_a_stop_signal_to_one_process_abandons_the_step_on_all(tiny_path, tmp_path):
    """Only the last process gets SIGTERM, while it scores step 2: at the next stop point (a
    collective after the rollout) every process abandons step 2, step 1 is checkpointed once, and
    both exit cleanly; no process waits forever in a collective the other left."""
    res = run([*torchrun(2), "stop", "--model", str(tiny_path), "--out", str(tmp_path / "stop.json")], timeout=300)
    assert_clean_exit(res)
    got = json.loads((tmp_path / "stop.json").read_text())
    assert got == {"world": 2, "steps": 1, "interrupted": True, "checkpoints": ["step-0000001"],
                   "logged_steps": [1]}, got
    assert "step 2 abandoned before its update" in res.stderr


def test_full_named_parameters_gathers_fsdp2_shards_and_strips_ddp(tiny_path, tmp_path):
    out = tmp_path / "gather.json"
    res = run([*torchrun(2), "gather", "--model", str(tiny_path), "--out", str(out)])
    assert_clean_exit(res)
    r = json.loads(out.read_text())
    assert r["world"] == 2 and r["sharded"] == r["n_params"]  # every parameter was a DTensor shard
    assert r["local_numel"] < r["full_numel"]  # each process held only part of the weights
    assert r["same_names"] and r["max_abs_diff"] == 0.0
    assert r["ddp_ok"]


def test_full_named_parameters_of_a_plain_model(tiny_model):
    model, _ = tiny_model
    got = list(full_named_parameters(model))
    assert [n for n, _ in got] == [n for n, _ in model.named_parameters()]
    assert all(t.data_ptr() == p.data_ptr() for (_, t), p in zip(got, model.parameters(), strict=True))


def test_clean_name_strips_wrapper_components():
    assert clean_name("module.model.embed_tokens.weight") == "model.embed_tokens.weight"
    assert clean_name("_orig_mod.module.lm_head.weight") == "lm_head.weight"
    assert (clean_name("_fsdp_wrapped_module.model.layers.0._fsdp_wrapped_module._checkpoint_wrapped_module."
                       "mlp.up_proj.weight") == "model.layers.0.mlp.up_proj.weight")
    assert clean_name("model.my_module.weight") == "model.my_module.weight"  # only whole components
    assert clean_name("encoder.module.weight") == "encoder.module.weight"  # DDP's prefix is only at the top


def test_gather_varlen_is_the_identity_in_one_process():
    from accelerate import Accelerator

    x = torch.arange(6.0).view(3, 2)
    assert gather_varlen(Accelerator(cpu=True), x) is x


def test_seeded_generation_does_not_depend_on_the_batch(tiny_model):
    from rlreason.rollout.base import SamplingConfig
    from rlreason.rollout.hf import HFEngine

    model, tok = tiny_model
    engine = HFEngine(model, tok)
    prompts = [tok("3 + 4 =")["input_ids"], tok("12 * 2 =")["input_ids"]]
    sampling = SamplingConfig(max_tokens=12, temperature=1.0)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    both = engine.generate(prompts, 4, sampling, seeds=[7, 8])
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG stream is untouched
    alone = engine.generate(prompts[1:], 4, sampling, seeds=[8])
    assert [s.token_ids for s in both[1]] == [s.token_ids for s in alone[0]]
    assert len({tuple(s.token_ids) for s in both[1]}) > 1  # sampled, not greedy
    other = engine.generate(prompts[1:], 4, sampling, seeds=[9])
    assert [s.token_ids for s in other[0]] != [s.token_ids for s in alone[0]]
