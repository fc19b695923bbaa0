"""Layer descriptions: one object gives a finite forward pass, its parameters and its
infinite-width kernel transform (the neural-tangents ``stax`` design, in plain dataclasses).

Every layer is a frozen (hashable) dataclass with

* ``out_shape(in_shape)``: the shape of one example after the layer (no batch axis),
* ``param_specs(in_shape)``: its parameters' shapes and scales (empty for parameter-free
  layers; :meth:`ntk.Architecture.init_params` draws all of them at once),
* ``apply(params, x, ctx, path)``: the finite forward pass on a batch ``x`` (NHWC images),
* ``kernel(ks)``: the analytic NNGP/NTK transform of a :class:`KState`.

Parameterisations (Jacot et al. 2018; Sohl-Dickstein et al. 2020), fan-in ``n`` (input
channels times filter size):

* ``"ntk"``: ``W, b ~ N(0, 1)``, ``z = (W_std / sqrt(n)) W h + b_std b``;
  ``Sigma' = W_std^2 K + b_std^2``, ``Theta' = W_std^2 Theta + Sigma'``.
* ``"standard"``: ``W ~ N(0, W_std^2 / n)``, ``b ~ N(0, b_std^2)``, ``z = W h + b``;
  ``Sigma'`` as above, ``Theta' = n K + W_std^2 Theta + [1 if bias]``.

``b_std=None`` means no bias (which also drops the ``+1`` of the standard NTK).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from landscape import expectations
from landscape import validate as _validate
from ntk import _kmath

_HIGHEST = jax.lax.Precision.HIGHEST
PARAMETERIZATIONS = ("ntk", "standard")
PADDINGS = ("SAME", "VALID")


class ArchitectureError(ValueError):
    """An architecture that has no analytic kernel, or inputs that do not fit it."""


# --------------------------------------------------------------------------------------------
# Kernel state
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class KState:
    """Kernels of a pair of input blocks at one point of the network (traced arrays).

    Attributes:
      nngp, ntk: ``(b1, b2, *positions)`` pair kernels.
      s1, s2: ``(b, *positions)`` NNGP of each input with itself (``s2 is None``: the two
        blocks are the same inputs).
      d: number of spatial axes of the activations (0 for vectors).
      mode: ``"none"`` (no positions), ``"diag"`` (``p == p'`` only), ``"band"`` (``p' = p +
        delta`` for ``|delta_k| <= radius[k]``: ``(b1, b2, *positions, *offsets)``) or
        ``"full"`` (``(b1, b2, *positions, *positions)``).
      shape: spatial shape of the activations; width: channels (the fan-in of a Dense layer).
      gaussian: whether the activations are Gaussian (an affine layer was the last to act).
      last: description of the layer that produced this state (for error messages).
    """

    nngp: Any
    ntk: Any
    s1: Any
    s2: Any
    d: int
    mode: str
    shape: tuple
    width: int
    gaussian: bool
    last: str
    radius: tuple = ()

    def replace(self, **kw) -> KState:
        return dataclasses.replace(self, **kw)

    def map(self, pair_fn: Callable, self_fn: Callable | None = None) -> KState:
        """Apply ``pair_fn(arr, nb=2)`` to nngp and ntk and ``self_fn(arr, nb=1)`` to s1, s2."""
        self_fn = self_fn or pair_fn
        return self.replace(
            nngp=pair_fn(self.nngp, 2),
            ntk=pair_fn(self.ntk, 2),
            s1=self_fn(self.s1, 1),
            s2=None if self.s2 is None else self_fn(self.s2, 1),
        )

    # variances broadcast against the pair and self arrays -------------------------------
    def _var(self, s):
        if self.mode == "full":
            return _kmath.spatial_diagonal(s, 1, self.d)
        if self.mode == "band":
            return _kmath.band_center(s, self.radius)
        return s

    def pair_vars(self):
        v1 = self._var(self.s1)
        v2 = v1 if self.s2 is None else self._var(self.s2)
        if self.mode == "band":
            d = self.d
            v1 = v1.reshape(v1.shape[:1] + (1,) + v1.shape[1:] + (1,) * d)
            v2 = _kmath.band_shift(v2, 1, d, self.radius)  # the partner's variance
            return v1, v2[None]
        if self.mode == "full":
            d = self.d
            v1 = v1.reshape(v1.shape[:1] + (1,) + v1.shape[1:] + (1,) * d)
            v2 = v2.reshape((1,) + v2.shape[:1] + (1,) * d + v2.shape[1:])
        else:
            v1 = v1.reshape(v1.shape[:1] + (1,) + v1.shape[1:])
            v2 = v2.reshape((1,) + v2.shape)
        return v1, v2

    def self_vars(self, s):
        v = self._var(s)
        if self.mode == "band":
            return v.reshape(v.shape + (1,) * self.d), _kmath.band_shift(v, 1, self.d, self.radius)
        if self.mode == "full":
            d = self.d
            return v.reshape(v.shape + (1,) * d), v.reshape(v.shape[:1] + (1,) * d + v.shape[1:])
        return v, v


def _err(msg: str):
    return ArchitectureError(f"{_validate.where('ntk')}: {msg}")


# --------------------------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------------------------
class Layer:
    """Base class of layer descriptions."""

    kind: ClassVar[str] = "layer"
    has_params: ClassVar[bool] = False
    spatial: ClassVar[bool] = False  # needs spatial axes

    def describe(self) -> str:
        fields = [f for f in dataclasses.fields(self) if f.repr]
        args = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields)
        return f"{type(self).__name__}({args})"

    def __repr__(self):
        return self.describe()

    def out_shape(self, in_shape: tuple) -> tuple:
        return in_shape

    def param_specs(self, in_shape: tuple) -> dict:
        """``{name: (shape, scale)}`` of the parameters: each is ``scale`` times a standard
        normal draw (empty for parameter-free layers)."""
        return {}

    def apply(self, params, x, ctx=None, path: str = ""):
        raise NotImplementedError

    def kernel(self, ks: KState) -> KState:
        raise NotImplementedError

    def needs_full(self) -> bool:
        return False

    def needs_band(self) -> bool:
        return False

    def band_need(self, r):
        """Offset radius needed at this layer's input for radius ``r`` at its output (``r``:
        per-axis tuple, or ``0`` for no positions kept beyond ``p == p'``)."""
        return r

    def affine_layers(self, path: str):
        return []

    def masked(self, ks, a, nb):
        """A band array with the entries whose partner position does not exist set to zero
        (they hold unused values; ``where``, not a product, so infinities cannot leak)."""
        m = _kmath.band_mask(ks.shape, ks.radius)
        return jnp.where(m.reshape((1,) * nb + m.shape), a, jnp.zeros((), a.dtype))


