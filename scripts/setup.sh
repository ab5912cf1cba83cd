#!/usr/bin/env bash
# Create .venv and install pemn with its test extras. Idempotent; safe to rerun.
# torch is installed first and pinned: on this machine torch==2.13.0 is a local CPU wheel,
# while an unpinned request would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install -q "torch==${PEMN_TORCH_VERSION:-2.13.0}"
fi
if ! .venv/bin/python -c "import pemn, pytest, hypothesis, onnxruntime, constriction" 2>/dev/null; then
  .venv/bin/pip install -q -e ".[test]"
fi
