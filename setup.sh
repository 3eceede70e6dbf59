#!/usr/bin/env bash
# Create .venv and install learnpos into it: ./setup.sh [EXTRAS], e.g. ./setup.sh test
# Without an NVIDIA GPU, PyTorch's CPU wheel is installed first: a plain `pip install torch`
# on Linux pulls a multi-GB CUDA build that a CPU machine cannot use.
set -euo pipefail
cd "$(dirname "$0")"
extras=${1:-}
python3 -m venv .venv
pip=".venv/bin/pip"
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found; installing the default (CUDA) PyTorch build"
  else
    echo "setup: no NVIDIA GPU; installing the CPU build of PyTorch first"
    "$pip" install -q --retries 0 --timeout 20 "torch>=2.3" --index-url https://download.pytorch.org/whl/cpu \
      || "$pip" install -q "torch==2.13.0"  # fallback for machines with a local CPU wheel
  fi
fi
"$pip" install -q -e ".${extras:+[$extras]}"
echo "setup: done (.venv/bin/learnpos)"
