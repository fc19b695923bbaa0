"""The first-layer trick for known models: pre-activations are affine in the grid coordinates.

At a grid point ``theta = c_0 b_0 + c_1 b_1 + ...`` (``b_0`` the centre and ``b_k`` the
directions with ``c_0 = 1``, or ``b_0, b_1`` the two ends of an interpolation with weights
``1 - t, t``), the first dense layer's pre-activations are
``x W(theta) + b(theta) = sum_k c_k (x W_k + b_k)``. The ``K`` products ``z_k = x W_k + b_k``
are computed ONCE for the whole data set; each point then needs a ``K``-term linear
combination instead of a matrix product, and the rest of the network runs as usual. The
evaluation still goes through the grid evaluator (:mod:`landscape.grid`; the data it scans are
the precomputed ``z_k`` and the targets), so chunking, sharding and resuming are unchanged. The
grid calls the three methods of :class:`AffineFirstLayer` (``check_compatible``, ``make_data``,
``loss_dict``) and works for any family whose points are linear combinations of basis points
(slices, planes, paths).

Supported: the foundation's MLP (:func:`landscape.make_model` ``"mlp"``). Exact up to
floating-point reassociation (checked against the plain evaluation in float64).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from landscape import validate as _validate
from landscape._model import Model
from landscape.engine import loss_and_aux
from landscape.models import ACTIVATIONS

PyTree = Any

__all__ = ["AffineFirstLayer", "affine_first_layer"]

Z_KEY = "__first_layer_z__"


@dataclasses.dataclass(frozen=True)
class AffineFirstLayer:
    """How to split a known model after its first layer's pre-activations (static, hashable).

    Build it with :func:`affine_first_layer`.
    """

    apply_fn: Callable
    num_layers: int
    activation: str
    use_bias: bool
    name: str = "mlp"

    def __repr__(self):
        return (
            f"AffineFirstLayer({self.name}, layers={self.num_layers}, "
            f"activation={self.activation})"
        )

    # -- the grid evaluator's protocol ---------------------------------------------------------
    def check_compatible(self, loss_fn, params) -> None:
        """Raise unless ``loss_fn`` is this model's :class:`landscape.Loss` and ``params`` has
        its layout."""
        check_compatible(self, loss_fn, params)

    def make_data(self, data: dict, basis: list, *, input_key: str) -> dict:
        """The data set the grid scans: the targets plus ``z_k`` for every basis point."""
        return make_data(self, data, [{"layers": {0: p["layers"][0]}} for p in basis],
                         input_key=input_key)

    @staticmethod
    def loss_dict(loss_fn, fl, point, batch):
        """``{"loss", aux...}`` at ``point = (basis weights, params)`` from the ``z_k``."""
        return loss_dict(loss_fn, fl, point, batch)


@_validate.public("landscape.surface.affine_first_layer")
def affine_first_layer(model: Model) -> AffineFirstLayer:
    """The first-layer trick for a model built by :func:`landscape.make_model` (``"mlp"``).

    Pass the result as ``first_layer=`` to :func:`slice_1d`, :func:`slice_2d` or
    :func:`interpolate` (or :func:`landscape.grid.evaluate`): the first layer's pre-activations of every grid point are then a linear
    combination of ``K`` (= number of directions + 1) products computed once, which removes the
    first layer's matrix product from the per-point cost.

    Raises:
      TypeError, ValueError: not a foundation MLP (other architectures: not supported, use
        the plain evaluation), a custom activation callable, or a model with state.
    """
    if not isinstance(model, Model):
        raise TypeError(
            f"{_validate.where()}: model must be a landscape.Model from landscape.make_model('mlp', ...); got "
            f"{type(model).__name__}."
        )
    spec = model.spec or {}
    if spec.get("name") != "mlp":
        raise ValueError(
            f"{_validate.where()}: only the foundation's MLP (landscape.make_model('mlp', ...)) is supported; "
            f"got a model with spec name {spec.get('name')!r}. Use the plain evaluation "
            "(first_layer=None)."
        )
    kw = spec.get("kwargs", {})
    act = kw.get("activation", "relu")
    if not isinstance(act, str) or act not in ACTIVATIONS:
        raise ValueError(
            f"{_validate.where()}: the model's activation {act!r} is not a registered name; the trick needs one "
            f"of {sorted(ACTIVATIONS)}."
        )
    if jax.tree.leaves(model.state):
        raise ValueError(
            f"{_validate.where()}: the model has non-trainable state; the trick supports stateless MLPs only."
        )
    layers = model.params.get("layers") if isinstance(model.params, dict) else None
    if not isinstance(layers, dict) or sorted(layers) != list(range(len(layers))):
        raise ValueError(f"{_validate.where()}: unexpected parameter layout {_validate.describe(model.params)}.")
    use_bias = bool(kw.get("use_bias", True))
    return AffineFirstLayer(model.apply_fn, len(layers), act, use_bias)


def check_compatible(first_layer, loss_fn, params) -> None:
    if not isinstance(first_layer, AffineFirstLayer):
        raise TypeError(
            f"{_validate.where()}: first_layer must come from landscape.surface.affine_first_layer(model); got "
            f"{type(first_layer).__name__}."
        )
    if getattr(loss_fn, "apply_fn", None) is not first_layer.apply_fn:
        raise ValueError(
            f"{_validate.where()}: first_layer was built for another model than loss_fn's; build both from the "
            "same landscape.Model."
        )
    layers = params.get("layers") if isinstance(params, dict) else None
    if not isinstance(layers, dict) or len(layers) != first_layer.num_layers:
        raise ValueError(f"{_validate.where()}: params do not have the layout of the first_layer's MLP.")


def _first(params, fl: AffineFirstLayer):
    layer = params["layers"][0]
    return layer["kernel"], (layer["bias"] if fl.use_bias else None)


@functools.partial(jax.jit, static_argnames=("fl",))
def _features(fl: AffineFirstLayer, x, basis):
    """``z_k = x W_k + b_k`` for each basis point ``k`` (one jitted program)."""
    x = x.reshape(x.shape[0], -1)
    zs = []
    for p in basis:
        w, b = _first(p, fl)
        z = jnp.dot(x.astype(w.dtype), w, precision=lax.Precision.HIGHEST)  # no TF32 on GPUs
        if b is not None:
            z = z + b[None]
        zs.append(z)
    return tuple(zs)


def make_data(fl: AffineFirstLayer, data: dict, basis: list, *, input_key: str) -> dict:
    """The data set the engine scans: the targets and other entries, plus ``z_k`` (one
    contiguous ``(n, width)`` array per basis point) in place of the inputs."""
    out = {k: v for k, v in data.items() if k != input_key}
    for k, z in enumerate(_features(fl, jnp.asarray(data[input_key]), tuple(basis))):
        out[f"{Z_KEY}{k}"] = z
    return out


def loss_dict(loss_fn, fl: AffineFirstLayer, point, batch):
    """``{"loss", aux...}`` at ``point = (weights, params)`` from the precomputed ``z_k``."""
    w, params = point
    zs = [batch[f"{Z_KEY}{k}"] for k in range(w.shape[0])]
    h = zs[0] * w[0].astype(zs[0].dtype)
    for k in range(1, len(zs)):
        h = h + zs[k] * w[k].astype(zs[k].dtype)
    act = ACTIVATIONS[fl.activation]
    for i in range(1, fl.num_layers):
        layer = params["layers"][i]
        h = jnp.dot(act(h), layer["kernel"])
        if fl.use_bias:
            h = h + layer["bias"][None]
    out = h

    def fake_loss(p, b):  # the Loss's own output loss, penalty and metrics
        data_loss = loss_fn.output_loss(out, b)
        loss = data_loss + loss_fn.penalty(p) if loss_fn.weight_decay else data_loss
        if not loss_fn.has_aux:
            return loss
        return loss, loss_fn.metrics(out, b, data_loss)

    loss, aux = loss_and_aux(fake_loss, params, batch)
    return {**aux, "loss": loss}
