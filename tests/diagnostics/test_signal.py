"""signal_propagation and depth_sweep: statistics against hand-computed forward and backward
passes (exact), layers found from the program on NNX, Linen, CNN and ResNet models, batch norm
in batch and evaluation mode, the growth and decay of a deep ReLU/tanh network with depth (He
keeps q, LeCun halves it), bad inputs."""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import landscape
import landscape.diagnostics as ld
from landscape.diagnostics import _layers, _signal
from tests.diagnostics._signal_models import hand_forward, inputs, small_resnet, tiny_mlp


def _x64(dtype):
    return jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()


# tolerances: float64 references agree to rounding; float32 to its rounding of O(10) products
TOL = {"float64": 1e-12, "float32": 2e-6}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_statistics_equal_a_hand_written_forward_and_backward_pass(dtype):
    with _x64(dtype):
        m = tiny_mlp("relu", dtype)
        params = jax.tree.map(jnp.asarray, m.params)
        # plant a dead unit (bias -100: zero on every input) in the first layer
        params["layers"][0]["bias"] = params["layers"][0]["bias"].at[2].set(-100.0)
        m = m.replace(params=params)
        x = inputs(dtype=dtype)
        y = np.arange(12) % 3
        # a landscape.Loss in float64, the loss's name in float32 (the plot test's program)
        loss = (
            landscape.make_loss_fn(m, "cross_entropy") if dtype == "float64" else "cross_entropy"
        )
        r = ld.signal_propagation(m, x, loss_fn=loss, targets=y)

        def hand_loss(p, deltas):
            out, _ = hand_forward(p, x, "relu", deltas)
            return landscape.losses.cross_entropy(out, y)

        @jax.jit
        def reference(p):  # one compiled program: forward values and both gradients
            _, zs = hand_forward(p, x, "relu")
            deltas = [jnp.zeros_like(z) for z, _ in zs]
            value, (gp, gz) = jax.value_and_grad(hand_loss, argnums=(0, 1))(p, deltas)
            return value, zs, gp, gz

        value, zs, gp, gz = jax.tree.map(np.asarray, reference(params))
        q = [np.mean(np.square(z)) for z, _ in zs]
        qa = [np.mean(np.square(a)) for _, a in zs]
        dead = [np.mean(np.all(np.asarray(a) == 0, axis=0)) for _, a in zs[:2]]
        zero = [np.mean(np.asarray(a) == 0) for _, a in zs[:2]]
        gpn = [
            np.sqrt(
                np.sum(np.square(gp["layers"][i]["kernel"]))
                + np.sum(np.square(gp["layers"][i]["bias"]))
            )
            for i in range(3)
        ]
        gzn = [np.linalg.norm(np.asarray(g)) for g in gz]
        tol = TOL[dtype]
        np.testing.assert_allclose(r.q, q, rtol=tol)
        np.testing.assert_allclose(r.q_phi, q, rtol=tol)  # no normalisation: u = z
        np.testing.assert_allclose(r.q_act, qa, rtol=tol)
        np.testing.assert_allclose(r.grad_param_norm, gpn, rtol=10 * tol)
        np.testing.assert_allclose(r.grad_preact_norm, gzn, rtol=10 * tol)
        np.testing.assert_allclose(r.loss, value, rtol=tol)
        np.testing.assert_allclose(r.input_q, np.mean(x**2), rtol=tol)
        assert r.dead_units[0] >= 1 / 6 and np.allclose(r.dead_units[:2], dead)
        assert np.allclose(r.zero_fraction[:2], zero)
        assert r.activations == ("relu", "relu", "linear") and r.is_output == (False, False, True)
        assert r.layer_names == ("layers/0/kernel", "layers/1/kernel", "layers/2/kernel")
        assert np.all(np.isnan(r.saturated)) and r.finite.all() and r.bn_mode == "none"
        assert r.provenance["dtype"] == dtype


