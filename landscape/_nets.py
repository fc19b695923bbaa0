"""The Flax NNX modules behind :func:`landscape.make_model` (:class:`MLP`, :class:`CNN`,
:class:`ResNet`), public as ``landscape.models.MLP`` etc.

A module of their own so that Flax is imported only when a model is built: ``landscape.models``
(the registry, activations and initialisers) and the package import without it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp
from flax import nnx

from landscape.models import get_activation, get_init


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
