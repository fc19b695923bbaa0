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
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

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
    def outputs(self, params, batch, *, state=None):
        """Model outputs on ``batch`` in evaluation mode."""
        out, _ = self._spec.apply_fn(
            params,
            self.state if state is None else state,
            batch[self._spec.input_key],
            train=False,
        )
        return out

    def output_loss(self, outputs, batch):
        """The data term of the loss from precomputed outputs (batch mean)."""
        t = batch[self._spec.target_key]
        return cross_entropy(outputs, t) if self._spec.kind == "cross_entropy" else mse(outputs, t)

    def penalty(self, params):
        """The L2 term ``0.5 * weight_decay * ||params||^2`` (0 if no weight decay)."""
        if self._spec.weight_decay == 0.0:
            return 0.0
        return 0.5 * self._spec.weight_decay * _tree.vdot(params, params)

    def metrics(self, outputs, batch, loss):
        aux = {"loss": loss}
        t = batch[self._spec.target_key]
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
        out, new_state = self._spec.apply_fn(
            params, state, batch[self._spec.input_key], train=True
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
    )
    return Loss(spec, model.state)
