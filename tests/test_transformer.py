"""The transformer of ``make_model("transformer")``: parameter layout, the forward pass against a
hand-written NumPy reference, the causal mask, validation, the synthetic sequence tasks, the
per-token loss, and the generic analyses on it (training, slices, paths, NTK; its Hessian is
checked in tests/hessian/test_heads.py, its alignment in tests/connect/test_transformer_align.py)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

import landscape
import ntk
from landscape.models import model_from_spec

# ------------------------------------------------------------------------------------------
# a hand-written reference forward pass from the parameter dict: NumPy in float64, one head at a
# time with plain matrix products (no Flax, no JAX, nothing to compile)


def _ln(h, p):
    mu = h.mean(-1, keepdims=True)
    var = ((h - mu) ** 2).mean(-1, keepdims=True)
    out = (h - mu) / np.sqrt(var + 1e-6)
    out = out * p["scale"] if "scale" in p else out
    return out + p["bias"] if "bias" in p else out


def _lin(h, p):
    return h @ p["kernel"] + p["bias"] if "bias" in p else h @ p["kernel"]


def _gelu(z):
    return 0.5 * z * (1 + erf(z / np.sqrt(2)))


def _reference(params, x, cfg):
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    x = np.asarray(x)
    n = x.shape[0]
    if cfg.get("vocab_size"):
        h = p["embed"]["embedding"][x]
    else:
        q = cfg.get("patch", 1)
        x = x.astype(np.float64)
        if x.ndim == 4:  # (N, H, W, C): patches in row-major order, flattened (row, col, chan)
            rows = []
            for i in range(x.shape[1] // q):
                for j in range(x.shape[2] // q):
                    rows.append(x[:, i * q : (i + 1) * q, j * q : (j + 1) * q, :].reshape(n, -1))
            tok = np.stack(rows, axis=1)
        else:
            tok = x.reshape(n, x.shape[1] // q, -1)
        h = _lin(tok, p["embed"])
    if cfg.get("pool") == "cls":
        h = np.concatenate([np.broadcast_to(p["cls"], (n, 1, h.shape[-1])), h], axis=1)
    t, d = h.shape[1], h.shape[2]
    pos = cfg.get("positions", "learned")
    if pos == "learned":
        h = h + p["pos"]
    elif pos == "sinusoidal":
        enc = np.zeros((t, d))
        for tt in range(t):
            for i in range(d):
                ang = tt / 10000 ** (2 * (i // 2) / d)
                enc[tt, i] = math.sin(ang) if i % 2 == 0 else math.cos(ang)
        h = h + enc
    heads = cfg.get("heads", 4)
    dh = d // heads
    scale = 1 / math.sqrt(dh) if cfg.get("qk_scale", "sqrt") == "sqrt" else 1 / dh
    ln = cfg.get("layer_norm", True)
    act = {"gelu": _gelu, "relu": lambda z: np.maximum(z, 0)}[cfg.get("activation", "gelu")]
    mask = np.tril(np.ones((t, t), bool)) if cfg.get("causal") else np.ones((t, t), bool)
    for b in sorted(p["blocks"]):
        blk = p["blocks"][b]
        a = blk["attn"]
        u = _ln(h, blk["ln1"]) if ln else h
        out = 0.0
        for j in range(heads):
            qkv = {}
            for name in ("query", "key", "value"):
                if name == "key" and cfg.get("tie_qk"):
                    qkv["key"] = qkv["query"]
                    continue
                w = a[name]["kernel"][:, j, :]  # head j: a slice along the head axis
                qkv[name] = u @ w + (a[name]["bias"][j] if "bias" in a[name] else 0.0)
            s = scale * np.einsum("nqk,nsk->nqs", qkv["query"], qkv["key"])
            kind = cfg.get("attention", "softmax")
            if kind == "softmax":
                s = np.where(mask, s, -np.inf)
                w = np.exp(s - s.max(-1, keepdims=True))
                w = w / w.sum(-1, keepdims=True)
            else:
                w = np.where(mask, s if kind == "identity" else np.maximum(s, 0), 0.0)
            out = out + (w @ qkv["value"]) @ a["out"]["kernel"][j]
        h = h + out + a["out"].get("bias", 0.0)
        if "mlp" in blk:
            u = _ln(h, blk["ln2"]) if ln else h
            h = h + _lin(act(_lin(u, blk["mlp"]["fc1"])), blk["mlp"]["fc2"])
    if ln:
        h = _ln(h, p["ln_f"])
    pool = cfg.get("pool", "mean")
    h = {
        "mean": lambda z: z.mean(1),
        "cls": lambda z: z[:, 0],
        "last": lambda z: z[:, -1],
        "none": lambda z: z,
    }[pool](h)
    return _lin(h, p["head"])


# the configurations checked against the reference: together they cover every option
CONFIGS = {
    "image-cls-learned": dict(input_shape=(8, 8, 1), patch=4, pool="cls", activation="relu"),
    "signal-sinusoidal-relu-attention": dict(
        input_shape=(40,),
        patch=5,
        positions="sinusoidal",
        attention="relu",
        qk_scale="linear",
        heads=2,
    ),
    "tokens-causal-identity-tied-noln": dict(
        input_shape=(5,),
        vocab_size=7,
        causal=True,
        pool="last",
        attention="identity",
        qk_scale="linear",
        tie_qk=True,
        layer_norm=False,
        sigma_b2=0.1,
    ),
    "tokens-per-token-nobias-attention-only": dict(
        input_shape=(5,),
        vocab_size=7,
        pool="none",
        use_bias=False,
        mlp_ratio=0,
        positions="none",
        heads=1,
    ),
    "signal-channels-causal-softmax": dict(input_shape=(6, 2), patch=2, causal=True),
}


def _build(cfg, *, dtype="float32", seed=0, num_outputs=3, **extra):
    kw = dict(width=8, depth=2, heads=4, mlp_ratio=2)
    kw.update({k: v for k, v in cfg.items() if k != "input_shape"})
    kw.update(extra)
    return landscape.make_model(
        "transformer",
        input_shape=cfg["input_shape"],
        num_outputs=num_outputs,
        seed=seed,
        param_dtype=dtype,
        **kw,
    )


_JIT = {}


def _f(model, x, params=None):
    """The model's outputs through one compiled program per architecture."""
    fn = _JIT.setdefault(model.apply_fn, jax.jit(model.apply_fn))
    return fn(model.params if params is None else params, model.state, x)[0]


