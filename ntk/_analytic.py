"""Infinite-width NNGP and NTK of an architecture, blocked, sharded and resumable."""

from __future__ import annotations

import dataclasses
import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from landscape import Result, data_hash, result, static_field
from landscape import validate as _validate
from ntk import _arch, _blocks, _checks, _layers
from ntk._arch import Architecture
from ntk._attention import GlobalSelfAttention


@result
class Kernel(Result):
    """NNGP and NTK matrices (per output: independent of the readout width).

    Attributes:
      nngp: ``(n1, n2)`` NNGP covariance ``Sigma(x1, x2)`` of the outputs.
      ntk: ``(n1, n2)`` neural tangent kernel ``Theta(x1, x2)``.
      provenance: versions, dtype, settings (architecture, block size).
    """

    nngp: np.ndarray
    ntk: np.ndarray
    provenance: dict = static_field(default_factory=dict)

    def get(self, name: str) -> np.ndarray:
        """``"nngp"`` or ``"ntk"``."""
        if name not in ("nngp", "ntk"):
            raise ValueError(f"ntk.Kernel.get: name must be 'nngp' or 'ntk'; got {name!r}.")
        return getattr(self, name)


@dataclasses.dataclass(frozen=True)
class _AnalyticBlock:
    arch: Architecture

    def __call__(self, args, x1, x2, same):
        return self.arch.kernel_fn(x1, None if same else x2)


def _bytes_per_pair(arch: Architecture, shape: tuple, dtype) -> float:
    """Memory of one pair's intermediates for examples of ``shape`` (no batch axis)."""
    P = math.prod(shape[:-1]) if len(shape) > 1 else 1
    mode, radius = _arch.position_layout(arch, tuple(shape[:-1]))
    pos = P * P if mode == "full" else P * math.prod(2 * r + 1 for r in radius)
    return 12.0 * pos * np.dtype(dtype).itemsize


def _all_layers(layer):
    for sub in getattr(layer, "layers", ()) + getattr(layer, "branches", ()):
        yield from _all_layers(sub)
    yield layer


def _width_free(layer):
    """``layer`` with every Dense width, Conv channel count and attention width set to 1."""
    if isinstance(layer, _arch.Serial):
        return _arch.Serial(tuple(_width_free(l) for l in layer.layers))
    if isinstance(layer, _arch.Parallel):
        return _arch.Parallel(tuple(_width_free(b) for b in layer.branches))
    if isinstance(layer, _layers.Dense):
        return dataclasses.replace(layer, width=1)
    if isinstance(layer, _layers.Conv):
        return dataclasses.replace(layer, channels=1)
    if isinstance(layer, GlobalSelfAttention):
        return dataclasses.replace(layer, n_chan_out=1, n_chan_key=1, n_chan_val=1, n_heads=1)
    return layer


@functools.lru_cache(maxsize=256)
def kernel_equivalent(arch: Architecture) -> Architecture:
    """An architecture with the same analytic kernel, used as the compiled programs' static
    key: with only NTK-parameterised layers the kernel does not depend on the widths (they
    only enter the standard parameterisation's NTK through the fan-in), so every width of a
    sweep shares one compiled program."""
    if any(
        isinstance(l, _layers._Affine) and l.parameterization == "standard"
        for l in _all_layers(arch.net)
    ):
        return arch
    return Architecture(_width_free(arch.net))


@functools.lru_cache(maxsize=256)
def _check_arch(arch, shape, dtype):
    """Trace-only check of the whole layer stack (architecture errors name the layer)."""
    jax.eval_shape(lambda a: arch.kernel_fn(a), jax.ShapeDtypeStruct((1,) + shape, dtype))


def _plan_uncached(arch, shape, dtype, n, block_size, memory_env):
    arch.check_input_shape(shape, name="x1")
    # trace-only check of the whole layer stack (architecture errors name the layer)
    _check_arch(arch, shape, dtype)
    return _blocks.choose_block_size(block_size, n, _bytes_per_pair(arch, shape, dtype))


_plan_cached = functools.lru_cache(maxsize=256)(_plan_uncached)


def _plan(arch, shape, dtype, n, block_size) -> int:
    """The shape checks and the block size, once per (architecture, example shape, dtype,
    number of examples, block size, memory limit): a repeated call pays a dictionary look-up.
    Failures are not cached (every bad call raises)."""
    memory_env = os.environ.get("NTK_MEMORY_LIMIT")
    if block_size is None or type(block_size) is int:
        return _plan_cached(arch, shape, dtype, n, block_size, memory_env)
    return _plan_uncached(arch, shape, dtype, n, block_size, memory_env)


@functools.lru_cache(maxsize=256)
def _text(arch: Architecture) -> str:
    """``repr(arch)`` (provenance, store binding), once per architecture."""
    return repr(arch)


