"""Exact full-data-set reductions and data placement: the engine every analysis reuses.

* :func:`mean` (and the factory :func:`make_mean_fn`): the exact data-set mean of anything
  built on ``loss_fn`` -- loss and aux metrics, gradients, Hessian-vector products. Full
  batches run in one ``lax.scan`` inside one compiled program; the remainder batch (when the
  batch size does not divide the data size) runs in the same program and is weighted by its
  size, so the result is the mean over all examples whatever the batch size. One compilation
  per (function, shapes); no per-batch Python loop. :func:`batched_mean` is the traceable
  reduction itself, for use inside other compiled programs (curvature products, grid points,
  batch-norm statistics).
* :func:`canonical_convs`: a function's convolutions rewritten into the form XLA:CPU runs with
  its fast kernels wherever they sit (XLA does it only in a program's entry computation; inside
  a ``lax.scan`` or ``fori_loop`` body a ResNet's Hessian-vector product ran 41x slower).
  :func:`batched_mean` applies it to every ``value_fn``; :data:`CANONICAL_CONVS` switches it.
* :func:`evaluate` and :func:`value_and_grad`: the one-shot loss (with aux metrics) and
  gradient over a whole data set; :func:`check_loss` is the boundary check every analysis runs
  first (the loss traced on two examples, no compilation).

Evaluation at many parameter points (grids, paths) is :mod:`landscape.grid`; resumable storage
and the chunk driver are :mod:`landscape.store`.

Functions handed to the engine (``fn``) are split into a static part (the Python callable, part
of the compilation cache key) and a dynamic part (any array leaves of a callable pytree such as
:class:`landscape.Loss`, whose batch-norm state is an argument, not a constant):
:func:`split_fn` / :func:`merge_fn`. A new lambda per call recompiles: build functions once and
reuse them.

Multi-device: with more than one device, :func:`batch` shards full batches over a 1-D mesh of
all devices (``jax.sharding.NamedSharding``, axis ``"data"``; the batch size is rounded down to
a multiple of the device count) and replicates the remainder; the compiler inserts the
reductions. Global arrays are built with :func:`place` (``jax.make_array_from_callback`` from
the host copy every process holds), so the same code runs multi-host after
``jax.distributed.initialize()``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.tree_util import Partial

from landscape import _convs
from landscape import tree as _tree
from landscape import validate as _validate

PyTree = Any

DEFAULT_BATCH_SIZE = 1024
"""Default batch size of full-data-set reductions (capped at the data size)."""

DATA_AXIS = "data"

__all__ = [
    "ANALYSIS_PRECISION",
    "Batched",
    "CANONICAL_CONVS",
    "all_finite",
    "at_analysis_precision",
    "batch",
    "batched_mean",
    "canonical_convs",
    "check_loss",
    "evaluate",
    "loss_and_aux",
    "loss_dict",
    "make_mean_fn",
    "mean",
    "merge_fn",
    "mesh",
    "place",
    "raise_nonfinite",
    "split_fn",
    "value_and_grad",
]


# --------------------------------------------------------------------------------------------
# Callables as (static, dynamic) pairs
# --------------------------------------------------------------------------------------------
def _is_array(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic)) or (
        hasattr(x, "shape") and hasattr(x, "dtype")
    )


def split_fn(target_fn: Callable) -> tuple[Any, list]:
    """Split a callable (possibly a pytree such as ``jax.tree_util.Partial``) into a hashable
    static part and a list of array leaves (``None`` where the leaf is static)."""
    leaves, treedef = jax.tree.flatten(target_fn)
    dynamic = [x if _is_array(x) else None for x in leaves]
    static = tuple(None if _is_array(x) else x for x in leaves)
    try:
        hash((treedef, static))
    except TypeError as e:
        raise TypeError(
            f"landscape.engine: the function {target_fn!r} has unhashable static parts; functions passed "
            "to compiled code must be hashable (module-level functions, jax.tree_util.Partial, "
            "or landscape.Loss objects)."
        ) from e
    return (treedef, static), dynamic


def merge_fn(static, dynamic) -> Callable:
    treedef, static_leaves = static
    leaves = [d if s is None else s for s, d in zip(static_leaves, dynamic)]
    return jax.tree.unflatten(treedef, leaves)


# --------------------------------------------------------------------------------------------
# Loss normalisation
# --------------------------------------------------------------------------------------------
def loss_and_aux(loss_fn: Callable, params, batch) -> tuple[jax.Array, dict]:
    """Call ``loss_fn`` and return ``(loss, aux)`` whether or not it returns aux.

    A ``(scalar, aux)`` tuple is recognised by its type at trace time; a bare scalar gives
    ``aux = {}``. ``aux`` must be a dict (or ``None``) of batch-mean metrics.
    """
    out = loss_fn(params, batch)
    if isinstance(out, tuple):
        if len(out) != 2:
            raise TypeError(
                "landscape: loss_fn must return a scalar or (scalar, aux); got a tuple of "
                f"length {len(out)}."
            )
        loss, aux = out
        aux = {} if aux is None else aux
        if not isinstance(aux, dict):
            raise TypeError(
                f"landscape: loss_fn's aux must be a dict of metrics; got {type(aux).__name__}."
            )
    else:
        loss, aux = out, {}
    loss = jnp.asarray(loss)
    if loss.shape != ():
        raise ValueError(
            f"landscape: loss_fn must return a scalar (the batch mean); got shape {loss.shape}."
        )
    return loss, aux


def loss_dict(loss_fn, params, batch):
    """``{"loss": loss, **aux}`` of one batch (traceable; the function every grid point and
    :func:`evaluate` reduces)."""
    loss, aux = loss_and_aux(loss_fn, params, batch)
    return {**aux, "loss": loss}


def _value_and_grad(loss_fn, params, batch):
    def f(p):
        loss, aux = loss_and_aux(loss_fn, p, batch)
        return loss, aux

    (loss, aux), g = jax.value_and_grad(f, has_aux=True)(params)
    return {**aux, "loss": loss}, g


# --------------------------------------------------------------------------------------------
# Data placement
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _mesh_for(devices: tuple) -> jax.sharding.Mesh:
    return jax.sharding.Mesh(np.array(devices), (DATA_AXIS,))


def mesh() -> jax.sharding.Mesh:
    """The 1-D mesh over ``jax.devices()`` (axis ``"data"``) used by the engine."""
    return _mesh_for(tuple(jax.devices()))


def place(x, sharding) -> jax.Array:
    """A global array from the host copy ``x`` that every process holds, laid out with
    ``sharding`` (``None``: on the default device). Works multi-host."""
    if sharding is None:
        return _tree.to_device(x)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _split_device(src, nb, batch_size, with_rest):
    """Full batches and remainder of data on one device: one compiled program for the whole
    tree (per shapes) instead of a slice and a reshape per leaf."""
    n = nb * batch_size
    full = jax.tree.map(
        lambda x: jnp.asarray(x)[:n].reshape((nb, batch_size) + x.shape[1:]), src
    ) if nb > 0 else None
    rest = jax.tree.map(lambda x: jnp.asarray(x)[n:], src) if with_rest else None
    return full, rest


@dataclasses.dataclass(frozen=True)
class Batched:
    """A data set laid out for exact batched reductions.

    Attributes:
      full: the first ``num_batches * batch_size`` examples, every leaf shaped
        ``(num_batches, batch_size, ...)`` (``None`` if the data is smaller than a batch).
      rest: the remaining ``num_examples - num_batches * batch_size`` examples (``None`` if none).
      num_examples, batch_size: static sizes.
      placement: ``"shard"`` (full batches split over devices) or ``"replicate"``.
    """

    full: PyTree
    rest: PyTree
    num_examples: int = dataclasses.field(metadata=dict(static=True))
    batch_size: int = dataclasses.field(metadata=dict(static=True))
    placement: str = dataclasses.field(default="shard", metadata=dict(static=True))

    @property
    def num_batches(self) -> int:
        return self.num_examples // self.batch_size

    @property
    def rest_size(self) -> int:
        return self.num_examples - self.num_batches * self.batch_size

    def __repr__(self):
        return (
            f"Batched(num_examples={self.num_examples}, batch_size={self.batch_size}, "
            f"num_batches={self.num_batches}, rest={self.rest_size}, placement={self.placement})"
        )


jax.tree_util.register_dataclass(
    Batched, data_fields=["full", "rest"], meta_fields=["num_examples", "batch_size", "placement"]
)


@_validate.public("landscape.engine.batch")
def batch(
    data: PyTree,
    batch_size: int | None = None,
    *,
    placement: str = "shard",
    check_finite: bool = True,
) -> Batched:
    """Validate ``data`` and lay it out on the devices for exact batched reductions.

    Args:
      data: dict pytree of arrays with a common leading example axis (host memory is fine),
        or an existing :class:`Batched` (returned unchanged).
      batch_size: examples per batch (default ``min(n, DEFAULT_BATCH_SIZE)``). With more than one
        device and ``placement="shard"`` it is rounded down to a multiple of the device count.
      placement: ``"shard"`` splits every full batch across devices; ``"replicate"`` keeps a full
        copy on every device (used when points, not examples, are sharded).
      check_finite: reject NaN/Inf in floating leaves.

    Returns:
      A :class:`Batched`; pass it to :func:`mean`/:func:`evaluate_points` instead of the raw data
      to prepare the layout once.

    Raises:
      TypeError, ValueError: data is not a dict of arrays, leaves disagree on the number of
        examples, data is empty or not finite, or ``batch_size`` is not in ``[1, n]``.
    """
    if isinstance(data, Batched):
        return data
    _validate.check_choice(placement, ("shard", "replicate"), name="placement")
    n = _validate.num_examples(data)
    if check_finite:
        _validate.check_finite(data, name="data")
    if batch_size is None:
        batch_size = min(n, DEFAULT_BATCH_SIZE)
    batch_size = _validate.check_batch_size(batch_size, n)
    ndev = jax.device_count()
    full_sh = rest_sh = None
    if ndev > 1:
        m = mesh()
        rest_sh = NamedSharding(m, P())
        if placement == "shard" and batch_size >= ndev:
            batch_size -= batch_size % ndev
            full_sh = NamedSharding(m, P(None, DATA_AXIS))
        else:
            full_sh = rest_sh
    nb = n // batch_size
    r = n - nb * batch_size
    # one device: data already on the device stays there (no host round trip); host data is
    # split on the host (NumPy views, no compiled slice/reshape programs) and placed once
    src = jax.tree.map(
        lambda x: x if ndev == 1 and isinstance(x, jax.Array) else np.asarray(x), data
    )
    if ndev == 1 and any(isinstance(x, jax.Array) for x in jax.tree.leaves(src)):
        full, rest = _split_device(src, nb, batch_size, bool(r))
    else:
        full = None
        if nb > 0:
            full = jax.tree.map(
                lambda x: place(
                    x[: nb * batch_size].reshape((nb, batch_size) + x.shape[1:]), full_sh
                ),
                src,
            )
        rest = jax.tree.map(lambda x: place(x[nb * batch_size :], rest_sh), src) if r else None
    return Batched(full, rest, n, batch_size, placement)


# --------------------------------------------------------------------------------------------
# The traceable reduction
# --------------------------------------------------------------------------------------------
def _acc_dtype(dtype):
    """Accumulator of batch sums: the value's own float type, but at least 32 bits (a bf16 or
    float16 running sum saturates: the mean of ones over 16 batches came out 0.0625)."""
    if jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.complexfloating):
        if jnp.dtype(dtype).itemsize < 4 and jnp.issubdtype(dtype, jnp.floating):
            return jnp.float32
        return dtype
    return jnp.result_type(float)


def all_finite(tree) -> jax.Array:
    """Traceable: one boolean, whether every leaf of ``tree`` is finite."""
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return functools.reduce(jnp.logical_and, flags, jnp.asarray(True))


ANALYSIS_PRECISION = "highest"
"""Matmul and convolution precision of everything the engine evaluates (losses, gradients,
curvature products, grid points, batch-norm statistics). ``"highest"``: float32 products are
computed in float32 on every backend (GPUs otherwise default to TF32, whose 10-bit mantissa
limits eigenvalues and barriers to about 1e-3 relative). Training (``landscape.train``) keeps
the backend's default. On CPU both are the same."""


