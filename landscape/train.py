"""Training with Optax: seeded mini-batch SGD (any optimiser and schedule), jitted steps,
periodic exact evaluation, callbacks, snapshots, divergence handling.

Steps run in compiled blocks: ``lax.scan`` over a block of steps inside one jitted program,
with the block length a divisor of every evaluation/callback/snapshot period, so events land
exactly on their steps and there is one compilation per block length. The data set lives on the
device and each step gathers its mini-batch by index, with indices drawn on the host from
``numpy.random.default_rng(seed)`` (a fresh permutation per epoch, last incomplete batch
dropped). Same seed, same result, bit for bit on one machine.

A run can stop early (``stop_step``) and resume from its :class:`TrainState` (parameters,
optimiser state, step, data-order seed: ``result.train_state()``, saved with ``save``):
the split run equals the uninterrupted one bit for bit, because the schedule position lives in
the optimiser state and the mini-batch order is a function of the seed and the step. A boolean
``mask`` shaped like the parameters trains a sparse subnetwork: the mask multiplies the
gradients, the updates and the parameters after every step, so pruned weights stay exactly zero
under any optimiser (momentum, Adam, weight decay; ``optax.masked`` instead freezes or passes
whole leaves).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from landscape import _provenance, _serialize, engine
from landscape import tree as _tree
from landscape import validate as _validate
from landscape._model import Model, as_model
from landscape._result import Result, result, static_field
from landscape.losses import Loss, make_loss_fn

if TYPE_CHECKING:
    import optax

# Optax is imported where an optimiser or schedule is built or applied (in the functions below),
# not with the package: code that never trains does not pay for it.

PyTree = Any

__all__ = [
    "Callback",
    "TrainInfo",
    "TrainResult",
    "TrainState",
    "TrainingDivergedError",
    "callback",
    "check_mask",
    "make_optimizer",
    "make_schedule",
    "train",
]


def _copy_leaf(x, dtype=None):
    """A fresh device copy of one leaf, cast to ``dtype`` if given (``jnp.array(x, dtype)``
    without its compiled copy or conversion program where the host can do it)."""
    if isinstance(x, (np.ndarray, np.generic)):
        return jax.device_put(x if dtype is None else np.asarray(x, dtype))
    # a weak-typed array is copied strong, as jnp.array(x, dtype) does
    same = dtype is None or (getattr(x, "dtype", None) == dtype and not getattr(x, "weak_type", False))
    if same and isinstance(x, jax.Array) and not _validate.is_tracer(x):
        return jax.device_put(x, may_alias=False)
    return jnp.array(x, dtype=dtype)


@jax.jit
def _zero_pruned(x, m):
    """``x`` with the entries where ``m`` is False set to zero (one program per shape)."""
    return jnp.where(m, x, jnp.zeros_like(x))


# --------------------------------------------------------------------------------------------
# Schedules and optimisers by name
# --------------------------------------------------------------------------------------------
@_validate.public("landscape.make_schedule")
def make_schedule(
    name: str = "constant",
    learning_rate: float = 1e-3,
    *,
    num_steps: int = 1000,
    warmup_steps: int = 0,
    decay_steps: Sequence[int] = (),
    decay_factor: float = 0.1,
    decay_rate: float = 0.5,
    end_value: float = 0.0,
) -> Callable:
    """An Optax schedule by name.

    Args:
      name: ``"constant"``, ``"cosine"`` (to ``end_value`` at ``num_steps``),
        ``"warmup_cosine"`` (linear warm-up for ``warmup_steps``, then cosine), ``"step"``
        (multiply by ``decay_factor`` at each of ``decay_steps``; default at 50% and 75%),
        ``"exponential"`` (``decay_rate`` per ``num_steps``).
      learning_rate: peak learning rate.
    """
    _validate.check_choice(
        name, ("constant", "cosine", "warmup_cosine", "step", "exponential"), name="name"
    )
    import optax

    lr = float(learning_rate)
    if name == "constant":
        sched = optax.constant_schedule(lr)
    elif name == "cosine":
        sched = optax.cosine_decay_schedule(
            lr, max(num_steps, 1), alpha=end_value / lr if lr else 0.0
        )
    elif name == "warmup_cosine":
        sched = optax.warmup_cosine_decay_schedule(
            0.0, lr, max(warmup_steps, 1), max(num_steps, warmup_steps + 1), end_value
        )
    elif name == "step":
        steps = list(decay_steps) or [num_steps // 2, (3 * num_steps) // 4]
        sched = optax.piecewise_constant_schedule(lr, {int(s): decay_factor for s in steps})
    else:
        sched = optax.exponential_decay(lr, max(num_steps, 1), decay_rate)
    if warmup_steps and name not in ("warmup_cosine",):
        warm = optax.linear_schedule(0.0, lr, warmup_steps)
        sched = optax.join_schedules([warm, sched], [warmup_steps])
    return sched


_OPTIMIZERS = {  # name -> (the Optax function, the settings it gets here unless given)
    "sgd": ("sgd", {}),
    "momentum": ("sgd", {"momentum": 0.9}),
    "nesterov": ("sgd", {"momentum": 0.9, "nesterov": True}),
    "adam": ("adam", {}),
    "adamw": ("adamw", {}),
    "rmsprop": ("rmsprop", {}),
}


_NAMED_OPT_CACHE: dict = {}


@_validate.public("landscape.make_optimizer")
def make_optimizer(
    name: str, learning_rate: float | Callable, **kwargs
) -> optax.GradientTransformation:
    """An Optax optimiser by name (``sgd``, ``momentum``, ``nesterov``, ``adam``, ``adamw``,
    ``rmsprop``) with a float or schedule learning rate."""
    _validate.check_choice(name, tuple(_OPTIMIZERS), name="name")
    import optax

    fn, defaults = _OPTIMIZERS[name]
    return getattr(optax, fn)(learning_rate, **{**defaults, **kwargs})


def _named_settings(name: str, **kwargs) -> dict:
    """Every scalar hyperparameter of ``make_optimizer(name, lr, **kwargs)`` but the learning
    rate: ``kwargs`` over this module's defaults over the Optax function's (what callbacks read
    from ``TrainInfo.optimizer``, e.g. Adam's ``b1`` for its stability threshold)."""
    import inspect

    import optax

    fn, defaults = _OPTIMIZERS[name]
    params = inspect.signature(getattr(optax, fn)).parameters
    scalar = (bool, int, float, str, type(None))
    out = {
        k: p.default
        for k, p in params.items()
        if k != "learning_rate" and isinstance(p.default, scalar)
    }
    return {**out, **defaults, **kwargs}


def _optimizer_info(desc: dict) -> dict:
    """``TrainInfo.optimizer``: the recorded description plus ``"settings"`` where the optimiser
    is one of :func:`make_optimizer`'s names (a custom one by its ``optimizer_config``'s
    ``"name"``, the config's keys that are the Optax function's parameters over the defaults)."""
    info = dict(desc)
    config = desc.get("config") or {}
    name = config.get("name") if desc["name"] == "custom" else desc["name"]
    if isinstance(name, str) and name in _OPTIMIZERS:
        import inspect

        import optax

        params = inspect.signature(getattr(optax, _OPTIMIZERS[name][0])).parameters
        given = {k: v for k, v in config.items() if k in params and k != "learning_rate"}
        info["settings"] = _named_settings(name, **given)
    return info


# --------------------------------------------------------------------------------------------
# Callbacks
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TrainInfo:
    """What a callback sees after step ``step`` (``step`` optimiser updates done)."""

    step: int
    params: PyTree
    state: PyTree
    opt_state: PyTree
    model: Model
    loss_fn: Loss | Callable
    train_data: Any
    learning_rate: float | None
    history: dict
    optimizer: dict | None = None
    """The optimiser: a named one as ``{"name", "learning_rate"`` (``None`` for a schedule),
    ``"schedule", "settings"}`` (``settings``: every scalar hyperparameter of its Optax function,
    defaults included); an Optax transformation as ``{"name": "custom", "repr"}`` plus
    ``"config"`` when ``train`` was given ``optimizer_config`` (and ``"settings"`` when the
    config's ``"name"`` is one of :func:`make_optimizer`'s, read from the config's keys)."""
    transformation: Any = None
    """The ``optax.GradientTransformation`` the steps apply (the monitor re-takes a step)."""
    batch_indices_fn: Callable | None = None
    """``k -> int32 array``: the example indices of step ``k``'s mini-batch (``k >= 1``)."""
    num_steps: int | None = None
    """The run's length in steps."""


@dataclasses.dataclass(frozen=True)
class Callback:
    """Call ``callback_fn(info: TrainInfo) -> dict | None`` every ``every`` steps (and at step 0 if
    ``at_start``). A returned dict of scalars is logged to ``history`` under its keys (with the
    steps under ``"<name>_step"``, ``name`` defaulting to the function's name)."""

    every: int
    callback_fn: Callable
    at_start: bool = True
    name: str | None = None

    def on_diverged(self, info: TrainInfo, step: int):
        """Called once by :func:`train` when step ``step`` is not finite, with ``info`` at the
        last finite parameters (after step ``step - 1``); a returned report (with a
        ``summary()``) is ``TrainingDivergedError.report``. The default returns ``None``."""
        return None


@_validate.public("landscape.callback")
def callback(
    callback_fn: Callable, *, every: int, at_start: bool = True, name: str | None = None
) -> Callback:
    """A :class:`Callback`: ``callback_fn(info) -> dict | None`` (``info`` a ``TrainInfo``:
    step, params, state, ...) called every ``every`` steps of :func:`train` (and at step 0 with
    ``at_start``); returned scalars go into the history."""
    _validate.check_callable(callback_fn, name="callback_fn")
    _validate.check_positive_int(every, name="every")
    return Callback(int(every), callback_fn, at_start, name)


class TrainingDivergedError(FloatingPointError):
    """Raised by :func:`train` when the loss or gradient becomes non-finite.

    Attributes:
      step: the step whose loss (or gradient) was non-finite (1-based count of updates).
      result: a :class:`TrainResult` holding the last finite parameters (those before ``step``)
        and the history up to then.
      report: the report of the first callback that gives one on divergence
        (:meth:`Callback.on_diverged`; the training monitor's
        :class:`landscape.diagnostics.DivergenceReport`: batch, layer, last finite
        parameters), summarised in the message; ``None`` without such a callback.
    """

    def __init__(self, message: str, step: int, result: TrainResult, report: Any = None):
        super().__init__(message)
        self.step = step
        self.result = result
        self.report = report

    @property
    def last_finite_params(self) -> PyTree:
        """The parameters after step ``step - 1`` (``result.params``)."""
        return self.result.params


# --------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------
@result
class TrainResult(Result):
    """Outcome of :func:`train`.

    Attributes:
      params, state, opt_state: final (or last finite) values.
      history: dict of NumPy arrays: ``step``/``batch_loss`` every step; ``eval_step``,
        ``train_loss``, ``train_accuracy``, ``test_loss``, ``test_accuracy`` (and other aux
        metrics) at each evaluation; callback outputs.
      snapshots: ``{"step": (k,), "params": params pytree with leading axis k}`` or ``None``.
      config, provenance: the settings and what produced them.
    """

    params: PyTree
    state: PyTree
    opt_state: PyTree
    history: dict
    snapshots: dict | None
    config: dict = static_field(default_factory=dict)
    provenance: dict = static_field(default_factory=dict)
    elapsed: float = static_field(default=0.0)
    apply_fn: Any = static_field(default=None)
    spec: Any = static_field(default=None)

    @property
    def model(self) -> Model:
        """The trained model triple."""
        return Model(self.apply_fn, self.params, self.state, self.spec)

    def snapshot(self, i: int) -> PyTree:
        return _tree.index(self.snapshots["params"], i)

    @property
    def final_step(self) -> int:
        """The step the parameters are at (``num_steps``, ``stop_step``, or the last finite
        step of a diverged run)."""
        h = self.history["step"]
        return int(h[-1]) if len(h) else int(self.config.get("start_step", 0))

    def train_state(self) -> TrainState:
        """The training state at :attr:`final_step`: ``train(model, data,
        initial_state=result.train_state(), ...)`` continues the run exactly."""
        return TrainState(
            params=self.params,
            state=self.state,
            opt_state=list(jax.tree.leaves(self.opt_state)),
            step=self.final_step,
            seed=int(self.config.get("seed", 0)),
        )

    def save(self, path):  # runs are directories; see landscape.save_run
        raise NotImplementedError("use landscape.save_run(run_dir, result) to save a training run")

    def summary(self) -> str:
        h = self.history
        parts = [f"steps={int(h['step'][-1]) if len(h['step']) else 0}"]
        for k in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
            if k in h and len(h[k]):
                parts.append(f"{k}={float(h[k][-1]):.4f}")
        parts.append(f"time={self.elapsed:.1f}s")
        return ", ".join(parts)

    def __repr__(self):
        return f"TrainResult({self.summary()})"


@result
class TrainState(Result):
    """Everything :func:`train` needs to continue a run exactly from step ``step``.

    Attributes:
      params, state: the parameters and the model state (batch-norm statistics) after ``step``
        updates.
      opt_state: the optimiser state's leaves, in ``jax.tree.leaves`` order (the structure is
        that of ``optimizer.init(params)``: it is rebuilt when training resumes, so a state
        saved with :meth:`save` loads without pickling). The schedule position (Optax's step
        count) is in it.
      step: updates done.
      seed: the seed of the mini-batch order (epoch ``e`` is the ``e``-th permutation drawn
        from ``numpy.random.default_rng(seed)``): with ``step`` it fixes every later batch.
    """

    params: PyTree
    state: PyTree
    opt_state: list
    step: int = static_field(default=0)
    seed: int = static_field(default=0)

    def __repr__(self):
        return (f"TrainState(step={self.step}, seed={self.seed}, "
                f"{_tree.size(self.params)} parameters, {len(self.opt_state)} optimiser leaves)")


@_validate.public("landscape.train.check_mask")
def check_mask(mask: PyTree, params: PyTree, *, name: str = "mask") -> PyTree:
    """Validate a pruning mask: a pytree of boolean arrays with ``params``' structure and leaf
    shapes (True = kept). Returns it with every leaf a boolean ``jax.Array``.

    Raises:
      ValueError: another tree structure or a leaf of another shape (both are printed).
      TypeError: a leaf that is not boolean (a 0/1 float mask is ambiguous: pass ``m > 0``).
    """
    _validate.check_same_structure(mask, params, name=name)
    for path, leaf in zip(_tree.leaf_paths(params), jax.tree.leaves(mask)):
        dt = getattr(leaf, "dtype", None)
        if dt is None or np.dtype(dt) != np.dtype(bool):
            raise TypeError(
                f"{_validate.where()}: {name} leaf '{path}' must be boolean (True = kept); got "
                f"{'dtype ' + str(dt) if dt is not None else type(leaf).__name__}. Convert a 0/1 "
                "mask with jax.tree.map(lambda m: m > 0, mask)."
            )
    return _tree.to_device(mask)


@jax.jit
def _apply_mask(tree, mask):
    """``tree`` with its pruned entries zeroed, leaf by leaf (one program per tree)."""
    return jax.tree.map(_zero_pruned, tree, mask)


# --------------------------------------------------------------------------------------------
# Compiled steps
# --------------------------------------------------------------------------------------------
def _default_train_loss(loss_fn, params, state, batch):
    loss, aux = engine.loss_and_aux(loss_fn, params, batch)
    return (loss, aux), state


def _train_loss(loss_fn, params, state, batch):
    if isinstance(loss_fn, Loss):
        return loss_fn.train_loss(params, state, batch)
    return _default_train_loss(loss_fn, params, state, batch)


def _finite(tree):
    return engine.all_finite(tree)


@functools.partial(jax.jit, static_argnames=("loss_static", "opt"), donate_argnums=(2, 3, 4))
def _run_block(loss_static, loss_dyn, params, state, opt_state, data, idx, opt, step0, mask=None):
    import optax

    loss_fn = engine.merge_fn(loss_static, loss_dyn)

    def one(carry, inp):
        p, s, o, bad = carry
        i, ix = inp
        batch = jax.tree.map(lambda x: jnp.take(x, ix, axis=0), data)

        def f(pp):
            (l, aux), ns = _train_loss(loss_fn, pp, s, batch)
            return l, ns

        # the gradient's convolutions in XLA:CPU's fast form inside the scan over steps (XLA
        # canonicalises only the entry computation: a ResNet's steps ran 11x slower)
        (l, ns), g = engine.canonical_convs(jax.value_and_grad(f, has_aux=True))(p)
        if mask is not None:  # pruned weights are no parameters: no gradient, no moments
            g = _apply_mask(g, mask)
        upd, no = opt.update(g, o, p)
        if mask is not None:  # the update (decoupled weight decay included) and the result
            upd = _apply_mask(upd, mask)
        np_ = optax.apply_updates(p, upd)
        if mask is not None:
            np_ = _apply_mask(np_, mask)
        # an update that overflows counts as a bad step too: the kept parameters stay finite
        ok = jnp.isfinite(l) & _finite(g) & _finite(np_)
        # a non-finite step leaves everything as it was and is remembered (first bad step)
        keep = ok & (bad < 0)
        p2 = jax.tree.map(lambda a, b: jnp.where(keep, a, b), np_, p)
        s2 = jax.tree.map(lambda a, b: jnp.where(keep, a, b), ns, s)
        o2 = jax.tree.map(lambda a, b: jnp.where(keep, a, b), no, o)
        bad2 = jnp.where((bad < 0) & ~ok, step0 + i + 1, bad)
        return (p2, s2, o2, bad2), l

    steps = jnp.arange(idx.shape[0])
    (p, s, o, bad), losses = jax.lax.scan(
        one, (params, state, opt_state, jnp.asarray(-1)), (steps, idx)
    )
    return p, s, o, bad, losses


@jax.jit
def _copy_tree(tree):
    """Copies of every leaf in one compiled call (a callback's arrays outlive the next block's
    donation; leaf-by-leaf copies cost a dispatch each: 0.5 ms for Adam's MLP state vs 0.1)."""
    return jax.tree.map(jnp.copy, tree)


def _block_length(num_steps: int, periods: Iterable[int], cap: int) -> int:
    g = num_steps
    for p in periods:
        if p:
            g = math.gcd(g, int(p))
    g = max(g, 1)
    if g <= cap:
        return g
    for d in range(cap, 0, -1):
        if g % d == 0:
            return d
    return 1


def _host(tree):
    return _serialize.to_host(tree)


# --------------------------------------------------------------------------------------------
def _hyperparams(opt_state) -> dict | None:
    """The hyperparameters of every ``optax.inject_hyperparams`` state in ``opt_state`` (floats,
    on the host), or ``None`` when there is none (a plain optax object keeps its settings in
    closures, out of reach)."""
    found = {}

    def visit(node, prefix):
        hp = getattr(node, "hyperparams", None)
        if isinstance(hp, dict):
            for k, v in hp.items():
                a = np.asarray(v)
                if a.size == 1 and np.issubdtype(a.dtype, np.number):
                    found[prefix + str(k)] = float(a.reshape(()))
            return
        if isinstance(node, (tuple, list)):
            for i, child in enumerate(node):
                visit(child, prefix if len(node) == 1 else f"{prefix}{i}/")
        elif isinstance(node, dict):
            for k, child in node.items():
                visit(child, f"{prefix}{k}/")

    try:
        visit(opt_state, "")
    except Exception:  # noqa: BLE001 - a description, never a reason to fail training
        return None
    return found or None


def _is_optax_transformation(obj) -> bool:
    """``isinstance(obj, optax.GradientTransformation)`` without importing Optax: if it was never
    imported, ``obj`` cannot be one."""
    optax = sys.modules.get("optax")
    return optax is not None and isinstance(obj, optax.GradientTransformation)


def _check_optimizer_config(config) -> dict:
    import json

    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise TypeError(
            f"{_validate.where()}: optimizer_config must be a dict with string keys (e.g. "
            f"{{'name': 'sgd', 'learning_rate': 0.1}}); got {type(config).__name__}."
        )
    try:
        json.dumps(config)
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"{_validate.where()}: optimizer_config must be JSON-serialisable (numbers, strings, lists, "
            f"dicts): {e}."
        ) from None
    return dict(config)


