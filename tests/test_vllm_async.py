"""Overlapped rollouts (async_rollouts) with the vLLM server engine, the natural case: a real
``rlreason-vllm-serve`` subprocess generates the next batch while the trainer updates; a
server killed mid-run makes the trainer raise, not hang; a trainer killed mid-run leaves the server
serving the next one.

Needs vLLM; run in the vLLM environment (scripts/setup_vllm_cpu.sh):
    VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python -m pytest -q -m vllm tests/test_vllm_async.py
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("vllm")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import torch  # noqa: E402
from _configs import demo_config
from _vllm_server import free_port, running_server  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from rlreason.build import assemble  # noqa: E402
from rlreason.data import arith_dataset, prepare  # noqa: E402
from rlreason.loop.trainer import GRPOTrainer  # noqa: E402
from rlreason.rewards import accuracy_reward  # noqa: E402
from rlreason.rollout.base import SamplingConfig  # noqa: E402
from rlreason.rollout.errors import find_server_error  # noqa: E402
from rlreason.rollout.vllm_server import VLLMServerEngine  # noqa: E402

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def server(tiny_path, tmp_path_factory, request):
    """(url, process) of a real vLLM server started as users start it, in its own session (a
    test kills it); a failing test's report ends with its log's tail (tests/_vllm_server.py)."""
    with running_server(tiny_path, tmp_path_factory.mktemp("vllm-server") / "server.log", request.node) as server:
        yield server


def _trainer(tiny_path, url, out, max_steps) -> GRPOTrainer:
    cfg = demo_config(output_dir=str(out), seed=0, num_generations=8, per_device_train_batch_size=64,
                      gradient_accumulation_steps=1, max_completion_length=48, learning_rate=1e-4,
                      max_steps=max_steps, eval_steps=0, save_steps=0, final_eval_size=0, progress=False,
                      log_completions_steps=0, async_rollouts=True, use_vllm=True, vllm_mode="server")
    tok = AutoTokenizer.from_pretrained(tiny_path)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    engine = VLLMServerEngine(url, tok, weight_transfer="gloo", group_port=free_port(), seed=0)
    engine.load_weights(model.named_parameters())  # the engine starts from the policy's weights
    train = prepare(arith_dataset(2000, 0, "train"), tokenizer=tok)
    return GRPOTrainer(cfg, assemble(cfg, model, tok, train, [accuracy_reward], engine=engine,
                                     accelerator=Accelerator(cpu=True)))


def _rows(out) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]


def test_async_run_with_the_server_engine(tiny_path, server, tmp_path):
    tr = _trainer(tiny_path, server[0], tmp_path / "run", 4)
    try:
        tr.train()
    finally:
        tr.engine.close()
    rows = _rows(tmp_path / "run")
    assert [r["async/staleness"] for r in rows] == [0.0, 1.0, 1.0, 1.0]
    # step 0 sampled with the trainer's own weights (vLLM's numerics only); the later ones one update
    # behind: the truncated weight min(pi_prox / pi_sampler, 2) is logged and stays near 1
    assert rows[0]["is_weight_mean"] == pytest.approx(1.0, abs=2e-3)
    assert all(0.5 < r["is_weight_mean"] <= 2.0 and torch.isfinite(torch.tensor(r["loss"])) for r in rows)


def test_a_weight_update_left_open_by_a_dead_trainer_does_not_lock_the_next_one_out(tiny_path, server):
    """A trainer killed between its update's start and finish leaves it open; vLLM's workers then
    refused every later start ("already active") and no trainer could sync again. The next one
    finishes it and pushes its full weights: the server then generates with them."""
    url, _ = server
    tok = AutoTokenizer.from_pretrained(tiny_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    dead = VLLMServerEngine(url, tok, weight_transfer="gloo", group_port=free_port(), seed=0)
    dead.client.post("start_weight_update")  # ... and the trainer dies here
    dead.close()
    engine = VLLMServerEngine(url, tok, weight_transfer="gloo", group_port=free_port(), seed=0)
    try:
        engine.load_weights(model.named_parameters())
        engine.load_weights(model.named_parameters())  # and the update after it: the server is in order
        (group,) = engine.generate([tok("3+4=")["input_ids"]], 2, SamplingConfig(max_tokens=8, temperature=1.0))
        assert len(group) == 2 and all(s.token_ids for s in group)
    finally:
        engine.close()


def test_a_killed_trainer_leaves_the_server_serving_the_next_one(tiny_path, server, tmp_path):
    """The other side dying: a trainer (a subprocess) is SIGKILLed once its first step is logged,
    while its rollout thread has the next batch on the server. The server goes on serving: a new
    trainer connects (a new weight-transfer group), syncs weights and trains, within a deadline."""
    url, proc = server
    out = tmp_path / "killed"
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from pathlib import Path; "
            f"from test_vllm_async import _trainer; "
            f"_trainer(Path({str(tiny_path)!r}), {url!r}, Path({str(out)!r}), 50).train()")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    trainer = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not ((out / "metrics.jsonl").exists() and _rows(out)):
            assert trainer.poll() is None, trainer.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "the trainer logged no step in 300 s"
            time.sleep(0.05)
    finally:
        trainer.kill()
        trainer.wait()
    assert proc.poll() is None  # the server outlived its client

    def too_slow(*_):
        raise TimeoutError("the next trainer did not finish 2 steps in 240 s: the server hangs")

    old = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(240)
    try:
        tr = _trainer(tiny_path, url, tmp_path / "next", 2)  # a new transfer group, the weights synced
        try:
            tr.train()
        finally:
            tr.engine.close()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert [r["async/staleness"] for r in _rows(tmp_path / "next")] == [0.0, 1.0]


def test_a_killed_server_raises_in_the_trainer_not_hangs(tiny_path, server, tmp_path):
    """Last in the module: kills the module's server (SIGKILL, its whole process group) once the
    first step is logged, while the next batch is generating."""
    out = tmp_path / "run"
    url, proc = server
    tr = _trainer(tiny_path, url, out, 50)
    pgid = proc.pid  # its own session: the group id is its pid

    def kill_when_step_1_logged() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if (out / "metrics.jsonl").exists() and _rows(out):
                os.killpg(pgid, signal.SIGKILL)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_when_step_1_logged, daemon=True)
    killer.start()
    t0 = time.monotonic()
    with pytest.raises((RuntimeError, OSError)) as e:
        tr.train()
    assert time.monotonic() - t0 < 300
    steps = len(_rows(out))
    assert 0 < steps < 50  # it trained, then stopped on the dead server
    print(f"raised after {time.monotonic() - t0:.1f}s: {type(e.value).__name__}: {str(e.value)[:300]}")
    # stopped with the checkpoint of its last step, naming the server; a generation was retried first
    # (a weight update, where the kill may land instead, never is)
    err = find_server_error(e.value)
    assert err is not None and url in str(err), e.value
    assert err.attempts > 1 or err.url.endswith(("weight_update", "update_weights")), e.value
    ckpt = out / "checkpoints" / f"step-{steps:07d}"
    assert f"stopped at step {steps} with a checkpoint in {ckpt}" in str(e.value) and ckpt.is_dir()
    tr.engine.close()  # the server is gone: closing the transfer group must not hang either
    killer.join(1)
    proc.wait(60)
