"""jacobian_spectrum: exact singular values against jnp.linalg.svd of jax.jacobian of a
hand-written map (float64 and float32, with batch norm's coupling too), the Lanczos route's top
singular value and mean square against the exact ones, an orthogonal linear network's isometry
(every singular value ``scale^depth``), a Gaussian linear network's mean square
``sigma_w2^depth``, bad requests."""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import landscape
import landscape.diagnostics as ld
from tests.diagnostics._signal_models import inputs, tiny_mlp


def _x64(dtype):
    return jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()


def _linear_mlp(init, sigma_w2, width, depth, dtype="float32", seed=0):
    return landscape.make_model(
        "mlp",
        input_shape=(width,),
        num_outputs=3,
        hidden=(width,) * depth,
        activation="linear",
        init=init,
        sigma_w2=sigma_w2,
        param_dtype=jnp.dtype(dtype),
        seed=seed,
    )


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_exact_singular_values_equal_svd_of_jax_jacobian(dtype):
    with _x64(dtype):
        m = tiny_mlp("tanh", dtype)
        x = inputs(n=7, dtype=dtype)
        r = ld.jacobian_spectrum(m, x)  # default: first hidden layer to the last (0 -> 1)
        assert (r.from_layer, r.to_layer, r.method, r.dims) == (0, 1, "exact", (6, 6))
        L = m.params["layers"]

        @jax.jit
        def reference(x):
            a0 = jnp.tanh(x @ L[0]["kernel"] + L[0]["bias"][None])

            def f(h):  # one example's a1 as a function of its a0
                return jnp.tanh(h @ L[1]["kernel"] + L[1]["bias"])

            J = jax.vmap(jax.jacobian(f))(a0)
            return jnp.linalg.svd(J, compute_uv=False)

        s = np.asarray(reference(x))
        tol = 1e-12 if dtype == "float64" else 2e-6
        np.testing.assert_allclose(r.singular_values, s, rtol=tol, atol=tol)
        np.testing.assert_allclose(r.mean_sq, np.mean(s**2), rtol=tol)
        np.testing.assert_allclose(r.var_sq, np.var(s**2), rtol=1e3 * tol)
        np.testing.assert_allclose(r.largest, s.max(), rtol=tol)
        # the pre-activation map: d z1 / d z0 = diag(tanh'(z0)) W1
        rz = ld.jacobian_spectrum(m, x, point="preactivation", to_layer=-1)
        assert rz.dims == (3, 6) and rz.singular_values.shape == (7, 3) and rz.to_layer == 2


def test_lanczos_top_singular_value_and_mean_square_match_the_exact_ones(tmp_path):
    m = landscape.make_model(
        "mlp",
        input_shape=(5,),
        num_outputs=3,
        hidden=(32,) * 3,
        activation="tanh",
        init="normal",
        sigma_w2=1.5,
        seed=1,
    )
    x = inputs(n=6)
    ex = ld.jacobian_spectrum(m, x)
    lz = ld.jacobian_spectrum(
        m, x, method="lanczos", key=jax.random.key(0), num_probes=4, num_steps=30
    )
    assert lz.method == "lanczos" and lz.singular_values is None and lz.nodes.shape == (4, 30)
    # the top eigenvalue of J^T J to the eigensolver's tolerance (1e-6) in float32
    np.testing.assert_allclose(lz.largest, ex.largest, rtol=1e-5)
    # the trace estimate of 4 probes in dimension 192: within 4 of its standard errors
    assert (
        abs(lz.mean_sq - ex.mean_sq) < 4 * lz.mean_sq_error and lz.mean_sq_error < 0.2 * ex.mean_sq
    )
    np.testing.assert_allclose(lz.var_sq, ex.var_sq, rtol=0.5)  # the quadrature's 2nd moment
    edges, dens = ex.histogram(bins=10)
    assert edges.shape == (11,) and np.isclose(np.sum(dens * np.diff(edges)), 1.0)
    lz.save(tmp_path / "j.npz")
    back = ld.JacobianSpectrumResult.load(tmp_path / "j.npz")
    assert back.largest == lz.largest and back.method == "lanczos"
    np.testing.assert_array_equal(back.nodes, lz.nodes)

    import matplotlib

    matplotlib.use("Agg")
    import landscape.plot as lp

    ax = lp.plot_jacobian_spectrum({"exact": ex, "lanczos": lz})
    assert len(ax.get_legend().get_texts()) == 3


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_orthogonal_linear_network_is_an_exact_isometry_times_scale_to_the_depth(dtype):
    with _x64(dtype):
        scale = 1.1
        m = _linear_mlp("orthogonal", scale**2, 16, 5, dtype)
        r = ld.jacobian_spectrum(m, inputs(n=4, d=16, dtype=dtype))
        # from layer 0 to layer 4: the product of 4 orthogonal matrices times scale
        assert (r.from_layer, r.to_layer) == (0, 4)
        tol = 1e-13 if dtype == "float64" else 2e-6
        np.testing.assert_allclose(r.singular_values, scale**4, rtol=tol)
        np.testing.assert_allclose(r.var_sq, 0.0, atol=tol)