@_validate.public("landscape.train")
def train(
    model: Model,
    data: dict,
    *,
    loss: str | Callable = "cross_entropy",
    optimizer: optax.GradientTransformation | str = "adam",
    learning_rate: float | Callable = 1e-3,
    schedule: str | None = None,
    num_steps: int | None = None,
    num_epochs: int | None = None,
    batch_size: int = 64,
    seed: int | None = None,
    weight_decay: float = 0.0,
    test_data: dict | None = None,
    eval_every: int | None = None,
    eval_batch_size: int | None = None,
    callbacks: Sequence[Callback] = (),
    snapshot_steps: Iterable[int] | int | None = None,
    progress: bool = True,
    max_block: int = 50,
    optimizer_config: dict | None = None,
    mask: PyTree | None = None,
    initial_state: TrainState | None = None,
    stop_step: int | None = None,
) -> TrainResult:
    """Train a model triple with an Optax optimiser on mini-batches.

    Args:
      model: :class:`landscape.Model` (or a triple); its ``params`` are the starting point.
      data: training data ``{"x": ..., "y": ...}`` (kept on the device).
      loss: ``"cross_entropy"``/``"mse"`` (built with :func:`make_loss_fn`, including
        ``weight_decay``), or your own ``loss_fn(params, batch)`` (a :class:`Loss` trains in
        training mode, updating batch statistics; a plain function leaves ``state`` unchanged).
      optimizer: an ``optax.GradientTransformation`` (used as is: any schedule inside it), or a
        name for :func:`make_optimizer` with ``learning_rate``/``schedule``.
      learning_rate: float, or an Optax schedule (``step -> lr``); used with a named optimizer.
      schedule: a :func:`make_schedule` name applied to ``learning_rate`` (named optimizer only).
      num_steps / num_epochs: training length (exactly one; an epoch is ``n // batch_size``
        steps).
      batch_size: examples per step (``1 <= batch_size <= n``).
      seed: seeds the mini-batch order (NumPy ``default_rng``; default 0, or
        ``initial_state.seed`` when resuming). Initialisation has its own seed
        (``make_model(seed=...)``). Resuming with another seed continues with that seed's
        order from the state's step (instability analysis: two copies, two orders).
      weight_decay: L2 coefficient added to a named loss (coupled; for decoupled decay pass
        ``optax.adamw``).
      test_data: evaluated alongside the training set.
      eval_every: exact full-data evaluation every this many steps (default: about 10 times per
        run) and always at the start and end; results in ``history``.
      callbacks: :func:`callback` objects, e.g. the Hessian module's sharpness tracker.
      snapshot_steps: steps at which to keep a copy of the parameters (an int ``k`` means every
        ``k`` steps, including 0 and the end): trajectories for PCA directions.
      progress: tqdm progress bar.
      max_block: at most this many steps per compiled call (events land on block ends).
      optimizer_config: a JSON-serialisable description of an optax ``optimizer`` (e.g.
        ``{"name": "sgd", "learning_rate": 0.1, "momentum": 0.9}``), recorded in the run's
        config. An optax object's own hyperparameters cannot be read back unless it is built
        with ``optax.inject_hyperparams`` (then its values at the first and the last update
        are recorded: ``hyperparameters`` and, if they changed, ``hyperparameters_final``);
        otherwise only its ``repr`` is, and :func:`landscape.save_run` warns.
      mask: a pytree of booleans shaped like the parameters (True = kept; see
        :mod:`landscape.sparsity`). Pruned weights are set to zero before the first step, and
        the mask multiplies the gradient, the optimiser's update and the new parameters of
        every step, so they stay exactly zero under any optimiser. Costs three elementwise
        selects per parameter per step.
      initial_state: a :class:`TrainState` (``result.train_state()``, or
        ``TrainState.load(path)``) to continue from: its parameters, model state, optimiser
        state and step replace ``model``'s (which gives the architecture; the trees must
        match). ``num_steps`` is still the whole run's length (schedules built by name depend
        on it), and training runs from ``initial_state.step`` to it.
      stop_step: stop after this many updates (default: ``num_steps``) and return the state
        there; everything else (schedule, evaluation periods) is that of the ``num_steps``
        run. ``train(..., stop_step=k)`` then ``train(..., initial_state=r.train_state())``
        equals one uninterrupted run bit for bit (the block length of the compiled steps also
        divides ``k`` and the start; pick ``k`` a multiple of the run's block, e.g. of
        ``eval_every``, for the very same compiled programs).

    Returns:
      :class:`TrainResult`; ``result.model`` is the trained triple.

    Raises:
      TrainingDivergedError: the loss or gradient became non-finite; ``err.step`` names the
        step and ``err.result`` holds the last finite parameters and the history.
      ValueError, TypeError: invalid inputs (non-finite data or parameters, batch size out of
        range, both or neither of num_steps/num_epochs, ...).
    """
    model = as_model(model)
    start = 0
    if initial_state is not None:
        if not isinstance(initial_state, TrainState):
            raise TypeError(
                f"{_validate.where()}: initial_state must be a landscape.train.TrainState (from "
                f"result.train_state() or TrainState.load); got {type(initial_state).__name__}."
            )
        _validate.check_same_structure(initial_state.params, model.params,
                                       name="initial_state.params", ref_name="model.params")
        _validate.check_same_structure(initial_state.state, model.state,
                                       name="initial_state.state", ref_name="model.state")
        start = _validate.check_positive_int(
            initial_state.step, name="initial_state.step", allow_zero=True
        )
        if seed is None:
            seed = int(initial_state.seed)
        model = Model(model.apply_fn, initial_state.params, initial_state.state, model.spec)
    if seed is None:
        seed = 0
    n = _validate.check_data(data)
    if test_data is not None:
        _validate.check_data(test_data, name="test_data")
    _validate.check_params(model.params, name="model.params")
    batch_size = _validate.check_batch_size(batch_size, n)
    steps_per_epoch = n // batch_size
    if (num_steps is None) == (num_epochs is None):
        raise ValueError(
            f"{_validate.where()}: give exactly one of num_steps and num_epochs; got {num_steps=}, {num_epochs=}."
        )
    if num_epochs is not None:
        num_epochs = _validate.check_positive_int(num_epochs, name="num_epochs")
        num_steps = num_epochs * steps_per_epoch
    num_steps = _validate.check_positive_int(num_steps, name="num_steps")
    end = num_steps
    if stop_step is not None:
        end = _validate.check_positive_int(stop_step, name="stop_step")
        if end > num_steps:
            raise ValueError(
                f"{_validate.where()}: stop_step must be at most num_steps={num_steps}; got {end}."
            )
    if start >= end:
        raise ValueError(
            f"{_validate.where()}: initial_state.step={start} leaves nothing to train: it must be "
            f"below {'stop_step' if stop_step is not None else 'num_steps'}={end}."
        )
    if mask is not None:
        mask = check_mask(mask, model.params, name="mask")

    # loss
    if isinstance(loss, str):
        loss_fn = make_loss_fn(model, loss, weight_decay=weight_decay)
    else:
        _validate.check_callable(loss, name="loss")
        if weight_decay:
            raise ValueError(
                f"{_validate.where()}: weight_decay applies to named losses; include it in your loss_fn instead."
            )
        loss_fn = loss

    # optimiser
    lr_fn = None
    if isinstance(optimizer, str):
        lr = learning_rate
        if schedule is not None and callable(learning_rate):
            raise ValueError(
                f"{_validate.where()}: give either a schedule name or a callable learning_rate, not both."
            )
        # the optimizer is a static argument of the compiled step block: the same named
        # settings must give the same object, or every call compiles again
        cache_key = None if callable(learning_rate) else (
            optimizer, float(learning_rate), schedule, int(num_steps) if schedule else None)
        if cache_key is not None and cache_key in _NAMED_OPT_CACHE:
            opt, lr = _NAMED_OPT_CACHE[cache_key]
        else:
            if schedule is not None:
                lr = make_schedule(schedule, learning_rate, num_steps=num_steps)
            opt = make_optimizer(optimizer, lr)
            if cache_key is not None:
                if len(_NAMED_OPT_CACHE) > 64:
                    _NAMED_OPT_CACHE.clear()
                _NAMED_OPT_CACHE[cache_key] = (opt, lr)
        lr_fn = lr if callable(lr) else (lambda s, _lr=float(lr): _lr)
        opt_desc = {
            "name": optimizer,
            "learning_rate": None if callable(learning_rate) else float(learning_rate),
            "schedule": schedule,
        }
        opt_info = _optimizer_info(opt_desc)
    elif _is_optax_transformation(optimizer):
        opt = optimizer
        opt_desc = {"name": "custom", "repr": repr(optimizer)[:200]}
        if optimizer_config is not None:
            opt_desc["config"] = _check_optimizer_config(optimizer_config)
        opt_info = _optimizer_info(opt_desc)
        if schedule is not None:
            raise ValueError(
                f"{_validate.where()}: schedule applies to a named optimizer; put the schedule inside your optax transformation."
            )
    else:
        raise TypeError(
            f"{_validate.where()}: optimizer must be an optax.GradientTransformation or a name; got {type(optimizer).__name__}."
        )
    if optimizer_config is not None and isinstance(optimizer, str):
        raise ValueError(
            f"{_validate.where()}: optimizer_config describes an optax optimizer object; a named optimizer "
            f"({optimizer!r}) is recorded with its learning rate and schedule already."
        )

    if eval_every is None:
        eval_every = max(1, num_steps // 10)
    eval_every = _validate.check_positive_int(eval_every, name="eval_every")
    callbacks = list(callbacks)
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise TypeError(
                f"{_validate.where()}: callbacks must be landscape.callback(fn, every=N) objects; got {type(cb).__name__}."
            )
    if snapshot_steps is None:
        snap = set()
    elif isinstance(snapshot_steps, (int, np.integer)):
        k = _validate.check_positive_int(int(snapshot_steps), name="snapshot_steps")
        snap = {s for s in set(range(0, num_steps + 1, k)) | {num_steps} if start <= s <= end}
    else:
        snap = {int(s) for s in snapshot_steps}
        bad = [s for s in snap if s < start or s > end]
        if bad:
            lo = "0" if not start else f"initial_state.step={start}"
            hi = f"stop_step={end}" if stop_step is not None else f"num_steps={num_steps}"
            raise ValueError(
                f"{_validate.where()}: snapshot_steps must lie in [{lo}, {hi}]; got {sorted(bad)}."
            )

    engine.check_loss(loss_fn, model.params, data)
    if test_data is not None:
        engine.check_loss(loss_fn, model.params, test_data, name="test_data")

    periods = [eval_every, *[cb.every for cb in callbacks], *[s for s in snap if s > 0], start, end]
    block = _block_length(num_steps, periods, max_block)

    # device-resident data and evaluation layouts (prepared once)
    ddata = _tree.to_device(data)
    ev_train = engine.batch(data, eval_batch_size)
    ev_test = engine.batch(test_data, eval_batch_size) if test_data is not None else None

    rng = np.random.default_rng(seed)
    order: list[np.ndarray] = []

    def indices(start: int, count: int) -> np.ndarray:
        need_epoch = (start + count - 1) // steps_per_epoch
        while len(order) <= need_epoch:
            order.append(
                rng.permutation(n)[: steps_per_epoch * batch_size].reshape(
                    steps_per_epoch, batch_size
                )
            )
        rows = [
            order[(start + j) // steps_per_epoch][(start + j) % steps_per_epoch]
            for j in range(count)
        ]
        return np.stack(rows).astype(np.int32)

    # copies (the input model is not donated), without a compiled copy program per leaf
    params = jax.tree.map(_copy_leaf, model.params)
    state = jax.tree.map(_copy_leaf, model.state)
    if mask is not None:
        params = _apply_mask(params, mask)
    opt_state = opt.init(params)
    if initial_state is not None:
        leaves, treedef = jax.tree.flatten(opt_state)
        saved = list(initial_state.opt_state)
        if len(saved) != len(leaves) or any(
            np.shape(a) != np.shape(b) for a, b in zip(saved, leaves)
        ):
            raise ValueError(
                f"{_validate.where()}: initial_state.opt_state does not fit this optimizer's state "
                f"({len(saved)} leaves of shapes {[np.shape(a) for a in saved][:8]}, expected "
                f"{len(leaves)} of shapes {[np.shape(b) for b in leaves][:8]}); resume with the "
                "optimizer that produced the state."
            )
        opt_state = jax.tree.unflatten(
            treedef, [_copy_leaf(a, jnp.result_type(b)) for a, b in zip(saved, leaves)]
        )
        if mask is not None:
            # a rewound state carries the dense run's moments of weights pruned since: zero them
            # (the parameters' entries of every params-shaped state leaf), so they cannot act
            # on the survivors through a per-layer rule (LAMB's trust ratio, a global clip)
            import optax

            opt_state = optax.tree_utils.tree_map_params(
                opt,
                _zero_pruned,
                opt_state,
                mask,
            )
    # read now: the state's buffers are donated to the first compiled block
    hp_start = _hyperparams(opt_state) if opt_desc.get("name") == "custom" else None
    history: dict[str, list] = {"step": [], "batch_loss": [], "eval_step": []}
    snaps_steps: list[int] = []
    snaps: list[PyTree] = []
    cur_loss_fn = loss_fn

    def current_eval_loss(st):
        return loss_fn.with_state(st) if isinstance(loss_fn, Loss) else loss_fn

    def do_eval(step, p, st):
        lf = current_eval_loss(st)
        res = {"train": _host(_evaluate(lf, p, ev_train))}
        if ev_test is not None:
            res["test"] = _host(_evaluate(lf, p, ev_test))
        history["eval_step"].append(step)
        for split, vals in res.items():
            for k, v in vals.items():
                history.setdefault(f"{split}_{k}", []).append(float(v))

    def make_info(step, p, st, o):
        return TrainInfo(
            step,
            p,
            st,
            o,
            Model(model.apply_fn, p, st, model.spec),
            current_eval_loss(st),
            data,
            None if lr_fn is None else float(lr_fn(step)),
            history,
            opt_info,
            transformation=opt,
            batch_indices_fn=lambda k: indices(int(k) - 1, 1)[0],
            num_steps=num_steps,
        )

    def divergence_report(bad, p, st, o):
        """The first report a callback gives on the divergence at step ``bad`` (a failing
        report is a warning: it never hides the divergence)."""
        for cb in callbacks:
            try:
                rep = cb.on_diverged(make_info(bad - 1, p, st, o), bad)
            except Exception as e:  # noqa: BLE001
                import warnings

                warnings.warn(
                    f"{_validate.where()}: the divergence report of callback "
                    f"{cb.name or type(cb).__name__} failed: {type(e).__name__}: {e}",
                    RuntimeWarning,
                    stacklevel=3,
                )
                continue
            if rep is not None:
                return rep
        return None

    def do_callbacks(step, p, st, o, at_start=False):
        due = [cb for cb in callbacks
               if not (at_start and not cb.at_start) and not (step % cb.every and not at_start)]
        if due:
            # the step blocks donate their buffers: callbacks get copies they may keep
            p, st, o = _copy_tree((p, st, o))
        for cb in due:
            out = cb.callback_fn(make_info(step, p, st, o))
            if out:
                nm = cb.name or getattr(cb.callback_fn, "__name__", "callback")
                history.setdefault(f"{nm}_step", []).append(step)
                for k, v in out.items():
                    history.setdefault(k, []).append(v)

    def finish(p, st, o, elapsed):
        hist = {k: np.asarray(v) for k, v in history.items()}
        snapshots = None
        if snaps:
            snapshots = {
                "step": np.asarray(snaps_steps),
                "params": jax.tree.map(lambda *xs: np.stack(xs), *snaps),
            }
        if opt_desc.get("name") == "custom":
            hp0, hp1 = hp_start, _hyperparams(o)
            if hp0 is not None:
                opt_desc["hyperparameters"] = hp0
                if hp1 != hp0:
                    opt_desc["hyperparameters_final"] = hp1
        config = {
            "num_steps": num_steps,
            "batch_size": batch_size,
            "seed": seed,
            "weight_decay": weight_decay,
            "loss": loss if isinstance(loss, str) else repr(loss),
            "optimizer": opt_desc,
            "eval_every": eval_every,
            "model": model.spec,
            "num_examples": n,
        }
        if start or end != num_steps or mask is not None:  # (plain runs keep their old config)
            config["start_step"] = start
            config["stop_step"] = end
            config["masked"] = mask is not None
        prov = _provenance.provenance(
            dtype=_tree.dtype_of(p),
            seeds={"data_order": seed, "init": (model.spec or {}).get("seed")},
            data=data,
            settings=config,
        )
        return TrainResult(
            p, st, o, hist, snapshots, config, prov, elapsed, model.apply_fn, model.spec
        )

    t0 = time.perf_counter()
    loss_static, loss_dyn = engine.split_fn(cur_loss_fn)
    if start in snap:
        snaps_steps.append(start)
        snaps.append(_host(params))
    do_eval(start, params, state)
    do_callbacks(start, params, state, opt_state, at_start=True)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=end - start, desc="train", unit="step")
    step = start
    try:
        while step < end:
            idx = jax.device_put(indices(step, block))
            params, state, opt_state, bad, losses = _run_block(
                loss_static, loss_dyn, params, state, opt_state, ddata, idx, opt, np.int32(step),
                mask,
            )
            bad = int(bad)
            losses = np.asarray(losses)
            if bad >= 0:
                good = bad - 1 - step  # steps of this block that completed
                history["step"].extend(range(step + 1, step + 1 + good))
                history["batch_loss"].extend(losses[:good].tolist())
                res = finish(params, state, opt_state, time.perf_counter() - t0)
                report = divergence_report(bad, params, state, opt_state)
                raise TrainingDivergedError(
                    f"{_validate.where()}: non-finite loss, gradient or update at step {bad} (batch loss {losses[good]}); "
                    f"training stopped and the parameters after step {bad - 1} are kept in err.result."
                    + ("" if report is None else f" Report: {report.summary()}"),
                    bad,
                    res,
                    report,
                )
            history["step"].extend(range(step + 1, step + block + 1))
            history["batch_loss"].extend(losses.tolist())
            step += block
            if bar is not None:
                bar.update(block)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if step in snap:
                snaps_steps.append(step)
                snaps.append(_host(params))
            if step % eval_every == 0 or step in (num_steps, end):
                do_eval(step, params, state)
            do_callbacks(step, params, state, opt_state)
    finally:
        if bar is not None:
            bar.close()
    return finish(params, state, opt_state, time.perf_counter() - t0)


def _evaluate(loss_fn, params, batched):
    # the loss's state is a dynamic leaf: a new state reuses the compiled program
    return engine.mean(jax.tree_util.Partial(engine.loss_dict, loss_fn), params, batched)
