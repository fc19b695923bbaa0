"""Sharpness tracking during training (edge of stability)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from landscape import engine
from landscape import validate as _validate
from landscape.hessian import _eigen
from landscape.hessian import _operators as ops
from landscape.train import Callback, TrainInfo

PyTree = Any

__all__ = ["adam_preconditioner", "sharpness_callback", "stability_threshold"]

_DECLARABLE = ("sgd", "momentum", "nesterov", "adam")
"""Optimisers whose stability threshold is known (``optimizer=`` of :func:`sharpness_callback`)."""


@_validate.public("landscape.hessian.stability_threshold")
def stability_threshold(
    learning_rate: float, *, optimizer: str = "gd", beta1: float = 0.9, momentum: float = 0.0
) -> float:
    """The sharpness above which the optimiser's iteration on a quadratic diverges.

    With ``H`` fixed (and Adam's preconditioner ``P`` frozen), each eigen-direction of ``H``
    (of ``P^{-1} H`` for Adam) evolves by a linear recurrence that is stable exactly while the
    eigenvalue stays below:

    * ``"gd"``: ``2 / lr``; with heavy-ball momentum ``beta`` (Optax's ``sgd(lr, momentum)``:
      ``t = g + beta t``, ``theta -= lr t``) ``(2 + 2 beta) / lr`` (Cohen et al. 2021);
    * ``"nesterov"``: Optax's Nesterov form (``t = g + beta t``, ``theta -= lr (g + beta t)``)
      ``(2 + 2 beta) / ((1 + 2 beta) lr)``;
    * ``"adam"``: ``(2 + 2 beta1) / ((1 - beta1) lr)`` for the preconditioned sharpness
      ``lambda_max(P^{-1} H)`` (38/lr at ``beta1 = 0.9``; Cohen et al. 2022): the first moment
      is heavy-ball momentum ``beta1`` with the step ``(1 - beta1) lr``.

    Raises:
      ValueError: ``learning_rate <= 0``, ``momentum`` or ``beta1`` outside ``[0, 1)``, an
        unknown ``optimizer``.
    """
    lr = _validate.check_finite_scalar(learning_rate, name="learning_rate")
    if lr <= 0:
        raise ValueError(f"{_validate.where()}: learning_rate must be > 0; got {lr}.")
    _validate.check_choice(optimizer, ("gd", "nesterov", "adam"), name="optimizer")
    beta1 = _unit(beta1, "beta1")
    momentum = _unit(momentum, "momentum")
    return stability_rule(optimizer, beta1 if optimizer == "adam" else momentum)[0] / lr


def stability_rule(kind: str, beta: float) -> tuple[float, str]:
    """The constant ``c`` of the quadratic model's stability rule ``lr * lambda < c`` and its
    text, for ``kind`` ``"gd"`` (heavy-ball momentum ``beta``, 0 for plain GD), ``"nesterov"``
    or ``"adam"`` (``beta = b1``, ``lambda`` the preconditioned sharpness). The one rule behind
    :func:`stability_threshold` (``c / lr``) and ``landscape.diagnostics.stability_limit``
    (``c / lambda``); ``beta`` is checked by the callers."""
    if kind == "adam":
        return (2.0 + 2.0 * beta) / (
            1.0 - beta
        ), f"(2 + 2 b1) / ((1 - b1) lambda_max(P^-1 H)), b1 = {beta:g}"
    if kind == "nesterov":
        return (
            (2.0 + 2.0 * beta) / (1.0 + 2.0 * beta),
            f"(2 + 2 beta) / ((1 + 2 beta) lambda_max), beta = {beta:g}",
        )
    if beta:
        return 2.0 + 2.0 * beta, f"(2 + 2 beta) / lambda_max, beta = {beta:g}"
    return 2.0, "2 / lambda_max"


def _unit(x, name: str) -> float:
    v = _validate.check_finite_scalar(x, name=name)
    if not 0.0 <= v < 1.0:
        raise ValueError(f"{_validate.where()}: {name} must be in [0, 1); got {v}.")
    return v


def _find_state(opt_state, fields: tuple[str, ...]):
    """The first optimiser state (Optax states are named tuples) with all ``fields``, depth
    first (chains, ``inject_hyperparams``' ``inner_state``, masked and multi-transform dicts)."""
    if set(fields) <= set(getattr(opt_state, "_fields", ())):
        return opt_state
    if isinstance(opt_state, (tuple, list)):
        children = opt_state
    elif isinstance(opt_state, dict):
        children = opt_state.values()
    else:
        children = [getattr(opt_state, "inner_state", None)]
    for s in children:
        if s is not None and (found := _find_state(s, fields)) is not None:
            return found
    return None


def _find_adam_state(opt_state):
    return _find_state(opt_state, ("count", "mu", "nu"))


@_validate.public("landscape.hessian.adam_preconditioner")
def adam_preconditioner(
    opt_state, *, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0
) -> PyTree | None:
    """Adam's diagonal preconditioner from an Optax state:
    ``P = (1 - b1^t) (sqrt(nu_hat + eps_root) + eps)``, ``nu_hat = nu / (1 - b2^t)``.

    Adam's step is ``theta -= lr m / P`` with ``m`` the uncorrected first moment (Optax's
    ``m_hat / (sqrt(nu_hat + eps_root) + eps)``, ``m_hat = m / (1 - b1^t)``), so the
    preconditioned sharpness ``lambda_max(P^{-1} H)`` is compared with ``(2 + 2 b1) / ((1 - b1)
    lr)`` (Cohen et al. 2022, who include the factor ``1 - b1^t``; it tends to 1 within a few
    dozen steps). Finds the ``ScaleByAdamState`` (``count``, ``mu``, ``nu``) anywhere in the
    state; returns ``None`` before the first step (``count == 0``).

    Raises:
      TypeError: no Adam state in ``opt_state``.
    """
    st = _find_adam_state(opt_state)
    if st is None:
        raise TypeError(
            "landscape.hessian.adam_preconditioner: no Adam state (with 'count', 'mu' and 'nu') in "
            "opt_state; pass your own preconditioner_fn(opt_state) -> params-shaped positive diagonal."
        )
    t = int(np.asarray(st.count))
    if t == 0:
        return None
    bc1 = 1.0 - b1**t
    bc2 = 1.0 - b2**t
    return jax.tree.map(lambda v: bc1 * (jnp.sqrt(v / bc2 + eps_root) + eps), st.nu)


# --------------------------------------------------------------------------------------------
# Which optimiser trains, and so which threshold applies
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Rule:
    """What the callback measures and compares: ``kind`` (``"gd"``, ``"nesterov"``, ``"adam"``
    or ``None``: no threshold), its hyperparameters, the learning rate (a float, ``step -> lr``
    or ``None``), Adam's preconditioner settings, and ``reason`` when there is no threshold."""

    kind: str | None
    momentum: float = 0.0
    beta1: float = 0.9
    adam: dict = dataclasses.field(default_factory=dict)  # b1, b2, eps, eps_root
    lr: Any = None
    reason: str | None = None
    source: str = ""


_ADAM_KEYS = ("b1", "b2", "eps", "eps_root")
_TRAIN_LR = "train"  # the learning rate landscape.train reports at each step (TrainInfo)


def _from_settings(name: str, settings: dict, source: str) -> _Rule:
    """The rule of one of ``landscape.make_optimizer``'s optimisers with ``settings``."""
    s = settings
    if name in ("sgd", "momentum", "nesterov"):
        beta = float(s.get("momentum") or 0.0)
        kind = "nesterov" if s.get("nesterov") and beta > 0 else "gd"
        return _Rule(kind, momentum=beta, source=source)
    if name in ("adam", "adamw"):
        adam = {k: float(s[k]) for k in _ADAM_KEYS if k in s}
        if s.get("nesterov"):
            return _Rule(
                None,
                reason=f"{source} is Nesterov-Adam (nesterov=True): no stability "
                "threshold is derived for it",
            )
        if name == "adamw" and float(s.get("weight_decay", 0.0)) != 0.0:
            return _Rule(
                None,
                reason=f"{source} has decoupled weight decay ({s['weight_decay']}), "
                "which the preconditioned threshold of Cohen et al. 2022 "
                "leaves out (it holds for weight_decay=0)",
            )
        return _Rule("adam", beta1=adam.get("b1", 0.9), adam=adam, source=source)
    return _Rule(
        None,
        reason=f"{source}: no stability threshold is implemented for {name!r} "
        f"(known: {', '.join(_DECLARABLE)}, adamw without weight decay)",
    )


def _config_lr(config: dict):
    """A custom optimiser's constant learning rate from its ``optimizer_config``, or ``None``."""
    lr = config.get("learning_rate")
    constant = config.get("schedule") in (None, "constant") and not config.get("warmup_steps")
    return (
        float(lr)
        if isinstance(lr, (int, float)) and not isinstance(lr, bool) and constant
        else None
    )


def _resolve(info: TrainInfo, user: dict) -> _Rule:
    """The rule for the optimiser ``info`` describes, with the callback's own declarations
    (``user``: optimizer, learning_rate, momentum, beta1, preconditioner_fn) checked against it
    or standing in for what is unknown. Raises ``ValueError`` on a contradiction."""
    desc = info.optimizer or {}
    lr_user = user["learning_rate"]
    if desc.get("name") not in (None, "custom"):  # a named optimiser of landscape.train
        name = desc["name"]
        rule = _from_settings(name, desc.get("settings", {}), f"optimizer {name!r}")
        lr_known = info.learning_rate
    elif "settings" in desc:  # an optax transformation described by optimizer_config
        name = desc["config"]["name"]
        rule = _from_settings(name, desc["settings"], f"optimizer_config name {name!r}")
        lr_known = _config_lr(desc["config"])
    else:
        return _declared(info, user)
    if user["optimizer"] is not None and _family(user["optimizer"]) != _family(name):
        raise ValueError(
            f"{_validate.where()}: optimizer={user['optimizer']!r} but training uses "
            f"{name!r}; leave optimizer out (it is read from the training)."
        )
    mine = {"momentum": rule.momentum} if rule.kind in ("gd", "nesterov") else {}
    if rule.kind == "adam":
        mine = {"beta1": rule.beta1}
    for arg, value in mine.items():
        if user[arg] is not None and not math.isclose(user[arg], value):
            raise ValueError(
                f"{_validate.where()}: {arg}={user[arg]} but {rule.source} has "
                f"{value}; leave {arg} out (it is read from the training)."
            )
    known = lr_user is not None and lr_known is not None and not callable(lr_user)
    if known and not math.isclose(float(lr_user), lr_known):
        raise ValueError(
            f"{_validate.where()}: learning_rate={lr_user} but training uses "
            f"{lr_known}; leave learning_rate out (it is read from the training)."
        )
    lr = lr_user  # a named optimiser's rate is read at each step (schedules included)
    if lr_known is not None:
        lr = _TRAIN_LR if desc["name"] != "custom" else lr_known
    if lr is None and rule.kind is not None:
        rule = dataclasses.replace(
            rule,
            kind=None,
            reason=(
                f"{rule.source}: the learning rate is unknown (a schedule inside an optax "
                "transformation); pass learning_rate (a float or step -> lr)"
            ),
        )
    return dataclasses.replace(rule, lr=lr)


def _family(name: str) -> str:
    return {"momentum": "sgd", "nesterov": "sgd", "adamw": "adam"}.get(name, name)


def _declared(info: TrainInfo, user: dict) -> _Rule:
    """An optax transformation with no known name: only the callback's declarations say what
    it is (``optimizer=``; or, as before, ``preconditioner_fn`` for Adam and ``learning_rate``
    for gradient descent), checked against the moments its state holds."""
    decl, lr = user["optimizer"], user["learning_rate"]
    pre = user["preconditioner_fn"]
    source = "the custom optax transformation"
    if decl is None and callable(pre):
        decl = "adam"
    elif decl is None and lr is not None:
        decl = "momentum" if user["momentum"] else "sgd"
    if decl is None:
        return _Rule(
            None,
            reason=f"{source} has no known name, so neither its kind nor its "
            "learning rate is known; pass optimizer= and learning_rate= to "
            "sharpness_callback, optimizer_config={'name': ...} to "
            "landscape.train, or train with a named optimizer",
        )
    state = info.opt_state
    adaptive = _find_state(state, ("nu",)) is not None
    trace = _find_state(state, ("trace",)) is not None
    if decl != "adam" and adaptive:
        return _Rule(
            None,
            reason=f"{source} keeps second moments (an adaptive optimiser) but "
            f"sharpness_callback was told {decl!r} (learning_rate= without "
            "optimizer= means gradient descent); pass optimizer='adam'",
        )
    if decl in ("sgd", "momentum", "nesterov") and trace != bool(user["momentum"]):
        return _Rule(
            None,
            reason=f"{source} {'keeps' if trace else 'keeps no'} momentum but "
            f"momentum={user['momentum']} was given; pass the momentum it uses",
        )
    if decl == "adam" and _find_adam_state(state) is None and not callable(pre):
        return _Rule(
            None,
            reason=f"{source} holds no Adam state (count, mu, nu) although "
            "optimizer='adam' was given",
        )
    settings = {"momentum": user["momentum"] or 0.0, "nesterov": decl == "nesterov"}
    if decl == "adam":
        settings = {"b1": 0.9 if user["beta1"] is None else user["beta1"]}
    rule = _from_settings(decl, settings, f"the optax transformation declared {decl!r}")
    if lr is None:
        return dataclasses.replace(
            rule, kind=None, reason=f"{rule.source}: pass learning_rate= (a float or step -> lr)"
        )
    return dataclasses.replace(rule, lr=lr)


# --------------------------------------------------------------------------------------------
# The callback
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SharpnessCallback(Callback):
    """The :class:`landscape.train.Callback` of :func:`sharpness_callback`, with what it
    recorded (filled at the first measurement) in ``notes``: ``quantity`` (``"lambda_max(H)"``
    or ``"lambda_max(P^-1 H)"``), ``threshold_rule`` (e.g. ``"2/lr"``, or ``None``) and
    ``threshold_reason`` (why ``sharpness_threshold`` is NaN, else ``None``)."""

    notes: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @property
    def threshold_rule(self) -> str | None:
        return self.notes.get("threshold_rule")

    @property
    def threshold_reason(self) -> str | None:
        return self.notes.get("threshold_reason")

    @property
    def quantity(self) -> str | None:
        return self.notes.get("quantity")


def _rule_text(rule: _Rule) -> str:
    if rule.kind == "adam":
        return f"(2 + 2 b1) / ((1 - b1) lr), b1 = {rule.beta1:g}"
    if rule.kind == "nesterov":
        return f"(2 + 2 beta) / ((1 + 2 beta) lr), beta = {rule.momentum:g}"
    return f"(2 + 2 beta) / lr, beta = {rule.momentum:g}" if rule.momentum else "2/lr"


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
    optimizer: str | None = None,
    momentum: float | None = None,
    beta1: float | None = None,
    preconditioner_fn: Callable | str | None = None,
    name: str = "sharpness",
    at_start: bool = True,
    **curvature,
) -> SharpnessCallback:
    """A :func:`landscape.train` callback recording the top Hessian eigenvalue every ``every``
    steps, warm-started from the previous eigenvector, with the optimiser's stability threshold
    (edge-of-stability plots).

    Logs ``sharpness`` (top eigenvalue), ``sharpness_threshold`` (the stability threshold at the
    current learning rate, NaN where none applies), ``sharpness_hvps`` (products used) and, for
    ``k > 1``, ``sharpness_2`` ... under ``history`` (steps in ``history["sharpness_step"]``; the
    prefix is ``name``). Plot with :func:`landscape.plot.plot_sharpness`.

    The threshold follows the optimiser, read from ``landscape.train`` (a named optimizer with
    its hyperparameters and learning rate at each step, schedules included; an optax
    transformation through ``train``'s ``optimizer_config``, taken at its word, with its
    learning rate when the config has no schedule) or, for an optax transformation that is not
    described, from the declarations ``optimizer=``, ``learning_rate=``, ``momentum=``,
    ``beta1=`` (see :func:`stability_threshold`):

    * gradient descent (``"sgd"``; Cohen et al. 2021): the sharpness rises until it reaches
      ``2 / lr`` (progressive sharpening), then hovers there (the edge of stability); heavy-ball
      momentum ``beta`` (``"momentum"``): ``(2 + 2 beta) / lr``; Nesterov:
      ``(2 + 2 beta) / ((1 + 2 beta) lr)``;
    * Adam (Cohen et al. 2022): the threshold ``(2 + 2 b1) / ((1 - b1) lr)`` (38/lr at 0.9)
      applies to the preconditioned sharpness, the top eigenvalue of ``P^{-1} H`` (computed as
      the symmetric ``P^{-1/2} H P^{-1/2}``, :func:`make_hvp`'s ``preconditioner=``) with Adam's
      ``P = (1 - b1^t) (sqrt(nu_hat + eps_root) + eps)`` from the optimiser state
      (:func:`adam_preconditioner`). Pass ``preconditioner_fn="auto"`` to measure it: the
      callback then builds ``P`` with the optimiser's own ``b1, b2, eps, eps_root``. With the
      default ``preconditioner_fn=None`` it measures ``lambda_max(H)`` and records no threshold
      (38/lr does not apply to it, 2/lr is gradient descent's).

    A threshold that cannot be known is recorded as NaN, never guessed: an optax transformation
    with no name and no declaration, a learning-rate schedule inside one, Nesterov-Adam, AdamW
    with weight decay, RMSProp, a declaration its state contradicts (``learning_rate=`` alone,
    the old way of declaring gradient descent, for a state that keeps Adam's moments), or a
    preconditioned sharpness under a non-adaptive optimiser. The returned callback says which
    rule it used and why there is none (``.threshold_rule``, ``.threshold_reason``,
    ``.quantity``, set at the first measurement).

    Args:
      every: steps between measurements.
      data: data for the Hessian (default: the training data ``train`` sees). Full-batch GD
        uses the same data for the step and the Hessian.
      k: eigenvalues per measurement.
      tol: relative residual tolerance of the eigensolver (default 1e-4: sharpness plots need
        3 to 4 digits; warm starts then take a handful of products).
      key: PRNG key (required: randomness is explicit): the cold start of each measurement
        without a previous eigenvector (``jax.random.fold_in(key, i)`` for the ``i``-th).
      learning_rate: float or ``step -> lr``: the learning rate of an optax transformation
        (a named optimizer's is read from the training; a different value is an error).
      optimizer: what an optax transformation with no ``optimizer_config`` is: ``"sgd"``,
        ``"momentum"``, ``"nesterov"`` or ``"adam"`` (``None``: read from the training).
      momentum: its momentum (``"momentum"``/``"nesterov"``; default: the training's, else 0).
      beta1: its Adam ``b1`` (default: the training's, else 0.9).
      preconditioner_fn: ``None`` (``lambda_max(H)``), ``"auto"`` (the optimiser's own
        preconditioner if it is adaptive: Adam's ``P``), or ``opt_state -> P`` (params-shaped,
        positive; for an undescribed optax transformation it declares Adam, as before).
      name: history prefix.
      at_start: measure at step 0 too (a preconditioned measurement waits for Adam's first step).
      **curvature: the operator settings of :func:`make_hvp` but ``preconditioner`` (that is
        ``preconditioner_fn``'s): ``batch_size`` (of the Hessian's data), ``method``,
        ``curvature``, ``params_filter``, ...

    Returns:
      A :class:`landscape.train.Callback` (a ``SharpnessCallback``: ``threshold_rule``,
      ``threshold_reason`` and ``quantity`` describe what it recorded).

    Raises:
      ValueError, TypeError: bad settings here; at the first measurement, declarations that
        contradict the training's optimiser (``optimizer``, ``momentum``, ``beta1``,
        ``learning_rate``).

    Example:
      >>> cb = landscape.hessian.sharpness_callback(every=20, key=jax.random.key(0))
      >>> run = landscape.train(model, data, optimizer="sgd", learning_rate=0.1, num_steps=1000,
      ...                       batch_size=len(data["y"]), callbacks=[cb])
      >>> landscape.plot.plot_sharpness(run)  # the sharpness against 2/lr = 20
      >>> cb = landscape.hessian.sharpness_callback(every=20, key=key, preconditioner_fn="auto")
      >>> run = landscape.train(model, data, optimizer="adam", learning_rate=1e-3, ...,
      ...                       callbacks=[cb])  # lambda_max(P^-1 H) against 38/lr

    References:
      Cohen, Kaur, Li, Kolter, Talwalkar 2021 ("Gradient descent on neural networks typically
      occurs at the edge of stability"); Cohen et al. 2022 ("Adaptive gradient methods at the
      edge of stability").
    """
    every = _validate.check_positive_int(every, name="every")
    k = _validate.check_positive_int(k, name="k")
    if isinstance(preconditioner_fn, str):
        _validate.check_choice(preconditioner_fn, ("auto",), name="preconditioner_fn")
    elif preconditioner_fn is not None:
        _validate.check_callable(preconditioner_fn, name="preconditioner_fn")
    if optimizer is not None:
        _validate.check_choice(optimizer, _DECLARABLE, name="optimizer")
    if momentum is not None:
        momentum = _unit(momentum, "momentum")
    if beta1 is not None:
        beta1 = _unit(beta1, "beta1")
    if learning_rate is not None and not callable(learning_rate):
        learning_rate = _validate.check_finite_scalar(learning_rate, name="learning_rate")
        if learning_rate <= 0:
            raise ValueError(
                f"{_validate.where()}: learning_rate must be > 0; got {learning_rate}."
            )
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
    user = {
        "optimizer": optimizer,
        "learning_rate": learning_rate,
        "momentum": momentum,
        "beta1": beta1,
        "preconditioner_fn": preconditioner_fn,
    }
    state: dict[str, Any] = {"v": None, "batched": None, "data": None, "calls": 0, "rule": None}
    notes: dict[str, Any] = {}

    def measure(info: TrainInfo):
        with _validate.boundary("landscape.hessian.sharpness_callback"):
            return _measure(info)

    def _preconditioner(rule: _Rule, info: TrainInfo):
        """``(P or None, measure now)``: ``P`` for a preconditioned measurement."""
        if preconditioner_fn is None or (preconditioner_fn == "auto" and rule.kind != "adam"):
            return None, True
        if preconditioner_fn == "auto":
            a = rule.adam
            P = adam_preconditioner(
                info.opt_state,
                b1=a.get("b1", rule.beta1),
                b2=a.get("b2", 0.999),
                eps=a.get("eps", 1e-8),
                eps_root=a.get("eps_root", 0.0),
            )
        else:
            P = preconditioner_fn(info.opt_state)
        return P, P is not None  # None: no preconditioner yet (Adam before its first step)

    def _threshold(
        rule: _Rule, preconditioned: bool, info: TrainInfo
    ) -> tuple[float, str | None, str | None]:
        if rule.kind is None:
            return float("nan"), None, rule.reason
        if (rule.kind == "adam") != preconditioned:
            why = (
                "Adam's threshold applies to the preconditioned sharpness lambda_max(P^-1 H), "
                "and 2/lr is gradient descent's; pass preconditioner_fn='auto' to measure it"
                if rule.kind == "adam"
                else f"a preconditioned sharpness under {rule.source} (not adaptive) has no "
                "stability threshold; leave preconditioner_fn out"
            )
            return float("nan"), None, why
        step = info.step
        if rule.lr == _TRAIN_LR:
            lr = info.learning_rate
        else:
            lr = float(rule.lr(step)) if callable(rule.lr) else float(rule.lr)
        if lr is None or not lr > 0:
            return float("nan"), None, f"the learning rate at step {step} is {lr}"
        thr = stability_threshold(
            lr, optimizer=rule.kind, beta1=rule.beta1, momentum=rule.momentum
        )
        return thr, _rule_text(rule), None

    def _measure(info: TrainInfo):
        if state["rule"] is None:
            state["rule"] = _resolve(info, user)
        rule = state["rule"]
        precond, ready = _preconditioner(rule, info)
        if not ready:
            return None
        d = data if data is not None else info.train_data
        # lay the data out once (a reference, not an id: ids are reused)
        if state["data"] is not d:
            state["batched"] = engine.batch(d, batch_size)
            state["data"] = d
        op = ops.make_hvp(
            info.loss_fn, info.params, state["batched"], preconditioner=precond, **curvature
        )
        res = _eigen.solve(
            op,
            k=k,
            which="largest",
            tol=tol,
            key=jax.random.fold_in(key, state["calls"]),
            v0=state["v"],
            check_multiplicity=False,
        )
        state["calls"] += 1
        state["v"] = res.vectors
        thr, text, why = _threshold(rule, precond is not None, info)
        notes.update(
            quantity="lambda_max(P^-1 H)" if precond is not None else "lambda_max(H)",
            threshold_rule=text,
            threshold_reason=why,
        )
        out = {name: float(res.values[0]), f"{name}_threshold": thr, f"{name}_hvps": res.num_hvps}
        for i in range(1, len(res.values)):
            out[f"{name}_{i + 1}"] = float(res.values[i])
        return out

    measure.__name__ = name
    return SharpnessCallback(every, measure, at_start, name, notes)
