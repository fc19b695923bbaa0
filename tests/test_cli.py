"""The `landscape` command (help, version, `python -m landscape`, `landscape demo`, Ctrl-C) and
the README's two Quickstart commands."""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
from types import SimpleNamespace

import jax
import pytest

import landscape
from landscape import cli
from tests._util import REPO


def test_help_describes_the_command(capsys):
    """``landscape --help`` says what the command line does (not the module docstring's RST
    title), lists ``demo`` with a description, and points to the README; ``demo --help``
    describes the demo, its outputs and how an interrupted demo resumes."""
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal width
    assert "``" not in text and "The landscape command" not in text
    for words in ("JAX toolkit", "loss-landscape", "neural tangent kernels",
                  "demo train the default MLP on the embedded digits data and write a report of every analysis",
                  "report.json", "README.md", "landscape demo --help", "--version"):
        assert words in text, words
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for words in ("Train the default MLP", "report.json", "exit code 130", "resumes an interrupted report",
                  "--quick", "--no-report", "default landscape-runs/demo"):
        assert words in text, words


def test_version(capsys):
    from importlib import metadata

    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"landscape {metadata.version('landscape-ntk')}\n"
    assert metadata.version("landscape-ntk") == landscape.__version__


def test_python_m_landscape():
    """``python -m landscape`` is the same command (help names it ``python -m landscape``)."""
    procs = [subprocess.Popen([sys.executable, "-m", "landscape", flag], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=REPO)
             for flag in ("--version", "--help")]  # side by side (neither imports JAX: tests/test_imports.py)
    (version, err_v), (usage, err_h) = (p.communicate(timeout=120) for p in procs)
    assert [p.returncode for p in procs] == [0, 0], err_v + err_h
    assert version == f"landscape {landscape.__version__}\n"
    assert usage.startswith("usage: python -m landscape [-h] [--version] COMMAND")
    assert "demo" in usage and "README.md" in usage


def test_an_interrupt_swallowed_by_a_gc_callback_is_sent_again(monkeypatch, capsys):
    """Python prints a KeyboardInterrupt raised inside a garbage-collection callback (JAX has one)
    as "Exception ignored" and carries on: the demo would ignore that Ctrl-C. The CLI's hook
    prints nothing and sends the signal again once the callback is over (here ``os.kill`` is
    recorded, not sent)."""
    import gc
    import threading

    sent = []
    done = threading.Event()
    monkeypatch.setattr(os, "kill", lambda pid, sig: (sent.append((pid, sig)), done.set()))
    interrupts = cli._Interrupts(hard=False)
    interrupts.count = 1  # its handler raised the KeyboardInterrupt below
    monkeypatch.setattr(sys, "unraisablehook", interrupts._unraisable)

    def callback(phase, info):
        if phase == "start":
            raise KeyboardInterrupt

    gc.callbacks.append(callback)
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(callback)
    assert done.wait(5)
    assert sent == [(os.getpid(), signal.SIGINT)] and interrupts.count == 0  # not a second Ctrl-C
    assert "Exception ignored" not in capsys.readouterr().err
    with pytest.raises(KeyboardInterrupt):
        interrupts.count = 1
        interrupts.check()  # the backstop between steps


def _interrupt_after_first_section(argv):
    """Run ``python -m landscape *argv`` and send it one SIGINT as soon as it prints its first
    report section (the next section is then compiling); return what it did."""
    import tempfile

    # a child of a process that ignores SIGINT ignores it too (a shell starts background jobs
    # so): give it Python's default, as a terminal would
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "landscape", *argv], stdout=subprocess.PIPE, stderr=err,
            text=True, cwd=REPO,
            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) if ignored else None,
        )
        lines, sent = [], False
        for line in proc.stdout:  # the CLI flushes each report line, also into a pipe
            lines.append(line)
            if line.startswith("  eigenvalues "):
                proc.send_signal(signal.SIGINT)
                sent = True
                break
        rest, _ = proc.communicate(timeout=120)
        err.seek(0)
        return SimpleNamespace(rc=proc.returncode, sent=sent, stdout="".join(lines) + rest,
                               stderr=err.read())


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """One quick demo for the module: started in a subprocess and stopped by Ctrl-C after its
    first report section, then the same command run again in this process to completion.

    ``test_ctrl_c_during_the_report_exits_130_and_resumes`` checks the interrupted run and that
    the rerun resumed; ``test_demo_quick`` checks the completed run. The suite pays for one quick
    demo plus the start of another (start-up, training, one section).
    """
    run_dir = tmp_path_factory.mktemp("demo") / "run"
    argv = ["demo", "--quick", "--out", str(run_dir), "--no-progress"]
    interrupted = _interrupt_after_first_section(argv)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.main(argv)
    return SimpleNamespace(run_dir=run_dir, argv=argv, interrupted=interrupted, rc=rc,
                           out=out.getvalue())


