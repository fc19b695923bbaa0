"""Models: registry, initialisation schemes, the model triple from NNX and Linen."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import landscape
from landscape import models


def test_registry_and_errors():
    assert models.model_names() == ["cnn", "mlp", "resnet", "transformer"]
    with pytest.raises(ValueError, match="unknown model 'vgg'.*cnn, mlp, resnet, transformer"):
        landscape.make_model("vgg", input_shape=(64,), num_outputs=10)
    with pytest.raises(ValueError, match="unknown init"):
        landscape.make_model("mlp", input_shape=(64,), num_outputs=10, init="kaiming")
    with pytest.raises(ValueError, match="input_shape must be"):
        landscape.make_model("cnn", input_shape=(64,), num_outputs=10)


@pytest.mark.parametrize(
    "init,expected_var",
    [
        ("lecun_normal", lambda fi, fo: 1 / fi),
        ("he_normal", lambda fi, fo: 2 / fi),
        ("he_uniform", lambda fi, fo: 2 / fi),
        ("glorot_normal", lambda fi, fo: 2 / (fi + fo)),
        ("xavier_uniform", lambda fi, fo: 2 / (fi + fo)),
    ],
)
def test_init_variances(init, expected_var):
    m = landscape.make_model(
        "mlp", input_shape=(400,), num_outputs=10, hidden=(300,), init=init, seed=1
    )
    k = np.asarray(m.params["layers"][0]["kernel"])
    # 120k samples: the sample variance is within 2% of the target (truncated normals included)
    assert np.var(k) == pytest.approx(expected_var(400, 300), rel=0.02)
    assert np.all(np.asarray(m.params["layers"][0]["bias"]) == 0)


def test_orthogonal_and_zero_init_symmetry(digits_data):
    m = landscape.make_model(
        "mlp", input_shape=(64,), num_outputs=10, hidden=(32,), init="orthogonal"
    )
    k = np.asarray(m.params["layers"][0]["kernel"])  # (64, 32): orthonormal columns
    np.testing.assert_allclose(k.T @ k, np.eye(32), atol=1e-5)
    z = landscape.make_model(
        "mlp", input_shape=(64,), num_outputs=10, hidden=(16,), init="zeros", activation="tanh"
    )
    r = landscape.train(
        z, digits_data.train, optimizer=optax.sgd(0.5), num_steps=50, progress=False
    )
    h = np.asarray(r.params["layers"][0]["kernel"])
    # the symmetry failure: every hidden unit receives the same update, so all columns stay equal
    assert np.allclose(h, h[:, :1])


def test_resnet_switches():
    shape = dict(input_shape=(8, 8, 1), num_outputs=10, widths=(4, 8))
    with_all = landscape.make_model("resnet", **shape)
    no_skip = landscape.make_model("resnet", skip=False, **shape)
    no_bn = landscape.make_model("resnet", batch_norm=False, **shape)
    assert with_all.state and not no_bn.state
    assert "proj" in str(jax.tree_util.tree_structure(with_all.params))
    assert "proj" not in str(jax.tree_util.tree_structure(no_skip.params))
    x = jnp.ones((3, 8, 8, 1))
    for m in (with_all, no_skip, no_bn):
        assert m(x).shape == (3, 10)


def test_nnx_eval_and_train_modes():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(4, 8, rngs=rngs)
            self.bn = nnx.BatchNorm(8, rngs=rngs)
            self.drop = nnx.Dropout(0.5, rngs=rngs)
            self.out = nnx.Linear(8, 3, rngs=rngs)

        def __call__(self, x):
            return self.out(self.drop(self.bn(self.lin(x))))

    model = landscape.from_nnx(Net(nnx.Rngs(0)))
    apply_fn, params, state = model  # unpacks as a triple
    x = jax.random.normal(jax.random.key(0), (16, 4))
    y1, s1 = apply_fn(params, state, x)
    y2, _ = apply_fn(params, state, x)
    assert s1 is state and np.array_equal(y1, y2)  # evaluation mode: deterministic, no update
    yt, st = apply_fn(params, state, x, train=True)
    assert not np.allclose(np.asarray(st["bn"]["mean"]), np.asarray(state["bn"]["mean"]))
    assert not np.allclose(yt, y1)  # dropout + batch statistics in training mode
    yt2, _ = apply_fn(params, st, x, train=True)
    assert not np.array_equal(yt, yt2)  # the dropout RNG advanced through the state
    assert "kernel" in params["lin"] and "mean" in state["bn"]


def test_from_linen_batchnorm_dropout():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.Dense(8)(x)
            x = nn.BatchNorm(use_running_average=not train)(x)
            x = nn.Dropout(0.5, deterministic=not train)(x)
            return nn.Dense(2)(x)

    net = Net()
    x = jnp.ones((5, 3))
    variables = net.init(jax.random.key(0), x)
    model = landscape.from_linen(net, variables, dropout_key=jax.random.key(1))
    y, s = model.apply_fn(model.params, model.state, x)
    assert y.shape == (5, 2) and s is model.state
    yt, st = model.apply_fn(model.params, model.state, x * jnp.arange(5.0)[:, None], train=True)
    assert "batch_stats" in st and not np.allclose(
        np.asarray(st["batch_stats"]["BatchNorm_0"]["mean"]), 0.0
    )
    loss_fn = landscape.make_loss_fn(model)
    v = landscape.evaluate(
        loss_fn, model.params, {"x": np.ones((7, 3), np.float32), "y": np.zeros(7, np.int32)}
    )
    assert np.isfinite(float(v["loss"]))


def test_model_triple_acceptance():
    m = landscape.make_model("mlp", input_shape=(4,), num_outputs=2, hidden=(3,))
    lf = landscape.make_loss_fn((m.apply_fn, m.params, m.state))
    assert lf.kind == "cross_entropy"
    with pytest.raises(TypeError, match="model must be a landscape.Model"):
        landscape.make_loss_fn(lambda x: x)


def test_same_architecture_shares_compiled_programs(digits_data):
    from landscape import engine

    a = landscape.make_model("mlp", input_shape=(64,), num_outputs=10, hidden=(13,), seed=0)
    b = landscape.make_model("mlp", input_shape=(64,), num_outputs=10, hidden=(13,), seed=1)
    c = landscape.make_model("mlp", input_shape=(64,), num_outputs=10, hidden=(14,), seed=1)
    assert a.apply_fn == b.apply_fn and hash(a.apply_fn) == hash(b.apply_fn)
    assert a.apply_fn != c.apply_fn
    landscape.evaluate(landscape.make_loss_fn(a), a.params, digits_data.test)
    n = engine._mean_jit._cache_size()
    landscape.evaluate(landscape.make_loss_fn(b), b.params, digits_data.test)
    assert engine._mean_jit._cache_size() == n  # another seed: no new compilation


def test_spec_records_callables_only_when_the_registry_rebuilds_them():
    """jax.nn.gelu (tanh approximation) is not the registry's exact "gelu": recording it by name
    would silently change the architecture on load, so such a model has no spec (load_run then
    asks for a template); the registry's own objects and names are recorded."""
    from landscape import models

    m = landscape.make_model(
        "mlp", input_shape=(4,), num_outputs=2, hidden=(3,), activation=jax.nn.gelu
    )
    assert m.spec is None
    m = landscape.make_model(
        "mlp", input_shape=(4,), num_outputs=2, hidden=(3,), activation=models.ACTIVATIONS["gelu"]
    )
    assert m.spec["kwargs"]["activation"] == "gelu"
    m = landscape.make_model(
        "mlp", input_shape=(4,), num_outputs=2, hidden=(3,), activation="tanh"
    )
    assert m.spec["kwargs"]["activation"] == "tanh"
    rebuilt = models.model_from_spec(m.spec)
    x = jnp.ones((1, 4))
    np.testing.assert_array_equal(np.asarray(rebuilt(x)), np.asarray(m(x)))
    # a dtype given as a NumPy/JAX scalar type (callable) is recorded by name, not dropped
    m = landscape.make_model(
        "mlp", input_shape=(4,), num_outputs=2, hidden=(3,), param_dtype=jnp.float32
    )
    assert m.spec is not None and m.spec["kwargs"]["param_dtype"] == "float32"