@_validate.public("ntk.kernel")
def kernel(
    arch: Architecture,
    x1,
    x2=None,
    *,
    block_size: int | None = None,
    store=None,
    progress: bool = False,
) -> Kernel:
    """Analytic infinite-width NNGP and NTK of ``arch`` between ``x1`` and ``x2``.

    Recursions of Jacot et al. (2018), Lee et al. (2019) and Arora et al. (2019) (CNTK), in
    neural-tangents' conventions (input kernel ``x . x' / channels``; outputs per output
    channel). Convolutional kernels keep only the spatial covariance the layer stack needs
    (:func:`ntk._arch.position_layout`):

    * Flatten readout, no pooling: only the position diagonal ``p == p'`` (time and memory
      linear in the number of positions P per pair);
    * AvgPool layers and a Flatten readout: only the pairs within the band ``|p'_k - p_k| <=
      r_k`` that the pooling windows need (``r = 0`` after the last AvgPool, ``s r + q - 1``
      before an AvgPool of window ``q`` and stride ``s``, ``s r`` before a strided Conv): P
      times ``prod_k (2 r_k + 1)`` entries;
    * GlobalAvgPool anywhere: the full P x P position covariance (quadratic).

    Cost: ``n1 n2`` pairs times (P, P times the band, or P^2) times the depth, in blocks of
    ``block_size x block_size`` pairs (symmetric case: upper-triangle blocks only), one block
    per device at a time; memory about 12 arrays of one block. Float32 or float64 follows the
    inputs' dtype (float64 needs ``jax.enable_x64``).

    Args:
      arch: an :class:`ntk.Architecture` (from :func:`ntk.serial`).
      x1: inputs ``(n1, features)`` or NHWC images ``(n1, H, W, C)``.
      x2: second inputs (same example shape) or ``None`` for ``K(x1, x1)``.
      block_size: rows (and columns) per block; default: the largest within 256 MiB.
      store: a directory or a :class:`landscape.Store`: finished blocks are saved
        atomically and loaded when the same call is repeated after an interruption (the
        store is bound to this call: architecture, inputs, dtype, blocking; a store of
        another job is refused with the differences listed, unless opened with
        ``landscape.Store(path, overwrite=True)``).
      progress: show a progress bar over waves of blocks.

    Returns:
      :class:`ntk.Kernel` with ``nngp`` and ``ntk`` of shape ``(n1, n2)`` (NumPy).

    Raises:
      TypeError: ``arch`` is not an architecture or inputs are not numeric arrays.
      ValueError: inputs do not match the architecture, contain NaN/Inf, or ``block_size``
        cannot fit.
      ntk.ArchitectureError: a layer has no analytic kernel in this position (names it).

    Example:
      >>> arch = ntk.serial(ntk.Conv(64, (3, 3), padding="SAME"), ntk.Relu(),
      ...                   ntk.GlobalAvgPool(), ntk.Dense(10))
      >>> k = ntk.kernel(arch, images)   # k.nngp, k.ntk: (n, n)

    References:
      Jacot, Gabriel, Hongler (2018), Neural Tangent Kernel. Lee et al. (2019), Wide neural
      networks of any depth evolve as linear models. Arora et al. (2019), On exact computation
      with an infinitely wide neural net. Novak et al. (2020), Neural Tangents.
    """
    if not isinstance(arch, Architecture):
        raise TypeError(
            f"{_validate.where('ntk')}: arch must be an ntk.Architecture (from ntk.serial); got {type(arch).__name__}."
        )
    # NaN/Inf: checked by the blocked driver (inside the compiled program for one block)
    x1 = _checks.as_inputs(x1, name="x1", finite=False)
    x2 = None if x2 is None else _checks.as_inputs(x2, name="x2", dtype=x1.dtype, finite=False)
    _checks.check_pair(x1, x2)
    n = max(x1.shape[0], 0 if x2 is None else x2.shape[0])
    bs = _plan(arch, tuple(x1.shape[1:]), np.dtype(x1.dtype), n, block_size)
    meta = (
        None
        if store is None
        else dict(
            job="ntk.kernel",
            arch=_text(arch),
            dtype=str(x1.dtype),
            data=data_hash({"x1": x1, "x2": x2}),
        )
    )
    nngp, ntkm = _blocks.blocked(
        _AnalyticBlock(kernel_equivalent(arch)),
        (),
        x1,
        x2,
        block_size=bs,
        store=store,
        store_meta=meta,
        progress=progress,
        check_inputs=True,
    )
    prov = _blocks.provenance(
        x1.dtype,
        arch=_text(arch),
        block_size=bs,
        n1=int(x1.shape[0]),
        n2=int((x1 if x2 is None else x2).shape[0]),
    )
    return Kernel(nngp=nngp, ntk=ntkm, provenance=prov)


def kernel_fn(arch: Architecture):
    """The jitted analytic kernel function ``k(x1, x2=None) -> (nngp, ntk)`` (no blocking),
    for use inside other compiled code. Reuse the returned function to avoid recompiling."""
    if not isinstance(arch, Architecture):
        raise TypeError(
            f"ntk.kernel_fn: arch must be an ntk.Architecture; got {type(arch).__name__}."
        )
    return jax.jit(lambda x1, x2=None: arch.kernel_fn(x1, x2))


del jnp