def test_saturation_of_tanh_and_sigmoid_against_the_threshold_rule(tmp_path):
    x = 3 * inputs()  # large inputs: many saturated units
    for act, sat in (
        ("tanh", lambda a: np.abs(a) > 0.99),
        ("sigmoid", lambda a: np.abs(2 * a - 1) > 0.99),
    ):
        m = tiny_mlp(act)
        r = ld.signal_propagation(m, x)
        _, zs = hand_forward(m.params, x, act)
        want = [np.mean(sat(np.asarray(a))) for _, a in zs[:2]]
        np.testing.assert_allclose(r.saturated[:2], want, rtol=1e-6)
        assert 0 < want[0] < 1 and np.isnan(r.saturated[2]) and r.activations[0] == act
    r.save(tmp_path / "s.npz")
    back = ld.SignalResult.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(back.q, r.q)
    assert back.activations == r.activations and back.bn_mode == r.bn_mode


def test_one_compiled_program_per_model_and_shape():
    m, x = tiny_mlp("relu"), inputs()
    ld.signal_propagation(m, x)
    size = _signal._signal_jit._cache_size()
    ld.signal_propagation(m, x + 1.0)
    ld.signal_propagation(
        tiny_mlp("relu").replace(params=jax.tree.map(lambda a: a * 2, m.params)), x
    )
    assert _signal._signal_jit._cache_size() == size


# --------------------------------------------------------------------------------------------
# layers from the program
# --------------------------------------------------------------------------------------------
def _plan(model, x, train=False):
    return _layers.layer_plan(landscape.as_model(model), jnp.asarray(x), train=train)


