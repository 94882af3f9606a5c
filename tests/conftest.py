"""Shared fixtures: a small tiny model built once per test session into a temporary cache."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported: tiny models hate threads

import dataclasses
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[2] / "shared"

# Small and quick to build, but warmed up enough to emit the answer format.
TEST_SPEC_KW = dict(name="test", sft_steps=200, sft_batch=32)


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rlreason-cache")
    old = os.environ.get("RLREASON_CACHE")
    os.environ["RLREASON_CACHE"] = str(root)
    yield root
    if old is None:
        os.environ.pop("RLREASON_CACHE", None)
    else:
        os.environ["RLREASON_CACHE"] = old


@pytest.fixture(scope="session")
def test_spec():
    from rlreason.tiny import TinySpec

    return dataclasses.replace(TinySpec(), **TEST_SPEC_KW)


@pytest.fixture(scope="session")
def tiny_path(tiny_cache, test_spec) -> Path:
    from rlreason.tiny import ensure

    return ensure(test_spec, log=lambda *a: None)


@pytest.fixture()
def tiny_model(tiny_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_path).eval()
    return model, tok
