"""Shared fixtures: a small tiny model built once per test session into a temporary cache."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported: tiny models hate threads

from pathlib import Path

import pytest
import torch
from _vllm_server import SERVER_LOG, log_tail  # first here: it records the session's environment

torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def test_spec():
    """The default embedded model: the tests exercise what users run. Built once into the
    cache (``$RLREASON_CACHE``, default ~/.cache/rlreason; CI points it at a fresh folder),
    so after ``make demo`` the tests reuse it."""
    from rlreason.tiny import TinySpec

    return TinySpec()


@pytest.fixture(scope="session")
def tiny_path(test_spec) -> Path:
    from rlreason.tiny import ensure

    return ensure(test_spec, log=lambda *a: None)


# The tool-calling tiny model as the tests use it: tiny-tools' tokenizer, template and teacher with a
# quarter of its warm-up (200 steps, about 1 min to build instead of 4): it calls the calculator on about
# a third of its sampled answers (it does not yet copy the product right), which is what the tool tests
# need. The demo's model itself (800 steps) is checked by benchmarks/tools_warmup.py (README, "Tools").
TOOLS_TEST_WARMUP_STEPS = 200


def _tools_test_spec():
    import dataclasses

    from rlreason.tiny import TINY_TOOLS

    return dataclasses.replace(TINY_TOOLS, name="tiny-tools-ci", sft_steps=TOOLS_TEST_WARMUP_STEPS)


@pytest.fixture(scope="session")
def tiny_tools_path() -> Path:
    from rlreason.tiny import ensure

    return ensure(_tools_test_spec(), log=lambda *a: None)


@pytest.fixture()
def tiny_model(tiny_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_path).eval()
    return model, tok


@pytest.fixture(scope="session")
def tiny_moe_path() -> Path:
    """A quickly built tiny MoE (the TINY_MOE architecture, 30 warm-up steps): for the trainer's
    MoE code paths, not for learning (test_recipe_configs runs the real one)."""
    from rlreason.tiny import ensure

    return ensure(_moe_test_spec(), log=lambda *a: None)


def _moe_test_spec():
    import dataclasses

    from rlreason.tiny import TINY_MOE

    return dataclasses.replace(TINY_MOE, name="tiny-moe-test", sft_steps=30, sft_batch=16)


def pytest_sessionstart(session):
    """With several workers (`make test`: pytest-xdist), the controller builds the session fixtures'
    models first, before the workers start. A build runs on 2 threads (tiny.BUILD_THREADS: the same
    model bit for bit on any machine), and on 2 cores beside a busy worker those threads keep waiting
    for each other: a 2-thread run took several times as long there (tests/test_learning.py, which now
    trains on one thread). In one process the fixtures build what they need when they need it."""
    config = session.config
    if hasattr(config, "workerinput") or not config.getoption("numprocesses", None):
        return
    from rlreason.tiny import TinySpec, ensure

    for spec in (TinySpec(), _tools_test_spec(), _moe_test_spec(), _code_test_spec()):
        ensure(spec, log=lambda *a: None)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A test that fails while its module's vLLM server runs (tests/_vllm_server.py) gets the
    server's log tail in its report: the cause of a server-side error is only there."""
    report = yield
    if report.failed:
        log = item.getparent(pytest.Module).stash.get(SERVER_LOG, None)
        if log is not None and log.exists():
            report.sections.append((f"vLLM server log, last lines ({log})", log_tail(log)))
    return report


# The code-writing tiny model as the tests use it: tiny-code's tokenizer and teacher with a quarter of its
# warm-up (about 1 min to build), for the code demo's wiring; the demo's model itself is measured by
# benchmarks/code_warmup.py (README, "Code").
CODE_TEST_WARMUP_STEPS = 100


def _code_test_spec():
    import dataclasses

    from rlreason.tiny import TINY_CODE

    return dataclasses.replace(TINY_CODE, name="tiny-code-ci", sft_steps=CODE_TEST_WARMUP_STEPS)


@pytest.fixture(scope="session")
def tiny_code_path() -> Path:
    from rlreason.tiny import ensure

    return ensure(_code_test_spec(), log=lambda *a: None)