# ---- explicit variances, weight standardisation, activations, depth (issue 14) ----------------
def test_explicit_variances_draw_gaussian_weights_and_biases():
    """sigma_w2 alone: kernels exactly N(0, sigma_w2 / fan_in) (untruncated: kurtosis 3, where
    the truncated normal's is 2.37); sigma_b2: biases N(0, sigma_b2)."""
    m = landscape.make_model(
        "mlp",
        input_shape=(400,),
        num_outputs=10,
        hidden=(2000, 2000),
        sigma_w2=1.7,
        sigma_b2=0.3,
        seed=2,
    )
    k0 = np.asarray(m.params["layers"][0]["kernel"], np.float64)  # 800k samples
    k1 = np.asarray(m.params["layers"][1]["kernel"], np.float64)  # 4M samples
    # sample variance of n Gaussian draws: relative sd sqrt(2 / n) < 0.2%; 1% is > 5 sd
    assert np.var(k0) == pytest.approx(1.7 / 400, rel=0.01)
    assert np.var(k1) == pytest.approx(1.7 / 2000, rel=0.01)
    assert abs(np.mean(k1**4) / np.mean(k1**2) ** 2 - 3.0) < 0.05  # sd of the kurtosis ~ 0.005
    b = np.concatenate([np.asarray(m.params["layers"][i]["bias"]) for i in (0, 1)])  # 4000
    # relative sd sqrt(2 / 4000) = 2.2%: 10% is 4.5 sd
    assert np.var(b) == pytest.approx(0.3, rel=0.1)
    assert abs(np.mean(b)) < 4 * np.sqrt(0.3 / 4000)


