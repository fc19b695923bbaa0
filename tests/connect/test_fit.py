"""fit_curve: the trained Bezier curve's barrier against the linear one, the objective (several
t per batch, weight decay at the curve point) against a direct computation, fixed endpoints,
initialisation on the segment, resumable checkpoints, non-finite losses, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import landscape
import landscape.connect as lc
from landscape.connect._fit import _controls, _curve_block, initial_bends, sample_ts
from tests._util import assert_trees_close

# one optimizer object: optax transformations are static arguments of the compiled step (a new
# object compiles again)
ADAM = optax.adam(1e-3)


def test_bezier_curve_barrier_is_close_to_endpoints(bezier_curve, pair_loss, pair_params,
                                                     digits_data, linear_profile):
    pr = lc.profile(pair_loss, bezier_curve.path, digits_data.train, test_data=digits_data.test)
    b = lc.barrier(pr)
    lin = lc.barrier(linear_profile)
    print("\nBezier:\n" + b.table())
    # measured: max train loss on the curve 0.0143 against endpoints 0.0131 / 0.0114 (barrier
    # 0.002 nats), against 0.82 on the straight line
    assert b.get("loss", "train") < 0.02
    assert b.get("loss", "train") < 0.05 * lin.get("loss", "train")
    assert b.get("error", "train") < 0.01
    # the endpoints are fixed, bit for bit
    for got, want in ((bezier_curve.path.start, pair_params[0]), (bezier_curve.path.end, pair_params[1])):
        for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert bezier_curve.num_steps == 300 and bezier_curve.history["batch_loss"].shape == (300,)


@pytest.mark.parametrize("kind", ["bezier", "polychain"])
@pytest.mark.parametrize("num_bends", [1, 3])
def test_init_on_segment(kind, num_bends, pair_params):
    a, b = pair_params
    # bends at t = k / (num_bends + 1) of the segment: both kinds are the straight line
    path = lc.Path(_controls((a, b), initial_bends(a, b, num_bends)), kind)
    lin = lc.linear_path(a, b)
    for t in (0.1, 0.5, 0.9):
        assert_trees_close(path(t), lin(t), rtol=1e-5, atol=1e-6)


def test_objective_is_mean_over_t_with_weight_decay_at_curve_point(pair_loss, pair_params, small_train):
    a, b = pair_params
    wd, seed, bs, num_ts = 1e-3, 3, 32, 5
    res = lc.fit_curve(pair_loss, a, b, small_train, num_steps=1, optimizer=optax.sgd(0.0),
                       batch_size=bs, num_ts=num_ts, weight_decay=wd, key=jax.random.key(seed),
                       progress=False)
    assert res.num_steps == 1 and len(res.history["batch_loss"]) == 1
    # the first step's batch and values of t, rebuilt from the documented seeding (for
    # key(s): default_rng([s, epoch]) and fold_in(key, step))
    idx = np.random.default_rng([seed, 0]).permutation(256)[:bs]
    batch = {k: jnp.asarray(v[idx]) for k, v in small_train.items()}
    ts = sample_ts(jax.random.fold_in(jax.random.key(seed), 0), num_ts, "stratified", jnp.float32)
    assert np.all((np.asarray(ts) >= np.arange(num_ts) / num_ts) & (np.asarray(ts) < np.arange(1, num_ts + 1) / num_ts))
    vals = []
    for t in np.asarray(ts):
        p = res.path(t)
        loss, _ = pair_loss(p, batch)
        vals.append(float(loss) + 0.5 * wd * float(landscape.tree.vdot(p, p)))
    # float32: vmapped against one-by-one evaluation (1e-5 relative)
    np.testing.assert_allclose(res.history["batch_loss"][0], np.mean(vals), rtol=1e-5)
    # the bend starts at the segment's midpoint: the quadratic curve is the straight line
    lin = lc.linear_path(a, b)
    for t in (0.2, 0.7):
        assert_trees_close(res.path(t), lin(t), rtol=1e-5, atol=1e-6)


def test_checkpoint_resume_equals_uninterrupted(pair_loss, pair_params, small_train, tmp_path):
    a, b = pair_params
    kw = dict(num_ts=2, batch_size=32, optimizer=ADAM, key=jax.random.key(1), progress=False)
    full = lc.fit_curve(pair_loss, a, b, small_train, num_steps=12, checkpoint_every=6, **kw)
    n_programs = _curve_block._cache_size()
    lc.fit_curve(pair_loss, a, b, small_train, num_steps=6, store=tmp_path,
                 checkpoint_every=6, **kw)
    assert (tmp_path / "curve.npz").exists()
    resumed = lc.fit_curve(pair_loss, a, b, small_train, num_steps=12, store=tmp_path,
                           checkpoint_every=6, **kw)
    # same shapes, same optimizer object: the compiled block is reused
    assert _curve_block._cache_size() == n_programs
    assert resumed.num_steps == 12
    # the same steps, batches and values of t: equal up to float32 rounding of the compiled
    # blocks (1e-6)
    assert_trees_close(resumed.controls, full.controls, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(resumed.history["batch_loss"], full.history["batch_loss"], rtol=1e-6)
    np.testing.assert_array_equal(resumed.history["step"], np.arange(1, 13))
    with pytest.raises(ValueError, match=r"holds results of another job \(differences: key"):
        lc.fit_curve(pair_loss, a, b, small_train, num_steps=12, store=tmp_path,
                     checkpoint_every=6, **{**kw, "key": jax.random.key(2)})
    res = lc.fit_curve(pair_loss, a, b, small_train, num_steps=6,
                       store=landscape.Store(tmp_path, overwrite=True),
                       checkpoint_every=6, **{**kw, "key": jax.random.key(2)})
    assert res.num_steps == 6
    res.save(tmp_path / "curve_result.npz")
    back = lc.CurveResult.load(tmp_path / "curve_result.npz")
    assert_trees_close(back.controls, res.controls, rtol=0, atol=0)
    assert back.kind == "bezier" and back.num_steps == 6


def _fragile_loss(params, batch):
    # finite while the bend stays small; infinite once |w| exceeds 3
    w = params["w"]
    loss = jnp.mean((batch["x"] @ w - batch["y"]) ** 2)
    return jnp.where(jnp.max(jnp.abs(w)) > 3.0, jnp.inf, loss)


def test_nonfinite_loss_stops_with_step_and_last_finite_curve(tmp_path):
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(64, 3)).astype(np.float32), "y": rng.normal(size=(64,)).astype(np.float32)}
    a, b = {"w": jnp.zeros(3)}, {"w": jnp.ones(3) * 0.1}
    # gradient ascent (negative learning rate) drives the bend outwards until the loss is inf
    with pytest.raises(lc.CurveTrainingError, match="non-finite loss or gradient at step") as err:
        lc.fit_curve(_fragile_loss, a, b, data, num_steps=200, optimizer=optax.sgd(-0.5),
                     batch_size=16, store=tmp_path, checkpoint_every=10, progress=False,
                     key=jax.random.key(0))
    e = err.value
    assert e.step > 1
    res = e.result
    assert res.num_steps == e.step - 1 and res.history["batch_loss"].shape == (e.step - 1,)
    assert np.all(np.isfinite(res.history["batch_loss"]))
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(res.controls))
    saved = landscape.Store(tmp_path).load("curve")
    assert int(saved["step"]) == e.step - 1
    np.testing.assert_array_equal(saved["bends"]["w"], np.asarray(res.bends["w"]))


def test_fit_curve_bad_input(pair_loss, pair_params, small_train):
    a, b = pair_params
    key = jax.random.key(0)
    with pytest.raises(TypeError, match="fit_curve: key is required"):
        lc.fit_curve(pair_loss, a, b, small_train)
    with pytest.raises(ValueError, match="kind must be one of"):
        lc.fit_curve(pair_loss, a, b, small_train, key=key, kind="spline")
    with pytest.raises(ValueError, match="params_b must have the same tree structure"):
        lc.fit_curve(pair_loss, a, {"x": 1.0}, small_train, key=key)
    with pytest.raises(ValueError, match="num_steps must be > 0"):
        lc.fit_curve(pair_loss, a, b, small_train, key=key, num_steps=0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'steps'"):  # no alias
        lc.fit_curve(pair_loss, a, b, small_train, key=key, steps=5)
    with pytest.raises(ValueError, match="batch_size=1000 is larger than the data set"):
        lc.fit_curve(pair_loss, a, b, small_train, key=key, batch_size=1000)
    with pytest.raises(ValueError, match="init holds 1 bends but num_bends=2"):
        lc.fit_curve(pair_loss, a, b, small_train, key=key, num_bends=2, init=a)
    with pytest.raises(TypeError, match="optimizer must be an optax.GradientTransformation"):
        lc.fit_curve(pair_loss, a, b, small_train, key=key, optimizer="adam")
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        lc.fit_curve(pair_loss, a, b, small_train, key=key, weight_decay=-1.0)
