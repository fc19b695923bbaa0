"""Loss functions built from a model triple.

A loss is a pure ``loss_fn(params, batch) -> scalar`` (the ordinary mean over the batch), or
``(scalar, aux)`` where ``aux`` is a dict of batch-mean metrics from the same forward pass.
:func:`make_loss_fn` returns a :class:`Loss`: a callable pytree whose array leaves are the
model's non-trainable ``state`` (batch-norm statistics). Because the state is a pytree leaf
and not a closure constant, compiled analyses take it as an argument: a new state does not
recompile, and the state never gets baked into a compiled program.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from landscape import tree as _tree
from landscape import validate as _validate
from landscape._model import Model, as_model

PyTree = Any

LOSS_KINDS = ("cross_entropy", "mse")


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy for integer ``labels`` (or one-hot / soft ``labels``)."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        nll = -jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    else:
        nll = -jnp.sum(labels * logp, axis=-1)
    return jnp.mean(nll)


def mse(outputs, targets):
    """``0.5 * mean((outputs - targets)**2)`` over examples AND outputs.

    This is neural-tangents' convention (``1 / (2 |Y|) ||f - Y||^2``), so the closed-form
    gradient-flow predictions of :mod:`ntk` use the same learning-rate scale. Integer targets
    are one-hot encoded against the output width.
    """
    if jnp.issubdtype(targets.dtype, jnp.integer):
        targets = jax.nn.one_hot(targets, outputs.shape[-1], dtype=outputs.dtype)
    targets = targets.reshape(outputs.shape).astype(outputs.dtype)
    return 0.5 * jnp.mean(jnp.square(outputs - targets))


def accuracy(outputs, targets):
    """Fraction of examples whose arg-max output equals the integer (or one-hot) target."""
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        targets = jnp.argmax(targets, axis=-1)
    return jnp.mean((jnp.argmax(outputs, axis=-1) == targets).astype(outputs.dtype))


def error(outputs, targets):
    """Fraction of misclassified examples (computed directly, so it is never negative)."""
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        targets = jnp.argmax(targets, axis=-1)
    return jnp.mean((jnp.argmax(outputs, axis=-1) != targets).astype(outputs.dtype))


@dataclasses.dataclass(frozen=True)
class _LossSpec:
    apply_fn: Callable
    kind: str
    weight_decay: float
    has_aux: bool
    input_key: str
    target_key: str
    classification: bool | None
    # the model's parameter leaves: (path, shape) in leaf order, checked when the loss is traced
    param_signature: tuple | None = None


def _n(shape: tuple) -> str:
    """A batch shape with its leading axis written ``N``: ``(N,)``, ``(N, 10)``."""
    dims = ["N", *map(str, shape[1:])] if shape else []
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def _signature(params) -> tuple:
    """``(path, shape)`` of every leaf; an ``nnx.State``'s ``.../value`` suffix is dropped, so a
    State and its pure dict (``nnx.to_pure_dict``) have the same signature."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    out = []
    for path, leaf in flat:
        if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
            path = path[:-1]
        out.append((_tree._path_str(path), tuple(jnp.shape(leaf))))
    return tuple(out)


