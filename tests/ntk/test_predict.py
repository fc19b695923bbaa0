"""Infinite-width predictions: closed forms against direct solves and limits."""

import jax
import numpy as np
import pytest

import ntk


@pytest.fixture(scope="module")
def task():
    rng = np.random.default_rng(0)
    x, xt = rng.standard_normal((12, 4)), rng.standard_normal((5, 4))
    y = rng.standard_normal((12, 2))
    arch = ntk.serial(
        ntk.Dense(8, W_std=1.5, b_std=0.1), ntk.Relu(), ntk.Dense(1, W_std=1.5, b_std=0.1)
    )
    with jax.enable_x64(True):
        return arch, x, xt, y, ntk.kernel(arch, x), ntk.kernel(arch, xt, x), ntk.kernel(arch, xt)


def test_regression_and_gradient_flow_limits(task):
    _, _, _, y, kdd, ktd, _ = task
    direct = ktd.ntk @ np.linalg.solve(kdd.ntk, y)
    np.testing.assert_allclose(ntk.kernel_regression(kdd.ntk, ktd.ntk, y), direct, rtol=1e-8)
    pred = ntk.gradient_descent_mse(kdd.ntk, y, learning_rate=0.5)
    f0_tr, f0_te = np.ones((12, 2)) * 0.3, np.ones((5, 2)) * -0.2
    tr0, te0 = pred(0.0, f0_tr, f0_te, ktd.ntk)
    np.testing.assert_allclose(tr0, f0_tr, atol=1e-12)  # t = 0: the initial outputs
    np.testing.assert_allclose(te0, f0_te, atol=1e-12)
    tr, te = pred(None, 0.0, None, ktd.ntk)  # t = inf, f0 = 0: kernel regression
    np.testing.assert_allclose(tr, y, atol=1e-8)
    np.testing.assert_allclose(te, direct, rtol=1e-7)
    _, te_big = pred(1e9, 0.0, None, ktd.ntk)
    np.testing.assert_allclose(te_big, direct, rtol=1e-5)
    # ensemble mean (initial outputs averaged out) equals the f0 = 0 path at every time
    ens = ntk.gradient_descent_mse_ensemble(kdd, y, learning_rate=0.5)
    np.testing.assert_allclose(ens(7.0, ktd).mean, pred(7.0, 0.0, None, ktd.ntk)[1], rtol=1e-10)


def test_ensemble_covariance(task):
    _, _, _, y, kdd, ktd, ktt = task
    ens = ntk.gradient_descent_mse_ensemble(kdd, y)
    nngp = ens(None, ktd, ktt, get="nngp", compute_cov=True)
    post = ktt.nngp - ktd.nngp @ np.linalg.solve(kdd.nngp, ktd.nngp.T)  # GP posterior
    np.testing.assert_allclose(nngp.cov, post, atol=1e-8)
    at0 = ens(0.0, ktd, ktt, get="ntk", compute_cov=True)  # prior at t = 0
    np.testing.assert_allclose(at0.cov, ktt.nngp, atol=1e-10)
    np.testing.assert_allclose(at0.mean, 0.0, atol=1e-12)
    cov = ens(None, ktd, ktt, compute_cov=True).cov
    assert np.allclose(cov, cov.T) and np.linalg.eigvalsh(cov).min() > -1e-8


def test_max_learning_rate(task):
    _, _, _, y, kdd, _, _ = task
    lr = ntk.max_learning_rate(kdd.ntk, y_train_size=y.size)
    lmax = np.linalg.eigvalsh(kdd.ntk).max()
    assert np.isclose(lr, 2 * y.size / lmax)
    # gradient descent on the linear model f(t+1) = f(t) - lr/|Y| K (f - y) is stable just
    # below the bound and diverges just above it
    for scale, ok in ((0.99, True), (1.01, False)):
        f = np.zeros_like(y)
        for _ in range(3000):
            f = f - scale * lr / y.size * kdd.ntk @ (f - y)
        assert np.all(np.isfinite(f)) and (np.abs(f - y).max() < 1e-3) == ok


def test_linearized_model(key):
    arch = ntk.serial(ntk.Dense(16, b_std=0.1), ntk.Erf(), ntk.Dense(2))
    x = np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32)
    model = arch.init(key, (3,))
    lin = ntk.linearize_model(model)
    d = jax.tree.map(lambda p: 0.1 * np.ones_like(p), model.params)
    p1 = jax.tree.map(lambda a, b: a + b, model.params, d)
    p2 = jax.tree.map(lambda a, b: a + 2 * b, model.params, d)
    f_lin = ntk.linearize(arch.apply, model.params)

    @jax.jit
    def evaluate(ps):
        out = {k: lin.apply_fn(p, lin.state, x)[0] for k, p in ps.items()}
        out["net"] = model.apply_fn(ps["p0"], model.state, x)[0]
        out["f_lin"] = f_lin(ps["p1"], x)
        return out

    o = evaluate({"p0": model.params, "p1": p1, "p2": p2})
    # the linear model at its expansion point is the network (float32: a few ulp of O(1)
    # outputs, the two programs fuse differently)
    np.testing.assert_allclose(o["p0"], o["net"], rtol=1e-6, atol=1e-6)
    # affine in the parameters (float32 differences of O(1) outputs)
    np.testing.assert_allclose(o["p2"] - o["p0"], 2 * (o["p1"] - o["p0"]), rtol=1e-4, atol=1e-5)
    # the same NTK as the network at the expansion point (structured vs the linear model's
    # Jacobian contraction, float32)
    np.testing.assert_allclose(
        ntk.empirical_ntk(lin, x).matrix, ntk.empirical_ntk(model, x).matrix, rtol=1e-5
    )
    # ntk.linearize (closure form) equals the model form
    np.testing.assert_allclose(o["f_lin"], o["p1"], rtol=1e-6, atol=1e-6)


def test_bad_inputs(task):
    _, _, _, y, kdd, ktd, _ = task
    with pytest.raises(ValueError, match="y_train must have shape"):
        ntk.kernel_regression(kdd.ntk, ktd.ntk, y[:3])
    with pytest.raises(ValueError, match="must be square"):
        ntk.gradient_descent_mse(ktd.ntk, y)
    with pytest.raises(TypeError, match="pass kernel.ntk"):
        ntk.kernel_regression(kdd, ktd.ntk, y)
    with pytest.raises(TypeError, match="must be an ntk.Kernel"):
        ntk.gradient_descent_mse_ensemble(kdd.ntk, y)
    with pytest.raises(ValueError, match="must be finite"):
        ntk.max_learning_rate(kdd.ntk * np.nan)
    with pytest.raises(ValueError, match="t must be >= 0"):
        ntk.gradient_descent_mse(kdd.ntk, y)(-1.0)
