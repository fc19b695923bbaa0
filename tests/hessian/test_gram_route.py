"""The GGN-NTK bridge: ``eigenvalues(..., curvature="ggn", solver="gram")``.

References are dense: the GGN ``(1/N) sum_i J_i^T H_i J_i (+ wd I)`` of a 16-6-4 tanh MLP
(130 parameters, 20 examples, N*C = 80) from ``jax.jacrev`` on the flattened parameters and the
analytic output Hessians, eigendecomposed in float64 by NumPy. The model is written with the
library's MLP (its outputs are what the GGN sees); the reference Jacobians do not use
:mod:`landscape.jacobians`.
"""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from threadpoolctl import threadpool_limits

import landscape
from landscape import hessian
from landscape.hessian import _gram


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """Dense NumPy linear algebra (references, host eigensolves) on one BLAS thread: on a
    shared 2-core machine OpenBLAS's threads contend with the test workers (10-20x slower)."""
    with threadpool_limits(1):
        yield


N, C, D, H = 20, 4, 16, 6
WD = 0.03
KEY = jax.random.key(0)


def _dense_ggn(model, params, data, kind, wd):
    flat, unravel = ravel_pytree(params)
    x = jnp.asarray(data["x"])

    def logits(f):
        return model.apply_fn(unravel(f), model.state, x, train=False)[0]

    J, out = jax.jit(lambda f: (jax.jacrev(logits)(f), logits(f)))(flat)  # one program
    J, out = np.asarray(J, np.float64), np.asarray(out, np.float64)  # (N, C, P), (N, C)
    if kind == "cross_entropy":
        p = np.exp(out - out.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        Hs = np.stack([np.diag(q) - np.outer(q, q) for q in p])
    else:
        Hs = np.broadcast_to(np.eye(C) / C, (N, C, C))
    G = np.einsum("ncp,ncd,ndq->pq", J, Hs, J) / N + wd * np.eye(flat.size)
    G = 0.5 * (G + G.T)
    evals, evecs = np.linalg.eigh(G)
    return types.SimpleNamespace(G=G, evals=evals[::-1], evecs=evecs[:, ::-1], J=J)


@pytest.fixture(scope="module")
def ref():
    rng = np.random.default_rng(0)
    model = landscape.make_model(
        "mlp", input_shape=(D,), num_outputs=C, hidden=(H,), seed=0, activation="tanh"
    )
    x = rng.normal(size=(N, D))
    y = rng.integers(0, C, N).astype(np.int32)
    ns = types.SimpleNamespace(model=model, y=y, x32=x.astype(np.float32))
    ns.data32 = {"x": ns.x32, "y": y}
    ns.ce = landscape.make_loss_fn(model)
    ns.mse = landscape.make_loss_fn(model, kind="mse", weight_decay=WD)
    with jax.enable_x64(True):
        ns.data = {"x": x, "y": y}
        ns.params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), model.params)
        ns.ce_ref = _dense_ggn(model, ns.params, ns.data, "cross_entropy", 0.0)
        ns.mse_ref = _dense_ggn(model, ns.params, ns.data, "mse", WD)
        d32 = {"x": np.asarray(ns.x32, np.float64), "y": y}  # the float32 inputs, exactly
        ns.ce_ref32 = _dense_ggn(model, ns.params, d32, "cross_entropy", 0.0)
    ns.P = ns.ce_ref.G.shape[0]
    return ns


def _flat_rows(stacked):
    leaves = [np.asarray(a, np.float64) for a in jax.tree.leaves(stacked)]
    return np.concatenate([a.reshape(a.shape[0], -1) for a in leaves], axis=1)


def test_ce_factor_squares_to_the_softmax_hessian():
    """``F = diag(sqrt p) - sqrt(p) p^T``: ``F^T F = diag(p) - p p^T`` and ``sqrt(p)^T F = 0``."""
    with jax.enable_x64(True):
        p = jax.nn.softmax(jnp.asarray(np.random.default_rng(1).normal(size=(5, 7))), axis=-1)
        F = np.asarray(_gram.ce_factor(p))
    p = np.asarray(p)
    for f, q in zip(F, p):
        np.testing.assert_allclose(f.T @ f, np.diag(q) - np.outer(q, q), atol=1e-15)
        np.testing.assert_allclose(np.sqrt(q) @ f, 0.0, atol=1e-15)


