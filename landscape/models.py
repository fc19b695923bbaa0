"""Flax NNX models used throughout the toolkit, initialisation schemes, and a registry.

* :class:`MLP`: dense layers with a chosen activation (``hidden=(256, 256)`` by default, the
  64-256-256-10 network of the benchmarks on digits); optional batch norm on the hidden
  pre-activations and pre-activation skip connections (``batch_norm``, ``skip``).
* :class:`CNN`: 3x3 SAME convolution blocks (optional 2x2 average pooling between blocks) and a
  global-average-pooling or flatten readout. Inputs are NHWC.
* :class:`ResNet`: a small ResNet of basic blocks with switches for the skip connections and
  batch norm (Li et al. 2018's with/without skips comparison).

Every model takes ``init`` (the kernels' initialisation scheme), the explicit variances
``sigma_w2`` and ``sigma_b2``, ``weight_standardization`` and ``param_dtype``.
:func:`make_model` builds one by name and returns the model triple, recording how to rebuild it
(for :func:`landscape.load_run`).

Weight and bias variances (the parametrisation of mean-field theory, Poole et al. 2016,
Schoenholz et al. 2017): every kernel ``W`` of a layer with fan-in ``n`` (inputs times the
receptive field) is drawn with ``Var W_ij = sigma_w2 / n``, every bias ``b_i ~ N(0, sigma_b2)``.
How they combine with ``init`` (one rule, checked by :func:`resolve_init`):

* ``init`` names a *family* (``"normal"``, ``"truncated_normal"``, ``"uniform"``,
  ``"orthogonal"``): ``sigma_w2`` sets its scale (default 1). The normal family is exactly
  ``N(0, sigma_w2 / n)``; the truncated normal (at two standard deviations) and the uniform are
  rescaled to that variance; ``"orthogonal"`` is ``sqrt(sigma_w2)`` times a random orthogonal
  matrix (Saxe et al. 2014: the gain), which has the same per-unit variance for square layers.
* ``init`` names a *scheme with its own scale* (LeCun: ``1 / n``, He: ``2 / n``, both truncated
  normal or uniform): ``sigma_w2`` may be given only if it equals the scheme's (1 or 2), else a
  ``ValueError`` names the family to use instead. Glorot/Xavier (``2 / (fan_in + fan_out)``) is
  not of the form ``sigma_w2 / fan_in`` and ``"zeros"`` has no scale: with ``sigma_w2`` both are
  rejected. A callable ``init`` cannot be rescaled: rejected with ``sigma_w2``.
* ``init`` not given: LeCun normal (He normal for the ResNet) without ``sigma_w2``, the normal
  family ``N(0, sigma_w2 / n)`` with it.

``sigma_b2 = 0`` (the default) keeps the zero biases of before; ``sigma_b2 > 0`` needs biases
(rejected with ``use_bias=False`` and with batch norm, whose shift replaces them).
Defaults draw exactly the parameters they drew before these options existed.

Weight standardisation (``weight_standardization=True``; Qiao et al. 2019): every hidden
layer's kernel is standardised per output unit in the forward pass, ``W_hat = sqrt(v) (W -
mean(W)) / sqrt(var(W) + eps)`` over the fan-in (``eps = 1e-10``), with ``v`` the weight
variance the initialisation targets (``sigma_w2 / n``; the scheme's variance without
``sigma_w2``: ``1 / n`` LeCun and the families, ``2 / n`` He, ``2 / (fan_in + fan_out)``
Glorot). Qiao et al.'s form is ``v = 1``: it multiplies every pre-activation by ``sqrt(n)``,
which a following batch or group norm removes exactly (so under normalisation the two are the
same network up to ``eps``), but which compounds to ``n^(L/2)`` in a network without
normalisation; the fixed factor ``sqrt(v)`` (the "scaled weight standardisation" of Brock et
al. 2021) keeps the signal scale of the initialisation, so weight standardisation can be compared
with and without batch norm. The readout layer stays a plain linear layer.

References:
  Poole et al. (2016), Exponential expressivity in deep neural networks through transient chaos.
  Schoenholz et al. (2017), Deep information propagation. Saxe et al. (2014), Exact solutions to
  the nonlinear dynamics of learning in deep linear networks. Qiao et al. (2019), Micro-batch
  training with batch-channel normalization and weight standardization. Brock et al. (2021),
  Characterizing signal propagation to close the performance gap in unnormalized ResNets.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from landscape import tree as _tree
from landscape import validate as _validate
from landscape._model import Model, from_nnx

if TYPE_CHECKING:
    from landscape._nets import CNN, MLP, ResNet
    from landscape._transformer import Transformer

# The model classes live in landscape._nets, which imports Flax (about 0.3 s): loaded when a model
# is built, or when landscape.models.MLP (CNN, ResNet) is first looked up (PEP 562).
_NETS = ("CNN", "MLP", "ResNet")

__all__ = [
    "ACTIVATIONS",
    "INITS",
    "CNN",
    "InitSpec",
    "MLP",
    "ResNet",
    "Transformer",
    "get_activation",
    "get_init",
    "make_model",
    "model_names",
    "register_model",
    "resolve_init",
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
def _finish_jit(z, scale, shape):
    n = math.prod(shape)
    return (z[:n] * scale.astype(z.dtype)).reshape(shape)


def _finish(z, scale, shape):
    """The first ``prod(shape)`` draws times ``scale``, shaped. On one CPU device the draws are
    in host memory already: NumPy's correctly rounded multiply gives the same bits as XLA's,
    without a compiled program per parameter shape; elsewhere one small program per shape."""
    if _tree.in_host_memory(z):
        n = math.prod(shape)
        # scale is a device array already (the caller's jnp.asarray(mult, dtype)): its cast
        # to z's dtype is the jitted path's, and the product is correctly rounded in both
        host = np.asarray(z)[:n] * np.asarray(jnp.asarray(scale).astype(z.dtype))
        return _tree.put_like(host.reshape(shape), z)
    return _finish_jit(z, scale, shape)


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
    # the scale-free families: ``sigma_w2`` sets their scale (1 here, without it)
    "normal": variance_scaling(1.0, "fan_in", "normal"),
    "truncated_normal": variance_scaling(1.0, "fan_in", "truncated_normal"),
    "uniform": variance_scaling(1.0, "fan_in", "uniform"),
}

# name -> (distribution, sigma_w2 the name implies, or None for the scale-free families)
_FAMILIES = {
    "normal": ("normal", None),
    "truncated_normal": ("truncated_normal", None),
    "uniform": ("uniform", None),
    "orthogonal": ("orthogonal", None),
}
_SCALED = {
    "lecun_normal": ("truncated_normal", 1.0),
    "lecun_uniform": ("uniform", 1.0),
    "he_normal": ("truncated_normal", 2.0),
    "he_uniform": ("uniform", 2.0),
}
_FAN_AVG = ("glorot_normal", "glorot_uniform", "xavier_normal", "xavier_uniform")


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


def _normal_bias(sigma_b2: float) -> Callable:
    """``N(0, sigma_b2)`` biases, drawn flat like :func:`variance_scaling`."""

    def init(key, shape, dtype=jnp.float32, out_sharding=None):
        shape = tuple(int(d) for d in shape)
        n = max(math.prod(shape), 1)
        z = _flat_draw(key, 1 << (n - 1).bit_length(), "normal", jnp.dtype(dtype))
        return _finish(z, jnp.asarray(math.sqrt(sigma_b2), dtype), shape)

    return init


def _check_variance(value, name: str, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{where}: {name} must be a real number >= 0; got {value!r}.")
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{where}: {name} must be finite and >= 0; got {value!r}.")
    return v


@dataclasses.dataclass(frozen=True)
class InitSpec:
    """How a model initialises its layers, as :func:`resolve_init` decided it.

    Attributes:
      kernel_init, bias_init: initialisers ``(key, shape, dtype) -> array``.
      name: the kernel scheme or family (``"callable"`` for a user's initialiser).
      sigma_w2: the weight variance times the fan-in the kernels are drawn with (the gain
        squared for ``"orthogonal"``); ``None`` where the scheme is not of that form (Glorot,
        zeros, a callable).
      sigma_b2: the bias variance (0: zero biases).
    """

    kernel_init: Callable
    bias_init: Callable
    name: str
    sigma_w2: float | None
    sigma_b2: float

    def target_variance(self, fan_in: int, fan_out: int) -> float:
        """The per-weight variance the scheme targets for a layer with these fans (the
        standardised kernels of ``weight_standardization`` are scaled to it)."""
        if self.name == "zeros":
            return 0.0
        if self.name in _FAN_AVG:
            return 2.0 / max(fan_in + fan_out, 1)
        return (1.0 if self.sigma_w2 is None else self.sigma_w2) / max(fan_in, 1)


def resolve_init(
    init: str | Callable | None,
    sigma_w2: float | None = None,
    sigma_b2: float | None = 0.0,
    *,
    default: str = "lecun_normal",
    use_bias: bool = True,
    where: str | None = None,
) -> InitSpec:
    """The kernel and bias initialisers of ``init`` with the explicit variances ``sigma_w2`` and
    ``sigma_b2`` (the rule is in this module's docstring).

    Args:
      init: scheme or family name (:data:`INITS`), a callable, or ``None`` (``default``
        without ``sigma_w2``, the normal family with it).
      sigma_w2: weight variance times fan-in (``>= 0``), or ``None`` (the scheme's own).
      sigma_b2: bias variance (``>= 0``; ``None`` or 0: zero biases).
      default: the scheme used when neither ``init`` nor ``sigma_w2`` is given.
      use_bias: whether the layers have biases (``sigma_b2 > 0`` needs them).
      where: the public name errors are reported under.

    Returns:
      An :class:`InitSpec`.

    Raises:
      TypeError: a variance that is not a real number.
      ValueError: a negative or non-finite variance, an unknown scheme, or a contradiction
        (``sigma_w2`` with a scheme of another scale, Glorot, zeros or a callable;
        ``sigma_b2 > 0`` without biases).
    """
    where = where or _validate.where("landscape.models")
    sw = _check_variance(sigma_w2, "sigma_w2", where)
    sb = _check_variance(sigma_b2, "sigma_b2", where) or 0.0
    if sb > 0 and not use_bias:
        raise ValueError(
            f"{where}: sigma_b2={sb} needs biases, but this model has none (use_bias=False or "
            "batch norm, whose shift replaces them); pass sigma_b2=0 or enable the biases."
        )
    bias_init = _normal_bias(sb) if sb > 0 else _I.zeros
    if init is None:
        init = default if sw is None else "normal"
    if callable(init):
        if sw is not None:
            raise ValueError(
                f"{where}: sigma_w2 cannot rescale a callable init; pass init='normal' "
                "(or 'truncated_normal', 'uniform', 'orthogonal') with sigma_w2, or scale your "
                "initialiser yourself and leave sigma_w2=None."
            )
        return InitSpec(init, bias_init, "callable", None, sb)
    if not isinstance(init, str) or init not in INITS:
        raise ValueError(f"{where}: unknown init {init!r}; choose from {sorted(INITS)}.")
    families = "init='normal' (or 'truncated_normal', 'uniform', 'orthogonal')"
    if sw is None:
        implied = _SCALED[init][1] if init in _SCALED else (1.0 if init in _FAMILIES else None)
        return InitSpec(INITS[init], bias_init, init, implied, sb)
    if init in _SCALED:
        dist, own = _SCALED[init]
        if sw != own:
            raise ValueError(
                f"{where}: init={init!r} fixes the weight variance at {own:g}/fan_in, which "
                f"contradicts sigma_w2={sw:g}; to set the variance yourself pass {families} "
                f"with sigma_w2, or drop sigma_w2."
            )
        return InitSpec(INITS[init], bias_init, init, own, sb)
    if init in _FAN_AVG:
        raise ValueError(
            f"{where}: init={init!r} scales by 2/(fan_in + fan_out), not sigma_w2/fan_in; pass "
            f"{families} with sigma_w2={sw:g}, or drop sigma_w2."
        )
    if init == "zeros":
        raise ValueError(
            f"{where}: init='zeros' has no scale for sigma_w2={sw:g} to set; drop one of them "
            "(sigma_w2=0 with the default family also gives zero weights)."
        )
    dist = _FAMILIES[init][0]
    kinit = (
        _I.orthogonal(scale=math.sqrt(sw))
        if dist == "orthogonal"
        else variance_scaling(sw, "fan_in", dist)
    )
    return InitSpec(kinit, bias_init, init, sw, sb)


def __getattr__(name: str):
    if name in _NETS:
        from landscape import _nets

        return getattr(_nets, name)
    if name == "Transformer":
        from landscape import _transformer

        return _transformer.Transformer
    raise AttributeError(f"module 'landscape.models' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_NETS) | {"Transformer"})


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


def _build_transformer(input_shape, num_outputs, rngs, **kw):
    from landscape._transformer import Transformer

    return Transformer(input_shape, num_outputs, rngs=rngs, **kw)


_MODELS: dict[str, Callable] = {
    "mlp": _build_mlp,
    "cnn": _build_cnn,
    "resnet": _build_resnet,
    "transformer": _build_transformer,
}


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
        if k == "param_dtype":  # before callable(): jnp.float64 is a callable scalar type
            out[k] = jnp.dtype(v).name
        elif callable(v):
            # a callable is recorded by name only when the registry maps that name back to the
            # same object (jax.nn.gelu is the tanh approximation, the registry's "gelu" is not)
            name = next(
                (n for reg in (ACTIVATIONS, INITS) for n, f in reg.items() if f is v), None
            )
            if name is None:
                raise _NotRebuildable(k)
            out[k] = name
        elif isinstance(v, (tuple, list)):
            out[k] = list(v)
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
    """Build a registered model (``"mlp"``, ``"cnn"``, ``"resnet"``, ``"transformer"``) as a
    model triple.

    Args:
      name: registry name.
      input_shape: shape of one input (no example axis), e.g. ``(64,)`` or ``(8, 8, 1)``.
      num_outputs: number of outputs (classes).
      seed: initialisation seed (``nnx.Rngs(seed)``).
      **kwargs: the model class's settings (``hidden``, ``activation``, ``init``,
        ``sigma_w2``, ``sigma_b2``, ``weight_standardization``, ``batch_norm``, ``skip``, ...; see the module
        docstring for how ``init`` and the variances combine).

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
        if str(e).startswith("landscape"):  # already names the function and the argument
            raise
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
