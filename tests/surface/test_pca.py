"""Trajectory PCA against an SVD of the explicit trajectory matrix (and scikit-learn)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import landscape
from landscape.surface import PCAResult, pca_directions


def _trajectory(dtype, k=7, seed=0):
    """A synthetic trajectory with a dominant drift, a curve and noise (distinct variances)."""
    rng = np.random.default_rng(seed)
    final = {
        "a": {"kernel": rng.normal(size=(5, 4)), "bias": rng.normal(size=(4,))},
        "b": rng.normal(size=(3, 2, 2)),
    }
    flat, unravel = ravel_pytree(jax.tree.map(lambda x: jnp.asarray(x, dtype), final))
    p = flat.size
    e1, e2 = rng.normal(size=p), rng.normal(size=p)
    s = np.linspace(1, 0, k)
    rows = [
        np.asarray(flat) + 3 * t * e1 + np.sin(3 * t) * e2 + 0.05 * rng.normal(size=p) for t in s
    ]
    snaps = [unravel(jnp.asarray(r, dtype)) for r in rows]
    return snaps, snaps[-1], unravel  # the final point is the last snapshot


def _sign_flip(vt):
    # scikit-learn's svd_flip on the components: largest-|.| entry of each row positive
    idx = np.argmax(np.abs(vt), axis=1)
    return vt * np.sign(vt[np.arange(vt.shape[0]), idx])[:, None]


@pytest.mark.parametrize("center", [True, False])
def test_pca_matches_svd_of_the_trajectory_matrix_float64(center):
    with jax.enable_x64(True):
        snaps, final, _ = _trajectory(jnp.float64)
        res = pca_directions(snaps, final, center=center, num_components=2)
        m = np.stack([np.asarray(ravel_pytree(s)[0] - ravel_pytree(final)[0]) for s in snaps])
        mc = m - m.mean(axis=0) if center else m
        _, sv, vt = np.linalg.svd(mc, full_matrices=False)
        vt = _sign_flip(vt[:2])
        got = np.stack([np.asarray(ravel_pytree(res.direction(i).vector)[0]) for i in range(2)])
        # float64: the Gram route squares the condition number, so agreement is ~1e-12, and
        # 1e-10 is the stated bound
        np.testing.assert_allclose(got, vt, atol=1e-10)
        np.testing.assert_allclose(res.singular_values, sv[:2], rtol=1e-10)
        np.testing.assert_allclose(
            res.explained_variance_ratio, sv[:2] ** 2 / np.sum(sv**2), rtol=1e-10
        )
        k = len(snaps)
        ev = sv[:2] ** 2 / ((k - 1) if center else k)
        np.testing.assert_allclose(res.explained_variance, ev, rtol=1e-10)
        # the projected path (of the un-centred differences, as Li et al.): final at the origin
        np.testing.assert_allclose(res.coords, m @ vt.T, atol=1e-10)
        np.testing.assert_allclose(res.coords[-1], 0.0, atol=1e-12)
        if center:  # scikit-learn's PCA agrees (components, variance, ratio)
            sk = pytest.importorskip("sklearn.decomposition").PCA(2, svd_solver="full").fit(m)
            np.testing.assert_allclose(got, sk.components_, atol=1e-10)
            np.testing.assert_allclose(res.explained_variance, sk.explained_variance_, rtol=1e-10)
            np.testing.assert_allclose(
                res.explained_variance_ratio, sk.explained_variance_ratio_, rtol=1e-10
            )


def test_pca_float32_and_bias_bn_zero():
    snaps, final, _ = _trajectory(jnp.float32)
    res = pca_directions(snaps, final)
    m = np.stack(
        [np.asarray(ravel_pytree(s)[0] - ravel_pytree(final)[0], np.float64) for s in snaps]
    )
    vt = _sign_flip(np.linalg.svd(m - m.mean(0), full_matrices=False)[2][:2])
    got = np.stack([np.asarray(ravel_pytree(res.direction(i).vector)[0]) for i in range(2)])
    # float32 Gram accumulation: 1e-4 absolute on unit vectors of ~40 entries
    np.testing.assert_allclose(got, vt, atol=1e-4)
    z = pca_directions(snaps, final, bias_bn="zero")
    assert np.all(np.asarray(z.vectors["a"]["bias"]) == 0)
    assert np.linalg.norm(np.asarray(z.vectors["a"]["kernel"][0])) > 0


def test_pca_from_train_result_snapshots_format(tmp_path):
    # TrainResult.snapshots is {"step": (k,), "params": params with a leading axis k}
    snaps, final, _ = _trajectory(jnp.float32, k=5)
    stacked = {
        "step": np.arange(0, 50, 10),
        "params": jax.tree.map(lambda *xs: jnp.stack(xs), *snaps),
    }
    res = pca_directions(stacked, final)
    ref = pca_directions(snaps, final)
    np.testing.assert_array_equal(res.steps, stacked["step"])
    np.testing.assert_allclose(res.coords, ref.coords, atol=1e-6)
    assert res.coords.shape == (5, 2)
    assert 0 < res.explained_variance_ratio[1] <= res.explained_variance_ratio[0] <= 1
    d1, d2 = res.as_directions()
    assert d1.spec["kind"] == "pca" and d2.spec["component"] == 1
    assert abs(float(landscape.tree.vdot(d1.vector, d2.vector))) < 1e-5  # orthonormal
    assert float(landscape.tree.norm(d1.vector)) == pytest.approx(1.0, abs=1e-5)
    res.save(tmp_path / "pca.npz")
    back = PCAResult.load(tmp_path / "pca.npz")
    np.testing.assert_array_equal(back.coords, res.coords)
    np.testing.assert_array_equal(back.vectors["b"], res.vectors["b"])
    assert back.center is True


def test_pca_bad_inputs():
    snaps, final, _ = _trajectory(jnp.float32, k=3)
    with pytest.raises(ValueError, match="at least 2 snapshots"):
        pca_directions(snaps[:1], final)
    with pytest.raises(ValueError, match="empty"):
        pca_directions([], final)
    with pytest.raises(ValueError, match="spans only 2"):  # 3 centred rows have rank 2
        pca_directions(snaps, final, num_components=3)
    bad = dict(snaps[0])
    bad["b"] = jnp.ones((3, 2))
    with pytest.raises(ValueError, match=r"trajectory\[1\] leaf 'b' has shape"):
        pca_directions([snaps[0], bad], final)
    with pytest.raises(ValueError, match="bias_bn must be one of"):
        pca_directions(snaps, final, bias_bn="ignore")
