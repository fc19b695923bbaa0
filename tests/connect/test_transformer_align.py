"""Permutation alignment of transformers (issue 16): the traced groups of a 2-block pre-LN
transformer (heads, per-head query/key and value dimensions, MLP units, the residual stream),
a planted permutation of all of them is recovered exactly and the aligned model computes the
same function (float32 and float64), two briefly trained models' barrier before and after, and
the models whose symmetries the tracer must refuse or restrict (rotary embeddings, a head
split by reshaping a flat kernel, a within-head map shared by every head, a bias broadcast over
heads)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import landscape
import landscape.connect as lc
from landscape.connect._trace import UnsupportedModelError
from tests._util import assert_trees_close
from tests.connect._helpers import fast_model, fast_nnx

SHAPE = (8, 3)  # signals of 8 samples, 3 channels: patch 2 gives 4 tokens of 6 values
CFG = dict(width=16, depth=2, heads=2, mlp_ratio=2, patch=2)
H0, H1 = "blocks/0/attn/query/kernel[1]", "blocks/1/attn/query/kernel[1]"  # the heads
QK0, V0 = "blocks/0/attn/query/kernel[2]", "blocks/0/attn/value/kernel[2]"
RES, MLP0 = "embed/kernel[1]", "blocks/0/mlp/fc1/kernel[1]"


def _x(n=16, seed=0):
    return np.random.default_rng(seed).normal(size=(n, *SHAPE)).astype(np.float32)


@pytest.fixture(scope="module")
def tf():
    m = fast_model("transformer", input_shape=SHAPE, **CFG)
    return m, lc.permutation_spec(m, _x(2))


@pytest.fixture(scope="module")
def apply(tf):
    return jax.jit(tf[0].apply_fn)  # one compilation per dtype, shared by the tests


def _planted(spec, seed):
    """A random permutation of every group; a per-head group gets a different row per head."""
    rng = np.random.default_rng(seed)
    out = {}
    for g, n in spec.groups.items():
        if g in spec.per:
            rows = [rng.permutation(n) for _ in range(spec.groups[spec.per[g]])]
            while all(np.array_equal(r, rows[0]) for r in rows):  # pragma: no cover - 8! rows
                rows[-1] = rng.permutation(n)
            out[g] = np.stack(rows)
        else:
            out[g] = rng.permutation(n)
    return out


def test_traced_groups(tf):
    m, spec = tf
    # derived from the program, so named after the first kernel axes that carry them
    assert spec.groups[H0] == 2 and spec.groups[QK0] == 8 and spec.groups[V0] == 8
    assert spec.groups[RES] == 16 and spec.groups[MLP0] == 32 and len(spec.groups) == 9
    # per-head groups: Q/K and V/O dimensions, one permutation per head of their block
    assert spec.per == {
        QK0: H0,
        V0: H0,
        QK0.replace("/0/", "/1/"): H1,
        V0.replace("/0/", "/1/"): H1,
    }
    a = spec.param_axes
    assert a["blocks/0/attn/query/kernel"] == (RES, H0, QK0)
    assert a["blocks/0/attn/key/kernel"] == (RES, H0, QK0)
    assert a["blocks/0/attn/key/bias"] == (H0, QK0)
    assert a["blocks/0/attn/value/kernel"] == (RES, H0, V0)
    assert a["blocks/0/attn/out/kernel"] == (H0, V0, RES)
    assert a["blocks/0/mlp/fc2/kernel"] == (MLP0, RES)
    # the residual stream: tied through both blocks, the embedding, positions, LayerNorms, head
    for path in (
        "embed/bias",
        "ln_f/scale",
        "ln_f/bias",
        "blocks/1/ln2/scale",
        "blocks/1/attn/out/bias",
        "blocks/1/mlp/fc2/bias",
    ):
        assert a[path] == (RES,), path
    assert a["pos"] == (None, RES) and a["head/kernel"] == (RES, None)
    assert a["head/bias"] == (None,) and a["embed/kernel"] == (None, RES)
    # the products a head's dimensions are contracted in: scores (Q with K), output (V with O)
    assert {p for side in spec._sides[QK0] for p, _ in side} == {
        "blocks/0/attn/query/kernel",
        "blocks/0/attn/query/bias",
        "blocks/0/attn/key/kernel",
        "blocks/0/attn/key/bias",
    }
    assert sorted(len(s) for s in spec._sides[V0]) == [1, 2]
    assert "per unit of blocks/0/attn/query/kernel[1]" in repr(spec)


def _max_err(a, b):
    return max(
        float(np.max(np.abs(np.asarray(u) - np.asarray(v))))
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


def test_permuted_transformer_computes_the_same_function(tf, apply):
    m, spec = tf
    perms = _planted(spec, 1)
    pp32 = lc.permute(spec, m.params, perms)  # permuting commutes with the cast: permute once
    for x64 in (True, False):
        with jax.enable_x64(x64):
            dtype = jnp.float64 if x64 else jnp.float32
            # cast on the host (exact: float32 -> float64, or no cast): no program per leaf
            params = jax.tree.map(lambda v, d=dtype: jax.device_put(np.asarray(v, d)), m.params)
            x = jnp.asarray(_x(32), dtype)
            pp = jax.tree.map(lambda v, d=dtype: jax.device_put(np.asarray(v, d)), pp32)
            assert _max_err(pp, params) > 0.1
            y0, _ = apply(params, m.state, x)
            y1, _ = apply(pp, m.state, x)
            scale = max(float(jnp.max(jnp.abs(y0))), 1.0)
            # reordered sums only: 1e-12 (float64), 1e-6 of the output scale (float32)
            assert float(jnp.max(jnp.abs(y1 - y0))) <= (1e-12 if x64 else 1e-6) * scale
    # a per-head row that is the same for every head (the shared permutation) is accepted
    shared = dict(perms, **{QK0: perms[QK0][0]})
    pp = lc.permute(spec, m.params, shared)
    np.testing.assert_array_equal(
        pp["blocks"][0]["attn"]["query"]["bias"],
        lc.permute(spec, m.params, dict(perms, **{QK0: np.stack([perms[QK0][0]] * 2)}))["blocks"][
            0
        ]["attn"]["query"]["bias"],
    )


@pytest.mark.parametrize("head_match", ["weights", "products"])
def test_planted_permutation_recovered_exactly(tf, apply, head_match, key):
    m, spec = tf
    planted = _planted(spec, 2)
    pb = lc.permute(spec, m.params, planted)
    al = lc.align(m, m.params, pb, example_input=_x(2), key=key, head_match=head_match)
    assert al.converged and al.per == spec.per and al.head_match == head_match
    # aligned unit i is B's unit perms[i], which is A's planted[perms[i]] (per head: aligned
    # (i, a) is B's (p_h[i], p_g[i, a]), which is A's (P_h[p_h[i]], P_g[p_h[i], p_g[i, a]]))
    for g, n in spec.groups.items():
        if g in spec.per:
            ph, Ph = al.perms[spec.per[g]], planted[spec.per[g]]
            for i in range(len(ph)):
                assert Ph[ph[i]] == i
                np.testing.assert_array_equal(planted[g][ph[i]][al.perms[g][i]], np.arange(n))
        else:
            np.testing.assert_array_equal(planted[g][al.perms[g]], np.arange(n), err_msg=g)
    assert_trees_close(al.params, m.params, rtol=0, atol=0)
    x = jnp.asarray(_x(32))
    np.testing.assert_allclose(
        apply(al.params, m.state, x)[0], apply(pb, m.state, x)[0], rtol=0, atol=1e-5
    )
    # head products: far apart before, equal after (B is a permuted copy of A)
    assert set(al.head_products) == set(spec.per)
    for g, d in al.head_products.items():
        assert d["heads"] == spec.per[g] and d["before"] > 0.3 and d["after"] < 1e-12, (g, d)
    assert np.all(np.diff(al.objective) >= -1e-9)


@pytest.mark.parametrize(
    "kw",
    [dict(tie_qk=True), dict(positions="sinusoidal", causal=True, pool="last", use_bias=False)],
)
def test_variants(kw, key):
    m = fast_model("transformer", input_shape=SHAPE, **{**CFG, "depth": 1}, **kw)
    spec = lc.permutation_spec(m, _x(2))
    qk = "blocks/0/attn/query/kernel[2]"
    assert spec.per[qk] == "blocks/0/attn/query/kernel[1]"
    if kw.get("tie_qk"):  # Q and K are one kernel: the score product is W_Q W_Q^T
        assert spec._sides[qk][0] == spec._sides[qk][1]
    else:  # a fixed encoding added to the residual stream: the stream cannot be permuted
        assert RES not in spec.groups and spec.param_axes["head/kernel"] == (None, None)
    planted = _planted(spec, 3)
    pb = lc.permute(spec, m.params, planted)
    al = lc.align(m, m.params, pb, example_input=_x(2), key=key, head_match="products")
    assert_trees_close(al.params, m.params, rtol=0, atol=0)


def test_barrier_of_two_briefly_trained_transformers(digits_images, key):
    tr = digits_images.train
    data = {"x": jnp.asarray(tr["x"][:256]), "y": jnp.asarray(tr["y"][:256])}
    shape = data["x"].shape[1:]
    kw = dict(width=16, depth=1, heads=2, mlp_ratio=2, patch=4)
    m = fast_model("transformer", input_shape=shape, seed=0, **kw)
    loss = landscape.make_loss_fn(m)
    opt = optax.adam(3e-3)

    @jax.jit
    def fit(p):  # 60 full-batch Adam steps, one compilation for both networks
        def step(c, _):
            p, s = c
            u, s = opt.update(jax.grad(lambda q: loss(q, data)[0])(p), s, p)
            return (optax.apply_updates(p, u), s), None

        return jax.lax.scan(step, (p, opt.init(p)), None, length=60)[0][0]

    a = fit(m.params)
    b = fit(fast_model("transformer", input_shape=shape, seed=1, **kw).params)
    pr = lc.profile(loss, lc.linear_path(a, b), data, num_ts=9, refine=False)
    end = {k: pr.train[k][-1] for k in ("loss", "accuracy")}
    out = {
        "ends": (round(float(pr.train["loss"][0]), 4), round(float(end["loss"]), 4)),
        "before": lc.barrier(pr).get(),
    }
    # head_match="weights" only: "products" is checked on the planted permutation (exact
    # recovery, same function) in test_planted_permutation_recovered_exactly
    for hm in ("weights",):
        al = lc.align(m, a, b, data=data, key=key, head_match=hm)
        pr = lc.profile(loss, lc.linear_path(a, al.params), data, num_ts=9, refine=False)
        # aligned B is B with permuted units: the same function (loss and accuracy at t = 1;
        # the outputs themselves are compared in test_planted_permutation_recovered_exactly)
        for k, v in end.items():
            np.testing.assert_allclose(pr.train[k][-1], v, rtol=1e-5, err_msg=k)
        out[hm] = lc.barrier(pr).get()
        d = {g: (round(v["before"], 3), round(v["after"], 3)) for g, v in al.head_products.items()}
        print(f"\nhead_match={hm}: head-product distances (before, after) {d}")
        assert all(np.isfinite(v["after"]) for v in al.head_products.values())
    print(f"linear barrier (train loss, max excess): {out}")
    assert all(np.isfinite(v) for k, v in out.items() if k != "ends")


# -- models whose symmetries must be refused or restricted -----------------------------------
class _Attn(nnx.Module):
    """One attention layer on (N, T, d) with head-axis kernels, and a variant switch."""

    def __init__(self, rngs, *, variant, d=8, heads=2):
        dh = d // heads
        r = rngs.params
        self.variant = variant
        qshape = (d, heads * dh) if variant == "flat" else (d, heads, dh)
        self.q = nnx.Param(jax.random.normal(r(), qshape))
        self.k = nnx.Param(jax.random.normal(r(), (d, heads, dh)))
        self.v = nnx.Param(jax.random.normal(r(), (d, heads, dh)))
        self.o = nnx.Param(jax.random.normal(r(), (heads, dh, d)))
        self.mix = nnx.Param(jax.random.normal(r(), (dh, dh))) if variant == "shared_mix" else None
        self.vb = nnx.Param(jax.random.normal(r(), (dh,))) if variant == "shared_bias" else None
        self.heads, self.dh = heads, dh

    def __call__(self, x):
        if self.variant == "flat":  # one (d, heads * d_head) kernel split into heads
            q = (x @ self.q[...]).reshape(*x.shape[:-1], self.heads, self.dh)
        else:
            q = jnp.einsum("ntd,dhk->nthk", x, self.q[...])
        k = jnp.einsum("ntd,dhk->nthk", x, self.k[...])
        v = jnp.einsum("ntd,dhk->nthk", x, self.v[...])
        if self.variant == "rotary":  # rotate pairs of query/key dimensions by position
            t = jnp.arange(x.shape[1], dtype=x.dtype)[None, :, None, None]
            half = self.dh // 2

            def rot(z):
                z1, z2 = z[..., :half], z[..., half:]
                return jnp.concatenate(
                    [z1 * jnp.cos(t) - z2 * jnp.sin(t), z1 * jnp.sin(t) + z2 * jnp.cos(t)], axis=-1
                )

            q, k = rot(q), rot(k)
        if self.variant == "shared_mix":  # one d_head x d_head map used by every head
            q = jnp.einsum("nthk,kl->nthl", q, self.mix[...])
        if self.variant == "shared_bias":  # a value bias broadcast over heads
            v = v + self.vb[...][None, None, None, :]
        if self.variant == "cross_heads":  # every query head against the sum of key heads
            a = jax.nn.softmax(jnp.einsum("nthk,nsjk->nhts", q, k), axis=-1)
        else:
            a = jax.nn.softmax(jnp.einsum("nthk,nshk->nhts", q, k), axis=-1)
        y = jnp.einsum("nhts,nshk->nthk", a, v)
        return jnp.einsum("nthk,hkd->ntd", y, self.o[...]).mean(axis=1)


def _attn_model(variant):
    return fast_nnx(lambda: _Attn(nnx.Rngs(0), variant=variant))


XA = np.zeros((2, 3, 8), np.float32)


def test_plain_attention_layer_is_per_head():
    spec = lc.permutation_spec(_attn_model("plain"), XA)
    assert spec.per == {"q[2]": "q[1]", "v[2]": "q[1]"}
    assert spec.param_axes["q"] == (None, "q[1]", "q[2]")  # the data's axis is not permuted
    assert spec.param_axes["o"] == ("q[1]", "v[2]", None)


def test_rotary_embeddings_break_the_query_key_permutation(key):
    m = _attn_model("rotary")
    with pytest.raises(
        UnsupportedModelError,
        match=r"units of k\[2\] \(parameter axes k\[2\]\).*`slice`.*rot.*slicing along "
        r"permuted units",
    ):
        lc.permutation_spec(m, XA)
    spec = lc.permutation_spec(m, XA, on_unsupported="fix")
    # query/key dimensions left unpermuted; heads and value dimensions still permute per head
    assert set(spec.unsupported) == {"q[2]", "k[2]"} and spec.per == {"v[2]": "q[1]"}
    assert set(spec.groups) == {"q[1]", "v[2]"}
    assert spec.param_axes["q"] == (None, "q[1]", None)
    al = lc.align(m, m.params, m.params, example_input=XA, key=key, on_unsupported="fix")
    assert set(al.perms) == set(spec.groups)


def test_flat_kernel_split_into_heads_is_refused():
    # the reshape splits one kernel axis into (heads, d_head): refused, not guessed
    with pytest.raises(UnsupportedModelError, match=r"reshape merging or splitting"):
        lc.permutation_spec(_attn_model("flat"), XA)


@pytest.mark.parametrize(
    "variant, group", [("shared_mix", "q[2]"), ("shared_bias", "v[2]"), ("cross_heads", "q[2]")]
)
def test_maps_shared_by_heads_restrict_to_one_permutation(variant, group, key):
    m = _attn_model(variant)
    spec = lc.permutation_spec(m, XA)
    # the dimensions still permute (the same in every head), but not per head
    assert group in spec.groups and group not in spec.per
    rng = np.random.default_rng(0)
    rows = np.stack([rng.permutation(4), rng.permutation(4)])
    with pytest.raises(
        ValueError,
        match=re.escape(f"perms['{group}'] must be a permutation of range(4) of shape (4,)"),
    ):
        lc.permute(spec, m.params, {group: rows})
    perms = {g: rng.permutation(n) for g, n in spec.groups.items()}
    x = np.random.default_rng(1).normal(size=(4, 3, 8)).astype(np.float32)
    apply = jax.jit(m.apply_fn)
    pp = lc.permute(spec, m.params, perms)
    np.testing.assert_allclose(
        apply(pp, m.state, x)[0], apply(m.params, m.state, x)[0], rtol=1e-5, atol=1e-5
    )


def test_bad_input(tf, key):
    m, spec = tf
    with pytest.raises(
        ValueError,
        match=r"perms\['blocks/0/attn/query/kernel\[2\]'\] must be a "
        r"permutation of range\(8\) of shape \(2, 8\)",
    ):
        lc.permute(spec, m.params, {QK0: np.zeros((2, 8), int)})
    with pytest.raises(ValueError, match=r"of shape \(2, 8\) .* got shape \(3, 8\)"):
        lc.permute(spec, m.params, {QK0: np.tile(np.arange(8), (3, 1))})
    with pytest.raises(ValueError, match="dtype float"):
        lc.permute(spec, m.params, {MLP0: np.arange(32.0)})
    with pytest.raises(TypeError, match="perms must be a dict"):
        lc.permute(spec, m.params, [np.arange(2)])
    with pytest.raises(ValueError, match="head_match must be one of"):
        lc.align(m, m.params, m.params, example_input=_x(2), key=key, head_match="gram")
    sub = {"x": _x(8)}
    with pytest.raises(ValueError, match="activation matching does not align"):
        lc.align(m, m.params, m.params, method="activations", data=sub)
    with pytest.raises(ValueError, match="head_match='products' is a cost of weight matching"):
        lc.align(m, m.params, m.params, method="activations", data=sub, head_match="products")


def test_alignment_save_load_and_apply(tf, key, tmp_path):
    m, spec = tf
    pb = lc.permute(spec, m.params, _planted(spec, 4))
    al = lc.align(m, m.params, pb, example_input=_x(2), key=key)
    al.save(tmp_path / "al.npz")
    back = lc.Alignment.load(tmp_path / "al.npz")
    assert back.per == al.per and back.head_products == al.head_products
    assert_trees_close(back.apply(pb), m.params, rtol=0, atol=0)
