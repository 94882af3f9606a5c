"""The embedded tiny model: tokenizer round-trip, vLLM-compatible shape, caching, determinism."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoTokenizer

from rlreason import tiny


def test_tokenizer_round_trip_gives_same_ids(tiny_path):
    tok = AutoTokenizer.from_pretrained(tiny_path)
    assert type(tok).__name__ == "Qwen2Tokenizer"
    text = tiny.prompt_text(tok, "47+38-19") + "<think>47+38=85;85-19=66</think><answer>66</answer><|im_end|>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    # the same ids from a tokenizer rebuilt by the class Transformers picks on load
    again = AutoTokenizer.from_pretrained(tiny_path)(text, add_special_tokens=False)["input_ids"]
    assert ids == again
    assert tok.decode(ids) == text
    # the chat markers and tags are single tokens or short merges, not raw bytes
    assert tok.convert_tokens_to_ids("<|im_start|>") in ids
    assert len(ids) < len(text) // 2


def test_tokenizer_special_tokens_and_padding(tiny_path):
    tok = AutoTokenizer.from_pretrained(tiny_path)
    assert tok.padding_side == "left"
    assert tok.pad_token_id is not None and tok.eos_token_id is not None
    assert tok.pad_token_id != tok.eos_token_id
    assert tok.eos_token == "<|im_end|>"
    batch = tok(["1+2", "11+22-33"], padding=True, add_special_tokens=False)
    assert batch["input_ids"][0][0] == tok.pad_token_id  # padded on the left
    assert batch["attention_mask"][0][0] == 0


def test_model_config_fits_vllm(tiny_path):
    cfg = AutoConfig.from_pretrained(tiny_path)
    assert cfg.model_type == "qwen2"
    assert cfg.head_dim >= 32
    assert cfg.hidden_size // cfg.num_attention_heads >= 32
    meta = json.loads((tiny_path / "rlreason_tiny.json").read_text())
    assert meta["key"] == tiny_path.name.rsplit("-", 1)[1]


def test_cached_build_is_reused(tiny_path, test_spec):
    before = (tiny_path / "model.safetensors").stat().st_mtime_ns
    assert tiny.ensure(test_spec) == tiny_path
    assert (tiny_path / "model.safetensors").stat().st_mtime_ns == before


def test_build_is_deterministic(tmp_path):
    spec = dataclasses.replace(tiny.TinySpec(), name="det", sft_steps=5, sft_batch=8)
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    tiny.build(spec, tmp_path / "a", log=lambda *a: None)
    tiny.build(spec, tmp_path / "b", log=lambda *a: None)
    a = load_file(tmp_path / "a" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "tokenizer.json").read_text() == (tmp_path / "b" / "tokenizer.json").read_text()


def test_spec_key_changes_with_spec():
    assert tiny.TinySpec().key() != dataclasses.replace(tiny.TinySpec(), slip_rate=0.1).key()
    assert tiny.TinySpec().key() == tiny.TinySpec().key()


def test_existing_specs_keep_their_cache_keys(monkeypatch):
    """The tool-calling model's fields stay out of the other specs' keys (as the MoE fields stay out
    of the dense one's), so their cached builds are still found. Keys as they were before
    tiny-tools existed (commit be02a58), at the default 2 build threads."""
    monkeypatch.setattr(tiny, "build_threads", lambda: 2)
    assert {name: spec.key() for name, spec in tiny.SPECS.items() if name not in ("tiny-tools", "tiny-code")} == {
        "tiny": "35b555b97bbb", "tiny-moe": "ea31a4b303e1", "tiny-small": "8e5314fd7b47"}
    tools = tiny.SPECS["tiny-tools"]
    assert tools.key() != dataclasses.replace(tools, p_tool=0.2).key()
    # nor do the code model's: tiny-tools' key as it was before tiny-code existed (commit 879949f)
    assert tools.key() == "9347b4e9f1d7"
    code = tiny.SPECS["tiny-code"]
    narrower = dataclasses.replace(code.code_difficulty, max_b=50)
    assert len({code.key(), dataclasses.replace(code, p_right=0.5).key(), dataclasses.replace(code, task="arith").key(),
                dataclasses.replace(code, code_difficulty=narrower).key()}) == 4
    with pytest.raises(ValueError, match="task"):
        tiny.TinySpec(task="division")


def test_two_processes_asking_for_an_unbuilt_model_build_it_once(tmp_path):
    """ensure() holds a per-spec lock while it builds: a second process (a test while CI prebuilds the
    model in the background, the ranks of a multi-process run) waits and reuses the first build."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "RLREASON_CACHE": str(tmp_path), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "rlreason.tiny", "--sft-steps", "2"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0].splitlines() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs[0][-1] == outs[1][-1]  # the same model folder
    # the builder logs its steps before the path; exactly one of the two did
    assert sorted(len(o) > 1 for o in outs) == [False, True]
    assert [p.name for p in (tmp_path / "tiny").iterdir() if not p.name.startswith(".")] == [Path(outs[0][-1]).name]
