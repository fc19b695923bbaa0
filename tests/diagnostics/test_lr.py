"""landscape.diagnostics.learning_rate_range: the stability limits on problems with a known
Hessian (least squares: ``H = X^T X / n`` exactly), both sides of each limit, the vmapped runs
against independent runs, Adam's preconditioned limit against a dense float64 reference, the
store, the plot, bad inputs."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import landscape
from landscape.diagnostics import (
    LearningRateRangeResult,
    _lr,
    learning_rate_range,
    stability_limit,
)

N, D = 64, 6
STEPS = 150
FACTORS = np.array(
    [0.5, 0.9, 1.1, 1.5]
)  # times the limit: converges, converges, diverges, diverges


def linear_apply(params, state, x, *, train=False):
    return x @ params["w"], state


def _problem(dtype):
    """Least squares with MSE ``0.5 mean((X w - y)^2)``: gradient ``X^T (X w - y) / n``,
    Hessian ``X^T X / n`` everywhere (float64 NumPy references)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, D)) * np.linspace(0.5, 2.0, D)
    y = rng.normal(size=(N, 1))
    w0 = 0.1 * rng.normal(size=(D, 1))
    data = {"x": jnp.asarray(X, dtype), "y": jnp.asarray(y, dtype)}
    model = landscape.Model(linear_apply, {"w": jnp.asarray(w0, dtype)}, {})
    H = X.T @ X / N
    return X, y, w0, H, data, model


def _loss(X, y, w):
    return 0.5 * np.mean((X @ w - y) ** 2)


def _heavy_ball(X, y, w0, lr, beta, steps, nesterov=False):
    """optax's sgd with momentum (trace t = g + beta t; step t, or g + beta t with Nesterov),
    in float64 NumPy."""
    w, t = w0.copy(), np.zeros_like(w0)
    for _ in range(steps):
        g = X.T @ (X @ w - y) / len(y)
        t = g + beta * t
        w = w - lr * (g + beta * t if nesterov else t)
    return _loss(X, y, w)


def _x64(dtype):
    return jax.enable_x64(np.dtype(dtype) == np.float64)


@pytest.fixture(scope="module", params=[np.float32, np.float64], ids=["float32", "float64"])
def gd(request):
    dtype = request.param
    with _x64(dtype):
        X, y, w0, H, data, model = _problem(dtype)
        lam = np.linalg.eigvalsh(H).max()
        lrs = 2 / lam * FACTORS
        res = learning_rate_range(
            model, data, "sgd", lrs, key=jax.random.key(0), loss="mse", steps=STEPS
        )
    return dtype, X, y, w0, lam, res


def test_gd_limit_both_sides(gd):
    dtype, X, y, w0, lam, res = gd
    rtol = 1e-10 if dtype == np.float64 else 1e-5  # Lanczos on a 6x6 matrix: exact to rounding
    np.testing.assert_allclose(float(res.sharpness), lam, rtol=rtol)
    np.testing.assert_allclose(float(res.limit), 2 / lam, rtol=rtol)
    assert res.limit_rule == "2 / lambda_max"
    # 0.9 x limit: |1 - lr lam| = 0.8 on the top direction, converges; 1.1 x: 1.2, the loss
    # grows like 1.44^steps
    np.testing.assert_array_equal(res.diverged, [False, False, True, True])
    assert res.final_loss[1] < float(res.initial_loss)
    np.testing.assert_allclose(float(res.initial_loss), _loss(X, y, w0), rtol=rtol)
    # every rate equals its own run (plain gradient descent in float64 NumPy)
    for lr, got in zip(res.lrs[:2], res.final_loss[:2]):
        ref = _heavy_ball(X, y, w0, lr, 0.0, STEPS)
        np.testing.assert_allclose(got, ref, rtol=1e-10 if dtype == np.float64 else 1e-5)
    # the step losses are the full-data loss before each step: the first is the initial loss
    np.testing.assert_allclose(res.step_loss[:, 0], float(res.initial_loss), rtol=rtol)
    assert res.step_loss.shape == (4, STEPS) and res.final_loss.dtype == np.float64
    assert res.max_not_diverged_lr == res.lrs[1] and res.best_lr in res.lrs[:2]


