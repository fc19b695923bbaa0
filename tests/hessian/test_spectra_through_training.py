"""spectra_callback: top-k curvature eigenvalues, SLQ densities on one grid, empirical NTK
eigenvalues and the gradient's overlap with the top-k eigenspace, recorded through training;
batch-norm modes; the store resume; bad inputs; the plots.

References: a tanh MLP 5-4-3 (39 parameters, float64) on 40 random examples, full-batch GD.
At every recorded step (the parameters captured by a second callback) the dense Hessian and GGN
(``jax.hessian``/``jax.jacrev`` of a loss written here in jnp) give the top-k eigenvalues and
the exact overlap ``||V_k^T g||^2 / ||g||^2`` (``V_k`` the dense top-k eigenvectors, ``g`` the
dense gradient); the dense Jacobian of the outputs on the probe set gives the NTK ``J J^T``.
Tolerances: the eigensolver runs at ``tol=1e-10`` (relative residual), so eigenvalues agree to
about 1e-10 relative (asserted 1e-8) and eigenvectors to about the square root, 1e-5 in angle
(asserted 2e-5 absolute on the overlap fraction); the NTK is a direct Gram (asserted 1e-10 relative). Ritz values of
the density's Lanczos runs lie inside the spectrum (interlacing: an exact bound, 1e-10 slack).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from threadpoolctl import threadpool_limits

import landscape
from landscape import hessian


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """Dense NumPy linear algebra (references, host eigensolves) on one BLAS thread: on a
    shared 2-core machine OpenBLAS's threads contend with the test workers (10-20x slower)."""
    with threadpool_limits(1):
        yield


N, D, C, H = 40, 5, 3, 4
K = 3


def _mlp(**kw):
    """The tests' float64 tanh MLP ``D -> H -> C``."""
    with jax.enable_x64(True):
        return landscape.make_model(
            "mlp",
            input_shape=(D,),
            num_outputs=C,
            hidden=(H,),
            seed=0,
            activation="tanh",
            param_dtype=jnp.float64,
            **kw,
        )


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(N, D)), "y": rng.integers(0, C, size=N).astype(np.int32)}
    return _mlp(), data


def _run(model, data, cbs, *, num_steps=10):
    with jax.enable_x64(True):
        return landscape.train(
            model,
            data,
            optimizer="sgd",
            learning_rate=0.5,
            num_steps=num_steps,
            batch_size=N,
            callbacks=cbs,
            progress=False,
            seed=0,
        )


def _capture(every):
    seen = {}

    def grab(info):
        seen[int(info.step)] = info.params
        seen[("state", int(info.step))] = info.state
        return None

    return landscape.callback(grab, every=every), seen


def _dense_fn(model, data, probe):
    """A jitted ``flat params -> (Hessian, GGN, gradient, NTK)`` (float64) of the cross-entropy
    MLP, written here in jnp from the model's apply function."""

    def dense(flat, unravel, x, y, xp):
        def logits(f, xx):
            return model.apply_fn(unravel(f), model.state, xx, train=False)[0]

        def loss(f):
            logp = jax.nn.log_softmax(logits(f, x), axis=-1)
            return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=-1))

        Hm = jax.hessian(loss)(flat)
        J = jax.jacrev(lambda f: logits(f, x))(flat)  # (N, C, P)
        p = jax.nn.softmax(logits(flat, x), axis=-1)
        Hout = jnp.einsum("nc,cd->ncd", p, jnp.eye(C)) - jnp.einsum("nc,nd->ncd", p, p)
        G = jnp.einsum("ncp,ncd,ndq->pq", J, Hout, J) / N
        Jp = jax.jacrev(lambda f: logits(f, xp))(flat).reshape(-1, flat.size)
        return Hm, G, jax.grad(loss)(flat), Jp @ Jp.T

    compiled = {}

    def run(params):
        flat, unravel = ravel_pytree(params)
        if not compiled:  # one program for every step (a new unravel would retrace it)
            compiled["fn"] = jax.jit(lambda f, *a: dense(f, unravel, *a))
        out = compiled["fn"](flat, data["x"], data["y"], probe)
        return [np.asarray(a, np.float64) for a in out]

    return run


