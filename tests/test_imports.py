"""What importing the package costs: ``import landscape`` loads JAX and the foundation but no
optional heavy library (Flax, Optax, scikit-learn, SciPy, matplotlib, tqdm, MNIST-1D), and the
``landscape`` command's ``--help`` and ``--version`` do not import JAX at all; every public name
still resolves. (That ``import ntk`` loads no analysis and no matplotlib is checked in
``tests/ntk/test_layering.py``.)"""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest

import landscape
from tests._util import REPO, run_python

# loaded where they are used: a model built (flax), training (optax), the data sets (sklearn,
# mnist1d), the analyses (scipy), progress bars (tqdm), plots (matplotlib); IPython and
# treescope come with flax.nnx
LAZY = (
    "flax",
    "optax",
    "sklearn",
    "scipy",
    "matplotlib",
    "tqdm",
    "mnist1d",
    "IPython",
    "treescope",
)


def test_import_landscape_loads_no_optional_library(tmp_path):
    """In a fresh interpreter: ``import landscape`` (and a model triple of plain functions, which
    needs no Flax) imports none of :data:`LAZY`; the compilation cache is on at once (before the
    first compile); building a model imports Flax, training Optax."""
    code = f"""
    import json, os, sys
    for k in ("JAX_COMPILATION_CACHE_DIR", "LANDSCAPE_COMPILATION_CACHE"):
        os.environ.pop(k, None)
    os.environ["LANDSCAPE_CACHE_DIR"] = {str(tmp_path)!r}
    LAZY = {LAZY!r}
    loaded = lambda: sorted(m for m in LAZY if m in sys.modules)
    import landscape
    out = {{"import": loaded(), "cache": landscape.compilation_cache_status()["source"]}}
    import jax, jax.numpy as jnp
    triple = (lambda p, s, x, train=False: (x @ p["w"], s), {{"w": jnp.ones((3, 2))}}, {{}})
    model = landscape.as_model(triple)
    loss_fn = landscape.make_loss_fn(model, "mse")
    data = {{"x": jnp.ones((4, 3)), "y": jnp.zeros((4, 2))}}
    out["triple"] = (float(landscape.evaluate(loss_fn, model.params, data)["loss"]), loaded())
    mlp = landscape.make_model("mlp", input_shape=(3,), num_outputs=2, hidden=(4,))
    out["model"] = loaded()
    out["as_model"] = landscape.as_model(mlp) is mlp
    landscape.train(mlp, {{"x": jnp.ones((8, 3)), "y": jnp.zeros(8, jnp.int32)}},
                    num_steps=1, batch_size=4, progress=False)
    out["train"] = loaded()
    print("RESULT", json.dumps(out))
    """
    out = json.loads(run_python(code).split("RESULT ", 1)[1])
    assert out["import"] == [], f"import landscape imported {out['import']}"
    assert out["cache"] == "landscape default"
    value, loaded = out["triple"]
    assert value > 0 and loaded == [], f"a plain model triple imported {loaded}"
    assert {"flax"} <= set(out["model"]) and "sklearn" not in out["model"]
    assert "optax" in out["train"]


def _run_command(*args: str) -> tuple[str, list[str]]:
    """``python -X importtime -m landscape *args``: its stdout and the modules it imported."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "landscape", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    mods = [
        ln.rsplit("|", 1)[1].strip()
        for ln in proc.stderr.splitlines()
        if ln.startswith("import time:") and "|" in ln
    ]
    return proc.stdout, mods


@pytest.mark.parametrize("flag", ["--version", "--help"])
def test_version_and_help_do_not_import_jax(flag):
    out, mods = _run_command(flag)
    assert out.startswith("landscape " if flag == "--version" else "usage: python -m landscape")
    assert "landscape.cli" in mods, "the importtime report was not read"
    heavy = sorted({m.split(".")[0] for m in mods} & {"jax", "jaxlib", "numpy", *LAZY})
    assert not heavy, f"landscape {flag} imported {heavy}"


def test_command_line_import_resolves_every_name_on_first_use(tmp_path):
    """The command line imports the package without the foundation (``landscape._startup``
    tells); the first public name looked up loads all of it (JAX, then the compilation cache,
    before anything compiles), and every name of ``__all__`` resolves as in a library import
    (``landscape.train`` the function, not the module of that name)."""
    code = f"""
    import json, os, sys
    for k in ("JAX_COMPILATION_CACHE_DIR", "LANDSCAPE_COMPILATION_CACHE"):
        os.environ.pop(k, None)
    os.environ["LANDSCAPE_CACHE_DIR"] = {str(tmp_path)!r}
    sys.argv = ["/usr/local/bin/landscape", "demo"]  # what the landscape script sees
    import landscape
    out = {{"jax_at_import": "jax" in sys.modules, "listed": sorted(set(landscape.__all__) - set(dir(landscape)))}}
    from landscape.train import TrainResult  # a submodule first: landscape.train stays the function
    from landscape import Model
    import jax
    out["cache"] = jax.config.jax_compilation_cache_dir
    out["train"] = type(landscape.train).__name__
    out["missing"] = [n for n in landscape.__all__ if getattr(landscape, n, None) is None]
    out["status"] = landscape.compilation_cache_status()["source"]
    print("RESULT", json.dumps(out))
    """
    out = json.loads(run_python(code).split("RESULT ", 1)[1])
    assert out["jax_at_import"] is False and out["listed"] == []
    assert out["cache"] == str(tmp_path / "jax") and out["status"] == "landscape default"
    assert out["train"] == "function" and out["missing"] == []


def test_public_names_agree():
    """``__all__``, the lazily bound names (``_FOUNDATION`` and the analyses) and the
    ``if TYPE_CHECKING:`` imports that type checkers and IDEs read name the same things."""
    tree = ast.parse((REPO / "landscape" / "__init__.py").read_text())
    typed = set()
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            typed |= {a.asname or a.name for n in node.body for a in n.names}
    analyses = {"connect", "diagnostics", "hessian", "sparsity", "surface"}
    assert typed == set(landscape._FOUNDATION) | analyses
    assert set(landscape.__all__) == typed
    assert set(dir(landscape)) >= typed
    for name in landscape._FOUNDATION:
        assert getattr(landscape, name) is landscape._resolve(name), name
