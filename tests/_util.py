"""Test helpers: pytree comparison with per-dtype tolerances, subprocess runners, notebooks."""

from __future__ import annotations

import contextlib
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
import contextlib, io, json, os, sys, textwrap, traceback
import jax
results = os.fdopen(int(sys.argv[1]), "w")  # a private pipe: nothing else writes to it
for line in sys.stdin:
    req = json.loads(line)
    buf, error = io.StringIO(), ""
    try:
        with contextlib.redirect_stdout(buf), jax.enable_x64(req["x64"]):
            exec(compile(textwrap.dedent(req["code"]), "<snippet>", "exec"), {"__name__": "__snippet__"})
    except BaseException:
        error = traceback.format_exc()
    results.write(json.dumps({"id": req["id"], "stdout": buf.getvalue(), "error": error}) + "\n")
    results.flush()
"""


class DeviceWorker:
    """One long-lived interpreter with ``devices`` virtual CPU devices that runs test snippets.

    Starting an interpreter and importing JAX and the packages costs seconds; the suite's
    multi-device checks share one per pytest worker (the ``four_devices`` fixture) instead of
    starting one each. Every snippet runs in a fresh namespace (its imports are cached by the
    interpreter), under ``jax.enable_x64(x64)``; ``run`` returns what it printed and fails the
    test with the snippet's traceback if it raised. Results come back on a private pipe, tagged
    with the request's id, so output a snippet writes to the process's own stdout or stderr
    (C libraries, subprocesses) cannot be mistaken for a result. A snippet that times out or
    kills the interpreter fails its test; the interpreter is then replaced, so the next test
    starts clean. Snippets share ``sys.modules``: a check such as "matplotlib was not imported"
    covers every snippet run before it (none of them plots).
    """

    def __init__(self, devices: int):
        self.devices = devices
        self.proc = None
        self._next = 0

    def _start(self):
        import tempfile

        e = dict(os.environ)
        e["XLA_FLAGS"] = (
            e.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={self.devices}"
        ).strip()
        e["JAX_PLATFORMS"] = "cpu"
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in _stop())
        r, w = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-c", _SERVER, str(w)], stdin=subprocess.PIPE,
            stdout=self.stderr, stderr=self.stderr, text=True, env=e, cwd=str(REPO),
            pass_fds=(w,),
        )
        os.close(w)
        self.results, self.buffer = r, b""

    def _stop(self):
        if self.proc is None:
            return
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.results)
        self.stderr.close()
        self.proc = None

    def _fail(self, what: str):
        self.stderr.seek(0)
        tail = self.stderr.read()[-4000:]
        self.proc.kill()
        self._stop()
        raise AssertionError(f"device worker {what}:\n{tail}")

    def run(self, code: str, *, x64: bool = False, timeout: float = 600) -> str:
        import json
        import select
        import time

        if self.proc is None or self.proc.poll() is not None:
            self._stop()
            self._start()
        self._next += 1
        rid = self._next
        try:
            self.proc.stdin.write(json.dumps({"id": rid, "code": code, "x64": x64}) + "\n")
            self.proc.stdin.flush()
        except OSError:
            self._fail("died before the snippet was sent")
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                res = json.loads(line)
                if res["id"] == rid:
                    assert not res["error"], f"snippet failed:\n{res['error'][-4000:]}"
                    return res["stdout"]
            left = deadline - time.monotonic()
            if left <= 0:
                self._fail(f"timed out after {timeout} s")
            # short waits: a snippet's own child process may hold the pipe open after the
            # interpreter died, so also ask the process itself
            ready, _, _ = select.select([self.results], [], [], min(left, 1.0))
            if not ready and self.proc.poll() is not None:
                self._fail(f"died (exit code {self.proc.returncode})")
            if ready:
                chunk = os.read(self.results, 1 << 16)
                if not chunk:
                    self._fail(f"died (exit code {self.proc.wait()})")
                self.buffer += chunk

    def close(self):
        self._stop()


def run_notebook(path, *, timeout: int = 600, quick: bool = True):
    """Execute a notebook top to bottom (``LANDSCAPE_QUICK=1`` unless ``quick=False``).

    By default in an IPython kernel inside this process (ipykernel's in-process kernel: the
    same shell, display hooks and inline figures as a Jupyter kernel, and the same messages
    turned into outputs as nbclient turns them), so a notebook does not pay ~3.5 s for a new
    interpreter and its imports, and it meets the programs this process has compiled already.
    The notebook gets a fresh namespace and the defaults a new kernel has (no float64, JAX's
    default rank promotion, matplotlib's inline backend, the notebook's folder as working
    directory); what it changes (rcParams, backend, warning filters, working directory) is put
    back afterwards. ``LANDSCAPE_NOTEBOOK_KERNEL=subprocess`` runs it in a separate kernel
    through nbclient instead, as Jupyter would.
    """
    import nbformat

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    old = os.environ.get("LANDSCAPE_QUICK")
    os.environ["LANDSCAPE_QUICK"] = "1" if quick else "0"
    try:
        if os.environ.get("LANDSCAPE_NOTEBOOK_KERNEL", "inprocess") == "subprocess":
            _run_notebook_subprocess(nb, path, timeout)
        else:
            _run_notebook_inprocess(nb, path, timeout)
    finally:
        if old is None:
            os.environ.pop("LANDSCAPE_QUICK", None)
        else:
            os.environ["LANDSCAPE_QUICK"] = old
    return nb


class NotebookCellError(AssertionError):
    """A notebook cell raised: its index, the exception and the kernel's traceback."""


