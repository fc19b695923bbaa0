"""The exact batched engine: full-data means and gradients (grids: tests/test_grid.py; stores:
tests/test_store.py)."""

from __future__ import annotations

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


def test_low_precision_means_accumulate_in_float32():
    """bf16/float16 batch means are summed in float32: a bf16 running sum saturates."""
    data = {"x": np.ones((4096, 1), np.float32)}

    def f(p, b):
        return {"m": jnp.mean(b["x"].astype(jnp.bfloat16)) * p}

    for bs in (1, 8):  # 4096 and 512 batches: a bf16 sum stops growing at 256 (8-bit mantissa)
        out = engine.mean(f, jnp.asarray(1.0, jnp.bfloat16), data, batch_size=bs)
        assert float(out["m"]) == 1.0