def test_ctrl_c_during_the_report_exits_130_and_resumes(quick_demo):
    """Ctrl-C while the report compiles its second section: exit code 130, no traceback, one
    line naming what is saved and the command that resumes; that command loads the finished
    sections and completes."""
    run = quick_demo.interrupted
    assert run.sent, f"the demo ended before printing its first report section:\n{run.stdout}\n{run.stderr}"
    assert run.rc == cli.INTERRUPTED, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    lines = [ln for ln in run.stderr.splitlines() if "interrupted" in ln]
    assert len(lines) == 1 and run.stderr.rstrip().endswith(lines[0]), run.stderr
    command = "python -m landscape " + " ".join(quick_demo.argv)
    m = re.fullmatch(r"landscape demo: interrupted; saved the trained run and (\d)/7 report sections "
                     r"\((.*)\) in (.*); resume with: (.*)", lines[0])
    assert m, lines[0]
    saved = m.group(2).split(", ")
    assert saved[0] == "eigenvalues" and int(m.group(1)) == len(saved)
    assert m.group(3) == str(quick_demo.run_dir.resolve()) and m.group(4) == command
    # the rerun of that command resumed: the saved sections were loaded, the others computed
    assert quick_demo.rc == 0
    for name in saved:
        assert re.search(rf"^  {name} .*\(loaded\)", quick_demo.out, re.M), quick_demo.out
    assert not re.search(r"^  ntk .*\(loaded\)", quick_demo.out, re.M)
    assert "replacing" not in quick_demo.out


