#!/usr/bin/env bash
# The main job, end to end and offline: set up, find Fashion-MNIST (installing Debian's
# dataset-fashion-mnist when root), train PEMN (RP 1e-3, ConvMixer-128/4), pack the model into
# an exact .pemn file and a compact one (fp16, BatchNorm folded), evaluate the compact file and
# print its test accuracy, P, U and sizes. Extra arguments are config overrides,
# e.g. `bash scripts/demo.sh optim.epochs=1`.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup.sh
dataset=fashion_mnist
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ ! -d data/fashion_mnist ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
    apt-get install -y -q dataset-fashion-mnist >/dev/null \
      || { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }
  fi
fi
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ ! -d data/fashion_mnist ]; then
  echo "== NOTE: Fashion-MNIST not found and not installable here (needs root + apt-get)."
  echo "   Falling back to scikit-learn's digits (8x8 images); accuracy is not comparable."
  .venv/bin/python -c "import sklearn" 2>/dev/null || .venv/bin/pip install -q scikit-learn
  dataset=digits
fi
run=runs/demo-$(date +%Y%m%d-%H%M%S)
.venv/bin/pemn train configs/fmnist_convmixer.toml data.dataset=$dataset \
  out_dir=runs name="$(basename "$run")" "$@"
.venv/bin/pemn pack "$run" -o "$run/model.pemn"
.venv/bin/pemn pack "$run" -o "$run/model-fp16.pemn" --precision fp16
echo "== the compact file as shipped (model.pemn keeps the exact fp32 state, to train further)"
.venv/bin/pemn eval "$run/model-fp16.pemn"
.venv/bin/pemn size "$run/model-fp16.pemn"
echo "== wall time, set-up included: $(( $(date +%s) - start )) s; run directory: $run"
