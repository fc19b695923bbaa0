"""Empirical NTK: implementations agree with explicit J J^T and with neural-tangents."""

import jax
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import landscape
import ntk
from ntk import _blocks
from tests.ntk import _specs

MLP = ntk.serial(
    ntk.Dense(16, W_std=1.5, b_std=0.1),
    ntk.Relu(),
    ntk.Dense(16, W_std=1.5),
    ntk.Erf(),
    ntk.Dense(3, b_std=0.2),
)
CNN = ntk.serial(
    ntk.Conv(3, (3, 3), padding="SAME", b_std=0.1),
    ntk.Relu(),
    ntk.AvgPool((2, 1), (2, 1)),
    ntk.Conv(3, (2, 2), strides=(1, 2), parameterization="standard", b_std=0.1),
    ntk.Gelu(),
    ntk.GlobalAvgPool(),
    ntk.Dense(2, b_std=0.2),
)


def explicit(model, x1, x2):
    apply_fn, p, st = model
    flat, unravel = ravel_pytree(p)
    jac = lambda x: jax.jacrev(lambda v: apply_fn(unravel(v), st, x)[0])(flat)  # noqa: E731
    j1, j2 = jac(x1), jac(x2)
    return np.einsum("iok,jrk->ijor", j1, j2)


@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_methods_match_explicit_jacobian(which, vec_inputs, img_inputs, key):
    arch, (x1, x2) = (MLP, vec_inputs) if which == "mlp" else (CNN, img_inputs)
    x = np.concatenate([x1, x2])
    n = len(x1)
    with jax.enable_x64(True):
        model = arch.init(key, x1.shape[1:], dtype=np.float64)
        full = explicit(model, x, x)
        traced = np.einsum("ijoo->ij", full) / full.shape[-1]
        # float64: every method is exact up to round-off (measured <= 4e-16 relative)
        for method in ("structured", "jacobian", "ntvp"):
            kf = ntk.empirical_ntk(model, x, method=method, trace_outputs=False)
            np.testing.assert_allclose(kf, full, rtol=1e-10, atol=1e-12, err_msg=method)
        k = ntk.empirical_ntk(model, x1, x2, method="structured", block_size=2)
        np.testing.assert_allclose(k, traced[:n, n:], rtol=1e-10, atol=1e-12)
    assert k.dtype == np.float64


def test_float32(vec_inputs, key):
    x1, x2 = (x.astype(np.float32) for x in vec_inputs)
    model = MLP.init(key, (5,))
    ref = ntk.empirical_ntk(model, x1, x2, method="jacobian")
    assert ref.dtype == np.float32
    for method in ("structured", "ntvp"):
        # float32 summation order differs between methods: 1e-5 relative
        np.testing.assert_allclose(
            ntk.empirical_ntk(model, x1, x2, method=method), ref, rtol=1e-5, atol=1e-5
        )


FIX, SPECS = _specs.load("ntk_empirical.npz")


@pytest.mark.parametrize("spec", SPECS, ids=[s[0] for s in SPECS])
def test_flax_model_matches_neural_tangents_stax(spec):
    # the same weights in our Flax model and in neural-tangents' stax model (both
    # parameterisations): outputs and empirical NTK equal to float64 round-off
    name, _, layers = spec
    arch = _specs.arch(layers)
    with jax.enable_x64(True):
        x1, x2 = FIX[f"{name}/x1"], FIX[f"{name}/x2"]
        model = arch.init(jax.random.key(0), x1.shape[1:], dtype=np.float64)
        params = _specs.nt_params(arch, FIX, name)
        landscape._validate.check_same_structure(params, model.params, fn="test", name="params")
        model = model.replace(params=params)
        np.testing.assert_allclose(model(x1), FIX[f"{name}/out1"], rtol=1e-10, atol=1e-12)
        k = ntk.empirical_ntk(model, x1, x2)
    ref = FIX[f"{name}/ntk12"]
    assert np.max(np.abs(k - ref)) / np.max(np.abs(ref)) < 1e-10


