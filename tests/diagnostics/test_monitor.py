"""The training monitor: per-leaf norms and ratios against a hand-written backward pass of a
step of SGD, an injected NaN batch caught at its step with the right examples, an overflowing
learning rate caught with a clean batch and a layer named, the last finite parameters against
an uninterrupted run, one compilation per run, round trips, the plot, bad arguments."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import landscape
from landscape import diagnostics as D

N, B = 128, 16  # a digits subset: 8 steps per epoch


@pytest.fixture(scope="module")
def small(digits_data):
    return {k: np.asarray(v[:N]) for k, v in digits_data.train.items()}


def _batches(seed: int, n: int = N, b: int = B) -> np.ndarray:
    """``landscape.train``'s documented batch order: a fresh ``default_rng(seed)`` permutation
    per epoch, cut into batches (first epoch)."""
    rng = np.random.default_rng(seed)
    return rng.permutation(n)[: (n // b) * b].reshape(n // b, b)


def _hand_grads(p, x, y):
    """Mean cross-entropy of ``tanh(x W0 + b0) W1 + b1``: gradients by the chain rule (NumPy,
    float64)."""
    W0, b0 = p["layers"][0]["kernel"], p["layers"][0]["bias"]
    W1, b1 = p["layers"][1]["kernel"], p["layers"][1]["bias"]
    h = np.tanh(x @ W0 + b0)
    z = h @ W1 + b1
    e = np.exp(z - z.max(axis=1, keepdims=True))
    dz = e / e.sum(axis=1, keepdims=True)
    dz[np.arange(len(y)), y] -= 1.0
    dz /= len(y)
    da = (dz @ W1.T) * (1.0 - h**2)
    # forward order: the kernel is used before the bias
    return [x.T @ da, da.sum(0), h.T @ dz, dz.sum(0)]


def _model(dtype=np.float32, activation="tanh"):
    return landscape.make_model(
        "mlp",
        input_shape=(64,),
        num_outputs=10,
        hidden=(8,),
        activation=activation,
        seed=0,
        param_dtype=jnp.dtype(dtype),
    )


LR = 0.1
SGD = dict(optimizer="sgd", learning_rate=LR, num_steps=3, batch_size=B, progress=False)


def _sgd_run(small, dtype):
    """Three steps of SGD with the monitor at every step (block length 1)."""
    data = {"x": small["x"].astype(dtype), "y": small["y"]}
    mon = D.training_monitor(every=1)
    run = landscape.train(
        _model(dtype), data, seed=3, snapshot_steps=[0, 1, 2], callbacks=[mon], **SGD
    )
    return data, mon, run, mon.result()


@pytest.fixture(scope="module")
def sgd32(small):
    return _sgd_run(small, np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_norms_and_ratios_equal_a_hand_computed_sgd_step(small, sgd32, dtype):
    lr = LR
    if dtype == np.float32:
        data, _mon, run, res = sgd32
    else:
        with jax.enable_x64(True):
            data, _mon, run, res = _sgd_run(small, dtype)
    assert list(res.step) == [1, 2, 3]  # the call after step 3 records nothing
    assert res.leaves == ("layers/0/kernel", "layers/0/bias", "layers/1/kernel", "layers/1/bias")
    assert res.layers == ("layers/0", "layers/1")
    order = _batches(3)
    # float64: rounding only; float32: sums of ~1000 float32 products against float64 NumPy
    rtol = 1e-12 if dtype == np.float64 else 2e-5
    for t, k in enumerate(res.step):
        p = jax.tree.map(lambda a: np.asarray(a, np.float64), run.snapshot(k - 1))
        rows = order[k - 1]
        g = _hand_grads(p, data["x"][rows].astype(np.float64), data["y"][rows])
        w = [
            p["layers"][0]["kernel"],
            p["layers"][0]["bias"],
            p["layers"][1]["kernel"],
            p["layers"][1]["bias"],
        ]
        gn = np.array([np.linalg.norm(a) for a in g])
        wn = np.array([np.linalg.norm(a) for a in w])
        np.testing.assert_allclose(res.grad_norm[t], gn, rtol=rtol)
        np.testing.assert_allclose(res.update_norm[t], lr * gn, rtol=rtol)
        np.testing.assert_allclose(res.param_norm[t], wn, rtol=rtol)
        with np.errstate(divide="ignore"):  # the zero-initialised biases at step 1
            np.testing.assert_allclose(res.update_ratio[t], lr * gn / wn, rtol=rtol)
        lay_g = [np.hypot(gn[0], gn[1]), np.hypot(gn[2], gn[3])]
        lay_w = [np.hypot(wn[0], wn[1]), np.hypot(wn[2], wn[3])]
        np.testing.assert_allclose(res.layer_grad_norm[t], lay_g, rtol=rtol)
        np.testing.assert_allclose(
            res.layer_update_ratio[t], lr * np.divide(lay_g, lay_w), rtol=rtol
        )
        # the loss of the update it describes, as train logged it (the same step compiled
        # inside train's loop: rounding)
        np.testing.assert_allclose(
            res.loss[t],
            run.history["batch_loss"][k - 1],
            rtol=1e-12 if dtype == np.float64 else 1e-6,
        )
    # the recorded update is the one train took: ||p_k - p_{k-1}|| (the subtraction rounds at
    # the weights' scale: float32 1e-4 relative on updates ~1e-2 of the weights)
    moved = np.linalg.norm(
        np.asarray(run.snapshot(2)["layers"][0]["kernel"], np.float64)
        - np.asarray(run.snapshot(1)["layers"][0]["kernel"], np.float64)
    )
    np.testing.assert_allclose(
        res.update_norm[1, 0], moved, rtol=1e-10 if dtype == np.float64 else 1e-4
    )
    assert res.update_ratio[0, 1] == np.inf  # the zero-initialised bias moves


def _poison_loss(lf, p, b):
    """The cross-entropy of a batch whose examples marked ``poison`` are NaN: a NaN batch made
    inside the loss (``train`` refuses non-finite data)."""
    x = jnp.where(b["poison"][:, None] > 0, jnp.nan, b["x"])
    return lf(p, {"x": x, "y": b["y"]})


def _diverging(small, seed, poisoned=()):
    """A linear MLP under SGD at learning rate 50 (its loss overflows at step 11 from these
    seeds), with the poisoning loss (one compiled program for both tests)."""
    data = {**small, "poison": np.zeros(N, np.float32)}
    data["poison"][list(poisoned)] = 1.0
    m = _model(activation="linear")
    loss = jax.tree_util.Partial(_poison_loss, landscape.make_loss_fn(m))
    kw = dict(
        loss=loss, optimizer="sgd", learning_rate=50.0, batch_size=B, seed=seed, progress=False
    )
    mon = D.training_monitor(every=2)
    with pytest.raises(landscape.TrainingDivergedError) as ei:
        landscape.train(m, data, num_steps=19, callbacks=[mon], **kw)
    return m, data, kw, mon, ei.value


def test_injected_nan_batch_caught_at_its_step_with_its_examples(small):
    """A loss that turns marked examples into NaN (the stored data are finite: train checks
    them) diverges at the first step whose batch holds one: reported as a NaN batch."""
    k = 5
    bad = sorted(_batches(0)[k - 1][[3, 11]].tolist())  # first seen in batch k (epoch 1)
    _m, _data, _kw, mon, err = _diverging(small, 0, bad)
    rep = err.report
    assert err.step == k and rep.step == k and rep is mon.report
    assert "batch held NaN at examples" in str(err)
    assert rep.stage == "input" and rep.kind == "NaN" and rep.layer is None
    assert sorted(rep.examples) == bad
    assert f"at examples [{bad[0]}, {bad[1]}]" in str(err)
    assert not rep.batch_clean and rep.batch_nan_examples.size == 0  # the stored batch is finite
    np.testing.assert_array_equal(np.sort(rep.batch_indices), np.sort(_batches(0)[k - 1]))
    assert list(mon.result().step) == [1, 3, 5]  # the record of step 5 is its NaN loss
    assert np.isnan(mon.result().loss[-1]) and np.isfinite(mon.result().loss[:-1]).all()
    assert mon.result().divergence["step"] == k


def test_raw_nan_batch_and_outliers_by_diagnose_step(small):
    m = _model()
    lf = landscape.make_loss_fn(m)
    ix = np.arange(40, 40 + B)
    batch = {k: v[ix].copy() for k, v in small.items()}
    batch["x"][[2, 9], 5] = np.nan
    batch["x"][4, 7] = np.inf
    batch["x"][6, 20] = 1e4  # far outside the pixel's spread in the data: |robust z| > 20
    rep = D.diagnose_step(lf, m.params, batch, data=small, indices=ix, step=7)
    assert rep.stage == "batch" and rep.where == "batch['x']"
    np.testing.assert_array_equal(rep.batch_nan_examples, [42, 49])
    np.testing.assert_array_equal(rep.batch_inf_examples, [44])
    np.testing.assert_array_equal(rep.batch_outlier_examples, [46])
    assert sorted(rep.examples) == [42, 44, 49]
    text = str(rep)
    assert text.startswith("step 7: batch held NaN at examples [42, 49] (field 'x')")
    assert "batch held Inf at examples [44]" in text and "outliers at examples [46]" in text
    # a clean batch of the same data: nothing to report
    clean = D.diagnose_step(
        lf, m.params, {k: v[ix] for k, v in small.items()}, data=small, indices=ix
    )
    assert clean.stage == "not reproduced" and clean.batch_clean


def test_gradient_and_update_stages_by_diagnose_step():
    batch = {"x": np.ones((4, 3), np.float32)}

    def masked(p, b):  # the jnp.where trap: a finite loss with a NaN gradient
        s = jnp.sum(b["x"] @ p["a"]["w"])
        return jnp.where(p["b"]["w"][0] > 0, jnp.log(p["b"]["w"][0]), 0.0) + s

    p = {"a": {"w": jnp.ones(3)}, "b": {"w": jnp.zeros(1)}}
    rep = D.diagnose_step(masked, p, batch)
    assert rep.stage == "gradient" and rep.leaf == "b/w" and rep.layer == "b"
    assert "jnp.where trap" in rep.note and rep.nonfinite["gradient"] == ("b/w",)

    def linear(p, b):  # gradient 10 per weight: a step of 1e38 overflows float32
        return 10.0 * jnp.sum(p["w"]) + 0.0 * jnp.sum(b["x"])

    rep = D.diagnose_step(linear, {"w": jnp.ones(3)}, batch, optimizer=optax.sgd(1e38))
    assert rep.stage == "update" and rep.leaf == "w" and rep.nonfinite["update"] == ("w",)
    assert "batch clean" in str(rep)


@pytest.fixture(scope="module")
def overflow(small):
    return _diverging(small, 1)


def test_overflow_caught_with_a_clean_batch_and_a_layer(overflow):
    _m, _data, _kw, mon, err = overflow
    rep = err.report
    assert rep is mon.report and rep.step == err.step == 11
    assert rep.batch_clean and "batch clean" in str(err)
    # the products overflow: the first non-finite value is the second layer's dot_general
    assert rep.stage == "forward" and rep.layer == "layers/1" and "dot_general" in rep.where
    assert "in layer layers/1: dot_general" in str(err)
    assert rep.nonfinite["forward"][0] == "layers/1" and not np.isfinite(rep.loss)
    # compatible with train's divergence contract
    assert len(err.result.history["batch_loss"]) == err.step - 1
    assert "non-finite loss, gradient or update at step 11" in str(err)
    assert set(err.report.to_dict()) >= {"step", "stage", "layer", "batch", "summary"}


def test_last_finite_params_equal_an_uninterrupted_run(overflow):
    m, data, kw, _mon, err = overflow
    k = err.step
    ref = landscape.train(m, data, num_steps=k - 1, **kw)  # the same program (blocks of 1)
    for a, b, c in zip(
        jax.tree.leaves(err.report.last_finite_params),
        jax.tree.leaves(err.last_finite_params),
        jax.tree.leaves(ref.params),
    ):
        assert np.isfinite(np.asarray(a)).all()
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
        np.testing.assert_array_equal(np.asarray(b), np.asarray(c))
    assert err.report.last_finite_step == k - 1


def test_one_compilation_per_run_round_trips_and_plot(small, sgd32, tmp_path):
    import sys

    import matplotlib

    matplotlib.use("Agg")
    import landscape.plot as lp

    mod = sys.modules["landscape.diagnostics._monitor"]
    before = mod._probe._cache_size()
    mon = D.training_monitor(every=1)
    landscape.train(_model(), sgd32[0], seed=4, callbacks=[mon], **SGD)  # same shapes
    assert mod._probe._cache_size() == before
    res = mon.result()
    assert list(res.step) == [1, 2, 3] and np.isfinite(res.grad_norm).all()
    assert res.divergence is None and mon.report is None
    assert not np.array_equal(res.grad_norm, sgd32[3].grad_norm)  # other batches
    landscape.train(
        _model(),
        sgd32[0],
        seed=4,
        callbacks=[mon],
        num_steps=2,
        **{k: v for k, v in SGD.items() if k != "num_steps"},
    )
    assert list(mon.result().step) == [1, 2]  # a new run, a new record
    res.save(tmp_path / "m.npz")
    back = D.MonitorResult.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(back.grad_norm, res.grad_norm)
    assert back.leaves == res.leaves and back.layers == res.layers
    axes = lp.plot_monitor(res)
    assert len(axes) == 2 and len(axes[0].lines) == 2
    assert axes[1].get_yscale() == "log"
    with pytest.raises(ValueError, match="unknown layers"):
        lp.plot_monitor(res, layers=["conv"])
    with pytest.raises(TypeError, match="must be a MonitorResult"):
        lp.plot_monitor(res.grad_norm)
    matplotlib.pyplot.close("all")


def test_report_round_trip_and_plot_marks_divergence(overflow, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import landscape.plot as lp

    _m, _data, _kw, mon, err = overflow
    err.report.save(tmp_path / "r.npz")
    back = D.DivergenceReport.load(tmp_path / "r.npz")
    assert back.summary() == err.report.summary()
    for a, b in zip(
        jax.tree.leaves(back.last_finite_params), jax.tree.leaves(err.report.last_finite_params)
    ):
        np.testing.assert_array_equal(a, b)
    ax = lp.plot_monitor(mon.result())[0]
    assert any(f"diverged at step {err.step}" in (ln.get_label() or "") for ln in ax.lines)
    lo, hi = ax.get_xlim()  # the line stands inside the axes, not on their edge
    assert lo < err.step < hi - 0.03 * (hi - lo)
    matplotlib.pyplot.close("all")


def test_bad_arguments(small):
    with pytest.raises(ValueError, match=r"training_monitor: every must be > 0; got 0"):
        D.training_monitor(every=0)
    with pytest.raises(ValueError, match="every must be > 0; got -3"):
        D.training_monitor(every=-3)
    with pytest.raises(TypeError, match="every must be an int"):
        D.training_monitor(every=2.5)
    with pytest.raises(TypeError, match="every"):
        D.training_monitor()  # every is required
    with pytest.raises(ValueError, match="z_threshold must be > 0"):
        D.training_monitor(every=1, z_threshold=0)
    with pytest.raises(ValueError, match="z_threshold must be finite"):
        D.training_monitor(every=1, z_threshold=float("nan"))
    with pytest.raises(TypeError, match="at_start must be True or False"):
        D.training_monitor(every=1, at_start="yes")
    with pytest.raises(TypeError, match="name must be a non-empty string"):
        D.training_monitor(every=1, name="")
    mon = D.training_monitor(every=1)
    with pytest.raises(TypeError, match="the monitor runs inside landscape.train"):
        mon.callback_fn(_bare_info())
    m = _model()
    lf = landscape.make_loss_fn(m)
    batch = {k: v[:B] for k, v in small.items()}
    with pytest.raises(ValueError, match="indices must be 16 integers"):
        D.diagnose_step(lf, m.params, batch, indices=np.arange(3))
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 128\)"):
        D.diagnose_step(lf, m.params, batch, data=small, indices=np.arange(200, 216))
    with pytest.raises(ValueError, match="opt_state was given without optimizer"):
        D.diagnose_step(lf, m.params, batch, opt_state=())
    with pytest.raises(TypeError, match="optimizer must be an optax.GradientTransformation"):
        D.diagnose_step(lf, m.params, batch, optimizer="sgd")
    with pytest.raises(ValueError, match="data must have the batch's fields"):
        D.diagnose_step(lf, m.params, batch, data={"x": small["x"]})
    with pytest.raises(ValueError, match="step must be > 0"):
        D.diagnose_step(lf, m.params, batch, step=0)
    with pytest.raises(TypeError, match="loss_fn"):
        D.diagnose_step("cross_entropy", m.params, batch)


def _bare_info():
    from landscape.train import TrainInfo

    return TrainInfo(0, {}, {}, (), None, None, {}, None, {})


def test_host_norms_recover_squares_flushed_to_zero():
    # a float32 leaf of 10 entries of 1e-18 and 100,000 of 1e-20: the device's sum of squares
    # keeps the first (1e-35) and flushes the rest (1e-40 each, 1e-35 together): half the sum
    # lost. The sum is below 1e6 n tiny, so the norm is measured again on the host, exactly
    from landscape.diagnostics import _monitor

    x = np.concatenate([np.full(10, 1e-18), np.full(100_000, 1e-20)]).astype(np.float32)
    want = np.linalg.norm(x.astype(np.float64))
    sq = _monitor._sumsq([jnp.asarray(x), jnp.ones(3, jnp.float32)])
    assert float(np.sqrt(sq[0])) < 0.8 * want  # what the device's sum says
    got = _monitor._norms(sq, [x, np.ones(3, np.float32)])
    np.testing.assert_allclose(got, [want, np.sqrt(3)], rtol=1e-6)
