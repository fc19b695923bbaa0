"""The `landscape demo` command and the README's two Quickstart commands."""

from __future__ import annotations

import re

import landscape
from landscape import cli
from tests._util import REPO


def test_demo_quick(tmp_path, capsys):
    assert cli.main(["demo", "--quick", "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    for word in ("train loss", "test accuracy", "parameters       85002", "run directory"):
        assert word in out
    run = landscape.load_run(tmp_path / "run")
    assert run.config["command"] == "landscape demo" and run.model.num_params == 85002


def test_full_demo_reaches_95_percent(tmp_path, capsys):
    # The done-when criterion of the foundation: >= 95% test accuracy on digits, default MLP.
    assert cli.main(["demo", "--out", str(tmp_path / "run"), "--no-progress"]) == 0
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
    for name in ("hessian.eigenvalues", "surface.slice_2d", "connect.fit_curve", "ntk.empirical_ntk"):
        assert name in seen
