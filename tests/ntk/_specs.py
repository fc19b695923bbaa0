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
