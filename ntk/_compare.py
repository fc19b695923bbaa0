"""Empirical versus analytic kernels: convergence with width, Monte Carlo estimates, kernel
drift during training, finite versus infinite-width predictions, eigenvalue spectra."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from landscape import Result, provenance, result, static_field
from landscape import validate as _validate
from landscape.losses import cross_entropy, mse
from ntk import _checks
from ntk._analytic import kernel as analytic_kernel
from ntk._arch import Architecture
from ntk._empirical import _empirical_pair, _outputs_2d, ntk_structured
from ntk._predict import (
    gradient_descent_mse,
    gradient_descent_mse_ensemble,
    kernel_regression,
    max_learning_rate,
)


def relative_distance(a, b) -> float:
    """``||a - b||_F / ||b||_F`` (``b`` is the reference)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"ntk.relative_distance: shapes differ: {a.shape} vs {b.shape}.")
    nb = np.linalg.norm(b)
    if nb == 0:
        raise ValueError("ntk.relative_distance: the reference kernel is zero.")
    return float(np.linalg.norm(a - b) / nb)


def _check_arch_fn(make_arch):
    _validate.check_callable(make_arch, name="make_arch")


def _widths(widths):
    ws = [int(w) for w in widths]
    if not ws or any(w <= 0 for w in ws):
        raise ValueError(
            f"{_validate.where('ntk')}: widths must be a non-empty list of positive ints; got {widths!r}."
        )
    return ws


@result
class MonteCarloKernel(Result):
    """Mean of empirical kernels over random initialisations, with standard errors.

    Attributes:
      nngp, ntk: ``(n1, n2)`` means over ``num_samples`` networks.
      nngp_sem, ntk_sem: entrywise standard errors of the means.
    """

    nngp: np.ndarray
    ntk: np.ndarray
    nngp_sem: np.ndarray
    ntk_sem: np.ndarray
    num_samples: int = static_field(default=0)
    provenance: dict = static_field(default_factory=dict)


@_validate.public("ntk.monte_carlo")
def monte_carlo(
    arch: Architecture, x1, x2=None, *, key, num_samples: int = 8, dtype=None
) -> MonteCarloKernel:
    """Empirical NNGP (``f f^T / O``) and NTK of ``num_samples`` random networks of ``arch``
    at its finite widths: unbiased estimates of the analytic NNGP (and, up to ``O(1/width)``,
    the NTK). One compiled program maps over the samples (initialisation, outputs and the
    structured empirical NTK of each), so memory is that of one sample; the seeds match
    ``arch.init(k)`` for ``k in jax.random.split(key, num_samples)``."""
    if not isinstance(arch, Architecture):
        raise TypeError(f"{_validate.where('ntk')}: arch must be an ntk.Architecture; got {type(arch).__name__}.")
    _validate.check_key(key)
    num_samples = _validate.check_positive_int(num_samples, name="num_samples")
    x1 = _checks.as_inputs(x1, name="x1", dtype=dtype)
    x2 = None if x2 is None else _checks.as_inputs(x2, name="x2", dtype=x1.dtype)
    keys = jax.random.split(key, num_samples)
    ns, ts = _mc_jit(
        arch, keys, jax.numpy.asarray(x1), None if x2 is None else jax.numpy.asarray(x2)
    )
    ns, ts = np.asarray(ns), np.asarray(ts)
    sem = lambda a: a.std(0, ddof=1) / np.sqrt(len(a)) if len(a) > 1 else np.zeros_like(a[0])  # noqa: E731
    return MonteCarloKernel(
        nngp=ns.mean(0),
        ntk=ts.mean(0),
        nngp_sem=sem(ns),
        ntk_sem=sem(ts),
        num_samples=num_samples,
        provenance=provenance(dtype=x1.dtype, settings=dict(arch=repr(arch))),
    )