# --------------------------------------------------------------------------------------------
# Affine layers
# --------------------------------------------------------------------------------------------
def _check_param(name, parameterization, W_std, b_std):
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(
            f"ntk.{name}: parameterization must be 'ntk' or 'standard'; got {parameterization!r}."
        )
    if not (isinstance(W_std, (int, float)) and math.isfinite(W_std) and W_std >= 0):
        raise ValueError(f"ntk.{name}: W_std must be a finite number >= 0; got {W_std!r}.")
    if b_std is not None and not (
        isinstance(b_std, (int, float)) and math.isfinite(b_std) and b_std >= 0
    ):
        raise ValueError(
            f"ntk.{name}: b_std must be None (no bias) or a number >= 0; got {b_std!r}."
        )


class _Affine(Layer):
    has_params: ClassVar[bool] = True

    def _fan_in(self, in_shape) -> int:
        raise NotImplementedError

    def coefs(self, fan_in: int) -> tuple[float, float]:
        """(weight coefficient, bias coefficient) of the finite layer's pre-activation."""
        if self.parameterization == "ntk":
            return self.W_std / math.sqrt(fan_in), (self.b_std or 0.0)
        return 1.0, 1.0

    def _specs_wb(self, wshape, fan_in):
        std = self.parameterization == "standard"
        p = {"kernel": (tuple(wshape), self.W_std / math.sqrt(fan_in) if std else 1.0)}
        if self.b_std is not None:
            p["bias"] = (tuple(wshape[-1:]), float(self.b_std) if std else 1.0)
        return p

    def _finish(self, params, z, x, ctx, path, fan_in):
        wc, bc = self.coefs(fan_in)
        if wc != 1.0:
            z = z * jnp.asarray(wc, z.dtype)
        if self.b_std is not None:
            b = params["bias"].reshape((1,) * (z.ndim - 1) + (-1,))
            z = z + (b * jnp.asarray(bc, z.dtype) if bc != 1.0 else b)
        if ctx is not None:
            z = ctx.record(path, self, x, z)
        return z

    def _affine_kernel(self, ks: KState, window_fn) -> KState:
        fan_in = ks.width * self._filter_size()
        wv = float(self.W_std) ** 2
        bv = 0.0 if self.b_std is None else float(self.b_std) ** 2
        k_in = window_fn(ks.nngp, 2)
        t_in = window_fn(ks.ntk, 2)
        s1 = window_fn(ks.s1, 1)
        s2 = None if ks.s2 is None else window_fn(ks.s2, 1)
        nngp = wv * k_in + bv
        if self.parameterization == "ntk":
            ntk = wv * t_in + nngp
        else:
            ntk = fan_in * k_in + wv * t_in + (1.0 if self.b_std is not None else 0.0)
        return ks.replace(
            nngp=nngp,
            ntk=ntk,
            s1=wv * s1 + bv,
            s2=None if s2 is None else wv * s2 + bv,
            gaussian=True,
            last=self.describe(),
        )

    def _filter_size(self) -> int:
        return 1

    def affine_layers(self, path: str):
        return [(path, self)]


