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
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from landscape import validate as _validate
from landscape._model import Model, from_nnx

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


class MLP(nnx.Module):
    """Fully connected network ``in -> hidden... -> out`` with an activation between layers.

    Args:
      in_features: input dimension (inputs with more axes are flattened).
      num_outputs: output dimension.
      hidden: widths of the hidden layers.
      activation: name in :data:`ACTIVATIONS` or a callable.
      init: kernel initialisation scheme (name in :data:`INITS`); biases start at zero.
      use_bias: include biases.
      param_dtype: dtype of the parameters.
      rngs: ``nnx.Rngs``.
    """

    def __init__(
        self,
        in_features: int,
        num_outputs: int,
        *,
        hidden: Sequence[int] = (256, 256),
        activation: str | Callable = "relu",
        init: str | Callable = "lecun_normal",
        use_bias: bool = True,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        widths = [in_features, *hidden, num_outputs]
        kinit = get_init(init)
        self.layers = nnx.List(
            [
                nnx.Linear(
                    a, b, use_bias=use_bias, kernel_init=kinit, param_dtype=param_dtype, rngs=rngs
                )
                for a, b in zip(widths[:-1], widths[1:])
            ]
        )
        self.activation = get_activation(activation)

    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        return self.layers[-1](x)


class CNN(nnx.Module):
    """Small convolutional network on NHWC images.

    ``channels[i]`` 3x3 SAME convolutions, each followed by the activation and (if ``pool``)
    a 2x2 average pooling except after the last block; then global average pooling
    (``readout="gap"``) or flatten (``readout="flatten"``) and a dense readout.
    """

    def __init__(
        self,
        in_channels: int,
        num_outputs: int,
        *,
        channels: Sequence[int] = (16, 32),
        kernel_size: int = 3,
        pool: bool = False,
        readout: str = "gap",
        input_hw: Sequence[int] | None = None,
        activation: str | Callable = "relu",
        init: str | Callable = "lecun_normal",
        use_bias: bool = True,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if readout not in ("gap", "flatten"):
            raise ValueError(
                f"landscape.models.CNN: readout must be 'gap' or 'flatten'; got {readout!r}."
            )
        if readout == "flatten" and input_hw is None:
            raise ValueError("landscape.models.CNN: readout='flatten' needs input_hw=(H, W).")
        kinit = get_init(init)
        cs = [in_channels, *channels]
        self.convs = nnx.List(
            [
                nnx.Conv(
                    a,
                    b,
                    (kernel_size, kernel_size),
                    padding="SAME",
                    use_bias=use_bias,
                    kernel_init=kinit,
                    param_dtype=param_dtype,
                    rngs=rngs,
                )
                for a, b in zip(cs[:-1], cs[1:])
            ]
        )
        self.pool = pool
        self.readout = readout
        feat = cs[-1]
        if readout == "flatten":
            h, w = input_hw
            if pool:
                for _ in range(len(channels) - 1):
                    h, w = h // 2, w // 2
            feat = h * w * cs[-1]
        self.head = nnx.Linear(
            feat,
            num_outputs,
            use_bias=use_bias,
            kernel_init=kinit,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.activation = get_activation(activation)

    def __call__(self, x):
        n = len(self.convs)
        for i, conv in enumerate(self.convs):
            x = self.activation(conv(x))
            if self.pool and i < n - 1:
                x = nnx.avg_pool(x, (2, 2), strides=(2, 2))
        x = x.mean(axis=(1, 2)) if self.readout == "gap" else x.reshape(x.shape[0], -1)
        return self.head(x)


class _Block(nnx.Module):
    def __init__(self, cin, cout, stride, *, skip, batch_norm, kinit, param_dtype, act, rngs):
        self.conv1 = nnx.Conv(
            cin,
            cout,
            (3, 3),
            strides=(stride, stride),
            padding="SAME",
            use_bias=not batch_norm,
            kernel_init=kinit,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.conv2 = nnx.Conv(
            cout,
            cout,
            (3, 3),
            padding="SAME",
            use_bias=not batch_norm,
            kernel_init=kinit,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.bn1 = nnx.BatchNorm(cout, param_dtype=param_dtype, rngs=rngs) if batch_norm else None
        self.bn2 = nnx.BatchNorm(cout, param_dtype=param_dtype, rngs=rngs) if batch_norm else None
        needs_proj = skip and (stride != 1 or cin != cout)
        self.proj = (
            nnx.Conv(
                cin,
                cout,
                (1, 1),
                strides=(stride, stride),
                use_bias=False,
                kernel_init=kinit,
                param_dtype=param_dtype,
                rngs=rngs,
            )
            if needs_proj
            else None
        )
        self.skip = skip
        self.act = act

    def __call__(self, x):
        h = self.conv1(x)
        if self.bn1 is not None:
            h = self.bn1(h)
        h = self.act(h)
        h = self.conv2(h)
        if self.bn2 is not None:
            h = self.bn2(h)
        if self.skip:
            h = h + (self.proj(x) if self.proj is not None else x)
        return self.act(h)


class ResNet(nnx.Module):
    """A small ResNet of basic blocks on NHWC images.

    A 3x3 stem convolution to ``widths[0]`` channels, then for each stage ``i`` ``blocks``
    basic blocks of width ``widths[i]`` (stride 2 at the start of every stage after the
    first), global average pooling and a dense readout. ``skip=False`` removes the residual
    additions (the "no-short" networks of Li et al. 2018); ``batch_norm=False`` removes batch
    norm (convolutions then get biases).
    """

    def __init__(
        self,
        in_channels: int,
        num_outputs: int,
        *,
        widths: Sequence[int] = (16, 32),
        blocks: int = 1,
        skip: bool = True,
        batch_norm: bool = True,
        activation: str | Callable = "relu",
        init: str | Callable = "he_normal",
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kinit = get_init(init)
        act = get_activation(activation)
        self.stem = nnx.Conv(
            in_channels,
            widths[0],
            (3, 3),
            padding="SAME",
            use_bias=not batch_norm,
            kernel_init=kinit,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.stem_bn = (
            nnx.BatchNorm(widths[0], param_dtype=param_dtype, rngs=rngs) if batch_norm else None
        )
        layers = []
        cin = widths[0]
        for si, w in enumerate(widths):
            for bi in range(blocks):
                stride = 2 if (si > 0 and bi == 0) else 1
                layers.append(
                    _Block(
                        cin,
                        w,
                        stride,
                        skip=skip,
                        batch_norm=batch_norm,
                        kinit=kinit,
                        param_dtype=param_dtype,
                        act=act,
                        rngs=rngs,
                    )
                )
                cin = w
        self.blocks = nnx.List(layers)
        self.head = nnx.Linear(
            cin,
            num_outputs,
            kernel_init=get_init("lecun_normal"),
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.act = act

    def __call__(self, x):
        h = self.stem(x)
        if self.stem_bn is not None:
            h = self.stem_bn(h)
        h = self.act(h)
        for b in self.blocks:
            h = b(h)
        return self.head(h.mean(axis=(1, 2)))


# --------------------------------------------------------------------------------------------
def _build_mlp(input_shape, num_outputs, rngs, **kw):
    size = 1
    for s in input_shape:
        size *= int(s)
    return MLP(size, num_outputs, rngs=rngs, **kw)


def _build_cnn(input_shape, num_outputs, rngs, **kw):
    if len(input_shape) != 3:
        raise ValueError(
            f"landscape.make_model('cnn'): input_shape must be (H, W, C); got {tuple(input_shape)}."
        )
    if kw.get("readout") == "flatten" and "input_hw" not in kw:
        kw["input_hw"] = tuple(input_shape[:2])
    return CNN(input_shape[-1], num_outputs, rngs=rngs, **kw)


def _build_resnet(input_shape, num_outputs, rngs, **kw):
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
