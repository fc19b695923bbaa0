"""The grid evaluator (landscape.grid): exact values at the points of a family, chunking and
strategies, the one batch-norm vocabulary, plans reused across evaluations, resumable stores."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

import landscape
from landscape import engine, grid, paths
from landscape import tree as _tree


def _setup64(n=333, dtype=jnp.float64):
    ds = landscape.load_data("digits", dtype=np.dtype(dtype))
    model = landscape.make_model("mlp", input_shape=(64,), num_outputs=10, hidden=(16,),
                                 activation="tanh", param_dtype=dtype)
    data = {k: v[:n] for k, v in ds.train.items()}
    return model, landscape.make_loss_fn(model, weight_decay=1e-3), data


def _plane_point(coord, center, d1, d2):
    return _tree.axpy(coord[1], d2, _tree.axpy(coord[0], d1, center))


@pytest.mark.parametrize("strategy", ["map", "vmap"])
def test_evaluate_points_equals_direct(strategy):
    with jax.enable_x64(True):
        model, loss_fn, data = _setup64()
        k1, k2 = jax.random.split(jax.random.key(1))
        d1 = _tree.normal_like(k1, model.params)
        d2 = _tree.normal_like(k2, model.params)
        coords = np.stack(
            np.meshgrid(np.linspace(-0.1, 0.1, 3), np.linspace(-0.2, 0.2, 4)), -1
        ).reshape(-1, 2)
        out = grid.loss_points(loss_fn, _plane_point, coords, data,
                               point_args=(model.params, d1, d2), batch_size=100, chunk_size=5,
                               strategy=strategy)
        assert out["loss"].shape == (12,)
        for i in (0, 5, 11):
            p = _plane_point(coords[i], model.params, d1, d2)
            direct = float(loss_fn(p, jax.tree.map(jnp.asarray, data))[0])
            # float64, batched sums in another order: 1e-10 relative
            assert abs(out["loss"][i] - direct) <= 1e-10 * abs(direct)


def test_families_evaluate_their_points_float64():
    """grid.evaluate at an affine family and at a path equals direct evaluation (1e-12: the
    same formula, only the batch sums reassociated)."""
    with jax.enable_x64(True):
        model, loss_fn, data = _setup64()
        other = landscape.make_model("mlp", input_shape=(64,), num_outputs=10, hidden=(16,),
                                     activation="tanh", param_dtype=jnp.float64, seed=1)
        d1 = _tree.normal_like(jax.random.key(2), model.params)
        fam = grid.Affine(model.params, (d1,))
        vals = grid.evaluate(loss_fn, fam, np.array([[-0.5], [0.0], [0.25]]), data,
                             settings=landscape.GridSettings(batch_size=100))
        for i, c in enumerate((-0.5, 0.0, 0.25)):
            want = landscape.evaluate(loss_fn, _tree.axpy(c, d1, model.params), data)
            for k in ("loss", "accuracy"):
                assert vals.train[k][i] == pytest.approx(float(want[k]), abs=1e-12)
        assert vals.finite.all() and vals.test is None
        path = paths.bezier(model.params, jax.tree.map(lambda x: 0.5 * x, other.params), other.params)
        ts = np.array([0.0, 0.3, 1.0])
        pv = grid.evaluate(loss_fn, path, ts, data, test_data=data)
        for i, t in enumerate(ts):
            want = landscape.evaluate(loss_fn, path(t), data)["loss"]
            assert pv.train["loss"][i] == pytest.approx(float(want), abs=1e-12)
        np.testing.assert_array_equal(pv.test["loss"], pv.train["loss"])


def test_plan_is_reused_without_recompiling():
    model, loss_fn, data = _setup64(dtype=jnp.float32)
    path = paths.linear_path(model.params, jax.tree.map(lambda x: -x, model.params))
    plan = grid.prepare(loss_fn, path, data, default_chunk=4, fit_chunk=False)
    a = plan.evaluate(np.linspace(0, 1, 7))
    n = grid._points_jit._cache_size()
    b = plan.evaluate(np.array([0.05, 0.5]))  # another number of points, the same chunk shape
    assert grid._points_jit._cache_size() == n
    assert plan.chunk_for(2) == plan.chunk_for(7) == 4
    assert b.train["loss"][1] == pytest.approx(float(a.train["loss"][3]), rel=1e-6)


def test_evaluate_points_records_nonfinite():
    def fn(point, batch):
        return {"v": jnp.log(point) + 0 * jnp.mean(batch["x"])}

    out = grid.evaluate_points(fn, lambda c: c[0], np.array([[1.0], [-1.0], [2.0]], np.float32),
                               {"x": np.ones((4,), np.float32)})
    assert np.isnan(out["v"][1]) and np.isfinite(out["v"][[0, 2]]).all()


def test_batch_norm_vocabulary_is_one_for_every_family():
    plain = landscape.make_loss_fn(landscape.make_model("mlp", input_shape=(4,), num_outputs=2,
                                                        hidden=(3,)))
    assert grid.resolve_bn("auto", plain) == "fixed"
    assert grid.resolve_bn("fixed", plain) == "fixed"
    for bad in ("none", "centre", "running"):
        with pytest.raises(ValueError, match="bn must be one of"):
            grid.resolve_bn(bad, plain)
    with pytest.raises(ValueError, match="has no state"):
        grid.resolve_bn("reestimate", plain)
    with pytest.raises(TypeError, match="needs a landscape.Loss"):
        grid.resolve_bn("reestimate", lambda p, b: 0.0)
    bn = landscape.make_loss_fn(landscape.make_model("resnet", input_shape=(8, 8, 1),
                                                     num_outputs=2, widths=(2,)))
    assert grid.resolve_bn("auto", bn) == "reestimate"
    with pytest.raises(ValueError, match="needs two end points"):
        grid.resolve_bn("interpolate", bn, bn_states=(bn.state, bn.state), interpolates=False)
    with pytest.raises(ValueError, match=r"needs bn_states=\(state_a, state_b\)"):
        grid.resolve_bn("interpolate", bn)
    assert grid.resolve_bn("interpolate", bn, bn_states=(bn.state, bn.state)) == "interpolate"


def test_grid_settings_are_validated():
    model, loss_fn, data = _setup64(50, dtype=jnp.float32)
    fam = grid.Affine(model.params, (model.params,))
    for settings, err, match in [
        (landscape.GridSettings(strategy="pmap"), ValueError, "settings.strategy must be one of"),
        (landscape.GridSettings(chunk_size=0), ValueError, "settings.chunk_size must be > 0"),
        (landscape.GridSettings(progress="yes"), TypeError, "settings.progress must be a bool"),
        (landscape.GridSettings(strategy="vmap", map_batch=2), ValueError, "map_batch applies"),
        ({"batch_size": 10}, TypeError, "settings must be a landscape.GridSettings"),
    ]:
        with pytest.raises(err, match=match):
            grid.evaluate(loss_fn, fam, np.zeros((2, 1)), data, settings=settings)
    with pytest.raises(ValueError, match=r"coords must have shape \(n, 1\)"):
        grid.evaluate(loss_fn, fam, np.zeros((2, 3)), data)
    with pytest.raises(TypeError, match="family must be a landscape.grid.Affine"):
        grid.evaluate(loss_fn, model.params, np.zeros((2, 1)), data)


def _store_f(p, b):
    return {"m": jnp.mean(b["x"] @ p)}


def _store_pf(c, base):
    return base * c[0]


def test_grid_store_never_reuses_chunks_of_another_job(tmp_path):
    """Chunks are bound to what was evaluated (function, point arguments, data, chunking), not
    only to the caller's description; overwrite=True really starts over."""
    x = np.random.default_rng(0).standard_normal((20, 3)).astype(np.float32)
    coords = np.linspace(0, 1, 10)[:, None]
    base = jnp.ones(3)
    d = tmp_path / "cs"
    calls = []

    def run(store, data=x, arg=base, chunk=4):
        calls.append(1)
        return grid.evaluate_points(_store_f, _store_pf, coords, {"x": data}, point_args=(arg,),
                                    chunk_size=chunk, store=store, job={"job": "test"})

    a = run(d)
    assert sorted(landscape.Store(d).entries()) == ["chunk-000000", "chunk-000001", "chunk-000002"]
    (d / "chunk-000001.npz").unlink()  # one chunk lost: only it is recomputed
    again = run(d)
    np.testing.assert_array_equal(a["m"], again["m"])
    with pytest.raises(ValueError, match="point_arrays"):
        run(d, arg=base * 2)
    with pytest.raises(ValueError, match="data"):
        run(d, data=x * 0)
    with pytest.raises(ValueError, match="chunk_size: 4 -> 3"):
        run(d, chunk=3)
    fresh = run(landscape.Store(d, overwrite=True), arg=base * 2, chunk=5)
    np.testing.assert_allclose(fresh["m"], 2 * a["m"], rtol=1e-6)
    assert sorted(landscape.Store(d).entries()) == ["chunk-000000", "chunk-000001"]