@dataclasses.dataclass(frozen=True, repr=False)
class Dense(_Affine):
    """Fully connected layer acting on the last (channel) axis.

    Args:
      width: output channels.
      W_std: weight standard deviation (``sigma_w``).
      b_std: bias standard deviation (``sigma_b``); ``None`` (default): no bias.
      parameterization: ``"ntk"`` (default) or ``"standard"``; see the module docstring.

    Parameters: ``{"kernel": (fan_in, width), "bias": (width,)}``.
    """

    width: int
    W_std: float = 1.0
    b_std: float | None = None
    parameterization: str = "ntk"
    kind: ClassVar[str] = "dense"

    def __post_init__(self):
        if isinstance(self.width, bool) or not isinstance(self.width, int) or self.width <= 0:
            raise ValueError(f"ntk.Dense: width must be a positive int; got {self.width!r}.")
        _check_param("Dense", self.parameterization, self.W_std, self.b_std)

    def out_shape(self, in_shape):
        return tuple(in_shape[:-1]) + (self.width,)

    def param_specs(self, in_shape):
        return self._specs_wb((in_shape[-1], self.width), in_shape[-1])

    def apply(self, params, x, ctx=None, path=""):
        z = jnp.matmul(x, params["kernel"], precision=_HIGHEST)
        return self._finish(params, z, x, ctx, path, x.shape[-1])

    def kernel(self, ks):
        return self._affine_kernel(ks, lambda a, nb: a)

    def patches(self, h):
        """Inputs seen by each output position: ``(b, positions, fan_in)``."""
        return h.reshape(h.shape[0], -1, h.shape[-1])


def _norm_tuple(v, d, name, what):
    if v is None:
        return None
    if isinstance(v, int) and not isinstance(v, bool):
        v = (v,) * d
    v = tuple(v)
    if len(v) != d or not all(isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in v):
        raise ValueError(f"ntk.{name}: {what} must be {d} positive ints; got {v!r}.")
    return v


def _dim_numbers(d: int):
    sp = "DHW"[-d:] if d <= 3 else None
    if sp is None:
        raise ValueError(f"ntk: at most 3 spatial dimensions are supported; got {d}.")
    return ("N" + sp + "C", sp + "IO", "N" + sp + "C")


