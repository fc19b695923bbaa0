"""Empirical NTK: implementations agree with explicit J J^T and with neural-tangents."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
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
# one hidden layer without activation: no layer needs a backward pass (readout and head only)
MLP1 = ntk.serial(ntk.Dense(6, W_std=1.3, b_std=0.1), ntk.Dense(2, b_std=0.3))
CNN = ntk.serial(
    ntk.Conv(3, (3, 3), padding="SAME", b_std=0.1),
    ntk.Relu(),
    ntk.AvgPool((2, 1), (2, 1)),
    ntk.Conv(3, (2, 2), strides=(1, 2), parameterization="standard", b_std=0.1),
    ntk.Gelu(),
    # SAME average pooling before GlobalAvgPool: unequal position weights in the head signal
    ntk.AvgPool((2, 2), (1, 1), "SAME"),
    ntk.GlobalAvgPool(),
    ntk.Dense(2, b_std=0.2),
)


def _dense_jjt(apply_fn, p, st, x):
    flat, unravel = ravel_pytree(p)
    j = jax.jacrev(lambda v: apply_fn(unravel(v), st, x)[0])(flat)  # (n, O, P): dense
    return jnp.einsum("iok,jrk->ijor", j, j, precision=jax.lax.Precision.HIGHEST)


def explicit(model, x):
    """The full per-output kernel J J^T from the dense Jacobian."""
    return _specs.run_once(
        functools.partial(_dense_jjt, model.apply_fn), model.params, model.state, x
    )


def outputs(model, x):
    return np.asarray(jax.jit(model.apply_fn)(model.params, model.state, x)[0])


def _all_methods(archs, params, x, n):
    """For each architecture: dense J J^T and every method's kernel (public traceable
    factory ``ntk.empirical_ntk_fn``): full per-output kernels of K(x, x) and traced kernels
    of K(x[:n], x[n:]); all in one program."""
    out = []
    for i, (arch, p) in enumerate(zip(archs, params)):
        res = {"explicit": _dense_jjt(lambda q, s, xx, a=arch: (a.apply(q, xx), s), p, {}, x)}
        # the generic methods once per input kind; structured for every architecture
        for m in ("structured", "jacobian", "ntvp") if i == 0 else ("structured",):
            full = ntk.empirical_ntk_fn(arch.apply, method=m, trace_outputs=False, arch=arch)
            traced = ntk.empirical_ntk_fn(arch.apply, method=m, trace_outputs=True, arch=arch)
            res[m] = (full(p, x), traced(p, x[:n], x[n:]))
        out.append(res)
    return out


@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_methods_match_explicit_jacobian(which, vec_inputs, img_inputs, key):
    archs, (x1, x2) = ((MLP, MLP1), vec_inputs) if which == "mlp" else ((CNN,), img_inputs)
    x = np.concatenate([x1, x2])
    n = len(x1)
    with jax.enable_x64(True):
        params = [a.init_params(key, x1.shape[1:], dtype=np.float64) for a in archs]
        results = _specs.run_once(functools.partial(_all_methods, archs, n=n), params, x)
    for res in results:
        full = res.pop("explicit")
        traced = np.einsum("ijoo->ij", full) / full.shape[-1]
        assert full.dtype == np.float64
        # float64: every method is exact up to round-off (measured <= 4e-16 relative)
        for method, (kf, kt) in res.items():
            np.testing.assert_allclose(kf, full, rtol=1e-10, atol=1e-12, err_msg=method)
            np.testing.assert_allclose(kt, traced[:n, n:], rtol=1e-10, atol=1e-12, err_msg=method)


def test_float32_blocked_driver(vec_inputs, key):
    # the public driver for every method in float32 against the float64 dense J J^T
    # (structured with block_size 2: symmetric diagonal and off-diagonal blocks, padded last
    # block)
    x1, x2 = vec_inputs
    model = MLP.init(key, (5,))
    with jax.enable_x64(True):
        m64 = model.replace(params=jax.tree.map(lambda p: np.asarray(p, np.float64), model.params))
        full = explicit(m64, x1)
    ref = np.einsum("ijoo->ij", full) / 3
    for method, bs in (("structured", 2), ("jacobian", None), ("ntvp", None)):
        k = ntk.empirical_ntk(model, x1.astype(np.float32), method=method, block_size=bs)
        assert isinstance(k, ntk.EmpiricalKernel) and k.method == method
        assert k.matrix.dtype == np.float32
        # float32 round-off of O(1) sums over ~300 parameters: 1e-5 of the largest entry
        np.testing.assert_allclose(
            k.matrix, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max(), err_msg=method
        )


FIX, SPECS = _specs.load("ntk_empirical.npz")


@pytest.fixture(scope="module")
def nt_models():
    """Every fixture network as our Flax model (``arch.init``) holding neural-tangents' stax
    weights; outputs and structured empirical NTKs (K(x1, x2) and K(x1, x1)) of all of them
    in one compiled float64 program."""
    models, xs = {}, {}
    with jax.enable_x64(True):
        for name, _, layers in SPECS:
            arch = _specs.arch(layers)
            x1 = FIX[f"{name}/x1"]
            model = arch.init(jax.random.key(0), x1.shape[1:], dtype=np.float64)
            params = _specs.nt_params(arch, FIX, name)
            landscape.validate.check_same_structure(params, model.params, name="params")
            models[name] = model.replace(params=params)
            xs[name] = (x1, FIX[f"{name}/x2"])

        def run(params, xs):
            out = {}
            for name, m in models.items():
                arch = m.apply_fn.arch
                k = ntk.empirical_ntk_fn(m.apply_fn, method="structured", arch=arch)
                x1, x2 = xs[name]
                y1 = m.apply_fn(params[name], m.state, x1)[0]
                # the same outputs through the NNX module itself (nnx.merge of the graph)
                module = nnx.merge(m.apply_fn.graphdef_eval, params[name], m.state)
                out[name] = (y1, module(x1), k(params[name], x1, x2), k(params[name], x1))
            return out

        return _specs.run_once(run, {n: m.params for n, m in models.items()}, xs)


@pytest.mark.parametrize("spec", SPECS, ids=[s[0] for s in SPECS])
def test_flax_model_matches_neural_tangents_stax(spec, nt_models):
    # the same weights in our Flax model and in neural-tangents' stax model (both
    # parameterisations): outputs and empirical NTK equal to float64 round-off (measured
    # <= 1e-15 relative)
    name = spec[0]
    y1, y1_nnx, k12, k11 = nt_models[name]
    np.testing.assert_allclose(y1, FIX[f"{name}/out1"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(y1_nnx, FIX[f"{name}/out1"], rtol=1e-10, atol=1e-12)
    for got, key in ((k12, "ntk12"), (k11, "ntk11")):
        ref = FIX[f"{name}/{key}"]
        assert np.max(np.abs(got - ref)) / np.max(np.abs(ref)) < 1e-10, key


def _foreign_apply(params, state, x, *, train=False):
    h = jnp.tanh(x @ params["w1"] + params["b1"][None])
    return h @ params["w2"], state


def test_any_model_and_auto(vec_inputs):
    # a model triple that is not an ntk architecture: "auto" picks Jacobian contraction or
    # NTK-vector products from their cost formulas; structured is refused
    rng = np.random.default_rng(0)
    params = {
        "w1": rng.standard_normal((5, 16)).astype(np.float32) / np.sqrt(5),
        "b1": np.zeros(16, np.float32),
        "w2": rng.standard_normal((16, 3)).astype(np.float32) / 4,
    }
    model = landscape.Model(_foreign_apply, params, {})
    x = vec_inputs[0].astype(np.float32)
    ref = np.einsum("ijoo->ij", explicit(model, x)) / 3
    a = ntk.empirical_ntk(model, x, method="auto")
    assert a.method in ("jacobian", "ntvp")
    # float32, summation order differs: 1e-5 relative to the largest entry
    np.testing.assert_allclose(a.matrix, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    with pytest.raises(ValueError, match="method='structured' needs a model built by an ntk"):
        ntk.empirical_ntk(model, x, method="structured")


def test_f_params_convention_equals_model(vec_inputs, key):
    x1, x2 = vec_inputs
    model = MLP.init(key, (5,))
    a = ntk.empirical_ntk(model, x1, x2)
    b = ntk.empirical_ntk(MLP.apply, model.params, x1, x2)
    np.testing.assert_allclose(a.matrix, b.matrix, rtol=1e-6)


def test_no_recompilation(vec_inputs, key):
    model = MLP.init(key, (5,))
    x1, x2 = vec_inputs
    ntk.empirical_ntk(model, x1, x2)
    ntk.empirical_ntk(model, x1, x2, block_size=3)
    before = _blocks._single._cache_size() + _blocks._wave._cache_size()
    ntk.empirical_ntk(model, x1 * 2, x2)
    ntk.empirical_ntk(model.replace(params=jax.tree.map(lambda p: p + 1, model.params)), x1, x2)
    # another seed, the same architecture rebuilt, and f = arch.apply: the same program
    ntk.empirical_ntk(MLP.init(jax.random.key(7), (5,)), x1, x2)
    rebuilt = ntk.serial(*MLP.layers)
    ntk.empirical_ntk(rebuilt.init(key, (5,)), x1, x2)
    ntk.empirical_ntk(rebuilt.apply, model.params, x1, x2)
    ntk.empirical_ntk(rebuilt.apply, model.params, x1, x2, block_size=3)
    assert _blocks._single._cache_size() + _blocks._wave._cache_size() == before


def test_small_call_is_one_program(vec_inputs, key, monkeypatch):
    # one block: the kernel and the finiteness flags of params, x1 and x2 in one compiled
    # program (no blocked wave, no separate finiteness dispatch), equal to the blocked kernel
    model = MLP.init(key, (5,))
    x1, x2 = vec_inputs
    ref = ntk.empirical_ntk(model, x1, x2, block_size=2)
    monkeypatch.setattr(_blocks, "_wave", None)
    monkeypatch.setattr(landscape.validate, "_finite_flags", None)
    small = ntk.empirical_ntk(model, jnp.asarray(x1), jnp.asarray(x2))
    np.testing.assert_allclose(small.matrix, ref.matrix, rtol=1e-5, atol=1e-6)
    assert small.matrix.flags.writeable


def test_empirical_nngp(vec_inputs, key):
    model = MLP.init(key, (5,))
    x1, x2 = vec_inputs
    out1, out2 = outputs(model, x1), outputs(model, x2)
    ref = out1.astype(np.float64) @ out2.T.astype(np.float64) / 3
    # float32 products of O(1) outputs: 1e-6 of the largest entry
    atol = 1e-6 * np.abs(ref).max()
    nngp = ntk.empirical_nngp(model, x1, x2)
    assert isinstance(nngp, ntk.EmpiricalKernel) and nngp.kind == "nngp"
    np.testing.assert_allclose(nngp.matrix, ref, rtol=1e-5, atol=atol)
    full = ntk.empirical_nngp(model, x1, x2, trace_outputs=False)
    assert full.matrix.shape == (9, 4, 3, 3) and not full.trace_outputs
    np.testing.assert_allclose(np.einsum("ijoo->ij", full.matrix) / 3, ref, rtol=1e-5, atol=atol)


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
    nan_params = jax.tree.map(lambda p: p * np.nan, model.params)
    with pytest.raises(ValueError, match="params must be finite"):
        ntk.empirical_ntk(MLP.apply, nan_params, x1)  # one block: flags of the program
    with pytest.raises(ValueError, match="params must be finite"):
        ntk.empirical_ntk(MLP.apply, nan_params, x1, block_size=2)  # blocked
    with pytest.raises(ValueError, match="x2 must be finite"):
        ntk.empirical_ntk(model, jnp.asarray(x1), jnp.full((2, 5), jnp.nan))
    monkeypatch.setenv("NTK_MEMORY_LIMIT", "1000")
    with pytest.raises(ValueError, match="cannot fit"):
        ntk.empirical_ntk(model, x1, block_size=9)


def test_result_object(tmp_path, vec_inputs, key):
    # the empirical kernels are result objects: the matrix, the settings, provenance, a short
    # repr, an array view, and a save/load round trip
    model = MLP.init(key, (5,))
    x1, x2 = vec_inputs
    k = ntk.empirical_ntk(model, x1, x2, block_size=3)
    assert (k.kind, k.method, k.trace_outputs, k.block_size) == ("ntk", "structured", True, 3)
    assert k.matrix.shape == (9, 4) and isinstance(k.matrix, np.ndarray)
    np.testing.assert_array_equal(np.asarray(k), k.matrix)
    assert np.asarray(k, np.float64).dtype == np.float64
    assert k.provenance["settings"]["num_outputs"] == 3 and k.provenance["dtype"] == "float32"
    text = repr(k)
    assert text.startswith("EmpiricalKernel(matrix=float32[9, 4], kind='ntk'") and len(text) < 200
    k.save(tmp_path / "k.npz")
    back = ntk.EmpiricalKernel.load(tmp_path / "k.npz")
    np.testing.assert_array_equal(back.matrix, k.matrix)
    assert (back.kind, back.method, back.block_size) == ("ntk", "structured", 3)
    # (the foundation's load freezes lists to tuples, e.g. the device list)
    assert back.provenance["settings"] == k.provenance["settings"]
    assert back.provenance["packages"] == k.provenance["packages"]
    g = ntk.empirical_nngp(model, x1)
    g.save(tmp_path / "g.npz")
    back = ntk.EmpiricalKernel.load(tmp_path / "g.npz")
    assert back.kind == "nngp" and back.method is None and back.block_size is None
    np.testing.assert_array_equal(back.matrix, g.matrix)
    # array consumers take the result itself
    sp = ntk.spectra(empirical=ntk.empirical_ntk(model, x1))
    assert sp.eigenvalues["empirical"].shape == (9,)


def test_store_resumes_after_interrupt_and_refuses_another_job(
    tmp_path, vec_inputs, key, monkeypatch, capsys, interrupt_after
):
    # blocks of 2 rows: 5 x 5 upper-triangle blocks of a symmetric 9 x 9 kernel = 15 blocks;
    # interrupted after 4, the rerun computes the other 11 and equals the uninterrupted kernel
    model = MLP.init(key, (5,))
    x1, _ = vec_inputs
    ref = ntk.empirical_ntk(model, x1, block_size=2)
    store = tmp_path / "theta"
    with monkeypatch.context() as m:
        made = interrupt_after(m, 4)
        with pytest.raises(KeyboardInterrupt):
            ntk.empirical_ntk(model, x1, block_size=2, store=store)
    assert len(made) == 4
    assert "4/15 chunks are saved" in capsys.readouterr().err
    with monkeypatch.context() as m:
        made = interrupt_after(m, 100)
        again = ntk.empirical_ntk(model, x1, block_size=2, store=landscape.Store(store))
    assert len(made) == 11
    np.testing.assert_array_equal(again.matrix, ref.matrix)
    # the same directory for another job (other parameters, other method): refused, with
    # the differences listed; overwrite=True replaces it
    other = model.replace(params=jax.tree.map(lambda p: p * 2, model.params))
    with pytest.raises(ValueError, match=r"holds results of another job \(differences: .*params"):
        ntk.empirical_ntk(other, x1, block_size=2, store=store)
    with pytest.raises(ValueError, match=r"differences: .*method: 'structured' -> 'jacobian'"):
        ntk.empirical_ntk(model, x1, block_size=2, method="jacobian", store=store)
    with pytest.raises(ValueError, match=r"differences: .*block_rows: 2 -> 3"):
        ntk.empirical_ntk(model, x1, block_size=3, store=store)
    fresh = ntk.empirical_ntk(
        other, x1, block_size=2, store=landscape.Store(store, overwrite=True)
    )
    np.testing.assert_allclose(
        fresh.matrix, ntk.empirical_ntk(other, x1, block_size=2).matrix, rtol=0, atol=0
    )
