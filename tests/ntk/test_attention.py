"""ntk.GlobalSelfAttention: neural-tangents fixtures, Monte Carlo at large width, the finite
layer's empirical NTK, refusals and shape checks (issue 16; Hron et al. 2020)."""

import json

import jax
import numpy as np
import pytest

import ntk
from tests.ntk import _specs

FIX = np.load(_specs.DATA / "ntk_analytic.npz")
SPECS = json.loads(bytes(FIX["attention_specs"]).decode())
# the positional covariances of tests/data/make_ntk_fixtures.py (DECAYS), module-level so the
# layers are hashable and equal between calls
DECAYS = {"cauchy": lambda d: 1.0 / (1.0 + d), "laplace": lambda d: np.exp(-d)}


def _layer(spec):
    kind, kw = spec
    if kind == "GlobalSelfAttention" and "pos_emb_decay_fn" in kw:
        kw = dict(kw, pos_emb_decay_fn=DECAYS[kw["pos_emb_decay_fn"]])
    if kind == "residual":
        return ntk.residual(*[_layer(s) for s in kw])
    return _specs.layer([kind, kw])


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def nt_kernels():
    """Our analytic kernels of every attention fixture in ONE compiled float64 program."""
    archs = {name: ntk.serial(*[_layer(s) for s in layers]) for name, _, layers in SPECS}
    with jax.enable_x64(True):
        xs = {n: np.concatenate([FIX[f"{n}/x1"], FIX[f"{n}/x2"]]) for n in archs}
        return _specs.run_once(lambda xs: {n: archs[n].kernel_fn(xs[n]) for n in archs}, xs)


@pytest.mark.parametrize("spec", SPECS, ids=[s[0] for s in SPECS])
def test_matches_neural_tangents(spec, nt_kernels):
    # neural-tangents 0.6.5 stax.GlobalSelfAttention, float64 (tests/data/README_ntk.md):
    # softmax/ReLU/abs/identity with 1/d_k scaling, identity with 1/sqrt(d_k), positional
    # embeddings summed and concatenated (with and without the values, identity and decaying
    # covariances), images, a residual transformer block. Tolerance 1e-6 relative (as the
    # other fixtures); measured <= 5e-16 off the diagonal, <= 3e-11 on the NTK diagonal
    # (ReLU-family correlation exactly 1 in the layers before).
    name = spec[0]
    nngp, ntkm = nt_kernels[name]
    n = len(FIX[f"{name}/x1"])
    got = {"nngp12": nngp[:n, n:], "ntk12": ntkm[:n, n:], "nngp11": nngp[:n, :n]}
    got["ntk11"] = ntkm[:n, :n]
    for key, val in got.items():
        ref = FIX[f"{name}/{key}"]
        assert np.max(np.abs(val - ref)) / np.max(np.abs(ref)) < 1e-6, key


X = np.random.default_rng(0).standard_normal((3, 4, 3))  # 3 sequences, 4 positions, 3 channels


def _monte_carlo(arch, num_samples):
    with jax.enable_x64(True):
        exact = ntk.kernel(arch, X)
        mc = ntk.monte_carlo(arch, X, key=jax.random.key(0), num_samples=num_samples)
    assert exact.nngp.dtype == np.float64 and mc.ntk.dtype == np.float64
    return exact, mc


def test_composed_softmax_attention_matches_monte_carlo():
    # Dense -> softmax attention (1/d_k, tied Q/K, summed positional embeddings also in the
    # values) -> LayerNorm -> Flatten -> Dense through ntk.kernel, against S wide random
    # networks built from the same description. The NTK of one network deviates by
    # O(1/sqrt(W)) (W = 256 channels, d_k = d_v = 256 per head), so the mean of S = 8 by
    # about c / sqrt(W S) with c <= 2.0 over 8 seeds (bias O(1/W) smaller; S = 256
    # networks agree to 0.006): tolerance 4 / sqrt(W S) = 0.088 (measured 0.028 here). The NNGP estimate f f^T / O of
    # O = 64 outputs adds the readout's Wishart noise sqrt(2 / (O S)) to the features'
    # O(1/sqrt(W S)) (error / sqrt(2 / (O S) + 2 / (W S)) <= 1.7 over 8 seeds): tolerance
    # 3 sqrt(2 / (O S) + 2 / (W S)) = 0.21 (measured 0.080 here).
    W, O, S = 256, 64, 8
    arch = ntk.serial(
        ntk.Dense(W, W_std=1.2, b_std=0.1),
        ntk.GlobalSelfAttention(
            W, W, W, 2, W_query_std=1.3, b_std=0.2, pos_emb_type="sum", val_pos_emb=True
        ),
        ntk.LayerNorm(),
        ntk.Flatten(),
        ntk.Dense(O),
    )
    exact, mc = _monte_carlo(arch, S)
    assert rel(mc.ntk, exact.ntk) < 4 / np.sqrt(W * S)
    assert rel(mc.nngp, exact.nngp) < 3 * np.sqrt(2 / (O * S) + 2 / (W * S))