def _inputs(cfg, n=3, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    if cfg.get("vocab_size"):
        return rng.integers(0, cfg["vocab_size"], (n, *cfg["input_shape"])).astype(np.int32)
    return rng.standard_normal((n, *cfg["input_shape"])).astype(dtype)


# ------------------------------------------------------------------------------------------
def test_parameter_layout_of_a_two_block_model():
    # the layout is shapes only: the parameters and state as shapes (eval_shape: the model is
    # built while tracing, no initialiser compiles; the values are checked below and in the
    # forward tests)
    params, state = jax.eval_shape(
        lambda: tuple(
            landscape.make_model(
                "transformer",
                input_shape=(8, 8, 1),
                num_outputs=10,
                patch=4,
                width=8,
                heads=2,
                depth=2,
                mlp_ratio=2,
            )
        )[1:]
    )
    got = {
        jax.tree_util.keystr(k): v.shape
        for k, v in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    block = {
        "['attn']['query']['kernel']": (8, 2, 4),
        "['attn']['query']['bias']": (2, 4),
        "['attn']['key']['kernel']": (8, 2, 4),
        "['attn']['key']['bias']": (2, 4),
        "['attn']['value']['kernel']": (8, 2, 4),
        "['attn']['value']['bias']": (2, 4),
        "['attn']['out']['kernel']": (2, 4, 8),
        "['attn']['out']['bias']": (8,),
        "['ln1']['scale']": (8,),
        "['ln1']['bias']": (8,),
        "['ln2']['scale']": (8,),
        "['ln2']['bias']": (8,),
        "['mlp']['fc1']['kernel']": (8, 16),
        "['mlp']['fc1']['bias']": (16,),
        "['mlp']['fc2']['kernel']": (16, 8),
        "['mlp']['fc2']['bias']": (8,),
    }
    expected = {f"['blocks'][{b}]{k}": s for b in (0, 1) for k, s in block.items()}
    expected.update(
        {
            "['embed']['kernel']": (16, 8),
            "['embed']['bias']": (8,),
            "['pos']": (4, 8),
            "['ln_f']['scale']": (8,),
            "['ln_f']['bias']": (8,),
            "['head']['kernel']": (8, 10),
            "['head']['bias']": (10,),
        }
    )
    assert got == expected
    assert state == {}
    # the options remove exactly their leaves
    t = jax.eval_shape(
        lambda: (
            _build(
                CONFIGS["tokens-per-token-nobias-attention-only"], tie_qk=True, pool="cls"
            ).params
        )
    )
    names = {jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(t)[0]}
    assert not any("bias" in s or "key" in s or "mlp" in s or "pos" in s for s in names)
    assert {"['cls']", "['embed']['embedding']", "['blocks'][0]['ln1']['scale']"} <= names


@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_matches_reference_float64(name):
    cfg = CONFIGS[name]
    with jax.enable_x64(True):
        m = _build(cfg, dtype="float64")
        x = _inputs(cfg, dtype=np.float64)
        out = jax.jit(m.apply_fn)(m.params, m.state, x)[0]
    assert out.dtype == jnp.float64
    expected = (3, cfg["input_shape"][0], 3) if cfg.get("pool") == "none" else (3, 3)
    assert out.shape == expected
    # the same arithmetic in another order: agreement to rounding (outputs are O(1))
    np.testing.assert_allclose(out, _reference(m.params, x, cfg), rtol=1e-10, atol=1e-12)


def test_forward_matches_reference_float32_on_digits_patches(digits_images):
    """The digits loader's 8x8x1 images (``flat=False``) as four 4x4 patches: nothing new is
    needed in the data (MNIST-1D's ``(40,)`` signals are the shape of the signal config)."""
    cfg = CONFIGS["image-cls-learned"]
    assert digits_images.input_shape == cfg["input_shape"]
    m = _build(cfg)
    x = digits_images.train["x"][:3]
    out = jax.jit(m.apply_fn)(m.params, m.state, x)[0]
    assert out.dtype == jnp.float32
    # float32 rounding through two blocks of O(1) activations against the float64 reference
    np.testing.assert_allclose(out, _reference(m.params, x, cfg), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------
def test_causal_mask_outputs_at_t_ignore_later_tokens():
    cfg = dict(input_shape=(5,), vocab_size=7, pool="none", heads=2)
    x = _inputs(cfg, n=4)
    later = x.copy()
    later[:, 3:] = (later[:, 3:] + 1) % 7  # change tokens 3 and 4 only
    both = np.concatenate([x, later])
    causal = _build({**cfg, "causal": True})
    out = np.asarray(jax.jit(causal.apply_fn)(causal.params, {}, both)[0])
    np.testing.assert_array_equal(out[:4, :3], out[4:, :3])  # exactly: masked weights are 0
    assert np.abs(out[:4, 3:] - out[4:, 3:]).min() > 0
    full = _build(cfg)  # the same network without the mask: every position sees the change
    out = np.asarray(jax.jit(full.apply_fn)(full.params, {}, both)[0])
    assert np.abs(out[:4, :3] - out[4:, :3]).min() > 1e-6


def test_tie_qk_is_the_untied_network_with_key_equal_to_query():
    cfg = dict(input_shape=(6,), vocab_size=5, qk_scale="linear", heads=2, depth=1)
    tied, untied = _build({**cfg, "tie_qk": True}), _build(cfg)
    params = jax.tree.map(lambda a: a, tied.params)
    attn = params["blocks"][0]["attn"]
    attn["key"] = attn["query"]
    x = _inputs(cfg, n=2)
    np.testing.assert_allclose(_f(tied, x), _f(untied, x, params), rtol=1e-6, atol=1e-6)


def test_unbatched_inputs_as_under_vmap():
    """Per-example code (``jax.vmap`` over examples, as the engine and ``ntk`` use) hands the
    model one example without the batch axis; one compiled program checks both forms."""
    cfg = CONFIGS["signal-channels-causal-softmax"]
    m = _build(cfg)
    x = _inputs(cfg, n=4)
    apply_fn = m.apply_fn
    batched, single = jax.jit(
        lambda p, x: (apply_fn(p, {}, x)[0], jax.vmap(lambda xi: apply_fn(p, {}, xi)[0])(x))
    )(m.params, x)
    assert single.shape == batched.shape == (4, 3)
    np.testing.assert_allclose(single, batched, rtol=1e-6, atol=1e-6)


def test_spec_round_trip_and_shared_programs():
    cfg = CONFIGS["tokens-causal-identity-tied-noln"]
    m = _build(cfg, seed=3)
    assert m.spec["kwargs"]["tie_qk"] is True and m.spec["kwargs"]["attention"] == "identity"
    r = model_from_spec(m.spec)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), m.params, r.params))
    # two seeds of one architecture share apply_fn (one compiled program for both)
    assert _build(cfg, seed=4).apply_fn == m.apply_fn
    assert _build(cfg, seed=4, causal=False).apply_fn != m.apply_fn