@pytest.mark.parametrize("name", ["momentum", "nesterov"])
def test_momentum_limits_both_sides(name):
    beta = 0.9
    with jax.enable_x64(True):
        X, y, w0, H, data, model = _problem(np.float64)
        lam = np.linalg.eigvalsh(H).max()
        limit = (
            (2 + 2 * beta) / lam if name == "momentum" else (2 + 2 * beta) / ((1 + 2 * beta) * lam)
        )
        lrs = limit * np.array([0.9, 1.1])
        res = learning_rate_range(
            model,
            data,
            name,
            lrs,
            key=jax.random.key(0),
            loss="mse",
            steps=STEPS,
            optimizer_kwargs={"momentum": beta},
        )
    np.testing.assert_allclose(float(res.limit), limit, rtol=1e-10)
    np.testing.assert_array_equal(res.diverged, [False, True])
    for lr, got in zip(lrs, res.final_loss):
        ref = _heavy_ball(X, y, w0, lr, beta, STEPS, nesterov=name == "nesterov")
        if np.isfinite(ref) and ref < 1e100:
            np.testing.assert_allclose(got, ref, rtol=1e-9)


def test_stability_rules_are_where_the_iteration_turns_unstable():
    """Each rule is where the spectral radius of the linear iteration on one eigendirection
    (curvature ``lam``; state: position and momentum) crosses 1."""
    lam, beta = 2.5, 0.7

    def radius(name, lr):
        a = lr * lam
        M = {
            "sgd": np.array([[1 - a]]),
            "momentum": np.array([[1 - a, -beta], [a, beta]]),  # s = lr t: s' = a w + beta s
            "nesterov": np.array([[1 - (1 + beta) * a, -(beta**2)], [a, beta]]),
            "adam": np.array(
                [[1 - (1 - beta) * a, -beta], [(1 - beta) * a, beta]]
            ),  # lam of P^-1 H
        }[name]
        return np.abs(np.linalg.eigvals(M)).max()

    for name in ("sgd", "momentum", "nesterov", "adam"):
        kw = {"sgd": {}, "adam": {"b1": beta}}.get(name, {"momentum": beta})
        lr, rule = stability_limit(lam, name, **kw)
        assert radius(name, lr * (1 - 1e-6)) < 1 < radius(name, lr * (1 + 1e-6)), (name, rule)
    # sgd with momentum= (and nesterov=True) are the heavy ball and Nesterov
    assert (
        stability_limit(lam, "sgd", momentum=beta)[0]
        == stability_limit(lam, "momentum", momentum=beta)[0]
    )
    assert (
        stability_limit(lam, "sgd", momentum=beta, nesterov=True)[0]
        == stability_limit(lam, "nesterov", momentum=beta)[0]
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_adam_limit_against_dense_reference(dtype):
    """``lr* = (2 + 2 b1) / ((1 - b1) lambda_max(P^-1 H))``, ``P = |g0| + eps`` (the first step's
    bias-corrected second moment is g0^2), against a dense float64 eigenproblem."""
    b1, eps = 0.8, 1e-6
    with _x64(dtype):
        X, y, w0, H, data, model = _problem(dtype)
        res = learning_rate_range(
            model,
            data,
            "adam",
            [1e-3],
            key=jax.random.key(1),
            loss="mse",
            steps=2,
            optimizer_kwargs={"b1": b1, "eps": eps},
        )
    g0 = X.T @ (X @ w0 - y) / N
    p = np.abs(g0[:, 0]) + eps
    lam = np.linalg.eigvalsh(H / np.sqrt(p)[:, None] / np.sqrt(p)[None, :]).max()
    rtol = 1e-9 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(float(res.sharpness), lam, rtol=rtol)
    np.testing.assert_allclose(float(res.limit), (2 + 2 * b1) / ((1 - b1) * lam), rtol=rtol)
    assert "b1 = 0.8" in res.limit_rule and "v_hat = g0^2" in res.details["preconditioner"]

    # the rule is that of the frozen-preconditioner iteration m <- b1 m + (1 - b1) g,
    # w <- w - lr P^-1 m: stable at 0.95 x lr*, unstable at 1.05 x lr* (float64 NumPy)
    def frozen(lr, steps=600):
        w, m = w0.copy(), np.zeros_like(w0)
        for _ in range(steps):
            m = b1 * m + (1 - b1) * (X.T @ (X @ w - y) / N)
            w = w - lr * m / p[:, None]
        return _loss(X, y, w)

    lim = float(res.limit)
    assert frozen(0.95 * lim) < _loss(X, y, w0) < 1e6 < frozen(1.05 * lim)


def _mlp(n=96):
    d = landscape.load_data("digits")
    data = {"x": d.train["x"][:n], "y": d.train["y"][:n]}
    model = landscape.make_model("mlp", input_shape=(64,), num_outputs=10, hidden=(16,), seed=0)
    return model, data


def test_vmapped_runs_equal_single_runs_and_train():
    """Three rates in one program equal each rate alone (chunks of one), and landscape.train
    with the same rate and seed (mini-batches drawn alike)."""
    model, data = _mlp()
    lrs = np.array([0.01, 0.03, 0.1])
    kw = dict(key=jax.random.key(3), steps=12, batch_size=32, with_limit=False)
    together = learning_rate_range(model, data, "momentum", lrs, **kw)
    alone = learning_rate_range(model, data, "momentum", lrs, chunk_size=1, **kw)
    # float32: the same operations in a program of another width (XLA may fuse and order sums
    # differently): rounding, 1e-7 per operation, grown over 12 steps
    np.testing.assert_allclose(together.final_loss, alone.final_loss, rtol=1e-5)
    np.testing.assert_allclose(together.step_loss, alone.step_loss, rtol=1e-5)
    run = landscape.train(
        model,
        data,
        loss="cross_entropy",
        optimizer="momentum",
        learning_rate=float(lrs[1]),
        num_steps=12,
        batch_size=32,
        seed=3,
        progress=False,
    )
    np.testing.assert_allclose(together.step_loss[1], run.history["batch_loss"], rtol=1e-5)
    np.testing.assert_allclose(together.final_loss[1], run.history["train_loss"][-1], rtol=1e-5)
    assert "mini-batch (32)" in together.settings["mode"] and np.isnan(float(together.limit))


def test_default_grid_store_and_no_recompile(tmp_path, monkeypatch):
    with jax.enable_x64(True):
        X, y, w0, H, data, model = _problem(np.float64)
        kw = dict(key=jax.random.key(0), loss="mse", steps=20, chunk_size=5)
        first = learning_rate_range(model, data, "sgd", None, store=tmp_path / "lr", **kw)
        lam = np.linalg.eigvalsh(H).max()
        np.testing.assert_allclose(first.lrs, 2 / lam * np.logspace(-2, 1, 13), rtol=1e-10)
        size = _lr._sweep._cache_size()
        again = learning_rate_range(model, data, "sgd", first.lrs, **kw)  # no store: computed
        assert _lr._sweep._cache_size() == size  # the same program (13 rates in chunks of 5)
        np.testing.assert_array_equal(again.final_loss, first.final_loss)

        def boom(*a, **k):
            raise AssertionError("recomputed a stored chunk")

        monkeypatch.setattr(_lr, "_sweep", boom)
        resumed = learning_rate_range(model, data, "sgd", None, store=tmp_path / "lr", **kw)
        np.testing.assert_array_equal(resumed.final_loss, first.final_loss)
        assert float(resumed.limit) == float(first.limit)
        with pytest.raises(ValueError, match="another job"):
            learning_rate_range(
                model, data, "sgd", None, store=tmp_path / "lr", **{**kw, "steps": 21}
            )
    d = first.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["diverged"] == [bool(v) for v in first.diverged] and d["limit"] == float(first.limit)
    text = str(first)
    assert "not a bound" in text and "catapult" in text
    back = LearningRateRangeResult.load(first.save(tmp_path / "r.npz"))
    np.testing.assert_array_equal(back.final_loss, first.final_loss)


def test_plot(gd):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import landscape.plot

    res = gd[-1]
    ax = landscape.plot.plot_learning_rate_range(res)
    assert ax.get_xscale() == "log"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("initial-curvature limit") and "not a bound" in t for t in labels)
    assert any(t.startswith("diverged") for t in labels)
    vlines = [
        ln
        for ln in ax.get_lines()
        if ln.get_xdata()[0] == ln.get_xdata()[-1] and len(ln.get_xdata()) == 2
    ]
    assert any(np.isclose(float(ln.get_xdata()[0]), float(res.limit)) for ln in vlines)
    plt.close(ax.figure)
    with pytest.raises(TypeError, match="LearningRateRangeResult"):
        landscape.plot.plot_learning_rate_range({"lrs": 1})


