"""Gradient overlap, GGN + residual split, sharpness measures, sharpness tracking."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import landscape
from landscape import hessian
from tests.hessian.conftest import flat


def test_gradient_overlap_matches_dense(small, tmp_path):
    with jax.enable_x64(True):
        # tol bounds eigenvalue errors; the vectors (which the overlap uses) are accurate to
        # residual / gap, about sqrt(tol): ask 1e-13 for vectors to ~1e-7
        eig = hessian.eigenvalues(small.relu_loss, small.relu_params, small.data, k=5, key=jax.random.key(0),
                                  tol=1e-13, batch_size=small.batch)
        o = hessian.gradient_overlap(small.relu_loss, small.relu_params, small.data, eigen=eig, batch_size=small.batch)
        _, g = landscape.value_and_grad(small.relu_loss, small.relu_params, small.data)
        g = flat(g)
        V = small.relu_evecs[:, -5:]
        ref = np.sum((V.T @ g) ** 2) / (g @ g)
        # float64: the fraction agrees with the exact eigenvectors to 1e-8
        np.testing.assert_allclose(float(o.fraction), ref, atol=1e-8)
        np.testing.assert_allclose(np.sum(o.cos2), float(o.fraction), rtol=1e-12)
        o.save(tmp_path / "o.npz")
        np.testing.assert_array_equal(hessian.OverlapResult.load(tmp_path / "o.npz").cos2, o.cos2)


def test_ggn_decomposition(small, tmp_path):
    with jax.enable_x64(True):
        dec = hessian.ggn_decomposition(small.relu_loss, small.relu_params, small.data, key=jax.random.key(0), k=0,
                                        num_probes=2, num_steps=12, batch_size=small.batch)
        t = dec.traces
        # same probes for all parts: tr H = tr GGN + tr R probe by probe (degree-1 quadrature)
        np.testing.assert_allclose(t["hessian"], t["ggn"] + t["residual"], rtol=1e-9)
        # the GGN is PSD: its nodes (Ritz values) are >= 0 up to rounding; the Hessian's top node
        # is bounded by the dense top eigenvalue, the exact traces lie within the probe noise
        gev = np.linalg.eigvalsh(small.relu_G)
        assert dec.nodes["ggn"].min() >= -1e-10 * gev.max()
        assert dec.nodes["hessian"].max() <= small.relu_evals.max() * (1 + 1e-10)
        np.testing.assert_allclose(np.mean(dec.weights["ggn"].sum(axis=1)), 1.0, rtol=1e-12)
        assert dec.part("ggn").num_steps == 12 and dec.top_values["ggn"].size == 0
        dec.save(tmp_path / "dec.npz")
        back = hessian.DecompositionResult.load(tmp_path / "dec.npz")
        np.testing.assert_array_equal(back.nodes["residual"], dec.nodes["residual"])


def test_epsilon_sharpness_on_a_quadratic(planted):
    from jax.tree_util import Partial

    from tests.hessian.conftest import quad_loss

    lams = planted.rng.uniform(0.5, 2.0, planted.n)
    with jax.enable_x64(True):
        loss = Partial(quad_loss, jnp.diag(jnp.asarray(lams)))
        w0 = jnp.asarray(planted.rng.normal(size=planted.n))
        # a positive diagonal quadratic around w0 = minimum shifted: 0.5 (w - w0)^T A (w - w0) has
        # its maximum over the box |z_i| <= eps (|w0_i| + 1) at the corner, value 0.5 sum a_i b_i^2;
        # sign-gradient ascent from any start reaches it
        shifted = Partial(_shifted, loss, w0)
        eps = 1e-2
        r = hessian.epsilon_sharpness(shifted, {"w": w0}, planted.data, key=jax.random.key(0), epsilon=eps,
                                      num_steps=10)
        b = eps * (np.abs(np.asarray(w0)) + 1)
        exact = 0.5 * np.sum(lams * b**2)
        np.testing.assert_allclose(r["max_loss"], exact, rtol=1e-12)
        assert r["loss"] == 0.0 and r["sharpness"] == pytest.approx(100 * exact)


def _shifted(loss, w0, params, batch):
    return loss({"w": params["w"] - w0}, batch)


def test_adaptive_sharpness_is_rescaling_invariant(small):
    with jax.enable_x64(True):
        p = small.relu_params
        c = 3.0  # ReLU: scale layer 0 by c and layer 1's kernel by 1/c, the function is unchanged
        q = {"layers": {0: {"kernel": p["layers"][0]["kernel"] * c, "bias": p["layers"][0]["bias"] * c},
                        1: {"kernel": p["layers"][1]["kernel"] / c, "bias": p["layers"][1]["bias"]}}}
        a = hessian.adaptive_sharpness(small.relu_loss, p, small.data, rho=0.05, num_steps=5, batch_size=small.batch)
        b = hessian.adaptive_sharpness(small.relu_loss, q, small.data, rho=0.05, num_steps=5, batch_size=small.batch)
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-10)
        # adaptive sharpness (eta = 0) is invariant (to rounding); the top eigenvalue is not
        np.testing.assert_allclose(a["sharpness"], b["sharpness"], rtol=1e-6)
        assert a["sharpness"] > 0


def test_sharpness_summary_float32(small, tmp_path):
    s = hessian.sharpness(small.relu_loss, small.relu_params32, small.data32, key=jax.random.key(0), num_steps=3,
                          max_hvps=12, batch_size=small.batch)  # k=1, trace budget 12: shared programs
    np.testing.assert_allclose(float(s.max_eigenvalue), small.relu_evals.max(), rtol=1e-4)
    assert float(s.epsilon_sharpness) > 0 and float(s.adaptive_sharpness) > 0
    s.save(tmp_path / "s.npz")
    assert float(hessian.SharpnessResult.load(tmp_path / "s.npz").trace) == float(s.trace)


def test_sharpness_callback_gd_and_adam(small):
    lr = 0.5
    cb = hessian.sharpness_callback(every=10, key=jax.random.key(0), batch_size=small.batch, learning_rate=lr)
    model = small.relu_model32
    res = landscape.train(model, small.data32, optimizer=optax.sgd(lr), num_steps=20, batch_size=len(small.data32["y"]),
                          callbacks=[cb], progress=False)
    h = res.history
    assert list(h["sharpness_step"]) == [0, 10, 20]
    np.testing.assert_allclose(h["sharpness_threshold"], 2 / lr)
    np.testing.assert_allclose(h["sharpness"][0], small.relu_evals.max(), rtol=1e-4)
    # warm starts from the previous eigenvector: later measurements need fewer products
    assert max(h["sharpness_hvps"][1:]) < h["sharpness_hvps"][0]

    cb = hessian.sharpness_callback(every=10, key=jax.random.key(0), batch_size=small.batch, learning_rate=1e-3,
                                    preconditioner_fn=hessian.adam_preconditioner)
    res = landscape.train(model, small.data32, optimizer=optax.adam(1e-3), num_steps=10, batch_size=64,
                          callbacks=[cb], progress=False)
    h = res.history
    assert list(h["sharpness_step"]) == [10]  # no preconditioner before the first step
    np.testing.assert_allclose(h["sharpness_threshold"], 38 / 1e-3)
    # Adam's preconditioner from the optax state, by hand
    st = res.opt_state[0]
    t = int(st.count)
    P = hessian.adam_preconditioner(res.opt_state)
    manual = jax.tree.map(lambda v: (1 - 0.9**t) * (np.sqrt(np.asarray(v) / (1 - 0.999**t)) + 1e-8), st.nu)
    np.testing.assert_allclose(flat(P), flat(manual), rtol=1e-6)
    # the logged value is the top eigenvalue of P^-1/2 H P^-1/2 at the final point (the
    # preconditioned product itself is checked against the dense matrix in test_operators)
    lam = hessian.eigenvalues(small.relu_loss, res.params, small.data32, k=1, key=jax.random.key(0),
                              preconditioner=P, batch_size=small.batch)
    np.testing.assert_allclose(h["sharpness"][-1], lam.values[0], rtol=1e-4)
