"""Permutation alignment: traced permutation groups (MLP, CNN, ResNet with and without skips and
batch norm), permuted networks compute the same function, planted permutations are recovered
exactly by weight and activation matching, weight matching lowers the linear barrier of two
independently trained MLPs, unsupported models raise naming the operation, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.extend import core as jcore

import landscape
import landscape.connect as lc
from landscape.connect._trace import _RULES, UnsupportedModelError
from tests._util import assert_trees_close
from tests.connect._helpers import fast_model

# registry architectures with host-drawn random parameters and statistics (fast_model)
ARCHS = {
    "mlp": ("mlp", dict(hidden=(32, 32)), (64,)),
    "cnn": ("cnn", dict(channels=(4, 4), pool=True), (8, 8, 1)),
    "cnn_flatten": ("cnn", dict(channels=(4, 4), readout="flatten"), (8, 8, 1)),
    "resnet_bn_skip": ("resnet", dict(widths=(4, 4)), (8, 8, 1)),
    "resnet_noskip_nobn": ("resnet", dict(widths=(4, 4), skip=False, batch_norm=False), (8, 8, 1)),
    "resnet_skip_nobn_2blocks": ("resnet", dict(widths=(4, 4), blocks=2, batch_norm=False), (8, 8, 1)),
}


def _model(arch):
    name, kw, shape = ARCHS[arch]
    return fast_model(name, input_shape=shape, **kw), shape


def _random_state(m, seed):
    # batch-norm statistics away from their (0, 1) initial values, so permuting them matters
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(rng.uniform(0.5, 1.5, x.shape), x.dtype), m.state)


def test_traced_groups():
    m, shape = _model("mlp")
    spec = lc.permutation_spec(m, np.zeros((2, *shape), np.float32))
    assert spec.groups == {"layers/0/kernel[1]": 32, "layers/1/kernel[1]": 32}
    assert spec.param_axes["layers/0/kernel"] == (None, "layers/0/kernel[1]")
    assert spec.param_axes["layers/1/kernel"] == ("layers/0/kernel[1]", "layers/1/kernel[1]")
    assert spec.param_axes["layers/2/kernel"] == ("layers/1/kernel[1]", None)
    assert spec.param_axes["layers/2/bias"] == (None,)
    # residual additions tie the stem, every block output and the next block's inputs
    m, shape = _model("resnet_bn_skip")
    spec = lc.permutation_spec(m, np.zeros((2, *shape), np.float32))
    stream = spec.param_axes["stem/kernel"][3]
    assert spec.param_axes["blocks/0/conv2/kernel"][3] == stream
    assert spec.param_axes["blocks/1/conv1/kernel"][2] == stream
    assert spec.param_axes["blocks/1/proj/kernel"][2] == stream
    assert spec.param_axes["stem_bn/scale"] == (stream,)
    assert spec.state_axes["stem_bn/mean"] == (stream,) and spec.state_axes["blocks/0/bn2/var"] == (stream,)
    assert spec.param_axes["blocks/1/proj/kernel"][3] == spec.param_axes["blocks/1/conv2/kernel"][3]
    assert len(spec.groups) == 4
    # without skips every layer has its own group
    m, shape = _model("resnet_noskip_nobn")
    spec = lc.permutation_spec(m, np.zeros((2, *shape), np.float32))
    assert spec.param_axes["stem/kernel"][3] != spec.param_axes["blocks/0/conv2/kernel"][3]
    assert len(spec.groups) == 5
    assert "groups" in repr(spec)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_permuted_network_computes_the_same_function(arch, digits_images, digits_data):
    m, shape = _model(arch)
    m = m.replace(state=_random_state(m, 1))
    data = digits_data if len(shape) == 1 else digits_images
    spec = lc.permutation_spec(m, data.train["x"][:2])
    rng = np.random.default_rng(0)
    perms = {g: rng.permutation(n) for g, n in spec.groups.items()}
    apply = jax.jit(m.apply_fn)
    for x64 in (True, False):
        with jax.enable_x64(x64):
            dtype = jnp.float64 if x64 else jnp.float32
            params, state = (jax.tree.map(lambda v, d=dtype: jnp.asarray(v, d), t) for t in (m.params, m.state))
            x = jnp.asarray(data.train["x"][:64], dtype)
            pp, ps = lc.permute(spec, params, perms, state)
            assert not all(np.array_equal(np.asarray(u), np.asarray(v)) for u, v in
                           zip(jax.tree.leaves(pp), jax.tree.leaves(params)))
            y0, _ = apply(params, state, x)
            y1, _ = apply(pp, ps, x)
            assert y0.dtype == dtype
            scale = float(jnp.max(jnp.abs(y0)))
            # float64: reordered sums only (1e-12); float32: 1e-6 relative to the output scale
            tol = 1e-12 if x64 else 1e-6
            assert float(jnp.max(jnp.abs(y1 - y0))) <= tol * max(scale, 1.0), arch


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("method", ["weights", "activations"])
def test_planted_permutation_recovered_exactly(arch, method, digits_images, digits_data, key):
    m, shape = _model(arch)
    m = m.replace(state=_random_state(m, 2))
    data = digits_data if len(shape) == 1 else digits_images
    sub = {"x": data.train["x"][:200], "y": data.train["y"][:200]}
    spec = lc.permutation_spec(m, sub["x"][:2])
    rng = np.random.default_rng(3)
    planted = {g: rng.permutation(n) for g, n in spec.groups.items()}
    pb, sb = lc.permute(spec, m.params, planted, m.state)
    al = lc.align(m, m, landscape.Model(m.apply_fn, pb, sb), method=method, data=sub, key=key)
    for g, n in spec.groups.items():
        # aligned unit i is B's unit perms[g][i], which is A's unit planted[g][perms[g][i]]
        np.testing.assert_array_equal(planted[g][al.perms[g]], np.arange(n), err_msg=g)
    assert_trees_close(al.params, m.params, rtol=0, atol=0)
    if jax.tree.leaves(m.state):
        assert_trees_close(al.state, m.state, rtol=0, atol=0)
    assert al.converged


def test_weight_matching_lowers_the_linear_barrier(weight_alignment, trained_pair, pair_loss,
                                                   pair_params, digits_data, linear_profile):
    al = weight_alignment
    a, b = pair_params
    # aligned B is B with permuted units: the same function
    x = jnp.asarray(digits_data.test["x"])
    m = trained_pair[1].model
    np.testing.assert_allclose(m(x, params=al.params), m(x), rtol=1e-5, atol=1e-5)
    assert al.converged and al.num_iters <= 100
    assert np.all(np.diff(al.objective) >= -1e-9)
    pr = lc.profile(pair_loss, lc.linear_path(a, al.params), digits_data.train, test_data=digits_data.test)
    before, after = lc.barrier(linear_profile), lc.barrier(pr)
    print(f"\nlinear barrier (train loss) {before.get():.4f} -> {after.get():.4f} after weight matching")
    # measured: 0.82 -> 0.07 nats (92% lower); error barrier 25% -> 1.7%
    assert after.get() < 0.3 * before.get()
    assert after.get("error") < 0.3 * before.get("error")


def test_activation_matching_lowers_the_linear_barrier(trained_pair, pair_loss, pair_params,
                                                       digits_data, linear_profile):
    a, b = pair_params
    al = lc.align(trained_pair[0].model, a, b, method="activations", data=digits_data.train)
    pr = lc.profile(pair_loss, lc.linear_path(a, al.params), digits_data.train, refine=False)
    assert lc.barrier(pr).get() < 0.3 * lc.barrier(linear_profile).get()


def test_alignment_save_load_and_apply(weight_alignment, pair_params, tmp_path):
    al = weight_alignment
    al.save(tmp_path / "al.npz")
    back = lc.Alignment.load(tmp_path / "al.npz")
    assert_trees_close(back.params, al.params, rtol=0, atol=0)
    assert back.groups == al.groups and back.method == "weights"
    assert_trees_close(back.apply(pair_params[1]), al.params, rtol=0, atol=0)
    assert "Alignment(weights" in repr(al)


class _CumsumNet(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(4, 6, rngs=rngs)
        self.l2 = nnx.Linear(6, 3, rngs=rngs)

    def __call__(self, x):
        return self.l2(jnp.cumsum(jax.nn.relu(self.l1(x)), axis=-1))


class _SliceNet(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(4, 6, rngs=rngs)
        self.l2 = nnx.Linear(3, 3, rngs=rngs)

    def __call__(self, x):
        return self.l2(jax.nn.relu(self.l1(x))[:, :3])


def test_flatten_readout_permutes_blocks():
    m, shape = _model("cnn_flatten")
    spec = lc.permutation_spec(m, np.zeros((2, *shape), np.float32))
    # the dense head's input axis is (8 * 8 positions) x (4 channels): a flattened block
    assert spec.param_axes["head/kernel"] == (("convs/1/kernel[3]", 64, 1), None)
    assert "flattened 64 x units x 1" in repr(spec)


def test_unsupported_models_raise_naming_the_operation(key):
    shape = (4,)
    cum = landscape.from_nnx(_CumsumNet(nnx.Rngs(0)))
    with pytest.raises(UnsupportedModelError, match=r"l1/kernel\[1\].*`cumsum`.*test_align\.py"):
        lc.permutation_spec(cum, np.zeros((2, *shape), np.float32))
    with pytest.raises(UnsupportedModelError, match="align: cannot derive"):
        lc.align(cum, cum.params, cum.params, example_input=np.zeros((2, *shape), np.float32), key=key)
    sl = landscape.from_nnx(_SliceNet(nnx.Rngs(0)))
    with pytest.raises(UnsupportedModelError, match="slicing along permuted units"):
        lc.permutation_spec(sl, np.zeros((2, *shape), np.float32))
    spec = lc.permutation_spec(sl, np.zeros((2, *shape), np.float32), on_unsupported="fix")
    assert spec.groups == {} and "l1/kernel[1]" in spec.unsupported
    grouped = landscape.from_nnx(_GroupedConvNet(nnx.Rngs(0)))
    with pytest.raises(UnsupportedModelError, match="grouped convolution"):
        lc.permutation_spec(grouped, np.zeros((2, 6, 6, 2), np.float32))


# a primitive no rule knows (neither elementwise nor a call): the default rule must poison
_opaque_p = jcore.Primitive("opaque_test_op")
_opaque_p.def_impl(lambda x: 2 * x)
_opaque_p.def_abstract_eval(lambda x: x)


def test_unknown_primitives_poison_the_groups_they_touch():
    assert "opaque_test_op" not in _RULES and _RULES["dot_general"] is not _RULES["add"]

    def f(p, x):
        h1 = jax.nn.relu(x @ p["w1"])
        h2 = _opaque_p.bind(jax.nn.relu(h1 @ p["w2"]))
        return h2 @ p["w3"]

    rng = np.random.default_rng(0)
    params = {k: jnp.asarray(rng.normal(size=s), jnp.float32)
              for k, s in {"w1": (4, 5), "w2": (5, 6), "w3": (6, 3)}.items()}
    m = landscape.Model(lambda p, s, x, *, train=False: (f(p, x), s), params, {})
    x = np.zeros((2, 4), np.float32)
    with pytest.raises(UnsupportedModelError,
                       match=r"w2\[1\].*`opaque_test_op` at .*test_align\.py.*not known to be "
                             r"permutation-equivariant"):
        lc.permutation_spec(m, x)
    spec = lc.permutation_spec(m, x, on_unsupported="fix")
    # the group before the unknown operation is untouched, the one it reaches is left unpermuted
    assert spec.groups == {"w1[1]": 5} and list(spec.unsupported) == ["w2[1]"]
    assert spec.param_axes["w2"] == ("w1[1]", None) and spec.param_axes["w3"] == (None, None)


class _GroupedConvNet(nnx.Module):
    def __init__(self, rngs):
        self.c1 = nnx.Conv(2, 4, (3, 3), rngs=rngs)
        self.c2 = nnx.Conv(4, 4, (3, 3), feature_group_count=2, rngs=rngs)
        self.head = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
        return self.head(jax.nn.relu(self.c2(jax.nn.relu(self.c1(x)))).mean(axis=(1, 2)))


def test_align_bad_input(trained_pair, pair_params, key):
    m = trained_pair[0].model
    a, b = pair_params
    with pytest.raises(ValueError, match="method must be one of"):
        lc.align(m, a, b, method="sinkhorn", key=key)
    with pytest.raises(ValueError, match="method='activations' needs data"):
        lc.align(m, a, b, method="activations")
    with pytest.raises(ValueError, match="params_b must have the same tree structure as model.params"):
        lc.align(m, a, {"w": jnp.zeros(3)}, key=key)
    with pytest.raises(ValueError, match=r"params_b leaf 'layers/0/kernel' has shape"):
        lc.align(m, a, jax.tree.map(lambda x: x[..., :2] if x.ndim == 2 else x, b), key=key)
    with pytest.raises(TypeError, match="align: model must be a landscape.Model"):
        lc.align("mlp", a, b, key=key)
    bare = landscape.Model(m.apply_fn, m.params, m.state)  # no spec: no known input shape
    with pytest.raises(ValueError, match="give example_input"):
        lc.align(bare, a, b, key=key)
    spec = lc.permutation_spec(m, np.zeros((2, 64), np.float32))
    with pytest.raises(ValueError, match="must be a permutation of range"):
        lc.permute(spec, a, {"layers/0/kernel[1]": np.zeros(32, int)})
    with pytest.raises(ValueError, match="unknown group"):
        lc.permute(spec, a, {"nope": np.arange(3)})


def test_weight_matching_needs_a_key(key):
    m, shape = _model("mlp")
    m2 = fast_model("mlp", input_shape=shape, seed=5, hidden=(32, 32))
    ex = {"example_input": np.zeros((2, *shape), np.float32)}
    with pytest.raises(TypeError, match=r"landscape.connect.align: key is required"):
        lc.align(m, m, m2, **ex)
    with pytest.raises(TypeError, match=r"align: key must be a JAX PRNG key"):
        lc.align(m, m, m2, key=0, **ex)
    al = lc.align(m, m, m2, key=key, **ex)
    again = lc.align(m, m, m2, key=jax.random.key(0), **ex)
    assert all(np.array_equal(al.perms[g], again.perms[g]) for g in al.perms)
    assert list(al.provenance["seeds"]) == np.asarray(jax.random.key_data(key)).tolist()
    assert "seed" not in al.provenance["settings"]
    # activation matching is deterministic: no key needed
    sub = {"x": np.random.default_rng(0).normal(size=(16, *shape)).astype(np.float32)}
    act = lc.align(m, m, m2, method="activations", data=sub)
    assert act.provenance["seeds"] is None


def test_batch_norm_state_of_b_is_required(key, digits_images):
    # A and B: the same batch-norm ResNet with different weights and different statistics
    m, shape = _model("resnet_bn_skip")
    a = m.replace(state=_random_state(m, 1))
    b = fast_model("resnet", input_shape=shape, seed=5, widths=(4, 4))
    b = b.replace(state=_random_state(b, 2))
    x = jnp.asarray(digits_images.train["x"][:32])
    ex = {"example_input": np.asarray(x[:2])}
    # before: A's statistics (model.state) were silently permuted as B's
    with pytest.raises(ValueError, match=r"align: the model has floating state .* pass state_b="):
        lc.align(a, a.params, b.params, key=key, **ex)
    for al in (lc.align(a, a.params, b.params, state_b=b.state, key=key, **ex),
               lc.align(a, a.params, b, key=key, **ex)):
        y_aligned, _ = a.apply_fn(al.params, al.state, x)
        np.testing.assert_allclose(y_aligned, b(x), rtol=1e-5, atol=1e-5)  # B's function
    # activation matching runs A too: A's statistics must be known as well
    sub = {"x": np.asarray(digits_images.train["x"][:64])}
    copy_a = jax.tree.map(jnp.array, a.params)  # not model.params: model.state is not known A's
    with pytest.raises(ValueError, match=r"network A's state is not given: pass state_a="):
        lc.align(a, copy_a, b, method="activations", data=sub)
    al = lc.align(a, copy_a, b, state_a=a.state, method="activations", data=sub)
    y_aligned, _ = a.apply_fn(al.params, al.state, x)
    np.testing.assert_allclose(y_aligned, b(x), rtol=1e-5, atol=1e-5)
    # weight matching needs only B's state; A's parameters need not be model.params
    lc.align(a, copy_a, b, key=key, **ex)