@pytest.fixture(scope="module")
def recorded(setup, tmp_path_factory):
    model, data = setup
    probe = data["x"][:6]
    store = tmp_path_factory.mktemp("spectra") / "store"
    cb = hessian.spectra_callback(
        every=5, key=jax.random.key(0), probe_x=probe, k=K, num_steps=12, tol=1e-10, store=store
    )
    grab, seen = _capture(5)
    run = _run(model, data, [cb, grab])
    return model, data, probe, store, cb, None, seen, run


def test_records_match_dense_references(recorded):
    """The Hessian callback (outputs kept in the NTK) at steps 0, 5, 10; the GGN, the
    output-averaged NTK and batch statistics are checked in test_batch_norm_batch_mode."""
    model, data, probe, _, cb, _, seen, run = recorded
    with jax.enable_x64(True):
        res = cb.result()
    assert list(res.steps) == [0, 5, 10] and res.bn_mode == "none" and res.curvature == "hessian"
    assert res.values.shape == (3, K) and res.ntk_values.shape == (3, K)
    dense = _dense_fn(model, data, probe)
    for i, step in enumerate(res.steps):
        with jax.enable_x64(True):
            Hm, G, g, ntk = dense(seen[int(step)])
        Hm, G = 0.5 * (Hm + Hm.T), 0.5 * (G + G.T)
        evals, evecs = np.linalg.eigh(Hm)
        np.testing.assert_allclose(res.values[i], evals[::-1][:K], rtol=1e-8, atol=1e-12)
        top = evecs[:, ::-1][:, :K]
        frac = float(np.sum((top.T @ g) ** 2) / (g @ g))
        np.testing.assert_allclose(res.overlap[i], frac, rtol=0, atol=2e-5)
        np.testing.assert_allclose(res.grad_norm[i], np.linalg.norm(g), rtol=1e-10)
        np.testing.assert_allclose(
            res.ntk_values[i], np.linalg.eigvalsh(ntk)[::-1][:K], rtol=1e-10, atol=1e-12
        )
        # Ritz values lie inside the spectrum (interlacing), and every probe's weights sum to 1
        live = res.weights[i] > 1e-14
        assert res.nodes[i][live].max() <= evals[-1] + 1e-10
        assert res.nodes[i][live].min() >= evals[0] - 1e-10
        np.testing.assert_allclose(res.weights[i].sum(axis=1), 1.0, atol=1e-12)
    # one fixed grid: (records x grid) densities, each the smoothing of its own quadrature
    assert res.density.shape == (3, len(res.grid))
    np.testing.assert_allclose(res.density, res.density_on(res.grid), rtol=1e-12)
    dg = np.diff(res.grid).mean()
    np.testing.assert_allclose(res.density.sum(axis=1) * dg, 1.0, atol=1e-3)
    h = run.history
    np.testing.assert_allclose(h["spectra"], res.values[:, 0])
    np.testing.assert_allclose(h["spectra_overlap"], res.overlap)
    assert list(h["spectra_step"]) == [0, 5, 10]


