"""Build ``ntk`` architectures from the JSON specs stored in the neural-tangents fixtures."""

import json
from pathlib import Path

import numpy as np

import ntk

DATA = Path(__file__).resolve().parent.parent / "data"


def layer(spec):
    kind, kw = spec
    if kind == "residual":
        return ntk.residual(*[layer(s) for s in kw])
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in kw.items()}
    return getattr(ntk, kind)(**kw)


def arch(layers):
    return ntk.serial(*[layer(s) for s in layers])


def load(name):
    z = np.load(DATA / name)
    specs = json.loads(bytes(z["specs"]).decode())
    return z, specs


def nt_params(arch_, z, name):
    """Our parameter dict holding the neural-tangents stax weights stored in the fixture."""
    params = {}
    for i, (path, _layer) in enumerate(arch_.affine_layers()):
        node = params
        parts = path.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        entry = {"kernel": np.asarray(z[f"{name}/w{i}"])}
        if f"{name}/b{i}" in z:
            entry["bias"] = np.asarray(z[f"{name}/b{i}"]).reshape(-1)
        node[parts[-1]] = entry
    return params


def run_once(fn, *args):
    """Run a test-only program compiled at XLA backend optimisation level 0.

    Reference programs of the tests run once on tiny inputs, so LLVM's optimisations only
    cost compile time (2-3x shorter without them); results agree with the optimised build
    to round-off.
    """
    import jax

    compiled = jax.jit(fn).lower(*args).compile({"xla_backend_optimization_level": 0})
    return jax.tree.map(np.asarray, compiled(*args))
