"""The learning-rate range: short runs over a grid of learning rates from one initialisation,
with the stability limit of the initial curvature on the same axis.

Every rate starts from the same parameters and takes the same steps (the same mini-batches,
when there are mini-batches); all rates of a chunk run in ONE compiled program (``jax.vmap``
over the rates inside ``jit``, the steps a ``lax.scan``), chunks of rates go through the
foundation's chunk driver (:func:`landscape.store.run_chunks`: progress, saving, resuming with
``store=``). One compilation per chunk size: the last chunk is padded.

The stability limit is the largest learning rate for which the optimiser's iteration on the
*quadratic model of the loss at initialisation* does not diverge:

* gradient descent ``"sgd"``: ``2 / lambda_max(H)``;
* heavy-ball momentum ``beta`` (``"momentum"``, or ``"sgd"`` with ``momentum=``):
  ``(2 + 2 beta) / lambda_max(H)``;
* Nesterov momentum (optax's form ``u = g + beta (g + beta t)``): ``(2 + 2 beta) / ((1 + 2
  beta) lambda_max(H))``;
* Adam with ``b1`` (Cohen et al. 2022): the iteration with a frozen preconditioner ``P =
  diag(sqrt(v_hat) + eps)`` is stable while ``lr lambda_max(P^{-1} H) < (2 + 2 b1) / (1 - b1)``,
  so ``lr* = (2 + 2 b1) / ((1 - b1) lambda_max(P^{-1} H))``. ``v_hat`` is taken at
  initialisation as Adam's bias-corrected second moment after its first step on the full-data
  gradient, ``v_hat = g_0^2`` (with ``eps_root``: ``P = sqrt(g_0^2 + eps_root) + eps``); the
  first-moment bias correction, which enlarges the first few steps, is left out (it tends to 1).

``H`` is the Hessian of the full-data loss at the initial parameters, ``lambda_max`` its largest
eigenvalue from :func:`landscape.hessian.eigenvalues` (Lanczos on :func:`~landscape.hessian.make_hvp`;
for Adam the operator with ``preconditioner=P``, the symmetric ``P^{-1/2} H P^{-1/2}``).

What the line is **not**: a bound on the rates that train. It is the limit of the initial
quadratic model. Above it, training can still converge after a transient rise of the loss that
reduces the curvature (the catapult phase, Lewkowycz et al. 2020); below it, training can
reach the limit later, because the sharpness grows during training until it sits at ``2 / lr``
(progressive sharpening and the edge of stability, Cohen et al. 2021). With mini-batches the
limit is still that of the full-data quadratic model.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from landscape import _provenance, _serialize, engine
from landscape import store as _store
from landscape import tree as _tree
from landscape import validate as _validate
from landscape._model import as_model
from landscape._result import Result, result, static_field
from landscape.data import Dataset
from landscape.losses import Loss, make_loss_fn
from landscape.train import make_optimizer

PyTree = Any

__all__ = ["LearningRateRangeResult", "learning_rate_range", "stability_limit"]

LIMITS = ("sgd", "momentum", "nesterov", "adam")
"""Optimisers whose initial-curvature limit is known (others get the runs without a line)."""

DEFAULT_CHUNK = 32
DEFAULT_GRID = (-2.0, 1.0, 13)
"""``lrs=None``: 13 rates from ``limit / 100`` to ``10 limit``, log-spaced (4 per decade)."""


# --------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------
@result
class LearningRateRangeResult(Result):
    """What :func:`learning_rate_range` found.

    Attributes:
      lrs: the learning rates (float64, increasing).
      final_loss: the full-data loss after ``steps`` steps, per rate (evaluation mode, exact:
        every example, in batches); ``inf``/``nan`` where the run blew up.
      step_loss: ``(len(lrs), steps)``: the loss each step was taken on, before its update: the
        full-data loss for full-batch runs, the mini-batch's loss otherwise.
      diverged: per rate: the final loss is not finite or exceeds ``divergence_factor`` times
        the initial loss (a rate whose loss rose and came back down did not diverge).
      initial_loss: the full-data loss at the initial parameters.
      sharpness: ``lambda_max`` of the initial Hessian (for Adam of ``P^{-1} H``); ``nan``
        without a limit.
      limit: the initial-curvature stability limit on the learning rate (see
        :func:`stability_limit`), ``nan`` when none is known; ``limit_rule`` says which rule,
        ``limit_note`` why there is none or what to keep in mind.
      settings, details, provenance: optimiser and its settings, steps, batches, the
        eigensolver's residual and products, what produced it.

    ``str(result)`` (:meth:`summary`) reads it out; :meth:`to_dict` is strict JSON.
    """

    lrs: np.ndarray
    final_loss: np.ndarray
    step_loss: np.ndarray
    diverged: np.ndarray
    initial_loss: np.ndarray
    sharpness: np.ndarray
    limit: np.ndarray
    limit_rule: str = static_field(default="")
    limit_note: str = static_field(default="")
    settings: dict = static_field(default_factory=dict)
    details: dict = static_field(default_factory=dict)
    provenance: dict = static_field(default_factory=dict)

    @property
    def max_not_diverged_lr(self) -> float:
        """The largest rate that did not diverge (``nan`` if all did). Not the largest rate that
        trains: a run can also stall (a ReLU network whose units all died ends near ``log k``
        for ``k`` classes without diverging); compare ``final_loss``."""
        ok = ~np.asarray(self.diverged)
        return float(np.asarray(self.lrs)[ok].max()) if ok.any() else float("nan")

    @property
    def best_lr(self) -> float:
        """The rate with the smallest final loss among those that did not diverge."""
        ok = ~np.asarray(self.diverged)
        if not ok.any():
            return float("nan")
        fl = np.where(ok, np.asarray(self.final_loss), np.inf)
        return float(np.asarray(self.lrs)[int(np.argmin(fl))])

    def one_line(self) -> str:
        s = self.settings
        lrs = np.asarray(self.lrs)
        nd = int(np.asarray(self.diverged).sum())
        lim = float(self.limit)
        limit = (
            f"initial-curvature limit {lim:.4g} ({self.limit_rule})"
            if math.isfinite(lim)
            else "no initial-curvature limit"
        )
        return (
            f"learning-rate range ({s.get('optimizer')}, {s.get('steps')} {s.get('mode')} steps, "
            f"{lrs.size} rates {lrs.min():.3g}..{lrs.max():.3g}): {nd} diverged, largest not "
            f"diverged {self.max_not_diverged_lr:.4g}, lowest loss at {self.best_lr:.4g}; {limit}"
        )

    def summary(self) -> str:
        lines = [self.one_line(), f"  initial loss {float(self.initial_loss):.6g}"]
        for lr, fl, dv in zip(
            np.asarray(self.lrs), np.asarray(self.final_loss), np.asarray(self.diverged)
        ):
            lines.append(
                f"  lr {lr:<10.4g} loss after {self.settings.get('steps')} steps {fl:<12.6g}"
                f"{' diverged' if dv else ''}"
            )
        if math.isfinite(float(self.limit)):
            lines.append(
                f"  limit {float(self.limit):.6g} = {self.limit_rule}, lambda_max = {float(self.sharpness):.6g}: "
                "the limit of the quadratic model at initialisation, not a bound on the rates that "
                "train (catapults converge above it; the sharpness changes during training)"
            )
        if self.limit_note:
            lines.append(f"  note: {self.limit_note}")
        return "\n".join(lines)

    def __str__(self):
        return self.summary()

    def __repr__(self):
        return f"LearningRateRangeResult({self.one_line()})"

    def to_dict(self) -> dict:
        """Strict JSON (non-finite numbers become ``None``)."""

        def num(x):
            v = float(x)
            return v if math.isfinite(v) else None

        return {
            "one_line": self.one_line(),
            "lrs": [num(x) for x in np.asarray(self.lrs)],
            "final_loss": [num(x) for x in np.asarray(self.final_loss)],
            "diverged": [bool(x) for x in np.asarray(self.diverged)],
            "initial_loss": num(self.initial_loss),
            "sharpness": num(self.sharpness),
            "limit": num(self.limit),
            "limit_rule": self.limit_rule,
            "limit_note": self.limit_note,
            "max_not_diverged_lr": num(self.max_not_diverged_lr),
            "best_lr": num(self.best_lr),
            "settings": _serial(self.settings),
            "details": _serial(self.details),
        }


def _serial(d):
    from landscape.diagnostics._audit import _strict_json

    return _strict_json(_serialize.to_jsonable(d))


def _is_optax_transformation(obj) -> bool:
    import optax

    return isinstance(obj, optax.GradientTransformation)


# --------------------------------------------------------------------------------------------
# The optimiser, by name (landscape.train's machinery) or as a factory of the learning rate
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Opt:
    """A hashable recipe ``lr -> optax transformation`` (a static argument of the sweep)."""

    name: str | None
    kwargs: tuple
    factory: Callable | None = None

    def build(self, lr):
        if self.factory is not None:
            return self.factory(lr)
        return make_optimizer(self.name, lr, **dict(self.kwargs))

    def describe(self) -> str:
        if self.factory is not None:
            return getattr(self.factory, "__name__", "factory")
        return self.name


def _as_opt(optimizer, optimizer_kwargs) -> _Opt:
    if _is_optax_transformation(optimizer):
        raise TypeError(
            f"{_validate.where()}: optimizer is an optax transformation with its learning rate built "
            "in; the learning rate is what is swept here: pass a name ('sgd', 'momentum', 'adam', ...) "
            "with optimizer_kwargs, or a factory lr -> optax transformation (e.g. "
            "functools.partial(optax.sgd, momentum=0.9))."
        )
    if isinstance(optimizer, str):
        kw = {} if optimizer_kwargs is None else optimizer_kwargs
        if not isinstance(kw, dict) or not all(isinstance(k, str) for k in kw):
            raise TypeError(
                f"{_validate.where()}: optimizer_kwargs must be a dict of settings (e.g. "
                f"{{'momentum': 0.9}}); got {type(kw).__name__}."
            )
        if "learning_rate" in kw:
            raise ValueError(
                f"{_validate.where()}: optimizer_kwargs must not hold learning_rate: the rates are lrs."
            )
        for k, v in kw.items():
            try:
                hash(v)
            except TypeError:
                raise TypeError(
                    f"{_validate.where()}: optimizer_kwargs['{k}'] must be a number, bool or string; "
                    f"got {type(v).__name__}."
                ) from None
        try:  # an unknown name is a ValueError listing the names; settings optax rejects, this
            make_optimizer(optimizer, 1.0, **kw)
        except TypeError as e:
            raise TypeError(
                f"{_validate.where()}: optimizer_kwargs {kw} do not fit optimizer {optimizer!r}: {e}"
            ) from None
        return _Opt(optimizer, tuple(sorted(kw.items())))
    if callable(optimizer):
        if optimizer_kwargs:
            raise ValueError(
                f"{_validate.where()}: optimizer_kwargs go with a named optimizer; put the settings in "
                "your factory (functools.partial(optax.sgd, momentum=0.9))."
            )
        try:
            hash(optimizer)
        except TypeError:
            raise TypeError(
                f"{_validate.where()}: an optimizer factory must be hashable (a function or functools.partial)."
            ) from None
        tx = optimizer(1.0)
        if not _is_optax_transformation(tx):
            raise TypeError(
                f"{_validate.where()}: optimizer(lr) must return an optax.GradientTransformation; got "
                f"{type(tx).__name__}."
            )
        return _Opt(None, (), optimizer)
    raise TypeError(
        f"{_validate.where()}: optimizer must be a name ('sgd', 'momentum', 'nesterov', 'adam', "
        f"'adamw', 'rmsprop') or a factory lr -> optax transformation; got {type(optimizer).__name__}."
    )


@_validate.public("landscape.diagnostics.stability_limit")
def stability_limit(
    sharpness: float, optimizer: str = "sgd", **optimizer_kwargs
) -> tuple[float, str]:
    """The learning rate at which the optimiser's iteration on a quadratic with top curvature
    ``sharpness`` becomes unstable, and the rule's text.

    ``"sgd"``: ``2 / sharpness`` (``momentum=beta``: heavy ball; ``nesterov=True``: Nesterov);
    ``"momentum"`` (heavy ball, default ``beta = 0.9``): ``(2 + 2 beta) / sharpness``;
    ``"nesterov"``: ``(2 + 2 beta) / ((1 + 2 beta) sharpness)``; ``"adam"`` (``sharpness`` the
    preconditioned ``lambda_max(P^{-1} H)``, default ``b1 = 0.9``): ``(2 + 2 b1) / ((1 - b1)
    sharpness)``. Each is where an eigenvalue of the linear iteration on the top eigendirection
    reaches -1.

    Raises:
      ValueError: ``sharpness`` is not positive and finite (a quadratic without positive
        curvature has no limit), or no rule is known for ``optimizer``.
    """
    lam = _validate.check_finite_scalar(sharpness, name="sharpness")
    if lam <= 0:
        raise ValueError(
            f"{_validate.where()}: sharpness must be > 0 (without positive curvature the quadratic "
            f"model has no stability limit); got {lam}."
        )
    _validate.check_choice(optimizer, LIMITS, name="optimizer")
    from landscape.hessian._tracking import _unit as _beta
    from landscape.hessian._tracking import stability_rule

    kw = optimizer_kwargs
    if optimizer == "adam":
        if kw.get("nesterov"):
            raise ValueError(
                f"{_validate.where()}: no stability rule for Adam with nesterov=True (NAdam)."
            )
        kind, beta = "adam", _beta(kw.get("b1", 0.9), "b1")
    elif optimizer == "sgd":
        beta = _beta(kw.get("momentum") or 0.0, "momentum")
        kind = "nesterov" if bool(kw.get("nesterov", False)) and beta > 0 else "gd"
    else:  # "momentum" and "nesterov" take make_optimizer's nesterov= flag over the name
        beta = _beta(kw.get("momentum", 0.9), "momentum")
        nesterov = bool(kw.get("nesterov", optimizer == "nesterov"))
        kind = "nesterov" if nesterov and beta > 0 else "gd"
    c, rule = stability_rule(kind, beta)
    return c / lam, rule


# --------------------------------------------------------------------------------------------
# The compiled sweep
# --------------------------------------------------------------------------------------------
def _value(loss_fn, p, batch):
    return engine.loss_and_aux(loss_fn, p, batch)[0]


def _value_and_grad(loss_fn, p, batch):
    return jax.value_and_grad(functools.partial(_value, loss_fn))(p, batch)


def _train_value(loss_fn, p, s, batch):
    """The loss a mini-batch step is taken on: training mode for a :class:`Loss` (batch
    statistics, new state), the plain loss otherwise."""
    if isinstance(loss_fn, Loss):
        (loss, _), ns = loss_fn.train_loss(p, s, batch)
        return loss, ns
    return _value(loss_fn, p, batch), s


@functools.partial(jax.jit, static_argnames=("loss_static", "opt", "steps"))
def _sweep(loss_static, loss_dyn, opt: _Opt, lrs, params, state, batched, data, idx, steps: int):
    """Loss at each step and the final full-data loss, for every rate in ``lrs`` (vmapped)."""
    import optax

    loss_fn = engine.merge_fn(loss_static, loss_dyn)

    def one(lr):
        tx = opt.build(lr)

        def step(carry, ix):
            p, s, o = carry
            if idx is None:  # full batch: the exact full-data loss and gradient
                (loss, g), _ = engine.batched_mean(
                    lambda q, b: _value_and_grad(loss_fn, q, b), p, batched
                )
                ns = s
            else:
                batch = jax.tree.map(lambda x: jnp.take(x, ix, axis=0), data)
                # the gradient's convolutions in XLA:CPU's fast form inside the scan
                (loss, ns), g = engine.canonical_convs(
                    jax.value_and_grad(
                        lambda q, s_, b: _train_value(loss_fn, q, s_, b), has_aux=True
                    )
                )(p, s, batch)
            u, o = tx.update(g, o, p)
            return (optax.apply_updates(p, u), ns, o), loss

        carry = (params, state, tx.init(params))
        (p, s, _), losses = jax.lax.scan(step, carry, idx, length=steps)
        eval_fn = loss_fn.with_state(s) if isinstance(loss_fn, Loss) else loss_fn
        final, _ = engine.batched_mean(functools.partial(_value, eval_fn), p, batched)
        return losses, final

    with jax.default_matmul_precision(engine.ANALYSIS_PRECISION):
        return jax.vmap(one)(lrs)


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------
def _check_lrs(lrs) -> np.ndarray:
    try:
        a = np.asarray(lrs, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"{_validate.where()}: lrs must be a 1-D sequence of numbers; got {type(lrs).__name__}."
        ) from None
    if a.ndim == 0:
        a = a[None]
    if a.ndim != 1 or a.size == 0:
        raise ValueError(
            f"{_validate.where()}: lrs must be a non-empty 1-D grid of learning rates; got shape {a.shape}."
        )
    if not np.isfinite(a).all() or (a <= 0).any():
        bad = a[~np.isfinite(a) | (a <= 0)]
        raise ValueError(
            f"{_validate.where()}: learning rates must be positive and finite; got {bad[:4].tolist()} "
            "(a log grid: np.logspace(-4, 0, 9))."
        )
    if a.size > 1 and not (np.diff(a) > 0).all():
        raise ValueError(
            f"{_validate.where()}: lrs must be strictly increasing (a grid, each rate once; results "
            f"follow its order); got {a.tolist()[:8]}{' ...' if a.size > 8 else ''}: pass "
            "np.unique(lrs), which sorts and removes repeats."
        )
    return a


def _has_float_state(state) -> bool:
    return any(jnp.issubdtype(jnp.result_type(x), jnp.floating) for x in jax.tree.leaves(state))


def _batch_indices(key, n: int, batch_size: int, steps: int) -> np.ndarray:
    """Mini-batch rows as :func:`landscape.train` draws them: a fresh permutation per epoch
    (NumPy ``default_rng`` seeded from ``key``), the last incomplete batch dropped."""
    rng = np.random.default_rng(_validate.key_words(key))
    per_epoch = n // batch_size
    epochs = -(-steps // per_epoch)
    rows = [
        rng.permutation(n)[: per_epoch * batch_size].reshape(per_epoch, batch_size)
        for _ in range(epochs)
    ]
    return np.concatenate(rows)[:steps].astype(np.int32)


# --------------------------------------------------------------------------------------------
@_validate.public("landscape.diagnostics.learning_rate_range")
def learning_rate_range(
    model,
    data,
    optimizer: str | Callable = "sgd",
    lrs=None,
    *,
    key,
    steps: int = 100,
    loss: str | Callable = "cross_entropy",
    optimizer_kwargs: dict | None = None,
    weight_decay: float = 0.0,
    batch_size: int | None = None,
    divergence_factor: float = 10.0,
    with_limit: bool = True,
    tol: float = 1e-5,
    eval_batch_size: int | None = None,
    chunk_size: int | None = None,
    store=None,
    progress: bool = False,
) -> LearningRateRangeResult:
    """Short training runs over a grid of learning rates from the same initialisation, and the
    stability limit of the initial curvature on the same axis.

    Each rate takes ``steps`` optimiser steps from ``model.params``; all rates of a chunk run
    in one compiled program (vmapped over the rates). The line drawn with it (see
    :func:`landscape.plot.plot_learning_rate_range`) is the **limit of the quadratic model at
    initialisation**: ``2 / lambda_max`` for gradient descent, ``(2 + 2 beta) / lambda_max`` for
    heavy-ball momentum, ``(2 + 2 b1) / ((1 - b1) lambda_max(P^{-1} H))`` for Adam with ``P`` its
    preconditioner after the first step (see the module text). It is not a bound on the rates
    that train: above it training can converge after a catapult (Lewkowycz et al. 2020), and
    below it the sharpness can rise during training to the edge of stability (progressive
    sharpening, Cohen et al. 2021).

    Args:
      model: the initialisation: a :class:`landscape.Model` (or triple).
      data: the training data (dict of arrays; a :class:`landscape.Dataset` gives its
        ``train`` split). The final loss and the Hessian use all of it.
      optimizer: a name for :func:`landscape.train.make_optimizer` (``"sgd"``, ``"momentum"``,
        ``"nesterov"``, ``"adam"``, ``"adamw"``, ``"rmsprop"``) with ``optimizer_kwargs``, or a
        factory ``lr -> optax.GradientTransformation`` (traceable in ``lr``; a static argument
        of the compiled sweep: reuse the same object, or every call compiles again; no limit is
        drawn for it).
      lrs: the learning rates: positive, finite and strictly increasing (a grid: each rate once;
        an unsorted or repeated grid is rejected, ``np.unique(lrs)`` mends it). Default: 13
        rates log-spaced from ``limit / 100`` to ``10 limit`` (needs a limit).
      key: PRNG key (required): the eigensolver's start vector (``fold_in(key, 1)``) and,
        with ``batch_size``, the mini-batch order, the same for every rate: for
        ``jax.random.key(s)`` the batches :func:`landscape.train` draws with ``seed=s``.
      steps: optimiser steps per rate.
      loss: ``"cross_entropy"``/``"mse"`` (built with :func:`landscape.make_loss_fn` and
        ``weight_decay``), or your own ``loss_fn(params, batch)``.
      optimizer_kwargs: settings of the named optimiser (``{"momentum": 0.9}``, ``{"b1":
        0.9, "b2": 0.999, "eps": 1e-8}``), not the learning rate.
      weight_decay: L2 coefficient of a named loss (part of the curvature too).
      batch_size: ``None`` (default): full-batch steps on the exact full-data gradient, the
        setting the limit describes. An int: mini-batch steps (training mode for batch norm),
        batches drawn as :func:`landscape.train` draws them (see ``key``).
      divergence_factor: a rate diverged when its final loss is not finite or exceeds this many
        times the initial loss (default 10).
      with_limit: compute ``lambda_max`` and the limit (about 20-50 Hessian-vector products).
      tol: relative tolerance of ``lambda_max`` (eigensolver; default 1e-5).
      eval_batch_size: examples per batch of the full-data reductions (gradient, final loss,
        Hessian products); default the engine's.
      chunk_size: rates per compiled call (default: all, at most 32); memory grows with it
        (parameters, optimiser state and one batch's activations per rate).
      store: a path or :class:`landscape.Store`: finished chunks (and the limit) are saved and
        a repeated call resumes.
      progress: progress bar over the chunks.

    Returns:
      :class:`LearningRateRangeResult`.

    Cost:
      ``len(lrs) * steps`` steps (full batch: each a full-data gradient), one compilation per
      chunk size; with the limit one full-data gradient and a Lanczos run (about 20-50 products).

    Raises:
      TypeError, ValueError: non-finite data or parameters, a bad grid, an unknown optimiser or
        settings, batch norm with full-batch steps (pass ``batch_size``), ``lrs=None`` without a
        limit.

    Example:
      >>> res = landscape.diagnostics.learning_rate_range(model, data.train, "sgd",
      ...                                                 np.logspace(-3, 1, 9), key=key)
      >>> landscape.plot.plot_learning_rate_range(res)

    References:
      Smith (2017), "Cyclical learning rates" (the range test); Lewkowycz et al. (2020), "The
      large learning rate phase of deep learning: the catapult mechanism"; Cohen et al. (2021),
      "Gradient descent on neural networks typically occurs at the edge of stability"; Cohen et
      al. (2022), "Adaptive gradient methods at the edge of stability".
    """
    from landscape.hessian import eigenvalues, make_hvp

    model = as_model(model)
    if isinstance(data, Dataset):
        data = data.train
    n = _validate.check_data(data)
    _validate.check_params(model.params, name="model.params")
    for path, x in zip(_tree.leaf_paths(model.params), jax.tree.leaves(model.params)):
        if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
            raise TypeError(
                f"{_validate.where()}: model.params leaf '{path}' must be a float array; got {jnp.result_type(x)}."
            )
    key = _validate.check_key(key)
    steps = _validate.check_positive_int(steps, name="steps")
    opt = _as_opt(optimizer, optimizer_kwargs)
    divergence_factor = _validate.check_finite_scalar(divergence_factor, name="divergence_factor")
    if divergence_factor <= 1:
        raise ValueError(
            f"{_validate.where()}: divergence_factor must be > 1 (a ratio to the initial loss); got {divergence_factor}."
        )
    if not isinstance(with_limit, bool):
        raise TypeError(f"{_validate.where()}: with_limit must be a bool; got {with_limit!r}.")
    tol = _validate.check_finite_scalar(tol, name="tol")
    if batch_size is not None:
        batch_size = _validate.check_batch_size(batch_size, n)
    if chunk_size is not None:
        chunk_size = _validate.check_positive_int(chunk_size, name="chunk_size")
    if isinstance(loss, str):
        loss_fn = make_loss_fn(model, loss, weight_decay=weight_decay)
    else:
        _validate.check_callable(loss, name="loss")
        if weight_decay:
            raise ValueError(
                f"{_validate.where()}: weight_decay applies to named losses; include it in your loss_fn instead."
            )
        loss_fn = loss
    if batch_size is None and _has_float_state(model.state):
        raise ValueError(
            f"{_validate.where()}: the model has floating state (batch-norm statistics): full-batch steps "
            "would train the evaluation-mode network, whose statistics stay at their initial values. Pass "
            "batch_size= for mini-batch steps in training mode (as landscape.train takes them)."
        )
    if lrs is not None:
        lrs = _check_lrs(lrs)

    batched = engine.batch(data, eval_batch_size)
    engine.check_loss(loss_fn, model.params, batched)
    dtype = _tree.dtype_of(model.params)
    k_eig = jax.random.fold_in(key, 1)  # the batch order takes key itself (as train's seed)
    mode = "full-batch" if batch_size is None else f"mini-batch ({batch_size})"
    words = _validate.key_words(key)
    config = {
        "optimizer": opt.describe(),
        "optimizer_kwargs": dict(opt.kwargs),
        "steps": steps,
        "batch_size": batch_size,
        "mode": mode,
        "loss": loss if isinstance(loss, str) else repr(loss)[:200],
        "weight_decay": weight_decay,
        "divergence_factor": divergence_factor,
        "tol": tol,
        "eval_batch_size": batched.batch_size,
        "key": words,
        "dtype": str(np.dtype(dtype)),
    }
    if store is not None:  # bound to everything the runs depend on (the hashes copy to the host)
        store = _store.as_store(
            store,
            {
                "job": "landscape.diagnostics.learning_rate_range",
                **config,
                "lrs": "auto" if lrs is None else lrs.tolist(),
                "chunk_size": chunk_size,
                "params": _provenance.data_hash(model.params),
                "state": _provenance.data_hash(model.state),
                "data": _provenance.data_hash(data),
                "loss_fn": _store.stable_text(engine.split_fn(loss_fn)[0]),
                "factory": None if opt.factory is None else _store.stable_text(opt.factory),
            },
        )

    # --- initial loss and gradient, and the limit -----------------------------------------
    values, g0 = engine.value_and_grad(loss_fn, model.params, batched)
    initial_loss = float(values["loss"])
    limit_rule, notes = "", []
    sharp, limit = float("nan"), float("nan")
    details: dict[str, Any] = {}
    if with_limit and opt.name in LIMITS:
        kw = dict(opt.kwargs)
        if _has_float_state(model.state):
            notes.append(
                "batch norm: the limit is that of the evaluation-mode loss with the initial "
                "statistics, not of the training-mode steps"
            )
            _validate.warn(f"{_validate.where()}: {notes[-1]}.")
        precond = None
        if opt.name == "adam":
            eps = float(kw.get("eps", 1e-8))
            eps_root = float(kw.get("eps_root", 0.0))
            precond = jax.tree.map(lambda g: jnp.sqrt(jnp.square(g) + eps_root) + eps, g0)
            details["preconditioner"] = (
                "P = sqrt(v_hat + eps_root) + eps with v_hat = g0^2, the bias-corrected second "
                "moment after the first Adam step on the full-data gradient at initialisation "
                "(the first moment's bias correction left out)"
            )
        cached = store.load("limit") if store is not None and store.has("limit") else None
        if cached is not None:
            sharp = float(cached["sharpness"])
            details.update(
                eigen_residual=float(cached["residual"]),
                eigen_num_hvps=int(cached["num_hvps"]),
                eigen_converged=bool(cached["converged"]),
            )
        else:
            try:
                op = make_hvp(loss_fn, model.params, batched, preconditioner=precond)
            except ValueError as e:  # a preconditioner with zeros (eps = 0 and a zero gradient)
                op = None
                notes.append(f"no limit: {e}")
            if op is not None:
                eig = eigenvalues(op, k=1, key=k_eig, tol=tol, check_multiplicity=False)
                sharp = float(eig.values[0])
                details.update(
                    eigen_residual=float(eig.residuals[0]),
                    eigen_num_hvps=int(eig.num_hvps),
                    eigen_converged=bool(eig.converged[0]),
                )
                if store is not None:
                    store.save(
                        "limit",
                        {
                            "sharpness": np.float64(sharp),
                            "residual": np.float64(eig.residuals[0]),
                            "num_hvps": np.int64(eig.num_hvps),
                            "converged": np.bool_(eig.converged[0]),
                        },
                    )
        if details.get("eigen_converged") is False:
            notes.append(
                f"lambda_max did not converge to tol={tol:g} (residual {details['eigen_residual']:.3g})"
            )
        if math.isfinite(sharp) and sharp > 0:
            try:
                limit, limit_rule = stability_limit(sharp, opt.name, **kw)
            except ValueError as e:  # a variant without a rule (Adam with nesterov=True)
                notes.append(f"no limit: {e}")
        elif math.isfinite(sharp):
            notes.append(
                f"lambda_max = {sharp:.4g} <= 0: the initial quadratic model has no positive "
                "curvature and no limit"
            )
    elif with_limit:
        notes.append(
            f"no stability rule for {opt.describe()!r} (rules for {', '.join(LIMITS)}); the runs "
            "are shown without a limit"
        )
    limit_note = "; ".join(notes)
    if lrs is None:
        if not math.isfinite(limit):
            raise ValueError(
                f"{_validate.where()}: lrs=None takes a grid around the initial-curvature limit, and there is "
                f"none here ({limit_note or 'with_limit=False'}); pass lrs (e.g. np.logspace(-4, 0, 9))."
            )
        lo, hi, num = DEFAULT_GRID
        lrs = limit * np.logspace(lo, hi, int(num))

    # --- the sweep, chunk by chunk --------------------------------------------------------
    m = lrs.size
    c = min(m, chunk_size or DEFAULT_CHUNK)
    num_chunks = -(-m // c)
    padded = np.concatenate([lrs, np.full(num_chunks * c - m, lrs[-1])])
    if batch_size is None:
        ddata, idx = None, None
    else:
        ddata = jax.tree.map(jnp.asarray, data)
        idx = jnp.asarray(_batch_indices(key, n, batch_size, steps))
    loss_static, loss_dyn = engine.split_fn(loss_fn)
    params = jax.tree.map(jnp.asarray, model.params)
    state = jax.tree.map(jnp.asarray, model.state)

    def compute(ids):
        (i,) = ids
        chunk = jnp.asarray(padded[i * c : (i + 1) * c], dtype)
        losses, final = _sweep(
            loss_static, loss_dyn, opt, chunk, params, state, batched, ddata, idx, steps
        )
        return [
            {
                "step_loss": np.asarray(losses, np.float64),
                "final_loss": np.asarray(final, np.float64),
            }
        ]

    outs = _store.run_chunks(
        compute,
        num_chunks,
        store=store,
        progress=progress,
        desc="learning_rate_range",
        unit="chunk",
    )
    step_loss = np.concatenate([o["step_loss"] for o in outs])[:m]
    final = np.concatenate([o["final_loss"] for o in outs])[:m]
    with np.errstate(invalid="ignore"):
        diverged = ~np.isfinite(final) | (
            (initial_loss > 0) & (final > divergence_factor * initial_loss)
        )
    settings = {**config, "num_lrs": int(m), "chunk_size": c}
    prov = _provenance.provenance(dtype=dtype, seeds={"key": words}, data=data, settings=settings)
    return LearningRateRangeResult(
        lrs=lrs,
        final_loss=final,
        step_loss=step_loss,
        diverged=np.asarray(diverged),
        initial_loss=np.float64(initial_loss),
        sharpness=np.float64(sharp),
        limit=np.float64(limit),
        limit_rule=limit_rule,
        limit_note=limit_note,
        settings=settings,
        details=details,
        provenance=prov,
    )
