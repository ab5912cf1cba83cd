#!/usr/bin/env bash
# Create .venv and install pemn into it. Idempotent; safe to rerun.
#   bash scripts/setup.sh          # the package (what the main job needs)
#   bash scripts/setup.sh test     # plus the test extras of pyproject.toml (pytest, ...)
# torch is installed first and pinned: on this machine torch==2.13.0 is a local CPU wheel,
# while an unpinned request would pull a multi-GB CUDA build. Override with PEMN_TORCH_VERSION.
# pip runs only when scripts/deps_ok.py finds a requirement of pyproject.toml unmet, so a venv
# made before a requirement was added or re-pinned is updated.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -c "import torch" 2>/dev/null \
  || .venv/bin/pip install -q "torch==${PEMN_TORCH_VERSION:-2.13.0}"
if [ "${1:-}" = "test" ]; then
  .venv/bin/python scripts/deps_ok.py test || .venv/bin/pip install -q -e ".[test]"
else
  .venv/bin/python scripts/deps_ok.py || .venv/bin/pip install -q -e .
fi
