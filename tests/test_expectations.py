"""Gaussian expectations by Gauss-Hermite quadrature against closed forms (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from landscape import expectations as E

# variances and correlations (the last: rho = 1, u' = u scaled)
V1 = np.array([1.0, 0.5, 2.0, 1.3, 0.8])
V2 = np.array([1.0, 2.0, 0.7, 1.3, 1.1])
RHO = np.array([0.3, -0.6, 0.95, 1.0, 0.0])
C = RHO * np.sqrt(V1 * V2)


def test_hermite_nodes_are_a_probability_rule():
    z, w = E.hermite_nodes(6)
    assert z.dtype == w.dtype == np.float64 and np.all(w > 0)
    # exact moments of the standard normal up to degree 2 deg - 1 = 11: E[z^2k] = (2k-1)!!
    for k, m in ((0, 1), (1, 0), (2, 1), (4, 3), (6, 15), (8, 105), (10, 945), (11, 0)):
        np.testing.assert_allclose(np.sum(w * z**k), m, rtol=1e-13, atol=1e-13)
    for bad in (0, -3, 2.5, True, "8"):
        with pytest.raises(ValueError, match="landscape.expectations.hermite_nodes: deg must be"):
            E.hermite_nodes(bad)


def test_gaussian_expectation_closed_forms():
    with jax.enable_x64(True):
        # polynomials exactly; relu^2 exactly too (symmetric nodes: half of E[u^2]); smooth
        # functions to round-off
        cases = [
            (lambda u: u**2, 2, V1),
            (lambda u: jax.nn.relu(u) ** 2, 5, V1 / 2),
            (jnp.cos, 32, np.exp(-V1 / 2)),
            (jnp.exp, 32, np.exp(V1 / 2)),
        ]
        for fn, deg, expect in cases:
            got = E.gaussian_expectation(fn, V1, deg=deg)
            assert got.dtype == jnp.float64
            np.testing.assert_allclose(got, expect, rtol=1e-13, atol=1e-15)
        # E[relu(u)] = sqrt(v / (2 pi)): the kink at 0 converges slowly (measured 3e-3 at 64)
        got = E.gaussian_expectation(jax.nn.relu, V1, deg=64)
        np.testing.assert_allclose(got, np.sqrt(V1 / (2 * np.pi)), rtol=1e-2)


def test_pair_expectations_polynomials_are_exact():
    with jax.enable_x64(True):
        one, two = E.pair_expectations(
            ((lambda u: u, lambda u: u), (lambda u: u**2, lambda u: u**2)), C, V1, V2, deg=3
        )
    np.testing.assert_allclose(one, C, rtol=1e-13, atol=1e-15)  # E[u u'] = c
    np.testing.assert_allclose(two, V1 * V2 + 2 * C**2, rtol=1e-13)  # Isserlis


def test_pair_expectations_smooth_closed_forms():
    with jax.enable_x64(True):
        s, c = E.pair_expectations(((jnp.sin, jnp.sin), (jnp.cos, jnp.cos)), C, V1, V2, deg=64)
        erf = E.pair_expectation(jax.scipy.special.erf, jax.scipy.special.erf, C, V1, V2, deg=128)
    decay = np.exp(-(V1 + V2) / 2)
    np.testing.assert_allclose(s, decay * np.sinh(C), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(c, decay * np.cosh(C), rtol=1e-12)
    # the arcsine kernel (Williams 1997)
    arcsine = 2 / np.pi * np.arcsin(2 * C / np.sqrt((1 + 2 * V1) * (1 + 2 * V2)))
    np.testing.assert_allclose(erf, arcsine, rtol=1e-12, atol=1e-15)


def test_pair_expectation_relu_arc_cosine():
    # E[relu(u) relu(u')] = sqrt(v1 v2) (sin t + (pi - t) cos t) / (2 pi), t = arccos(rho)
    # (Cho & Saul 2009), and E[step(u) step(u')] = (pi - t) / (2 pi). The kinks make the
    # quadrature slow: measured at degree 200 at most 7e-3 relative (rho = -0.6, where the
    # kernel is small), 1e-15 at rho = 1 (the rule is then one-dimensional and symmetric)
    t = np.arccos(RHO)
    relu = np.sqrt(V1 * V2) * (np.sin(t) + (np.pi - t) * np.cos(t)) / (2 * np.pi)
    step = lambda u: (u > 0).astype(u.dtype)  # noqa: E731
    with jax.enable_x64(True):
        k, kdot = E.pair_expectations(
            ((jax.nn.relu, jax.nn.relu), (step, step)), C, V1, V2, deg=200
        )
    np.testing.assert_allclose(k, relu, rtol=1e-2)
    np.testing.assert_allclose(k[3], relu[3], rtol=1e-13)
    np.testing.assert_allclose(kdot, (np.pi - t) / (2 * np.pi), rtol=2e-2)


def test_price_theorem_jit_and_float32():
    # d/dc E[f(u) f(u')] = E[f'(u) f'(u')] (Price 1958): the quadrature is differentiable
    # through the correlation; jit equals eager; outputs follow the covariance's dtype
    dtanh = jax.vmap(jax.grad(jnp.tanh))
    with jax.enable_x64(True):

        def k(c):
            return E.pair_expectation(jnp.tanh, jnp.tanh, c, V1, V2, deg=64)

        grad = jax.vmap(jax.grad(lambda c, a, b: E.pair_expectation(
            jnp.tanh, jnp.tanh, c, a, b, deg=64)))(C, V1, V2)
        kd = E.pair_expectation(
            lambda u: dtanh(u.ravel()).reshape(u.shape),
            lambda u: dtanh(u.ravel()).reshape(u.shape), C, V1, V2, deg=64,
        )
        # away from |rho| = 1 (where d sqrt(1 - rho^2) / d rho diverges and the clip cuts the
        # derivative): measured 5e-9 at degree 64
        inner = np.abs(RHO) < 0.9
        np.testing.assert_allclose(grad[inner], kd[inner], rtol=1e-7)
        np.testing.assert_array_equal(jax.jit(k)(C), k(C))
    k32 = E.pair_expectation(jnp.tanh, jnp.tanh, C.astype(np.float32), V1, V2, deg=32)
    assert k32.dtype == jnp.float32
    with jax.enable_x64(True):
        k64 = E.pair_expectation(jnp.tanh, jnp.tanh, C, V1, V2, deg=32)
    np.testing.assert_allclose(k32, k64, rtol=1e-5, atol=1e-6)  # float32 round-off


def test_bad_pairs():
    with pytest.raises(TypeError, match="landscape.expectations.pair_expectations: pairs must"):
        E.pair_expectations((jnp.tanh, jnp.tanh), 0.1, 1.0, 1.0)
