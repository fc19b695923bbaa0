"""Infinite-width predictions (Lee et al. 2019): kernel regression, closed-form gradient
descent on the MSE loss, ensemble mean and covariance, the largest stable learning rate, and
the linearised (first-order Taylor) network.

Loss convention (neural-tangents', and ``landscape``'s ``"mse"``):
``L = ||f(X) - Y||^2 / (2 |Y|)`` with ``|Y| = N O``; gradient flow at learning rate ``eta``
for time ``t`` (``t = eta * steps`` for small steps of gradient descent is expressed by
passing ``t = steps`` and ``learning_rate = eta``). All solves run in float64 NumPy on the
host (``eigh`` of the regularised train kernel, cached; Cholesky at ``t = inf``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from landscape import Model, Result, as_model, result, static_field
from landscape import tree as _tree
from landscape import validate as _validate
from ntk._analytic import Kernel


def _mat(k, *, name, square=False):
    """A float64 host matrix from an array or an :class:`ntk.EmpiricalKernel` (which converts
    to its matrix); an analytic :class:`ntk.Kernel` holds two, so it is refused."""
    if isinstance(k, Kernel):
        raise TypeError(f"{_validate.where('ntk')}: {name} must be a matrix; pass kernel.ntk or kernel.nngp.")
    a = np.asarray(k, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{_validate.where('ntk')}: {name} must be a 2-D (n, m) kernel matrix; got shape {a.shape}.")
    if square and a.shape[0] != a.shape[1]:
        raise ValueError(f"{_validate.where('ntk')}: {name} must be square (train x train); got shape {a.shape}.")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{_validate.where('ntk')}: {name} must be finite.")
    return a


def _targets(y, n):
    y = np.asarray(y)
    if y.ndim == 1 and jnp.issubdtype(y.dtype, jnp.integer):
        y = np.eye(int(y.max()) + 1)[y]
    y = np.asarray(y, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != n:
        raise ValueError(
            f"{_validate.where('ntk')}: y_train must have shape ({n},) or ({n}, num_outputs) matching the kernel's "
            f"{n} training examples; got shape {np.shape(y)}."
        )
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{_validate.where('ntk')}: y_train must be finite.")
    return y


def _reg(k, diag_reg, absolute):
    if diag_reg < 0:
        raise ValueError(f"ntk: diag_reg must be >= 0; got {diag_reg}.")
    if diag_reg == 0:
        return k
    scale = 1.0 if absolute else np.trace(k) / k.shape[0]
    return k + diag_reg * scale * np.eye(k.shape[0])


@_validate.public("ntk.kernel_regression")
def kernel_regression(
    k_train_train,
    k_test_train,
    y_train,
    *,
    diag_reg: float = 0.0,
    diag_reg_absolute_scale: bool = False,
) -> np.ndarray:
    """``K(test, train) (K(train, train) + lambda I)^{-1} Y`` in float64 (Cholesky).

    ``diag_reg`` is relative to the mean diagonal unless ``diag_reg_absolute_scale``. The NTK
    gives the mean of infinitely wide networks trained to convergence (t = inf), the NNGP the
    Bayesian posterior mean.
    """
    kdd = _mat(k_train_train, name="k_train_train", square=True)
    ktd = _mat(k_test_train, name="k_test_train")
    if ktd.shape[1] != kdd.shape[0]:
        raise ValueError(
            f"{_validate.where('ntk')}: k_test_train must have {kdd.shape[0]} columns (training examples); "
            f"got shape {ktd.shape}."
        )
    y = _targets(y_train, kdd.shape[0])
    kdd = _reg(kdd, float(diag_reg), diag_reg_absolute_scale)
    try:
        c = scipy.linalg.cho_factor(kdd, lower=True)
        return ktd @ scipy.linalg.cho_solve(c, y)
    except np.linalg.LinAlgError:
        return ktd @ np.linalg.lstsq(kdd, y, rcond=None)[0]


@_validate.public("ntk.max_learning_rate")
def max_learning_rate(
    ntk_train_train, *, y_train_size: int | None = None, momentum: float = 0.0
) -> float:
    """Largest stable learning rate of full-batch gradient descent on the MSE loss:
    ``2 (1 + momentum) |Y| / lambda_max(Theta)`` (``|Y|`` defaults to the number of training
    examples: a per-output kernel and one output; pass ``y_train.size``)."""
    k = _mat(ntk_train_train, name="ntk_train_train", square=True)
    size = (
        k.shape[0]
        if y_train_size is None
        else _validate.check_positive_int(y_train_size, name="y_train_size")
    )
    lmax = float(scipy.linalg.eigvalsh(k, subset_by_index=[k.shape[0] - 1, k.shape[0] - 1])[0])
    if lmax <= 0:
        raise ValueError(f"{_validate.where('ntk')}: the kernel's largest eigenvalue is {lmax}; no finite bound.")
    return 2.0 * (1.0 + float(momentum)) * size / lmax


class _Eig:
    def __init__(self, k):
        evals, evecs = np.linalg.eigh(k)
        self.evals = np.maximum(evals, 0.0)
        self.evecs = evecs

    def fn(self, g, v):
        """``V g(lambda) V^T v``."""
        return self.evecs @ (g(self.evals)[:, None] * (self.evecs.T @ v))


def _one_minus_exp_over_l(evals, rate):
    """``(1 - exp(-rate l)) / l`` (``= rate`` at ``l = 0``); ``rate = inf``: ``1 / l``."""
    if np.isinf(rate):
        return np.where(evals > 0, 1.0 / np.where(evals > 0, evals, 1.0), 0.0)
    return np.where(evals > 0, -np.expm1(-rate * evals) / np.where(evals > 0, evals, 1.0), rate)


def _rate(t, learning_rate, size):
    if t is None or (isinstance(t, float) and np.isinf(t)):
        return np.inf
    t = float(t)
    if t < 0:
        raise ValueError(f"ntk: t must be >= 0 or None (infinity); got {t}.")
    return learning_rate * t / size


@_validate.public("ntk.gradient_descent_mse")
def gradient_descent_mse(
    k_train_train,
    y_train,
    *,
    learning_rate: float = 1.0,
    diag_reg: float = 0.0,
    diag_reg_absolute_scale: bool = False,
):
    """Closed-form outputs of a (linearised) network trained by gradient flow on the MSE.

    ``f_t(X) = Y + e^{-eta t K/|Y|} (f_0(X) - Y)`` and
    ``f_t(x*) = f_0(x*) - K(x*, X) K^{-1} (I - e^{-eta t K/|Y|}) (f_0(X) - Y)``.

    Returns:
      ``predict_fn(t=None, fx_train_0=0.0, fx_test_0=None, k_test_train=None) ->
      (fx_train_t, fx_test_t)`` (``fx_test_t`` is ``None`` without ``k_test_train``);
      ``t=None`` is ``t = inf``. The eigendecomposition is computed once.
    """
    kdd = _reg(
        _mat(k_train_train, name="k_train_train", square=True),
        float(diag_reg),
        diag_reg_absolute_scale,
    )
    y = _targets(y_train, kdd.shape[0])
    eig = _Eig(kdd)
    size = y.size

    def predict_fn(t=None, fx_train_0=0.0, fx_test_0=None, k_test_train=None):
        rate = _rate(t, learning_rate, size)
        f0 = np.broadcast_to(np.asarray(fx_train_0, np.float64), y.shape)
        r0 = f0 - y
        decay = eig.fn(
            lambda l: np.exp(-rate * l) if np.isfinite(rate) else (l == 0).astype(float), r0
        )
        f_train = y + decay
        f_test = None
        if k_test_train is not None:
            ktd = _mat(k_test_train, name="k_test_train")
            g0 = 0.0 if fx_test_0 is None else np.asarray(fx_test_0, np.float64)
            # K^{-1} (I - e^{-rate K}) = V (1 - e^{-rate l}) / l V^T
            f_test = g0 - ktd @ eig.fn(lambda l: _one_minus_exp_over_l(l, rate), r0)
        return f_train, f_test

    return predict_fn


@result
class Prediction(Result):
    """Mean (and covariance) of the outputs of an ensemble of infinitely wide networks.

    Attributes:
      mean: ``(n_test, O)``.
      cov: ``(n_test, n_test)`` per-output covariance over initialisations (``None`` unless
        ``compute_cov``).
      train_mean: ``(n_train, O)`` on the training inputs.
      get, t: which kernel (``"nngp"``: Bayesian / readout-only training, ``"ntk"``: all
        layers trained) and the training time (``None`` = infinity).
    """

    mean: np.ndarray
    cov: Any
    train_mean: np.ndarray
    get: str = static_field(default="ntk")
    t: Any = static_field(default=None)


@_validate.public("ntk.gradient_descent_mse_ensemble")
def gradient_descent_mse_ensemble(
    kernel_train_train,
    y_train,
    *,
    learning_rate: float = 1.0,
    diag_reg: float = 0.0,
    diag_reg_absolute_scale: bool = False,
):
    """Mean and covariance over random initialisations of infinitely wide networks trained by
    gradient flow on the MSE (Lee et al. 2019, Eqs. 14-16).

    With ``A_t = Theta(x*, X) Theta^{-1} (I - e^{-eta t Theta/|Y|})``: mean ``A_t Y``,
    covariance ``K(x*, x*) + A_t K A_t^T - (A_t K(X, x*) + K(x*, X) A_t^T)`` (``get="ntk"``);
    for ``get="nngp"`` (only the readout trained) ``Theta`` is replaced by ``K`` and the
    covariance is ``K(x*, x*) - K(x*, X) K^{-1} (I - e^{-2 eta t K/|Y|}) K(X, x*)``.

    Args:
      kernel_train_train: :class:`ntk.Kernel` on the training inputs.
      y_train: ``(N,)`` integer labels (one-hot encoded) or ``(N, O)`` targets.

    Returns:
      ``predict_fn(t=None, kernel_test_train=None, kernel_test_test=None, get="ntk",
      compute_cov=False) -> ntk.Prediction``.
    """
    if not isinstance(kernel_train_train, Kernel):
        raise TypeError(
            f"{_validate.where('ntk')}: kernel_train_train must be an ntk.Kernel (ntk.kernel(arch, x_train)); "
            f"got {type(kernel_train_train).__name__}."
        )
    kdd = {
        g: _reg(
            _mat(kernel_train_train.get(g), name=f"kernel_train_train.{g}", square=True),
            float(diag_reg),
            diag_reg_absolute_scale,
        )
        for g in ("nngp", "ntk")
    }
    y = _targets(y_train, kdd["ntk"].shape[0])
    size = y.size
    eigs: dict = {}

    def eig(g):
        if g not in eigs:
            eigs[g] = _Eig(kdd[g])
        return eigs[g]

    def predict_fn(
        t=None,
        kernel_test_train=None,
        kernel_test_test=None,
        get: str = "ntk",
        compute_cov: bool = False,
    ):
        _validate.check_choice(get, ("nngp", "ntk"), name="get")
        rate = _rate(t, learning_rate, size)
        e = eig(get)
        train_mean = y - e.fn(
            lambda l: np.exp(-rate * l) if np.isfinite(rate) else (l == 0).astype(float), y
        )
        mean = cov = None
        if kernel_test_train is not None:
            ktd = _mat(kernel_test_train.get(get), name="kernel_test_train")
            mean = ktd @ e.fn(lambda l: _one_minus_exp_over_l(l, rate), y)
            if compute_cov:
                if kernel_test_test is None:
                    raise ValueError(f"{_validate.where('ntk')}: compute_cov=True needs kernel_test_test.")
                ktt = _mat(kernel_test_test.nngp, name="kernel_test_test.nngp", square=True)
                kn_td = _mat(kernel_test_train.nngp, name="kernel_test_train.nngp")
                if get == "nngp":
                    cov = ktt - kn_td @ e.fn(lambda l: _one_minus_exp_over_l(l, 2 * rate), kn_td.T)
                else:
                    a = (e.fn(lambda l: _one_minus_exp_over_l(l, rate), ktd.T)).T  # A_t
                    knn = _mat(kernel_train_train.nngp, name="kernel_train_train.nngp")
                    cov = ktt + a @ knn @ a.T - (a @ kn_td.T + kn_td @ a.T)
        return Prediction(
            mean=mean,
            cov=cov,
            train_mean=train_mean,
            get=get,
            t=None if not np.isfinite(rate) else float(t),
        )

    return predict_fn


# --------------------------------------------------------------------------------------------
# Linearised networks
# --------------------------------------------------------------------------------------------
@_validate.public("ntk.linearize")
def linearize(f, params0):
    """First-order Taylor model ``f_lin(params, x) = f(params0, x) + J(params0) (params -
    params0)`` (one forward-mode JVP per call). ``params0`` is closed over: for compiled
    training prefer :func:`linearize_model`, which passes it as an argument."""
    _validate.check_callable(f, name="f")
    _validate.check_params(params0, name="params0")

    def f_lin(params, x):
        dp = _tree.sub(params, params0)
        y0, dy = jax.jvp(lambda p: f(p, x), (params0,), (dp,))
        return y0 + dy

    return f_lin


@dataclasses.dataclass(frozen=True, eq=True)
class _LinearizedApply:
    base: Any

    @property
    def __name__(self):  # noqa: D401 - used by Model.__repr__
        return f"linearized({getattr(self.base, '__name__', 'model')})"

    def __call__(self, params, state, x, *, train: bool = False):
        p0, st = state["params0"], state["state"]
        dp = _tree.sub(params, p0)
        (y0, _), (dy, _) = jax.jvp(lambda p: self.base(p, st, x, train=False), (p0,), (dp,))
        return y0 + dy, state


@_validate.public("ntk.linearize_model")
def linearize_model(model) -> Model:
    """The linearised network of a model triple, as a model triple: same parameters (starting
    at the current ones), ``state = {"params0": ..., "state": ...}`` holding the expansion
    point; train it with ``landscape.train`` like the network itself (Lee et al. 2019)."""
    model = as_model(model)
    _validate.check_params(model.params, name="model.params")
    p0 = jax.tree.map(jnp.array, model.params)
    return Model(
        _LinearizedApply(model.apply_fn), model.params, {"params0": p0, "state": model.state}, None
    )
