"""Comparisons, plots, import hygiene, and 1 vs 4 devices."""

import numpy as np
import pytest

import ntk


def mlp(n):
    return ntk.serial(
        ntk.Dense(n, W_std=1.5, b_std=0.1),
        ntk.Relu(),
        ntk.Dense(n, W_std=1.5, b_std=0.1),
        ntk.Relu(),
        ntk.Dense(2, W_std=1.5),
    )


def test_convergence_rate(key):
    x = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    res = ntk.convergence(mlp, [64, 512], x, key=key, num_seeds=3)
    # Lee et al. 2019: error ~ c / sqrt(width); reference here: err * sqrt(n) ~ 2.4-3.1
    scaled = res.ntk_mean * np.sqrt(res.widths)
    assert np.all((scaled > 0.5) & (scaled < 6)), scaled
    assert res.ntk_mean[1] < res.ntk_mean[0] / 1.8  # sqrt(8) = 2.8 expected
    assert res.ntk_avg_distance[1] <= res.ntk_mean[1] * 1.01


def test_kernel_drift_and_finite_vs_infinite(key, digits_data):
    tr = {"x": digits_data.train["x"][:48], "y": digits_data.train["y"][:48]}
    te = {"x": digits_data.test["x"][:32], "y": digits_data.test["y"][:32]}

    def small(n):
        return ntk.serial(
            ntk.Dense(n, W_std=1.5, b_std=0.05), ntk.Relu(), ntk.Dense(10, W_std=1.5, b_std=0.05)
        )  # noqa: E731

    dr = ntk.kernel_drift(
        small, [32, 256], tr, key=key, num_steps=10, learning_rate=1.0, num_snapshots=2
    )
    assert dr.drift.shape == (2, 2) and dr.final_drift[1] < dr.final_drift[0]  # lazier when wider
    fv = ntk.finite_vs_infinite(small, [32, 256], tr, te, key=key, num_steps=10)
    assert fv.finite_outputs.shape == (2, 32, 10)
    assert fv.rmse_finite_infinite[1] < fv.rmse_finite_infinite[0]
    assert fv.rmse_finite_linear[1] < fv.rmse_finite_linear[0]


def test_spectra_and_plots(key, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ntk import plot

    x = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    model = mlp(32).init(key, (4,))
    k = ntk.kernel(mlp(32), x)
    sp = ntk.spectra(empirical=ntk.empirical_ntk(model, x).matrix, analytic=k.ntk)
    ev = sp.eigenvalues["analytic"]
    np.testing.assert_allclose(np.sort(ev)[::-1], ev)
    np.testing.assert_allclose(ev.sum(), np.trace(k.ntk), rtol=1e-5)
    fig, axes = plt.subplots(1, 2)
    assert plot.plot_spectra(sp, ax=axes[0]) is axes[0]
    assert plot.plot_kernel(k.ntk, ax=axes[1], title="NTK") is axes[1]
    assert plot.plot_kernel(ntk.empirical_ntk(model, x), ax=axes[1]) is axes[1]
    plt.close(fig)
    with pytest.raises(ValueError, match="must be a square kernel matrix"):
        ntk.spectra(a=np.ones((2, 3)))


def test_bad_inputs(key):
    x = np.ones((4, 3))
    with pytest.raises(TypeError, match="key is required"):
        ntk.convergence(mlp, [8], x, key=None)
    with pytest.raises(ValueError, match="widths must be a non-empty list of positive ints"):
        ntk.convergence(mlp, [0], x, key=key)
    with pytest.raises(TypeError, match="must return an ntk.Architecture"):
        ntk.convergence(lambda n: None, [8], x, key=key)
    with pytest.raises(ValueError, match="num_samples must be > 0"):
        ntk.monte_carlo(mlp(8), x, key=key, num_samples=0)


def test_one_vs_four_devices(tmp_path, four_devices):
    """Analytic and empirical kernels, blocked and sharded over 4 virtual CPU devices (waves
    of 4 blocks, the last one padded), equal the unsharded single-device computation; and
    importing ntk does not import matplotlib. Runs in the suite's 4-device worker."""
    code = f"""
    import sys
    import jax, numpy as np, ntk
    assert "matplotlib" not in sys.modules, "import ntk imported matplotlib"
    assert jax.device_count() == 4
    rng = np.random.default_rng(0)
    x = rng.standard_normal((11, 4, 4, 2)).astype(np.float32)
    arch = ntk.serial(ntk.Conv(3, (3, 3), padding="SAME", b_std=0.1), ntk.Relu(),
                      ntk.GlobalAvgPool(), ntk.Dense(2, b_std=0.1))
    model = arch.init(jax.random.key(0), (4, 4, 2))
    # sharded, blocked: analytic K(x, x[:6]) in 4 x 2 blocks of 3 (two waves of 4); the
    # symmetric empirical NTK in 4 x 4 blocks of 3 (4 diagonal blocks in one wave, 6
    # off-diagonal blocks in two waves, the last one padded)
    k = ntk.kernel(arch, x, x[:6], block_size=3)
    e = ntk.empirical_ntk(model, x, block_size=3)
    # the same quantities on one device, unblocked (plain jit on device 0)
    nngp1, ntk1 = jax.jit(arch.kernel_fn)(x, x[:6])
    e1 = ntk.empirical_ntk_fn(arch.apply, method="structured", arch=arch)(model.params, x)
    np.savez("{tmp_path}/out.npz", k=k.ntk, kg=k.nngp, e=e.matrix, k1=ntk1, kg1=nngp1, e1=e1)
    """
    four_devices.run(code)
    out = np.load(tmp_path / "out.npz")
    # the same per-block computations: float32 round-off
    for name in ("k", "kg", "e"):
        np.testing.assert_allclose(out[name], out[name + "1"], rtol=1e-5, atol=1e-6, err_msg=name)