def test_gaussian_linear_network_mean_square_is_sigma_w2_to_the_depth():
    sigma_w2, width = 1.5, 128
    m = _linear_mlp("normal", sigma_w2, width, 4)
    r = ld.jacobian_spectrum(m, inputs(n=2, d=width), from_layer=0, to_layer=3)
    # E tr(J^T J) / N = sigma_w2^3 for three Gaussian layers; at width 128 the trace fluctuates
    # by about sqrt(3 * 2) / 128 ~ 2%: 8% tolerance. Unlike the orthogonal network, the spread
    # is large (the squared singular values of a product of Gaussian matrices).
    np.testing.assert_allclose(r.mean_sq, sigma_w2**3, rtol=0.08)
    assert r.var_sq > 0.5 * r.mean_sq**2


def test_batch_norm_couples_the_examples_diagonal_blocks_of_the_batch_jacobian():
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.l1, self.b1 = nnx.Linear(5, 4, rngs=rngs), nnx.BatchNorm(4, rngs=rngs)
            self.l2, self.b2 = nnx.Linear(4, 4, rngs=rngs), nnx.BatchNorm(4, rngs=rngs)
            self.l3 = nnx.Linear(4, 2, rngs=rngs)

        def __call__(self, x):
            h = jnp.tanh(self.b1(self.l1(x)))
            return self.l3(jnp.tanh(self.b2(self.l2(h))))

    with jax.enable_x64(True):
        m = landscape.from_nnx(Net(nnx.Rngs(0)))
        f64 = lambda t: jax.tree.map(lambda a: a.astype(jnp.float64), t)  # noqa: E731
        m = m.replace(params=f64(m.params), state=f64(m.state))
        x = inputs(n=5, dtype="float64")
        r = ld.jacobian_spectrum(m, x)
        assert r.coupled and r.bn_mode == "batch" and r.num_products == 5 * 4
        P = m.params

        def bn(z):  # batch statistics, biased variance, flax's eps
            mu = z.mean(0, keepdims=True)
            return (z - mu) / jnp.sqrt(z.var(0, keepdims=True) + 1e-5)

        def a1(A0):  # the batch's a1 from the batch's a0
            return jnp.tanh(bn(A0 @ P["l2"]["kernel"] + P["l2"]["bias"][None]))

        A0 = jnp.tanh(bn(x @ P["l1"]["kernel"] + P["l1"]["bias"][None]))
        full = jax.jacobian(a1)(A0)  # (n, 4, n, 4)
        blocks = jnp.stack([full[i, :, i, :] for i in range(5)])
        np.testing.assert_allclose(
            r.singular_values, np.linalg.svd(blocks, compute_uv=False), rtol=1e-10
        )


def test_bad_requests():
    m, x = tiny_mlp("tanh"), inputs(n=7)
    with pytest.raises(ValueError, match=r"too large to form.*method='lanczos'"):
        ld.jacobian_spectrum(m, x, method="exact", max_dense=10)
    with pytest.raises(TypeError, match=r"needs key=.*method='auto' chose it"):
        ld.jacobian_spectrum(m, x, max_dense=10)
    with pytest.raises(ValueError, match=r"from_layer=5 is out of range: the model has 3 layers"):
        ld.jacobian_spectrum(m, x, from_layer=5)
    with pytest.raises(ValueError, match=r"to_layer=-4 is out of range"):
        ld.jacobian_spectrum(m, x, to_layer=-4)
    with pytest.raises(ValueError, match=r"to_layer \(1\) must come after from_layer \(1\)"):
        ld.jacobian_spectrum(m, x, from_layer=1, to_layer=1)
    with pytest.raises(ValueError, match="no hidden layer after from_layer=1"):
        ld.jacobian_spectrum(m, x, from_layer=1)
    with pytest.raises(TypeError, match="from_layer must be an int"):
        ld.jacobian_spectrum(m, x, from_layer=0.5)
    bad = np.array(x)
    bad[0, 0] = np.inf
    with pytest.raises(
        ValueError, match=r"jacobian_spectrum: x must be finite; found 0 NaN and 1 Inf"
    ):
        ld.jacobian_spectrum(m, bad)
    with pytest.raises(ValueError, match=r"could not trace the model on inputs of shape \(7, 4\)"):
        ld.jacobian_spectrum(m, np.ones((7, 4), np.float32))
    with pytest.raises(ValueError, match="method must be one of"):
        ld.jacobian_spectrum(m, x, method="svd")
    with pytest.raises(ValueError, match="point must be one of"):
        ld.jacobian_spectrum(m, x, point="output")
    from tests.diagnostics.test_signal import _scan_model

    with pytest.raises(ld.LayerEnumerationError, match="`scan` at"):
        ld.jacobian_spectrum(_scan_model(), np.ones((2, 4)))
