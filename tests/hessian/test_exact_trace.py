"""Exact traces (GGN, empirical Fisher, and the Hessian where ``tr H = tr GGN``), the
control-variate estimator and ``estimator="auto"``, against dense float64 references.

Tolerances: the exact routes are deterministic sums of the same terms as the dense trace, so
float64 agrees to 1e-10 relative (rounding of a few thousand terms); float32 to 1e-5 (float32
rounding of per-example norms accumulated over 256 examples). Stochastic estimates are checked
against their own standard errors (within 3 SE over fixed seeds).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import landscape
from landscape import engine, hessian
from landscape.hessian import _exact

from .conftest import _mlp_logits


def _dense_trace(loss, params, data):
    flat, unravel = ravel_pytree(params)
    H = jax.jit(jax.hessian(lambda f: engine.loss_and_aux(loss, unravel(f), data)[0]))(flat)
    return float(np.trace(np.asarray(H, np.float64))), np.asarray(H, np.float64)


def _ggn_trace(logits_fn, params, data):
    """``mean_n tr(H_out,n J_n J_n^T)`` for cross-entropy from dense per-example Jacobians."""
    flat, unravel = ravel_pytree(params)
    J = np.asarray(jax.jacrev(lambda f: logits_fn(unravel(f), data["x"]))(flat), np.float64)  # (N, C, P)
    z = np.asarray(logits_fn(params, data["x"]), np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    Hout = np.einsum("nc,cd->ncd", p, np.eye(p.shape[1])) - p[:, :, None] * p[:, None, :]
    return float(np.einsum("ncd,ncp,ndp->", Hout, J, J) / J.shape[0])


def _model(apply, params):
    def apply_fn(p, state, x, *, train=False):
        return apply(p, x), state

    return landscape.Model(apply_fn, params, {})


def _leaf_blocks(H, params):
    out, off = {}, 0
    from landscape import tree as _tree

    for path, leaf in zip(_tree.leaf_paths(params), jax.tree.leaves(params)):
        out[path] = float(np.trace(H[off:off + leaf.size, off:off + leaf.size]))
        off += leaf.size
    return out


# ------------------------------------------------------------------------------------------
# exact: the Hessian of piecewise-affine networks, the GGN and the Fisher of any network
# ------------------------------------------------------------------------------------------
def test_exact_hessian_trace_relu_mlp(small):
    with jax.enable_x64(True):
        r = hessian.trace(small.relu_loss, small.relu_params, small.data, key=jax.random.key(0), batch_size=100)
        assert r.estimator == "exact" and "piecewise affine" in r.reason and r.std_error == 0
        assert r.num_hvps == 0 and r.exact_passes == 10
        np.testing.assert_allclose(r.estimate, np.trace(small.relu_H), rtol=1e-10)
        blocks = _leaf_blocks(small.relu_H, small.relu_params)
        for path, v in r.per_leaf.items():
            np.testing.assert_allclose(v, blocks[path], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(sum(r.per_layer.values()), r.estimate, rtol=1e-12)
        # the GGN and the empirical Fisher: exact for every network
        g = hessian.trace(small.relu_loss, small.relu_params, small.data, key=jax.random.key(0), curvature="ggn",
                          batch_size=100)
        f = hessian.trace(small.relu_loss, small.relu_params, small.data, key=jax.random.key(0),
                          curvature="fisher", estimator="exact", batch_size=100)
        np.testing.assert_allclose(g.estimate, np.trace(small.relu_G), rtol=1e-10)
        np.testing.assert_allclose(f.estimate, np.trace(small.relu_F), rtol=1e-10)
        assert f.exact_passes == 1
        # a subset of leaves: the exact diagonal block
        s = hessian.trace(small.relu_loss, small.relu_params, small.data, key=jax.random.key(0),
                          params_filter="layers/0/kernel")
        np.testing.assert_allclose(s.estimate, blocks["layers/0/kernel"], rtol=1e-10)
    # float32: the float64 reference to float32 rounding
    r32 = hessian.trace(small.relu_loss, small.relu_params32, small.data32, key=jax.random.key(0), batch_size=100)
    assert r32.estimator == "exact" and r32.estimate.dtype == np.float64
    np.testing.assert_allclose(r32.estimate, np.trace(small.relu_H), rtol=1e-5)


def test_exact_ggn_and_weight_decay_on_tanh(small):
    with jax.enable_x64(True):
        loss = small.tanh_loss
        g = hessian.trace(loss, small.tanh_params, small.data, key=jax.random.key(0), curvature="ggn")
        ref = _ggn_trace(lambda p, x: _mlp_logits(p, x, jnp.tanh), small.tanh_params, small.data)
        assert g.estimator == "exact"
        np.testing.assert_allclose(g.estimate, ref, rtol=1e-10)
        # the residual H - GGN: probes only where its diagonal block does not vanish
        res = hessian.trace(loss, small.tanh_params, small.data, key=jax.random.key(0), curvature="residual",
                            max_hvps=40, rtol=0)
        assert res.estimator == "hutchinson" and "0 on the others" in res.reason and res.num_probes == 40
        assert res.per_leaf_se["layers/1/kernel"] == 0 and res.per_leaf["layers/1/kernel"] == 0
        assert abs(res.estimate - (np.trace(small.tanh_H) - ref)) <= 3 * res.std_error
        # weight decay: + weight_decay * P on the Hessian and the GGN
        tanh_wd = landscape.make_model("mlp", input_shape=(64,), num_outputs=10, hidden=(16,), seed=1,
                                       activation="tanh")
        lwd = landscape.make_loss_fn(tanh_wd, weight_decay=0.03)
        gw = hessian.trace(lwd, small.tanh_params, small.data, key=jax.random.key(0), curvature="ggn")
        np.testing.assert_allclose(gw.estimate, ref + 0.03 * small.num_params, rtol=1e-10)


def _cnn_apply(pool):
    def apply(p, x):
        x = x.reshape(x.shape[0], 8, 8, 1)
        h = jax.lax.conv_general_dilated(x, p["conv"]["kernel"], (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        h = jax.nn.relu(h + p["conv"]["bias"][None, None, None, :])
        if pool == "max":
            h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        else:
            h = jax.lax.reduce_window(h, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4.0
        h = jnp.where(h > 0.1, h, 0.01 * h)  # leaky, piecewise linear
        return h.reshape(h.shape[0], -1) @ p["head"]["kernel"] + p["head"]["bias"][None, :]

    return apply


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_exact_hessian_trace_cnn(small, pool):
    """Convolution kernels take the per-example-VJP path; max/avg pooling and a leaky unit are
    piecewise affine."""
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        params = {"conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 1, 3)) * 0.5),
                           "bias": jnp.asarray(rng.normal(size=(3,)) * 0.1)},
                  "head": {"kernel": jnp.asarray(rng.normal(size=(48, 10)) * 0.2),
                           "bias": jnp.zeros(10)}}
        data = {"x": small.data["x"][:48], "y": small.data["y"][:48]}
        loss = landscape.make_loss_fn(_model(_cnn_apply(pool), params))
        r = hessian.trace(loss, params, data, key=jax.random.key(0), batch_size=20)
        assert r.estimator == "exact", r.reason
        ref, H = _dense_trace(loss, params, data)
        np.testing.assert_allclose(r.estimate, ref, rtol=1e-10)
        for path, v in r.per_leaf.items():
            np.testing.assert_allclose(v, _leaf_blocks(H, params)[path], rtol=1e-9, atol=1e-12)


def test_exact_trace_sequence_outputs_mse(small):
    """Outputs with several rows per example (``(B, 3, 4)``), MSE: ``R x O = 12`` directions."""
    rng = np.random.default_rng(1)
    with jax.enable_x64(True):
        params = {"w": jnp.asarray(rng.normal(size=(64, 12)) * 0.1), "v": jnp.asarray(rng.normal(size=(4, 4)))}

        def apply(p, x):
            h = jax.nn.relu(x @ p["w"]).reshape(x.shape[0], 3, 4)
            return h @ p["v"]

        data = {"x": small.data["x"][:30], "y": rng.normal(size=(30, 3, 4))}
        loss = landscape.make_loss_fn(_model(apply, params), "mse")
        r = hessian.trace(loss, params, data, key=jax.random.key(0))
        assert r.estimator == "exact" and r.exact_passes == 12, r.reason
        np.testing.assert_allclose(r.estimate, _dense_trace(loss, params, data)[0], rtol=1e-10)


# ------------------------------------------------------------------------------------------
# refusals: where tr H != tr GGN, the leaf and the operation are named
# ------------------------------------------------------------------------------------------
def _layernorm_apply(p, x):
    h = x @ p["l0"]["kernel"]
    mu = jnp.mean(h, axis=-1, keepdims=True)
    h = (h - mu) * jax.lax.rsqrt(jnp.mean((h - mu) ** 2, axis=-1, keepdims=True) + 1e-5)
    return jax.nn.relu(h) @ p["l1"]["kernel"]


def _tied_apply(p, x):
    h = jax.nn.relu(x @ p["w"])  # (64 -> 10)
    return h @ (p["w"].T @ p["w"])  # the same leaf on both sides of a product


def test_refused_for_tanh_layernorm_tied(small):
    rng = np.random.default_rng(2)
    with jax.enable_x64(True):
        cases = {
            "tanh": (small.tanh_loss, small.tanh_params, "tanh"),
            "layernorm": (landscape.make_loss_fn(_model(_layernorm_apply, p := {
                "l0": {"kernel": jnp.asarray(rng.normal(size=(64, 8)) * 0.1)},
                "l1": {"kernel": jnp.asarray(rng.normal(size=(8, 10)) * 0.3)}})), p, "(integer_pow|rsqrt) is applied"),
            "tied": (landscape.make_loss_fn(_model(_tied_apply, q := {"w": jnp.asarray(rng.normal(size=(64, 10)) * 0.1)})),
                     q, "multiplies two values that both depend on it"),
        }
        data = {"x": small.data["x"][:40], "y": small.data["y"][:40]}
        for name, (loss, params, why) in cases.items():
            with pytest.raises(ValueError, match="not exactly the GGN") as e:
                hessian.trace(loss, params, data, key=jax.random.key(0), estimator="exact")
            assert re.search(why, str(e.value)), (name, str(e.value))
            r = hessian.trace(loss, params, data, key=jax.random.key(0), max_hvps=40, rtol=0)
            assert r.estimator == "control_variate" and re.search(why, r.reason), (name, r.reason)
            ref = _dense_trace(loss, params, data)[0]
            assert abs(r.estimate - ref) <= 3 * r.std_error + 1e-9, (name, r.estimate, ref, r.std_error)
        # the readout of the tanh net is still exact: its per-leaf SE is 0
        r = hessian.trace(small.tanh_loss, small.tanh_params, data, key=jax.random.key(0), max_hvps=20)
        assert r.per_leaf_se["layers/1/kernel"] == 0 and r.per_leaf_se["layers/0/kernel"] > 0


def test_fallbacks_name_their_reason(small):
    data = small.data32

    def plain(params, batch):
        return landscape.losses.cross_entropy(_mlp_logits(params, batch["x"], jax.nn.relu), batch["y"])

    r = hessian.trace(plain, small.relu_params32, data, key=jax.random.key(0), max_hvps=12)
    assert r.estimator == "hutch++" and "no model outputs" in r.reason
    with pytest.raises(ValueError, match="not available: the loss carries no model outputs"):
        hessian.trace(plain, small.relu_params32, data, key=jax.random.key(0), estimator="exact")
    # model= and output_loss= give a plain loss the exact route ...
    r = hessian.trace(plain, small.relu_params32, data, key=jax.random.key(0), model=small.relu_model32,
                      output_loss="cross_entropy")
    assert r.estimator == "exact"
    np.testing.assert_allclose(r.estimate, np.trace(small.relu_H), rtol=1e-5)

    # ... unless the loss has terms the outputs do not explain
    def extra(params, batch):
        return plain(params, batch) + 0.1 * jnp.sum(params["layers"][0]["kernel"] ** 2)

    r = hessian.trace(extra, small.relu_params32, data, key=jax.random.key(0), model=small.relu_model32,
                      output_loss="cross_entropy", max_hvps=12)
    assert r.estimator == "hutch++" and "extra terms" in r.reason
    # a custom output loss: the GGN's output factor is analytic only for cross-entropy and MSE
    def custom(outputs, batch):
        return landscape.losses.cross_entropy(outputs, batch["y"])

    r = hessian.trace(plain, small.relu_params32, data, key=jax.random.key(0), model=small.relu_model32,
                      output_loss=custom, max_hvps=12)
    assert r.estimator == "hutch++" and "custom output loss" in r.reason
    # preconditioned operators and plain matvecs: Hutch++
    P = jax.tree.map(lambda a: jnp.ones_like(a) * 2.0, small.relu_params32)
    r = hessian.trace(small.relu_loss, small.relu_params32, data, key=jax.random.key(0), preconditioner=P,
                      max_hvps=12)
    assert r.estimator == "hutch++" and "preconditioned" in r.reason

    # examples that interact (batch statistics): no per-example decomposition
    def centred(p, x):
        h = x @ p["layers"][0]["kernel"]
        return jax.nn.relu(h - h.mean(axis=0, keepdims=True)) @ p["layers"][1]["kernel"]

    loss = landscape.make_loss_fn(_model(centred, small.relu_params32))
    r = hessian.trace(loss, small.relu_params32, data, key=jax.random.key(0), max_hvps=12)
    assert r.estimator == "hutch++" and "examples interact" in r.reason


# ------------------------------------------------------------------------------------------
# the control variate: unbiased, and a smaller SE than Hutchinson at equal products
# ------------------------------------------------------------------------------------------
def _relu_tanh_apply(p, x):
    h = jax.nn.relu(x @ p["l0"]["kernel"] + p["l0"]["bias"][None, :])
    h = jnp.tanh(h @ p["l1"]["kernel"] + p["l1"]["bias"][None, :])
    return h @ p["l2"]["kernel"] + p["l2"]["bias"][None, :]


@pytest.fixture(scope="module")
def relu_tanh(small):
    rng = np.random.default_rng(3)
    sizes = [(64, 16), (16, 16), (16, 10)]
    params = {f"l{i}": {"kernel": jnp.asarray(rng.normal(size=s) / np.sqrt(s[0]), jnp.float32),
                        "bias": jnp.zeros(s[1], jnp.float32)} for i, s in enumerate(sizes)}
    loss32 = landscape.make_loss_fn(_model(_relu_tanh_apply, params))
    opt = optax.adam(1e-2)
    state = opt.init(params)
    step = jax.jit(lambda p, s: (lambda g: (optax.apply_updates(p, opt.update(g, s, p)[0]), opt.update(g, s, p)[1]))(
        jax.grad(lambda q: engine.loss_and_aux(loss32, q, small.data32)[0])(p)))
    for _ in range(300):
        params, state = step(params, state)
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        loss = landscape.make_loss_fn(_model(_relu_tanh_apply, p64))
        ref = _dense_trace(loss, p64, small.data)[0]
    return loss, p64, ref


def test_control_variate_unbiased_and_tighter(small, relu_tanh):
    loss, params, ref = relu_tanh
    with jax.enable_x64(True):
        op = hessian.make_hvp(loss, params, small.data)
        cv_se, h_se = [], []
        for seed in range(4):
            cv = hessian.trace(op, key=jax.random.key(seed), estimator="control_variate", max_hvps=40, rtol=0)
            hu = hessian.trace(op, key=jax.random.key(seed), estimator="hutchinson", max_hvps=40, rtol=0)
            assert cv.num_hvps == hu.num_hvps == cv.num_probes == 40
            assert abs(cv.estimate - ref) <= 3 * cv.std_error, (seed, cv.estimate, ref, cv.std_error)
            assert abs(hu.estimate - ref) <= 3 * hu.std_error
            cv_se.append(cv.std_error)
            h_se.append(hu.std_error)
        # at equal products the residual's probes vary less than the Hessian's
        assert np.median(cv_se) < 0.8 * np.median(h_se), (cv_se, h_se)
        # l0 and l1 are probed (tanh follows both); the read-out l2 is exact
        assert cv.per_leaf_se["l2/kernel"] == 0 and cv.per_leaf_se["l1/kernel"] > 0


def test_affinity_rules_from_the_program():
    """Rules on small programs: which ops keep a function piecewise affine in a leaf."""
    x = jnp.ones((2, 3))
    w = jnp.ones((3, 3))

    def reasons(f):
        return _exact.affine_leaves(lambda ls, b: f(ls[0], ls[1], b["x"]), [w, w], {"x": x})

    assert reasons(lambda a, b, x: jax.nn.relu(x @ a) @ b) == [None, None]
    assert reasons(lambda a, b, x: jnp.maximum(x @ a, x @ b)) == [None, None]
    assert reasons(lambda a, b, x: jnp.abs(x @ a) / 3.0 @ b) == [None, None]
    r = reasons(lambda a, b, x: jax.nn.gelu(x @ a) @ b)
    assert r[0] is not None and r[1] is None
    r = reasons(lambda a, b, x: (x @ a) / jnp.sum(x @ b))
    assert r[0] is None and "div" in r[1]
    r = reasons(lambda a, b, x: (x @ a) * (x @ a) @ b)
    assert "both depend" in r[0] and r[1] is None
    # a scan whose carry multiplies the same leaf twice (an RNN): not affine in it
    def rnn(a, b, x):
        def body(h, _):
            return jnp.maximum(h @ a, 0.0), None

        h, _ = jax.lax.scan(body, x, None, length=3)
        return h @ b

    r = reasons(rnn)
    assert "both depend" in r[0] and r[1] is None


def test_review_cases_time_major_surrogate_penalty_residual(small):
    """Shapes that only look per-example, a custom JVP the body does not show, a small penalty
    in a plain loss, and the residual product against dense H - GGN with weight decay."""
    rng = np.random.default_rng(5)
    with jax.enable_x64(True):
        # (T, B, D) inside the model with T == B: the taps must not take T for the examples
        p = {"w": jnp.asarray(rng.normal(size=(3, 5))), "v": jnp.asarray(rng.normal(size=(5, 2)))}

        def time_major(q, x):
            h = jax.nn.relu(jnp.swapaxes(x, 0, 1) @ q["w"]).mean(axis=0)
            return h @ q["v"]

        data = {"x": rng.normal(size=(8, 4, 3)), "y": rng.integers(0, 2, 8)}
        loss = landscape.make_loss_fn(_model(time_major, p))
        r = hessian.trace(loss, p, data, key=jax.random.key(0), batch_size=4)
        assert r.estimator == "exact"
        np.testing.assert_allclose(r.estimate, _dense_trace(loss, p, data)[0], rtol=1e-10)

        # a surrogate-gradient unit: affine body, smooth derivative -> not exact
        @jax.custom_jvp
        def unit(x):
            return jnp.maximum(x, 0.0)

        unit.defjvp(lambda pr, tg: (unit(pr[0]), jax.nn.sigmoid(4 * pr[0]) * tg[0]))
        q = {"w": jnp.asarray(rng.normal(size=(64, 6)) * 0.2), "v": jnp.asarray(rng.normal(size=(6, 10)))}
        d40 = {"x": small.data["x"][:40], "y": small.data["y"][:40]}
        sl = landscape.make_loss_fn(_model(lambda z, x: unit(x @ z["w"]) @ z["v"], q))
        r = hessian.trace(sl, q, d40, key=jax.random.key(0), max_hvps=40, rtol=0)
        assert r.estimator == "control_variate" and "custom_jvp_call" in r.reason
        assert abs(r.estimate - _dense_trace(sl, q, d40)[0]) <= 3 * r.std_error

        # a plain loss whose small L2 term barely moves the value but adds wd * P to tr H
        relu = landscape.make_loss_fn(_model(lambda z, x: jax.nn.relu(x @ z["w"]) @ z["v"], q))

        def plain(z, batch):
            out = jax.nn.relu(batch["x"] @ z["w"]) @ z["v"]
            return landscape.losses.cross_entropy(out, batch["y"]) + 1e-6 * landscape.tree.vdot(z, z)

        r = hessian.trace(plain, q, d40, key=jax.random.key(0), model=_model(lambda z, x: jax.nn.relu(x @ z["w"]) @ z["v"], q),
                          output_loss="cross_entropy", max_hvps=12)
        assert r.estimator == "hutch++" and "extra terms" in r.reason
        del relu

        # the residual product of a Loss (one HVP of r . f) against dense H - GGN: weight decay,
        # a parameter subset
        lwd = landscape.make_loss_fn(small.relu_model32.__class__(small.relu_model32.apply_fn, small.tanh_params,
                                                                  small.relu_model32.state, None), weight_decay=0.1)
        H = _dense_trace(lwd, small.tanh_params, small.data)[1]
        for flt in (None, "layers/0/*"):
            op = hessian.make_hvp(lwd, small.tanh_params, small.data, curvature="residual", params_filter=flt)
            G = hessian.make_hvp(lwd, small.tanh_params, small.data, curvature="ggn", params_filter=flt)
            v = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)), small.tanh_params)
            flat_v = ravel_pytree(v)[0]
            got = ravel_pytree(op(v))[0] + ravel_pytree(G(v))[0]
            if flt is None:
                np.testing.assert_allclose(np.asarray(got), H @ np.asarray(flat_v), rtol=1e-9, atol=1e-12)
            else:
                n0 = small.tanh_params["layers"][0]["bias"].size + small.tanh_params["layers"][0]["kernel"].size
                mask = np.zeros(flat_v.size)
                mask[:n0] = 1.0
                np.testing.assert_allclose(np.asarray(got)[:n0], (H @ (mask * np.asarray(flat_v)))[:n0], rtol=1e-9,
                                           atol=1e-12)
