"""Mean-field theory: fixed points, chi_1, depth scales and the phase diagram, against closed forms
(ReLU, erf), scipy quadrature (tanh) and random networks built by make_model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, optimize

import landscape
from landscape import diagnostics as D
from landscape.models import ACTIVATIONS

DTYPES = ["float32", "float64"]
# float32: quadrature and fixed points to float32 rounding (chi_1 ~ 1e-6; q* from a residual
# of 1e-4 relative); float64: quadrature error (1e-9 at these q)
RTOL = {"float32": 2e-5, "float64": 1e-8}


def _x64(dtype):
    return jax.enable_x64(dtype == "float64")


# ---- independent references --------------------------------------------------------------
def _gauss(h):
    """E[h(z)], z standard normal, by adaptive scipy quadrature."""
    return integrate.quad(
        lambda z: h(z) * np.exp(-z * z / 2) / np.sqrt(2 * np.pi),
        -12,
        12,
        epsabs=1e-13,
        epsrel=1e-12,
        limit=200,
    )[0]


def _tanh_q_star(sw, sb):
    return optimize.brentq(
        lambda q: sw * _gauss(lambda z: np.tanh(np.sqrt(q) * z) ** 2) + sb - q,
        1e-12,
        50,
        xtol=1e-14,
    )


def _tanh_chi(sw, sb):
    q = _tanh_q_star(sw, sb)
    return sw * _gauss(lambda z: np.cosh(np.sqrt(q) * z) ** -4.0), q


def _erf_reference(sw, sb):
    """Closed forms for erf (Williams 1997): E[erf(u1) erf(u2)] = (2/pi) arcsin(2 c / (1 + 2q))
    at equal variances q, E[erf'(u)^2] = (4/pi) / sqrt(1 + 4 q)."""
    q = optimize.brentq(
        lambda q: sw * 2 / np.pi * np.arcsin(2 * q / (1 + 2 * q)) + sb - q, 1e-12, 50, xtol=1e-14
    )
    chi = sw * 4 / np.pi / np.sqrt(1 + 4 * q)
    a = 2 * q / (1 + 2 * q)

    def cmap(c):
        return (sw * 2 / np.pi * np.arcsin(a * c) + sb) / q

    def dcmap(c):
        return sw * 2 / np.pi * a / np.sqrt(1 - (a * c) ** 2) / q

    c_star = 1.0 if chi <= 1 else optimize.brentq(lambda c: cmap(c) - c, 0.0, 1 - 1e-6, xtol=1e-15)
    return q, chi, c_star, -1 / np.log(dcmap(c_star) if chi > 1 else chi)


# ---- ReLU: closed forms and its degenerate cases ---------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_critical_point_and_no_fixed_point(dtype):
    with _x64(dtype):
        r = D.mean_field("relu", 2.0, 0.0, dtype=dtype)
        assert r.status == "every_q_fixed" and r.phase == "critical"
        assert float(r.chi_1) == 1.0 and np.isnan(r.q_star)  # chi_1 exactly 1; q* not a number
        assert np.isinf(r.xi_c) and np.isinf(r.xi_q) and "every q" in r.reason
        for sw, sb in ((2.5, 0.0), (3.0, 0.2), (2.0, 0.1)):
            r = D.mean_field("relu", sw, sb, dtype=dtype)
            assert r.status == "no_fixed_point" and np.isnan(r.q_star) and np.isnan(r.xi_c)
            assert "no finite fixed point" in r.reason and r.phase == "undefined"
            assert float(r.chi_1) == pytest.approx(sw / 2, rel=1e-7)  # q-independent for ReLU
        # ordered: q* = sb / (1 - sw/2) against scipy quadrature of the ReLU length map
        r = D.mean_field("relu", 1.5, 0.1, dtype=dtype)
        q_ref = optimize.brentq(
            lambda q: 1.5 * _gauss(lambda z: np.maximum(np.sqrt(q) * z, 0) ** 2) + 0.1 - q,
            1e-9,
            10,
        )
        assert float(r.q_star) == pytest.approx(q_ref, rel=RTOL[dtype])
        assert float(r.chi_1) == pytest.approx(0.75, rel=1e-7) and float(r.c_star) == 1.0
        assert float(r.xi_c) == pytest.approx(-1 / np.log(0.75), rel=1e-6)
        assert "closed form" in r.method and float(r.chi_1_error) == 0.0


def test_generic_degenerate_cases():
    """Without a closed form: the linear network (by quadrature) has every q fixed at
    sigma_w2 = 1, sigma_b2 = 0 (chi_1 = 1), no fixed point above, q* = sb / (1 - sw) below."""
    r = D.mean_field("linear", 1.0, 0.0)
    assert r.status == "every_q_fixed" and float(r.chi_1) == pytest.approx(1.0, abs=1e-6)
    r = D.mean_field("linear", 1.05, 0.0)
    assert r.status == "no_fixed_point" and np.isnan(r.q_star) and np.isnan(r.chi_1)
    r = D.mean_field("linear", 0.5, 0.1)
    assert r.status == "ok" and float(r.q_star) == pytest.approx(0.2, rel=1e-5)
    assert float(r.chi_1) == pytest.approx(0.5, rel=1e-6) and r.phase == "ordered"


# ---- smooth activations against independent references --------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_q_star_chi_xi_against_scipy_and_erf_closed_forms(dtype):
    with _x64(dtype):
        # erf's closed forms in float64 (tight, c* and xi_c through the 2-D quadrature included);
        # float32 runs the same code on tanh below and in the xi_c test (one compile less)
        for sw, sb in ((1.2, 0.3), (2.0, 0.1)) if dtype == "float64" else ():  # ordered, chaotic
            q, chi, c_star, xi_c = _erf_reference(sw, sb)
            r = D.mean_field("erf", sw, sb, dtype=dtype)
            assert r.status == "ok" and r.phase == ("chaotic" if chi > 1 else "ordered")
            assert float(r.q_star) == pytest.approx(q, rel=RTOL[dtype])
            assert float(r.chi_1) == pytest.approx(chi, rel=RTOL[dtype])
            # c* from the two-dimensional quadrature (deg_pair = 64): 1e-10 in float64
            assert float(r.c_star) == pytest.approx(c_star, rel=10 * RTOL[dtype])
            assert float(r.xi_c) == pytest.approx(xi_c, rel=100 * RTOL[dtype])
        chi, q = _tanh_chi(2.5, 0.2)
        r = D.mean_field(jnp.tanh, 2.5, 0.2, dtype=dtype)
        assert float(r.q_star) == pytest.approx(q, rel=RTOL[dtype])
        assert float(r.chi_1) == pytest.approx(chi, rel=RTOL[dtype])
        assert float(r.chi_1_error) < 1e-6
        # xi_q: the slope of the length map, by a finite difference of scipy's map
        h = 1e-5
        f = lambda q: 2.5 * _gauss(lambda z: np.tanh(np.sqrt(q) * z) ** 2) + 0.2  # noqa: E731
        slope = (f(q + h) - f(q - h)) / (2 * h)
        assert float(r.xi_q) == pytest.approx(-1 / np.log(slope), rel=max(RTOL[dtype], 1e-6))


@pytest.mark.parametrize("dtype", DTYPES)
def test_tanh_critical_line_at_sigma_b2_005(dtype):
    """For tanh with sigma_b2 = 0.05 the order-to-chaos line is at sigma_w2 = 1.761, q* = 0.57
    (Schoenholz et al. 2017, Fig. 1; Pennington et al. 2017): to 1e-3, and to scipy's root."""
    sw_ref = optimize.brentq(lambda s: _tanh_chi(s, 0.05)[0] - 1, 1.5, 2.0, xtol=1e-12)
    q_ref = _tanh_q_star(sw_ref, 0.05)
    with _x64(dtype):
        pd = D.phase_diagram("tanh", np.linspace(0.5, 3.0, 6), [0.0, 0.05, 0.2], dtype=dtype)
    assert pd.chi_1.shape == (3, 6) and pd.status.shape == (3, 6)
    sw_c, q_c = float(pd.critical_sigma_w2[1]), float(pd.critical_q_star[1])
    assert abs(sw_c - 1.761) < 1e-3 and abs(q_c - 0.57) < 1e-3
    # bisection to the dtype: chi_1 - 1 changes sign within float32 rounding of chi_1 (1e-6)
    assert sw_c == pytest.approx(sw_ref, abs=1e-5 if dtype == "float32" else 1e-8)
    assert q_c == pytest.approx(q_ref, abs=1e-5 if dtype == "float32" else 1e-8)
    # sigma_b2 = 0: the line starts at sigma_w2 = 1 (q* -> 0, chi_1 = sigma_w2 tanh'(0)^2)
    assert float(pd.critical_sigma_w2[0]) == pytest.approx(1.0, abs=1e-5)
    assert np.all(np.diff(pd.critical_sigma_w2) > 0)  # larger biases need larger weights
    with _x64(dtype):
        r = D.mean_field("tanh", sw_c, 0.05, dtype=dtype)
    assert abs(float(r.chi_1) - 1) < (2e-6 if dtype == "float32" else 1e-10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_xi_c_diverges_at_the_order_to_chaos_line(dtype):
    """xi_c grows without bound as chi_1 -> 1 from either side, like 1 / |chi_1 - 1|."""
    crit = 1.76095464  # tanh, sigma_b2 = 0.05
    dist = [0.3, 0.1, 0.03, 0.01, 3e-3, 1e-3, 3e-4]
    with _x64(dtype):
        for side in (-1, 1):
            rs = [D.mean_field("tanh", crit + side * d, 0.05, dtype=dtype) for d in dist]
            xi = np.array([float(r.xi_c) for r in rs])
            eps = np.array([float(r.chi_1) - 1 for r in rs])
            assert np.all(np.sign(eps) == side)
            assert {r.phase for r in rs} == {"ordered" if side < 0 else "chaotic"}
            assert np.all(np.diff(xi) > 0) and xi[-1] > 1e4  # monotone, unbounded
            # xi_c |chi_1 - 1| -> 1 (ordered: exactly -1/ln chi_1; chaotic: M'(c*) = 1 - eps)
            np.testing.assert_allclose(xi[-3:] * np.abs(eps[-3:]), 1.0, rtol=5e-3)
            c = np.array([float(r.c_star) for r in rs])
            if side > 0:
                assert np.all(np.diff(c) > 0) and np.all(c < 1)  # c* -> 1 from below
            else:
                assert np.all(c == 1)


# ---- against random networks built by make_model --------------------------------------------
def _network_q(act, sw, sb, *, width, depth, n, seeds):
    """Per-layer pre-activation second moments of make_model networks (mean over units,
    examples and seeds), inputs normalised to q0 = 1 exactly: ``{dtype: (depth,)}``, the same
    float32 draws run in float32 and (cast) in float64."""
    qs = {"float32": [], "float64": []}
    for s in seeds:
        m = landscape.make_model(
            "mlp",
            input_shape=(width,),
            num_outputs=1,
            hidden=(width,) * depth,
            activation=act,
            sigma_w2=sw,
            sigma_b2=sb,
            seed=s,
        )
        x = np.random.default_rng(100 + s).standard_normal((n, width))
        x /= np.sqrt((x**2).mean(1, keepdims=True))
        for dtype in qs:
            with _x64(dtype):
                h, out = jnp.asarray(x, dtype), []
                for l in range(depth):
                    p = jax.tree.map(lambda a, t=dtype: jnp.asarray(a, t), m.params["layers"][l])
                    h = (h if l == 0 else ACTIVATIONS[act](h)) @ p["kernel"] + p["bias"][None]
                    out.append(float(jnp.mean(h * h)))
            qs[dtype].append(out)
    return {k: np.mean(v, axis=0) for k, v in qs.items()}


@pytest.mark.parametrize("act,sw,sb", [("tanh", 5.0, 0.1)])
def test_predicted_layer_variances_match_random_networks(act, sw, sb):
    """q^l from the length map iterated from q^0 = 1 equals the mean pre-activation second moment
    of make_model networks (width 1000 >> depth 10, 3 initialisations, 64 inputs).

    Tolerance: per layer and example the finite-width estimate has relative variance 2 / width
    (a chi-square over the units); averaging over ``n_eff = n / (1 + (n - 1) c*^2)`` effectively
    independent examples (they correlate towards the fixed point c* of the correlation map, from
    below) and S seeds, and accumulating through a length map of slope s = exp(-1/xi_q), the
    standard deviation is at most sqrt(2 / (width n_eff S)) / sqrt(1 - s^2); we allow 5 of them
    (a few percent). The first layer (q^1 = sigma_w2 q^0 + sigma_b2, inputs nearly independent)
    is checked at 5 standard deviations with n_eff from c^1 = sigma_b2 / q^1."""
    width, depth, n, seeds = 1000, 10, 64, (0, 1, 2)
    emps = _network_q(act, sw, sb, width=width, depth=depth, n=n, seeds=seeds)
    for dtype, emp in emps.items():
        with _x64(dtype):
            r = D.mean_field(act, sw, sb, q0=1.0, num_layers=depth, dtype=dtype)
        pred = np.asarray(r.q_layers, np.float64)
        assert pred.shape == (depth,) and pred[0] == pytest.approx(sw + sb, rel=1e-6)
        c, s = float(r.c_star), np.exp(-1 / float(r.xi_q))
        n_eff = n / (1 + (n - 1) * c * c)
        tol = 5 * np.sqrt(2 / (width * n_eff * len(seeds))) / np.sqrt(1 - s * s)
        assert tol < 0.07  # "a few percent"
        np.testing.assert_allclose(emp, pred, rtol=tol)
        c1 = sb / (sw + sb)
        tol1 = 5 * np.sqrt(2 * (1 + (n - 1) * c1 * c1) / (width * n * len(seeds)))
        assert emp[0] == pytest.approx(pred[0], rel=tol1)
        np.testing.assert_allclose(pred[-1], float(r.q_star), rtol=1e-3)  # converged by L = 10


# ---- results, compilation, errors -----------------------------------------------------------
def test_results_save_load_and_no_recompilation(tmp_path):
    from landscape.diagnostics import _meanfield

    r = D.mean_field("tanh", 1.5, 0.1, num_layers=3)
    n = _meanfield._mean_field_program._cache_size()
    r2 = D.mean_field("tanh", 1.7, 0.2, num_layers=3)  # other values, same program
    assert _meanfield._mean_field_program._cache_size() == n and r2.sigma_w2 == 1.7
    r.save(tmp_path / "mf.npz")
    back = D.MeanFieldResult.load(tmp_path / "mf.npz")
    assert back.status == r.status and float(back.q_star) == float(r.q_star)
    np.testing.assert_array_equal(back.q_layers, r.q_layers)
    assert "tanh" in repr(r) and "ordered" in repr(r)
    pd = D.phase_diagram("relu", [1.0, 2.0, 3.0], [0.0, 0.1])
    assert pd.status.tolist() == [[0, 2, 1], [0, 1, 1]]
    assert float(pd.critical_sigma_w2[0]) == 2.0 and np.isnan(pd.critical_sigma_w2[1])
    assert "no order-to-chaos line" in pd.critical_note
    pd.save(tmp_path / "pd.npz")
    back = D.PhaseDiagramResult.load(tmp_path / "pd.npz")
    np.testing.assert_array_equal(back.chi_1, pd.chi_1)
    assert back.critical_note == pd.critical_note
    w, b = pd.critical_line
    assert w.tolist() == [2.0] and b.tolist() == [0.0]


def test_bad_inputs():
    with pytest.raises(
        ValueError, match=r"mean_field: activation 'softmax_like' is not elementwise"
    ):

        def softmax_like(x):
            return jax.nn.softmax(x)

        D.mean_field(softmax_like, 1.0, 0.1)
    with pytest.raises(ValueError, match="is not elementwise: its value at an entry depends"):
        D.mean_field(lambda x: x / jnp.linalg.norm(x), 1.0, 0.1)
    with pytest.raises(ValueError, match="is not elementwise: it changed the shape"):
        D.mean_field(lambda x: jnp.sum(x, axis=-1), 1.0, 0.1)
    with pytest.raises(ValueError, match="unknown activation 'swishy'"):
        D.mean_field("swishy", 1.0, 0.1)
    with pytest.raises(TypeError, match="activation must be a name"):
        D.mean_field(3, 1.0, 0.1)
    with pytest.raises(ValueError, match=r"mean_field: sigma_w2 must be > 0; got 0"):
        D.mean_field("tanh", 0, 0.1)
    with pytest.raises(ValueError, match="sigma_b2 must be >= 0"):
        D.mean_field("tanh", 1.0, -0.1)
    with pytest.raises(ValueError, match="sigma_w2 must be finite"):
        D.mean_field("tanh", float("inf"), 0.1)
    with pytest.raises(ValueError, match="q0 must be > 0"):
        D.mean_field("tanh", 1.0, 0.1, q0=0.0)
    with pytest.raises(ValueError, match="num_layers must be >= 0"):
        D.mean_field("tanh", 1.0, 0.1, num_layers=-1)
    if not jax.config.jax_enable_x64:
        with pytest.raises(ValueError, match="dtype=float64 needs 64-bit JAX"):
            D.mean_field("tanh", 1.0, 0.1, dtype="float64")
    with pytest.raises(ValueError, match=r"phase_diagram: every entry of sigma_w2s must be > 0"):
        D.phase_diagram("tanh", [0.0, 1.0, 2.0], [0.1])
    with pytest.raises(ValueError, match=r"every entry of sigma_b2s must be >= 0.*\[-0.1\]"):
        D.phase_diagram("tanh", [1.0, 2.0], [-0.1, 0.1])
    with pytest.raises(ValueError, match="sigma_w2s must be strictly increasing"):
        D.phase_diagram("tanh", [2.0, 1.0], [0.1])
    with pytest.raises(ValueError, match="sigma_b2s must be a non-empty 1-D sequence"):
        D.phase_diagram("tanh", [1.0, 2.0], [])
    with pytest.raises(ValueError, match="sigma_w2s must be finite"):
        D.phase_diagram("tanh", [1.0, np.nan], [0.1])
    with pytest.raises(ValueError, match="phase_diagram: activation .* is not elementwise"):
        D.phase_diagram(jax.nn.softmax, [1.0, 2.0], [0.1])


def test_plot_phase_diagram():
    import matplotlib

    matplotlib.use("Agg")
    from landscape import plot

    pd = D.phase_diagram("tanh", np.linspace(0.5, 3.0, 6), [0.0, 0.05, 0.2])
    ax = plot.plot_phase_diagram(
        pd, trained=[(1.0, 0.05, 0.3), (2.5, 0.1, 1.2), (3.0, 0.2, np.nan)]
    )
    line = [h for h in ax.get_lines() if "critical line" in h.get_label()]
    assert len(line) == 1
    np.testing.assert_allclose(line[0].get_xdata(), pd.critical_sigma_w2)
    assert [h.get_label() for h in ax.get_lines()][-1] == "trained: diverged"
    assert len(ax.collections[-1].get_offsets()) == 2  # the finite-loss points, coloured
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("root finding" in t for t in legend)
    pr = D.phase_diagram("relu", [1.0, 2.0, 3.0], [0.0, 0.1])
    ax = plot.plot_phase_diagram(pr)
    assert any("critical point" in h.get_label() for h in ax.get_lines())
    with pytest.raises(TypeError, match="result must be a PhaseDiagramResult"):
        plot.plot_phase_diagram(D.mean_field("tanh", 1.0, 0.1))
    with pytest.raises(TypeError, match="each entry of trained"):
        plot.plot_phase_diagram(pd, trained=[(1.0, 2.0)])
    # TrainResults: placed by their model spec's variances, coloured by the last train_loss
    from types import SimpleNamespace

    run = SimpleNamespace(
        history={"train_loss": np.array([2.0, 0.4])},
        spec={"kwargs": {"sigma_w2": 1.5, "sigma_b2": 0.1}},
    )
    ax = plot.plot_phase_diagram(pd, trained=[run])
    np.testing.assert_allclose(ax.collections[-1].get_offsets(), [[1.5, 0.1]])
    np.testing.assert_allclose(ax.collections[-1].get_array(), [0.4])
    with pytest.raises(ValueError, match="was not built with make_model"):
        plot.plot_phase_diagram(pd, trained=[SimpleNamespace(history={}, spec=None)])
    matplotlib.pyplot.close("all")
