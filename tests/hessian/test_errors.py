"""Bad inputs: clear errors naming the function and the argument."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from landscape import hessian


def test_k_larger_than_parameter_count(planted):
    loss, params, _ = planted.make(np.ones(planted.n))
    with jax.enable_x64(True):
        with pytest.raises(ValueError, match=r"eigenvalues: k=61 .* only 60 parameters"):
            hessian.eigenvalues(loss, params, planted.data, k=61, key=jax.random.key(0))
        with pytest.raises(ValueError, match=r"k=31 asks for 62 eigenpairs"):
            hessian.eigenvalues(loss, params, planted.data, k=31, which="both", key=jax.random.key(0))
        with pytest.raises(ValueError, match="num_steps=61 exceeds"):
            hessian.spectral_density(loss, params, planted.data, key=jax.random.key(0), num_steps=61)


def test_zero_and_nonfinite_vectors(planted):
    loss, params, _ = planted.make(np.ones(planted.n))
    with jax.enable_x64(True):
        zero = {"w": jnp.zeros(planted.n)}
        with pytest.raises(ValueError, match="v0 contains a zero vector|v0 is the zero vector"):
            hessian.eigenvalues(loss, params, planted.data, k=1, v0=zero, key=jax.random.key(0))
        op = hessian.make_hvp(loss, params, planted.data)
        with pytest.raises(ValueError, match="lanczos: v0 is the zero vector"):
            hessian.lanczos(op, zero, 5, key=jax.random.key(0))
        bad = {"w": jnp.full(planted.n, jnp.nan)}
        with pytest.raises(ValueError, match="v0 must be finite"):
            hessian.eigenvalues(loss, params, planted.data, k=1, v0=bad, key=jax.random.key(0))
        with pytest.raises(ValueError, match="hvp: v must be finite"):
            hessian.hvp(loss, params, planted.data, bad)
        stack = {"w": jnp.stack([jnp.ones(planted.n), jnp.zeros(planted.n)])}
        with pytest.raises(ValueError, match=r"zero vector \(row 1\)"):
            hessian.eigenvalues(loss, params, planted.data, k=2, v0=stack, key=jax.random.key(0))


def test_mismatched_structures(planted):
    loss, params, _ = planted.make(np.ones(planted.n))
    with jax.enable_x64(True):
        with pytest.raises(ValueError, match="hvp: v must have the same tree structure as params"):
            hessian.hvp(loss, params, planted.data, {"u": jnp.ones(planted.n)})
        with pytest.raises(ValueError, match="leaf 'w' has shape"):
            hessian.hvp(loss, params, planted.data, {"w": jnp.ones(3)})
        with pytest.raises(ValueError, match="v0 must have the same tree structure"):
            hessian.eigenvalues(loss, params, planted.data, k=1, v0=[jnp.ones(planted.n)], key=jax.random.key(0))
        with pytest.raises(ValueError, match="v0 must be params-shaped or a stack"):
            hessian.eigenvalues(loss, params, planted.data, k=1, v0={"w": jnp.ones((2, 3))}, key=jax.random.key(0))
        with pytest.raises(ValueError, match="preconditioner must have the same tree structure"):
            hessian.make_hvp(loss, params, planted.data, preconditioner={"u": 1.0})
        with pytest.raises(ValueError, match="preconditioner must be strictly positive"):
            hessian.make_hvp(loss, params, planted.data, preconditioner={"w": -jnp.ones(planted.n)})


def test_settings(planted):
    loss, params, _ = planted.make(np.ones(planted.n))
    with jax.enable_x64(True):
        with pytest.raises(ValueError, match="curvature must be one of"):
            hessian.make_hvp(loss, params, planted.data, curvature="hess")
        with pytest.raises(ValueError, match="curvature='ggn' needs the model's outputs"):
            hessian.make_hvp(loss, params, planted.data, curvature="ggn")
        with pytest.raises(ValueError, match="which must be one of"):
            hessian.eigenvalues(loss, params, planted.data, k=1, which="top", key=jax.random.key(0))
        with pytest.raises(ValueError, match="tol must be > 0"):
            hessian.eigenvalues(loss, params, planted.data, k=1, tol=0.0, key=jax.random.key(0))
        with pytest.raises(TypeError, match="key is required"):
            hessian.eigenvalues(loss, params, planted.data, k=1)
        with pytest.raises(TypeError, match="key is required"):
            hessian.trace(loss, params, planted.data, key=None)
        with pytest.raises(ValueError, match="estimator must be one of"):
            hessian.trace(loss, params, planted.data, key=jax.random.key(0), estimator="bogus")
        with pytest.raises(ValueError, match="sigma must be > 0"):
            hessian.spectral_density(loss, params, planted.data, key=jax.random.key(0), sigma=-1.0)
        with pytest.raises(ValueError, match="params_filter .* matches no parameter"):
            hessian.trace(loss, params, planted.data, key=jax.random.key(0), params_filter="layers/*")


def test_density_settings_that_cannot_resolve_a_density_warn(planted):
    """``num_probes=1, num_steps=1`` was accepted silently (issue 11): a single Gaussian bump.
    The warning comes at validation, before any product (``sigma`` is refused right after)."""
    loss, params, _ = planted.make(np.ones(planted.n))
    with jax.enable_x64(True):
        with pytest.warns(UserWarning, match=r"spectral_density: num_steps=1 gives 1 quadrature node\(s\) per probe: the "
                          r"density is 1 Gaussian bump\(s\) .* Use num_steps >= 10 .*num_probes=1 also "
                          r"gives no standard error"), pytest.raises(ValueError, match="sigma must be > 0"):
            hessian.spectral_density(loss, params, planted.data, key=jax.random.key(0), num_probes=1,
                                     num_steps=1, sigma=-1.0)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(ValueError, match="sigma must be > 0"):
                hessian.spectral_density(loss, params, planted.data, key=jax.random.key(0), num_probes=2,
                                         num_steps=10, sigma=-1.0)


def _sqrt_loss(params, batch):
    # d/dz sqrt(|z|) is infinite at z = 0: examples with x = 0 give a non-finite Hessian
    z = batch["x"] @ params["w"]
    return jnp.mean(jnp.sqrt(jnp.abs(z) + 0.0))


def test_nonfinite_product_names_the_batch():
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(40, 3))
        x[25] = 0.0  # in batch 2 (examples 20..29) with batch_size=10
        data = {"x": x}
        params = {"w": jnp.asarray(rng.normal(size=3))}
        v = {"w": jnp.ones(3)}
        with pytest.raises(FloatingPointError, match=r"batch 2 \(examples 20\.\.29\)"):
            hessian.hvp(_sqrt_loss, params, data, v, batch_size=10)
        with pytest.raises(FloatingPointError, match=r"batch 2 \(examples 20\.\.29\)"):
            hessian.eigenvalues(_sqrt_loss, params, data, k=1, key=jax.random.key(0), batch_size=10,
                                method="forward_over_reverse")
        with pytest.raises(FloatingPointError, match="non-finite"):
            hessian.trace(_sqrt_loss, params, data, key=jax.random.key(0), batch_size=10, max_hvps=6)


def test_asymmetric_products_warn(planted):
    """A 'Hessian' product that is not symmetric (here an inconsistent custom_jvp rule, as a
    buggy custom gradient or a stochastic loss would give) is reported, not silently used."""
    from jax.tree_util import Partial

    n = planted.n
    rng = np.random.default_rng(1)
    A = (planted.Q * np.linspace(1.0, 5.0, n)) @ planted.Q.T
    N = rng.normal(size=(n, n))
    B = 0.5 * (A + A.T) + 0.05 * (N - N.T)  # grad = B w: Hessian products B v, not symmetric
    with jax.enable_x64(True):
        loss = Partial(_skew_loss, jnp.asarray(B))
        params = {"w": jnp.asarray(rng.normal(size=n))}
        with pytest.warns(RuntimeWarning, match="products are not symmetric"):
            hessian.eigenvalues(loss, params, planted.data, k=2, key=jax.random.key(0), max_restarts=2)
        # a symmetric operator does not warn
        sym = Partial(_skew_loss, jnp.asarray(0.5 * (A + A.T)))
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            hessian.eigenvalues(sym, params, planted.data, k=2, key=jax.random.key(0))


def test_mild_asymmetry_loosens_tolerance_with_a_warning(planted):
    """Asymmetry below the 'not symmetric' level still warns when it loosens tol > 10x."""
    from jax.tree_util import Partial

    n = planted.n
    rng = np.random.default_rng(2)
    A = (planted.Q * np.linspace(1.0, 5.0, n)) @ planted.Q.T
    N = rng.normal(size=(n, n))
    S = (N - N.T) / np.linalg.norm(N - N.T, 2)
    with jax.enable_x64(True):
        loss = Partial(_skew_loss, jnp.asarray(0.5 * (A + A.T) + 5 * 1e-4 * S))
        params = {"w": jnp.asarray(rng.normal(size=n))}
        with pytest.warns(RuntimeWarning, match="loosened the tolerance"):
            res = hessian.eigenvalues(loss, params, planted.data, k=1, key=jax.random.key(0))
        assert res.tol_used > 10 * 1e-6 and res.tol_used < 1e-2


def test_noise_floor_stays_at_rounding_after_multiplicity_checks(planted):
    """Symmetric float64 operator, k = 3 with multiplicity checks: the measured noise is
    rounding (~1e-16 ||A||), the requested tol is the tol used, and every pair called converged
    meets it on its error bound, which holds (the verification restart's locked couplings are
    not mistaken for noise)."""
    lams = np.concatenate([[10.0, 9.99, 9.98, 9.97], np.linspace(0.0, 9.9, planted.n - 4)])
    loss, params, _ = planted.make(lams)
    with jax.enable_x64(True):
        res = hessian.eigenvalues(loss, params, planted.data, k=3, key=jax.random.key(1), tol=1e-8)
    assert res.num_checks >= 1
    assert res.noise < 1e-13 * res.norm_estimate
    assert res.tol_used == pytest.approx(1e-8)
    assert res.converged.all()
    assert np.all(res.error_bounds <= 1e-8 * res.norm_estimate * (1 + 1e-6))
    assert np.all(np.abs(res.values - [10.0, 9.99, 9.98]) <= res.error_bounds + 1e-13)


@jax.custom_jvp
def _quadratic(B, w):
    return 0.5 * w @ (B @ w)


@_quadratic.defjvp
def _quadratic_jvp(primals, tangents):
    B, w = primals
    _, dw = tangents
    return _quadratic(B, w), (B @ w) @ dw


def _skew_loss(B, params, batch):
    del batch
    return _quadratic(B, params["w"])
