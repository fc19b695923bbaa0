"""The Flax NNX modules behind :func:`landscape.make_model` (:class:`MLP`, :class:`CNN`,
:class:`ResNet`), public as ``landscape.models.MLP`` etc.

A module of their own so that Flax is imported only when a model is built: ``landscape.models``
(the registry, activations and initialisers) and the package import without it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from landscape.models import InitSpec, get_activation, resolve_init

_WS_EPS = 1e-10


def _standardise(kernel, axes, variance):
    """Weight standardisation (Qiao et al. 2019) scaled to ``variance`` per weight: per output
    unit (last axis), zero mean and variance ``variance`` over ``axes`` (the fan-in)."""
    mean = jnp.mean(kernel, axis=axes, keepdims=True)
    centred = kernel - mean
    var = jnp.mean(centred * centred, axis=axes, keepdims=True)
    return centred * (jnp.sqrt(jnp.asarray(variance, kernel.dtype)) * jax.lax.rsqrt(var + _WS_EPS))


class WSLinear(nnx.Linear):
    """``nnx.Linear`` whose kernel is standardised in the forward pass (:func:`_standardise`;
    parameters and their paths are those of ``nnx.Linear``)."""

    def __init__(self, *args, ws_variance: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.ws_variance = float(ws_variance)

    def __call__(self, inputs):
        kernel = _standardise(self.kernel[...], (0,), self.ws_variance)
        bias = self.bias[...] if self.bias is not None else None
        inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
        y = jax.lax.dot_general(
            inputs, kernel, (((inputs.ndim - 1,), (0,)), ((), ())), precision=self.precision
        )
        if bias is not None:
            y = y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
        return y


class WSConv(nnx.Conv):
    """2-D NHWC ``nnx.Conv`` (SAME or VALID padding, no dilation or groups) whose kernel is
    standardised per output channel over ``(kh, kw, c_in)`` in the forward pass."""

    def __init__(self, *args, ws_variance: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.ws_variance = float(ws_variance)

    def __call__(self, inputs):
        kernel = _standardise(self.kernel[...], (0, 1, 2), self.ws_variance)
        bias = self.bias[...] if self.bias is not None else None
        inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
        s = self.strides
        strides = (1, 1) if s is None else ((s, s) if isinstance(s, int) else tuple(s))
        y = jax.lax.conv_general_dilated(
            inputs,
            kernel,
            strides,
            self.padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=self.precision,
        )
        if bias is not None:
            y = y + bias.reshape((1, 1, 1, -1))
        return y


def _dense(a, b, spec: InitSpec, *, use_bias, ws, param_dtype, rngs):
    kw = dict(
        use_bias=use_bias,
        kernel_init=spec.kernel_init,
        bias_init=spec.bias_init,
        param_dtype=param_dtype,
        rngs=rngs,
    )
    if ws:
        return WSLinear(a, b, ws_variance=spec.target_variance(a, b), **kw)
    return nnx.Linear(a, b, **kw)


def _conv(
    a, b, size, spec: InitSpec, *, use_bias, ws, param_dtype, rngs, strides=1, padding="SAME"
):
    kw = dict(
        strides=strides,
        padding=padding,
        use_bias=use_bias,
        kernel_init=spec.kernel_init,
        bias_init=spec.bias_init,
        param_dtype=param_dtype,
        rngs=rngs,
    )
    if ws:
        rf = size[0] * size[1]
        return WSConv(a, b, size, ws_variance=spec.target_variance(a * rf, b * rf), **kw)
    return nnx.Conv(a, b, size, **kw)


def _batch_norm(features, *, param_dtype, rngs):
    """``nnx.BatchNorm`` whose running statistics have the parameters' dtype (at least float32).

    Flax NNX creates the running mean and variance in float32 whatever ``param_dtype``; a float64
    network then scattered its float64 batch statistics into float32 variables (JAX's
    "scatter inputs have incompatible types" FutureWarning, and the statistics rounded to float32).
    Lower-precision parameters (bfloat16) keep float32 statistics, as Flax's default.
    """
    bn = nnx.BatchNorm(features, param_dtype=param_dtype, rngs=rngs)
    dt = jnp.promote_types(param_dtype, jnp.float32)
    if bn.mean[...].dtype != dt:
        bn.mean = nnx.BatchStat(bn.mean[...].astype(dt))
        bn.var = nnx.BatchStat(bn.var[...].astype(dt))
    return bn


def _check_flags(model: str, **flags) -> None:
    """The on/off switches must be booleans (a string such as ``"no"`` is truthy)."""
    for name, flag in flags.items():
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(
                f"landscape.models.{model}: {name} must be True or False; got {flag!r}."
            )


class MLP(nnx.Module):
    """Fully connected network ``in -> hidden... -> out`` with an activation between layers.

    Args:
      in_features: input dimension (inputs with more axes are flattened).
      num_outputs: output dimension.
      hidden: widths of the hidden layers.
        Any number of layers (``hidden=(256,) * 64`` is a 65-layer network).
      activation: name in :data:`ACTIVATIONS` (``"relu"``, ``"tanh"``, ``"sigmoid"``,
        ``"gelu"``, ...) or a callable.
      init: kernel initialisation scheme or family (name in :data:`INITS`, a callable, or
        ``None``: LeCun normal, or ``N(0, sigma_w2 / fan_in)`` with ``sigma_w2``).
      sigma_w2: weight variance times fan-in (``None``: the scheme's); see
        :mod:`landscape.models` for how it combines with ``init``.
      sigma_b2: bias variance (0: zero biases).
      weight_standardization: standardise every hidden layer's kernel in the forward pass
        (scaled to the initialisation's variance; see :mod:`landscape.models`).
      batch_norm: batch norm on every hidden layer's pre-activation, before the activation
        (``z = BN(W a)``; the hidden layers then have no biases: batch norm's shift replaces
        them, so ``sigma_b2 > 0`` is rejected). The readout stays linear.
      skip: identity skip connections around every hidden-to-hidden layer of equal widths, in
        the pre-activation form of He et al. (2016, "Identity mappings"): ``z_l = z_{l-1} +
        [BN](W_l phi(z_{l-1}))``; the first layer (input to hidden), a layer that changes the
        width and the readout have none. Without batch norm the residual stream's second
        moment ``q`` grows by the factor ``1 + sigma_w2 E[phi(z)^2] / q`` per layer at
        initialisation (doubling for ReLU with He init), which is why deep residual networks
        need normalisation or a scaled residual; with batch norm it grows by about 1 per layer.
      use_bias: include biases.
      param_dtype: dtype of the parameters.
      rngs: ``nnx.Rngs``.

    Without ``batch_norm`` and ``skip`` (the defaults) the network is ``W_L phi(... phi(W_1
    x))``, with the parameters it always drew.
    """

    def __init__(
        self,
        in_features: int,
        num_outputs: int,
        *,
        hidden: Sequence[int] = (256, 256),
        activation: str | Callable = "relu",
        init: str | Callable | None = None,
        sigma_w2: float | None = None,
        sigma_b2: float = 0.0,
        weight_standardization: bool = False,
        batch_norm: bool = False,
        skip: bool = False,
        use_bias: bool = True,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        widths = [in_features, *hidden, num_outputs]
        _check_flags(
            "MLP",
            batch_norm=batch_norm,
            skip=skip,
            weight_standardization=weight_standardization,
            use_bias=use_bias,
        )
        spec = resolve_init(init, sigma_w2, sigma_b2, use_bias=use_bias)  # checks the variances
        if batch_norm and sigma_b2:
            raise ValueError(
                "landscape.models.MLP: sigma_b2 > 0 with batch_norm=True: batch norm's shift "
                "replaces the hidden layers' biases; pass sigma_b2=0 or batch_norm=False."
            )
        n = len(widths) - 1
        layers = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            drop_bias = use_bias and batch_norm and i < n - 1
            layers.append(
                _dense(
                    a,
                    b,
                    spec,
                    use_bias=use_bias and not drop_bias,
                    ws=weight_standardization and i < n - 1,
                    param_dtype=param_dtype,
                    rngs=rngs,
                )
            )
            if drop_bias:  # the bias's key, unused: the kernels are those without batch norm
                rngs.params()
        self.layers = nnx.List(layers)
        self.norms = (
            nnx.List([_batch_norm(b, param_dtype=param_dtype, rngs=rngs) for b in widths[1:-1]])
            if batch_norm
            else None
        )
        # which hidden layers add their input (static: part of the module, not a parameter)
        self.residual = tuple(
            bool(skip) and 0 < i < n - 1 and widths[i] == widths[i + 1] for i in range(n)
        )
        self.activation = get_activation(activation)

    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        layers = self.layers
        h = None
        for i in range(len(layers) - 1):
            z = layers[i](x if h is None else self.activation(h))
            if self.norms is not None:
                z = self.norms[i](z)
            h = h + z if self.residual[i] else z
        return layers[-1](x if h is None else self.activation(h))


class CNN(nnx.Module):
    """Small convolutional network on NHWC images.

    ``channels[i]`` 3x3 SAME convolutions, each followed by the activation and (if ``pool``)
    a 2x2 average pooling except after the last block; then global average pooling
    (``readout="gap"``) or flatten (``readout="flatten"``) and a dense readout. ``init``,
    ``sigma_w2``, ``sigma_b2`` and ``weight_standardization`` (of the convolutions) as for
    :class:`MLP`.
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
        init: str | Callable | None = None,
        sigma_w2: float | None = None,
        sigma_b2: float = 0.0,
        weight_standardization: bool = False,
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
        _check_flags("CNN", weight_standardization=weight_standardization)
        spec = resolve_init(init, sigma_w2, sigma_b2, use_bias=use_bias)
        cs = [in_channels, *channels]
        self.convs = nnx.List(
            [
                _conv(
                    a,
                    b,
                    (kernel_size, kernel_size),
                    spec,
                    use_bias=use_bias,
                    ws=weight_standardization,
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
        self.head = _dense(
            feat,
            num_outputs,
            spec,
            use_bias=use_bias,
            ws=False,
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
    def __init__(self, cin, cout, stride, *, skip, batch_norm, spec, ws, param_dtype, act, rngs):
        conv = dict(ws=ws, param_dtype=param_dtype, rngs=rngs)
        self.conv1 = _conv(
            cin, cout, (3, 3), spec, use_bias=not batch_norm, strides=(stride, stride), **conv
        )
        self.conv2 = _conv(cout, cout, (3, 3), spec, use_bias=not batch_norm, **conv)
        self.bn1 = _batch_norm(cout, param_dtype=param_dtype, rngs=rngs) if batch_norm else None
        self.bn2 = _batch_norm(cout, param_dtype=param_dtype, rngs=rngs) if batch_norm else None
        needs_proj = skip and (stride != 1 or cin != cout)
        self.proj = (
            _conv(
                cin,
                cout,
                (1, 1),
                spec,
                use_bias=False,
                strides=(stride, stride),
                **conv,
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
    norm (convolutions then get biases). ``init`` (``None``: He normal without ``sigma_w2``),
    ``sigma_w2``, ``sigma_b2`` (biases exist only with ``batch_norm=False``) and
    ``weight_standardization`` (of every convolution) as for :class:`MLP`; the readout is LeCun
    normal unless ``sigma_w2`` is given, then it follows ``init`` and ``sigma_w2`` too.
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
        init: str | Callable | None = None,
        sigma_w2: float | None = None,
        sigma_b2: float = 0.0,
        weight_standardization: bool = False,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        _check_flags(
            "ResNet",
            skip=skip,
            batch_norm=batch_norm,
            weight_standardization=weight_standardization,
        )
        spec = resolve_init(init, sigma_w2, sigma_b2, default="he_normal", use_bias=not batch_norm)
        act = get_activation(activation)
        self.stem = _conv(
            in_channels,
            widths[0],
            (3, 3),
            spec,
            use_bias=not batch_norm,
            ws=weight_standardization,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.stem_bn = (
            _batch_norm(widths[0], param_dtype=param_dtype, rngs=rngs) if batch_norm else None
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
                        spec=spec,
                        ws=weight_standardization,
                        param_dtype=param_dtype,
                        act=act,
                        rngs=rngs,
                    )
                )
                cin = w
        self.blocks = nnx.List(layers)
        head = spec if sigma_w2 is not None else resolve_init("lecun_normal", None, sigma_b2)
        self.head = _dense(
            cin, num_outputs, head, use_bias=True, ws=False, param_dtype=param_dtype, rngs=rngs
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