def test_bad_inputs():
    X, y, w0, H, data, model = _problem(np.float32)
    name = "landscape.diagnostics.learning_rate_range"
    key = jax.random.key(0)

    def call(*args, **kw):
        args = args or ("sgd", [0.1, 0.2])
        return learning_rate_range(
            model, kw.pop("data", data), *args, key=kw.pop("key", key), loss="mse", **kw
        )

    for lrs, words in (
        ([0.0, 0.1], "positive and finite"),
        ([-0.1], "positive and finite"),
        ([np.nan, 0.1], "positive and finite"),
        ([0.2, 0.1], "strictly increasing"),
        ([0.1, 0.1], "strictly increasing"),
        ([], "non-empty"),
        ([[0.1]], "1-D"),
    ):
        with pytest.raises(ValueError, match=words):
            call("sgd", lrs)
    with pytest.raises(TypeError, match="sequence of numbers"):
        call("sgd", ["fast"])
    with pytest.raises(ValueError, match=f"{name}: name must be one of"):
        call("sgdd", [0.1])
    import optax

    with pytest.raises(TypeError, match="learning rate is what is swept"):
        call(optax.sgd(0.1), [0.1])
    with pytest.raises(TypeError, match="do not fit optimizer"):
        call("sgd", [0.1], optimizer_kwargs={"betas": 0.9})
    with pytest.raises(ValueError, match="must not hold learning_rate"):
        call("sgd", [0.1], optimizer_kwargs={"learning_rate": 0.9})
    bad = {"x": data["x"].at[3, 1].set(jnp.nan), "y": data["y"]}
    with pytest.raises(ValueError, match=f"{name}: data must be finite"):
        call(data=bad)
    for kw, err, words in (
        ({"steps": 0}, ValueError, "steps must be > 0"),
        ({"divergence_factor": 1.0}, ValueError, "divergence_factor must be > 1"),
        ({"batch_size": N + 1}, ValueError, "larger than the data set"),
        ({"chunk_size": 0}, ValueError, "chunk_size must be > 0"),
        ({"key": None}, TypeError, "key is required"),
    ):
        with pytest.raises(err, match=words):
            call(**kw)
    with pytest.raises(ValueError, match="lrs=None takes a grid around"):
        call("rmsprop", None)
    bn = landscape.Model(linear_apply, model.params, {"mean": jnp.zeros(D)})
    with pytest.raises(ValueError, match="batch-norm statistics"):
        learning_rate_range(bn, data, "sgd", [0.1], key=key, loss="mse")
    with pytest.raises(ValueError, match="sharpness must be > 0"):
        stability_limit(0.0)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        stability_limit(1.0, "rmsprop")


