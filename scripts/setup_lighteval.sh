#!/usr/bin/env bash
# Create .venv-lighteval: lighteval 0.13.0 alone (no rlreason), every package at the version
# requirements/lighteval.lock.txt names (scripts/lock.sh makes it). tests/test_eval_results.py runs
# lighteval's own reader there on the results files rlreason writes (RLREASON_LIGHTEVAL_PYTHON).
#   scripts/setup_lighteval.sh           (VENV=.venv-lighteval PYTHON=python3 by default)
# Then: RLREASON_LIGHTEVAL_PYTHON=.venv-lighteval/bin/python make test
# Apart from .venv because lighteval pins termcolor and latex2sympy2_extended at versions rlreason's
# environment does not have.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv-lighteval}"
LOCK=requirements/lighteval.lock.txt
BIN="$VENV/bin"
STAMP="$VENV/.installed-stamp"
# up to date: nothing to do (the stamp is newer than the lock)
if [ -f "$STAMP" ] && [ "$STAMP" -nt "$LOCK" ]; then exit 0; fi
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$BIN/pip" install -q "pip==26.3"
"$BIN/pip" install -q --no-deps -r "$LOCK"
"$BIN/python" - <<'PY'
import lighteval
from lighteval.logging.evaluation_tracker import EvaluationTracker  # noqa: F401  (the reader the test uses)
from importlib.metadata import version
print(f"ok: lighteval {version('lighteval')}")
PY
touch "$STAMP"