@functools.partial(jax.jit, static_argnums=(0,))
def _mc_jit(arch, keys, x1, x2):
    def one(k):
        p = arch.net.init(k, tuple(x1.shape[1:]), x1.dtype)
        o1 = _outputs_2d(arch.apply(p, x1))
        o2 = o1 if x2 is None else _outputs_2d(arch.apply(p, x2))
        nngp = jax.numpy.matmul(o1, o2.T, precision=jax.lax.Precision.HIGHEST) / o1.shape[1]
        return nngp, ntk_structured(arch, p, x1, x2)

    return jax.lax.map(one, keys)


@result
class Convergence(Result):
    """Distance between empirical kernels at initialisation and the analytic kernel.

    Attributes:
      widths: ``(W,)``.
      ntk_distances, nngp_distances: ``(W, S)`` relative Frobenius distance of each seed's
        empirical kernel (NNGP: ``f f^T / O``) to the analytic one.
      ntk_mean, ntk_std: mean and standard deviation over seeds of ``ntk_distances``.
      ntk_avg_distance: distance of the seed-averaged empirical NTK (falls faster: the
        fluctuations average out, the ``O(1/width)`` bias remains); ``ntk_avg_spread``: its
        bootstrap standard deviation over seeds. ``nngp_*`` likewise.
      slope: least-squares slope of ``log ntk_mean`` against ``log width`` (about -1/2).
    """

    widths: np.ndarray
    ntk_distances: np.ndarray
    nngp_distances: np.ndarray
    ntk_mean: np.ndarray
    ntk_std: np.ndarray
    nngp_mean: np.ndarray
    nngp_std: np.ndarray
    ntk_avg_distance: np.ndarray
    ntk_avg_spread: np.ndarray
    nngp_avg_distance: np.ndarray
    nngp_avg_spread: np.ndarray
    slope: float = static_field(default=float("nan"))
    label: str = static_field(default="")
    provenance: dict = static_field(default_factory=dict)


def _bootstrap(stack, ref, rng, num=100):
    s = len(stack)
    vals = [relative_distance(stack[rng.integers(0, s, s)].mean(0), ref) for _ in range(num)]
    return float(np.std(vals))


@_validate.public("ntk.convergence")
def convergence(
    make_arch: Callable[[int], Architecture],
    widths: Sequence[int],
    x,
    *,
    key,
    num_seeds: int = 4,
    dtype=None,
    label: str = "",
) -> Convergence:
    """Empirical NTK and NNGP at initialisation against the analytic kernels as width grows.

    Args:
      make_arch: ``width -> Architecture`` (e.g. ``lambda n: ntk.serial(ntk.Dense(n), ...)``).
      widths: hidden widths (channels for CNNs).
      x: inputs ``(n, ...)``.
      key: PRNG key (seed ``s`` of width ``w`` uses ``fold_in(key, s)``).
      num_seeds: random networks per width.
      dtype: input/parameter dtype (float64 needs ``jax.enable_x64``).

    Returns:
      :class:`ntk.Convergence`. Cost: ``len(widths) * num_seeds`` empirical kernels plus one
      analytic kernel per width.

    References:
      Jacot et al. (2018); Lee et al. (2019), Sec. 2 and Fig. 1 (``O(1/sqrt(width))``).
    """
    _check_arch_fn(make_arch)
    ws = _widths(widths)
    _validate.check_key(key)
    num_seeds = _validate.check_positive_int(num_seeds, name="num_seeds")
    x = _checks.as_inputs(x, name="x", dtype=dtype)
    rng = np.random.default_rng(0)
    out = {k: [] for k in ("nd", "gd", "na", "ns", "ga", "gs")}
    for w in ws:
        arch = make_arch(w)
        if not isinstance(arch, Architecture):
            raise TypeError(
                f"{_validate.where('ntk')}: make_arch({w}) must return an ntk.Architecture; got {type(arch).__name__}."
            )
        ref = analytic_kernel(arch, x)
        nt, ng = [], []
        for s in range(num_seeds):
            params = arch.init_params(jax.random.fold_in(key, s), x.shape[1:], dtype=x.dtype)
            k, g = _empirical_pair(arch, params, x)
            nt.append(k)
            ng.append(g)
        nt, ng = np.stack(nt), np.stack(ng)
        out["nd"].append([relative_distance(k, ref.ntk) for k in nt])
        out["gd"].append([relative_distance(k, ref.nngp) for k in ng])
        out["na"].append(relative_distance(nt.mean(0), ref.ntk))
        out["ns"].append(_bootstrap(nt, ref.ntk, rng))
        out["ga"].append(relative_distance(ng.mean(0), ref.nngp))
        out["gs"].append(_bootstrap(ng, ref.nngp, rng))
    nd, gd = np.asarray(out["nd"]), np.asarray(out["gd"])
    wa = np.asarray(ws, float)
    slope = (
        float(np.polyfit(np.log(wa), np.log(nd.mean(1)), 1)[0]) if len(ws) > 1 else float("nan")
    )
    return Convergence(
        widths=np.asarray(ws),
        ntk_distances=nd,
        nngp_distances=gd,
        ntk_mean=nd.mean(1),
        ntk_std=nd.std(1),
        nngp_mean=gd.mean(1),
        nngp_std=gd.std(1),
        ntk_avg_distance=np.asarray(out["na"]),
        ntk_avg_spread=np.asarray(out["ns"]),
        nngp_avg_distance=np.asarray(out["ga"]),
        nngp_avg_spread=np.asarray(out["gs"]),
        slope=slope,
        label=label,
        provenance=provenance(dtype=x.dtype, seeds=num_seeds, settings=dict(widths=ws)),
    )