def test_full_spectrum_ce_float64_matches_dense_and_lanczos(ref):
    """k='all': every nonzero eigenvalue of J^T H J / N to 1e-8 (relative to ||G||), the rank
    (at most N (C - 1): one softmax null vector per example) and P - rank zeros; eigenvectors
    satisfy the dense eigen-equation. The default solver for an int k stays Lanczos (never the
    Gram); both give the same top-4 of the GGN to 1e-8 and the same eigenvectors up to sign."""
    with jax.enable_x64(True):
        op = hessian.make_hvp(ref.ce, ref.params, ref.data, curvature="ggn")
        res = hessian.eigenvalues(ref.ce, ref.params, ref.data, curvature="ggn", k="all", key=KEY)
        lz = hessian.eigenvalues(op, k=4, tol=1e-12, key=KEY)
    d = ref.ce_ref
    top = d.evals[0]
    dense_rank = int(np.sum(d.evals > N * C * np.finfo(np.float64).eps * top))
    assert res.solver == "gram" and res.dtype == "float64"
    assert res.rank == dense_rank <= N * (C - 1)
    assert res.num_zero == ref.P - res.rank and res.k == res.rank == len(res.values)
    np.testing.assert_allclose(res.values, d.evals[: res.rank], rtol=0, atol=1e-8 * top)
    np.testing.assert_allclose(d.evals[res.rank :], 0.0, atol=1e-8 * top)  # the stated zeros
    V = _flat_rows(res.vectors)
    np.testing.assert_allclose(V @ V.T, np.eye(len(V)), atol=1e-8)
    R = V @ d.G - res.values[:, None] * V
    assert np.max(np.linalg.norm(R, axis=1)) < 1e-8 * top
    assert np.max(res.residuals) < 1e-8 * top and res.converged.all()
    assert lz.solver == "lanczos" and res.provenance["settings"]["solver"] == "gram"
    np.testing.assert_allclose(res.values[:4], lz.values, rtol=0, atol=1e-8 * top)
    overlap = np.abs(np.sum(V[:4] * _flat_rows(lz.vectors), axis=1))
    np.testing.assert_allclose(overlap, 1.0, atol=1e-6)


def test_mse_weight_decay_and_ntk_scaling_float64(ref):
    """MSE (0.5 * mean over examples and outputs): eigenvalues = eig(J J^T) / (N C) + wd, the
    weight decay added back; against the dense GGN too."""
    with jax.enable_x64(True):
        res = hessian.eigenvalues(
            ref.mse, ref.params, ref.data, curvature="ggn", solver="gram", k=6, key=KEY
        )
    d = ref.mse_ref
    top = d.evals[0]
    np.testing.assert_allclose(res.values, d.evals[:6], rtol=0, atol=1e-8 * top)
    K = d.J.reshape(N * C, -1) @ d.J.reshape(N * C, -1).T  # the output-kept empirical NTK
    ntk = np.linalg.eigvalsh(K)[::-1]
    np.testing.assert_allclose(res.values, ntk[:6] / (N * C) + WD, rtol=0, atol=1e-8 * top)
    assert res.weight_decay == WD and res.num_zero == ref.P - res.rank
    V = _flat_rows(res.vectors)
    assert np.max(np.linalg.norm(V @ d.G - res.values[:, None] * V, axis=1)) < 1e-8 * top


def test_blocks_padding_and_params_filter_float64(ref, monkeypatch):
    """Several example blocks with padding (20 examples in blocks of 7) give the single-block
    Gram (every entry formed) to rounding, forming only the 6 block pairs (i, j >= i) of the 9
    (the lower triangle mirrored); params_filter takes the GGN's diagonal block."""
    formed = []
    gram = landscape.jacobians.gram

    def counted(*args, **kwargs):  # runs (on the host) once per block pair actually formed
        jax.debug.callback(lambda: formed.append(1))
        return gram(*args, **kwargs)

    with jax.enable_x64(True):
        op = hessian.make_hvp(ref.ce, ref.params, ref.data, curvature="ggn")
        M1, lay1 = _gram.gram_matrix(op)
        monkeypatch.setattr(_gram, "GRAM_BLOCK_BYTES", 7 * C * ref.P * 8)
        monkeypatch.setattr(landscape.jacobians, "gram", counted)
        M3, lay3 = _gram.gram_matrix(op)
        assert lay1["wb"].shape == (1, N) and lay3["wb"].shape == (3, 7)
        assert len(formed) == 3 * 4 // 2  # nblk (nblk + 1) / 2
        np.testing.assert_allclose(M3, M1, rtol=0, atol=1e-13 * np.abs(M1).max())
        monkeypatch.undo()
        sub = hessian.eigenvalues(
            ref.ce,
            ref.params,
            ref.data,
            curvature="ggn",
            solver="gram",
            params_filter="layers/1",
            k=3,
            key=KEY,
        )
    mask = np.concatenate(
        [
            np.full(np.size(a), path.startswith("layers/1/"))
            for path, a in zip(landscape.tree.leaf_paths(ref.params), jax.tree.leaves(ref.params))
        ]
    )
    Gs = ref.ce_ref.G[np.ix_(mask, mask)]
    want = np.linalg.eigvalsh(Gs)[::-1][:3]
    np.testing.assert_allclose(sub.values, want, rtol=0, atol=1e-8 * want[0])
    assert sub.params_filter == ("layers/1/bias", "layers/1/kernel")
    assert np.all(_flat_rows(sub.vectors)[:, ~mask] == 0)


