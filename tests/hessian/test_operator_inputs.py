"""Operators as inputs: ``eigenvalues(op)``, ``trace(op)``, ``spectral_density(op)`` on a
CurvatureOperator or a plain matvec, against the one-shots and against known spectra; the
driver's errors; explicit keys; a resumed density equals an uninterrupted one.

Tolerances:
* operator input vs one-shot: exact equality. The one-shot builds the same operator and runs
  the same compiled programs with the same key, so the results are bit-identical.
* known spectra (float64): eigenvalues to 1e-10 x max|lambda| (the solver runs to a relative
  residual of 1e-10, eigenvalue errors are at most that); Hutchinson on a diagonal matrix is
  exact (``z^T D z = tr D`` for every Rademacher ``z``) and Hutch++ with a sketch spanning the
  space is exact, both to float64 rounding (1e-12 relative); Lanczos run to the dimension
  reproduces the spectrum (nodes to 1e-8 relative: a full-dimension Krylov space in float64).
* float32 matvec: eigenvalues to 1e-5 relative (tol floored at 64 eps(float32) = 7.6e-6).
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

from landscape import hessian
from landscape.hessian import _density, _lanczos, _trace
from tests.hessian.conftest import rows

SHAPES = {"a": (4, 3), "b": (5,)}  # a small two-leaf pytree: dimension 17
N = 17


def _diag_mv(d, v):
    """``D v`` for a diagonal ``D`` stored as a params-shaped pytree ``d``."""
    return jax.tree.map(jnp.multiply, d, v)


def _dense_mv(A, v):
    """A dense symmetric ``A`` (17 x 17) acting on the raveled {"a", "b"} pytree."""
    flat = jnp.concatenate([v["a"].ravel(), v["b"]])
    out = A @ flat
    return {"a": out[:12].reshape(4, 3), "b": out[12:]}


def _like(dtype=jnp.float64):
    return {k: jnp.zeros(s, dtype) for k, s in SHAPES.items()}


def _diag(values, dtype=jnp.float64):
    values = np.asarray(values)
    return {
        "a": jnp.asarray(values[:12].reshape(4, 3), dtype),
        "b": jnp.asarray(values[12:], dtype),
    }


def _sym(seed):
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(N, N))
    return 0.5 * (M + M.T)


# --------------------------------------------------------------------------------------------
# operator input == one-shot
# --------------------------------------------------------------------------------------------
def test_operator_input_equals_one_shot(planted):
    lams = np.concatenate([[6.0, 4.0, -3.0], planted.rng.uniform(-1, 1, planted.n - 3)])
    loss, params, A = planted.make(lams)
    with jax.enable_x64(True):
        P = {"w": jnp.asarray(planted.rng.uniform(0.5, 2.0, planted.n))}
        op = hessian.make_hvp(loss, params, planted.data, preconditioner=P)
        key = jax.random.key(3)
        one = hessian.eigenvalues(
            loss, params, planted.data, k=2, which="both", key=key, tol=1e-10, preconditioner=P
        )
        two = hessian.eigenvalues(op, k=2, which="both", key=key, tol=1e-10)
        np.testing.assert_array_equal(two.values, one.values)
        np.testing.assert_array_equal(rows(two.vectors), rows(one.vectors))
        np.testing.assert_array_equal(two.residuals, one.residuals)
        assert two.num_hvps == one.num_hvps
        # and both are the eigenvalues of P^-1/2 A P^-1/2
        s = 1 / np.sqrt(np.asarray(P["w"]))
        ev = np.linalg.eigvalsh((s[:, None] * A) * s[None, :])
        np.testing.assert_allclose(
            one.values, [ev[-1], ev[-2], ev[0], ev[1]], atol=1e-10 * np.abs(ev).max()
        )
        assert one.provenance["settings"]["curvature"] == "hessian"

        t1 = hessian.trace(loss, params, planted.data, key=key, max_hvps=24, preconditioner=P)
        t2 = hessian.trace(op, key=key, max_hvps=24)
        assert float(t2.estimate) == float(t1.estimate) and float(t2.std_error) == float(
            t1.std_error
        )
        np.testing.assert_array_equal(t2.samples, t1.samples)

        d1 = hessian.spectral_density(
            loss, params, planted.data, key=key, num_probes=3, num_steps=12, preconditioner=P
        )
        d2 = hessian.spectral_density(op, key=key, num_probes=3, num_steps=12)
        np.testing.assert_array_equal(d2.nodes, d1.nodes)
        np.testing.assert_array_equal(d2.weights, d1.weights)
        np.testing.assert_array_equal(d2.density, d1.density)
        assert dict(d2.checks) == dict(d1.checks)
        assert d2.provenance["settings"] == d1.provenance["settings"]


# --------------------------------------------------------------------------------------------
# plain matvecs with known spectra
# --------------------------------------------------------------------------------------------
def test_diagonal_matvec_known_spectrum():
    values = np.concatenate([np.linspace(1.0, 12.0, 12), [-5.0, -2.0, 0.5, 20.0, 0.25]])
    with jax.enable_x64(True):
        mv = Partial(_diag_mv, _diag(values))
        like = _like()
        key = jax.random.key(0)
        top = hessian.eigenvalues(mv, like=like, k=3, key=key, tol=1e-10)
        srt = np.sort(values)
        np.testing.assert_allclose(top.values, srt[::-1][:3], atol=1e-10 * 20)
        assert top.curvature == "matvec" and top.converged.all()
        # eigenvectors are coordinate vectors (up to sign), shaped like `like` with a leading k axis
        assert jax.tree.structure(top.vectors) == jax.tree.structure(like)
        V = np.abs(rows(top.vectors))
        np.testing.assert_allclose(V.max(axis=1), 1.0, atol=1e-8)
        both = hessian.eigenvalues(mv, like=like, k=2, which="both", key=key, tol=1e-10)
        np.testing.assert_allclose(both.smallest, srt[:2], atol=1e-10 * 20)
        # Hutchinson is exact on a diagonal matrix; so is Hutch++ with a sketch spanning the space
        t = hessian.trace(
            mv, like=like, key=key, estimator="hutchinson", max_hvps=4, min_probes=2, chunk_size=4
        )
        np.testing.assert_allclose(float(t.estimate), values.sum(), rtol=1e-12)
        np.testing.assert_allclose(t.per_leaf["b"], values[12:].sum(), rtol=1e-12)
        t = hessian.trace(mv, like=like, key=key, sketch_size=N, max_hvps=2 * N + 2, min_probes=2)
        np.testing.assert_allclose(float(t.estimate), values.sum(), rtol=1e-12)
        assert t.sketch_size == N
        # a ShapeDtypeStruct template works as well as arrays
        sds = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), like)
        again = hessian.eigenvalues(mv, like=sds, k=3, key=key, tol=1e-10)
        np.testing.assert_array_equal(again.values, top.values)


def test_random_symmetric_matvec_known_spectrum(tmp_path):
    A = _sym(0)
    ev = np.linalg.eigvalsh(A)
    scale = np.abs(ev).max()
    with jax.enable_x64(True):
        mv = Partial(_dense_mv, jnp.asarray(A))
        like = _like()
        key = jax.random.key(1)
        res = hessian.eigenvalues(mv, like=like, k=4, which="both", key=key, tol=1e-10)
        np.testing.assert_allclose(res.largest, ev[::-1][:4], atol=1e-10 * scale)
        np.testing.assert_allclose(res.smallest, ev[:4], atol=1e-10 * scale)
        # true residuals agree with the dense matrix
        V = rows(res.vectors)
        np.testing.assert_allclose(
            res.residuals,
            np.linalg.norm(V @ A - res.values[:, None] * V, axis=1),
            atol=1e-12 * scale,
        )
        # Lanczos to the full dimension: every probe's Gauss nodes are the eigenvalues
        d = hessian.spectral_density(mv, like=like, key=key, num_probes=2, num_steps=N)
        for p in range(2):
            np.testing.assert_allclose(np.sort(d.nodes[p]), ev, atol=1e-8 * scale)
        np.testing.assert_allclose(d.checks["slq_trace"], d.checks["hutchinson_trace"], rtol=1e-10)
        np.testing.assert_allclose(d.checks["top_eigenvalue"], ev[-1], rtol=1e-6)
        # the Lanczos relation on the matvec: orthonormal basis, T = Q A Q^T
        L = hessian.lanczos(mv, jax.tree.map(jnp.ones_like, like), 6, key=key)
        Q = rows(L.basis)
        np.testing.assert_allclose(Q @ Q.T, np.eye(6), atol=1e-12)
        T = np.diag(L.alphas) + np.diag(L.betas[:-1], 1) + np.diag(L.betas[:-1], -1)
        np.testing.assert_allclose(Q @ A @ Q.T, T, atol=1e-12 * scale)
        d.save(tmp_path / "d.npz")
        assert hessian.DensityResult.load(tmp_path / "d.npz").curvature == "matvec"


def test_float32_matvec_and_no_recompilation():
    values = np.concatenate([np.linspace(1.0, 12.0, 12), [-5.0, -2.0, 0.5, 20.0, 0.25]])
    mv = Partial(_diag_mv, _diag(values, jnp.float32))
    like = _like(jnp.float32)
    res = hessian.eigenvalues(mv, like=like, k=2, key=jax.random.key(0))
    # float32: tol floored at 64 eps = 7.6e-6; eigenvalues to 1e-5 relative
    np.testing.assert_allclose(res.values, [20.0, 12.0], rtol=1e-5)
    assert jax.tree.leaves(res.vectors)[0].dtype == jnp.float32
    hessian.trace(mv, like=like, key=jax.random.key(0), max_hvps=12)
    sizes = (_lanczos._expand_jit._cache_size(), _trace._probes_jit._cache_size())
    # a new matvec with the same function and shapes (new array argument): nothing recompiles
    mv2 = Partial(_diag_mv, _diag(2 * values, jnp.float32))
    res2 = hessian.eigenvalues(mv2, like=like, k=2, key=jax.random.key(0))
    hessian.trace(mv2, like=like, key=jax.random.key(1), max_hvps=12)
    assert (_lanczos._expand_jit._cache_size(), _trace._probes_jit._cache_size()) == sizes
    np.testing.assert_allclose(res2.values, [40.0, 24.0], rtol=1e-5)


# --------------------------------------------------------------------------------------------
# the driver's errors
# --------------------------------------------------------------------------------------------
class _Unhashable:
    __hash__ = None

    def __call__(self, v):
        return v


def _wrong_shape(v):
    return {"a": v["a"], "b": v["b"][:2]}


def test_bad_combinations_raise_clear_errors(planted):
    loss, params, _ = planted.make(np.ones(planted.n))
    key = jax.random.key(0)
    with jax.enable_x64(True):
        op = hessian.make_hvp(loss, params, planted.data)
        mv = Partial(_diag_mv, _diag(np.arange(1.0, 18.0)))
        with pytest.raises(
            TypeError, match=r"eigenvalues: params and data given with an operator"
        ):
            hessian.eigenvalues(op, params, planted.data, k=1, key=key)
        with pytest.raises(TypeError, match=r"trace: params given with an operator"):
            hessian.trace(op, params, key=key)
        with pytest.raises(
            TypeError,
            match=r"spectral_density: curvature=, batch_size= configure\(s\) the operator",
        ):
            hessian.spectral_density(op, key=key, curvature="ggn", batch_size=2)
        with pytest.raises(
            TypeError, match=r"eigenvalues: like= is for a plain matvec; a CurvatureOperator"
        ):
            hessian.eigenvalues(op, like=params, k=1, key=key)
        with pytest.raises(TypeError, match=r"eigenvalues: a plain matvec v -> A v needs like="):
            hessian.eigenvalues(mv, k=1, key=key)
        with pytest.raises(TypeError, match=r"trace: method= configure\(s\)"):
            hessian.trace(mv, like=_like(), key=key, method="linearize")
        with pytest.raises(
            TypeError,
            match=r"eigenvalues: like= is for a plain matvec; with loss_fn, params, data",
        ):
            hessian.eigenvalues(loss, params, planted.data, like=params, k=1, key=key)
        with pytest.raises(TypeError, match=r"eigenvalues: data is required with loss_fn"):
            hessian.eigenvalues(loss, params, k=1, key=key)
        with pytest.raises(TypeError, match=r"eigenvalues: operator must be callable"):
            hessian.eigenvalues(3.0, k=1, key=key, like=_like())
        with pytest.raises(TypeError, match=r"eigenvalues: a matvec must be hashable"):
            hessian.eigenvalues(_Unhashable(), like=_like(), k=1, key=key)
        with pytest.raises(
            ValueError, match=r"trace: the matvec must return a vector shaped like its input"
        ):
            hessian.trace(_wrong_shape, like=_like(), key=key)
        with pytest.raises(TypeError, match=r"like leaf 'a' must be floating"):
            hessian.eigenvalues(
                mv, like={"a": jnp.zeros((4, 3), jnp.int32), "b": jnp.zeros(5)}, k=1, key=key
            )
        with pytest.raises(ValueError, match=r"v0 must have the same tree structure as like"):
            hessian.eigenvalues(mv, like=_like(), k=1, key=key, v0={"w": jnp.ones(3)})
        # unknown keywords name the function, the keyword and the allowed settings
        msg = (
            r"eigenvalues: unexpected keyword argument 'curvatur' \(did you mean 'curvature'\?\); "
            r"eigenvalues takes k, which, tol, key, .*make_hvp: curvature, model, output_loss, "
            r"params_filter, preconditioner, batch_size, method\."
        )
        with pytest.raises(TypeError, match=msg):
            hessian.eigenvalues(loss, params, planted.data, k=1, key=key, curvatur="ggn")
        with pytest.raises(TypeError, match=r"hvp: unexpected keyword argument 'max_hvps'"):
            hessian.hvp(loss, params, planted.data, params, max_hvps=3)
        with pytest.raises(
            TypeError, match=r"ggn_decomposition: curvature= is not a setting here"
        ):
            hessian.ggn_decomposition(loss, params, planted.data, key=key, curvature="ggn")
        with pytest.raises(
            TypeError, match=r"sharpness_callback: preconditioner= is not a setting here"
        ):
            hessian.sharpness_callback(every=5, key=key, preconditioner=params)
        # the values are checked when the callback is made, under its name, not during training
        with pytest.raises(ValueError, match=r"sharpness_callback: method must be one of"):
            hessian.sharpness_callback(every=5, key=key, method="bogus")
        with pytest.raises(ValueError, match=r"sharpness_callback: curvature must be one of"):
            hessian.sharpness_callback(every=5, key=key, curvature="hesian")
        with pytest.raises(
            TypeError,
            match=r"sharpness: unexpected keyword argument 'trace_hvps' "
            r"\(did you mean 'max_hvps'\?\)",
        ):
            hessian.sharpness(loss, params, planted.data, key=key, trace_hvps=12)


def test_signatures_declare_the_curvature_settings_once():
    curvature = [
        p.name
        for p in inspect.signature(hessian.make_hvp).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    assert curvature == [
        "curvature",
        "model",
        "output_loss",
        "params_filter",
        "preconditioner",
        "batch_size",
        "method",
    ]
    for f in (
        hessian.eigenvalues,
        hessian.trace,
        hessian.spectral_density,
        hessian.gradient_overlap,
        hessian.sharpness,
    ):
        sig = inspect.signature(f)
        assert [n for n in sig.parameters if n in curvature] == curvature, f.__name__
        assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
        sig.bind(None, None, None, key=None, curvature="ggn", batch_size=64, method="linearize")
        with pytest.raises(TypeError):
            sig.bind(None, None, None, key=None, curvatur="ggn")
    inspect.signature(hessian.eigenvalues).bind(
        None, k=3, key=None, like=None
    )  # an operator alone
    assert inspect.signature(hessian.hvp).parameters["method"].default == "forward_over_reverse"
    assert "curvature" not in inspect.signature(hessian.ggn_decomposition).parameters
    assert "preconditioner" not in inspect.signature(hessian.sharpness_callback).parameters


# --------------------------------------------------------------------------------------------
# randomness is explicit
# --------------------------------------------------------------------------------------------
def test_missing_keys_raise(planted):
    loss, params, _ = planted.make(np.ones(planted.n))
    with jax.enable_x64(True):
        op = hessian.make_hvp(loss, params, planted.data)
        v0 = {"w": jnp.ones(planted.n)}
        with pytest.raises(TypeError, match="eigenvalues: key is required"):
            hessian.eigenvalues(
                loss, params, planted.data, k=1, v0=v0
            )  # a warm start still needs it
        with pytest.raises(TypeError, match="eigenvalues: key is required"):
            hessian.eigenvalues(op, k=1, v0=v0, key=None)
        with pytest.raises(TypeError, match="trace: key is required"):
            hessian.trace(op)
        with pytest.raises(TypeError, match="spectral_density: key is required"):
            hessian.spectral_density(op, num_steps=5)
        with pytest.raises(TypeError, match="missing 1 required keyword-only argument: 'key'"):
            hessian.lanczos(op, v0, 5)
        with pytest.raises(TypeError, match="lanczos: key is required"):
            hessian.lanczos(op, v0, 5, key=None)
        with pytest.raises(TypeError, match="missing 1 required keyword-only argument: 'key'"):
            hessian.epsilon_sharpness(loss, params, planted.data)
        with pytest.raises(TypeError, match="epsilon_sharpness: key is required"):
            hessian.epsilon_sharpness(loss, params, planted.data, key=None)
        with pytest.raises(TypeError, match="sharpness: key is required"):
            hessian.sharpness(loss, params, planted.data)
        with pytest.raises(TypeError, match="ggn_decomposition: key is required"):
            hessian.ggn_decomposition(loss, params, planted.data)
        with pytest.raises(TypeError, match="sharpness_callback: key is required"):
            hessian.sharpness_callback(every=5)
        with pytest.raises(TypeError, match="gradient_overlap: key is required"):
            hessian.gradient_overlap(loss, params, planted.data, k=1)


# --------------------------------------------------------------------------------------------
# resumable density
# --------------------------------------------------------------------------------------------
def test_resumed_density_equals_uninterrupted(planted, tmp_path, monkeypatch):
    lams = np.concatenate([[5.0, 3.0], planted.rng.uniform(-1, 1, planted.n - 2)])
    loss, params, _ = planted.make(lams)
    kw = dict(key=jax.random.key(4), num_probes=4, num_steps=12, check=True)
    with jax.enable_x64(True):
        op = hessian.make_hvp(loss, params, planted.data)
        full = hessian.spectral_density(op, **kw)
        one_probe = _density._one_probe

        def interrupted(op, prepared, layout, seed, p, *args):
            if p == 2:
                raise RuntimeError("interrupted")
            return one_probe(op, prepared, layout, seed, p, *args)

        monkeypatch.setattr(_density, "_one_probe", interrupted)
        with pytest.raises(RuntimeError, match="interrupted"):
            hessian.spectral_density(op, store=tmp_path / "slq", **kw)  # probes 0 and 1 saved
        monkeypatch.setattr(_density, "_one_probe", one_probe)
        resumed = hessian.spectral_density(op, store=tmp_path / "slq", **kw)
        # probes 2, 3 computed now; probe 0 (loaded) still warm-starts the check's eigensolve
        assert resumed.num_hvps < full.num_hvps
        for name in ("nodes", "weights", "grid", "density"):
            np.testing.assert_array_equal(getattr(resumed, name), getattr(full, name))
        assert dict(resumed.checks) == dict(full.checks)
        assert resumed.provenance["settings"] == full.provenance["settings"]
