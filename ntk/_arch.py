"""Architectures: ``serial`` and ``parallel`` compositions of layer descriptions.

One description gives (a) a Flax NNX model at its finite widths (``arch.module``,
``arch.init`` -> the foundation's model triple) and (b) its infinite-width NNGP and NTK
(``arch.kernel_fn``: the whole recursion, traceable). Blocking, sharding and resumption sit
above it in :func:`ntk.kernel` (``ntk/_analytic.py``), which this module does not import.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from landscape import NNXApply, engine, from_nnx
from landscape import validate as _validate
from ntk import _kmath, _layers
from ntk._layers import ArchitectureError, KState, Layer


class _Ctx:
    """Records the input and output (pre-activation) of every affine layer and adds zero
    probes to the outputs of the layers in ``probes`` (used by the structured empirical NTK:
    the probes' cotangents are the back-propagated signals)."""

    def __init__(self, probes=None):
        self.probes = probes
        self.inputs: dict = {}
        self.outputs: dict = {}
        self.zshapes: dict = {}

    def record(self, path, layer, x, z):
        self.inputs[path] = x
        self.outputs[path] = z
        self.zshapes[path] = jax.ShapeDtypeStruct(z.shape, z.dtype)
        if self.probes is not None and path in self.probes:
            z = z + self.probes[path]
        return z


def _child_name(layer: Layer, i: int) -> str:
    return f"{layer.kind}_{i}"


@dataclasses.dataclass(frozen=True, repr=False)
class Serial(Layer):
    """Layers applied one after the other. Build with :func:`ntk.serial`."""

    layers: tuple
    kind: ClassVar[str] = "serial"

    @property
    def has_params(self) -> bool:  # type: ignore[override]
        return any(getattr(l, "has_params", False) for l in self.layers)

    def describe(self):
        return "serial(" + ", ".join(l.describe() for l in self.layers) + ")"

    def needs_full(self):
        return any(l.needs_full() for l in self.layers)

    def needs_band(self):
        return any(l.needs_band() for l in self.layers)

    def band_need(self, r):
        for l in reversed(self.layers):
            r = l.band_need(r)
        return r

    def uses_spatial(self) -> bool:
        return any(_uses_spatial(l) for l in self.layers)

    def out_shape(self, in_shape):
        s = tuple(in_shape)
        for l in self.layers:
            s = l.out_shape(s)
        return s

    def param_specs(self, in_shape):
        specs = {}
        s = tuple(in_shape)
        for i, l in enumerate(self.layers):
            if l.has_params:
                specs[_child_name(l, i)] = l.param_specs(s)
            s = l.out_shape(s)
        return specs

    def init(self, key, in_shape, dtype):
        """Parameters drawn inside compiled code (equal to :meth:`Architecture.init_params`)."""
        specs = self.param_specs(tuple(in_shape))
        chunks = jnp.arange(_num_chunks(specs), dtype=jnp.uint32)
        flat = jax.vmap(lambda i: _normal_chunk(key, i, dtype))(chunks).reshape(-1)
        return _unflatten_draw(specs, flat, jnp)

    def apply(self, params, x, ctx=None, path=""):
        for i, l in enumerate(self.layers):
            name = _child_name(l, i)
            p = params.get(name) if l.has_params else None
            x = l.apply(p, x, ctx, f"{path}/{name}" if path else name)
        return x

    def kernel(self, ks):
        for l in self.layers:
            ks = l.kernel(ks)
        return ks

    def affine_layers(self, path: str = ""):
        out = []
        for i, l in enumerate(self.layers):
            name = _child_name(l, i)
            out += l.affine_layers(f"{path}/{name}" if path else name)
        return out


def _uses_spatial(l) -> bool:
    if isinstance(l, (Serial, Parallel)):
        return l.uses_spatial()
    return bool(getattr(l, "spatial", False))


def _ends_affine(l) -> bool:
    """Whether the output of ``l`` is an affine layer's output (followed only by linear,
    parameter-free layers), so it is independent of any other branch in the limit."""
    if isinstance(l, _layers._Affine):
        return True
    if isinstance(l, Serial):
        for sub in reversed(l.layers):
            if isinstance(sub, (_layers.AvgPool, _layers.GlobalAvgPool, _layers.Flatten)):
                continue
            return _ends_affine(sub)
    if isinstance(l, Parallel):
        return all(_ends_affine(b) for b in l.branches)
    return False


@dataclasses.dataclass(frozen=True, repr=False)
class Parallel(Layer):
    """Branches applied to the same input, outputs summed (residual blocks). Build with
    :func:`ntk.parallel` or :func:`ntk.residual`.

    The kernel of the sum is the sum of the branch kernels when the branches are independent
    in the infinite-width limit: every branch but one must end in a Dense or Conv layer with
    fresh weights (optionally followed by pooling or Flatten).
    """

    branches: tuple
    kind: ClassVar[str] = "parallel"

    def __post_init__(self):
        if len(self.branches) < 1:
            raise ValueError("ntk.parallel: needs at least one branch.")
        free = [i for i, b in enumerate(self.branches) if not _ends_affine(b)]
        if len(free) > 1:
            raise ArchitectureError(
                f"ntk.parallel: branches {free} do not end in a Dense or Conv layer; the kernel "
                "of a sum is the sum of the branch kernels only when the branches are "
                "independent, so at most one branch (the skip connection) may end otherwise."
            )

    @property
    def has_params(self) -> bool:  # type: ignore[override]
        return any(getattr(b, "has_params", False) for b in self.branches)

    def describe(self):
        return "parallel(" + ", ".join(b.describe() for b in self.branches) + ")"

    def needs_full(self):
        return any(b.needs_full() for b in self.branches)

    def needs_band(self):
        return any(b.needs_band() for b in self.branches)

    def band_need(self, r):
        rs = [b.band_need(r) for b in self.branches]
        tup = [x for x in rs if not isinstance(x, int)]
        if not tup:
            return max(rs)
        d = len(tup[0])
        rs = [(x,) * d if isinstance(x, int) else x for x in rs]
        return tuple(max(x[k] for x in rs) for k in range(d))

    def uses_spatial(self) -> bool:
        return any(_uses_spatial(b) for b in self.branches)

    def out_shape(self, in_shape):
        shapes = [b.out_shape(in_shape) for b in self.branches]
        if len(set(shapes)) != 1:
            raise ArchitectureError(
                f"{_validate.where('ntk')}: the branches of {self.describe()} give different output shapes {shapes}; "
                "a sum needs equal shapes."
            )
        return shapes[0]

    def param_specs(self, in_shape):
        return {
            f"branch_{i}": b.param_specs(in_shape)
            for i, b in enumerate(self.branches)
            if b.has_params
        }

    def apply(self, params, x, ctx=None, path=""):
        out = None
        for i, b in enumerate(self.branches):
            name = f"branch_{i}"
            y = b.apply(
                params.get(name) if b.has_params else None,
                x,
                ctx,
                f"{path}/{name}" if path else name,
            )
            out = y if out is None else out + y
        return out

    def kernel(self, ks):
        outs = [b.kernel(ks) for b in self.branches]
        if outs[0].mode == "band":  # keep the offsets every branch has
            radius = tuple(min(o.radius[k] for o in outs) for k in range(outs[0].d))
            outs = [_band_truncate(o, radius) for o in outs]
        first = outs[0]
        for o in outs[1:]:
            if (o.mode, o.shape, o.width) != (first.mode, first.shape, first.width):
                raise ArchitectureError(
                    f"{_validate.where('ntk')}: the branches of {self.describe()} give different output shapes."
                )

        def add(attr):
            vals = [getattr(o, attr) for o in outs]
            if vals[0] is None:
                return None
            return sum(vals[1:], vals[0])

        return first.replace(
            nngp=add("nngp"),
            ntk=add("ntk"),
            s1=add("s1"),
            s2=add("s2"),
            gaussian=all(o.gaussian for o in outs),
            last=self.describe(),
        )

    def affine_layers(self, path: str = ""):
        out = []
        for i, b in enumerate(self.branches):
            name = f"branch_{i}"
            out += b.affine_layers(f"{path}/{name}" if path else name)
        return out


def _band_truncate(ks: KState, radius: tuple) -> KState:
    if ks.radius == radius:
        return ks
    d = ks.d

    def cut(a, nb):
        for k in range(d):
            r0, r = ks.radius[k], radius[k]
            a = jax.lax.slice_in_dim(a, r0 - r, r0 + r + 1, axis=nb + d + k)
        return a

    return ks.map(cut).replace(radius=radius)


def _as_layer(l):
    if isinstance(l, Layer):
        return l
    if isinstance(l, (list, tuple)):
        return Serial(tuple(_as_layer(x) for x in l))
    raise TypeError(
        f"{_validate.where('ntk')}: every layer must be an ntk layer (ntk.Dense(...), ntk.Relu(), ...); "
        f"got {type(l).__name__}. Did you forget the parentheses (ntk.Relu())?"
    )


@dataclasses.dataclass(frozen=True, repr=False)
class Architecture:
    """A network description: layers, a Flax model at its finite widths, analytic kernels.

    Build with :func:`ntk.serial`. Hashable: pass it to compiled code as a static argument.

    Attributes:
      net: the composed layers (a :class:`Serial`).
    """

    net: Serial

    def __repr__(self):
        return "Architecture" + self.net.describe()[len("serial") :]

    @property
    def layers(self) -> tuple:
        return self.net.layers

    # ---------------------------------------------------------------------------------
    def check_input_shape(self, shape: tuple, *, name: str) -> tuple:
        """Validate one example's shape; return the output shape."""
        shape = tuple(int(s) for s in shape)
        spatial = self.net.uses_spatial()
        if not spatial and len(shape) != 1:
            raise ValueError(
                f"{_validate.where('ntk')}: {name} must have shape (n, features) for an architecture without Conv "
                f"or pooling layers; got examples of shape {shape} (add ntk.Flatten() first to "
                "use images)."
            )
        if spatial and len(shape) < 2:
            raise ValueError(
                f"{_validate.where('ntk')}: {name} must have shape (n, *spatial, channels) (images are NHWC) for an "
                f"architecture with Conv or pooling layers; got examples of shape {shape}."
            )
        if any(s <= 0 for s in shape):
            raise ValueError(f"{_validate.where('ntk')}: {name} has an empty axis: examples of shape {shape}.")
        return self.net.out_shape(shape)

    @_validate.public("ntk.Architecture.out_shape")
    def out_shape(self, input_shape) -> tuple:
        return self.check_input_shape(
            input_shape, name="input_shape"
        )

    def apply(self, params, x, ctx=None):
        """The finite network's forward pass ``f(params, x)`` (a pure function)."""
        return self.net.apply(params, x, ctx, "")

    def affine_layers(self):
        """``[(path, layer)]`` of the Dense and Conv layers, in order."""
        return self.net.affine_layers("")

    @_validate.public("ntk.Architecture.init_params")
    def init_params(self, key, input_shape, *, dtype=jnp.float32) -> dict:
        """Random parameters for one example of shape ``input_shape`` (no batch axis).

        All parameters are consecutive slices of one stream of standard normals, drawn in
        chunks of 65536 (chunk ``i``: ``jax.random.normal(jax.random.fold_in(key, i),
        (65536,))``) and scaled per layer (standard parameterisation: ``W_std / sqrt(fan_in)``
        and ``b_std``). One small program per dtype serves every architecture and width (no
        compilation per layer or per model); the same values are produced inside compiled
        code (``arch.net.init``, used by :func:`ntk.monte_carlo`).
        """
        self.check_input_shape(input_shape, name="input_shape")
        dtype = jax.dtypes.canonicalize_dtype(dtype)
        specs = self.net.param_specs(tuple(int(s) for s in input_shape))
        flat = [_normal_chunk_jit(key, np.uint32(i), dtype) for i in range(_num_chunks(specs))]
        flat = np.concatenate([np.asarray(c) for c in flat])
        return jax.device_put(_unflatten_draw(specs, flat, np))

    def module(self, key, input_shape, *, dtype=jnp.float32) -> nnx.Module:
        """The finite network as a Flax NNX module (parameters as ``nnx.Param``)."""
        params = self.init_params(key, input_shape, dtype=dtype)
        return ArchModule(self, params, tuple(int(s) for s in input_shape))

    def init(self, key, input_shape, *, dtype=jnp.float32):
        """The finite network as the foundation's model triple (:func:`landscape.from_nnx`).

        Args:
          key: PRNG key of the initialisation.
          input_shape: shape of one example (no batch axis), e.g. ``(8, 8, 3)``.
          dtype: parameter dtype (float64 needs ``jax.enable_x64``).

        Returns:
          ``landscape.Model``: ``apply_fn(params, state, x) -> (outputs, state)``; every
          ``landscape`` analysis and :func:`ntk.empirical_ntk` (which recognises it and uses
          the per-layer structured method) work on it.
        """
        if key is None:
            raise TypeError("ntk.Architecture.init: key is required; pass jax.random.key(0).")
        module = self.module(key, input_shape, dtype=dtype)
        m = from_nnx(module)
        a = m.apply_fn
        apply_fn = _ArchApply(
            a.graphdef_eval, a.graphdef_train, a.__name__, self, module.input_shape
        )
        return m.replace(apply_fn=apply_fn)

    # ---------------------------------------------------------------------------------
    @_validate.public("ntk.Architecture.kernel_fn")
    def kernel_fn(self, x1, x2=None):
        """Analytic ``(nngp, ntk)`` of two input blocks, ``(n1, n2)`` each (traceable).

        The one place of the analytic recursion: the input covariance in the position layout
        the stack needs (:func:`input_state`), every layer's kernel transform, the check that
        the output has no spatial axes left. No blocking: memory is ``n1 n2`` times the
        positions kept per pair (:func:`ntk.kernel` evaluates it in blocks, sharded and
        resumable).
        """
        same = x2 is None
        x2 = x1 if same else x2
        with jax.default_matmul_precision(engine.ANALYSIS_PRECISION):  # no TF32 on GPUs
            ks = input_state(self, x1, x2, same)
            ks = self.net.kernel(ks)
        if ks.mode != "none":
            raise ArchitectureError(
                f"{_validate.where('ntk')}: the architecture's output still has spatial axes {ks.shape}; end it with "
                "ntk.Flatten() or ntk.GlobalAvgPool() (and a Dense readout)."
            )
        return ks.nngp, ks.ntk


_CHUNK = 1 << 16


def _normal_chunk(key, i, dtype):
    return jax.random.normal(jax.random.fold_in(key, i), (_CHUNK,), dtype)


_normal_chunk_jit = jax.jit(_normal_chunk, static_argnums=(2,))


def _spec_leaves(specs):
    """``(shape, scale)`` leaves of a parameter-spec tree, in insertion order."""
    for v in specs.values():
        if isinstance(v, dict):
            yield from _spec_leaves(v)
        else:
            yield v


def _num_chunks(specs) -> int:
    n = sum(math.prod(shape) for shape, _ in _spec_leaves(specs))
    return max(1, -(-n // _CHUNK))


def _unflatten_draw(specs, flat, xp):
    """Slice the parameters out of one flat standard normal draw (``xp``: numpy or jnp)."""
    pos = 0

    def build(node):
        nonlocal pos
        out = {}
        for k, v in node.items():
            if isinstance(v, dict):
                out[k] = build(v)
                continue
            shape, scale = v
            size = math.prod(shape)
            leaf = flat[pos : pos + size].reshape(shape)
            pos += size
            if scale != 1.0:
                leaf = leaf * xp.asarray(scale, leaf.dtype)
            out[k] = leaf
        return out

    return build(specs)


def input_state(arch: Architecture, x1, x2, same: bool) -> KState:
    """The kernel of the inputs: ``K0[p, p'] = x_p . x'_p' / channels`` (neural-tangents), in
    the position layout the layer stack needs (see :func:`position_layout`)."""
    d = x1.ndim - 2
    C = x1.shape[-1]
    mode, radius = position_layout(arch, tuple(x1.shape[1:-1]))
    L = "abcdefghijklmnopqrstuvwxyz"
    hi = jax.lax.Precision.HIGHEST
    if mode == "none":
        nngp = jnp.matmul(x1, x2.T, precision=hi) / C
        # same inputs: the self-covariance is the pair kernel's diagonal, bit for bit, so the
        # ReLU-family kernels at correlation exactly 1 are exact (no sqrt of rounding error)
        s1 = jnp.diagonal(nngp) if same else jnp.sum(x1 * x1, axis=-1) / C
        s2 = None if same else jnp.sum(x2 * x2, axis=-1) / C
    else:
        p1, p2 = L[2 : 2 + d], L[2 + d : 2 + 2 * d]
        if mode == "full":
            nngp = jnp.einsum(f"a{p1}z,b{p2}z->ab{p1}{p2}", x1, x2, precision=hi) / C
            selfk = lambda x: jnp.einsum(f"a{p1}z,a{p2}z->a{p1}{p2}", x, x, precision=hi) / C  # noqa: E731
        elif mode == "band":

            def band(u, v, pair):
                vs = _kmath.band_shift(v, 1, d, radius)  # (b, *P, C, *W)
                spec = (
                    f"a{p1}z,b{p1}z{p2}->ab{p1}{p2}" if pair else f"a{p1}z,a{p1}z{p2}->a{p1}{p2}"
                )
                return jnp.einsum(spec, u, vs, precision=hi) / C

            nngp = band(x1, x2, True)
            selfk = lambda x: band(x, x, False)  # noqa: E731
        else:
            nngp = jnp.einsum(f"a{p1}z,b{p1}z->ab{p1}", x1, x2, precision=hi) / C
            selfk = lambda x: jnp.sum(x * x, axis=-1) / C  # noqa: E731
        if same:
            b = "a" + p1 + (p2 if mode in ("full", "band") else "")
            s1 = jnp.einsum(f"a{b[1:]}".replace("a", "aa", 1) + f"->{b}", nngp)
        else:
            s1 = selfk(x1)
        s2 = None if same else selfk(x2)
    return KState(
        nngp=nngp,
        ntk=jnp.zeros_like(nngp),
        s1=s1,
        s2=s2,
        d=d,
        mode=mode,
        shape=tuple(x1.shape[1:-1]),
        width=C,
        gaussian=False,
        last="the input",
        radius=radius,
    )


def position_layout(arch: Architecture, spatial: tuple) -> tuple[str, tuple]:
    """``(mode, radius)`` of the input covariance: ``"none"`` for vectors; ``"full"`` (all
    position pairs) with a GlobalAvgPool anywhere; ``"band"`` (pairs up to ``radius[k]``
    apart along axis ``k``, as needed by the AvgPool layers) with AvgPool but no
    GlobalAvgPool; otherwise ``"diag"`` (``p == p'`` only, Flatten readouts)."""
    if not spatial:
        return "none", ()
    if arch.net.needs_full():
        return "full", ()
    if arch.net.needs_band():
        need = arch.net.band_need(0)
        need = (need,) * len(spatial) if isinstance(need, int) else need
        return "band", tuple(min(r, n - 1) for r, n in zip(need, spatial))
    return "diag", ()


@_validate.public("ntk.serial")
def serial(*layers) -> Architecture:
    """Compose layers into an architecture (neural-tangents' ``stax.serial``).

    Example:
      >>> arch = ntk.serial(ntk.Dense(512, W_std=1.5, b_std=0.05), ntk.Relu(),
      ...                   ntk.Dense(10, W_std=1.5, b_std=0.05))
      >>> k = ntk.kernel(arch, x)     # .nngp, .ntk: (n, n) per-output kernels
      >>> model = arch.init(jax.random.key(0), x.shape[1:])   # landscape.Model

    Args:
      *layers: layer descriptions (:class:`ntk.Dense`, :class:`ntk.Relu`, ...), nested
        ``serial``/``parallel`` compositions allowed.

    Returns:
      An :class:`Architecture`.
    """
    if not layers:
        raise ValueError("ntk.serial: needs at least one layer.")
    flat = []
    for l in layers:
        if isinstance(l, Architecture):
            l = l.net
        flat.append(_as_layer(l))
    return Architecture(Serial(tuple(flat)))


def _sub(l):
    if isinstance(l, Architecture):
        return l.net
    return _as_layer(l)


@_validate.public("ntk.parallel")
def parallel(*branches) -> Layer:
    """Branches on the same input whose outputs are summed (neural-tangents'
    ``FanOut`` + ``parallel`` + ``FanInSum``). Each branch is a layer, a list of layers or an
    architecture. Every branch but one must end in a Dense or Conv layer (see
    :class:`Parallel`)."""
    return Parallel(tuple(_sub(b) for b in branches))


@_validate.public("ntk.residual")
def residual(*layers) -> Layer:
    """``x + f(x)`` with ``f = serial(*layers)``; ``f`` must end in a Dense or Conv layer."""
    return Parallel((Serial(tuple(_sub(l) for l in layers)), _layers.Identity()))


# --------------------------------------------------------------------------------------------
# Flax NNX module
# --------------------------------------------------------------------------------------------
def _is_leaf_dict(d: dict) -> bool:
    return all(hasattr(v, "shape") for v in d.values())


class _Group(nnx.Module):
    """Nested parameters as NNX modules (attribute names = the parameter dict's keys)."""

    def __init__(self, tree: dict):
        self._names = tuple(tree)
        for k, v in tree.items():
            if isinstance(v, dict) and not _is_leaf_dict(v):
                setattr(self, k, _Group(v))
            elif isinstance(v, dict):
                setattr(self, k, _Vars(v))

    def values(self) -> dict:
        return {k: getattr(self, k).values() for k in self._names}


class _Vars(nnx.Module):
    def __init__(self, tree: dict):
        self._names = tuple(tree)
        for k, v in tree.items():
            setattr(self, k, nnx.Param(v))

    def values(self) -> dict:
        return {k: getattr(self, k)[...] for k in self._names}


class ArchModule(_Group):
    """Flax NNX module of an :class:`Architecture` at its finite widths.

    Its parameters (``nnx.Param``) mirror ``arch.init_params``; ``__call__(x)`` runs
    ``arch.apply``. ``module.arch`` is the description (static).
    """

    def __init__(self, arch: Architecture, params: dict, input_shape: tuple):
        super().__init__(params)
        self.arch = arch
        self.input_shape = input_shape

    def __call__(self, x):
        return self.arch.apply(self.values(), x)


class _ArchApply(NNXApply):
    """``apply_fn`` of the models built by :meth:`Architecture.init`.

    It keeps the NNX graph definitions of :class:`ArchModule` (``nnx.merge`` rebuilds the
    module) but compares equal for equal architectures and input shapes, so compiled
    programs taking it as a static argument (``landscape.train``, the engine, the ``ntk``
    drivers) are shared between models of the same architecture (seeds, snapshots); calling
    it runs ``arch.apply`` directly (the module's ``__call__``, without rebuilding it).
    """

    def __init__(self, graphdef_eval, graphdef_train, name, arch, input_shape):
        super().__init__(graphdef_eval, graphdef_train, name)
        self.arch = arch
        self.input_shape = tuple(input_shape)

    def _key(self):
        return (self.arch, self.input_shape, self.graphdef_eval, self.graphdef_train)

    def __eq__(self, other):
        return type(other) is type(self) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __call__(self, params, state, x, *, train: bool = False):
        return self.arch.apply(params, x), state


def arch_of_model(apply_fn, params=None, state=None):
    """The :class:`Architecture` behind a model triple built by ``arch.init`` (else ``None``)."""
    if isinstance(apply_fn, _ArchApply):
        return apply_fn.arch, apply_fn.input_shape
    if isinstance(apply_fn, NNXApply):
        cached = _ARCH_CACHE.get(id(apply_fn))
        if cached is not None and cached[0] is apply_fn:
            return cached[1], cached[2]
        try:
            module = nnx.merge(apply_fn.graphdef_eval, params, state or {})
        except Exception:
            return None
        arch = getattr(module, "arch", None)
        if isinstance(module, ArchModule) and isinstance(arch, Architecture):
            _ARCH_CACHE[id(apply_fn)] = (apply_fn, arch, module.input_shape)
            return arch, module.input_shape
    return None


_ARCH_CACHE: dict = {}


def _num_positions(shape) -> int:
    return math.prod(shape) if shape else 1