@result
class Drift(Result):
    """Relative change of the empirical NTK during training, ``||K_t - K_0||_F / ||K_0||_F``.

    Attributes:
      widths: ``(W,)``; steps: ``(T,)`` snapshot steps; drift: ``(W, T)``;
      final_drift: ``(W,)`` at the last step; train_loss: ``(W,)`` at the end.
      slope: log-log slope of the final drift against width. Lee et al. (2019) bound the
        change by ``O(1/sqrt(width))``; the kernel's time derivative is ``O(1/width)`` (Dyer
        & Gur-Ari 2019; Huang & Yau 2019), which is what a fixed training time shows (the
        notebook measures about -0.9 for a ReLU MLP on digits).
    """

    widths: np.ndarray
    steps: np.ndarray
    drift: np.ndarray
    final_drift: np.ndarray
    train_loss: np.ndarray
    slope: float = static_field(default=float("nan"))
    provenance: dict = static_field(default_factory=dict)


@_validate.public("ntk.kernel_drift")
def kernel_drift(
    make_arch: Callable[[int], Architecture],
    widths: Sequence[int],
    data: dict,
    *,
    key,
    x_probe=None,
    num_steps: int = 100,
    learning_rate: float = 1.0,
    num_snapshots: int = 5,
    loss: str = "mse",
) -> Drift:
    """Train networks of growing width (full-batch gradient descent on ``loss``) and measure
    how far the empirical NTK on ``x_probe`` moves from its initial value (Lee et al. 2019,
    Fig. 2).

    Args:
      make_arch: ``width -> Architecture``.
      widths: hidden widths.
      data: ``{"x", "y"}`` training set (``landscape.load_data(...).train``).
      key: initialisation key (the same for every width).
      x_probe: inputs on which the kernel is compared (default: the first 64 training inputs).
      num_steps, learning_rate: plain full-batch gradient descent.
      num_snapshots: kernels computed along the way (including step 0 and the end).
      loss: ``"mse"`` (``landscape.losses.mse``, integer labels one-hot encoded) or
        ``"cross_entropy"``.

    Returns:
      :class:`ntk.Drift`. Cost per width: one compiled training program (``num_steps``
      full-batch forward/backward passes, parameters kept at the snapshots) and
      ``num_snapshots`` structured empirical kernels on ``x_probe``.
    """
    _check_arch_fn(make_arch)
    ws = _widths(widths)
    _validate.check_key(key)
    n = _validate.check_data(data)
    num_steps = _validate.check_positive_int(num_steps, name="num_steps")
    num_snapshots = _validate.check_positive_int(num_snapshots, name="num_snapshots")
    _validate.check_choice(loss, ("mse", "cross_entropy"), name="loss")
    x = _checks.as_inputs(data["x"], name="data['x']")
    xp = x[: min(n, 64)] if x_probe is None else x_probe
    xp = _checks.as_inputs(xp, name="x_probe", dtype=x.dtype)
    y = np.asarray(data["y"])
    if not np.issubdtype(y.dtype, np.integer):
        y = y.astype(x.dtype)
    steps = sorted({int(round(s)) for s in np.linspace(0, num_steps, max(num_snapshots, 2))})
    segments = tuple(int(b - a) for a, b in zip(steps[:-1], steps[1:]))
    drifts, losses = [], []
    for w in ws:
        arch = make_arch(w)
        if not isinstance(arch, Architecture):
            raise TypeError(
                f"{_validate.where('ntk')}: make_arch({w}) must return an ntk.Architecture; got {type(arch).__name__}."
            )
        params = arch.init_params(key, x.shape[1:], dtype=x.dtype)
        snaps, final_loss = _gd_snapshots(
            arch, params, x, y, np.asarray(learning_rate, x.dtype), segments, loss
        )
        snaps = jax.tree.map(np.asarray, snaps)
        k0 = None
        row = []
        for i in range(len(steps)):
            k = _empirical_pair(arch, jax.tree.map(lambda a, i=i: a[i], snaps), xp)[0]
            k0 = k if k0 is None else k0
            row.append(relative_distance(k, k0) if i else 0.0)
        drifts.append(row)
        losses.append(float(final_loss))
    d = np.asarray(drifts)
    fin = d[:, -1]
    slope = (
        float(np.polyfit(np.log(ws), np.log(np.maximum(fin, 1e-300)), 1)[0])
        if len(ws) > 1
        else float("nan")
    )
    return Drift(
        widths=np.asarray(ws),
        steps=np.asarray(steps),
        drift=d,
        final_drift=fin,
        train_loss=np.asarray(losses),
        slope=slope,
        provenance=provenance(
            dtype=xp.dtype,
            settings=dict(widths=ws, num_steps=num_steps, learning_rate=learning_rate),
        ),
    )


