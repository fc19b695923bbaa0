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


# --------------------------------------------------------------------------------------------
# Convolutions in XLA:CPU's fast form (engine.canonical_convs)
#
# Tolerances: the rewrite runs the same products as the convolution it replaces, on transposed
# operands (transposes are exact); only the order of each output's sum may differ between XLA's
# kernels. An output sums at most K = 150 products here, so the difference is bounded by
# K eps max|value|: float32 2e-5, float64 4e-14 of the largest entry (observed: bit-identical).
# --------------------------------------------------------------------------------------------
_CONV_CASES = [  # (lhs shape, rhs shape, dimension numbers, keyword arguments)
    ((3, 5, 5, 4), (3, 3, 4, 6), ("NHWC", "HWIO", "NHWC"), {}),  # canonical: left as is
    ((3, 4, 5, 5), (6, 4, 3, 3), ("NCHW", "OIHW", "NCHW"), {"window_strides": (2, 1)}),
    ((5, 3, 5, 4), (4, 6, 3, 2), ("HNWC", "IOHW", "CHWN"), {"rhs_dilation": (1, 2)}),
    ((3, 5, 5, 4), (3, 3, 2, 6), ("NHWC", "HWIO", "NHWC"), {"feature_group_count": 2}),
    ((3, 5, 5, 4), (3, 3, 3, 6), ("CHWN", "HWIO", "NHWC"), {"batch_group_count": 2}),
    ((3, 4, 7), (6, 4, 3), ("NCW", "OIW", "NWC"), {"lhs_dilation": (2,), "padding": ((1, 2),)}),
]
_TOL = {np.float32: 2e-5, np.float64: 4e-14}


def _assert_close(got, want, dtype):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert a.dtype == b.dtype == dtype
        scale = float(np.max(np.abs(b)))
        np.testing.assert_allclose(a, b, rtol=0, atol=_TOL[dtype] * scale)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", range(len(_CONV_CASES)))
def test_canonical_convs_equal_the_convolutions_they_replace(case, dtype, monkeypatch):
    from landscape import _convs

    monkeypatch.setattr(engine, "CANONICAL_CONVS", "always")
    ls, rs, dn, kw = _CONV_CASES[case]
    kw = {"window_strides": (1,) * (len(ls) - 2), "padding": "VALID", **kw}
    rng = np.random.default_rng(case)
    lhs, rhs = (rng.normal(size=s).astype(dtype) for s in (ls, rs))

    def f(lhs, rhs):  # the convolution and both its gradients: what a backward pass runs
        def loss(a, b):
            return jnp.sum(
                jnp.tanh(jax.lax.conv_general_dilated(a, b, dimension_numbers=dn, **kw))
            )

        return jax.lax.conv_general_dilated(lhs, rhs, dimension_numbers=dn, **kw), jax.grad(
            loss, (0, 1)
        )(lhs, rhs)

    def looped(lhs, rhs):
        return jax.lax.fori_loop(0, 1, lambda i, c: f(lhs, rhs), f(lhs, rhs))

    with jax.enable_x64(dtype == np.float64):
        wrapped = engine.canonical_convs(looped)
        assert _convs.noncanonical_convs(jax.make_jaxpr(looped)(lhs, rhs)) > 0  # the gradients'
        assert _convs.noncanonical_convs(jax.make_jaxpr(wrapped)(lhs, rhs)) == 0
        # against the standalone program, whose convolutions XLA canonicalises itself
        _assert_close(jax.jit(wrapped)(lhs, rhs), jax.jit(f)(lhs, rhs), dtype)


def _conv(x, w):  # NCHW/OIHW: every convolution of it and of its derivatives is non-canonical
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW")
    )


def _conv_loss(x, w):
    return jnp.sum(jnp.tanh(_conv(x, w)) ** 2)


_grad = jax.grad(_conv_loss, (0, 1))


@jax.custom_jvp
def _conv_cjvp(x, w):
    return _conv(x, w)


@_conv_cjvp.defjvp
def _conv_cjvp_rule(primals, tangents):
    (x, w), (dx, dw) = primals, tangents
    return _conv(x, w), _conv(dx, w) + _conv(x, dw)


@jax.custom_vjp
def _conv_cvjp(x, w):
    return _conv(x, w)


_conv_cvjp.defvjp(lambda x, w: (_conv(x, w), (x, w)), lambda r, c: jax.vjp(_conv, *r)[1](c))