def test_sigma_w2_with_the_named_schemes():
    kw = dict(input_shape=(64,), num_outputs=4, hidden=(64,), seed=1)
    # orthogonal: the gain sqrt(sigma_w2)
    o = landscape.make_model("mlp", init="orthogonal", sigma_w2=1.76, **kw)
    k = np.asarray(o.params["layers"][0]["kernel"])
    np.testing.assert_allclose(k.T @ k, 1.76 * np.eye(64), atol=1e-5)
    # a scheme given the variance it implies is the scheme itself, bit for bit
    for init, s in (("he_normal", 2.0), ("lecun_uniform", 1.0)):
        a = landscape.make_model("mlp", init=init, sigma_w2=s, **kw)
        b = landscape.make_model("mlp", init=init, **kw)
        for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # the families take the scale: uniform with sigma_w2 = 3 has variance 3 / fan_in
    u = landscape.make_model(
        "mlp", input_shape=(500,), num_outputs=4, hidden=(800,), init="uniform", sigma_w2=3.0
    )
    ku = np.asarray(u.params["layers"][0]["kernel"])
    assert np.var(ku) == pytest.approx(3.0 / 500, rel=0.01)  # 400k draws: sd 0.2%
    assert np.max(np.abs(ku)) <= np.sqrt(9.0 / 500) * (1 + 1e-6)
    # sigma_w2 = 0: zero weights; sigma_b2 = 0 (default): zero biases
    z = landscape.make_model("mlp", sigma_w2=0.0, **kw)
    assert not np.any(np.asarray(z.params["layers"][0]["kernel"]))
    assert not np.any(np.asarray(z.params["layers"][0]["bias"]))


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (
            dict(init="he_normal", sigma_w2=1.0),
            ValueError,
            "fixes the weight variance at 2/fan_in",
        ),
        (dict(init="lecun_normal", sigma_w2=2.0), ValueError, "contradicts sigma_w2=2"),
        (dict(init="glorot_uniform", sigma_w2=1.0), ValueError, r"2/\(fan_in \+ fan_out\)"),
        (dict(init="zeros", sigma_w2=1.0), ValueError, "has no scale"),
        (dict(init=jax.nn.initializers.zeros, sigma_w2=1.0), ValueError, "cannot rescale"),
        (dict(sigma_b2=0.1, use_bias=False), ValueError, "sigma_b2=0.1 needs biases"),
        (dict(sigma_w2=-1.0), ValueError, "sigma_w2 must be finite and >= 0"),
        (dict(sigma_b2=float("nan")), ValueError, "sigma_b2 must be finite"),
        (dict(sigma_w2="2"), TypeError, "sigma_w2 must be a real number"),
        (dict(init="kaiming"), ValueError, "unknown init 'kaiming'"),
    ],
)
def test_variance_contradictions_are_rejected(kwargs, exc, match):
    with pytest.raises(exc, match="landscape.make_model: .*" + match):
        landscape.make_model("mlp", input_shape=(4,), num_outputs=2, hidden=(3,), **kwargs)


def test_resnet_biases_need_no_batch_norm():
    kw = dict(input_shape=(8, 8, 1), num_outputs=3, widths=(4,))
    with pytest.raises(ValueError, match="needs biases.*batch norm"):
        landscape.make_model("resnet", sigma_b2=0.1, **kw)
    r = landscape.make_model("resnet", batch_norm=False, sigma_w2=2.0, sigma_b2=0.1, **kw)
    assert np.var(np.asarray(r.params["head"]["kernel"])) == pytest.approx(2.0 / 4, rel=0.8)
    assert np.any(np.asarray(r.params["stem"]["bias"]))


def _standardised(k, axes, v):
    k = np.asarray(k, np.float64)
    c = k - k.mean(axis=axes, keepdims=True)
    return c * np.sqrt(v) / np.sqrt((c * c).mean(axis=axes, keepdims=True) + 1e-10)