def test_any_model_and_auto(digits_data, key):
    model = landscape.make_model("mlp", input_shape=(64,), num_outputs=10, hidden=(16,), seed=0)
    x = digits_data.train["x"][:6]
    a = ntk.empirical_ntk(model, x, method="auto")
    j = ntk.empirical_ntk(
        model.apply_fn.__call__ and (lambda p, xx: model.apply_fn(p, model.state, xx)[0]),
        model.params,
        x,
        method="jacobian",
    )
    np.testing.assert_allclose(a, j, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="method='structured' needs a model built by an ntk"):
        ntk.empirical_ntk(model, x, method="structured")


def test_f_params_convention_equals_model(vec_inputs, key):
    x1, x2 = vec_inputs
    model = MLP.init(key, (5,))
    a = ntk.empirical_ntk(model, x1, x2)
    b = ntk.empirical_ntk(MLP.apply, model.params, x1, x2)
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_no_recompilation(vec_inputs, key):
    model = MLP.init(key, (5,))
    x1, x2 = vec_inputs
    ntk.empirical_ntk(model, x1, x2)
    before = _blocks._wave._cache_size()
    ntk.empirical_ntk(model, x1 * 2, x2)
    ntk.empirical_ntk(model.replace(params=jax.tree.map(lambda p: p + 1, model.params)), x1, x2)
    assert _blocks._wave._cache_size() == before


def test_empirical_nngp(vec_inputs, key):
    model = MLP.init(key, (5,))
    x1, x2 = vec_inputs
    out1, out2 = np.asarray(model(x1)), np.asarray(model(x2))
    np.testing.assert_allclose(ntk.empirical_nngp(model, x1, x2), out1 @ out2.T / 3, rtol=1e-5)


def test_monte_carlo_nngp_within_four_standard_errors(vec_inputs, key):
    # one hidden layer: E[f f^T / O] over initialisations equals the analytic NNGP exactly
    # (no finite-width bias), so the Monte Carlo mean must lie within 4 standard errors
    arch = ntk.serial(
        ntk.Dense(512, W_std=1.5, b_std=0.1), ntk.Relu(), ntk.Dense(4, W_std=1.2, b_std=0.1)
    )
    x1 = vec_inputs[0][:5]
    with jax.enable_x64(True):
        mc = ntk.monte_carlo(arch, x1, key=key, num_samples=32)
        exact = ntk.kernel(arch, x1)
    z = np.abs(mc.nngp - exact.nngp) / mc.nngp_sem
    assert np.all(z < 4), z.max()
    # the NTK of width 512 is within a few per cent (O(1/sqrt(width)) fluctuations, averaged)
    assert np.linalg.norm(mc.ntk - exact.ntk) / np.linalg.norm(exact.ntk) < 0.05


def test_bad_inputs(vec_inputs, img_inputs, key, monkeypatch):
    model = MLP.init(key, (5,))
    x1, _ = vec_inputs
    with pytest.raises(ValueError, match=r"ntk.empirical_ntk: x1 must have shape \(n, features\)"):
        ntk.empirical_ntk(model, img_inputs[0])
    with pytest.raises(ValueError, match="x1 must be finite"):
        ntk.empirical_ntk(model, np.full((2, 5), np.inf))
    with pytest.raises(ValueError, match="x2 must have the same example shape"):
        ntk.empirical_ntk(model, x1, np.ones((2, 4)))
    with pytest.raises(ValueError, match="method must be one of"):
        ntk.empirical_ntk(model, x1, method="fast")
    with pytest.raises(ValueError, match="could not be applied"):
        ntk.empirical_ntk(MLP.apply, model.params, np.ones((2, 7)))
    with pytest.raises(TypeError, match="not the architecture itself"):
        ntk.empirical_ntk(MLP, model.params, x1)
    with pytest.raises(ValueError, match="params must be finite"):
        ntk.empirical_ntk(MLP.apply, jax.tree.map(lambda p: p * np.nan, model.params), x1)
    monkeypatch.setenv("NTK_MEMORY_LIMIT", "1000")
    with pytest.raises(ValueError, match="cannot fit"):
        ntk.empirical_ntk(model, x1, block_size=9)
