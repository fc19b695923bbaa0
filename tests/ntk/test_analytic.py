"""Analytic NNGP/NTK: neural-tangents fixtures, closed forms, quadrature, blocking, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import landscape
import ntk
from ntk import _blocks, _kmath
from tests.ntk import _specs

FIX, SPECS = _specs.load("ntk_analytic.npz")


def rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="module")
def nt_kernels():
    """Our analytic kernels of every fixture architecture, all in ONE compiled float64
    program (``arch.kernel_fn``, the traceable kernel behind ``ntk.kernel``); K([x1; x2])
    holds both K(x1, x1) and K(x1, x2)."""
    archs = {name: _specs.arch(layers) for name, _, layers in SPECS}
    with jax.enable_x64(True):
        xs = {n: np.concatenate([FIX[f"{n}/x1"], FIX[f"{n}/x2"]]) for n in archs}
        return _specs.run_once(lambda xs: {n: archs[n].kernel_fn(xs[n]) for n in archs}, xs)


@pytest.mark.parametrize("spec", SPECS, ids=[s[0] for s in SPECS])
def test_matches_neural_tangents(spec, nt_kernels):
    # neural-tangents 0.6.5, float64 (tests/data/README_ntk.md). Issue tolerance: 1e-6
    # relative; measured 1e-15 off the diagonal and <= 2e-9 on the ReLU-family diagonal
    # (correlation exactly 1, where arccos amplifies rounding).
    name = spec[0]
    nngp, ntkm = nt_kernels[name]
    n = len(FIX[f"{name}/x1"])
    assert nngp.dtype == np.float64
    got = {
        "nngp12": nngp[:n, n:],
        "ntk12": ntkm[:n, n:],
        "nngp11": nngp[:n, :n],
        "ntk11": ntkm[:n, :n],
    }
    for key, val in got.items():
        assert rel(val, FIX[f"{name}/{key}"]) < 1e-6, key


def _relu_closed(x1, x2, w=1.0):
    """One hidden ReLU layer, no bias, NTK parameterisation, by hand (Cho & Saul 2009)."""
    d = x1.shape[1]
    s12, s11, s22 = x1 @ x2.T / d, (x1**2).sum(1) / d, (x2**2).sum(1) / d
    s12, s11, s22 = w * w * s12, w * w * s11[:, None], w * w * s22[None]
    th = np.arccos(np.clip(s12 / np.sqrt(s11 * s22), -1, 1))
    k = np.sqrt(s11 * s22) * (np.sin(th) + (np.pi - th) * np.cos(th)) / (2 * np.pi)
    kd = (np.pi - th) / (2 * np.pi)
    return k, k + s12 * kd  # readout Dense(W_std=1): Sigma = K, Theta = K + Theta_h


def test_relu_arc_cosine_closed_form():
    # x = (1, 0), x' = (1, 1)/sqrt(2): angle pi/4; checked by hand: K = (sin + (pi - t) cos)/(2pi)/2
    x1 = np.array([[1.0, 0.0], [0.0, 2.0]])
    x2 = np.array([[1.0, 1.0]]) / np.sqrt(2)
    arch = ntk.serial(ntk.Dense(3), ntk.Relu(), ntk.Dense(1))
    with jax.enable_x64(True):
        k = ntk.kernel(arch, x1, x2)
    t = np.pi / 4
    assert abs(k.nngp[0, 0] - 0.5 * (np.sin(t) + (np.pi - t) * np.cos(t)) / (2 * np.pi)) < 1e-14
    nngp, ntkm = _relu_closed(x1, x2)
    np.testing.assert_allclose(k.nngp, nngp, rtol=1e-13)
    np.testing.assert_allclose(k.ntk, ntkm, rtol=1e-13)


def test_erf_arcsine_closed_form():
    x1 = np.array([[1.0, 0.5], [0.2, -1.0]])
    arch = ntk.serial(ntk.Dense(3, W_std=1.3), ntk.Erf(), ntk.Dense(1))
    with jax.enable_x64(True):
        k = ntk.kernel(arch, x1)
    s = 1.69 * x1 @ x1.T / 2
    d = 1 + 2 * np.diag(s)
    expect = 2 / np.pi * np.arcsin(2 * s / np.sqrt(np.outer(d, d)))
    np.testing.assert_allclose(k.nngp, expect, rtol=1e-13)


def _quad(fn, deg=128, **kw):
    return ntk.Elementwise(fn, deg=deg, **kw)


def _erf_nngp(c, v1, v2):
    return _kmath.erf(c, v1, v2)[0]


# (closed form, numeric, tolerance)
QUAD = {
    # smooth activations: Gauss-Hermite (degree 128) matches the closed forms to 1e-6
    # (measured 2e-9 for erf at pre-activation variance ~2.5, where erf is nearly a step;
    # degree 64 reaches only 4e-5 there, 9e-9 at variance ~1)
    "erf": (ntk.Erf(), _quad(jax.scipy.special.erf), 1e-6),
    "gelu": (ntk.Gelu(), _quad(lambda x: jax.nn.gelu(x, approximate=False)), 1e-6),
    # ReLU's kink limits quadrature: about 1e-3 at degree 200 (measured: NNGP 5e-4,
    # NTK 2.3e-3, the NTK needing the step function relu')
    "relu": (ntk.Relu(), _quad(jax.nn.relu, deg=200), 5e-3),
    # a closed-form nngp_fn: Kdot by autodiff equals the hand-written derivative (float64
    # round-off)
    "nngp_fn": (ntk.Erf(), ntk.Elementwise(jax.scipy.special.erf, nngp_fn=_erf_nngp), 1e-12),
}


@pytest.fixture(scope="module")
def quad_kernels(vec_inputs_module):
    """Closed-form and numeric kernels of every QUAD case in one compiled float64 program."""
    x1 = vec_inputs_module[0]
    mk = lambda act: ntk.serial(ntk.Dense(8, W_std=1.4, b_std=0.1), act, ntk.Dense(1))  # noqa: E731
    archs = {(k, i): mk(v[i]) for k, v in QUAD.items() for i in (0, 1)}
    with jax.enable_x64(True):
        return _specs.run_once(lambda a: {k: f.kernel_fn(a) for k, f in archs.items()}, x1)


@pytest.mark.parametrize("case", list(QUAD))
def test_quadrature_vs_closed_form(case, quad_kernels):
    tol = QUAD[case][2]
    (a_nngp, a_ntk), (b_nngp, b_ntk) = quad_kernels[case, 0], quad_kernels[case, 1]
    assert rel(b_nngp, a_nngp) < tol
    assert rel(b_ntk, a_ntk) < tol


def test_avgpool_keeps_only_the_band_it_needs():
    # the fixture cnn_band_residual_layernorm (AvgPool stages, a pool inside a residual
    # branch, LayerNorm, a strided SAME convolution between pools, Flatten readout) is
    # computed in band layout and matches neural-tangents (test_matches_neural_tangents);
    # its radius at the input: 5 x 3 offsets (capped at the 6 x 5 image: 5 x 3)
    from ntk import _arch

    specs = dict((s[0], s[2]) for s in SPECS)
    band = _specs.arch(specs["cnn_band_residual_layernorm"])
    assert _arch.position_layout(band, (6, 5)) == ("band", (5, 3))
    assert _arch.position_layout(band, (40, 40)) == ("band", (5, 3))  # not 39 x 39
    # Flatten only: the position diagonal; GlobalAvgPool anywhere: the full covariance
    assert _arch.position_layout(_specs.arch(specs["cnn_same_flatten"]), (6, 5))[0] == "diag"
    assert _arch.position_layout(_specs.arch(specs["cnn_avgpool_same_gap"]), (6, 5))[0] == "full"


def test_float32_close_to_float64():
    # the public blocked driver in float32 on a CNN with GlobalAvgPool (full position
    # covariance) against neural-tangents' float64 kernel
    name = "cnn_gap_std"
    arch = _specs.arch(dict((s[0], s[2]) for s in SPECS)[name])
    x1, x2 = (FIX[f"{name}/{k}"].astype(np.float32) for k in ("x1", "x2"))
    k32 = ntk.kernel(arch, x1, x2)
    assert k32.ntk.dtype == np.float32
    # float32 round-off through ~10 operations per entry: 1e-5 relative
    assert rel(k32.ntk, FIX[f"{name}/ntk12"]) < 1e-5
    assert rel(k32.nngp, FIX[f"{name}/nngp12"]) < 1e-5


def test_blocks_symmetry_and_store(tmp_path, vec_inputs, monkeypatch):
    arch = ntk.serial(ntk.Dense(8, W_std=1.5, b_std=0.1), ntk.Relu(), ntk.Dense(1))
    x1, x2 = vec_inputs
    with jax.enable_x64(True):
        full = ntk.kernel(arch, x1)
        blocked = ntk.kernel(arch, x1, block_size=2, store=tmp_path / "k")
        cross = ntk.kernel(arch, x1, x1, block_size=4)
        # off the diagonal the blocks agree to round-off; the ReLU diagonal (correlation 1)
        # only to ~1e-8 (sqrt of float64 round-off), as in neural-tangents
        np.testing.assert_allclose(blocked.ntk, full.ntk, rtol=1e-8)
        np.testing.assert_allclose(cross.ntk, full.ntk, rtol=1e-8)
        off = ~np.eye(len(x1), dtype=bool)
        np.testing.assert_allclose(cross.ntk[off], full.ntk[off], rtol=1e-12)
        np.testing.assert_array_equal(blocked.ntk, blocked.ntk.T)
        # every block is on disk: a rerun computes nothing
        monkeypatch.setattr(_blocks, "_wave", None)
        again = ntk.kernel(arch, x1, block_size=2, store=tmp_path / "k")
    np.testing.assert_array_equal(again.ntk, blocked.ntk)


def test_store_resumes_after_interrupt_and_refuses_another_job(
    tmp_path, vec_inputs, monkeypatch, interrupt_after
):
    # K(x1, x2) of 9 x 4 inputs in blocks of 3: 3 x 2 = 6 blocks; interrupted after 2, the
    # rerun computes the other 4 and equals the uninterrupted kernel
    arch = ntk.serial(ntk.Dense(8, W_std=1.5, b_std=0.1), ntk.Erf(), ntk.Dense(1))
    x1, x2 = vec_inputs
    ref = ntk.kernel(arch, x1, x2, block_size=3)
    store = landscape.Store(tmp_path / "k")
    with monkeypatch.context() as m:
        made = interrupt_after(m, 2)
        with pytest.raises(KeyboardInterrupt):
            ntk.kernel(arch, x1, x2, block_size=3, store=store)
    assert len(made) == 2 and len(store.entries()) == 2
    with monkeypatch.context() as m:
        made = interrupt_after(m, 100)
        again = ntk.kernel(arch, x1, x2, block_size=3, store=tmp_path / "k")
    assert len(made) == 4
    np.testing.assert_array_equal(again.ntk, ref.ntk)
    np.testing.assert_array_equal(again.nngp, ref.nngp)
    # another architecture or other inputs in the same directory: refused, differences listed
    other = ntk.serial(ntk.Dense(8, W_std=1.5, b_std=0.1), ntk.Relu(), ntk.Dense(1))
    with pytest.raises(
        ValueError, match=r"another job \(differences: arch: .*Erf.* -> .*Relu\(\)"
    ):
        ntk.kernel(other, x1, x2, block_size=3, store=tmp_path / "k")
    with pytest.raises(ValueError, match=r"differences: data: "):
        ntk.kernel(arch, x1 + 1, x2, block_size=3, store=tmp_path / "k")
    with pytest.raises(TypeError, match="store must be a path or a landscape.Store"):
        ntk.kernel(arch, x1, store=3)


def _programs():
    """Compiled programs of the block driver: the one-block program and the blocked wave."""
    return _blocks._single._cache_size() + _blocks._wave._cache_size()


def test_no_recompilation(vec_inputs):
    arch = ntk.serial(ntk.Dense(8), ntk.Relu(), ntk.Dense(1))
    x1, x2 = vec_inputs
    ntk.kernel(arch, x1, x2)
    ntk.kernel(arch, x1, x2, block_size=3)
    before = _programs()
    ntk.kernel(arch, x1 + 1.0, x2)
    ntk.kernel(arch, x1 + 1.0, x2, block_size=3)
    ntk.kernel(ntk.serial(ntk.Dense(8), ntk.Relu(), ntk.Dense(1)), x1, x2)  # equal description
    # NTK parameterisation: the kernel does not depend on the widths, one program per sweep
    wide = ntk.kernel(ntk.serial(ntk.Dense(512), ntk.Relu(), ntk.Dense(3)), x1, x2)
    assert _programs() == before
    np.testing.assert_array_equal(wide.ntk, ntk.kernel(arch, x1, x2).ntk)
    # standard parameterisation: the fan-in enters the NTK, a new program and a new kernel
    std = lambda n: ntk.serial(  # noqa: E731
        ntk.Dense(n), ntk.Relu(), ntk.Dense(1, parameterization="standard")
    )
    assert not np.allclose(ntk.kernel(std(8), x1, x2).ntk, ntk.kernel(std(16), x1, x2).ntk)


def test_small_call_is_one_program(vec_inputs, monkeypatch):
    # one block on one device without a store: one compiled program (the kernel and the
    # inputs' finiteness flags), no blocked wave, no separate finiteness dispatch
    arch = ntk.serial(ntk.Dense(8, W_std=1.5, b_std=0.1), ntk.Relu(), ntk.Dense(1))
    x1, x2 = vec_inputs
    with jax.enable_x64(True):
        ref = ntk.kernel(arch, x1, x2, block_size=3)
        ref_sym = ntk.kernel(arch, x1, block_size=2)
        monkeypatch.setattr(_blocks, "_wave", None)
        monkeypatch.setattr(landscape.validate, "_finite_flags", None)
        small = ntk.kernel(arch, jnp.asarray(x1), jnp.asarray(x2))
        sym = ntk.kernel(arch, x1)
    np.testing.assert_allclose(small.ntk, ref.ntk, rtol=1e-12)
    np.testing.assert_allclose(small.nngp, ref.nngp, rtol=1e-12)
    np.testing.assert_allclose(sym.ntk, ref_sym.ntk, rtol=1e-8)
    # host arrays the caller may modify, as the blocked driver gives
    assert isinstance(small.ntk, np.ndarray) and small.ntk.flags.writeable
    assert small.provenance["settings"]["block_size"] == 9


@pytest.mark.parametrize("block_size", [None, 2])
@pytest.mark.parametrize("device", [False, True])
def test_non_finite_inputs_name_the_input(vec_inputs, block_size, device, tmp_path):
    # the small call checks finiteness inside its compiled program, the blocked driver
    # before the first block (no block of a NaN input reaches the store): the same errors
    arch = ntk.serial(ntk.Dense(8), ntk.Relu(), ntk.Dense(1))
    x1, x2 = vec_inputs
    bad = x2.copy()
    bad[1, 2], bad[0, 0] = np.nan, np.inf
    put = jnp.asarray if device else np.asarray
    store = None if block_size is None else tmp_path / "k"
    with pytest.raises(ValueError, match=r"ntk.kernel: x2 must be finite; found 1 NaN and 1 Inf"):
        ntk.kernel(arch, put(x1), put(bad), block_size=block_size, store=store)
    with pytest.raises(ValueError, match=r"ntk.kernel: x1 must be finite; found 1 NaN and 1 Inf"):
        ntk.kernel(arch, put(bad), block_size=block_size, store=store)
    if store is not None:
        assert not list(store.glob("*chunk*"))


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_float64_inputs_that_overflow_float32_are_refused(vec_inputs):
    # finite on the host, infinite in the float32 program (x64 off): an error, not Inf
    x1, _ = vec_inputs
    big = x1.copy()
    big[0, 0] = 1e300
    with pytest.raises(ValueError, match="ntk.kernel: the inputs or parameters overflow"):
        ntk.kernel(ntk.serial(ntk.Dense(8), ntk.Relu(), ntk.Dense(1)), big)


def test_fast_arctan2_matches_numpy():
    # the vectorised arctan2 of the activation kernels: within 2 ulp of the correctly
    # rounded value (long-double reference) over 40 decades, both signs, zeros
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        y = rng.standard_normal(20000) * np.exp(rng.uniform(-20, 20, 20000))
        x = rng.standard_normal(20000) * np.exp(rng.uniform(-20, 20, 20000))
        y[:8], x[4:12] = 0.0, 0.0
        y, x = y.astype(dtype), x.astype(dtype)
        ref = np.arctan2(y.astype(np.longdouble), x.astype(np.longdouble))
        with jax.enable_x64(dtype == np.float64):
            got = np.asarray(jax.jit(_kmath.arctan2)(y, x))
        assert got.dtype == dtype
        err = np.abs(got.astype(np.longdouble) - ref) / np.finfo(dtype).eps
        assert float(err.max()) <= 2.5
        np.testing.assert_array_equal(got[4:8], 0.0)  # arctan2(0, 0) = 0


def test_kernel_fn_is_jittable(vec_inputs):
    arch = ntk.serial(ntk.Dense(8), ntk.Gelu(), ntk.Dense(1))
    x1, x2 = vec_inputs
    f = ntk.kernel_fn(arch)
    nngp, ntkm = f(jnp.asarray(x1, jnp.float32), jnp.asarray(x2, jnp.float32))
    k = ntk.kernel(arch, x1.astype(np.float32), x2.astype(np.float32))
    np.testing.assert_allclose(ntkm, k.ntk, rtol=1e-6)


def test_residual_and_layernorm_run(vec_inputs):
    arch = ntk.serial(
        ntk.Dense(8, b_std=0.1),
        ntk.LayerNorm(),
        ntk.residual(ntk.Relu(), ntk.Dense(8)),
        ntk.Relu(),
        ntk.Dense(2),
    )
    k = ntk.kernel(arch, vec_inputs[0])
    assert np.all(np.isfinite(k.ntk)) and k.ntk.shape == (9, 9)


def test_result_save_load(tmp_path, vec_inputs):
    k = ntk.kernel(ntk.serial(ntk.Dense(4), ntk.Relu(), ntk.Dense(1)), vec_inputs[0])
    k.save(tmp_path / "k.npz")
    k2 = ntk.Kernel.load(tmp_path / "k.npz")
    np.testing.assert_array_equal(k2.ntk, k.ntk)


# ---------------------------------------------------------------------------- bad input
MLP = ntk.serial(ntk.Dense(8), ntk.Relu(), ntk.Dense(1))
CNN = ntk.serial(ntk.Conv(4, (3, 3)), ntk.Relu(), ntk.Flatten(), ntk.Dense(1))


@pytest.mark.parametrize(
    ("arch", "x1", "x2", "err", "match"),
    [
        (
            MLP,
            np.ones((3, 4, 4, 1)),
            None,
            ValueError,
            r"ntk.kernel: x1 must have shape \(n, features\)",
        ),
        (
            CNN,
            np.ones((3, 5)),
            None,
            ValueError,
            r"ntk.kernel: x1 must have shape \(n, \*spatial, channels\)",
        ),
        (CNN, np.ones((3, 2, 5, 1)), None, ValueError, "smaller than the filter"),
        (MLP, np.ones((3, 5)), np.ones((2, 4)), ValueError, "x2 must have the same example shape"),
        (MLP, np.array([[1.0, np.nan]]), None, ValueError, "x1 must be finite"),
        (MLP, np.ones((3,)), None, ValueError, r"x1 must have shape \(n, ...\)"),
        (MLP, {"x": 1}, None, TypeError, "not a data dict"),
        ("mlp", np.ones((3, 5)), None, TypeError, "arch must be an ntk.Architecture"),
    ],
)
def test_bad_inputs(arch, x1, x2, err, match):
    with pytest.raises(err, match=match):
        ntk.kernel(arch, x1, x2)


@pytest.mark.parametrize(
    ("layers", "match"),
    [
        ((ntk.Dense(4), ntk.Relu(), ntk.Relu(), ntk.Dense(1)), r"Relu\(\) needs a Gaussian input"),
        (
            (ntk.Dense(4), ntk.Relu(), ntk.LayerNorm(), ntk.Dense(1)),
            "LayerNorm.*only for Gaussian inputs",
        ),
        ((ntk.Conv(4, (3, 3)), ntk.Relu(), ntk.Dense(1)), "still has spatial axes"),
    ],
)
def test_unsupported_architectures(layers, match):
    x = np.ones((2, 5, 5, 1)) if isinstance(layers[0], ntk.Conv) else np.ones((2, 3))
    with pytest.raises(ntk.ArchitectureError, match=match):
        ntk.kernel(ntk.serial(*layers), x)


def test_bad_layer_arguments():
    with pytest.raises(ValueError, match="ntk.Dense: width"):
        ntk.Dense(0)
    with pytest.raises(ValueError, match="ntk.Conv: padding"):
        ntk.Conv(4, (3, 3), padding="FULL")
    with pytest.raises(ValueError, match="parameterization"):
        ntk.Dense(3, parameterization="mup")
    with pytest.raises(ntk.ArchitectureError, match="only axis=-1"):
        ntk.LayerNorm(axis=1)
    with pytest.raises(ntk.ArchitectureError, match="do not end in a Dense or Conv"):
        ntk.parallel([ntk.Dense(3), ntk.Relu()], ntk.Identity())
    with pytest.raises(TypeError, match="forget the parentheses"):
        ntk.serial(ntk.Dense(3), ntk.Relu)


def test_block_size_that_cannot_fit(vec_inputs, monkeypatch):
    monkeypatch.setenv("NTK_MEMORY_LIMIT", "1000")
    with pytest.raises(ValueError, match="block_size=9 cannot fit"):
        ntk.kernel(MLP, vec_inputs[0], block_size=9)
    with pytest.raises(ValueError, match="block_size must be positive"):
        ntk.kernel(MLP, vec_inputs[0], block_size=0)