def test_initialisation_variances():
    m = landscape.make_model(
        "transformer",
        input_shape=(4,),
        num_outputs=2,
        vocab_size=64,
        width=64,
        heads=4,
        depth=1,
        mlp_ratio=1,
        seed=0,
        sigma_w2=2.0,
        sigma_b2=0.5,
        pos_std=1.0,
    )
    a = m.params["blocks"][0]["attn"]
    # N(0, sigma_w2 / fan_in) over the 2-D (fan_in, fan_out) matrix each kernel acts as: the
    # head axis is not a receptive field (fan_in 64 for query/key/value, heads * d_head = 64
    # for the output); 4096 samples each, sampling error ~2%
    for name in ("query", "key", "value", "out"):
        assert np.var(a[name]["kernel"]) == pytest.approx(2 / 64, rel=0.08)
    assert np.var(m.params["embed"]["embedding"]) == pytest.approx(2.0, rel=0.08)  # fan-in 1
    assert np.std(m.params["pos"]) == pytest.approx(1.0, rel=0.1)
    assert np.var(a["query"]["bias"]) == pytest.approx(0.5, rel=0.5)  # 64 samples
    assert np.all(np.asarray(m.params["blocks"][0]["ln1"]["scale"]) == 1)
    assert np.all(np.asarray(m.params["blocks"][0]["ln1"]["bias"]) == 0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(heads=3), "heads=3 must divide width=8"),
        (dict(input_shape=(8, 8, 1), patch=3), "patch=3 must divide the image"),
        (dict(input_shape=(40,), patch=6), "patch=6 must divide the signal length 40"),
        (dict(input_shape=(4,), vocab_size=7, patch=2), "token inputs .* take no patch"),
        (dict(input_shape=(4, 4), vocab_size=7), r"need input_shape=\(T,\)"),
        (dict(input_shape=(2, 2, 2, 2)), "input_shape must be"),
        (dict(causal=True, pool="cls"), "pool='cls' with causal=True"),
        (dict(attention="tanh"), "attention must be one of"),
        (dict(qk_scale="cube"), "qk_scale must be one of"),
        (dict(positions="rotary"), "positions must be one of"),
        (dict(pool="max"), "pool must be one of"),
        (dict(width=0), "width must be an integer >= 1"),
        (dict(mlp_ratio=1.5), "mlp_ratio must be an integer >= 0"),
        (dict(vocab_size=0, input_shape=(4,)), "vocab_size must be an integer >= 1"),
        (dict(pos_std=-1.0), "pos_std must be a finite number >= 0"),
        (dict(init="he_normal", sigma_w2=1.0), "Transformer: init='he_normal' fixes"),
        (dict(use_bias=False, sigma_b2=0.1), "sigma_b2=0.1 needs biases"),
    ],
)
def test_bad_settings_name_the_argument(kwargs, match):
    kw = dict(input_shape=(8,), num_outputs=2, width=8, heads=2, depth=1)
    kw.update(kwargs)
    with pytest.raises(ValueError, match=match):
        landscape.make_model("transformer", **kw)


