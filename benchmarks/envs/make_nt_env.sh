#!/usr/bin/env bash
# Create the pinned neural-tangents reference environment at <repo>/.venv-nt (git-ignored).
#
# neural-tangents 0.6.5 (the last release; the project is archived) does not import on JAX >= 0.6,
# so it lives in its own virtual environment, used only by tests/data/make_ntk_fixtures.py and
# benchmarks/ntk/worker.py. pip installs TensorFlow and tf2jax as neural-tangents' declared
# dependencies, but they are never imported: the scripts pre-seed
# sys.modules['neural_tangents.experimental'] (the only module importing them) with an empty module.
#
# Usage: bash benchmarks/envs/make_nt_env.sh   (from anywhere; about 1-2 minutes)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${NT_VENV:-$REPO/.venv-nt}"
PY="${PYTHON:-python3.11}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet \
  jax==0.4.23 jaxlib==0.4.23 'numpy<2' 'scipy<1.13' neural-tangents==0.6.5
"$VENV/bin/python" - <<'PY'
import sys, types
sys.modules["neural_tangents.experimental"] = types.ModuleType("neural_tangents.experimental")
import jax, neural_tangents as nt
print("neural-tangents", nt.__version__ if hasattr(nt, "__version__") else "?", "jax", jax.__version__)
PY
"$VENV/bin/pip" freeze > "$VENV/pip-freeze.txt"
echo "created $VENV (pip freeze in $VENV/pip-freeze.txt)"