def test_weight_standardization_is_the_plain_network_on_standardised_kernels():
    """The same parameters (paths and values) as without it; the forward pass is the plain
    network's on kernels standardised per output unit to the init's variance (He: 2 / fan_in).
    The readout is not standardised."""
    kw = dict(input_shape=(12,), num_outputs=3, hidden=(9, 7), init="he_normal", sigma_b2=0.1)
    ws = landscape.make_model("mlp", weight_standardization=True, **kw)
    plain = landscape.make_model("mlp", **kw)
    for a, b in zip(jax.tree.leaves(ws.params), jax.tree.leaves(plain.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    params = jax.tree.map(np.asarray, plain.params)
    for i, fan_in in ((0, 12), (1, 9)):
        params["layers"][i]["kernel"] = _standardised(params["layers"][i]["kernel"], 0, 2 / fan_in)
        w = params["layers"][i]["kernel"]
        np.testing.assert_allclose(w.mean(0), 0, atol=1e-12)
        np.testing.assert_allclose(w.var(0), 2 / fan_in, rtol=1e-6)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    x = jax.random.normal(jax.random.key(1), (5, 12))
    np.testing.assert_allclose(ws(x), plain(x, params=params), rtol=2e-5, atol=2e-6)
    assert not np.allclose(ws(x), plain(x), atol=1e-3)

    # the CNN's convolutions: per output channel over (kh, kw, c_in), LeCun variance
    ckw = dict(input_shape=(6, 6, 2), num_outputs=3, channels=(4, 5))
    cws = landscape.make_model("cnn", weight_standardization=True, **ckw)
    cplain = landscape.make_model("cnn", **ckw)
    p = jax.tree.map(np.asarray, cplain.params)
    for i, cin in ((0, 2), (1, 4)):
        p["convs"][i]["kernel"] = _standardised(p["convs"][i]["kernel"], (0, 1, 2), 1 / (9 * cin))
    p = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), p)
    xi = jax.random.normal(jax.random.key(2), (2, 6, 6, 2))
    np.testing.assert_allclose(cws(xi), cplain(xi, params=p), rtol=2e-5, atol=2e-6)
    # the ResNet (strided blocks, projections, batch norm) runs with it
    r = landscape.make_model(
        "resnet", input_shape=(8, 8, 1), num_outputs=3, widths=(4, 8), weight_standardization=True
    )
    assert np.all(np.isfinite(np.asarray(r(jnp.ones((2, 8, 8, 1)), train=True))))


@pytest.mark.parametrize("name", ["relu", "tanh", "sigmoid", "gelu"])
def test_activations_by_name(name):
    x = jnp.linspace(-3.0, 3.0, 13)
    ref = {
        "relu": np.maximum(x, 0),
        "tanh": np.tanh(x),
        "sigmoid": 1 / (1 + np.exp(-x)),
        "gelu": jax.scipy.stats.norm.cdf(x) * x,  # exact GELU, not the tanh approximation
    }[name]
    np.testing.assert_allclose(models.get_activation(name)(x), ref, rtol=1e-6, atol=1e-7)
    m = landscape.make_model(
        "mlp",
        input_shape=(3,),
        num_outputs=1,
        hidden=(1,),
        activation=name,
        init="normal",
        sigma_w2=3.0,
    )
    k0 = m.params["layers"][0]["kernel"][0, 0]
    k1 = m.params["layers"][1]["kernel"][0, 0]
    xin = jnp.array([[1.0, 0.0, 0.0]])
    np.testing.assert_allclose(m(xin)[0, 0], k1 * models.ACTIVATIONS[name](k0), rtol=1e-6)