@result
class FiniteVsInfinite(Result):
    """Test outputs and accuracy of trained finite networks, their linearisations and the
    infinite-width predictions on the same task.

    Attributes:
      widths: ``(W,)``.
      finite_outputs, linear_outputs: ``(W, n_test, O)`` after ``num_steps`` of gradient
        descent; ``finite_accuracy``, ``linear_accuracy``: ``(W,)``.
      infinite_outputs: ``(W, n_test, O)`` closed-form NTK gradient flow from each network's
        own initial outputs, at the same time; ``infinite_mean``: ``(n_test, O)`` ensemble
        mean (initial outputs averaged out) at that time and ``infinite_accuracy`` of it;
        ``infinite_converged_accuracy`` / ``nngp_accuracy``: NTK and NNGP kernel regression
        (t = infinity).
      rmse_finite_infinite: ``(W,)`` RMSE between finite and infinite-width test outputs.
    """

    widths: np.ndarray
    finite_outputs: np.ndarray
    linear_outputs: np.ndarray
    infinite_outputs: np.ndarray
    infinite_mean: np.ndarray
    finite_accuracy: np.ndarray
    linear_accuracy: np.ndarray
    rmse_finite_infinite: np.ndarray
    rmse_finite_linear: np.ndarray
    infinite_accuracy: float = static_field(default=float("nan"))
    infinite_converged_accuracy: float = static_field(default=float("nan"))
    nngp_accuracy: float = static_field(default=float("nan"))
    provenance: dict = static_field(default_factory=dict)


def _accuracy(out, y):
    y = np.asarray(y)
    if y.ndim == 1:
        return float(np.mean(np.argmax(out, -1) == y))
    if y.shape[-1] == 1:
        return float("nan")
    return float(np.mean(np.argmax(out, -1) == np.argmax(y, -1)))