def test_store_resume_and_save_load(recorded, tmp_path):
    model, data, probe, store, cb, _, _, _ = recorded
    again = hessian.spectra_callback(
        every=5, key=jax.random.key(0), probe_x=probe, k=K, num_steps=12, tol=1e-10, store=store
    )
    _run(model, data, [again])
    assert again.stats == {"computed": 0, "loaded": 3}
    with jax.enable_x64(True):
        a, b = cb.result(), again.result()
    for f in ("values", "density", "ntk_values", "overlap", "nodes"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    a.save(tmp_path / "r.npz")
    c = hessian.SpectraResult.load(tmp_path / "r.npz")
    np.testing.assert_array_equal(c.density, a.density)
    assert (c.bn_mode, c.k, c.curvature) == (a.bn_mode, a.k, a.curvature)
    assert "3 records" in repr(c)
    # the first part of a split run (stop_step=5) with a new callback on the store: its result
    # holds every stored record (the later part's too), on the uninterrupted run's grid
    part = hessian.spectra_callback(
        every=5, key=jax.random.key(0), probe_x=probe, k=K, num_steps=12, tol=1e-10, store=store
    )
    with jax.enable_x64(True):
        landscape.train(
            model,
            data,
            optimizer="sgd",
            learning_rate=0.5,
            num_steps=10,
            stop_step=5,
            batch_size=N,
            callbacks=[part],
            progress=False,
            seed=0,
        )
        p = part.result()
    assert part.stats == {"computed": 0, "loaded": 2} and list(p.steps) == list(a.steps)
    np.testing.assert_array_equal(p.density, a.density)
    np.testing.assert_array_equal(p.grid, a.grid)
    # a split run on a fresh store: the first record computed after resuming (step 10) warm-
    # starts from the eigenvectors the store's latest record (step 5) kept, so every record is
    # bit for bit the uninterrupted run's; only the latest stored record keeps its vectors
    split = tmp_path / "split"
    first = hessian.spectra_callback(
        every=5, key=jax.random.key(0), probe_x=probe, k=K, num_steps=12, tol=1e-10, store=split
    )
    rest = hessian.spectra_callback(
        every=5, key=jax.random.key(0), probe_x=probe, k=K, num_steps=12, tol=1e-10, store=split
    )
    kw = dict(optimizer="sgd", learning_rate=0.5, num_steps=10, batch_size=N, progress=False)
    with jax.enable_x64(True):
        state = landscape.train(
            model, data, stop_step=5, callbacks=[first], seed=0, **kw
        ).train_state()
        landscape.train(model, data, initial_state=state, callbacks=[rest], **kw)
        r = rest.result()
    assert first.stats == {"computed": 2, "loaded": 0}
    assert rest.stats == {"computed": 1, "loaded": 1} and list(r.steps) == [0, 5, 10]
    for f in (
        "values",
        "residuals",
        "nodes",
        "weights",
        "density",
        "ntk_values",
        "overlap",
        "cos2",
        "grad_norm",
        "loss",
        "num_hvps",
    ):
        np.testing.assert_array_equal(getattr(r, f), getattr(a, f), err_msg=f)
    kept = landscape.Store(split)
    held = {n: "vectors" in np.load(kept.path / f"{n}.npz") for n in kept.entries()}
    assert held == {"record-000000000": False, "record-000000005": False, "record-000000010": True}
    # another job's settings in the same store: refused, naming the difference
    other = hessian.spectra_callback(
        every=5, key=jax.random.key(0), probe_x=probe, k=2, store=store
    )
    with pytest.raises(ValueError, match="another job"):
        _run(model, data, [other], num_steps=5)


@pytest.mark.filterwarnings("error::FutureWarning")  # float64 statistics into float32 state
def test_batch_norm_batch_mode(setup):
    """bn_mode="batch" with curvature="ggn": the GGN of the training-mode loss (batch statistics
    of the full batch, state update discarded; ``J`` the Jacobian of the batch's training-mode
    logits, every example coupled through the statistics) against the dense one; the mode is
    recorded ("auto" resolves to it for a batch-norm model) and the evaluation-mode GGN differs.
    The NTK (evaluation mode, output-averaged: ``ntk_trace_outputs=True``) against the dense
    ``J J^T`` traced over outputs."""
    _, data = setup
    model = _mlp(batch_norm=True)
    # the running statistics have the parameters' dtype (Flax NNX makes them float32)
    assert {str(a.dtype) for a in jax.tree.leaves(model.state)} == {"float64"}
    probe = data["x"][:4]
    cb = hessian.spectra_callback(
        every=1,
        key=jax.random.key(0),
        probe_x=probe,
        k=2,
        curvature="ggn",
        num_steps=10,
        tol=1e-10,
        batch_size=N,
        ntk_trace_outputs=True,
        at_start=False,
    )
    grab, seen = _capture(1)
    _run(model, data, [cb, grab], num_steps=1)
    with jax.enable_x64(True):
        res = cb.result()
        assert (res.bn_mode, res.ntk_bn_mode, res.curvature) == ("batch", "eval", "ggn")
        flat, unravel = ravel_pytree(seen[1])
        st = seen[("state", 1)]

        @jax.jit
        def dense(f, x, y, xp):
            """The GGNs with batch and with population statistics, and the probe Jacobian."""

            def ggn(train):
                out = model.apply_fn(unravel(f), st, x, train=train)[0]
                J = jax.jacrev(lambda g: model.apply_fn(unravel(g), st, x, train=train)[0])(f)
                p = jax.nn.softmax(out, axis=-1)
                Hout = jnp.einsum("nc,cd->ncd", p, jnp.eye(C)) - jnp.einsum("nc,nd->ncd", p, p)
                return jnp.einsum("ncp,ncd,ndq->pq", J, Hout, J) / N

            Jp = jax.jacrev(lambda g: model.apply_fn(unravel(g), st, xp, train=False)[0])(f)
            return ggn(True), ggn(False), Jp

        Gb, Ge, Jp = (np.asarray(a, np.float64) for a in dense(flat, data["x"], data["y"], probe))
    top_batch = np.linalg.eigvalsh(0.5 * (Gb + Gb.T))[::-1]
    top_eval = np.linalg.eigvalsh(0.5 * (Ge + Ge.T))[::-1]
    np.testing.assert_allclose(res.values[0], top_batch[:2], rtol=1e-8)
    assert not np.allclose(top_batch[:2], top_eval[:2], rtol=1e-3)  # the modes differ here
    traced = np.einsum("icp,jcp->ij", Jp, Jp) / C
    np.testing.assert_allclose(res.ntk_values[0], np.linalg.eigvalsh(traced)[::-1][:2], rtol=1e-10)


def test_bad_inputs(setup):
    model, data = setup
    probe = data["x"][:4]
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="every"):
        hessian.spectra_callback(every=0, key=key, probe_x=probe)
    with pytest.raises(ValueError, match="bn_mode"):
        hessian.spectra_callback(every=1, key=key, probe_x=probe, bn_mode="population")
    bad = probe.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="probe_x"):
        hessian.spectra_callback(every=1, key=key, probe_x=bad)
    with pytest.raises(ValueError, match="curvature"):
        hessian.spectra_callback(every=1, key=key, probe_x=probe, curvature="fisher")
    with pytest.raises(TypeError, match="key"):
        hessian.spectra_callback(every=1, key=None, probe_x=probe)
    too_many = hessian.spectra_callback(every=1, key=key, probe_x=probe, k=1000)
    with pytest.raises(
        ValueError, match=r"spectra_callback: k=1000 exceeds the number of parameters \(39\)"
    ):
        _run(model, data, [too_many], num_steps=1)
    ntk = hessian.spectra_callback(every=1, key=key, probe_x=probe, ntk_k=13, num_steps=10)
    with pytest.raises(ValueError, match="ntk_k=13"):
        _run(model, data, [ntk], num_steps=1)
    with pytest.raises(ValueError, match="no records"):
        hessian.spectra_callback(every=1, key=key, probe_x=probe).result()
    wrong = hessian.spectra_callback(every=1, key=key, probe_x=np.ones((3, D + 2)))
    with pytest.raises(ValueError, match=r"probe_x \(shapes \[\(3, 7\)\]\) does not fit"):
        _run(model, data, [wrong], num_steps=1)


def test_a_callback_measures_one_run(recorded):
    # reused for another run (other data here; another model or loss alike) it would measure
    # that run with the first one's programs: refused before anything is computed
    model, data, _, _, cb, *_ = recorded
    other = {"x": data["x"] + 1.0, "y": data["y"]}
    with pytest.raises(ValueError, match="already measured a run of another"):
        _run(model, other, [cb], num_steps=1)


def test_plots_and_animation(recorded, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from landscape import plot

    res = recorded[4].result()
    ax = plot.plot_spectra_heatmap(res)
    assert "no batch norm" in ax.get_title()
    plot.plot_spectra_eigenvalues(res)
    ax = plot.plot_spectra_eigenvalues(res, kind="ntk")
    assert len(ax.get_lines()) == res.ntk_k
    out, used = plot.animate_spectra(res, tmp_path / "anim", writer="frames")
    assert used == "frames" and len(list(out.glob("frame-*.png"))) == 3
    out, used = plot.animate_spectra(res, tmp_path / "anim")
    assert used in ("gif", "mp4", "frames") and out.exists()
    with pytest.raises(ValueError, match="writer"):
        plot.animate_spectra(res, tmp_path / "x", writer="avi")
    plt.close("all")
