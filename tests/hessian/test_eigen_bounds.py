"""The eigenvalue error bounds that stop the solver, against dense float64 references.

``tol`` bounds each eigenvalue's error (``min(r, r^2 / gap)``, block form for clusters, from the
true residual ``r``). Checked here: on the small trained ReLU and random tanh MLPs the returned
values lie within their reported bounds of the dense ``jax.hessian`` eigenvalues and the bounds
meet ``tol * ||A||`` (float64: exactly, up to 1e-13 ||A|| of rounding; float32: the float32
operator's eigenvalues differ from the float64 ones by ~1e-7 ||A||, so 2e-6 ||A|| is allowed on
top of the bound); planted repeated and clustered eigenvalues are all found; the reported
residuals are true residuals (equal to the dense ``||H v - lambda v||``) whether they come from
the stored products or from one product per pair.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

from landscape import hessian
from landscape.hessian import _eigen
from tests.hessian.conftest import rows


def _dense_residuals(res, H):
    V = rows(res.vectors)
    return np.linalg.norm(V @ H - res.values[:, None] * V, axis=1)


def _check_bounds(res, truth, scale, slack):
    assert res.converged.all()
    assert np.all(res.error_bounds <= res.tol_used * res.norm_estimate * (1 + 1e-6))
    assert np.all(res.error_bounds <= res.residuals * (1 + 1e-12))
    assert np.all(np.abs(res.values - truth) <= res.error_bounds * (1 + 1e-6) + slack * scale)


@pytest.mark.parametrize("tol", [1e-3, 1e-6, 1e-10])
@pytest.mark.parametrize("k", [1, 5])
def test_bounds_hold_against_dense_float64(small, k, tol):
    with jax.enable_x64(True):
        for model, which in (("relu", "largest"), ("tanh", "smallest")):
            loss = getattr(small, f"{model}_loss")
            params = getattr(small, f"{model}_params")
            ev, H = getattr(small, f"{model}_evals"), getattr(small, f"{model}_H")
            truth = ev[::-1][:k] if which == "largest" else ev[:k]
            scale = np.abs(ev).max()
            for seed in (0, 1):
                res = hessian.eigenvalues(
                    loss,
                    params,
                    small.data,
                    k=k,
                    which=which,
                    tol=tol,
                    key=jax.random.key(seed),
                    batch_size=small.batch,
                )
                _check_bounds(res, truth, scale, 1e-13)
                np.testing.assert_allclose(
                    res.residuals, _dense_residuals(res, H), rtol=1e-6, atol=1e-12 * scale
                )


def test_looser_tolerance_fewer_products_still_within_bound(small):
    """Top-1 on the trained ReLU net: fewer products for a looser bound, each still honest."""
    ev = small.relu_evals
    counts = []
    with jax.enable_x64(True):
        for tol in (1e-3, 1e-6, 1e-10, 1e-14):
            res = hessian.eigenvalues(
                small.relu_loss,
                small.relu_params,
                small.data,
                k=1,
                tol=tol,
                key=jax.random.key(3),
                batch_size=small.batch,
            )
            _check_bounds(res, ev[::-1][:1], np.abs(ev).max(), 1e-13)
            counts.append(res.num_hvps)
    assert counts == sorted(counts) and counts[0] < counts[-1]


def test_float32_bounds(small):
    ev = small.relu_evals
    scale = np.abs(ev).max()
    for k, tol in ((1, 1e-3), (1, 1e-6), (5, 1e-6)):
        res = hessian.eigenvalues(
            small.relu_loss,
            small.relu_params32,
            small.data32,
            k=k,
            tol=tol,
            key=jax.random.key(4),
            batch_size=small.batch,
        )
        assert res.tol_used >= max(tol, _eigen.TOL_FLOOR * np.finfo(np.float32).eps)
        _check_bounds(res, ev[::-1][:k], scale, 2e-6)
        # the residuals are the float32 products' true residuals: consistent with the float64
        # Hessian up to the float32 operator's difference from it
        np.testing.assert_allclose(
            res.residuals, _dense_residuals(res, small.relu_H), atol=2e-6 * scale
        )


def _diag_mv(d, v):
    return {"w": d * v["w"]}


@pytest.mark.parametrize(
    "top",
    [
        [5.0, 5.0, 3.0, 2.0, 1.5],  # a repeated top eigenvalue
        [1.0, 0.9, 0.7, 0.7, 0.7],  # a triple inside the wanted set
        [1.0, 0.9, 0.7, 0.7 + 1e-9, 0.7 - 1e-9],  # a 1e-9 cluster (block bound, not r^2/0)
    ],
)
def test_repeated_and_clustered_eigenvalues(top):
    n = 600
    rng = np.random.default_rng(0)
    lam = np.concatenate([top, rng.uniform(0.0, 0.45 * min(top), n - len(top))])
    truth = np.sort(lam)[::-1][:5]
    with jax.enable_x64(True):
        like = {"w": jax.ShapeDtypeStruct((n,), jnp.float64)}
        mv = Partial(_diag_mv, jnp.asarray(lam))
        for tol in (1e-6, 1e-12):
            for seed in range(3):
                res = hessian.eigenvalues(mv, like=like, k=5, tol=tol, key=jax.random.key(seed))
                _check_bounds(res, truth, max(top), 1e-13)
                assert res.num_checks >= 1
                # true residuals: ||d * v - lambda v||
                V = rows(res.vectors)
                dense = np.linalg.norm(V * lam[None] - res.values[:, None] * V, axis=1)
                np.testing.assert_allclose(res.residuals, dense, rtol=1e-6, atol=1e-13 * max(top))


def test_stored_and_recomputed_residuals_agree(small, monkeypatch):
    """The default forms A v from the stored products (no extra products); with the budget at
    0 bytes one product per pair recomputes them: same values, same true residuals, k more
    products."""
    kw = dict(k=3, tol=1e-8, key=jax.random.key(7), batch_size=small.batch)
    with jax.enable_x64(True):
        stored = hessian.eigenvalues(small.relu_loss, small.relu_params, small.data, **kw)
        monkeypatch.setattr(_eigen, "STORED_PRODUCTS_MAX_BYTES", 0)
        recomputed = hessian.eigenvalues(small.relu_loss, small.relu_params, small.data, **kw)
    np.testing.assert_allclose(stored.values, recomputed.values, rtol=0, atol=1e-13)
    scale = np.abs(small.relu_evals).max()
    for res in (stored, recomputed):
        np.testing.assert_allclose(
            res.residuals, _dense_residuals(res, small.relu_H), rtol=1e-6, atol=1e-13 * scale
        )
    assert recomputed.num_hvps == stored.num_hvps + 3


def test_error_bounds_formula():
    # an isolated value: r^2 / (gap - neighbour's residual)
    b = _eigen.error_bounds(np.array([0.0, 1.0, 2.0]), np.array([0.1, 1e-3, 0.1]), [1])
    np.testing.assert_allclose(b, [1e-6 / 0.9])
    # the top of the spectrum: only its lower side counts
    b = _eigen.error_bounds(np.array([0.0, 1.0]), np.array([0.1, 1e-2]), [1])
    np.testing.assert_allclose(b, [1e-4 / 0.9])
    # a cluster closer than its residuals: the block bound (r1^2 + r2^2) / gap to the rest
    th = np.array([0.0, 1.0, 1.0 + 1e-9, 2.0])
    r = np.array([0.1, 1e-4, 1e-4, 0.1])
    np.testing.assert_allclose(_eigen.error_bounds(th, r, [1, 2]), [2e-8 / 0.9, 2e-8 / 0.9])
    # no usable gap: the residual itself
    b = _eigen.error_bounds(np.array([0.0, 1.0]), np.array([0.5, 0.6]), [1])
    np.testing.assert_allclose(b, [0.6])
