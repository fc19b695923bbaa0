"""The `landscape demo` command and the README's two Quickstart commands."""

from __future__ import annotations

import re

import jax

import landscape
from landscape import cli
from tests._util import REPO


def test_demo_quick(tmp_path, capsys):
    """The quick demo trains, writes its run, and writes the report of every analysis.

    The report's sections are checked against each other: they come from different modules
    (hessian, surface, connect, the training loop) and must agree where they measure the same
    quantity.
    """
    import json

    import numpy as np

    from landscape import connect, hessian, surface

    run_dir = tmp_path / "run"
    assert cli.main(["demo", "--quick", "--out", str(run_dir), "--no-progress"]) == 0
    out = capsys.readouterr().out
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