def test_demo_quick(quick_demo):
    """The quick demo trains, writes its run, and writes the report of every analysis.

    The report's sections are checked against each other: they come from different modules
    (hessian, surface, connect, the training loop) and must agree where they measure the same
    quantity.
    """
    import json

    import numpy as np

    from landscape import connect, hessian, surface

    run_dir = quick_demo.run_dir
    assert quick_demo.rc == 0
    out = quick_demo.out
    for word in ("train loss", "test accuracy", "parameters       85002", "run directory",
                 "eigenvalues", "connectivity", "ntk", "report time"):
        assert word in out
    run = landscape.load_run(run_dir)
    assert run.config["command"] == "landscape demo" and run.model.num_params == 85002

    report = json.loads((run_dir / "report.json").read_text())
    assert set(report["sections"]) == {"eigenvalues", "trace", "density", "slice", "interpolation",
                                       "connectivity", "ntk"}
    assert (run_dir / "report.png").stat().st_size > 10_000
    sec = run_dir / "report"
    eig = hessian.EigenResult.load(sec / "eigenvalues.npz")
    dens = hessian.DensityResult.load(sec / "density.npz")
    line = surface.SliceResult.load(sec / "slice.npz")
    interp = surface.SliceResult.load(sec / "interpolation.npz")
    linear = connect.Profile.load(sec / "profile_linear.npz")
    assert eig.converged.all() and eig.values[0] >= eig.values[1] > 0
    # the largest Gauss node of a Krylov space never exceeds lambda_max (float32 products)
    assert dens.top_node <= eig.values[0] * (1 + 1e-4)
    # the slice's centre, the interpolation's t = 1 and the profile's t = 0 are all the
    # exact training loss at the trained parameters, which training logged last (float32 sums
    # in different orders: 1e-5 relative)
    exact = float(run.history["train_loss"][-1])
    centre = float(np.asarray(line.train["loss"])[len(line.alphas) // 2])
    t1 = float(np.asarray(interp.train["loss"])[np.argmin(abs(np.asarray(interp.alphas) - 1))])
    np.testing.assert_allclose([centre, t1, float(np.asarray(linear.train["loss"])[0])], exact, rtol=1e-5)
    assert report["sections"]["interpolation"]["loss_init"] > 5 * exact
    k = report["sections"]["connectivity"]
    assert k["barrier_linear"] > 0 and k["barrier_aligned"] < k["barrier_linear"]

    # a second report of the same run resumes: every section is loaded, none recomputed
    from landscape.report import ReportSizes, analysis_report

    ds = landscape.load_data("digits")
    init = landscape.make_model("mlp", input_shape=ds.input_shape, num_outputs=10, hidden=(256, 256), seed=0)
    summary = analysis_report(run_dir, run, ds, init_params=init.params, train_other=None,
                              sizes=ReportSizes.quick(), figure=False, log=lambda *a: None)
    assert all(s["loaded"] for s in summary["sections"].values())


def test_report_sections_belong_to_one_run(tmp_path):
    """The report's own entries of other parameters or settings are replaced, the same ones are
    kept, and nothing the report did not write is ever deleted."""
    import numpy as np
    import pytest

    from landscape import report

    root = tmp_path / "report"
    store = report._open_store(root, {"params": "a", "seed": 0}, print)
    store.save("trace", {"v": np.ones(1)})
    store.save_dir("other_run", lambda d: (d / "params.npz").write_bytes(b"x"))
    (root / "notes.txt").write_text("mine")
    store = report._open_store(root, {"params": "a", "seed": 0}, print)
    assert store.has("trace") and (root / "other_run").exists()
    msgs = []
    report._open_store(root, {"params": "b", "seed": 0}, msgs.append)
    assert "replacing" in msgs[0]
    assert not (root / "trace.npz").exists() and not (root / "other_run").exists()
    assert (root / "notes.txt").read_text() == "mine"  # not the report's: kept
    # a directory the report did not write is refused, untouched
    foreign = tmp_path / "paper" / "report"
    foreign.mkdir(parents=True)
    (foreign / "eigenvalues.npz").write_bytes(b"x")
    with pytest.raises(ValueError, match="was not written by a landscape store"):
        report._open_store(foreign, {"params": "a"}, print)
    assert (foreign / "eigenvalues.npz").exists()
    report._open_store(tmp_path / "empty", {"params": "a"}, print)  # new or empty: fine


def test_full_demo_reaches_95_percent(tmp_path, capsys):
    # The done-when criterion of the foundation: >= 95% test accuracy on digits, default MLP.
    assert cli.main(["demo", "--out", str(tmp_path / "run"), "--no-progress", "--no-report"]) == 0
    out = capsys.readouterr().out
    acc = float(re.search(r"test accuracy\s+([0-9.]+)", out).group(1))
    assert acc >= 0.95
    secs = float(re.search(r"training time\s+([0-9.]+) s", out).group(1))
    assert secs < 60


def test_readme_quickstart_and_ci_agree():
    readme = (REPO / "README.md").read_text()
    quick = readme.split("## Quickstart", 1)[1].split("```", 2)[1]
    lines = [ln.strip() for ln in quick.splitlines() if ln.strip() and not ln.startswith("bash")]
    assert lines == ["pip install -e . && landscape demo", "pip install -e '.[test]' && pytest"]
    ci = (REPO / ".ci" / "run").read_text()
    assert "pip install -e '.[test]' && pytest\n" in ci
    assert "--durations=15" in (REPO / "pyproject.toml").read_text()


def test_readme_examples_name_only_existing_api():
    """Every README code block parses, and every public name it uses exists.

    The blocks themselves were run end to end (about 45 s on two cores, too slow for the suite);
    this guards against renames: ``landscape.x``, ``hessian.x``, ``surface.x``, ``connect.x``,
    ``plot.x`` and ``ntk.x`` attribute chains are resolved against the installed packages.
    """
    import ast
    import importlib
    import re

    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert len(blocks) >= 6
    roots = {
        "landscape": "landscape",
        "hessian": "landscape.hessian",
        "surface": "landscape.surface",
        "connect": "landscape.connect",
        "plot": "landscape.plot",
        "ntk": "ntk",
    }
    import inspect

    seen = set()
    for block in blocks:
        tree = ast.parse(block)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                root = node.value.id
                if root in roots:
                    mod = importlib.import_module(roots[root])
                    assert hasattr(mod, node.attr), f"README uses {root}.{node.attr}, which does not exist"
                    seen.add(f"{root}.{node.attr}")
            # calls bind to the real signatures (argument count and keyword names)
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in roots
                    and not any(isinstance(a, ast.Starred) for a in node.args)
                    and all(k.arg is not None for k in node.keywords)):
                obj = getattr(importlib.import_module(roots[node.func.value.id]), node.func.attr)
                try:
                    sig = inspect.signature(obj)
                except (TypeError, ValueError):
                    continue
                try:
                    sig.bind(*[None] * len(node.args), **{k.arg: None for k in node.keywords})
                except TypeError as e:
                    raise AssertionError(f"README call {ast.unparse(node)[:80]}: {e}") from None
    for name in ("hessian.eigenvalues", "surface.slice_2d", "connect.fit_curve", "ntk.empirical_ntk"):
        assert name in seen


def test_report_rejects_bad_input(tmp_path, trained_mlp, digits_data):
    import jax.numpy as jnp
    import pytest

    from landscape.report import ReportSizes, analysis_report

    run = trained_mlp
    kw = dict(init_params=run.model.params, train_other=None, figure=False, log=lambda *a: None)
    with pytest.raises(TypeError, match="result must be a TrainResult"):
        analysis_report(tmp_path, run.model, digits_data, **kw)
    with pytest.raises(TypeError, match="data must be a landscape Dataset"):
        analysis_report(tmp_path, run, digits_data.train, **kw)
    with pytest.raises(ValueError, match="sizes.k"):
        analysis_report(tmp_path, run, digits_data, sizes=ReportSizes(k=0), **{**kw})
    bad = {k: v for k, v in kw.items() if k != "init_params"}
    with pytest.raises(ValueError, match="init_params"):
        analysis_report(tmp_path, run, digits_data, init_params={"w": jnp.ones(3)}, **bad)
    nan = jax.tree.map(lambda a: a * jnp.nan, run.model.params)
    with pytest.raises(ValueError, match="init_params"):
        analysis_report(tmp_path, run, digits_data, init_params=nan, **bad)
    assert not (tmp_path / "report").exists()  # nothing written before the inputs are checked


def test_ctrl_c_while_the_command_starts_up(tmp_path):
    """An interrupt during the package import (JAX, the foundation: the first ~1.5 s, before the
    command's own handler exists) gave Python's traceback or death by SIGINT (2 of 40 tries);
    the start-up guard (``landscape._startup``) exits 130 with one line instead."""
    import signal
    import subprocess
    import sys
    import time

    p = subprocess.Popen([sys.executable, "-m", "landscape", "demo", "--quick", "--out", str(tmp_path / "run"),
                          "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "interrupted" in err.strip().splitlines()[-1], err[-2000:]


def test_start_up_guard_only_for_the_command_line(monkeypatch):
    """A library user's import (a script, a notebook) keeps Python's own Ctrl-C."""
    import sys

    from landscape import _startup

    monkeypatch.setattr(sys, "argv", ["my_script.py"])
    monkeypatch.setattr(sys, "orig_argv", ["python", "my_script.py"], raising=False)
    assert not _startup._is_command_line() and not _startup.guard()
    monkeypatch.setattr(sys, "argv", ["/usr/bin/landscape", "demo"])
    assert _startup._is_command_line()
    monkeypatch.setattr(sys, "argv", ["-m"])
    monkeypatch.setattr(sys, "orig_argv", ["python", "-m", "landscape", "demo"], raising=False)
    assert _startup._is_command_line()


def test_start_up_guard_ignores_a_scripts_own_arguments(monkeypatch):
    """``python my_script.py -m landscape``: ``-m landscape`` are the script's arguments."""
    import sys

    from landscape import _startup

    monkeypatch.setattr(sys, "argv", ["my_script.py", "-m", "landscape"])
    monkeypatch.setattr(sys, "orig_argv", ["python", "my_script.py", "-m", "landscape"], raising=False)
    assert not _startup._is_command_line()