@jax.tree_util.register_pytree_node_class
class Loss:
    """``loss_fn(params, batch)`` for a model triple (see :func:`make_loss_fn`).

    Attributes:
      state: the model's non-trainable state used in evaluation mode (a pytree leaf).
      kind, weight_decay, has_aux, input_key, target_key: the settings (static).
    """

    def __init__(self, spec: _LossSpec, state: PyTree):
        self._spec = spec
        self.state = state

    # pytree protocol: state is dynamic, the settings and apply_fn are static.
    def tree_flatten(self):
        return (self.state,), self._spec

    @classmethod
    def tree_unflatten(cls, spec, children):
        return cls(spec, children[0])

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._spec, name)

    def __repr__(self):
        s = self._spec
        return (
            f"Loss({s.kind}, weight_decay={s.weight_decay}, has_aux={s.has_aux}, "
            f"model={getattr(s.apply_fn, '__name__', 'model')})"
        )

    # --- pieces other analyses need (GGN products, batch-norm re-estimation) -------------
    def _entry(self, batch, role: str):
        """``batch[input_key]`` / ``batch[target_key]``, or an error that says which keys the
        loss reads and how to rename (a bare ``KeyError: 'x'`` otherwise)."""
        s = self._spec
        key = s.input_key if role == "inputs" else s.target_key
        try:
            return batch[key]
        except (KeyError, TypeError, IndexError):
            pass
        have = sorted(map(str, batch)) if isinstance(batch, Mapping) else type(batch).__name__
        raise ValueError(
            f"{_validate.where()}: the data has keys {have}, but this loss reads its inputs from "
            f"'{s.input_key}' and its targets from '{s.target_key}' (missing: '{key}'). Rename the "
            f"entries (e.g. {{'{s.input_key}': data['inputs'], '{s.target_key}': data['labels']}}) or "
            "build the loss with landscape.make_loss_fn(model, input_key=..., target_key=...)."
        )

    def _check_params(self, params) -> None:
        expected = self._spec.param_signature
        if expected is None:
            return
        got = _signature(params)
        if got == expected:
            return
        exp, have = dict(expected), dict(got)
        missing = [p for p in exp if p not in have]
        extra = [p for p in have if p not in exp]
        shapes = [f"'{p}': {have[p]} (the model's is {exp[p]})" for p in exp if p in have and have[p] != exp[p]]
        parts = ([f"missing leaves {missing[:4]}"] if missing else []) + (
            [f"unexpected leaves {extra[:4]}"] if extra else []) + (
            [f"other shapes: {', '.join(shapes[:4])}"] if shapes else [])
        raise ValueError(
            f"{_validate.where()}: params do not match the model this loss was built from "
            f"({'; '.join(parts) or 'another leaf order'}). Pass that model's parameters (e.g. "
            "a TrainResult's .model.params), or build the loss from the model they belong to "
            "with landscape.make_loss_fn(model)."
        )

    def _check_targets(self, outputs, t) -> None:
        """Targets whose shape or dtype does not fit the outputs (JAX would report a
        broadcasting or indexing error from deep inside the loss, or broadcast silently)."""
        s = self._spec
        out, ts, key = tuple(outputs.shape), tuple(t.shape), s.target_key
        labels_shape = out[:-1]
        if jnp.issubdtype(t.dtype, jnp.integer):
            if ts == labels_shape:
                return
            hint = (" (a trailing axis of length 1: use y[..., 0] or y.reshape(-1))"
                    if ts == labels_shape + (1,) else "")
            raise ValueError(
                f"{_validate.where()}: integer class labels '{key}' have shape {_n(ts)} for N examples, "
                f"but the model's outputs have shape {_n(out)}: labels need shape {_n(labels_shape)}{hint}."
            )
        if s.kind == "cross_entropy":
            if ts == out:
                return  # one-hot or soft labels
            hint = (f"; these look like class indices stored as {t.dtype}: convert them with "
                    "y.astype(np.int32) (or use kind='mse' for regression targets)"
                    if ts in (labels_shape, labels_shape + (1,)) else "")
            raise ValueError(
                f"{_validate.where()}: cross-entropy needs integer class labels of shape {labels_shape} "
                f"or one-hot/soft labels of shape {out}; '{key}' has dtype {t.dtype} and shape {ts}{hint}."
            )
        same_examples = len(ts) < 1 or len(out) < 2 or ts[:1] == out[:1]  # per-example vmap: no batch axis
        if int(np.prod(ts)) != int(np.prod(out)) or not same_examples:
            raise ValueError(
                f"{_validate.where()}: regression targets '{key}' have shape {ts}, but the model's "
                f"outputs have shape {out}: give targets of shape {out}."
            )

    def outputs(self, params, batch, *, state=None):
        """Model outputs on ``batch`` in evaluation mode."""
        self._check_params(params)
        out, _ = self._spec.apply_fn(
            params,
            self.state if state is None else state,
            self._entry(batch, "inputs"),
            train=False,
        )
        return out

    def output_loss(self, outputs, batch):
        """The data term of the loss from precomputed outputs (batch mean)."""
        t = self._entry(batch, "targets")
        self._check_targets(outputs, t)
        return cross_entropy(outputs, t) if self._spec.kind == "cross_entropy" else mse(outputs, t)

    def penalty(self, params):
        """The L2 term ``0.5 * weight_decay * ||params||^2`` (0 if no weight decay)."""
        if self._spec.weight_decay == 0.0:
            return 0.0
        return 0.5 * self._spec.weight_decay * _tree.vdot(params, params)

    def metrics(self, outputs, batch, loss):
        aux = {"loss": loss}
        t = self._entry(batch, "targets")
        cls = self._spec.classification
        if cls is None:
            cls = self._spec.kind == "cross_entropy" or jnp.issubdtype(t.dtype, jnp.integer)
        if cls:
            aux["accuracy"] = accuracy(outputs, t)
            aux["error"] = error(outputs, t)
        return aux

    def with_state(self, state) -> Loss:
        """The same loss with another model state (e.g. re-estimated batch statistics)."""
        return Loss(self._spec, state)

    def _finish(self, params, outputs, batch):
        data_loss = self.output_loss(outputs, batch)
        loss = data_loss + self.penalty(params) if self._spec.weight_decay else data_loss
        if not self._spec.has_aux:
            return loss
        aux = self.metrics(outputs, batch, data_loss)
        return loss, aux

    def __call__(self, params, batch):
        return self._finish(params, self.outputs(params, batch), batch)

    def train_loss(self, params, state, batch):
        """Training-mode loss: ``((loss, aux), new_state)`` (batch statistics, dropout)."""
        self._check_params(params)
        out, new_state = self._spec.apply_fn(
            params, state, self._entry(batch, "inputs"), train=True
        )
        res = self._finish(params, out, batch)
        if not self._spec.has_aux:
            res = (res, {})
        return res, new_state


