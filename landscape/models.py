"""Flax NNX models used throughout the toolkit, initialisation schemes, and a registry.

* :class:`MLP`: dense layers with a chosen activation (``hidden=(256, 256)`` by default, the
  64-256-256-10 network of the benchmarks on digits).
* :class:`CNN`: 3x3 SAME convolution blocks (optional 2x2 average pooling between blocks) and a
  global-average-pooling or flatten readout. Inputs are NHWC.
* :class:`ResNet`: a small ResNet of basic blocks with switches for the skip connections and
  batch norm (Li et al. 2018's with/without skips comparison).

Every model takes ``init`` (the kernels' initialisation scheme; biases start at zero) and
``param_dtype``. :func:`make_model` builds one by name and returns the model triple, recording
how to rebuild it (for :func:`landscape.load_run`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from landscape import validate as _validate
from landscape._model import Model, from_nnx

if TYPE_CHECKING:
    from landscape._nets import CNN, MLP, ResNet

# The model classes live in landscape._nets, which imports Flax (about 0.3 s): loaded when a model
# is built, or when landscape.models.MLP (CNN, ResNet) is first looked up (PEP 562).
_NETS = ("CNN", "MLP", "ResNet")

__all__ = [
    "ACTIVATIONS",
    "INITS",
    "CNN",
    "MLP",
    "ResNet",
    "get_activation",
    "get_init",
    "make_model",
    "model_names",
    "register_model",
]

ACTIVATIONS: dict[str, Callable] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "sigmoid": jax.nn.sigmoid,
    "swish": jax.nn.silu,
    "silu": jax.nn.silu,
    "elu": jax.nn.elu,
    "softplus": jax.nn.softplus,
    "leaky_relu": jax.nn.leaky_relu,
    "erf": jax.scipy.special.erf,
    "linear": lambda x: x,
}

_I = jax.nn.initializers


# Variance-scaling initialisers drawn as one flat vector per power-of-two size class and then
# reshaped. They follow jax.nn.initializers.variance_scaling exactly in distribution (fans from
# the last two axes, receptive field from the rest; the truncated normal rescaled to the target
# variance) but compile one small program per size class instead of one random-number program
# per kernel shape: XLA:CPU needs seconds to compile a random draw of a 4-D convolution shape and
# a fraction of that for a flat one, which made building a small ResNet take 10-15 s.
@functools.partial(jax.jit, static_argnames=("size", "distribution", "dtype"))
def _flat_draw(key, size, distribution, dtype):
    if distribution == "truncated_normal":
        return jax.random.truncated_normal(key, -2.0, 2.0, (size,), dtype)
    if distribution == "normal":
        return jax.random.normal(key, (size,), dtype)
    return jax.random.uniform(key, (size,), dtype, -1.0, 1.0)


@functools.partial(jax.jit, static_argnames=("shape",))
def _finish(z, scale, shape):
    n = math.prod(shape)
    return (z[:n] * scale.astype(z.dtype)).reshape(shape)


def _fans(shape):
    if len(shape) < 1:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def variance_scaling(scale: float, mode: str, distribution: str) -> Callable:
    """``jax.nn.initializers.variance_scaling(scale, mode, distribution)`` with a flat draw."""

    def init(key, shape, dtype=jnp.float32, out_sharding=None):
        shape = tuple(int(d) for d in shape)
        dtype = jnp.dtype(dtype)
        fan_in, fan_out = _fans(shape)
        denom = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
        variance = scale / max(denom, 1)
        if distribution == "truncated_normal":
            mult = math.sqrt(variance) / 0.87962566103423978  # std of N(0,1) truncated to [-2, 2]
        elif distribution == "normal":
            mult = math.sqrt(variance)
        else:
            mult = math.sqrt(3 * variance)
        n = max(math.prod(shape), 1)
        size = 1 << (n - 1).bit_length()
        z = _flat_draw(key, size, distribution, dtype)
        return _finish(z, jnp.asarray(mult, dtype), shape)

    return init


INITS: dict[str, Callable] = {
    "lecun_normal": variance_scaling(1.0, "fan_in", "truncated_normal"),
    "lecun_uniform": variance_scaling(1.0, "fan_in", "uniform"),
    "he_normal": variance_scaling(2.0, "fan_in", "truncated_normal"),
    "he_uniform": variance_scaling(2.0, "fan_in", "uniform"),
    "glorot_normal": variance_scaling(1.0, "fan_avg", "truncated_normal"),
    "glorot_uniform": variance_scaling(1.0, "fan_avg", "uniform"),
    "xavier_normal": variance_scaling(1.0, "fan_avg", "truncated_normal"),
    "xavier_uniform": variance_scaling(1.0, "fan_avg", "uniform"),
    "orthogonal": _I.orthogonal(),
    "zeros": _I.zeros,
}


def get_activation(name: str | Callable) -> Callable:
    if callable(name):
        return name
    if name not in ACTIVATIONS:
        raise ValueError(
            f"landscape.models: unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}."
        )
    return ACTIVATIONS[name]


def get_init(name: str | Callable) -> Callable:
    """Kernel initialiser by name: LeCun, He, Glorot/Xavier (normal and uniform), orthogonal,
    zeros (all-zero weights: every hidden unit stays identical, the symmetry failure)."""
    if callable(name):
        return name
    if name not in INITS:
        raise ValueError(f"landscape.models: unknown init {name!r}; choose from {sorted(INITS)}.")
    return INITS[name]


def __getattr__(name: str):
    if name in _NETS:
        from landscape import _nets

        return getattr(_nets, name)
    raise AttributeError(f"module 'landscape.models' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_NETS))


# --------------------------------------------------------------------------------------------
def _build_mlp(input_shape, num_outputs, rngs, **kw):
    from landscape._nets import MLP

    size = 1
    for s in input_shape:
        size *= int(s)
    return MLP(size, num_outputs, rngs=rngs, **kw)


def _build_cnn(input_shape, num_outputs, rngs, **kw):
    from landscape._nets import CNN

    if len(input_shape) != 3:
        raise ValueError(
            f"landscape.make_model('cnn'): input_shape must be (H, W, C); got {tuple(input_shape)}."
        )
    if kw.get("readout") == "flatten" and "input_hw" not in kw:
        kw["input_hw"] = tuple(input_shape[:2])
    return CNN(input_shape[-1], num_outputs, rngs=rngs, **kw)


def _build_resnet(input_shape, num_outputs, rngs, **kw):
    from landscape._nets import ResNet

    if len(input_shape) != 3:
        raise ValueError(
            f"landscape.make_model('resnet'): input_shape must be (H, W, C); got {tuple(input_shape)}."
        )
    return ResNet(input_shape[-1], num_outputs, rngs=rngs, **kw)


_MODELS: dict[str, Callable] = {"mlp": _build_mlp, "cnn": _build_cnn, "resnet": _build_resnet}


def register_model(name: str, builder: Callable) -> None:
    """Register ``builder(input_shape, num_outputs, rngs, **kwargs) -> nnx.Module``."""
    _MODELS[name] = builder


def model_names() -> list[str]:
    return sorted(_MODELS)


class _NotRebuildable(Exception):
    pass


def _jsonable_kwargs(kwargs: dict) -> dict:
    out = {}
    for k, v in kwargs.items():
        if callable(v):
            # a callable is recorded by name only when the registry maps that name back to the
            # same object (jax.nn.gelu is the tanh approximation, the registry's "gelu" is not)
            name = next((n for reg in (ACTIVATIONS, INITS) for n, f in reg.items() if f is v), None)
            if name is None:
                raise _NotRebuildable(k)
            out[k] = name
        elif isinstance(v, (tuple, list)):
            out[k] = list(v)
        elif k == "param_dtype":
            out[k] = jnp.dtype(v).name
        else:
            out[k] = v
    return out


@_validate.public("landscape.make_model")
def make_model(
    name: str,
    *,
    input_shape: Sequence[int],
    num_outputs: int,
    seed: int = 0,
    **kwargs,
) -> Model:
    """Build a registered model (``"mlp"``, ``"cnn"``, ``"resnet"``) as a model triple.

    Args:
      name: registry name.
      input_shape: shape of one input (no example axis), e.g. ``(64,)`` or ``(8, 8, 1)``.
      num_outputs: number of outputs (classes).
      seed: initialisation seed (``nnx.Rngs(seed)``).
      **kwargs: the model class's settings (``hidden``, ``activation``, ``init``, ``skip``, ...).

    Returns:
      :class:`landscape.Model` whose ``spec`` records ``name``, ``input_shape``,
      ``num_outputs``, ``seed`` and ``kwargs``.

    Raises:
      ValueError: unknown name (lists the registered names) or invalid settings.
    """
    if name not in _MODELS:
        raise ValueError(
            f"landscape.make_model: unknown model {name!r}; registered: {', '.join(model_names())}."
        )
    from flax import nnx

    try:
        module = _MODELS[name](tuple(input_shape), int(num_outputs), nnx.Rngs(int(seed)), **kwargs)
    except TypeError as e:
        raise TypeError(f"landscape.make_model({name!r}): {e}") from e
    try:
        spec = {
            "name": name,
            "input_shape": [int(s) for s in input_shape],
            "num_outputs": int(num_outputs),
            "seed": int(seed),
            "kwargs": _jsonable_kwargs(kwargs),
        }
    except _NotRebuildable:  # a custom callable: load_run then needs a template model
        spec = None
    return from_nnx(module, spec=spec)


def model_from_spec(spec: dict) -> Model:
    """Rebuild a model (freshly initialised) from a ``Model.spec``."""
    kw = dict(spec.get("kwargs", {}))
    for k in ("hidden", "channels", "widths", "input_hw"):
        if k in kw and isinstance(kw[k], list):
            kw[k] = tuple(kw[k])
    if "param_dtype" in kw:
        kw["param_dtype"] = jnp.dtype(kw["param_dtype"])
    return make_model(
        spec["name"],
        input_shape=spec["input_shape"],
        num_outputs=spec["num_outputs"],
        seed=spec.get("seed", 0),
        **kw,
    )