def at_analysis_precision(wrapped_fn: Callable) -> Callable:
    """Decorator: trace ``wrapped_fn`` at :data:`ANALYSIS_PRECISION` (for analysis code outside
    :func:`batched_mean`, e.g. kernel computations)."""

    @functools.wraps(wrapped_fn)
    def wrapper(*args, **kwargs):
        with jax.default_matmul_precision(ANALYSIS_PRECISION):
            return wrapped_fn(*args, **kwargs)

    return wrapper


CANONICAL_CONVS = os.environ.get("LANDSCAPE_CANONICAL_CONVS", "cpu")
"""When :func:`canonical_convs` rewrites convolutions: ``"cpu"`` (the default: when the default
backend is the CPU, the one backend whose loop bodies lose the fast convolution kernels),
``"always"`` or ``"never"`` (functions run as written). Its value at import is the environment
variable ``LANDSCAPE_CANONICAL_CONVS`` when set. Read when a program is traced: set it before
the first call, or call ``jax.clear_caches()`` after changing it."""


def canonical_convs(wrapped_fn: Callable) -> Callable:
    """Decorator: ``wrapped_fn`` with its convolutions in the form XLA:CPU runs with its fast
    kernels, wherever they sit (traceable; see :data:`CANONICAL_CONVS`).

    XLA:CPU rewrites a convolution that is not ``NHWC``/``HWIO``/``NHWC`` (the backward pass's
    kernel and input gradients) into transposes around a canonical one only in a program's
    entry computation; inside a ``while`` body (``lax.fori_loop``, ``lax.scan``) it runs the
    naive loop nest (jax-ml/jax issue 12868): a 1-block ResNet's Hessian-vector product on the
    digits takes 0.13 s as its own program and 5.0 s per product inside a compiled loop, a
    top-eigenvalue solve 29 s instead of 0.85 s (BENCHMARKS.md, "Convolutions inside compiled
    loops (XLA:CPU)"). The wrapped function is traced once, those convolutions (sub-jaxprs included:
    loops, ``cond``, nested ``jit``, ``shard_map``, ``remat``, custom derivatives' primal
    functions) are rewritten the way XLA's pass would have, and the result is evaluated
    instead: the values of the standalone program, to rounding (bit for bit in the tests).
    Functions without such convolutions (MLPs) evaluate their trace unchanged: the same
    program. Apply it to what a compiled loop repeats: :func:`batched_mean` applies it to
    ``value_fn`` (every data-set reduction, curvature product and grid point), the Krylov loops
    to a user's matvec, :func:`landscape.train` and the curve fits to their steps. Derivatives
    of the wrapped function are written by JAX again: wrap the derivative, not the function,
    when the derivative runs in a loop.

    Cost: when a program is traced, the function's jaxpr is evaluated once more in the
    enclosing trace (tracing and lowering a Lanczos-style loop of products: 4 ms more for an
    85,000-parameter MLP, 48 ms more for the ResNet); nothing when it runs.
    """

    @functools.wraps(wrapped_fn)
    def wrapper(*args):
        if not _canonical_convs_active():
            return wrapped_fn(*args)
        return _convs.call_canonical(wrapped_fn, *args)

    return wrapper


