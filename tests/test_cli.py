"""The `landscape` command (help, version, `python -m landscape`, `landscape demo`, Ctrl-C) and
the README's two Quickstart commands."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest

import landscape
from landscape import cli
from tests._util import REPO


def test_help_describes_every_command_and_option(capsys):
    """``landscape --help`` says what the command line does and lists every command; each
    command's ``--help`` describes it and explains every option with its default."""
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal width
    assert "``" not in text and "The landscape command" not in text
    for words in ("JAX toolkit", "loss-landscape", "neural tangent kernels", "study", "analyse",
                  "report", "demo", "README.md", "landscape demo --help", "--version"):
        assert words in text, words
    parser = cli._parser("landscape")
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name in ("study", "analyse", "report", "demo"):
        with pytest.raises(SystemExit):
            cli.main([name, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        for action in sub.choices[name]._actions:
            if action.option_strings and action.dest != "help":
                assert action.help and action.option_strings[0] in text, (name, action.dest)
                if action.default not in (None, False):
                    assert f"default {action.default}" in action.help, (name, action.dest)
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for words in ("built-in config", "report.html", "with code 130", "resumes an interrupted",
                  "--quick", "--full", "default landscape-runs/demo", "Li et al. 2018"):
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


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """One quick demo for the module (``landscape demo --quick``), run in this process."""
    run_dir = tmp_path_factory.mktemp("demo") / "run"
    argv = ["demo", "--quick", "--out", str(run_dir), "--no-progress"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.main(argv)
    return SimpleNamespace(run_dir=run_dir, argv=argv, rc=rc, out=out.getvalue())


def _numbers(tree, out=None):
    """Every number in a JSON tree (bools excluded)."""
    out = [] if out is None else out
    if isinstance(tree, dict):
        for v in tree.values():
            _numbers(v, out)
    elif isinstance(tree, list):
        for v in tree:
            _numbers(v, out)
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        out.append(tree)
    return out


def _strings(tree, out=None):
    out = set() if out is None else out
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.add(k)
            _strings(v, out)
    elif isinstance(tree, list):
        for v in tree:
            _strings(v, out)
    elif isinstance(tree, str):
        out.add(tree)
    return out


def test_demo_quick_writes_results_figures_and_report(quick_demo):
    """The quick demo: results.json with finite numbers and the expected keys, every figure a
    valid image, and the sections agree where they measure the same quantity."""
    import json
    import math
    import xml.etree.ElementTree as ET

    import matplotlib.image

    assert quick_demo.rc == 0, quick_demo.out
    run_dir = quick_demo.run_dir
    r = json.loads((run_dir / "results.json").read_text())
    assert {"schema", "title", "command", "config", "provenance", "model", "data", "sections",
            "overview", "report"} <= set(r)
    assert list(r["sections"]) == ["training", "hessian", "surface", "connect", "ntk",
                                 "trainability"]
    assert r["config"]["_mode"] == "quick" and r["model"]["num_params"] == 85002
    tr = r["sections"]["trainability"]["values"]  # Adam: the preconditioned limit
    assert tr["lr_limit"] > 0 and "b1" in tr["lr_rule"] and len(tr["lr_grid"]) == 13
    assert tr["lr_study_over_limit"] == pytest.approx(tr["lr_study"] / tr["lr_limit"], rel=1e-4)
    for name, sec in r["sections"].items():
        assert {"status", "seconds", "settings", "values", "figures", "checks"} <= set(sec), name
        nums = _numbers(sec["values"])
        assert nums and all(math.isfinite(v) for v in nums), name
        assert None not in sec["values"].values(), (name, sec["values"])
        for fig in sec["figures"] + ([r["overview"]] if name == "training" else []):
            png = run_dir / fig["file"]
            img = matplotlib.image.imread(png)  # a valid PNG
            assert img.shape[0] > 200 and img.shape[1] > 300, fig
            if "svg" in fig:
                assert ET.parse(run_dir / fig["svg"]).getroot().tag.endswith("svg")
    figures = sorted(p.name for p in (run_dir / "figures").iterdir())
    assert "overview.png" in figures and "surface-slice-2d.png" in figures
    assert all(c["passed"] is not False for s in r["sections"].values() for c in s["checks"]), \
        [c for s in r["sections"].values() for c in s["checks"]]
    h, sf, cn = (r["sections"][k]["values"] for k in ("hessian", "surface", "connect"))
    final = r["sections"]["training"]["values"]["train_loss"]
    # the largest Gauss node of a Krylov space never exceeds lambda_max (float32 products)
    assert h["top_node"] <= h["top_eigenvalues"][0] * (1 + 1e-4)
    # the slice's centre, the interpolation's t = 1, the path's start: the logged final loss
    for v in (sf["slice_centre"], sf["plane_centre"], sf["interp_end"], cn["loss_a"]):
        assert abs(v - final) <= 1e-5 * final
    assert sf["interp_init"] > 5 * final
    assert 0 < cn["barrier_aligned"] < cn["barrier_linear"]
    assert r["sections"]["ntk"]["values"]["width_slope"] < -0.3
    out = quick_demo.out
    for words in ("[training]", "[1/5] Curvature", "summary:", "checks: all passed",
                  "report.html", "skips section (four ResNets) and the structure section"):
        assert words in out, words


def test_a_rerun_loads_everything_and_draws_no_figure_again(quick_demo, tmp_path):
    """The same demo again in a copy of its directory: every section loaded, and no figure
    (the overview included) written again; with one part file gone, its section and the
    overview are drawn again and nothing else."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(quick_demo.run_dir, run_dir)
    figures = run_dir / "figures"

    def mtimes():
        return {p.name: p.stat().st_mtime_ns for p in figures.iterdir()}

    def rerun():
        argv = ["demo", "--quick", "--out", str(run_dir), "--no-progress"]
        with contextlib.redirect_stdout(io.StringIO()):
            assert cli.main(argv) == 0
        return json.loads((run_dir / "results.json").read_text())

    before = mtimes()
    r = rerun()
    assert all(sec["status"] == "loaded" for sec in r["sections"].values()), r["sections"]
    assert mtimes() == before
    (run_dir / "sections" / "ntk" / "ntk_trained.npz").unlink()  # one part to recompute
    r = rerun()
    after = mtimes()
    redrawn = {name for name in before if after[name] != before[name]}
    assert r["sections"]["ntk"]["status"].startswith("resumed"), r["sections"]["ntk"]
    assert redrawn == {"ntk-spectrum.png", "ntk-spectrum.svg", ".ntk-spectrum.key",
                       "overview.png", ".overview.key"}, redrawn


def test_demo_report_is_self_contained_and_its_numbers_come_from_results(quick_demo):
    """report.html passes an HTML parser, references nothing outside itself, and every number
    it shows is a number of results.json (the prose around them has none of its own)."""
    import json
    import re
    from html.parser import HTMLParser

    from landscape.study._html import fmt

    run_dir = quick_demo.run_dir
    text = (run_dir / "report.html").read_text()
    r = json.loads((run_dir / "results.json").read_text())
    allowed_numbers = {fmt(v) for v in _numbers(r)}
    strings = _strings(r)

    class Page(HTMLParser):
        def __init__(self):
            super().__init__(convert_charrefs=True)
            self.stack, self.refs, self.prose, self.nums, self.strs = [], [], [], [], []
            self.cls = []

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            for k in ("src", "href", "srcset", "action", "data"):
                if k in a:
                    self.refs.append((tag, k, a[k]))
            assert tag not in ("script", "link", "iframe", "object", "embed"), tag
            if tag not in ("meta", "img", "br", "hr", "input"):
                self.stack.append(tag)
                self.cls.append(a.get("class"))

        def handle_endtag(self, tag):
            assert self.stack and self.stack[-1] == tag, (tag, self.stack[-3:])
            self.stack.pop()
            self.cls.pop()

        def handle_data(self, data):
            if "style" in self.stack:
                assert "url(" not in data and "@import" not in data
                return
            if "title" in self.stack:
                return
            where = self.cls[-1] if self.cls else None
            (self.nums if where == "n" else self.strs if where == "s" else self.prose).append(data)

    page = Page()
    page.feed(text)
    page.close()
    assert page.stack == [], page.stack
    assert all(v.startswith("data:image/png;base64,") for _, k, v in page.refs), page.refs[:3]
    assert len(page.refs) >= 8  # the overview and the sections' figures, embedded
    assert "prefers-color-scheme: dark" in text and "@media print" in text
    bad = [n for n in page.nums if n not in allowed_numbers]
    assert not bad and len(page.nums) > 50, bad[:10]
    assert all(s in strings for s in page.strs), [s for s in page.strs if s not in strings][:5]
    prose = " ".join(page.prose)
    # citations (author et al. year, Figure 1, ResNet-56, CIFAR-10) and 1-D/2-D are the prose's
    stripped = re.sub(r"et al\.,? \(?\d{4}\)?|Figure 1\b|ResNet-56|CIFAR-10|\b[12]-D\b", "", prose)
    assert not re.search(r"\d", stripped), re.findall(r".{30}\d.{30}", stripped)[:5]


def test_analyse_a_saved_run(quick_demo, tmp_path):
    """``landscape analyse`` on a run saved by save_run (the demo's trained network: our MLP,
    its data named on the command line) and a second network given with --other."""
    import json

    run = quick_demo.run_dir / "sections" / "training" / "run"
    other = quick_demo.run_dir / "sections" / "connect" / "other_run"
    out = tmp_path / "analysed"
    argv = ["analyse", str(run), "--data", "digits", "--only", "hessian,connect", "--other",
            str(other), "--quick", "--out", str(out), "--no-progress"]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli.main(argv) == 0, buf.getvalue()
    r = json.loads((out / "results.json").read_text())
    assert list(r["sections"]) == ["training", "hessian", "connect"]
    demo = json.loads((quick_demo.run_dir / "results.json").read_text())["sections"]
    # the same network and settings: the same numbers
    assert r["sections"]["hessian"]["values"]["top_eigenvalues"] == demo["hessian"]["values"]["top_eigenvalues"]
    assert r["sections"]["connect"]["values"]["barrier_linear"] == demo["connect"]["values"]["barrier_linear"]
    assert (out / "report.html").is_file()
    # a run without a recorded data set and no --data: one message, status 2
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cli.main(["analyse", str(run), "--out", str(tmp_path / "x"), "--quick"]) == 2
    assert "records no data set: pass --data NAME" in err.getvalue()
    with contextlib.redirect_stderr(err):
        assert cli.main(["analyse", str(tmp_path), "--quick"]) == 2
    assert "not a run directory" in err.getvalue()


def test_study_refuses_a_foreign_directory(tmp_path, capsys):
    (tmp_path / "paper.tex").write_text("mine")
    assert cli.main(["demo", "--quick", "--out", str(tmp_path)]) == 2
    assert "non-empty directory that no study wrote" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["paper.tex"]


def test_full_demo_trains_to_95_percent(tmp_path, capsys):
    # The done-when criterion of the foundation: >= 95% test accuracy on digits, default MLP.
    assert cli.main(["demo", "--out", str(tmp_path / "run"), "--no-progress", "--only",
                     "training"]) == 0
    out = capsys.readouterr().out
    acc = float(re.search(r"test accuracy ([0-9.]+)", out).group(1))
    assert acc >= 0.95


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


def test_ctrl_c_while_the_command_starts_up(tmp_path):
    """An interrupt during the package import (JAX, the foundation: the first ~1.5 s, before the
    command's own handler exists) gave Python's traceback or death by SIGINT (2 of 40 tries);
    the start-up guard (``landscape._startup``) exits 130 with one line instead."""
    import signal
    import subprocess
    import sys
    import time

    # a test process can run with SIGINT ignored or blocked, which a child inherits across exec
    # (and the guard rightly leaves an ignored one alone, as for nohup): twice in the full
    # suite the command ran to the end (exit 0). The child gets SIGINT as from a shell.
    def as_from_a_shell():
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    p = subprocess.Popen([sys.executable, "-m", "landscape", "demo", "--quick", "--out", str(tmp_path / "run"),
                          "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=as_from_a_shell)
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


def test_analyse_a_study_directory_and_only_keeps_valid_sections(quick_demo, tmp_path):
    """Review findings: --only keeps the other sections that are still valid, and analyse on a
    study's own directory runs (its saved config is read back)."""
    import json
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(quick_demo.run_dir, d)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli.main(["demo", "--quick", "--only", "hessian", "--out", str(d),
                         "--no-progress"]) == 0, buf.getvalue()
    r = json.loads((d / "results.json").read_text())
    assert r["sections"]["hessian"]["status"] == "loaded"
    assert list(r["sections"]) == ["training", "hessian", "surface", "connect", "ntk",
                                 "trainability"]
    with contextlib.redirect_stdout(buf):
        assert cli.main(["analyse", str(d), "--only", "hessian", "--quick", "--out",
                         str(tmp_path / "a"), "--no-progress"]) == 0, buf.getvalue()
