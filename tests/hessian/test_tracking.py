"""sharpness_callback: the stability threshold of the optimiser that trains (gradient descent,
heavy-ball and Nesterov momentum, Adam's preconditioned sharpness), read from
``landscape.train`` or declared, and no threshold (NaN, with the reason) where it is unknown.

References: the thresholds are checked against the spectral radius of each optimiser's
iteration on a one-dimensional quadratic (Optax's update rules, checked step by step); the
measured sharpness against the dense float64 Hessian (``jax.hessian``) of a 460-parameter tanh
MLP, Adam's against the eigenvalues of ``D^{-1/2} H D^{-1/2}`` with ``D`` Adam's preconditioner
from the final optimiser state. Tolerances: the eigensolver runs with ``tol=1e-9`` (relative
residual), so the top eigenvalue agrees with the dense one to about 1e-9 relative; asserted
1e-7 (the dense eigensolver adds 1e-13).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import landscape
from landscape import hessian

N = 96


@pytest.fixture(scope="module")
def tiny(digits_data):
    with jax.enable_x64(True):
        model = landscape.make_model(
            "mlp",
            input_shape=(64,),
            num_outputs=10,
            hidden=(6,),
            seed=0,
            activation="tanh",
            param_dtype=jnp.float64,
        )
    data = {
        "x": np.asarray(digits_data.train["x"][:N], np.float64),
        "y": np.asarray(digits_data.train["y"][:N], np.int32),
    }
    return model, data


def _dense_hessian(model, params, data):
    flat, unravel = ravel_pytree(params)
    loss_fn = landscape.make_loss_fn(model)
    d = jax.tree.map(jnp.asarray, data)
    H = np.asarray(jax.jit(jax.hessian(lambda f: loss_fn(unravel(f), d)[0]))(flat), np.float64)
    return 0.5 * (H + H.T)


def _train(model, data, callbacks, *, num_steps, **kw):
    return landscape.train(
        model,
        data,
        num_steps=num_steps,
        batch_size=N,
        callbacks=callbacks,
        progress=False,
        eval_every=num_steps,
        **kw,
    )


def _iteration(kind, lam, lr, beta):
    """Each optimiser's linear iteration on ``f(x) = lam x^2 / 2`` (Adam with a frozen
    preconditioner ``p``: ``lam`` is the preconditioned curvature ``lam / p``); state
    ``(x, momentum buffer)``."""
    if kind == "gd":  # Optax sgd: t = g + beta t; x -= lr t
        return np.array([[1 - lr * lam, -lr * beta], [lam, beta]])
    if kind == "nesterov":  # Optax sgd(nesterov=True): t = g + beta t; x -= lr (g + beta t)
        return np.array([[1 - lr * (1 + beta) * lam, -lr * beta**2], [lam, beta]])
    # Adam: m = b1 m + (1 - b1) g; x -= lr m / p  (m / p as the buffer)
    return np.array([[1 - lr * (1 - beta) * lam, -lr * beta], [(1 - beta) * lam, beta]])


@pytest.mark.parametrize(
    "kind, beta",
    [("gd", 0.0), ("gd", 0.9), ("nesterov", 0.5), ("nesterov", 0.9), ("adam", 0.9), ("adam", 0.5)],
)
def test_thresholds_are_where_the_iteration_diverges(kind, beta):
    lr = 0.3
    kw = {"beta1": beta} if kind == "adam" else {"momentum": beta}
    thr = hessian.stability_threshold(lr, optimizer=kind, **kw)
    radius = [
        max(abs(np.linalg.eigvals(_iteration(kind, thr * f, lr, beta))))
        for f in (1 - 1e-6, 1 + 1e-6)
    ]
    assert radius[0] < 1 < radius[1]
    assert hessian.stability_threshold(0.1, optimizer="adam") == pytest.approx(
        380.0, rel=1e-15
    )  # 38/lr


@pytest.mark.parametrize("nesterov", [False, True])
def test_the_iterations_are_optax_updates(nesterov):
    lam, lr, beta = 1.7, 0.2, 0.6
    opt = optax.sgd(lr, momentum=beta, nesterov=nesterov)
    with jax.enable_x64(True):
        x, st, z = np.float64(1.0), opt.init(np.float64(1.0)), np.array([1.0, 0.0])
        for _ in range(3):
            upd, st = opt.update(lam * x, st)
            x = x + float(upd)
            z = _iteration("nesterov" if nesterov else "gd", lam, lr, beta) @ z
            np.testing.assert_allclose(x, z[0], rtol=1e-14)


def test_gradient_descent_and_momentum_by_name(tiny):
    model, data = tiny
    with jax.enable_x64(True):
        cb = hessian.sharpness_callback(every=2, key=jax.random.key(0), tol=1e-9)
        res = _train(model, data, [cb], num_steps=4, optimizer="sgd", learning_rate=0.5)
        h = res.history
        assert list(h["sharpness_step"]) == [0, 2, 4]
        np.testing.assert_array_equal(h["sharpness_threshold"], 2 / 0.5)
        assert (cb.threshold_rule, cb.threshold_reason, cb.quantity) == (
            "2/lr",
            None,
            "lambda_max(H)",
        )
        for i, p in ((0, model.params), (2, res.params)):
            top = np.linalg.eigvalsh(_dense_hessian(model, p, data))[-1]
            np.testing.assert_allclose(h["sharpness"][i], top, rtol=1e-7)
        # heavy ball (make_optimizer's momentum 0.9) and Nesterov, read from the training
        for name, want in (("momentum", 3.8 / 0.1), ("nesterov", 3.8 / (2.8 * 0.1))):
            cb = hessian.sharpness_callback(every=1, key=jax.random.key(0), at_start=False)
            h = _train(model, data, [cb], num_steps=1, optimizer=name, learning_rate=0.1).history
            np.testing.assert_allclose(h["sharpness_threshold"], want, rtol=1e-15)
            assert cb.threshold_rule.endswith("beta = 0.9")


def test_adam_preconditioned_sharpness_against_dense(tiny):
    model, data = tiny
    lr = 1e-2
    with jax.enable_x64(True):
        auto = hessian.sharpness_callback(
            every=2, key=jax.random.key(0), tol=1e-9, preconditioner_fn="auto", name="pre"
        )
        plain = hessian.sharpness_callback(every=4, key=jax.random.key(0), tol=1e-9)
        res = _train(model, data, [auto, plain], num_steps=4, optimizer="adam", learning_rate=lr)
        h = res.history
        # the preconditioned measurement waits for Adam's first step
        assert list(h["pre_step"]) == [2, 4] and list(h["sharpness_step"]) == [0, 4]
        np.testing.assert_allclose(
            h["pre_threshold"], (2 + 2 * 0.9) / ((1 - 0.9) * lr), rtol=1e-15
        )
        assert auto.quantity == "lambda_max(P^-1 H)" and auto.threshold_reason is None
        # the dense reference: D = (1 - b1^t)(sqrt(nu / (1 - b2^t)) + eps) from the final state
        st = res.opt_state[0]
        t = int(st.count)
        assert t == 4
        d = np.concatenate(
            [
                np.ravel((1 - 0.9**t) * (np.sqrt(np.asarray(v) / (1 - 0.999**t)) + 1e-8))
                for v in jax.tree.leaves(st.nu)
            ]
        )
        H = _dense_hessian(model, res.params, data)
        pre = np.linalg.eigvalsh(H / np.sqrt(np.outer(d, d)))[-1]
        np.testing.assert_allclose(h["pre"][-1], pre, rtol=1e-7)
        # without the preconditioner: lambda_max(H), and no threshold (38/lr is not its, 2/lr
        # is gradient descent's)
        np.testing.assert_allclose(h["sharpness"][-1], np.linalg.eigvalsh(H)[-1], rtol=1e-7)
        assert np.isnan(h["sharpness_threshold"]).all() and plain.threshold_rule is None
        assert "preconditioned" in plain.threshold_reason and plain.quantity == "lambda_max(H)"
        assert abs(pre - h["sharpness"][-1]) > 0.5 * pre  # they differ: not the same measurement


def _threshold_of(model, data, opt, **kw):
    with jax.enable_x64(True):
        return _threshold_of64(model, data, opt, **kw)


def _threshold_of64(model, data, opt, **kw):
    cb = hessian.sharpness_callback(
        every=1, key=jax.random.key(0), at_start=False, tol=1e-2, **kw.pop("callback", {})
    )
    h = _train(model, data, [cb], num_steps=1, optimizer=opt, **kw).history
    return float(h["sharpness_threshold"][0]), cb.threshold_reason


def test_optax_transformations_declared_described_or_unknown(tiny):
    model, data = tiny
    adam, heavy = optax.adam(1e-2), optax.sgd(0.1, momentum=0.5)
    # unknown: NaN and the reason, never a guess
    thr, why = _threshold_of(model, data, adam)
    assert np.isnan(thr) and "no known name" in why
    # learning_rate alone declared gradient descent (as before), which Adam's state contradicts
    thr, why = _threshold_of(model, data, adam, callback={"learning_rate": 1e-2})
    assert np.isnan(thr) and "second moments" in why
    thr, why = _threshold_of(model, data, heavy, callback={"learning_rate": 0.1})
    assert np.isnan(thr) and "keeps momentum" in why
    # declared
    thr, why = _threshold_of(
        model,
        data,
        heavy,
        callback={"optimizer": "momentum", "momentum": 0.5, "learning_rate": 0.1},
    )
    assert thr == pytest.approx(30.0, rel=1e-15) and why is None
    # described by optimizer_config (taken at its word), its rate only without a schedule
    config = {"name": "momentum", "learning_rate": 0.1, "momentum": 0.5}
    thr, why = _threshold_of(model, data, heavy, optimizer_config=config)
    assert thr == pytest.approx(30.0, rel=1e-15) and why is None
    thr, why = _threshold_of(model, data, heavy, optimizer_config={**config, "schedule": "cosine"})
    assert np.isnan(thr) and "learning rate is unknown" in why
    thr, why = _threshold_of(
        model,
        data,
        heavy,
        optimizer_config={**config, "schedule": "cosine"},
        callback={"learning_rate": 0.1},
    )
    assert thr == pytest.approx(30.0, rel=1e-15)


def test_contradictions_and_bad_settings(tiny):
    model, data = tiny
    with pytest.raises(
        ValueError, match=r"sharpness_callback: learning_rate=0.2 but training uses 0.1"
    ):
        _threshold_of(model, data, "sgd", learning_rate=0.1, callback={"learning_rate": 0.2})
    with pytest.raises(
        ValueError, match=r"sharpness_callback: momentum=0.5 but optimizer 'momentum' has 0.9"
    ):
        _threshold_of(model, data, "momentum", learning_rate=0.1, callback={"momentum": 0.5})
    with pytest.raises(
        ValueError, match=r"sharpness_callback: optimizer='adam' but training uses 'sgd'"
    ):
        _threshold_of(model, data, "sgd", learning_rate=0.1, callback={"optimizer": "adam"})
    key = jax.random.key(0)
    bad = [
        ({"optimizer": "lbfgs"}, ValueError, "optimizer must be one of"),
        ({"momentum": 1.0}, ValueError, r"momentum must be in \[0, 1\); got 1.0"),
        ({"beta1": -0.1}, ValueError, r"beta1 must be in \[0, 1\)"),
        ({"preconditioner_fn": "adam"}, ValueError, "preconditioner_fn must be one of"),
        ({"preconditioner_fn": 3}, TypeError, "preconditioner_fn must be callable"),
        ({"learning_rate": 0.0}, ValueError, "learning_rate must be > 0"),
    ]
    for kw, err, msg in bad:
        with pytest.raises(err, match=r"landscape.hessian.sharpness_callback: " + msg):
            hessian.sharpness_callback(every=1, key=key, **kw)
    with pytest.raises(ValueError, match=r"stability_threshold: momentum must be in \[0, 1\)"):
        hessian.stability_threshold(0.1, momentum=1.5)