def test_float32_within_stated_tolerance(ref, tmp_path):
    """float32: the Gram is formed in float32 (entries off by ~eps32 ||M||), its eigenvalues in
    float64; values within 2e-5 ||G|| of the float64 dense reference (Weyl: each moves by at most
    ||dM||_2 <= NC eps32 ||M|| = 1e-5 ||M|| here), unit vectors with residuals below 1e-5 ||G||.
    Round-trips through save/load."""
    res = hessian.eigenvalues(
        ref.ce, ref.model.params, ref.data32, curvature="ggn", solver="gram", k=5, key=KEY
    )
    top = ref.ce_ref32.evals[0]
    assert res.dtype == "float32"
    np.testing.assert_allclose(res.values, ref.ce_ref32.evals[:5], rtol=0, atol=2e-5 * top)
    assert np.max(res.residuals) < 1e-5 * top
    V = _flat_rows(res.vectors)
    np.testing.assert_allclose(np.linalg.norm(V, axis=1), 1.0, atol=1e-6)
    res.save(tmp_path / "g.npz")
    back = hessian.EigenResult.load(tmp_path / "g.npz")
    assert back.solver == "gram" and back.rank == res.rank and back.num_zero == res.num_zero
    np.testing.assert_array_equal(back.values, res.values)


def test_bad_inputs(ref, monkeypatch):
    ce, p, d = ref.ce, ref.model.params, ref.data32
    with pytest.raises(ValueError, match="solver"):
        hessian.eigenvalues(ce, p, d, curvature="ggn", solver="dense", key=KEY)
    with pytest.raises(ValueError, match="curvature='ggn'"):
        hessian.eigenvalues(ce, p, d, curvature="hessian", solver="gram", key=KEY)
    with pytest.raises(ValueError, match=r"k=81 exceeds.*min\(80, 130\)"):
        hessian.eigenvalues(ce, p, d, curvature="ggn", solver="gram", k=81, key=KEY)
    with pytest.raises(ValueError, match="k='all'.*solver='gram'"):
        hessian.eigenvalues(ce, p, d, curvature="ggn", solver="lanczos", k="all", key=KEY)
    with pytest.raises(ValueError, match="positive int or 'all'"):
        hessian.eigenvalues(ce, p, d, curvature="ggn", k="full", key=KEY)
    with pytest.raises(ValueError, match="which='largest'"):
        hessian.eigenvalues(ce, p, d, curvature="ggn", solver="gram", which="smallest", key=KEY)
    with pytest.raises(TypeError, match="v0= is a Lanczos setting"):
        hessian.eigenvalues(ce, p, d, curvature="ggn", solver="gram", v0=p, key=KEY)
    bad = {"x": ref.x32.copy(), "y": ref.y}
    bad["x"][3, 2] = np.nan
    with pytest.raises(ValueError, match="finite"):
        hessian.eigenvalues(ce, p, bad, curvature="ggn", solver="gram", key=KEY)
    with pytest.raises(TypeError, match="plain matvec has no Jacobians"):
        hessian.eigenvalues(lambda v: v, like=p, solver="gram", key=KEY)
    monkeypatch.setattr(_gram, "GRAM_MAX_BYTES", 1000)
    with pytest.raises(ValueError, match="solver='lanczos'"):
        hessian.eigenvalues(ce, p, d, curvature="ggn", solver="gram", k="all", key=KEY)