def test_bad_switches_and_inputs():
    with pytest.raises(TypeError, match="causal must be True or False"):
        landscape.make_model("transformer", input_shape=(8,), num_outputs=2, causal="yes")
    # the input checks are on shapes: the model built while tracing (its parameters as shapes,
    # no initialiser compiled; apply_fn is the architecture's, the same for any parameters)
    box = {}

    def build():
        m = landscape.make_model(
            "transformer", input_shape=(8,), num_outputs=2, width=8, heads=2, depth=1
        )
        box["apply_fn"] = m.apply_fn
        return m.params, m.state

    params, state = jax.eval_shape(build)
    apply_fn = box["apply_fn"]
    assert jax.eval_shape(apply_fn, params, state, np.zeros((2, 8), np.float32))[0].shape == (2, 2)
    with pytest.raises(ValueError, match="integer inputs .* build the model with vocab_size"):
        jax.eval_shape(apply_fn, params, state, np.zeros((2, 8), np.int32))
    with pytest.raises(ValueError, match=r"inputs must have shape \(\.\.\., 8\)"):
        jax.eval_shape(apply_fn, params, state, np.zeros((2, 9), np.float32))


# ------------------------------------------------------------------------------------------
# the synthetic tasks and the per-token loss


@pytest.mark.parametrize("op", ["+", "-", "*", "/"])
def test_modular_arithmetic_task(op):
    ds = landscape.load_data("modular", p=7, op=op, train_fraction=0.3, seed=1)
    x = np.concatenate([ds.train["x"], ds.test["x"]])
    y = np.concatenate([ds.train["y"], ds.test["y"]])
    n = 42 if op == "/" else 49
    assert x.shape == (n, 4) and x.dtype == np.int32 and y.dtype == np.int32
    assert len(ds.train["y"]) == round(0.3 * n) and ds.vocab_size == 9 and ds.num_outputs == 7
    assert np.all(x[:, 1] == 7) and np.all(x[:, 3] == 8)  # [a, op, b, =]
    a, b = x[:, 0], x[:, 2]
    expected = {
        "+": a + b,
        "-": a - b,
        "*": a * b,
        "/": a * np.array([pow(int(v), 5, 7) for v in b]),
    }[op]
    np.testing.assert_array_equal(y, expected % 7)
    assert len({tuple(r) for r in x}) == n  # every equation once
    again = landscape.load_data("modular", p=7, op=op, train_fraction=0.3, seed=1)
    np.testing.assert_array_equal(again.train["x"], ds.train["x"])


