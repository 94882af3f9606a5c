"""The transformers engine in a child process (rlreason/rollout/hf_process.py), against the
in-process engine on the real tiny model: the same samples for the same weights and seeds,
weights loaded in the parent reach the child, and a dead child is an error, not a hang."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlreason.rollout.base import SamplingConfig
from rlreason.rollout.hf import HFEngine
from rlreason.rollout.hf_process import ProcessHFEngine

SAMPLING = SamplingConfig(max_tokens=24, temperature=1.0)


@pytest.fixture(scope="module")
def parts(tiny_path):
    tok = AutoTokenizer.from_pretrained(tiny_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_path).eval()
    prompts = [tok(f"{a} + {b} =")["input_ids"] for a, b in [(1, 2), (13, 29), (7, 400)]]
    return model, tok, prompts


@pytest.fixture()
def engines(parts):
    model, tok, _ = parts
    child = ProcessHFEngine(copy.deepcopy(model), tok, batch_seeds=True, num_threads=1)
    try:
        yield HFEngine(copy.deepcopy(model), tok, batch_seeds=True), child
    finally:
        child.close()


def test_the_child_samples_with_min_p_and_repetition_penalty_as_the_in_process_engine(parts, engines):
    """TRL's min_p and repetition_penalty reach the child's decode loop (SamplingConfig crosses the pipe)."""
    _, _, prompts = parts
    here, child = engines
    sampling = SamplingConfig(max_tokens=24, temperature=1.0, min_p=0.1, repetition_penalty=1.4)
    a = here.generate(prompts, 4, sampling, [11, 12, 13])
    b = child.generate(prompts, 4, sampling, [11, 12, 13])
    assert [[s.token_ids for s in g] for g in a] == [[s.token_ids for s in g] for g in b]
    plain = here.generate(prompts, 4, SAMPLING, [11, 12, 13])
    assert [[s.token_ids for s in g] for g in a] != [[s.token_ids for s in g] for g in plain]


def test_the_child_samples_what_the_in_process_engine_samples(parts, engines):
    _, _, prompts = parts
    here, child = engines
    for seeds in ([11, 12, 13], None):
        if seeds is None:  # the unseeded path draws from each process's global stream: seed both alike
            torch.manual_seed(0)
        a = here.generate(prompts, 4, SAMPLING, seeds)
        b = child.generate(prompts, 4, SAMPLING, seeds)
        if seeds is not None:
            assert a == b
        else:  # the child's global stream is its own: only the shapes agree
            assert [len(g) for g in a] == [len(g) for g in b] == [4] * 3
    greedy = SamplingConfig(max_tokens=24, temperature=0.0)
    assert here.generate(prompts, 1, greedy) == child.generate(prompts, 1, greedy)


def test_weights_loaded_in_the_parent_reach_the_child(parts, engines):
    model, _, prompts = parts
    here, child = engines
    greedy = SamplingConfig(max_tokens=24, temperature=0.0)
    before = child.generate(prompts, 1, greedy)
    torch.manual_seed(1)
    new = {k: v + 0.05 * torch.randn_like(v) for k, v in model.named_parameters()}
    here.load_weights(new.items())
    child.load_weights(new.items())
    after_here, after_child = here.generate(prompts, 1, greedy), child.generate(prompts, 1, greedy)
    assert after_child == after_here and after_child != before


def test_a_dead_child_raises_and_close_ends_it(parts):
    model, tok, prompts = parts
    child = ProcessHFEngine(copy.deepcopy(model), tok, num_threads=1)
    child.generate(prompts, 1, SAMPLING)
    os.kill(child._proc.pid, signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="generator process"):
        child.generate(prompts, 1, SAMPLING)
    assert time.monotonic() - t0 < 10
    child.close()
    other = ProcessHFEngine(copy.deepcopy(model), tok, num_threads=1)
    other.close()
    assert not other._proc.is_alive()


def test_a_script_that_never_closes_the_engine_still_exits(tiny_path, tmp_path):
    """multiprocessing's exit hook SIGTERMs a daemon child and then waits for it; the child
    ignores SIGTERM (the trainer finishes its batch on a stop signal), so without the engine's
    own exit hook such a script hung at exit."""
    script = tmp_path / "forget_close.py"
    script.write_text(
        "import sys\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "from rlreason.rollout.base import SamplingConfig\n"
        "from rlreason.rollout.hf_process import ProcessHFEngine\n"
        "if __name__ == '__main__':\n"
        "    tok = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "    engine = ProcessHFEngine(AutoModelForCausalLM.from_pretrained(sys.argv[1]), tok, num_threads=1)\n"
        "    out = engine.generate([tok('1 + 2 =')['input_ids']], 2, SamplingConfig(max_tokens=8))\n"
        "    print('generated', len(out[0]), 'pid', engine._proc.pid, flush=True)\n")
    res = subprocess.run([sys.executable, str(script), str(tiny_path)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    pid = int(res.stdout.split("pid")[1])
    assert "generated 2" in res.stdout
    with pytest.raises(ProcessLookupError):  # the child is gone too
        os.kill(pid, 0)
