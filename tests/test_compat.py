"""The JAX compatibility shim: the one module that touches JAX internals (a guard test keeps it
that way), its fallbacks, and the public tracer test built on it."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np

from landscape import _compat, validate
from tests._util import REPO


def test_only_the_shim_touches_jax_internals():
    pattern = re.compile(r"jax\._src|jax\.core\.Tracer|from jax import core\b")
    offenders = [
        str(path.relative_to(REPO))
        for package in ("landscape", "ntk")
        for path in sorted((REPO / package).rglob("*.py"))
        if path.name != "_compat.py" and pattern.search(path.read_text())
    ]
    assert offenders == []


def test_is_tracer():
    seen = []

    @jax.jit
    def f(x):
        seen.append((validate.is_tracer(x), _compat.is_tracer(x)))
        return x

    f(jnp.ones(2))
    assert seen == [(True, True)]
    assert not validate.is_tracer(jnp.ones(2)) and not validate.is_tracer(np.ones(2))
    assert not validate.is_tracer(1.0)


def test_source_summary_and_bind_equation():
    def f(x):
        return jnp.sin(x) * 2.0

    closed = jax.make_jaxpr(f)(jnp.ones(3))
    eqn = closed.jaxpr.eqns[0]
    assert "test_compat.py" in _compat.source_summary(eqn.source_info)
    assert _compat.source_summary(object()) == _compat.UNKNOWN_LOCATION  # best effort, no raise
    (out,) = _compat.bind_equation(eqn, [jnp.arange(3.0)])
    np.testing.assert_array_equal(out, jnp.sin(jnp.arange(3.0)))