def test_sort_task_and_bad_task_settings():
    ds = landscape.load_data("sort", length=6, vocab_size=4, num_train=20, num_test=5, seed=2)
    assert ds.train["x"].shape == ds.train["y"].shape == (20, 6) and ds.vocab_size == 4
    np.testing.assert_array_equal(ds.train["y"], np.sort(ds.train["x"], axis=1))
    with pytest.raises(ValueError, match="op='/' needs a prime p"):
        landscape.load_data("modular", p=8, op="/")
    with pytest.raises(ValueError, match="op must be one of"):
        landscape.load_data("modular", op="^")
    with pytest.raises(ValueError, match=r"train_fraction must be in \(0, 1\)"):
        landscape.load_data("modular", train_fraction=1.0)
    with pytest.raises(ValueError, match="length must be an integer >= 1"):
        landscape.load_data("sort", length=0)


def test_per_token_cross_entropy():
    ds = landscape.load_data("sort", length=5, vocab_size=7, num_train=6, num_test=2, seed=0)
    m = _build(CONFIGS["tokens-per-token-nobias-attention-only"], num_outputs=7)
    loss_fn = landscape.make_loss_fn(m)
    (value, aux), logits = jax.jit(lambda p, b: (loss_fn(p, b), loss_fn.outputs(p, b)))(
        m.params, ds.train
    )
    logits = np.asarray(logits, np.float64)  # (6, 5, 7)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    y = ds.train["y"]
    nll = -np.take_along_axis(logp, y[..., None], -1)[..., 0]  # (6, 5)
    # the mean over examples and positions (float32 arithmetic: 1e-6 relative)
    assert float(value) == pytest.approx(nll.mean(), rel=1e-6)
    assert float(aux["accuracy"]) == pytest.approx(np.mean(logits.argmax(-1) == y))
    # the check is on shapes: raised while tracing (eval_shape: the refusal without an eager
    # forward pass, which compiles one program per operation)
    with pytest.raises(ValueError, match=r"labels need shape \(N, 5\)"):
        jax.eval_shape(loss_fn, m.params, {"x": ds.train["x"], "y": y[:, 0]})


# ------------------------------------------------------------------------------------------
# the generic analyses on a tiny causal transformer (float64: dense references are exact)