def test_layers_found_from_the_program_not_from_names():
    from flax import linen as nn
    from flax import nnx

    class Odd(nnx.Module):  # attribute names that say nothing about layers
        def __init__(self, rngs):
            self.foo = nnx.Linear(5, 4, rngs=rngs)
            self.bar = nnx.Param(jax.random.normal(jax.random.key(1), (4, 4)))
            self.baz = nnx.Linear(4, 2, rngs=rngs)

        def __call__(self, x):
            h = jax.nn.gelu(self.foo(x), approximate=False)
            h = jnp.tanh(h @ self.bar[...])
            return self.baz(h)

    p = _plan(landscape.from_nnx(Odd(nnx.Rngs(0))), np.ones((3, 5)))
    assert [(l.op, l.name, l.activation, l.is_output) for l in p.layers] == [
        ("dense", "foo/kernel", "gelu", False),
        ("dense", "bar", "tanh", False),
        ("dense", "baz/kernel", "linear", True),
    ]
    # the kinds of jax.nn's activations from their primitives; a custom function is "other"
    kinds = {
        "gelu": lambda z: jax.nn.gelu(z, approximate=True),
        "silu": jax.nn.silu,
        "elu": jax.nn.elu,
        "leaky_relu": jax.nn.leaky_relu,
        "softplus": jax.nn.softplus,
        "other": lambda z: z * jnp.tanh(jax.nn.softplus(z)),  # mish
    }
    for kind, f in kinds.items():
        net = landscape.make_model(
            "mlp", input_shape=(5,), num_outputs=2, hidden=(3,), activation=f, seed=0
        )
        assert _plan(net, np.ones((3, 5))).layers[0].activation == kind, kind
    assert p.layers[1].param_paths == ("bar",) and p.layers[0].param_paths == (
        "foo/kernel",
        "foo/bias",
    )

    class Lin(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.Dense(7)(x)
            x = nn.BatchNorm(use_running_average=not train)(x)
            return nn.Dense(3)(nn.sigmoid(x))

    mod = Lin()
    lm = landscape.from_linen(mod, mod.init(jax.random.key(0), jnp.ones((2, 5))))
    for train in (False, True):
        p = _plan(lm, np.ones((4, 5)), train)
        assert [(l.name, l.activation) for l in p.layers] == [
            ("Dense_0/kernel", "sigmoid"),
            ("Dense_1/kernel", "linear"),
        ]
        assert p.layers[0].phi_in != p.layers[0].preact  # u is the batch-norm output

    cnn = landscape.make_model(
        "cnn", input_shape=(6, 6, 1), num_outputs=3, channels=(2, 3), pool=True, readout="flatten"
    )
    p = _plan(cnn, np.ones((2, 6, 6, 1)))
    assert [(l.op, l.activation, l.unit_axes) for l in p.layers] == [
        ("conv", "relu", (3,)),
        ("conv", "relu", (3,)),
        ("dense", "linear", (1,)),
    ]

    p = _plan(small_resnet(), np.ones((2, 6, 6, 1)))
    names = [l.name for l in p.layers]
    assert names == [
        "stem/kernel",
        "blocks/0/conv1/kernel",
        "blocks/0/conv2/kernel",
        "blocks/1/conv1/kernel",
        "blocks/1/conv2/kernel",
        "blocks/1/proj/kernel",
        "head/kernel",
    ]
    L = p.layers
    # the residual sum is the ReLU's input of both branches that meet there (conv2 and the projection)
    assert L[4].phi_in == L[5].phi_in and L[4].act == L[5].act and L[4].phi_in != L[4].preact
    # the stem's activation is its own ReLU, not a later block's output (the skip reaches them)
    assert L[0].act != L[2].act and all(l.activation == "relu" for l in L[:6])


def _scan_model():
    def apply_fn(params, state, x, *, train=False):
        def step(h, w):
            return jnp.tanh(h @ w), None

        h, _ = jax.lax.scan(step, x, params["ws"])
        return h, state

    return landscape.as_model((apply_fn, {"ws": jnp.ones((3, 4, 4)) * 0.1}, {}))


def test_models_whose_layers_cannot_be_enumerated_say_which_operation_stops_it():
    with pytest.raises(
        ld.LayerEnumerationError, match=r"signal_propagation: .*`scan` at .*test_signal.py"
    ):
        ld.signal_propagation(_scan_model(), np.ones((2, 4)))
    no_layer = landscape.as_model(
        (lambda p, s, x, train=False: (x * p["a"][None], s), {"a": jnp.ones(4)}, {})
    )
    with pytest.raises(ld.LayerEnumerationError, match="no dot_general or conv_general_dilated"):
        ld.signal_propagation(no_layer, np.ones((2, 4)))


# --------------------------------------------------------------------------------------------
# batch norm: batch statistics against the running ones (the identity at initialisation)
# --------------------------------------------------------------------------------------------
def test_batch_norm_batch_mode_normalises_eval_mode_is_the_identity_at_init():
    m = small_resnet()
    x = 3.0 + 2.0 * inputs(n=8 * 36, d=1).reshape(8, 6, 6, 1)
    auto = ld.signal_propagation(m, x)
    ev = ld.signal_propagation(m, x, bn_mode="eval")
    assert auto.bn_mode == "batch" and ev.bn_mode == "eval"
    eps = 1e-5  # nnx.BatchNorm's
    # evaluation mode at init: running mean 0, variance 1, scale 1, shift 0 -> u = z / sqrt(1 + eps)
    np.testing.assert_allclose(ev.q_phi[0], ev.q[0] / (1 + eps), rtol=1e-5)
    assert ev.q[0] > 5  # the inputs' mean 3 passes through
    # batch mode: each channel standardised over the batch and positions: mean(u^2) = var / (var + eps)
    np.testing.assert_allclose(auto.q_phi[0], 1.0, atol=1e-3)
    np.testing.assert_allclose(
        auto.q[0], ev.q[0], rtol=1e-6
    )  # the stem's z does not depend on the mode
    assert not np.allclose(auto.q[1:], ev.q[1:], rtol=1e-2)
    np.testing.assert_array_equal(
        jax.tree.leaves(m.state)[0], jax.tree.leaves(m.state)[0] * 1
    )  # no update


# --------------------------------------------------------------------------------------------
# depth: He keeps q, LeCun halves it per layer (ReLU); tanh decays; zeros are dead
# --------------------------------------------------------------------------------------------
def test_depth_sweep_relu_he_keeps_q_lecun_halves_it_and_tanh_decays():
    x = inputs(n=64, d=64, seed=1)
    size = _signal._sweep_jit._cache_size()
    d = ld.depth_sweep(
        "mlp",
        (8,),
        ("zeros", "he_normal", "lecun_normal"),
        x=x,
        activations=("relu", "tanh"),
        width=256,
    )
    # one compiled program per architecture (activation x depth): inits and seeds are vmapped
    assert _signal._sweep_jit._cache_size() - size == 2 and d.num_programs == 2
    assert d.q.shape == (2, 3, 1, 1, 9) and d.grad_preact_norm is None
    assert d.num_layers.tolist() == [[[9]] * 3] * 2 and (d.last_hidden == 7).all()
    q = d.q[0, :, 0]  # relu: (init, seed, layer)

    def ratio(qq):  # geometric mean over the hidden layers of q^(l+1) / q^l
        return np.exp(np.mean(np.log(qq[:, 1:8] / qq[:, 0:7])))

    # finite width 256: each layer's ratio fluctuates by ~sqrt(2 / 256) ~ 9%, the geometric
    # mean of 7 layers by ~3.3%: 10% tolerance (about 3 standard deviations)
    assert abs(ratio(q[1]) - 1.0) < 0.1, ratio(q[1])  # He: sigma_w2 = 2 keeps q
    assert abs(ratio(q[2]) - 0.5) < 0.05, ratio(q[2])  # LeCun: sigma_w2 = 1 halves it
    np.testing.assert_allclose(q[1][:, 0], 2 * np.mean(x**2), rtol=0.1)  # q^1 = sigma_w2 q^0
    assert (q[0][:, 1:] == 0).all() and (d.dead_units[0, 0, 0, :, :8] == 1).all()  # zeros: dead
    qt = d.q[1, 2, 0]  # tanh, LeCun: q^l -> q* = 0 (sigma_w2 = 1, sigma_b2 = 0), monotonically
    assert (np.diff(qt[:, :8], axis=-1) < 0).all() and (qt[:, 7] < 0.5 * qt[:, 0]).all()
    np.testing.assert_array_equal(d.at_last_hidden("q"), d.q[:, :, :, :, 7])


def test_plots(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import landscape.plot as lp

    m, x = tiny_mlp("relu"), inputs()
    r = ld.signal_propagation(m, x, loss_fn="cross_entropy", targets=np.arange(12) % 3)
    axes = lp.plot_signal({"a": r, "b": r})
    assert len(axes) == 2 and axes[0].get_yscale() == "log"
    axes[0].figure.savefig(tmp_path / "s.png")
    # a result with zeros (a dead layer: its q set to 0) on the log axis: a gap in the line
    # and a mark at the bottom, not a vertical drop to the axis' clip value
    dead = r.replace(q=np.where(np.arange(r.num_layers) == 1, 0.0, r.q))
    (a0,) = lp.plot_signal(dead, quantities=["q"])
    line, marks, _proxy = a0.get_lines()
    assert np.isnan(line.get_ydata()[1]) and list(marks.get_xdata()) == [1]
    a0.figure.savefig(tmp_path / "z.png")
    with pytest.raises(ValueError, match="no 'grad_preact_norm'"):
        lp.plot_signal(ld.signal_propagation(m, x), quantities=["grad_preact_norm"])
    d = ld.depth_sweep(
        "mlp",
        (1, 2),
        ("he_normal", "lecun_normal"),
        x=x,
        width=6,
        num_outputs=3,
        loss_fn="cross_entropy",
        targets=np.arange(12) % 3,
    )
    assert d.q.shape == (1, 2, 2, 1, 3) and np.isnan(d.q[0, :, 0, 0, 2]).all()  # padding
    assert d.grad_preact_norm.shape == d.q.shape and d.at_last_hidden(
        "grad_preact_norm"
    ).shape == (1, 2, 2, 1)
    (ax,) = lp.plot_depth_sweep(d)
    assert len(ax.get_lines()) == 2 and ax.get_xlabel() == "depth"


# --------------------------------------------------------------------------------------------
def test_bad_inputs():
    m, x = tiny_mlp("relu"), inputs()
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"signal_propagation: x must be finite; found 1 NaN"):
        ld.signal_propagation(m, bad)
    with pytest.raises(
        ValueError, match=r"could not trace the model on inputs of shape \(12, 7\)"
    ):
        ld.signal_propagation(m, np.ones((12, 7)))
    with pytest.raises(ValueError, match="leading example axis"):
        ld.signal_propagation(m, np.float32(1.0))
    with pytest.raises(TypeError, match="must be an array of inputs"):
        ld.signal_propagation(m, {"x": x})
    with pytest.raises(ValueError, match="bn_mode must be one of"):
        ld.signal_propagation(m, x, bn_mode="train")
    with pytest.raises(ValueError, match=r"saturation must be in \(0, 1\)"):
        ld.signal_propagation(m, x, saturation=1.5)
    with pytest.raises(ValueError, match="needs targets="):
        ld.signal_propagation(m, x, loss_fn="mse")
    with pytest.raises(ValueError, match="targets were given without loss_fn"):
        ld.signal_propagation(m, x, targets=np.zeros(12))
    with pytest.raises(ValueError, match=r"one entry per example of x \(12\)"):
        ld.signal_propagation(m, x, loss_fn="mse", targets=np.zeros(5))
    with pytest.raises(ValueError, match="loss_fn must be one of"):
        ld.signal_propagation(m, x, loss_fn="hinge", targets=np.zeros(12))
    with pytest.raises(ValueError, match="at least 2 examples"):
        ld.signal_propagation(small_resnet(), np.ones((1, 6, 6, 1)))
    with pytest.raises(ValueError, match="depths must not be empty"):
        ld.depth_sweep("mlp", (), x=x)
    with pytest.raises(ValueError, match="builder must be one of"):
        ld.depth_sweep("perceptron", (2,), x=x)
    with pytest.raises(ValueError, match="for 'transformer' pass a callable builder"):
        ld.depth_sweep("transformer", (2,), x=x)  # a registered model it cannot deepen
    with pytest.raises(ValueError, match=r"depths\[i\] must be > 0"):
        ld.depth_sweep("mlp", (0,), x=x)
    with pytest.raises(ValueError, match=r"building depth=1, init='nope'.*unknown init"):
        ld.depth_sweep("mlp", (1,), ("nope",), x=x, width=4)


def test_vanishing_and_exploding_signals_keep_their_values_in_float32():
    # tanh MLP with weights scaled by 1e-10 (tanh(z) = z to 1e-20 there): z^l
    # ~ 1e-10 l-fold, so q ~ 1e-20, 1e-40, 1e-60, below float32's range from the second layer;
    # and the ReLU net scaled by 1e10 (q up to 1e60, beyond it). Every statistic equals the
    # float64 hand computation to float32 rounding (a few products and sums: 1e-5)
    for act, c in (("tanh", 1e-10), ("relu", 1e10)):
        m = tiny_mlp(act, "float32")
        x = inputs(dtype="float32")
        y = np.arange(12) % 3
        params = {  # kernels times c, layer l's bias times c^(l+1): z^l ~ c^(l+1)
            "layers": {
                i: {
                    "kernel": jnp.asarray(ly["kernel"]) * jnp.float32(c),
                    "bias": jnp.asarray(ly["bias"]) * jnp.float32(c ** (i + 1)),
                }
                for i, ly in m.params["layers"].items()
            }
        }
        # with a loss for tanh (its gradient at layer 1 is ~1e-20 per entry: a naive norm reads
        # 0); ReLU's outputs of 1e30 overflow any loss in float32, so none there
        loss = {"loss_fn": "mse", "targets": np.eye(3)[y]} if act == "tanh" else {}
        r = ld.signal_propagation(m.replace(params=params), x, **loss)
        p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
        h, zs = x.astype(np.float64), []  # by hand in NumPy float64
        for i in range(3):
            z = h @ p64["layers"][i]["kernel"] + p64["layers"][i]["bias"]
            h = (np.tanh(z) if act == "tanh" else np.maximum(z, 0)) if i < 2 else z
            zs.append((z, h))
        q = np.array([np.mean(z**2) for z, _ in zs])
        assert q.min() < 1e-40 or q.max() > 1e40  # beyond float32's range
        np.testing.assert_allclose(r.q, q, rtol=1e-5)
        np.testing.assert_allclose(r.q_act[:2], [np.mean(a**2) for _, a in zs[:2]], rtol=1e-5)
        assert r.finite.all() and (r.zero_fraction[:2] < 1).all()
        if act == "tanh":
            assert 1e-25 < r.grad_preact_norm[0] < 1e-15 and r.grad_param_norm[0] > 0


def test_gradient_norms_neither_underflow_nor_overflow_in_float32():
    # a vanishing gradient of 1e-25 squares to 1e-50 (zero in float32) and an exploding one of
    # 1e25 to infinity: the norm is scaled by the largest entry first, so both keep their value
    # (to float32 rounding of a sum of ten terms)
    for scale in (1e-25, 1e25, 1.0):
        g = np.linspace(1, 2, 10).astype(np.float32) * np.float32(scale)
        want = np.linalg.norm(g.astype(np.float64))
        got = float(_signal._scaled_norm([jnp.asarray(g[:4]), jnp.asarray(g[4:])]))
        assert got == pytest.approx(want, rel=1e-6), scale
        if scale != 1.0:  # the naive norm is 0 or inf there
            naive = float(jnp.sqrt(jnp.sum(jnp.square(jnp.asarray(g)))))
            assert naive != pytest.approx(want, rel=1e-3, abs=0)
    assert float(_signal._scaled_norm([jnp.zeros(3, jnp.float32)])) == 0.0
    assert np.isnan(float(_signal._scaled_norm([jnp.array([1.0, np.nan], jnp.float32)])))
    assert np.isinf(float(_signal._scaled_norm([jnp.array([1.0, np.inf], jnp.float32)])))


def test_depth_sweep_of_make_models_mlp_with_batch_norm_and_skips():
    # z_l = z_{l-1} + BN(W relu(z_{l-1})) in batch mode: the first hidden layer's normalised
    # pre-activation has second moment 1 - eps/var (to 1e-4), and each residual block adds a
    # unit-second-moment term (cross terms average out: mean increment 1 within 0.2 at width 64
    # over 64 inputs and 7 blocks)
    x = inputs(n=64, d=64, seed=1)
    d = ld.depth_sweep(
        "mlp",
        (8,),
        ("he_normal",),
        x=x,
        activations=("relu",),
        width=64,
        batch_norm=True,
        skip=True,
    )
    assert d.bn_mode == "batch" and d.num_layers.tolist() == [[[9]]]
    stream = d.q_phi[0, 0, 0, 0, :8]
    assert abs(stream[0] - 1) < 1e-4
    assert abs(np.diff(stream).mean() - 1) < 0.2 and (np.diff(stream) > 0.5).all()


def test_a_float64_signal_beyond_float64s_range_is_not_finite():
    # |z| ~ 1e160: its square overflows float64 on the host; the layer is flagged and warned
    with jax.enable_x64(True):
        m = tiny_mlp("relu", "float64")
        params = jax.tree.map(lambda a: jnp.asarray(a) * 1e80, m.params)
        with pytest.warns(RuntimeWarning, match="not finite at layer"):
            r = ld.signal_propagation(m.replace(params=params), inputs(dtype="float64"))
    assert np.isfinite(r.q[0]) and r.finite[0] and not r.finite[1:].any()