def test_sqrt_identity_attention_matches_monte_carlo():
    # 1/sqrt(d_k) identity attention, standard parameterisation (the fan-ins of the four
    # weight matrices enter the NTK; the NTK parameterisation is checked against
    # neural-tangents above), positional embeddings concatenated to queries, keys and values.
    # The logits of each head stay Gaussian (they do not concentrate as d_k grows), so one
    # network's kernel averages over its H heads and deviates by O(1/sqrt(H)), heavy-tailed
    # (products of the Gaussian logits and values): H = 64 heads, S = 8 networks give
    # c / sqrt(H S) with c <= 2.7 over 8 seeds (mean 1.1), plus a finite-width bias (d_k = 8)
    # of 0.025 (measured with S = 512; 0.006 at W = 512, d_k = 32): tolerance 5 / sqrt(H S)
    # = 0.22 for the NTK (measured 0.043 here). NNGP as above with the heads in place of the
    # width (error / sqrt(2 / (O S) + 2 / (H S)) <= 1.9 over 8 seeds): tolerance
    # 3 sqrt(2 / (O S) + 2 / (H S)) = 0.42 (measured 0.109 here, O = 16 outputs).
    W, H, O, S = 256, 64, 16, 8
    std = dict(parameterization="standard")
    arch = ntk.serial(
        ntk.Dense(W, W_std=1.2, b_std=0.1, **std),
        ntk.Relu(),
        ntk.GlobalSelfAttention(
            W, 8, 8, H, attention="identity", qk_scale="sqrt", pos_emb_type="concat",
            val_pos_emb=True, W_query_std=0.5, W_value_std=0.8, b_std=0.1, **std,
        ),
        ntk.GlobalAvgPool(),
        ntk.Dense(O, **std),
    )  # fmt: skip
    exact, mc = _monte_carlo(arch, S)
    assert rel(mc.ntk, exact.ntk) < 5 / np.sqrt(H * S)
    assert rel(mc.nngp, exact.nngp) < 3 * np.sqrt(2 / (O * S) + 2 / (H * S))


def test_float32_close_to_float64():
    # the public blocked driver (ntk.kernel: one compiled program for every width, the
    # attention's included) in float32 on the residual transformer block against
    # neural-tangents' float64 kernel: float32 round-off through two LayerNorms, the softmax
    # and the P^3 attention products: 1e-5 relative (measured ~1e-7)
    name, _, layers = SPECS[-1]
    arch = ntk.serial(*[_layer(s) for s in layers])
    x1, x2 = (FIX[f"{name}/{k}"].astype(np.float32) for k in ("x1", "x2"))
    k = ntk.kernel(arch, x1, x2)
    assert k.ntk.dtype == np.float32
    assert rel(k.nngp, FIX[f"{name}/nngp12"]) < 1e-5
    assert rel(k.ntk, FIX[f"{name}/ntk12"]) < 1e-5


def test_structured_empirical_ntk_is_the_jacobians():
    # the per-layer structured NTK that ntk.monte_carlo uses sees every parameter of the
    # attention layer: tied query/key weights (one projection used twice), values, output,
    # bias and the positional embeddings (a fixed correlated covariance); it equals the
    # Jacobian contraction to round-off (float64: 1e-12)
    arch = ntk.serial(
        ntk.Dense(4, b_std=0.1),
        ntk.GlobalSelfAttention(
            5, 3, 2, 2, pos_emb_type="concat", val_pos_emb=True, b_std=0.2,
            pos_emb_decay_fn=DECAYS["cauchy"], W_pos_emb_std=0.7,
        ),
        ntk.Relu(),
        ntk.GlobalAvgPool(),
        ntk.Dense(2),
    )  # fmt: skip
    x = np.random.default_rng(2).standard_normal((3, 4, 2))
    with jax.enable_x64(True):
        model = arch.init(jax.random.key(1), x.shape[1:], dtype=np.float64)
        a = ntk.empirical_ntk(model, x, method="structured").matrix
        b = ntk.empirical_ntk(model, x, method="jacobian").matrix
    assert set(model.params["attention_1"]) == {"pos_emb", "qk", "value", "out"}
    assert model.params["attention_1"]["pos_emb"]["kernel"].shape == (4, 4)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * np.abs(b).max())


def test_one_program_for_every_width():
    # NTK parameterisation: the attention kernel does not depend on the widths or the number
    # of heads, so ntk.kernel shares one compiled program across them (a residual block: the
    # branch widths must agree in the width-free description too)
    from ntk import _blocks

    def arch(w, heads):
        att = ntk.GlobalSelfAttention(w, w, w, heads, pos_emb_type="sum", b_std=0.1)
        return ntk.serial(ntk.Dense(w), ntk.residual(att), ntk.Flatten(), ntk.Dense(1))

    def programs():
        return _blocks._single._cache_size() + _blocks._wave._cache_size()

    small = ntk.kernel(arch(8, 2), X)
    before = programs()
    wide = ntk.kernel(arch(64, 4), X + 0.0)
    assert programs() == before
    np.testing.assert_array_equal(wide.ntk, small.ntk)


