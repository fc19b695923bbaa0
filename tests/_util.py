"""Test helpers: pytree comparison with per-dtype tolerances, subprocess runners, notebooks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np

REPO = Path(__file__).resolve().parent.parent

# (rtol, atol) per dtype, as in neural-tangents' test table.
TOL = {
    np.dtype(np.float32): (1e-4, 1e-5),
    np.dtype(np.float64): (1e-10, 1e-12),
}


def tol(dtype):
    return TOL[np.dtype(dtype)]


def assert_trees_close(a, b, *, rtol=None, atol=None, err_msg=""):
    """Compare two pytrees leaf by leaf (same structure, shapes, close values)."""
    sa, sb = jax.tree.structure(a), jax.tree.structure(b)
    assert sa == sb, f"tree structures differ: {sa} vs {sb}"
    for path, x, y in zip(
        [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(a)[0]],
        jax.tree.leaves(a),
        jax.tree.leaves(b),
    ):
        x, y = np.asarray(x), np.asarray(y)
        assert x.shape == y.shape, f"{path}: shape {x.shape} vs {y.shape}"
        r, t = (rtol, atol) if rtol is not None else tol(np.result_type(x.dtype, np.float32))
        np.testing.assert_allclose(
            x, y, rtol=r, atol=atol if atol is not None else t, err_msg=f"{err_msg} {path}"
        )


def max_abs_diff(a, b) -> float:
    """Largest absolute leaf-wise difference, computed in NumPy (no silent float32 cast)."""
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


def max_abs(a) -> float:
    return max(float(np.max(np.abs(np.asarray(x)))) for x in jax.tree.leaves(a))


def run_python(code: str, *, devices: int = 1, timeout: int = 600, env: dict | None = None) -> str:
    """Run ``code`` in a fresh interpreter with ``devices`` virtual CPU devices; return stdout.

    Fails the test (AssertionError with the stderr tail) on a non-zero exit.
    """
    e = dict(os.environ)
    e["XLA_FLAGS"] = (
        e.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
    ).strip()
    e["JAX_PLATFORMS"] = "cpu"
    if env:
        e.update(env)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=e,
        cwd=str(REPO),
    )
    assert proc.returncode == 0, (
        f"subprocess failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}"
    )
    return proc.stdout


def run_notebook(path, *, timeout: int = 600, quick: bool = True):
    """Execute a notebook top to bottom (``LANDSCAPE_QUICK=1`` unless ``quick=False``)."""
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    old = os.environ.get("LANDSCAPE_QUICK")
    old_path = os.environ.get("PYTHONPATH")
    os.environ["LANDSCAPE_QUICK"] = "1" if quick else "0"
    # the kernel imports this checkout even where the package is not (or elsewhere) installed
    root = str(Path(__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, old_path) if p)
    try:
        client = NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(path.parent)}},
        )
        client.execute()
    finally:
        if old is None:
            os.environ.pop("LANDSCAPE_QUICK", None)
        else:
            os.environ["LANDSCAPE_QUICK"] = old
        if old_path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old_path
    return nb
