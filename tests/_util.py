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


_SERVER = r"""
import contextlib, io, json, sys, textwrap, traceback
import jax
out = sys.stdout
for line in sys.stdin:
    req = json.loads(line)
    buf, error = io.StringIO(), ""
    try:
        with contextlib.redirect_stdout(buf), jax.enable_x64(req["x64"]):
            exec(compile(textwrap.dedent(req["code"]), "<snippet>", "exec"), {"__name__": "__snippet__"})
    except BaseException:
        error = traceback.format_exc()
    out.write("@@RESULT " + json.dumps({"stdout": buf.getvalue(), "error": error}) + "\n")
    out.flush()
"""


class DeviceWorker:
    """One long-lived interpreter with ``devices`` virtual CPU devices that runs test snippets.

    Starting an interpreter and importing JAX and the packages costs seconds; the suite's
    multi-device checks share one per pytest worker (the ``four_devices`` fixture) instead of
    starting one each. Every snippet runs in a fresh namespace (its imports are cached by the
    interpreter), under ``jax.enable_x64(x64)``; ``run`` returns what it printed and fails the
    test with the snippet's traceback if it raised.
    """

    def __init__(self, devices: int):
        import tempfile

        e = dict(os.environ)
        e["XLA_FLAGS"] = (
            e.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
        ).strip()
        e["JAX_PLATFORMS"] = "cpu"
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.stderr, text=True, env=e, cwd=str(REPO),
        )

    def run(self, code: str, *, x64: bool = False, timeout: float = 600) -> str:
        import json
        import select

        self.proc.stdin.write(json.dumps({"code": code, "x64": x64}) + "\n")
        self.proc.stdin.flush()
        while True:
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
            line = self.proc.stdout.readline() if ready else ""
            if not line:
                self.stderr.seek(0)
                raise AssertionError(
                    f"device worker {'timed out' if not ready else 'died'}:\n{self.stderr.read()[-4000:]}"
                )
            if line.startswith("@@RESULT "):
                res = json.loads(line[len("@@RESULT "):])
                assert not res["error"], f"snippet failed:\n{res['error'][-4000:]}"
                return res["stdout"]

    def close(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.stderr.close()


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
