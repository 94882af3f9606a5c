#!/usr/bin/env bash
# benchmarks/gpu_check.py on a GPU machine that has torch, transformers and accelerate but not
# the rest of rlreason's dependencies, and no network. Two steps:
#
#   benchmarks/gpu_bundle.sh prepare            # here (pip reaches PyPI or a wheel cache; .venv installed)
#   benchmarks/gpu_bundle.sh run OUT [ARGS...]  # there, from a copy of the checkout that holds the bundle
#
# `prepare` fills .gpu_bundle/ (git-ignored; about 60 MB): the missing pure-python wheels at the
# versions .venv has (datasets, dill, multiprocess, math-verify, latex2sympy2_extended, antlr4),
# a pyarrow wheel (datasets needs >= 24; installed there only if the machine's is older), a wheel
# of rlreason itself (rlreason.rewards / rlreason.eval exist only installed), the built tiny model
# (RLREASON_CACHE layout, so the recipe's `model_name_or_path: tiny` finds it) and the commit.
# `run` installs the wheels with --no-deps into /tmp/site (nothing of the machine's own is
# replaced except an old pyarrow), then runs gpu_check.py with ARGS, its log tee'd to OUT.
# Wheels are for CPython ${PYVER:-3.12} on x86-64 Linux (the device image's Python).
set -euo pipefail
cd "$(dirname "$0")/.."
B=${GPU_BUNDLE:-.gpu_bundle}
PYTHON=${PYTHON:-python3}

case "${1:-}" in
prepare)
  VENV_PY=${VENV_PY:-.venv/bin/python}
  ver() { "$VENV_PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
  rm -rf "$B/wheels" "$B/optwheels" "$B/cache"
  mkdir -p "$B/wheels" "$B/optwheels" "$B/cache/tiny"
  dl=(python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${PYVER:-3.12}" --implementation cp
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
  "${dl[@]}" -d "$B/wheels" "datasets==$(ver datasets)" "dill==$(ver dill)" "multiprocess==$(ver multiprocess)" \
    "math-verify==$(ver math-verify)" "latex2sympy2_extended==$(ver latex2sympy2_extended)" \
    "antlr4-python3-runtime==$(ver antlr4-python3-runtime)"
  "${dl[@]}" -d "$B/optwheels" "pyarrow==$(ver pyarrow)"
  python3 -m pip wheel -q --no-deps -w "$B/wheels" .
  rm -rf build
  tiny=$("$VENV_PY" -c "from rlreason import tiny; print(tiny.ensure(tiny.SPECS['tiny'], log=lambda *a: None))")
  cp -r "$tiny" "$B/cache/tiny/"
  git rev-parse --short HEAD > "$B/commit"
  du -sh "$B"
  ;;
run)
  out=${2:?usage: gpu_bundle.sh run OUT [gpu_check.py args]}
  shift 2
  mkdir -p "$out"
  B=$(cd "$B" && pwd)
  export PYTHONUNBUFFERED=1 RLREASON_CACHE="$B/cache" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false GPU_CHECK_COMMIT="$(cat "$B/commit")"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$out/nvidia_smi.txt" 2>&1 || true
  site=${GPU_SITE:-/tmp/site}
  install=("$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site")
  "${install[@]}" "$B"/wheels/*.whl
  "$PYTHON" -c "import pyarrow, sys; sys.exit(int(pyarrow.__version__.split('.')[0]) < 24)" \
    || "${install[@]}" "$B"/optwheels/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  set -o pipefail
  "$PYTHON" benchmarks/gpu_check.py --out-dir "$out" "$@" 2>&1 | tee "$out/gpu_check_log.txt"
  ;;
*)
  sed -n '2,16p' "$0"
  exit 2
  ;;
esac
