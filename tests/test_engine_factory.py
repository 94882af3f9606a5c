"""One engine factory from one config key: ``rollout_engine`` (TRL's ``use_vllm`` / ``vllm_mode``
read as its aliases), ``close()`` in the protocol, and no other module asking which engine it has."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlreason.config import ConfigError, GRPOConfig
from rlreason.rollout import factory
from rlreason.rollout.base import RolloutEngine, SamplingConfig

ROOT = Path(__file__).resolve().parents[1]
ENGINE_CLASSES = {"HFEngine", "ProcessHFEngine", "VLLMEngine", "VLLMServerEngine"}


@pytest.mark.parametrize(("given", "engine", "use_vllm", "mode"), [
    ({}, "transformers", False, "colocate"),
    ({"use_vllm": True}, "vllm", True, "colocate"),
    ({"use_vllm": True, "vllm_mode": "server"}, "vllm_server", True, "server"),
    ({"rollout_engine": "vllm_server"}, "vllm_server", True, "server"),
    ({"rollout_engine": "vllm", "vllm_mode": "server"}, "vllm", True, "colocate"),  # the key wins over an alias
    ({"rollout_engine": "transformers"}, "transformers", False, "colocate"),
])
def test_rollout_engine_and_its_trl_aliases_say_one_thing(given, engine, use_vllm, mode):
    cfg = GRPOConfig(**given)
    assert (cfg.rollout_engine, cfg.use_vllm, cfg.vllm_mode) == (engine, use_vllm, mode)
    again = GRPOConfig(**{k: v for k, v in cfg.to_dict().items() if k in ("rollout_engine", "use_vllm", "vllm_mode")})
    assert again.rollout_engine == engine  # the resolved config.yaml reads back as the same engine


def test_contradicting_aliases_and_unknown_engines_are_refused_naming_the_key():
    with pytest.raises(ConfigError, match="'rollout_engine': transformers, but use_vllm: true"):
        GRPOConfig(rollout_engine="transformers", use_vllm=True)
    with pytest.raises(ConfigError, match="'rollout_engine': must be one of"):
        GRPOConfig(rollout_engine="vlm")
    with pytest.raises(ValueError, match="unknown rollout engine 'sglang'"):
        factory.make_engine("sglang", None, None)


def test_the_transformers_engine_generates_with_the_policy_or_a_frozen_copy(tiny_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    tok = AutoTokenizer.from_pretrained(tiny_path)
    own = factory.make_engine("transformers", model, tok)
    copy = factory.make_engine("transformers", model, tok, copy_policy=True)
    assert isinstance(own, RolloutEngine) and isinstance(copy, RolloutEngine)
    assert factory.shares_policy(own, model) and not factory.shares_policy(copy, model)
    assert not any(p.requires_grad for p in copy.model.parameters())
    with torch.no_grad():  # the copy does not follow the policy's later updates
        next(model.parameters()).add_(1.0)
    assert not torch.equal(next(model.parameters()), next(copy.model.parameters()))
    prompt = tok("2+2=", add_special_tokens=False)["input_ids"]
    (group,) = own.generate([prompt], 2, SamplingConfig(max_tokens=4, temperature=1.0))
    assert len(group) == 2 and all(s.token_ids for s in group)
    factory.close(own)
    factory.close(copy)
    factory.close(None)  # nothing built: nothing to close


def test_vllm_engines_fail_clearly_where_vllm_is_missing():
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed")
    with pytest.raises(ImportError, match="the vllm engine needs vLLM"):
        factory.make_engine("vllm", "some/model", None)


def test_no_module_but_the_factory_asks_which_engine_it_has():
    """isinstance / issubclass / type() against an engine class, or hasattr on an engine, only in
    rlreason/rollout/factory.py (the engines' own modules define them)."""
    found = []
    for folder in ("rlreason", "rewards", "eval", "recipes"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel == "rlreason/rollout/factory.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                        and node.func.id in ("isinstance", "issubclass", "hasattr") and len(node.args) == 2):
                    continue
                names = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
                names |= {n.attr for n in ast.walk(node.args[1]) if isinstance(n, ast.Attribute)}
                first = ast.unparse(node.args[0])
                if names & ENGINE_CLASSES or (node.func.id == "hasattr" and "engine" in first):
                    found.append(f"{rel}:{node.lineno} {ast.unparse(node)}")
    assert not found, "\n".join(found)
    probe = ast.parse("isinstance(engine, HFEngine)").body[0].value  # the check sees what it is for
    assert {n.id for n in ast.walk(probe.args[1]) if isinstance(n, ast.Name)} & ENGINE_CLASSES