@dataclasses.dataclass(frozen=True, repr=False)
class Conv(_Affine):
    """Convolution over NHWC (or NWC, NDHWC) inputs with HWIO filters, shared weights.

    Args:
      channels: output channels.
      filter_shape: e.g. ``(3, 3)``; its length is the number of spatial axes.
      strides: default ``(1, ..., 1)``.
      padding: ``"VALID"`` (default) or ``"SAME"`` (zero padding).
      W_std, b_std, parameterization: as :class:`Dense`; the fan-in is
        ``in_channels * prod(filter_shape)``.

    Parameters: ``{"kernel": (*filter_shape, in_channels, channels), "bias": (channels,)}``.
    The kernel transform averages the input covariance over the filter offsets, the same
    offset for both positions: ``Sigma'[p, p'] = W_std^2 mean_d K[s p + d, s p' + d] + b_std^2``
    (zero padding counted, as in the finite network).
    """

    channels: int
    filter_shape: tuple = (3, 3)
    strides: tuple | None = None
    padding: str = "VALID"
    W_std: float = 1.0
    b_std: float | None = None
    parameterization: str = "ntk"
    kind: ClassVar[str] = "conv"
    spatial: ClassVar[bool] = True

    def __post_init__(self):
        if (
            isinstance(self.channels, bool)
            or not isinstance(self.channels, int)
            or self.channels <= 0
        ):
            raise ValueError(f"ntk.Conv: channels must be a positive int; got {self.channels!r}.")
        fs = _norm_tuple(
            self.filter_shape,
            len(tuple(self.filter_shape)) if not isinstance(self.filter_shape, int) else 1,
            "Conv",
            "filter_shape",
        )
        object.__setattr__(self, "filter_shape", fs)
        st = _norm_tuple(self.strides, len(fs), "Conv", "strides") or (1,) * len(fs)
        object.__setattr__(self, "strides", st)
        if self.padding not in PADDINGS:
            raise ValueError(f"ntk.Conv: padding must be 'SAME' or 'VALID'; got {self.padding!r}.")
        _check_param("Conv", self.parameterization, self.W_std, self.b_std)

    @property
    def d(self) -> int:
        return len(self.filter_shape)

    def _filter_size(self):
        return math.prod(self.filter_shape)

    def out_shape(self, in_shape):
        sp = in_shape[:-1]
        if len(sp) != self.d:
            raise _err(f"{self.describe()} needs inputs with {self.d} spatial axes "
                f"(NHWC for 2-D filters); got examples of shape {tuple(in_shape)}.",
            )
        out = []
        for L, q, s in zip(sp, self.filter_shape, self.strides):
            o, _, _ = _kmath.window_geometry(L, q, s, self.padding)
            if o <= 0:
                raise _err(f"{self.describe()}: spatial size {L} is smaller than the filter "
                    f"{q} with VALID padding; use padding='SAME' or larger inputs.",
                )
            out.append(o)
        return tuple(out) + (self.channels,)

    def param_specs(self, in_shape):
        fan_in = in_shape[-1] * self._filter_size()
        return self._specs_wb(self.filter_shape + (in_shape[-1], self.channels), fan_in)

    def apply(self, params, x, ctx=None, path=""):
        w = params["kernel"]
        z = jax.lax.conv_general_dilated(
            x,
            w,
            self.strides,
            self.padding,
            dimension_numbers=_dim_numbers(self.d),
            precision=_HIGHEST,
        )
        return self._finish(params, z, x, ctx, path, x.shape[-1] * self._filter_size())

    def patches(self, h):
        """Inputs seen by each output position, ``(b, positions, fan_in)``, gathered by strided
        slices of the zero-padded input (a copy, no arithmetic: XLA's
        ``conv_general_dilated_patches`` is a convolution with a one-hot filter costing
        ``fan_in^2`` multiply-adds per position). The fan-in order (filter offset, then input
        channel) is the HWIO kernel's, though only inner products of patches are used."""
        d = self.d
        cfg = [(0, 0)]
        outs = []
        for k in range(d):
            o, lo, hi = _kmath.window_geometry(
                h.shape[1 + k], self.filter_shape[k], self.strides[k], self.padding
            )
            cfg.append((lo, hi))
            outs.append(o)
        hp = jnp.pad(h, cfg + [(0, 0)]) if any(c != (0, 0) for c in cfg) else h
        cols = []
        for offset in itertools.product(*(range(q) for q in self.filter_shape)):
            sl = hp
            for k in range(d):
                sl = _kmath._slice(sl, 1 + k, offset[k], outs[k], self.strides[k])
            cols.append(sl)
        p = jnp.stack(cols, axis=-2)  # (b, *out, offsets, C)
        return p.reshape(p.shape[0], math.prod(outs), -1)

    def kernel(self, ks):
        if ks.mode == "none" or ks.d != self.d:
            raise _err(f"{self.describe()} needs {self.d} spatial axes; got {ks.d} after {ks.last}."
            )
        d = ks.d
        shape = self.out_shape(ks.shape + (ks.width,))
        r_out = ()
        if ks.mode == "band":
            r_out = tuple(
                min(r // s, o - 1) for r, s, o in zip(ks.radius, self.strides, shape[:-1])
            )

        def window(a, nb):
            if ks.mode == "band":
                a = self.masked(ks, a, nb)
            for k in range(d):
                q, s = self.filter_shape[k], self.strides[k]
                if ks.mode == "full":
                    a = _kmath.diag_window_mean(a, nb + k, nb + d + k, q, s, self.padding)
                elif ks.mode == "band":
                    a = _kmath.band_conv(a, nb, d, k, q, s, self.padding, ks.radius[k], r_out[k])
                else:
                    a = _kmath.window_mean(a, nb + k, q, s, self.padding)
            return a

        out = self._affine_kernel(ks, window)
        return out.replace(shape=shape[:-1], width=self.channels, radius=r_out)

    def band_need(self, r):
        return tuple(s * (r if isinstance(r, int) else r[k]) for k, s in enumerate(self.strides))


# patch the Dense kernel to update width (kept separate for readability)
def _dense_kernel(self, ks):
    return self._affine_kernel(ks, lambda a, nb: a).replace(width=self.width)


Dense.kernel = _dense_kernel


# --------------------------------------------------------------------------------------------
# Elementwise nonlinearities
# --------------------------------------------------------------------------------------------
class _Activation(Layer):
    kind: ClassVar[str] = "act"

    def act(self, x):
        raise NotImplementedError

    def transform(self):
        """``(c, v1, v2) -> (K, Kdot)``."""
        raise NotImplementedError

    def apply(self, params, x, ctx=None, path=""):
        return self.act(x)

    def kernel(self, ks):
        if not ks.gaussian:
            raise _err(f"{self.describe()} needs a Gaussian input for its analytic kernel "
                f"(a Dense or Conv layer right before it); got the output of {ks.last}.",
            )
        f = self.transform()
        v1, v2 = ks.pair_vars()
        nngp, kdot = f(ks.nngp, v1, v2)
        ntk = kdot * ks.ntk

        def selfk(s):
            a, b = ks.self_vars(s)
            return f(s, a, b)[0]

        return ks.replace(
            nngp=nngp,
            ntk=ntk,
            s1=selfk(ks.s1),
            s2=None if ks.s2 is None else selfk(ks.s2),
            gaussian=False,
            last=self.describe(),
        )


class _ABFamily(_Activation):
    def ab(self) -> tuple[float, float]:
        raise NotImplementedError

    def act(self, x):
        a, b = self.ab()
        return a * jnp.minimum(x, 0) + b * jnp.maximum(x, 0)

    def transform(self):
        a, b = (float(v) for v in self.ab())
        return lambda c, v1, v2: _kmath.abrelu(c, v1, v2, a, b)


@dataclasses.dataclass(frozen=True, repr=False)
class ABRelu(_ABFamily):
    """``a min(x, 0) + b max(x, 0)``; closed-form arc-cosine kernels (Cho & Saul 2009):
    ``K = (a-b)^2/(2 pi) sqrt(v1 v2 - c^2) + Kdot c``,
    ``Kdot = (a^2+b^2)/2 - (a-b)^2 theta/(2 pi)``, ``theta = atan2(sqrt(v1 v2 - c^2), c)``."""

    a: float
    b: float

    def ab(self):
        return self.a, self.b


@dataclasses.dataclass(frozen=True, repr=False)
class Relu(_ABFamily):
    """ReLU; kernel: order-1 arc-cosine ``K``, order-0 ``Kdot = (pi - theta)/(2 pi)``."""

    def ab(self):
        return 0.0, 1.0

    def act(self, x):
        return jnp.maximum(x, 0)


@dataclasses.dataclass(frozen=True, repr=False)
class LeakyRelu(_ABFamily):
    """``alpha min(x, 0) + max(x, 0)`` (ABReLU with ``a = alpha, b = 1``)."""

    alpha: float = 0.01

    def ab(self):
        return self.alpha, 1.0


@dataclasses.dataclass(frozen=True, repr=False)
class Erf(_Activation):
    """``a erf(b x) + c``; arcsine kernel (Williams 1997)."""

    a: float = 1.0
    b: float = 1.0
    c: float = 0.0

    def act(self, x):
        return self.a * jax.scipy.special.erf(self.b * x) + self.c

    def transform(self):
        a, b, c = float(self.a), float(self.b), float(self.c)
        return lambda cc, v1, v2: _kmath.erf(cc, v1, v2, a, b, c)


@dataclasses.dataclass(frozen=True, repr=False)
class Gelu(_Activation):
    """Exact GELU ``x Phi(x)``; closed form of Tsuchida et al. (2020)."""

    def act(self, x):
        return jax.nn.gelu(x, approximate=False)

    def transform(self):
        return _kmath.gelu


@dataclasses.dataclass(frozen=True, repr=False)
class Elementwise(_Activation):
    """Any elementwise function ``fn`` (tanh, sigmoid, swish, ...).

    The kernel is ``nngp_fn(c, v1, v2)`` when given in closed form (``Kdot = dK/dc`` by
    autodiff), otherwise two-dimensional Gauss-Hermite quadrature of degree ``deg``
    (:func:`landscape.expectations.pair_expectations`; cost ``deg^2`` evaluations of ``fn``
    per kernel entry, memory ``deg`` times the block; exact for polynomials of degree below
    ``2 deg``; measured against closed forms: erf and GELU to
    1e-8 or better at ``deg=128`` (erf at ``deg=64``: 1e-8 for pre-activation variance 1, only
    4e-5 at variance 2.5 where erf is nearly a step), ReLU only about 2e-3 at ``deg=200``
    because of its kink).

    Args:
      fn: elementwise ``jax.numpy`` function (hashable: a module-level function).
      nngp_fn: optional closed form ``(c12, v1, v2) -> E[fn(u) fn(v)]``.
      deg: quadrature degree.
    """

    fn: Callable = None  # type: ignore[assignment]
    nngp_fn: Callable | None = None
    deg: int = 128

    def __post_init__(self):
        if not callable(self.fn):
            raise TypeError(f"ntk.Elementwise: fn must be callable; got {type(self.fn).__name__}.")
        if self.nngp_fn is not None and not callable(self.nngp_fn):
            raise TypeError("ntk.Elementwise: nngp_fn must be callable or None.")
        if isinstance(self.deg, bool) or not isinstance(self.deg, int) or self.deg < 1:
            raise ValueError(f"ntk.Elementwise: deg must be a positive int; got {self.deg!r}.")

    def describe(self):
        name = getattr(self.fn, "__name__", repr(self.fn))
        return (
            f"Elementwise({name}, deg={self.deg})"
            if self.nngp_fn is None
            else f"Elementwise({name}, closed form)"
        )

    def act(self, x):
        return self.fn(x)

    def transform(self):
        if self.nngp_fn is not None:
            return _kmath.from_nngp_fn(self.nngp_fn)
        # K = E[fn(u) fn(u')] and Kdot = E[fn'(u) fn'(u')] in one quadrature pass
        dfn = jnp.vectorize(jax.grad(lambda t: self.fn(t)))
        pairs, deg = ((self.fn, self.fn), (dfn, dfn)), self.deg
        return lambda c, v1, v2: expectations.pair_expectations(pairs, c, v1, v2, deg=deg)


# --------------------------------------------------------------------------------------------
# Pooling, readouts, normalisation
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, repr=False)
class AvgPool(Layer):
    """Average pooling over windows (zero padding with ``"SAME"``, divided by the window size:
    neural-tangents' ``normalize_edges=False``).

    Kernel: ``K'[p, p'] = mean_{d, d'} K[s p + d, s p' + d']`` (independent offsets), so it
    needs the position pairs up to a window apart: with a Flatten readout (no GlobalAvgPool
    anywhere) the analytic kernel keeps only the band of pairs ``p' = p + delta`` with
    ``|delta_k| <= r_k`` that the layers after it need (``r = 0`` after the last pooling,
    ``s r + q - 1`` before an AvgPool of window ``q`` and stride ``s``, ``s r`` before a
    strided Conv), so the cost is the number of positions times ``prod_k (2 r_k + 1)``
    instead of positions squared. With a GlobalAvgPool anywhere the full position-position
    covariance is kept (cost quadratic in positions).
    """

    window: tuple = (2, 2)
    strides: tuple | None = None
    padding: str = "VALID"
    kind: ClassVar[str] = "avgpool"
    spatial: ClassVar[bool] = True

    def __post_init__(self):
        w = self.window
        w = (w,) if isinstance(w, int) else tuple(w)
        w = _norm_tuple(w, len(w), "AvgPool", "window")
        object.__setattr__(self, "window", w)
        st = _norm_tuple(self.strides, len(w), "AvgPool", "strides") or (1,) * len(w)
        object.__setattr__(self, "strides", st)
        if self.padding not in PADDINGS:
            raise ValueError(
                f"ntk.AvgPool: padding must be 'SAME' or 'VALID'; got {self.padding!r}."
            )

    def needs_band(self):
        return True

    def band_need(self, r):
        return tuple(
            s * (r if isinstance(r, int) else r[k]) + q - 1
            for k, (q, s) in enumerate(zip(self.window, self.strides))
        )

    def out_shape(self, in_shape):
        sp = in_shape[:-1]
        if len(sp) != len(self.window):
            raise _err(f"{self.describe()} needs inputs with {len(self.window)} spatial axes; "
                f"got examples of shape {tuple(in_shape)}.",
            )
        out = []
        for L, q, s in zip(sp, self.window, self.strides):
            o, _, _ = _kmath.window_geometry(L, q, s, self.padding)
            if o <= 0:
                raise _err(f"{self.describe()}: spatial size {L} is smaller than the window {q}."
                )
            out.append(o)
        return tuple(out) + (in_shape[-1],)

    def apply(self, params, x, ctx=None, path=""):
        for k, (q, st) in enumerate(zip(self.window, self.strides)):
            x = _kmath.window_mean(x, 1 + k, q, st, self.padding)
        return x

    def kernel(self, ks):
        if ks.mode not in ("full", "band") or ks.d != len(self.window):
            raise _err(f"{self.describe()} needs {len(self.window)} spatial axes; "
                f"got {ks.d} after {ks.last}.",
            )
        d = ks.d
        shape = self.out_shape(ks.shape + (ks.width,))[:-1]
        if ks.mode == "band":
            r_out = []
            for r, q, s, o in zip(ks.radius, self.window, self.strides, shape):
                if r < q - 1 and o > 1:  # pragma: no cover - guarded by band_need
                    raise _err(f"{self.describe()}: internal error, band radius {r} < {q - 1}."
                    )
                r_out.append(min(max(r - (q - 1), 0) // s, o - 1))
            r_out = tuple(r_out)

            def pool(a, nb):
                a = self.masked(ks, a, nb)
                for k in range(d):
                    q, s = self.window[k], self.strides[k]
                    a = _kmath.band_pool(a, nb, d, k, q, s, self.padding, ks.radius[k], r_out[k])
                return a

            return ks.map(pool).replace(shape=shape, radius=r_out, last=self.describe())

        def pool(a, nb):
            for ax in range(2 * d):
                k = ax % d
                a = _kmath.window_mean(a, nb + ax, self.window[k], self.strides[k], self.padding)
            return a

        return ks.map(pool).replace(shape=shape, last=self.describe())


@dataclasses.dataclass(frozen=True, repr=False)
class GlobalAvgPool(Layer):
    """Mean over all spatial positions. Kernel: ``mean_{p, p'} K[p, p']``, so it needs the
    full position-position covariance (cost quadratic in the number of positions)."""

    kind: ClassVar[str] = "gap"
    spatial: ClassVar[bool] = True

    def needs_full(self):
        return True

    def out_shape(self, in_shape):
        if len(in_shape) < 2:
            raise _err("GlobalAvgPool() needs inputs with spatial axes; "
                f"got examples of shape {tuple(in_shape)}.",
            )
        return (in_shape[-1],)

    def apply(self, params, x, ctx=None, path=""):
        return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))

    def kernel(self, ks):
        if ks.mode != "full":
            raise _err(f"GlobalAvgPool() needs spatial axes; got none after {ks.last}.")
        d = ks.d

        def gap(a, nb):
            return jnp.mean(a, axis=tuple(range(nb, nb + 2 * d)))

        return ks.map(gap).replace(mode="none", d=0, shape=(), last="GlobalAvgPool()")