def test_deep_mlp_and_the_new_options_rebuild_from_their_spec():
    from landscape.models import model_from_spec

    m = landscape.make_model(
        "mlp",
        input_shape=(16,),
        num_outputs=4,
        hidden=(32,) * 60,
        activation="tanh",
        init="orthogonal",
        sigma_w2=1.2,
        sigma_b2=0.05,
        weight_standardization=True,
        seed=4,
    )
    assert len(m.params["layers"]) == 61
    assert m.spec["kwargs"]["sigma_w2"] == 1.2 and m.spec["kwargs"]["weight_standardization"]
    import json

    r = model_from_spec(json.loads(json.dumps(m.spec)))  # as load_run reads it
    for a, b in zip(jax.tree.leaves(r.params), jax.tree.leaves(m.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    x = jax.random.normal(jax.random.key(0), (3, 16))
    y = m(x)
    assert np.all(np.isfinite(np.asarray(y)))
    np.testing.assert_array_equal(np.asarray(r(x)), np.asarray(y))
    assert r.apply_fn == m.apply_fn  # the same graph: the compiled programs are shared


def test_explicit_variances_in_float64():
    with jax.enable_x64(True):
        m = landscape.make_model(
            "mlp",
            input_shape=(300,),
            num_outputs=2,
            hidden=(1000,),
            sigma_w2=2.5,
            sigma_b2=0.5,
            param_dtype="float64",
        )
        k = m.params["layers"][0]["kernel"]
        assert k.dtype == jnp.float64 and m.params["layers"][0]["bias"].dtype == jnp.float64
        assert float(np.var(np.asarray(k))) == pytest.approx(2.5 / 300, rel=0.01)
        assert float(np.var(np.asarray(m.params["layers"][0]["bias"]))) == pytest.approx(
            0.5, rel=0.2
        )


def test_mlp_batch_norm_and_skips_against_a_hand_written_forward_pass():
    """``z_1 = W_1 x``; ``z_l = z_{l-1} + BN(W_l phi(z_{l-1}))`` on equal widths (pre-activation
    residuals, He et al. 2016); out ``= W phi(z_L) + b``; batch norm with batch statistics in
    training mode (biased variance, eps 1e-5), its running statistics (0, 1) in evaluation."""
    kw = dict(input_shape=(5,), num_outputs=3, hidden=(6, 6, 4, 4), activation="tanh", seed=3)
    plain = landscape.make_model("mlp", **kw)
    both = landscape.make_model("mlp", batch_norm=True, skip=True, **kw)
    skip = landscape.make_model("mlp", skip=True, **kw)
    # the same kernels are drawn; batch norm removes the hidden biases (its shift replaces them)
    for i in range(5):
        np.testing.assert_array_equal(
            both.params["layers"][i]["kernel"], plain.params["layers"][i]["kernel"]
        )
        assert ("bias" in both.params["layers"][i]) == (i == 4)
    assert set(both.state["norms"]) == {0, 1, 2, 3} and "norms" not in plain.params
    x = np.asarray(jax.random.normal(jax.random.key(0), (16, 5)), np.float64)
    P = jax.tree.map(lambda a: np.asarray(a, np.float64), both.params)
    Pp = jax.tree.map(lambda a: np.asarray(a, np.float64), plain.params)

    def hand(p, bn, res):
        def norm(z, i):
            if not bn:
                return z + p["layers"][i].get("bias", 0)
            zc = (z - z.mean(0)) / np.sqrt(z.var(0) + 1e-5)
            return zc * p["norms"][i]["scale"] + p["norms"][i]["bias"]

        h = norm(x @ p["layers"][0]["kernel"], 0)
        for i, r in zip((1, 2, 3), res):
            z = norm(np.tanh(h) @ p["layers"][i]["kernel"], i)
            h = h + z if r else z
        return np.tanh(h) @ p["layers"][4]["kernel"] + p["layers"][4]["bias"]

    # layer 2 changes the width (6 -> 4): no skip there
    np.testing.assert_allclose(both(x, train=True), hand(P, True, (1, 0, 1)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(skip(x), hand(Pp, False, (1, 0, 1)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(plain(x), hand(Pp, False, (0, 0, 0)), rtol=1e-5, atol=1e-5)
    assert not np.allclose(skip(x), plain(x), atol=1e-3)
    with pytest.raises(ValueError, match="sigma_b2 > 0 with batch_norm"):
        landscape.make_model("mlp", batch_norm=True, sigma_b2=0.1, **kw)
    with pytest.raises(TypeError, match="skip must be True or False"):
        landscape.make_model("mlp", skip="yes", **kw)
    assert "norms" in landscape.make_model("mlp", batch_norm=np.True_, **kw).state  # NumPy's bool
    for name, flags in (("mlp", {}), ("cnn", {}), ("resnet", {"batch_norm": True})):
        k = {"input_shape": (6, 6, 1), "num_outputs": 2}
        with pytest.raises(TypeError, match="weight_standardization must be True or False"):
            landscape.make_model(name, weight_standardization="no", **flags, **k)
    with pytest.raises(TypeError, match="ResNet: batch_norm must be True or False"):
        landscape.make_model("resnet", batch_norm=1, **k)
    with pytest.raises(ValueError, match="sigma_b2 must be finite"):  # not "> 0 with batch_norm"
        landscape.make_model("mlp", batch_norm=True, sigma_b2=float("nan"), **kw)
