"""Trace estimators and SLQ densities against exact references.

Tolerances: stochastic estimates are checked against their own reported standard errors (within
3 SE; the probes are fixed by the key, so the tests are deterministic). Deterministic identities
(quadrature moments, weight sums) hold to float64 rounding (1e-10 relative).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from landscape import hessian
from landscape.hessian import _lanczos


def test_trace_within_three_standard_errors(small, tmp_path):
    with jax.enable_x64(True):
        exact = np.trace(small.relu_H)
        # ReLU networks: every weight enters linearly between ReLUs, so the residual H - GGN has a
        # zero diagonal and tr H = tr GGN exactly (the benchmark's float64 trace reference)
        np.testing.assert_allclose(exact, np.trace(small.relu_G), rtol=1e-10)
        for est in ("hutch++", "hutchinson"):
            r = hessian.trace(small.relu_loss, small.relu_params, small.data, key=jax.random.key(0), estimator=est,
                              max_hvps=60, rtol=0.0, batch_size=small.batch)
            assert r.num_hvps == 60 and np.isfinite(r.std_error) and r.std_error > 0
            assert abs(r.estimate - exact) <= 3 * r.std_error
            # per-leaf (diagonal block) traces from the same probes, also within 3 SE
            off = 0
            for path, leaf in zip(hessian._operators._tree.leaf_paths(small.relu_params), jax.tree.leaves(small.relu_params)):
                block = np.trace(small.relu_H[off:off + leaf.size, off:off + leaf.size])
                off += leaf.size
                assert abs(r.per_leaf[path] - block) <= 3 * r.per_leaf_se[path] + 1e-12
            np.testing.assert_allclose(sum(r.per_layer.values()), r.estimate, rtol=1e-10)
        r.save(tmp_path / "t.npz")
        back = hessian.TraceResult.load(tmp_path / "t.npz")
        assert float(back.estimate) == float(r.estimate) and back.per_layer.keys() == r.per_layer.keys()
        # stopping on the standard error
        s = hessian.trace(small.relu_loss, small.relu_params, small.data, key=jax.random.key(1), max_hvps=200,
                          rtol=0.05, estimator="hutchinson", batch_size=small.batch)
        assert s.converged and s.num_hvps < 200 and s.std_error <= 0.05 * abs(s.estimate)


def _rms_errors(planted, lams, budget, seeds):
    loss, params, A = planted.make(lams)
    exact = float(np.sum(lams))
    errs = {"hutch++": [], "hutchinson": []}
    with jax.enable_x64(True):
        for s in seeds:
            for est in errs:
                r = hessian.trace(loss, params, planted.data, key=jax.random.key(s), estimator=est, max_hvps=budget,
                                  rtol=0.0, min_probes=2, chunk_size=budget)
                errs[est].append(float(r.estimate) - exact)
    return {k: float(np.sqrt(np.mean(np.square(v)))) for k, v in errs.items()}


def test_hutchpp_beats_hutchinson_on_decaying_spectrum_not_on_flat(planted):
    n = planted.n
    # planted low rank plus noise: 6 large eigenvalues, a small bulk
    decaying = np.concatenate([[50.0, 40.0, 30.0, 20.0, 10.0, 5.0], 0.1 * planted.rng.uniform(-1, 1, n - 6)])
    e = _rms_errors(planted, decaying, 24, range(8))
    assert e["hutch++"] < 0.5 * e["hutchinson"]
    # a flat spectrum: the sketch captures nothing special, Hutchinson with 3x the probes wins
    flat = planted.rng.uniform(1.0, 2.0, n)
    e = _rms_errors(planted, flat, 24, range(8))
    assert e["hutchinson"] < e["hutch++"]


def test_hutchpp_on_a_vanishing_operator(planted):
    """A zero Hessian (a network saturated everywhere): the sketch is all zeros and is dropped;
    the trace is 0, not an error about zero starting vectors."""
    loss, params, _ = planted.make(np.zeros(planted.n))
    with jax.enable_x64(True):
        r = hessian.trace(loss, params, planted.data, key=jax.random.key(0), estimator="hutch++",
                          max_hvps=12, rtol=0.0, min_probes=2, chunk_size=12)
    assert float(r.estimate) == 0.0


def test_slq_identities(planted, tmp_path):
    lams = np.concatenate([[3.0, -2.0], planted.rng.uniform(-1, 1, planted.n - 2)])
    loss, params, A = planted.make(lams)
    m = 8
    with jax.enable_x64(True):
        v = planted.rng.choice([-1.0, 1.0], planted.n)
        op = hessian.make_hvp(loss, params, planted.data)
        L = hessian.lanczos(op, {"w": jnp.asarray(v)}, m, key=jax.random.key(0))
        theta, Y = _lanczos.tridiagonal_eigh(L.alphas, L.betas)
        w = Y[0] ** 2
        q = v / np.linalg.norm(v)
        assert abs(w.sum() - 1) <= 1e-12
        # Gauss quadrature with m nodes reproduces q^T A^j q for j < 2m
        Aj = q.copy()
        for j in range(2 * m):
            np.testing.assert_allclose(np.sum(w * theta**j), q @ Aj, rtol=1e-10, atol=1e-10 * 3.0**j)
            Aj = A @ Aj
        # the Lanczos relation A Q^T = Q^T T + beta_m q_{m+1} e_m^T, orthonormal Q
        Qm = np.asarray(L.basis["w"])
        T = np.diag(L.alphas) + np.diag(L.betas[:-1], 1) + np.diag(L.betas[:-1], -1)
        R = A @ Qm.T - Qm.T @ T
        assert np.abs(R[:, :-1]).max() <= 1e-12 * 3 and abs(np.linalg.norm(R[:, -1]) - L.betas[-1]) <= 1e-12
        np.testing.assert_allclose(Qm @ Qm.T, np.eye(m), atol=1e-13)
        L.save(tmp_path / "l.npz")
        back = hessian.LanczosResult.load(tmp_path / "l.npz")
        np.testing.assert_array_equal(back.basis["w"], L.basis["w"])
        np.testing.assert_array_equal(back.betas, L.betas)
        # streaming mode: the same tridiagonal without a basis (up to rounding)
        S = hessian.lanczos(op, {"w": jnp.asarray(v)}, m, key=jax.random.key(0), reorthogonalize=False)
        assert S.basis is None
        np.testing.assert_allclose(S.alphas, L.alphas, atol=1e-10)
        np.testing.assert_allclose(S.betas, L.betas, atol=1e-10)


def test_density_matches_exactly_smoothed_spectrum(small, tmp_path):
    with jax.enable_x64(True):
        ev = small.tanh_evals
        sigma = (ev.max() - ev.min()) / 20
        d = hessian.spectral_density(small.tanh_loss, small.tanh_params, small.data, key=jax.random.key(0),
                                     num_probes=30, num_steps=40, sigma=sigma, batch_size=small.batch)
        exact = hessian.smooth_density(ev[None], np.full((1, ev.size), 1.0 / ev.size), d.grid, sigma)
        l1 = np.sum(np.abs(d.density - exact)) * (d.grid[1] - d.grid[0])
        assert l1 < 0.02, l1
        assert d.nodes.shape == (30, 40) and d.checks["weight_sum_error"] < 1e-12
        # consistency checks: same-probe Hutchinson, independent top eigenvalue, exact trace
        c = d.checks
        np.testing.assert_allclose(c["slq_trace"], c["hutchinson_trace"], rtol=1e-10)
        assert abs(c["slq_trace"] - ev.sum()) <= 3 * c["trace_std_error"]
        np.testing.assert_allclose(c["top_eigenvalue"], ev.max(), rtol=1e-6)
        assert abs(c["top_relative_difference"]) < 1e-6
        # the moments of the quadrature: mean of probe measures ~ tr(A^j)/P within probe noise
        np.testing.assert_allclose(d.moment(0), 1.0, rtol=1e-12)
        # log scale: only positive nodes, the rest reported as excluded mass
        lg = hessian.spectral_density(small.tanh_loss, small.tanh_params, small.data, key=jax.random.key(0),
                                      num_probes=2, num_steps=40, scale="log", check=False, batch_size=small.batch,
                                      store=tmp_path / "slq")
        assert lg.scale == "log" and 0 < lg.mass_excluded < 1 and np.all(np.isfinite(lg.density))
        # resumable: the stored probes are reused (no products)
        again = hessian.spectral_density(small.tanh_loss, small.tanh_params, small.data, key=jax.random.key(0),
                                         num_probes=2, num_steps=40, scale="log", check=False,
                                         batch_size=small.batch, store=tmp_path / "slq")
        assert again.num_hvps == 0
        np.testing.assert_array_equal(again.nodes, lg.nodes)
        d.save(tmp_path / "d.npz")
        back = hessian.DensityResult.load(tmp_path / "d.npz")
        np.testing.assert_array_equal(back.density, d.density)
        assert back.checks["top_eigenvalue"] == c["top_eigenvalue"]


def test_density_float32_and_streaming(small):
    d = hessian.spectral_density(small.relu_loss, small.relu_params32, small.data32, key=jax.random.key(0),
                                 num_probes=2, num_steps=40, reorthogonalize=False, check=False,
                                 batch_size=small.batch)
    assert not d.reorthogonalize and d.nodes.dtype == np.float64
    # float32 recurrence: the top node still matches the top eigenvalue to ~1e-5 relative
    np.testing.assert_allclose(d.top_node, small.relu_evals.max(), rtol=1e-4)
    # quadrature is exact for degree 1: the SLQ trace is the probes' Hutchinson estimate
    np.testing.assert_allclose(d.checks["slq_trace"], d.checks["hutchinson_trace"], rtol=1e-5)