# every kind of sub-jaxpr the rewrite visits, each holding convolutions (name -> (x, w) -> out)
_KINDS = {
    "fori_loop": lambda x, w: jax.lax.fori_loop(
        0, 2, lambda i, c: _grad(x + 0 * c[0], w), _grad(x, w)
    ),
    "while_loop": lambda x, w: jax.lax.while_loop(
        lambda c: c[0] < 2, lambda c: (c[0] + 1, _grad(x, w + 0 * c[1][1])), (0, _grad(x, w))
    )[1],
    "scan": lambda x, w: jax.lax.scan(lambda c, xi: (c, _grad(xi[None], w)[1]), 0.0, x)[1],
    "cond": lambda x, w: jax.lax.cond(jnp.sum(x) > 0, lambda: _grad(x, w), lambda: _grad(-x, w)),
    "nested jit": lambda x, w: jax.jit(_grad)(x, w),
    "remat": lambda x, w: jax.grad(jax.checkpoint(_conv_loss), (0, 1))(x, w),
    "custom_jvp": lambda x, w: (_conv_cjvp(x, w), jax.jvp(_conv_cjvp, (x, w), (x, w))[1]),
    "custom_vjp": lambda x, w: (
        _conv_cvjp(x, w),
        jax.grad(lambda a: jnp.sum(_conv_cvjp(a, w) ** 2))(x),
    ),
    "hvp in a loop": lambda x, w: jax.lax.fori_loop(
        0, 2, lambda i, v: jax.jvp(lambda b: _grad(x, b)[1], (w,), (v,))[1], w
    ),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_canonical_convs_in_every_kind_of_sub_jaxpr(dtype, monkeypatch):
    from landscape import _convs

    monkeypatch.setattr(engine, "CANONICAL_CONVS", "always")
    rng = np.random.default_rng(0)
    x, w = (
        rng.normal(size=(4, 3, 6, 6)).astype(dtype),
        0.3 * rng.normal(size=(5, 3, 3, 3)).astype(dtype),
    )

    def every(x, w):
        return {name: f(x, w) for name, f in _KINDS.items()}

    with jax.enable_x64(dtype == np.float64):
        for name, f in _KINDS.items():
            assert _convs.noncanonical_convs(jax.make_jaxpr(f)(x, w)) > 0, name
            assert (
                _convs.noncanonical_convs(jax.make_jaxpr(engine.canonical_convs(f))(x, w)) == 0
            ), name
        want = jax.jit(every)(x, w)
        _assert_close(jax.jit(engine.canonical_convs(every))(x, w), want, dtype)
        # inside an enclosing trace, closing over its tracers (as train's step and the curvature
        # products use it), and differentiated from outside
        closed = jax.jit(lambda x, w: engine.canonical_convs(lambda: every(x, w))())
        _assert_close(closed(x, w), want, dtype)
        outer = jax.jit(jax.grad(lambda w: _conv_loss(x, w)))(w)
        _assert_close(
            jax.jit(jax.grad(engine.canonical_convs(lambda w: _conv_loss(x, w))))(w), outer, dtype
        )


def test_canonical_convs_under_shard_map_and_explicit_sharding(four_devices):
    # shard_map bodies (per-shard types that vary over the mesh axis) and explicit sharding,
    # where JAX's derivative rules give a convolution an out_sharding in its own axis order
    # (permuted to the canonical output's): equal values and shardings, no non-canonical left
    out = four_devices.run("""
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import NamedSharding, PartitionSpec as P
        from landscape import _convs, engine
        from tests.test_engine import _conv, _grad
        engine.CANONICAL_CONVS = "always"
        rng = np.random.default_rng(0)
        x, w = rng.normal(size=(4, 4, 8, 8)).astype(np.float32), rng.normal(size=(6, 4, 3, 3)).astype(np.float32)
        mesh = jax.sharding.Mesh(np.array(jax.devices()), ("d",))
        def per_shard(a, b):
            return jax.lax.psum(_grad(a, b)[1], "d")
        def sm(x, w):
            body = jax.shard_map(per_shard, mesh=mesh, in_specs=(P("d"), P()), out_specs=P())
            return jax.lax.fori_loop(0, 2, lambda i, c: c + body(x, w), _grad(x[:1], w)[1])
        def explicit(x, w):  # the input gradient, and an out_sharding on the axis H of NCHW
            dx = jax.grad(lambda a: jnp.sum(jnp.tanh(_conv(a, w)) ** 2))(x)
            return dx, jax.lax.conv_general_dilated(
                x, w, (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW"),
                out_sharding=P(None, None, "d"))
        emesh = jax.make_mesh((4,), ("d",), axis_types=(jax.sharding.AxisType.Explicit,))
        cases = [(sm, x, w, None)]
        with jax.set_mesh(emesh):
            xs = jax.device_put(x, NamedSharding(emesh, P("d")))
            cases.append((explicit, xs, w, emesh))
        for f, a, b, m in cases:
            with jax.set_mesh(m) if m is not None else open("/dev/null"):
                g = engine.canonical_convs(f)
                n0 = _convs.noncanonical_convs(jax.make_jaxpr(f)(a, b))
                n1 = _convs.noncanonical_convs(jax.make_jaxpr(g)(a, b))
                want, got = jax.jit(f)(a, b), jax.jit(g)(a, b)
                err = max(float(np.max(np.abs(np.asarray(p) - np.asarray(q))) / np.max(np.abs(np.asarray(q))))
                          for p, q in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
                same = all(p.sharding.is_equivalent_to(q.sharding, p.ndim)
                           for p, q in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
                print(f.__name__, n0, n1, err, same)
    """)
    rows = [line.split() for line in out.strip().splitlines()]
    assert [r[0] for r in rows] == ["sm", "explicit"]
    for name, n0, n1, err, same in rows:
        assert int(n0) > 0 and int(n1) == 0, name
        assert float(err) <= _TOL[np.float32] and same == "True", name


def test_canonical_convs_leaves_programs_without_convolutions_alone(monkeypatch):
    monkeypatch.setattr(engine, "CANONICAL_CONVS", "always")

    def f(x, n):
        return jax.lax.fori_loop(0, n, lambda i, y: jnp.tanh(y @ x), x)

    x = np.eye(3, dtype=np.float32) * 0.5
    assert str(jax.make_jaxpr(engine.canonical_convs(f))(x, 2)) == str(jax.make_jaxpr(f)(x, 2))
    # an MLP's data-set mean and gradient (the engine's scan with the rewrite on): the same
    # compiled program as without it, so bit-identical values
    model, loss_fn, data = _setup64(200)
    data = jax.tree.map(lambda a: np.asarray(a, np.float32) if a.dtype == np.float64 else a, data)
    params = jax.tree.map(lambda a: np.asarray(a, np.float32), model.params)
    vg = jax.jit(
        lambda p, b: engine.batched_mean(
            lambda q, d: jax.value_and_grad(lambda r: loss_fn(r, d)[0])(q), p, b
        )
    )
    batched = engine.batch(data, 64)
    on = vg(params, batched)
    text_on = vg.lower(params, batched).as_text(debug_info=False)
    monkeypatch.setattr(engine, "CANONICAL_CONVS", "never")
    vg_off = jax.jit(
        lambda p, b: engine.batched_mean(
            lambda q, d: jax.value_and_grad(lambda r: loss_fn(r, d)[0])(q), p, b
        )
    )
    assert vg_off.lower(params, batched).as_text(debug_info=False) == text_on
    for a, b in zip(jax.tree.leaves(on), jax.tree.leaves(vg_off(params, batched)), strict=True):
        np.testing.assert_array_equal(a, b)


def test_canonical_convs_mode_is_checked(monkeypatch):
    x = np.ones((2, 2), np.float32)
    monkeypatch.setattr(engine, "CANONICAL_CONVS", "sometimes")
    with pytest.raises(
        ValueError,
        match=r"CANONICAL_CONVS \(or the environment variable LANDSCAPE_CANONICAL_CONVS\) must "
        r"be 'cpu', 'always' or 'never'; got 'sometimes'",
    ):
        engine.canonical_convs(jnp.tanh)(x)
    monkeypatch.setattr(engine, "CANONICAL_CONVS", "never")  # functions run as written
    assert str(
        jax.make_jaxpr(engine.canonical_convs(_grad))(np.ones((1, 1, 3, 3)), np.ones((1, 1, 3, 3)))
    ) == str(jax.make_jaxpr(_grad)(np.ones((1, 1, 3, 3)), np.ones((1, 1, 3, 3))))


def test_canonical_convs_switch_from_the_environment():
    from tests._util import run_python

    out = run_python(
        "from landscape import engine; print(engine.CANONICAL_CONVS)",
        env={"LANDSCAPE_CANONICAL_CONVS": "never"},
    )
    assert out.split() == ["never"]


def test_split_key_equals_jax_split_and_checks_num():
    """``tree.split_key`` is ``tuple(jax.random.split(key, num))`` (typed and legacy keys, the
    same bits), one program per count; a count that is not a non-negative integer is refused.
    (Review: the jitted helper once shadowed ``normal_like``'s own splitter: checked too.)"""
    import jax
    import numpy as np
    import pytest

    from landscape import tree as _tree

    for key in (jax.random.key(3), jax.random.PRNGKey(3)):
        for num in (1, 2, 5):
            got = _tree.split_key(key, num)
            want = jax.random.split(key, num)
            assert isinstance(got, tuple) and len(got) == num
            for g, w in zip(got, want):
                np.testing.assert_array_equal(
                    np.asarray(jax.random.key_data(g)), np.asarray(jax.random.key_data(w))
                )
    v = _tree.normal_like(jax.random.key(0), {"a": np.ones(3, np.float32)})
    assert v["a"].shape == (3,)
    for bad in (2.5, -1, True, "2"):
        with pytest.raises(ValueError, match="split_key: num"):
            _tree.split_key(jax.random.key(0), bad)