def _canonical_convs_active() -> bool:
    mode = CANONICAL_CONVS
    if mode not in ("cpu", "always", "never"):
        raise ValueError(
            "landscape.engine.CANONICAL_CONVS (or the environment variable "
            "LANDSCAPE_CANONICAL_CONVS) must be 'cpu', 'always' or 'never'; got "
            f"{mode!r}."
        )
    return mode == "always" or (mode == "cpu" and jax.default_backend() == "cpu")


def batched_mean(value_fn: Callable, point: PyTree, batched: Batched, *args) -> tuple[PyTree, jax.Array]:
    """Exact data-set mean of ``value_fn(point, batch, *args)`` (traceable; use inside ``jit``).

    ``value_fn`` must return batch means (any pytree of arrays). Full batches are summed in a
    ``lax.scan`` and weighted by the batch size; the remainder is weighted by its size. Traced at
    :data:`ANALYSIS_PRECISION` (float32 products in full float32 on GPUs too), with
    ``value_fn``'s convolutions in XLA:CPU's fast form (:func:`canonical_convs`: the scan body,
    and any loop this reduction runs in, keep the fast kernels).

    Returns:
      ``(mean, finite)`` where ``finite`` is a bool vector with one flag per batch (full batches
      in order, then the remainder) telling whether that batch's values were all finite.
    """
    with jax.default_matmul_precision(ANALYSIS_PRECISION):
        return _batched_mean(value_fn, point, batched, *args)


