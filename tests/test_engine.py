"""The exact batched engine: full-data means, gradients, many points, resumable chunks."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from jax.tree_util import Partial

import landscape
from landscape import engine
from landscape import tree as _tree
from tests._util import max_abs, max_abs_diff


def _setup64(n=None, hidden=(16,)):
    ds = landscape.load_data("digits", dtype=np.float64)
    model = landscape.make_model(
        "mlp",
        input_shape=(64,),
        num_outputs=10,
        hidden=hidden,
        activation="tanh",
        param_dtype=jnp.float64,
    )
    data = ds.train if n is None else {k: v[:n] for k, v in ds.train.items()}
    return model, landscape.make_loss_fn(model, weight_decay=1e-3), data


@pytest.mark.parametrize("n,batch_size", [(1437, 1437), (1437, 100), (1200, 100), (50, 64 - 14)])
def test_mean_is_exact_float64(n, batch_size):
    # The engine's scan + weighted remainder must reproduce the unbatched mean to rounding:
    # loss to 1e-12 relative, gradient max-abs difference <= 1e-12 x max |component| (issue 2).
    with jax.enable_x64(True):
        model, loss_fn, data = _setup64(n)
        data = jax.tree.map(jnp.asarray, data)
        direct_loss, direct_aux = loss_fn(model.params, data)
        direct_grad = jax.grad(lambda p: loss_fn(p, data)[0])(model.params)
        vals, grad = landscape.value_and_grad(loss_fn, model.params, data, batch_size=batch_size)
        assert vals["loss"].dtype == jnp.float64
        assert abs(float(vals["loss"]) - float(direct_loss)) <= 1e-12 * abs(float(direct_loss))
        assert abs(float(vals["accuracy"]) - float(direct_aux["accuracy"])) <= 1e-12
        assert max_abs_diff(grad, direct_grad) <= 1e-12 * max_abs(direct_grad)
        ev = landscape.evaluate(loss_fn, model.params, data, batch_size=batch_size)
        assert abs(float(ev["loss"]) - float(direct_loss)) <= 1e-12 * abs(float(direct_loss))


def test_mean_float32_close():
    # float32: summation order differs from the direct mean; 1e-5 relative is ample.
    ds = landscape.load_data("digits")
    model = landscape.make_model("mlp", input_shape=(64,), num_outputs=10, hidden=(16,))
    loss_fn = landscape.make_loss_fn(model)
    data = jax.tree.map(jnp.asarray, ds.train)
    direct = float(loss_fn(model.params, data)[0])
    ev = landscape.evaluate(loss_fn, model.params, ds.train, batch_size=100)
    assert ev["loss"].dtype == jnp.float32
    assert abs(float(ev["loss"]) - direct) <= 1e-5 * abs(direct)


def test_fixed_number_of_traces_whatever_the_data_size():
    # fn is traced a fixed number of times (shape probe + scan body + remainder), independent of
    # the number of batches, and a second call with the same shapes traces nothing.
    traces = []

    def loss_fn(params, batch):
        traces.append(batch["x"].shape)
        return jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2)

    params = {"w": jnp.ones((3,))}
    counts = []
    for n in (105, 1005):
        data = {"x": np.ones((n, 3), np.float32), "y": np.zeros((n,), np.float32)}
        before = len(traces)
        landscape.evaluate(loss_fn, params, data, batch_size=10)
        counts.append(len(traces) - before)
        before = len(traces)
        landscape.evaluate(loss_fn, params, data, batch_size=10)
        assert len(traces) == before, "second call with the same shapes must not retrace"
    assert max(counts) <= 4  # check + shape probe + scan body + remainder


def test_make_mean_fn_no_recompile_and_matches():
    with jax.enable_x64(True):
        model, loss_fn, data = _setup64(300)
        f = engine.make_mean_fn(Partial(engine._value_and_grad, loss_fn), data, batch_size=64)
        v1, g1 = f(model.params)
        size_before = engine._mean_jit._cache_size()
        p2 = _tree.scale(1.01, model.params)
        v2, g2 = f(p2)
        assert engine._mean_jit._cache_size() == size_before
        v2b, g2b = landscape.value_and_grad(loss_fn, p2, data, batch_size=64)
        assert float(v2["loss"]) == pytest.approx(float(v2b["loss"]), rel=1e-14)


def test_nonfinite_batches_are_named():
    params = {"w": jnp.ones((2,))}

    def loss_fn(p, b):
        return jnp.mean(jnp.log(b["x"] @ p["w"]))

    x = np.ones((25, 2), np.float32)
    x[13] = -5.0  # log of a negative number inside batch 1 (examples 10..19)
    with pytest.raises(FloatingPointError, match="batch 1 \\(examples 10..19\\)"):
        engine.mean(
            Partial(engine.loss_dict, loss_fn), params, {"x": x}, batch_size=10, check_finite=True
        )


def test_loss_state_is_an_argument_not_a_constant(trained_resnet):
    # A Loss with a different batch-norm state reuses the compiled program and changes the value.
    model = trained_resnet.model
    loss_fn = landscape.make_loss_fn(model)
    ds = landscape.load_data("digits", flat=False)
    a = landscape.evaluate(loss_fn, model.params, ds.test)
    n = engine._mean_jit._cache_size()
    shifted = jax.tree.map(lambda s: s * 1.5, model.state)
    b = landscape.evaluate(loss_fn.with_state(shifted), model.params, ds.test)
    assert engine._mean_jit._cache_size() == n
    assert float(a["loss"]) != float(b["loss"])


# ---------------------------------------------------------------------------------------------
def _plane_point(coord, center, d1, d2):
    return _tree.axpy(coord[1], d2, _tree.axpy(coord[0], d1, center))


@pytest.mark.parametrize("strategy", ["map", "vmap"])
def test_evaluate_points_equals_direct(strategy):
    with jax.enable_x64(True):
        model, loss_fn, data = _setup64(333)
        key = jax.random.key(1)
        k1, k2 = jax.random.split(key)
        d1 = _tree.normal_like(k1, model.params)
        d2 = _tree.normal_like(k2, model.params)
        coords = np.stack(
            np.meshgrid(np.linspace(-0.1, 0.1, 3), np.linspace(-0.2, 0.2, 4)), -1
        ).reshape(-1, 2)
        out = engine.loss_points(
            loss_fn,
            _plane_point,
            coords,
            data,
            point_args=(model.params, d1, d2),
            batch_size=100,
            chunk_size=5,
            strategy=strategy,
        )
        assert out["loss"].shape == (12,)
        for i in (0, 5, 11):
            p = _plane_point(coords[i], model.params, d1, d2)
            direct = float(loss_fn(p, jax.tree.map(jnp.asarray, data))[0])
            assert abs(out["loss"][i] - direct) <= 1e-10 * abs(direct)


def test_chunk_store_resumes(tmp_path):
    calls = []

    def fn(point, batch):
        return {"v": jnp.mean(batch["x"]) * point}

    def point_fn(c):
        calls.append(1)  # traced once per compilation
        return c[0]

    data = {"x": np.arange(10, dtype=np.float32)}
    coords = np.arange(7, dtype=np.float32)[:, None]
    store = engine.ChunkStore(tmp_path / "job", {"what": "test", "n": 7})
    full = engine.evaluate_points(fn, point_fn, coords, data, chunk_size=2, store=store)
    np.testing.assert_allclose(full["v"], 4.5 * np.arange(7))
    assert store.done() == [0, 1, 2, 3]
    # remove one chunk: only it is recomputed, the rest are loaded
    (tmp_path / "job" / "chunk-000002.npz").unlink()
    store2 = engine.ChunkStore(tmp_path / "job", {"what": "test", "n": 7})
    again = engine.evaluate_points(fn, point_fn, coords, data, chunk_size=2, store=store2)
    np.testing.assert_array_equal(again["v"], full["v"])
    with pytest.raises(ValueError, match="different settings"):
        engine.ChunkStore(tmp_path / "job", {"what": "test", "n": 8})
    # same settings, another chunking of the points: refused instead of mixing chunks
    store3 = engine.ChunkStore(tmp_path / "job", {"what": "test", "n": 7})
    with pytest.raises(ValueError, match="another layout.*chunk_size"):
        engine.evaluate_points(fn, point_fn, coords, data, chunk_size=3, store=store3)


def test_evaluate_points_records_nonfinite():
    def fn(point, batch):
        return {"v": jnp.log(point) + 0 * jnp.mean(batch["x"])}

    out = engine.evaluate_points(
        fn,
        lambda c: c[0],
        np.array([[1.0], [-1.0], [2.0]], np.float32),
        {"x": np.ones((4,), np.float32)},
    )
    assert np.isnan(out["v"][1]) and np.isfinite(out["v"][[0, 2]]).all()


def test_ravel_reference_matches_pytree_inner_products():
    # _tree algebra equals the flat reference
    k1, k2 = jax.random.split(jax.random.key(3))
    a = {"a": jax.random.normal(k1, (3, 4)), "b": [jax.random.normal(k2, (5,))]}
    b = _tree.scale(2.0, a)
    fa, _ = ravel_pytree(a)
    fb, _ = ravel_pytree(b)
    assert float(_tree.vdot(a, b)) == pytest.approx(float(fa @ fb), rel=1e-6)
    assert float(_tree.norm(a)) == pytest.approx(float(jnp.linalg.norm(fa)), rel=1e-6)
    assert _tree.size(a) == fa.size


def _store_f(p, b):
    return {"m": jnp.mean(b["x"] @ p)}


def _store_pf(c, base):
    return base * c[0]


def test_chunk_store_never_reuses_chunks_of_another_job(tmp_path):
    """Chunks are bound to what was evaluated (function, point arguments, data), not only to the
    caller's meta; overwrite=True really starts over; meta holding a function repr (with a memory
    address that differs per process) still resumes."""
    x = np.random.default_rng(0).standard_normal((20, 3)).astype(np.float32)
    coords = np.linspace(0, 1, 10)[:, None]
    base = jnp.ones(3)
    d = tmp_path / "cs"

    def run(store, data=x, arg=base, chunk=4):
        return engine.evaluate_points(_store_f, _store_pf, coords, {"x": data}, point_args=(arg,),
                                      chunk_size=chunk, store=store)

    a = run(engine.ChunkStore(d, {"job": 1}))
    again = run(engine.ChunkStore(d, {"job": 1}))  # resumes: same job
    np.testing.assert_array_equal(a["m"], again["m"])
    with pytest.raises(ValueError, match="point_arrays"):
        run(engine.ChunkStore(d, {"job": 1}), arg=base * 2)
    with pytest.raises(ValueError, match="data"):
        run(engine.ChunkStore(d, {"job": 1}), data=x * 0)
    fresh = run(engine.ChunkStore(d, {"job": 1}, overwrite=True), arg=base * 2, chunk=5)
    np.testing.assert_allclose(fresh["m"], 2 * a["m"], rtol=1e-6)
    meta = {"loss": repr(_store_f)}
    assert " at 0x" in meta["loss"]
    s1 = engine.ChunkStore(tmp_path / "m", meta)
    other_process = {"loss": re.sub(r"0x[0-9a-fA-F]+", "0x1234abcd", meta["loss"])}
    assert other_process != meta
    s2 = engine.ChunkStore(tmp_path / "m", other_process)
    assert s1.digest == s2.digest


def test_low_precision_means_accumulate_in_float32():
    """bf16/float16 batch means are summed in float32: a bf16 running sum saturates."""
    data = {"x": np.ones((4096, 1), np.float32)}

    def f(p, b):
        return {"m": jnp.mean(b["x"].astype(jnp.bfloat16)) * p}

    for bs in (1, 8):  # 4096 and 512 batches: a bf16 sum stops growing at 256 (8-bit mantissa)
        out = engine.mean(f, jnp.asarray(1.0, jnp.bfloat16), data, batch_size=bs)
        assert float(out["m"]) == 1.0
