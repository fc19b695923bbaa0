"""Sharpness tracking during training (edge of stability)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from landscape import engine
from landscape import validate as _validate
from landscape.hessian import _eigen
from landscape.hessian import _operators as ops
from landscape.train import Callback, TrainInfo, callback

PyTree = Any

__all__ = ["adam_preconditioner", "sharpness_callback", "stability_threshold"]


@_validate.public("landscape.hessian.stability_threshold")
def stability_threshold(learning_rate: float, *, optimizer: str = "gd", beta1: float = 0.9, momentum: float = 0.0) -> float:
    """The sharpness above which the optimiser's quadratic model diverges.

    ``"gd"``: ``2 / lr``, or ``(2 + 2 momentum) / lr`` with heavy-ball momentum (Cohen et al.
    2021). ``"adam"``: ``(2 + 2 beta1) / ((1 - beta1) lr)`` for the preconditioned sharpness
    (38/lr at ``beta1 = 0.9``; Cohen et al. 2022).
    """
    lr = _validate.check_finite_scalar(learning_rate, name="learning_rate")
    if lr <= 0:
        raise ValueError(f"{_validate.where()}: learning_rate must be > 0; got {lr}.")
    _validate.check_choice(optimizer, ("gd", "adam"), name="optimizer")
    if optimizer == "adam":
        return (2.0 + 2.0 * beta1) / ((1.0 - beta1) * lr)
    return (2.0 + 2.0 * momentum) / lr


def _find_adam_state(opt_state):
    if hasattr(opt_state, "nu") and hasattr(opt_state, "count"):
        return opt_state
    if isinstance(opt_state, (tuple, list)):
        for s in opt_state:
            found = _find_adam_state(s)
            if found is not None:
                return found
    if isinstance(opt_state, dict):
        for s in opt_state.values():
            found = _find_adam_state(s)
            if found is not None:
                return found
    inner = getattr(opt_state, "inner_state", None)
    if inner is not None:
        return _find_adam_state(inner)
    return None


@_validate.public("landscape.hessian.adam_preconditioner")
def adam_preconditioner(opt_state, *, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> PyTree | None:
    """Adam's diagonal preconditioner from an Optax state: ``P = (1 - b1^t) (sqrt(nu_hat) + eps)``.

    Adam's step is ``theta -= lr P^{-1} m`` with ``m`` the (uncorrected) first moment, so the
    preconditioned sharpness ``lambda_max(P^{-1} H)`` is compared with ``(2 + 2 b1) / ((1 - b1)
    lr)`` (Cohen et al. 2022). Finds the ``ScaleByAdamState`` (``count``, ``nu``) anywhere in the
    state; returns ``None`` before the first step (``count == 0``).

    Raises:
      TypeError: no Adam state in ``opt_state``.
    """
    st = _find_adam_state(opt_state)
    if st is None:
        raise TypeError(
            "landscape.hessian.adam_preconditioner: no Adam state (with 'count' and 'nu') in opt_state; "
            "pass your own preconditioner_fn(opt_state) -> params-shaped positive diagonal."
        )
    t = int(np.asarray(st.count))
    if t == 0:
        return None
    bc1 = 1.0 - b1**t
    bc2 = 1.0 - b2**t
    return jax.tree.map(lambda v: bc1 * (jnp.sqrt(v / bc2) + eps), st.nu)


@_validate.public("landscape.hessian.sharpness_callback")
@ops.curvature_keywords(exclude=("preconditioner",))
def sharpness_callback(
    *,
    every: int,
    key,
    data: PyTree | None = None,
    k: int = 1,
    tol: float = 1e-4,
    learning_rate: float | Callable | None = None,
    momentum: float = 0.0,
    preconditioner_fn: Callable | None = None,
    beta1: float = 0.9,
    name: str = "sharpness",
    at_start: bool = True,
    **curvature,
) -> Callback:
    """A :func:`landscape.train` callback recording the top Hessian eigenvalue every ``every``
    steps, warm-started from the previous eigenvector (edge-of-stability plots).

    Logs ``sharpness`` (top eigenvalue), ``sharpness_threshold`` (the stability threshold at the
    current learning rate), ``sharpness_hvps`` (products used) and, for ``k > 1``,
    ``sharpness_2`` ... under ``history`` (steps in ``history["sharpness_step"]``; the prefix
    is ``name``). Plot with :func:`landscape.plot.plot_sharpness`.

    Gradient descent (Cohen et al. 2021): the sharpness rises until it reaches ``2 / lr``
    (progressive sharpening), then hovers there (the edge of stability). With momentum
    ``beta``: ``(2 + 2 beta) / lr``. Adam (Cohen et al. 2022): pass
    ``preconditioner_fn=landscape.hessian.adam_preconditioner`` (or your own
    ``opt_state -> P``); the callback then tracks the top eigenvalue of the symmetric
    ``P^{-1/2} H P^{-1/2}`` against ``(2 + 2 beta1) / ((1 - beta1) lr)`` (38/lr for 0.9).

    Args:
      every: steps between measurements.
      data: data for the Hessian (default: the training data ``train`` sees). Full-batch GD
        uses the same data for the step and the Hessian.
      k: eigenvalues per measurement.
      tol: relative residual tolerance of the eigensolver (default 1e-4: sharpness plots need
        3 to 4 digits; warm starts then take a handful of products).
      key: PRNG key (required: randomness is explicit): the cold start of each measurement
        without a previous eigenvector (``jax.random.fold_in(key, i)`` for the ``i``-th).
      learning_rate: float or ``step -> lr`` (default: the learning rate ``train`` reports for a
        named optimiser; needed for the threshold with a custom Optax optimiser).
      momentum: heavy-ball momentum of the GD threshold.
      preconditioner_fn: ``opt_state -> P`` (params-shaped, positive) for adaptive optimisers.
      beta1: Adam's first-moment decay for the threshold.
      name: history prefix.
      **curvature: the operator settings of :func:`make_hvp` but ``preconditioner`` (that is
        ``preconditioner_fn``'s): ``batch_size`` (of the Hessian's data), ``method``,
        ``curvature``, ``params_filter``, ...

    Returns:
      A :class:`landscape.train.Callback`.

    Example:
      >>> cb = landscape.hessian.sharpness_callback(every=20, key=jax.random.key(0), learning_rate=0.1)
      >>> run = landscape.train(model, data, optimizer=optax.sgd(0.1), num_steps=1000,
      ...                       batch_size=len(data["y"]), callbacks=[cb])
      >>> landscape.plot.plot_sharpness(run)

    References:
      Cohen, Kaur, Li, Kolter, Talwalkar 2021 ("Gradient descent on neural networks typically
      occurs at the edge of stability"); Cohen et al. 2022 ("Adaptive gradient methods at the
      edge of stability").
    """
    every = _validate.check_positive_int(every, name="every")
    k = _validate.check_positive_int(k, name="k")
    if preconditioner_fn is not None:
        _validate.check_callable(preconditioner_fn, name="preconditioner_fn")
    key = _validate.check_key(key)
    # the settings make_hvp checks at every measurement, checked now as well: a bad value is
    # reported here, not steps into training under landscape.train's name
    if "curvature" in curvature:
        _validate.check_choice(curvature["curvature"], ops.CURVATURES, name="curvature")
    if "method" in curvature:
        _validate.check_choice(curvature["method"], ops.METHODS, name="method")
    if "batch_size" in curvature and curvature["batch_size"] is not None:
        _validate.check_positive_int(curvature["batch_size"], name="batch_size")
    batch_size = curvature.pop("batch_size", None)
    state: dict[str, Any] = {"v": None, "batched": None, "data": None, "calls": 0}

    def lr_at(info: TrainInfo):
        if learning_rate is None:
            return info.learning_rate
        return float(learning_rate(info.step)) if callable(learning_rate) else float(learning_rate)

    def measure(info: TrainInfo):
        with _validate.boundary("landscape.hessian.sharpness_callback"):
            return _measure(info)

    def _measure(info: TrainInfo):
        d = data if data is not None else info.train_data
        if state["data"] is not d:  # lay the data out once (a reference, not an id: ids are reused)
            state["batched"] = engine.batch(d, batch_size)
            state["data"] = d
        precond = None
        if preconditioner_fn is not None:
            precond = preconditioner_fn(info.opt_state)
            if precond is None:
                return None  # no preconditioner yet (Adam before its first step)
        op = ops.make_hvp(info.loss_fn, info.params, state["batched"], preconditioner=precond, **curvature)
        res = _eigen.solve(op, k=k, which="largest", tol=tol, key=jax.random.fold_in(key, state["calls"]),
                           v0=state["v"], check_multiplicity=False)
        state["calls"] += 1
        state["v"] = res.vectors
        lr = lr_at(info)
        if lr is None or lr <= 0:
            thr = float("nan")
        elif preconditioner_fn is not None:
            thr = stability_threshold(lr, optimizer="adam", beta1=beta1)
        else:
            thr = stability_threshold(lr, optimizer="gd", momentum=momentum)
        out = {name: float(res.values[0]), f"{name}_threshold": thr, f"{name}_hvps": res.num_hvps}
        for i in range(1, len(res.values)):
            out[f"{name}_{i + 1}"] = float(res.values[i])
        return out

    measure.__name__ = name
    return callback(measure, every=every, at_start=at_start, name=name)
