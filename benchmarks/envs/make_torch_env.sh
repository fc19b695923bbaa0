#!/usr/bin/env bash
# Creates .venv-torch: the PyTorch peers of the benchmarks (PyHessian, loss-landscapes).
# torch==2.13.0 is the CPU build that lies on this machine's disk; any other version pulls a
# multi-GB CUDA build. Run from the repository root.
set -euo pipefail
cd "$(dirname "$0")/../.."
python3.11 -m venv .venv-torch
.venv-torch/bin/pip install -q --upgrade pip
.venv-torch/bin/pip install -q torch==2.13.0
# pyhessian 0.1 and loss-landscapes 3.x from PyPI; --no-deps keeps torch at the CPU build.
.venv-torch/bin/pip install -q --no-deps pyhessian loss-landscapes
.venv-torch/bin/pip install -q numpy scipy matplotlib tqdm scikit-learn
.venv-torch/bin/python -c "import torch, pyhessian, loss_landscapes; print('torch', torch.__version__)"
.venv-torch/bin/pip freeze > benchmarks/envs/torch-env.freeze.txt