def test_engine_is_reductions_and_placement_only():
    """The grid and the store are foundation modules of their own; the engine keeps reductions
    and placement (a maintainer finds each concern in one place)."""
    for name in ("ChunkStore", "evaluate_points", "loss_points"):
        assert not hasattr(engine, name)
    for name in ("all_finite", "loss_dict", "place", "raise_nonfinite"):
        assert name in engine.__all__
    f = Partial(engine.loss_dict, lambda p, b: (jnp.sum(p), {"a": jnp.ones(())}))
    assert set(f(jnp.ones(2), {})) == {"loss", "a"}


def test_store_binds_the_family_structure_and_plans_take_paths(tmp_path):
    """A Bezier curve and a polygonal chain through the same points are different families:
    their values are never mixed in one store (the path's kind is static, not an array)."""
    model, loss_fn, data = _setup64(50, dtype=jnp.float32)
    a = model.params
    m = jax.tree.map(lambda x: 0.5 * x, a)
    b = jax.tree.map(lambda x: -x, a)
    ts = np.linspace(0, 1, 5)
    grid.evaluate(loss_fn, paths.bezier(a, m, b), ts, data, store=tmp_path / "g")
    with pytest.raises(ValueError, match="point_structure"):
        grid.evaluate(loss_fn, paths.polychain(a, m, b), ts, data, store=tmp_path / "g")
    plan = grid.prepare(loss_fn, paths.linear_path(a, b), data)
    v1 = plan.evaluate(ts, store=tmp_path / "p")  # a path, bound on the fly
    v2 = plan.evaluate(ts, store=tmp_path / "p")
    np.testing.assert_array_equal(v1.train["loss"], v2.train["loss"])


def test_linear_paths_are_exact_elementwise_interpolation():
    a = {"w": jnp.asarray([0.1, 3.0, -2.5], jnp.float32)}
    b = {"w": jnp.asarray([7.0, -1.0, 0.3], jnp.float32)}
    path = paths.linear_path(a, b)
    for t in (0.0, 0.37, 1.0, 1.5):
        want = (1 - np.float32(t)) * a["w"] + np.float32(t) * b["w"]
        np.testing.assert_array_equal(np.asarray(path(t)["w"]), np.asarray(want))