def test_stability_limit_is_the_inverse_of_the_hessian_threshold():
    # one rule: lr * lambda < c; the diagnostics' limit in lr (at lambda) and the Hessian
    # module's threshold in lambda (at lr) give the same c for every optimiser
    from landscape.hessian import stability_threshold

    lam, lr = 7.0, 0.3
    cases = [
        (("sgd", {}), ("gd", {})),
        (("sgd", {"momentum": 0.5}), ("gd", {"momentum": 0.5})),
        (("momentum", {"momentum": 0.8}), ("gd", {"momentum": 0.8})),
        (("nesterov", {"momentum": 0.9}), ("nesterov", {"momentum": 0.9})),
        (("sgd", {"momentum": 0.9, "nesterov": True}), ("nesterov", {"momentum": 0.9})),
        (("adam", {"b1": 0.95}), ("adam", {"beta1": 0.95})),
        # make_optimizer's nesterov= flag decides over the name (as the optimiser it builds)
        (("momentum", {"nesterov": True}), ("nesterov", {"momentum": 0.9})),
        (("nesterov", {"nesterov": False}), ("gd", {"momentum": 0.9})),
    ]
    for (name, kw), (kind, hkw) in cases:
        limit, rule = stability_limit(lam, name, **kw)
        assert limit * lam == pytest.approx(stability_threshold(lr, optimizer=kind, **hkw) * lr)
        assert "lambda_max" in rule
    for bad in ({"momentum": 1.0}, {"momentum": -0.1}):
        with pytest.raises(ValueError, match="momentum must be in"):
            stability_limit(lam, "momentum", **bad)
    with pytest.raises(ValueError, match="b1 must be in"):
        stability_limit(lam, "adam", b1=1.0)