def _att(**kw):
    return ntk.serial(ntk.GlobalSelfAttention(8, 4, 4, 2, **kw), ntk.Flatten(), ntk.Dense(1))


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(qk_scale="sqrt"), r"attention='softmax' with qk_scale='sqrt'.*no closed-form"),
        (dict(qk_scale="sqrt", attention="relu"), r"attention='relu' with qk_scale='sqrt'"),
        (dict(qk_scale="sqrt", attention="abs"), r"attention='abs' with qk_scale='sqrt'"),
        (dict(qk_scale="sqrt", attention="identity", tie_qk=True), r"tie_qk=True.*grow"),
        (dict(tie_qk=False), r"qk_scale='linear' with tie_qk=False.*converge to 0"),
        (dict(parameterization="standard"), r"parameterization='standard' with qk_scale="),
    ],
)
def test_refused_without_closed_form(kw, match):
    arch = _att(**kw)
    with pytest.raises(ntk.ArchitectureError, match=match) as err:
        ntk.kernel(arch, X)
    assert "ntk.kernel: GlobalSelfAttention(" in str(err.value)
    assert "ntk.monte_carlo" in str(err.value)  # what to use instead
    # the finite network exists (Monte Carlo is the way to its kernel)
    params = arch.init_params(jax.random.key(0), X.shape[1:])
    assert jax.eval_shape(arch.apply, params, X).shape == (3, 1)


def test_finite_layer_shapes_and_defaults():
    layer = ntk.GlobalSelfAttention(6, 4, 3, 2)
    assert layer.tie_qk and ntk.GlobalSelfAttention(6, 4, 3, 2, qk_scale="sqrt").tie_qk is False
    assert "tie_qk=True" in repr(layer)
    arch = ntk.serial(layer)
    params = arch.init_params(jax.random.key(0), (4, 3))
    shapes = jax.tree.map(np.shape, params["attention_0"])
    assert shapes == {
        "qk": {"kernel": (3, 8)},
        "value": {"kernel": (3, 6)},
        "out": {"kernel": (6, 6)},
    }
    assert arch.apply(params, X).shape == (3, 4, 6)
    assert arch.out_shape((5, 7, 3)) == (5, 7, 6)  # images: positions flattened inside


def test_shape_validation():
    arch = _att(attention="identity")
    with pytest.raises(ValueError, match=r"ntk.kernel: x1 must have shape \(n, \*spatial"):
        ntk.kernel(arch, np.ones((3, 5)))
    with pytest.raises(ntk.ArchitectureError, match="give different output shapes"):
        ntk.serial(ntk.residual(ntk.GlobalSelfAttention(8, 4, 4, 2))).out_shape((4, 3))
    bad = ntk.GlobalSelfAttention(8, 4, 4, 2, pos_emb_type="sum", pos_emb_decay_fn=np.negative)
    with pytest.raises(ntk.ArchitectureError, match="not positive semi-definite"):
        ntk.kernel(ntk.serial(bad, ntk.Flatten(), ntk.Dense(1)), X)


@pytest.mark.parametrize(
    "kw, err, match",
    [
        (dict(n_heads=0), ValueError, "n_heads must be a positive int"),
        (dict(n_chan_key=2.5), ValueError, "n_chan_key must be a positive int"),
        (dict(attention="tanh"), ValueError, "attention must be one of"),
        (dict(qk_scale="cubic"), ValueError, "qk_scale must be one of"),
        (dict(tie_qk="yes"), TypeError, "tie_qk must be True, False or None"),
        (dict(W_key_std=-1.0), ValueError, "W_key_std must be a finite number >= 0"),
        (dict(b_std=float("nan")), ValueError, "b_std must be None or a finite number"),
        (dict(pos_emb_type="rotary"), ValueError, "pos_emb_type must be one of"),
        (dict(pos_emb_decay_fn=3), TypeError, "pos_emb_decay_fn must be None or a function"),
        (dict(pos_emb_p_norm=0), ValueError, "pos_emb_p_norm must be a number > 0"),
        (dict(parameterization="mup"), ValueError, "parameterization must be one of"),
        (dict(val_pos_emb=1), TypeError, "val_pos_emb must be a bool"),
    ],
)
def test_bad_arguments(kw, err, match):
    args = dict(n_chan_out=8, n_chan_key=4, n_chan_val=4, n_heads=2)
    args.update(kw)
    with pytest.raises(err, match=f"ntk.GlobalSelfAttention: {match}"):
        ntk.GlobalSelfAttention(**args)