@_validate.public("ntk.finite_vs_infinite")
def finite_vs_infinite(
    make_arch: Callable[[int], Architecture],
    widths: Sequence[int],
    train: dict,
    test: dict,
    *,
    key,
    num_steps: int = 200,
    learning_rate: float | None = None,
    diag_reg: float = 0.0,
) -> FiniteVsInfinite:
    """Train finite networks (full-batch gradient descent on the MSE with one-hot targets)
    and their linearisations, and compare their test outputs with the infinite-width
    predictions at the same training time (Lee et al. 2019, Sec. 2.3-2.4).

    ``learning_rate`` defaults to half the maximum stable one of the analytic NTK
    (:func:`ntk.max_learning_rate`). The network and its linearisation (first-order Taylor
    model at the initial parameters, :func:`ntk.linearize`) are trained by plain gradient
    descent on ``landscape.losses.mse`` (``||f - Y||^2 / (2 |Y|)``, the loss of the closed
    forms) in one compiled program per width.

    Args:
      make_arch: ``width -> Architecture``.
      widths: hidden widths.
      train, test: ``{"x", "y"}`` data (integer labels are one-hot encoded).
      key: initialisation key (the same for every width).
      num_steps: gradient-descent steps (the time ``t`` of the closed forms).
      learning_rate: step size; default half :func:`ntk.max_learning_rate`.
      diag_reg: ridge of the closed forms.

    Returns:
      :class:`ntk.FiniteVsInfinite`. Cost per width: two analytic kernels and ``num_steps``
      full-batch forward/backward passes of the network and of its linearisation.
    """
    _check_arch_fn(make_arch)
    ws = _widths(widths)
    _validate.check_key(key)
    n = _validate.check_data(train, name="train")
    _validate.check_data(test, name="test")
    num_steps = _validate.check_positive_int(num_steps, name="num_steps")
    xtr, xte = np.asarray(train["x"]), np.asarray(test["x"])
    ytr = np.asarray(train["y"])
    y1 = (
        np.eye(int(ytr.max()) + 1)[ytr]
        if ytr.ndim == 1 and np.issubdtype(ytr.dtype, np.integer)
        else ytr.reshape(n, -1)
    )
    arch0 = make_arch(ws[0])
    k_dd = analytic_kernel(arch0, xtr)
    k_td = analytic_kernel(arch0, xte, xtr)
    lr = (
        0.5 * max_learning_rate(k_dd.ntk, y_train_size=y1.size)
        if learning_rate is None
        else float(learning_rate)
    )
    ens = gradient_descent_mse_ensemble(k_dd, y1, learning_rate=lr, diag_reg=diag_reg)
    mean_t = ens(num_steps, k_td).mean
    inf_acc = _accuracy(mean_t, test["y"])
    conv_acc = _accuracy(kernel_regression(k_dd.ntk, k_td.ntk, y1, diag_reg=diag_reg), test["y"])
    nngp_acc = _accuracy(kernel_regression(k_dd.nngp, k_td.nngp, y1, diag_reg=diag_reg), test["y"])
    fo, lo, io, fa, la, r1, r2 = [], [], [], [], [], [], []
    for w in ws:
        arch = make_arch(w)
        kd = analytic_kernel(arch, xtr) if w != ws[0] else k_dd
        kt = analytic_kernel(arch, xte, xtr) if w != ws[0] else k_td
        params = arch.init_params(key, xtr.shape[1:], dtype=xtr.dtype)
        outs = _train_pair(
            arch, params, xtr, y1.astype(xtr.dtype), xte, np.asarray(lr, xtr.dtype), num_steps
        )
        f0_tr, f0_te, f_te, l_te = (np.asarray(o, np.float64) for o in outs)
        _, inf_te = gradient_descent_mse(kd.ntk, y1, learning_rate=lr, diag_reg=diag_reg)(
            num_steps, f0_tr, f0_te, kt.ntk
        )
        fo.append(f_te)
        lo.append(l_te)
        io.append(inf_te)
        fa.append(_accuracy(f_te, test["y"]))
        la.append(_accuracy(l_te, test["y"]))
        r1.append(float(np.sqrt(np.mean((f_te - inf_te) ** 2))))
        r2.append(float(np.sqrt(np.mean((f_te - l_te) ** 2))))
    return FiniteVsInfinite(
        widths=np.asarray(ws),
        finite_outputs=np.stack(fo),
        linear_outputs=np.stack(lo),
        infinite_outputs=np.stack(io),
        infinite_mean=mean_t,
        finite_accuracy=np.asarray(fa),
        linear_accuracy=np.asarray(la),
        rmse_finite_infinite=np.asarray(r1),
        rmse_finite_linear=np.asarray(r2),
        infinite_accuracy=inf_acc,
        infinite_converged_accuracy=conv_acc,
        nngp_accuracy=nngp_acc,
        provenance=provenance(
            dtype=xtr.dtype, settings=dict(widths=ws, num_steps=num_steps, learning_rate=lr)
        ),
    )


