"""Hessian eigenvector directions (landscape.hessian.eigenvalues(...).vectors) against the
dense float64 Hessian of a tiny model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import landscape
from landscape.surface import hessian_directions, slice_1d
from tests.surface.conftest import as_dtype, tiny_mlp


def test_hessian_directions_are_top_eigenvectors_float64(small_digits):
    pytest.importorskip("landscape.hessian")
    with jax.enable_x64(True):
        train = as_dtype({k: v[:120] for k, v in small_digits[0].items()}, jnp.float64)
        m = tiny_mlp(jnp.float64, activation="tanh")  # smooth: finite differences below
        loss_fn = landscape.make_loss_fn(m, has_aux=False)
        dirs = hessian_directions(loss_fn, m.params, train, k=2, key=jax.random.key(0))
        flat, unravel = ravel_pytree(m.params)
        h = jax.hessian(lambda f: loss_fn(unravel(f), train))(flat)
        lam = np.linalg.eigvalsh(np.asarray(h))[::-1]
        for i, d in enumerate(dirs):
            v = np.asarray(ravel_pytree(d.vector)[0])
            # unit eigenvectors of the dense Hessian; the eigensolver's tol (1e-6) bounds the
            # eigenvalue error (min(r, r^2/gap)), so the residual, like the vector's angle, is
            # about sqrt(tol) relative to lambda_max
            assert np.linalg.norm(v) == pytest.approx(1.0, abs=1e-10)
            assert d.spec["eigenvalue"] == pytest.approx(lam[i], abs=1e-6 * lam[0])
            assert np.linalg.norm(np.asarray(h) @ v - lam[i] * v) <= np.sqrt(1e-6) * lam[0]
        # a slice along the top eigenvector has curvature lambda_max at the centre:
        # L(a) ~ L(0) + 0.5 lambda a^2 (gradient ~ 0 is not assumed: use a symmetric difference)
        a = 1e-4
        s = slice_1d(loss_fn, m.params, train, dirs[0], alphas=[-a, 0.0, a])
        curv = (s.loss[0] - 2 * s.loss[1] + s.loss[2]) / a**2
        # O(a^2) truncation plus ~eps L / a^2 rounding: 1e-5 relative
        assert curv == pytest.approx(lam[0], rel=1e-5)