def _run_notebook_subprocess(nb, path: Path, timeout: int):
    from nbclient import NotebookClient

    old_path = os.environ.get("PYTHONPATH")
    # the kernel imports this checkout even where the package is not (or elsewhere) installed
    root = str(Path(__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, old_path) if p)
    try:
        NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(path.parent)}},
        ).execute()
    finally:
        if old_path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old_path


class NotebookTimeout(BaseException):
    """A cell ran past its time (a ``BaseException``: the library's ``except Exception``
    handlers, which recompute or record a failed section, must not swallow it)."""


@contextlib.contextmanager
def _cell_alarm(seconds: int, what: str):
    """Raise :class:`NotebookTimeout` in the main thread after ``seconds``; an outer timer
    (pytest-timeout's, say) is suspended meanwhile and re-armed with what it had left. Off the
    main thread, or without SIGALRM, cells run untimed."""
    import signal
    import threading
    import time

    if not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        raise NotebookTimeout(f"{what}: still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, _raise)
    outer, interval = signal.setitimer(signal.ITIMER_REAL, max(float(seconds), 1.0))
    start = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer > 0:  # what the outer timer had left (at least a moment: it may be due now)
            left = max(outer - (time.monotonic() - start), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, left, interval)


def _run_notebook_inprocess(nb, path: Path, timeout: int):
    import builtins
    import warnings

    import matplotlib
    import matplotlib.pyplot as plt
    import nbformat

    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # ipykernel's debugger chatter
    # tqdm.auto picks its notebook bars once, at import, if ipykernel's shell module is loaded:
    # decided before ipykernel is imported, the rest of this process keeps console bars (inside
    # the notebooks too; without ipywidgets, as here, a kernel falls back to them as well)
    import tqdm.auto  # noqa: F401
    from ipykernel.inprocess.manager import InProcessKernelManager
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.hist_file = ":memory:"  # no shared sqlite file between workers
    old_cwd = os.getcwd()
    old_backend = matplotlib.get_backend()
    old_rc = {k: v for k, v in matplotlib.rcParams.items() if k != "backend"}
    old_main = sys.modules.get("__main__")
    old_builtins = dict(vars(builtins))
    old_last = {k: getattr(sys, k) for k in ("last_type", "last_value", "last_traceback")
                if hasattr(sys, k)}
    # what a new kernel starts from: no figures, matplotlib's rc file (tests may have changed
    # rcParams or left figures open, which the notebook's plt calls would draw into)
    plt.close("all")
    matplotlib.rc_file_defaults()
    km = InProcessKernelManager(config=config)
    km.start_kernel()
    kernel = km.kernel
    kc = km.client()
    kc.start_channels()
    kernel.shell.reset(new_session=True)
    kernel.shell.colors = "nocolor"  # tracebacks without ANSI codes in the failure message
    # matplotlib-inline registers its PNG formatter with the first shell of a process only (it
    # remembers the backend it set up): forget it, so this notebook's shell gets one too
    from matplotlib_inline import backend_inline

    vars(backend_inline.configure_inline_support).pop("current_backend", None)

    def execute(code: str, outputs: list, store_history: bool = True):
        """Run ``code``; its outputs appended to ``outputs`` as nbclient appends them."""
        msg_id = kc.execute(code, store_history=store_history)
        reply = kc.get_shell_msg(timeout=10)
        kernel.stdout.flush()
        kernel.stderr.flush()
        clear_next = False
        for msg in kc.iopub_channel.get_msgs():
            kind, content = msg["msg_type"], msg["content"]
            # ipykernel's streams carry an empty parent header: one request runs at a time,
            # so every stream message drained here belongs to this one
            if kind != "stream" and msg["parent_header"].get("msg_id") != msg_id:
                continue
            if kind == "clear_output":
                if content.get("wait"):
                    clear_next = True
                else:
                    outputs.clear()
            elif kind == "update_display_data":
                did = content.get("transient", {}).get("display_id")
                for o in outputs:
                    if did and o.get("metadata", {}).get("_display_id") == did:
                        o["data"], o["metadata"] = content["data"], content["metadata"]
            elif kind in ("stream", "display_data", "execute_result", "error"):
                if clear_next:
                    outputs.clear()
                    clear_next = False
                out = nbformat.v4.output_from_msg(msg)
                did = content.get("transient", {}).get("display_id")
                if did:  # found again by update_display_data; dropped before returning
                    out.setdefault("metadata", {})["_display_id"] = did
                outputs.append(out)
        for o in outputs:
            o.get("metadata", {}).pop("_display_id", None)
        return reply["content"]

    try:
        os.chdir(path.parent)
        with warnings.catch_warnings(), jax.enable_x64(False), jax.numpy_rank_promotion("allow"):
            reply = execute("%matplotlib inline", [], store_history=False)
            assert reply["status"] == "ok", reply
            for i, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                cell.outputs = []
                with _cell_alarm(timeout, f"{path.name}, cell {i}"):
                    reply = execute(cell.source, cell.outputs)
                cell.execution_count = reply.get("execution_count")
                if reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt":
                    raise KeyboardInterrupt(f"{path.name}: cell {i}")  # Ctrl-C stops pytest
                if reply["status"] == "error":
                    raise NotebookCellError(
                        f"{path.name}: cell {i} raised {reply['ename']}: {reply['evalue']}\n"
                        + "\n".join(reply.get("traceback", []))[-6000:]
                    )
    finally:
        os.chdir(old_cwd)
        kernel.shell.reset(new_session=True)
        kc.stop_channels()
        socket = kernel._underlying_iopub_socket
        km.shutdown_kernel()
        with contextlib.suppress(Exception):  # its zmq context's threads, which nothing ends
            socket.context.destroy(linger=0)
        # no IPython shell left behind: get_ipython() is None again for the tests that follow
        # (tqdm.auto, for one, would take the process for a notebook), and the next notebook
        # gets a shell of its own, as a new kernel would
        type(kernel.shell).clear_instance()
        plt.close("all")
        plt.switch_backend(old_backend)
        matplotlib.rcParams.update(old_rc)
        if old_main is not None:
            sys.modules["__main__"] = old_main
        for k in set(vars(builtins)) - set(old_builtins):
            delattr(builtins, k)
        for k, v in old_builtins.items():
            if vars(builtins).get(k) is not v:
                setattr(builtins, k, v)
        for k in ("last_type", "last_value", "last_traceback", "last_exc"):
            if k in old_last:
                setattr(sys, k, old_last[k])
            elif hasattr(sys, k):
                delattr(sys, k)