@functools.partial(jax.jit, static_argnums=(0, 5, 6))
def _gd_snapshots(arch, params, x, y, lr, segments, loss):
    """Full-batch gradient descent; the parameters at step 0 and after each segment
    (stacked) and the final training loss."""
    loss_fn = mse if loss == "mse" else cross_entropy

    def step(_, p):
        g = jax.grad(lambda q: loss_fn(arch.apply(q, x), y))(p)
        return jax.tree.map(lambda a, b: a - lr * b, p, g)

    snaps = [params]
    for n in segments:
        snaps.append(jax.lax.fori_loop(0, n, step, snaps[-1]))
    stacked = jax.tree.map(lambda *a: jax.numpy.stack(a), *snaps)
    return stacked, loss_fn(arch.apply(snaps[-1], x), y)


@functools.partial(jax.jit, static_argnums=(0, 6))
def _train_pair(arch, params, x, y, x_test, lr, num_steps):
    """Full-batch gradient descent on the MSE (``landscape.losses.mse``: ``||f - Y||^2 /
    (2 |Y|)``) of the network and of its linearisation at the initial parameters, in one
    compiled program. Returns the initial train and test outputs and the final test outputs
    of both."""

    def lin_apply(p, xx):
        dp = jax.tree.map(jax.numpy.subtract, p, params)
        y0, dy = jax.jvp(lambda q: arch.apply(q, xx), (params,), (dp,))
        return y0 + dy

    def step(_, ps):
        pf, pl = ps
        gf = jax.grad(lambda p: mse(arch.apply(p, x), y))(pf)
        gl = jax.grad(lambda p: mse(lin_apply(p, x), y))(pl)
        upd = lambda p, g: p - lr * g  # noqa: E731
        return jax.tree.map(upd, pf, gf), jax.tree.map(upd, pl, gl)

    pf, pl = jax.lax.fori_loop(0, num_steps, step, (params, params))
    return (
        arch.apply(params, x),
        arch.apply(params, x_test),
        arch.apply(pf, x_test),
        lin_apply(pl, x_test),
    )


@result
class Spectra(Result):
    """Eigenvalues (descending) of kernel matrices, by name."""

    eigenvalues: dict
    provenance: dict = static_field(default_factory=dict)


@_validate.public("ntk.spectra")
def spectra(**kernels: Any) -> Spectra:
    """Eigenvalues (float64, descending) of symmetric kernel matrices given by keyword, e.g.
    ``ntk.spectra(empirical=k_emp, analytic=k.ntk)``."""
    if not kernels:
        raise ValueError(f"{_validate.where('ntk')}: give at least one kernel matrix by keyword.")
    out = {}
    for name, k in kernels.items():
        a = np.asarray(k, np.float64)
        if a.ndim != 2 or a.shape[0] != a.shape[1]:
            raise ValueError(f"{_validate.where('ntk')}: {name} must be a square kernel matrix; got shape {a.shape}.")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{_validate.where('ntk')}: {name} must be finite.")
        out[name] = np.linalg.eigvalsh((a + a.T) / 2)[::-1].copy()
    return Spectra(eigenvalues=out)