@_validate.public("landscape.make_loss_fn")
def make_loss_fn(
    model: Model,
    kind: str = "cross_entropy",
    *,
    weight_decay: float = 0.0,
    has_aux: bool = True,
    input_key: str = "x",
    target_key: str = "y",
    classification: bool | None = None,
) -> Loss:
    """Build ``loss_fn(params, batch)`` from a model triple.

    Args:
      model: a :class:`landscape.Model` (or ``(apply_fn, params, state)``).
      kind: ``"cross_entropy"`` (softmax cross-entropy on integer labels) or ``"mse"``
        (``0.5 * mean((f - y)^2)`` over examples and outputs; integer labels are one-hot).
      weight_decay: adds ``0.5 * weight_decay * ||params||^2`` to the loss, so Hessians, slices
        and curves see the regularised objective. The loss function's own ``aux["loss"]`` is
        the data term, but the engine's results (``landscape.evaluate``, training histories,
        slices) report the regularised objective as ``"loss"``.
      has_aux: return ``(loss, aux)`` with ``aux = {"loss", "accuracy", "error"}``
        (accuracy and error for classification only) instead of the scalar alone.
      input_key, target_key: the batch's input and target entries.
      classification: whether to report accuracy and error; default (``None``): for
        ``"cross_entropy"``, and for ``"mse"`` when the targets are integer labels.

    Returns:
      A :class:`Loss`. It evaluates the model in evaluation mode with ``model.state``; the
      state is a pytree leaf of the loss (an argument of compiled code, not a constant).

    Note:
      ``loss_fn`` is a static argument of every compiled analysis: reuse the same object to
      avoid recompiling, and keep large arrays in ``params``/``batch``/the state, not in
      closures.
    """
    model = as_model(model)
    _validate.check_choice(kind, LOSS_KINDS, name="kind")
    weight_decay = _validate.check_finite_scalar(weight_decay, name="weight_decay")
    if weight_decay < 0:
        raise ValueError(f"{_validate.where()}: weight_decay must be >= 0; got {weight_decay}.")
    spec = _LossSpec(
        model.apply_fn,
        kind,
        weight_decay,
        bool(has_aux),
        input_key,
        target_key,
        None if classification is None else bool(classification),
        _signature(model.params),
    )
    return Loss(spec, model.state)