def _batched_mean(value_fn: Callable, point: PyTree, batched: Batched, *args) -> tuple[PyTree, jax.Array]:
    n, bs = batched.num_examples, batched.batch_size
    total = None
    flags = []
    value_fn = canonical_convs(value_fn)

    def cast_like(v, ref):
        return jax.tree.map(lambda x, s: jnp.asarray(x).astype(s.dtype), v, ref)

    if batched.full is not None:
        first = jax.tree.map(lambda x: x[0], batched.full)
        per_batch = shared_trace(lambda pa, b: value_fn(pa[0], b, *pa[1]), (point, args))
        shape = jax.eval_shape(per_batch, first)
        init = jax.tree.map(lambda s: jnp.zeros(s.shape, _acc_dtype(s.dtype)), shape)

        def body(acc, b):
            v = cast_like(per_batch(b), init)
            return jax.tree.map(jnp.add, acc, v), all_finite(v)

        if batched.num_batches == 1:  # no loop for a single full batch
            acc, ok = body(init, first)
            ok = ok[None]
        else:
            acc, ok = jax.lax.scan(body, init, batched.full)
        total = jax.tree.map(lambda a: a * jnp.asarray(bs, a.dtype), acc)
        flags.append(ok)
    if batched.rest is not None:
        r = n - (n // bs) * bs
        v = value_fn(point, batched.rest, *args)
        v = jax.tree.map(lambda x: jnp.asarray(x).astype(_acc_dtype(jnp.result_type(x))), v)
        vr = jax.tree.map(lambda x: x * jnp.asarray(r, x.dtype), v)
        total = vr if total is None else jax.tree.map(jnp.add, total, cast_like(vr, total))
        flags.append(all_finite(v)[None])
    mean_ = jax.tree.map(lambda t: t / jnp.asarray(n, t.dtype), total)
    return mean_, jnp.concatenate(flags)


def shared_trace(fn: Callable, fixed: PyTree) -> Callable:
    """``b -> fn(fixed, b)`` whose Python trace is shared by every call at the same shapes of
    ``b`` inside one enclosing trace (a shape query with ``eval_shape`` and then a loop body):
    a nested ``jit`` over the traced leaves of ``fixed`` (concrete ones stay concrete, closed
    over), which XLA inlines. Without it the shape query traced a model's loss or product a
    second time in every reduction and Krylov program."""
    leaves, treedef = jax.tree.flatten(fixed)
    where = [i for i, x in enumerate(leaves) if _validate.is_tracer(x)]

    def flat(traced, b):
        full = list(leaves)
        for i, a in zip(where, traced):
            full[i] = a
        return fn(jax.tree.unflatten(treedef, full), b)

    inner = jax.jit(flat)
    traced = [leaves[i] for i in where]
    return lambda b: inner(traced, b)


@functools.partial(jax.jit, static_argnames=("fn_static",))
def _mean_jit(fn_static, fn_dyn, point, batched, args):
    return batched_mean(merge_fn(fn_static, fn_dyn), point, batched, *args)


def raise_nonfinite(ok, batched: Batched, *, what: str):
    """Raise ``FloatingPointError`` naming the batches whose finite flag (from
    :func:`batched_mean`) is False; nothing when all are finite."""
    ok = np.asarray(ok)
    if ok.all():
        return
    bad = np.flatnonzero(~ok)
    bs = batched.batch_size
    names = []
    for b in bad[:5]:
        if b < batched.num_batches:
            names.append(f"batch {b} (examples {b * bs}..{(b + 1) * bs - 1})")
        else:
            names.append(
                f"the remainder batch (examples {batched.num_batches * bs}..{batched.num_examples - 1})"
            )
    raise FloatingPointError(
        f"{_validate.where()}: non-finite {what} in {len(bad)} of {len(ok)} batches: " + ", ".join(names) + "."
    )


@_validate.public("landscape.engine.mean")
def mean(
    value_fn: Callable,
    point: PyTree,
    data: PyTree,
    *args,
    batch_size: int | None = None,
    check_finite: bool = False,
) -> PyTree:
    """Exact data-set mean of ``value_fn(point, batch, *args)`` in one compiled program.

    Args:
      value_fn: ``value_fn(point, batch, *args) -> pytree of batch means``; static (reuse the same object).
      point: usually the parameters (any pytree of arrays).
      data: dict of arrays (leading example axis) or a prepared :class:`Batched`.
      *args: further dynamic arguments of ``value_fn`` (e.g. the vector of an HVP).
      batch_size: see :func:`batch`.
      check_finite: raise ``FloatingPointError`` naming the batches whose values were not
        finite (costs one device-to-host copy of the flags).
    """
    batched = batch(data, batch_size)
    static, dyn = split_fn(value_fn)
    out, ok = _mean_jit(static, dyn, point, batched, args)
    if check_finite:
        raise_nonfinite(ok, batched, what="values")
    return out


@_validate.public("landscape.engine.make_mean_fn")
def make_mean_fn(
    value_fn: Callable,
    data: PyTree,
    *,
    batch_size: int | None = None,
    with_finite: bool = False,
) -> Callable:
    """Factory: ``f(point, *args) -> mean`` with the data laid out once.

    The returned closure calls one module-level jitted program (compiled once per function and
    shapes) with the prepared data as an argument, so repeated calls (Lanczos, training
    callbacks) neither recompile nor copy the data. With ``with_finite=True`` it returns
    ``(mean, finite_flags_per_batch)``.
    """
    batched = batch(data, batch_size)
    static, dyn = split_fn(value_fn)

    def f(point, *args):
        out, ok = _mean_jit(static, dyn, point, batched, args)
        return (out, ok) if with_finite else out

    f.batched = batched  # type: ignore[attr-defined]
    return f


_CHECKED: set = set()


_NUM_OUTPUTS: dict = {}


def _check_labels(loss_fn, params, data, small, *, name: str) -> None:
    """Integer class labels of a toolkit ``Loss`` must lie in ``[0, num_outputs)``: out of range,
    cross-entropy silently takes another class (-1 is the last) or NaN, and MSE a zero target.
    Labels are small: device labels are copied to the host for the check (no compilation)."""
    from landscape.losses import Loss

    if not isinstance(loss_fn, Loss):
        return
    spec = loss_fn._spec
    parts = [data] if isinstance(data, dict) else (
        [p for p in (data.full, data.rest) if p is not None] if isinstance(data, Batched) else [])
    ys = [p.get(spec.target_key) for p in parts if isinstance(p, dict)]
    ys = [y for y in ys if y is not None and getattr(y, "is_fully_addressable", True)
          and np.issubdtype(np.dtype(y.dtype), np.integer) and np.size(y)]
    if not ys:
        return
    y = np.concatenate([np.asarray(v).ravel() for v in ys])
    key = (loss_fn._spec, jax.tree.structure(params),
           tuple((np.shape(x), jnp.result_type(x)) for x in jax.tree.leaves(params)),
           tuple((np.shape(x), jnp.result_type(x)) for x in jax.tree.leaves(small)))
    num = _NUM_OUTPUTS.get(key)
    if num is None:  # traced once per model and shapes, not at every call
        try:
            out = jax.eval_shape(lambda p, b: loss_fn.outputs(p, b), params, small)
        except Exception:  # noqa: BLE001 - shape problems are reported by check_loss itself
            return
        num = int(out.shape[-1]) if getattr(out, "ndim", 0) else 0
        if len(_NUM_OUTPUTS) > 256:
            _NUM_OUTPUTS.clear()
        _NUM_OUTPUTS[key] = num
    lo, hi = int(y.min()), int(y.max())
    if num and (lo < 0 or hi >= num):
        raise ValueError(
            f"{_validate.where()}: {name}['{spec.target_key}'] holds class labels in [{lo}, {hi}], but the model has "
            f"{num} outputs; labels must lie in [0, {num})."
        )


@_validate.public("landscape.engine.check_loss")
def check_loss(
    loss_fn: Callable, params: PyTree, data: PyTree, *, name: str = "data"
) -> None:
    """Trace ``loss_fn`` on two examples of ``data`` (no compilation) and turn a failure into a
    ``ValueError`` that names the data's shapes: model/data mismatches surface at the boundary
    instead of deep inside a compiled scan."""
    # shapes only (it is traced, never run): no slicing programs for data on the device
    def _two(x, lead):
        shape = tuple(np.shape(x))[lead:]
        dtype = x.dtype if hasattr(x, "dtype") else jnp.result_type(x)
        return jax.ShapeDtypeStruct((min(2, shape[0]),) + shape[1:] if shape else shape, dtype)

    small = (
        jax.tree.map(lambda x: _two(x, 0), data.rest)
        if isinstance(data, Batched) and data.full is None
        else jax.tree.map(lambda x: _two(x, 1 if isinstance(data, Batched) else 0),
                          data.full if isinstance(data, Batched) else data)
    )
    try:
        cache_key = (
            split_fn(loss_fn)[0],
            jax.tree.structure(params),
            tuple((np.shape(x), jnp.result_type(x)) for x in jax.tree.leaves(params)),
            jax.tree.structure(small),
            tuple((np.shape(x), jnp.result_type(x)) for x in jax.tree.leaves(small)),
        )
        hash(cache_key)
    except TypeError:
        cache_key = None
    _check_labels(loss_fn, params, data, small, name=name)
    if cache_key is not None and cache_key in _CHECKED:
        return
    try:
        jax.eval_shape(lambda p, b: loss_and_aux(loss_fn, p, b), params, small)
        if cache_key is not None:
            if len(_CHECKED) > 256:
                _CHECKED.clear()
            _CHECKED.add(cache_key)
    except (TypeError, ValueError) as e:
        if str(e).startswith("landscape"):
            raise
        shapes = jax.tree.map(lambda x: tuple(np.shape(x))[1:], small)
        raise ValueError(
            f"{_validate.where()}: loss_fn could not be evaluated on {name} (per-example shapes {shapes}) with these "
            f"params: {type(e).__name__}: {str(e).splitlines()[0][:300]}. Check that the data's "
            "input shape and target format match the model."
        ) from e


@_validate.public("landscape.evaluate")
def evaluate(
    loss_fn: Callable,
    params: PyTree,
    data: PyTree,
    *,
    batch_size: int | None = None,
) -> dict[str, jax.Array]:
    """Exact full-data-set loss and aux metrics: ``{"loss": ..., "accuracy": ..., ...}``.

    One compiled program (scan over full batches + weighted remainder); see :func:`mean`.
    """
    _validate.check_callable(loss_fn, name="loss_fn")
    _validate.check_params(params)
    data = batch(data, batch_size)
    check_loss(loss_fn, params, data)
    return mean(Partial(loss_dict, loss_fn), params, data, batch_size=batch_size)


@_validate.public("landscape.value_and_grad")
def value_and_grad(
    loss_fn: Callable,
    params: PyTree,
    data: PyTree,
    *,
    batch_size: int | None = None,
    check_finite: bool = True,
) -> tuple[dict[str, jax.Array], PyTree]:
    """Exact full-data-set ``({"loss", aux...}, gradient)`` in one compiled program.

    Raises:
      FloatingPointError: (with ``check_finite``) naming the batches whose loss or gradient
        was not finite.
    """
    _validate.check_callable(loss_fn, name="loss_fn")
    _validate.check_params(params)
    data = batch(data, batch_size)
    check_loss(loss_fn, params, data)
    return mean(
        Partial(_value_and_grad, loss_fn),
        params,
        data,
        batch_size=batch_size,
        check_finite=check_finite,
    )
