"""The transformer of ``make_model("transformer")``: parameter layout, the forward pass against a
hand-written ``jnp`` reference, the causal mask, validation, the synthetic sequence tasks, the
per-token loss, and the generic analyses on it (training, Hessian, slices, paths, NTK)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import landscape
from landscape.models import model_from_spec

# ------------------------------------------------------------------------------------------
# a hand-written reference forward pass from the parameter dict (no Flax)


def _ln(h, p):
    mu = h.mean(-1, keepdims=True)
    var = ((h - mu) ** 2).mean(-1, keepdims=True)
    out = (h - mu) / jnp.sqrt(var + 1e-6)
    out = out * _b(p["scale"], h.ndim) if "scale" in p else out
    return out + _b(p["bias"], h.ndim) if "bias" in p else out


def _b(a, ndim):
    return a.reshape((1,) * (ndim - a.ndim) + a.shape)


def _lin(h, p):
    return h @ p["kernel"] + _b(p["bias"], h.ndim) if "bias" in p else h @ p["kernel"]


def _reference(params, x, cfg):
    """The encoder written out one head at a time with plain matrix products."""
    p = params
    n = x.shape[0]
    if cfg.get("vocab_size"):
        h = p["embed"]["embedding"][x]
    else:
        q = cfg.get("patch", 1)
        if x.ndim == 4:  # (N, H, W, C): patches in row-major order, flattened (row, col, chan)
            rows = []
            for i in range(x.shape[1] // q):
                for j in range(x.shape[2] // q):
                    rows.append(x[:, i * q : (i + 1) * q, j * q : (j + 1) * q, :].reshape(n, -1))
            tok = jnp.stack(rows, axis=1)
        else:
            tok = x.reshape(n, x.shape[1] // q, -1)
        h = _lin(tok, p["embed"])
    if cfg.get("pool") == "cls":
        h = jnp.concatenate([jnp.broadcast_to(p["cls"], (n, 1, h.shape[-1])), h], axis=1)
    t, d = h.shape[1], h.shape[2]
    pos = cfg.get("positions", "learned")
    if pos == "learned":
        h = h + p["pos"][None]
    elif pos == "sinusoidal":
        enc = np.zeros((t, d))
        for tt in range(t):
            for i in range(d):
                ang = tt / 10000 ** (2 * (i // 2) / d)
                enc[tt, i] = math.sin(ang) if i % 2 == 0 else math.cos(ang)
        h = h + jnp.asarray(enc, h.dtype)[None]
    heads = cfg.get("heads", 4)
    dh = d // heads
    scale = 1 / math.sqrt(dh) if cfg.get("qk_scale", "sqrt") == "sqrt" else 1 / dh
    ln = cfg.get("layer_norm", True)
    act = {"gelu": lambda z: jax.nn.gelu(z, approximate=False), "relu": jax.nn.relu}[
        cfg.get("activation", "gelu")
    ]
    for blk in p["blocks"].values():
        a = blk["attn"]
        u = _ln(h, blk["ln1"]) if ln else h
        out = 0.0
        for j in range(heads):
            def proj(name, u=u, j=j):
                w = a[name]["kernel"][:, j, :]  # head j: a slice along the head axis
                return u @ w + a[name]["bias"][j][None, None] if "bias" in a[name] else u @ w

            qj = proj("query")
            kj = qj if cfg.get("tie_qk") else proj("key")
            vj = proj("value")
            s = scale * jnp.einsum("nqk,nsk->nqs", qj, kj)
            mask = np.tril(np.ones((1, t, t), bool)) if cfg.get("causal") else np.ones((1, t, t), bool)
            kind = cfg.get("attention", "softmax")
            if kind == "softmax":
                s = jnp.where(mask, s, -jnp.inf)
                w = jnp.exp(s - s.max(-1, keepdims=True))
                w = w / w.sum(-1, keepdims=True)
            else:
                w = jnp.where(mask, s if kind == "identity" else jnp.maximum(s, 0), 0.0)
            out = out + (w @ vj) @ a["out"]["kernel"][j]
        h = h + out + (_b(a["out"]["bias"], 3) if "bias" in a["out"] else 0.0)
        if "mlp" in blk:
            u = _ln(h, blk["ln2"]) if ln else h
            h = h + _lin(act(_lin(u, blk["mlp"]["fc1"])), blk["mlp"]["fc2"])
    if ln:
        h = _ln(h, p["ln_f"])
    pool = cfg.get("pool", "mean")
    h = {"mean": lambda z: z.mean(1), "cls": lambda z: z[:, 0], "last": lambda z: z[:, -1],
         "none": lambda z: z}[pool](h)
    return _lin(h, p["head"])


# the configurations checked against the reference: together they cover every option
CONFIGS = {
    "image-cls-learned": dict(input_shape=(8, 8, 1), patch=4, pool="cls", activation="relu"),
    "signal-sinusoidal-relu-attention": dict(
        input_shape=(40,), patch=5, positions="sinusoidal", attention="relu", qk_scale="linear",
        heads=2,
    ),
    "tokens-causal-identity-tied-noln": dict(
        input_shape=(5,), vocab_size=7, causal=True, pool="last", attention="identity",
        qk_scale="linear", tie_qk=True, layer_norm=False, sigma_b2=0.1,
    ),
    "tokens-per-token-nobias-attention-only": dict(
        input_shape=(5,), vocab_size=7, pool="none", use_bias=False, mlp_ratio=0,
        positions="none", heads=1,
    ),
    "signal-channels-causal-softmax": dict(input_shape=(6, 2), patch=2, causal=True),
}


def _build(cfg, *, dtype="float32", seed=0, num_outputs=3, **extra):
    kw = dict(width=8, depth=2, heads=4, mlp_ratio=2)
    kw.update({k: v for k, v in cfg.items() if k != "input_shape"})
    kw.update(extra)
    return landscape.make_model(
        "transformer", input_shape=cfg["input_shape"], num_outputs=num_outputs, seed=seed,
        param_dtype=dtype, **kw,
    )


def _inputs(cfg, n=3, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    if cfg.get("vocab_size"):
        return rng.integers(0, cfg["vocab_size"], (n, *cfg["input_shape"])).astype(np.int32)
    return rng.standard_normal((n, *cfg["input_shape"])).astype(dtype)


# ------------------------------------------------------------------------------------------
def test_parameter_layout_of_a_two_block_model():
    m = landscape.make_model(
        "transformer", input_shape=(8, 8, 1), num_outputs=10, patch=4, width=8, heads=2,
        depth=2, mlp_ratio=2,
    )
    got = {jax.tree_util.keystr(k): v.shape
           for k, v in jax.tree_util.tree_flatten_with_path(m.params)[0]}
    block = {
        "['attn']['query']['kernel']": (8, 2, 4), "['attn']['query']['bias']": (2, 4),
        "['attn']['key']['kernel']": (8, 2, 4), "['attn']['key']['bias']": (2, 4),
        "['attn']['value']['kernel']": (8, 2, 4), "['attn']['value']['bias']": (2, 4),
        "['attn']['out']['kernel']": (2, 4, 8), "['attn']['out']['bias']": (8,),
        "['ln1']['scale']": (8,), "['ln1']['bias']": (8,),
        "['ln2']['scale']": (8,), "['ln2']['bias']": (8,),
        "['mlp']['fc1']['kernel']": (8, 16), "['mlp']['fc1']['bias']": (16,),
        "['mlp']['fc2']['kernel']": (16, 8), "['mlp']['fc2']['bias']": (8,),
    }
    expected = {f"['blocks'][{b}]{k}": s for b in (0, 1) for k, s in block.items()}
    expected.update({
        "['embed']['kernel']": (16, 8), "['embed']['bias']": (8,), "['pos']": (4, 8),
        "['ln_f']['scale']": (8,), "['ln_f']['bias']": (8,),
        "['head']['kernel']": (8, 10), "['head']['bias']": (10,),
    })
    assert got == expected
    assert m.state == {}
    # the options remove exactly their leaves
    t = _build(CONFIGS["tokens-per-token-nobias-attention-only"], tie_qk=True, pool="cls")
    names = {jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(t.params)[0]}
    assert not any("bias" in s or "key" in s or "mlp" in s or "pos" in s for s in names)
    assert {"['cls']", "['embed']['embedding']", "['blocks'][0]['ln1']['scale']"} <= names


def _both(model, cfg):
    """One compiled program: the model's outputs and the reference's."""
    apply_fn = model.apply_fn

    @jax.jit
    def run(params, x):
        return apply_fn(params, {}, x)[0], _reference(params, x, cfg)

    return run


@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_matches_reference_float64(name):
    cfg = CONFIGS[name]
    with jax.enable_x64(True):
        m = _build(cfg, dtype="float64")
        x = _inputs(cfg, dtype=np.float64)
        out, ref = _both(m, cfg)(m.params, x)
        assert out.dtype == jnp.float64
        expected = (3, cfg["input_shape"][0], 3) if cfg.get("pool") == "none" else (3, 3)
        assert out.shape == expected
        # same arithmetic in another order: agreement to rounding (outputs are O(1))
        np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["image-cls-learned", "tokens-causal-identity-tied-noln"])
def test_forward_matches_reference_float32(name):
    cfg = CONFIGS[name]
    m = _build(cfg)
    out, ref = _both(m, cfg)(m.params, _inputs(cfg))
    assert out.dtype == jnp.float32
    # float32 rounding through two blocks of O(1) activations: 1e-5 relative is ~100 ulps
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