@dataclasses.dataclass(frozen=True, repr=False)
class Flatten(Layer):
    """Flatten all non-batch axes. Kernel: mean of the position diagonal ``mean_p K[p, p]``,
    which needs only ``p == p'`` entries: a Conv stack read out by Flatten costs time linear
    in the number of positions (the "CNN-V" kernel)."""

    kind: ClassVar[str] = "flatten"

    def out_shape(self, in_shape):
        return (math.prod(in_shape),)

    def apply(self, params, x, ctx=None, path=""):
        return x.reshape(x.shape[0], -1)

    def kernel(self, ks):
        if ks.mode == "none":
            return ks
        d = ks.d

        def flat(a, nb):
            if ks.mode == "full":
                a = _kmath.spatial_diagonal(a, nb, d)
            elif ks.mode == "band":
                a = _kmath.band_center(a, ks.radius)
            return jnp.mean(a, axis=tuple(range(nb, nb + d)))

        return ks.map(flat).replace(
            mode="none",
            d=0,
            shape=(),
            radius=(),
            width=ks.width * math.prod(ks.shape),
            last="Flatten()",
        )

    def band_need(self, r):
        return 0


@dataclasses.dataclass(frozen=True, repr=False)
class LayerNorm(Layer):
    """Normalise each position over channels: ``(x - mean) / sqrt(var + eps)`` (no learnable
    scale or shift). Kernel (Gaussian inputs only): ``K[p, p'] / sqrt((K(x,x)[p,p] + eps)
    (K(x',x')[p',p'] + eps))``, the NTK scaled alike. Only ``axis=-1`` (channels)."""

    axis: int = -1
    eps: float = 1e-12
    kind: ClassVar[str] = "layernorm"

    def __post_init__(self):
        ax = self.axis
        if isinstance(ax, (tuple, list)):
            ax = tuple(ax)
            if ax not in ((-1,),):
                raise ArchitectureError(
                    f"ntk.LayerNorm: only axis=-1 (channels) is supported; got {self.axis!r} "
                    "(normalising over spatial axes is not implemented)."
                )
            object.__setattr__(self, "axis", -1)
        elif ax != -1:
            raise ArchitectureError(
                f"ntk.LayerNorm: only axis=-1 (channels) is supported; got {self.axis!r}."
            )
        if not (isinstance(self.eps, (int, float)) and self.eps >= 0):
            raise ValueError(f"ntk.LayerNorm: eps must be a number >= 0; got {self.eps!r}.")

    def apply(self, params, x, ctx=None, path=""):
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.var(x, axis=-1, keepdims=True)
        return (x - mean) / jnp.sqrt(var + jnp.asarray(self.eps, x.dtype))

    def kernel(self, ks):
        if not ks.gaussian:
            raise _err(f"{self.describe()} has an analytic kernel only for Gaussian inputs "
                f"(a Dense or Conv layer right before it); got the output of {ks.last}.",
            )
        eps = float(self.eps)
        v1, v2 = ks.pair_vars()
        norm = jnp.sqrt((v1 + eps) * (v2 + eps))

        def selfk(s):
            a, b = ks.self_vars(s)
            return s / jnp.sqrt((a + eps) * (b + eps))

        return ks.replace(
            nngp=ks.nngp / norm,
            ntk=ks.ntk / norm,
            s1=selfk(ks.s1),
            s2=None if ks.s2 is None else selfk(ks.s2),
            last=self.describe(),
        )


@dataclasses.dataclass(frozen=True, repr=False)
class Identity(Layer):
    """The identity (the skip branch of a residual block)."""

    kind: ClassVar[str] = "identity"

    def apply(self, params, x, ctx=None, path=""):
        return x

    def kernel(self, ks):
        return ks