@pytest.fixture(scope="module")
def tiny():
    """Modular addition mod 5 (15 training equations), a 1-block causal transformer read out at
    the last token (~600 parameters), trained 40 Adam steps in float64."""
    with jax.enable_x64(True):
        ds = landscape.load_data("modular", p=5, train_fraction=0.6, seed=0)
        model = landscape.make_model(
            "transformer",
            input_shape=ds.input_shape,
            num_outputs=ds.num_outputs,
            vocab_size=ds.vocab_size,
            width=8,
            heads=2,
            depth=1,
            mlp_ratio=1,
            causal=True,
            pool="last",
            activation="relu",
            param_dtype="float64",
            seed=0,
        )
        result = landscape.train(
            model,
            ds.train,
            learning_rate=1e-2,
            num_steps=40,
            batch_size=15,
            seed=0,
            progress=False,
        )
        return ds, model, result, landscape.make_loss_fn(result.model)


def test_training_decreases_the_loss(tiny):
    _, model, result, _ = tiny
    loss = np.asarray(result.history["batch_loss"])
    assert loss.dtype == np.float64 and np.isfinite(loss).all()
    assert loss[-1] < 0.5 * loss[0]  # ln 5 = 1.61 at the start


# the Lanczos eigenvalues of a transformer's Hessian against the dense float64 Hessian: in
# tests/hessian/test_heads.py (head_spectra's per-block top two eigenvalues, on the library's
# transformer), which compiles the programs containing Hessian-vector products once

# the tiny model's settings, for the NumPy reference
TINY = dict(vocab_size=7, causal=True, pool="last", activation="relu", heads=2)


def _reference_loss(params, data):
    """Mean cross-entropy of the NumPy float64 reference forward pass (nothing compiled)."""
    logits = _reference(params, data["x"], TINY)
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -np.mean(np.take_along_axis(logp, np.asarray(data["y"])[:, None], -1))


def test_slice_and_linear_path_profile(tiny):
    ds, model, result, loss_fn = tiny
    with jax.enable_x64(True):
        direction = landscape.surface.random_direction(jax.random.key(1), result.params)
        alphas = np.array([-0.5, 0.0, 0.5])
        s = landscape.surface.slice_1d(loss_fn, result.params, ds.train, direction, alphas=alphas)
        d = direction.vector
        # the NumPy reference's loss at each point: float64 arithmetic in another order
        for a, got in zip(alphas, np.asarray(s.train["loss"])):
            point = jax.tree.map(
                lambda p, v, a=a: np.asarray(p) + a * np.asarray(v), result.params, d
            )
            assert got == pytest.approx(_reference_loss(point, ds.train), rel=1e-10)
        path = landscape.connect.linear_path(model.params, result.params)
        prof = landscape.connect.profile(
            loss_fn, path, ds.train, ts=np.array([0.0, 0.5, 1.0]), refine=False
        )
        mid = jax.tree.map(
            lambda a, b: 0.5 * (np.asarray(a) + np.asarray(b)), model.params, result.params
        )
        expected = [_reference_loss(p, ds.train) for p in (model.params, mid, result.params)]
        np.testing.assert_allclose(
            np.asarray(prof.train["loss"]), np.asarray(expected), rtol=1e-10
        )


# planted permutations of a transformer's heads, within-head dimensions and MLP units, recovered
# exactly by connect.align with the function preserved (float32 and float64):
# tests/connect/test_transformer_align.py (a 2-block model, per-head permutations)


def test_empirical_ntk_matches_the_jacobian_product(tiny):
    ds, _, result, _ = tiny
    with jax.enable_x64(True):
        x = ds.train["x"][:4]
        k = ntk.empirical_ntk(result.model, x, method="jacobian")  # ids travel as floats: exact
        from jax.flatten_util import ravel_pytree

        apply_fn = result.model.apply_fn

        def jacobian(params, x):  # flattened inside the program: no eager ravel programs
            flat, unravel = ravel_pytree(params)
            return jax.jacrev(lambda v: apply_fn(unravel(v), {}, x)[0])(flat)

        jac = jax.jit(jacobian)(result.params, x)  # (4, 5, P)
        dense = np.einsum("aop,bop->ab", np.asarray(jac), np.asarray(jac)) / jac.shape[1]
    assert k.matrix.dtype == np.float64
    np.testing.assert_allclose(np.asarray(k), dense, rtol=1e-10, atol=1e-12)
