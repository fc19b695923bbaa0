"""Convolutions in the form XLA:CPU's fast kernels take, inside loop bodies too.

XLA:CPU runs a convolution with its library kernels (Eigen, YNNPACK) only when its dimension
numbers are ``NHWC`` (input), ``HWIO`` (kernel), ``NHWC`` (output), in one or two spatial
dimensions. The backward pass of an ordinary ``NHWC``/``HWIO`` convolution is not in that form:
the kernel gradient is ``f01b_i01o->01bf`` (examples contracted), the input gradient takes the
kernel as ``HWOI``. XLA's ``ConvCanonicalization`` pass rewrites such convolutions into
transpose, canonical convolution, transpose, but it walks only the program's entry computation
(``module->entry_computation()`` in ``xla/service/cpu/conv_canonicalization.cc``; its header:
"all top-level convolutions"; jax-ml/jax issue 12868): the same convolution inside a ``while``
body (``lax.fori_loop``, ``lax.while_loop``, ``lax.scan``) falls to the naive elemental loop
nest. Measured with jax/jaxlib 0.10.2 (``benchmarks/hessian/conv_loops.py``, BENCHMARKS.md
"Convolutions inside compiled loops (XLA:CPU)"): a 1-block ResNet's Hessian-vector product on
the digits takes 0.13 s as its own program and 5.0 s per product inside a compiled loop.

:func:`landscape.engine.canonical_convs` (through :func:`call_canonical`) makes the same
rewrite in the jaxpr, before XLA sees it, wherever the convolution sits: the function is traced
once, every convolution that is not canonical (in the body and in every sub-jaxpr: ``while``,
``scan``, ``cond``, nested ``jit``, ``shard_map``, ``remat``, the primal functions of
``custom_jvp``/``custom_vjp``) is replaced by the transposes and the canonical convolution
XLA's pass builds (the same permutations; an explicit ``out_sharding`` is permuted with the
output), and the rewritten jaxpr is evaluated in place of the function. The values are those
of the entry-computation program: the same products, on exactly transposed operands (equal to
rounding; bit for bit in the tests). What is not rewritten: the derivative rules of custom
derivatives (JAX traces them only when the wrapped function is differentiated from outside),
and convolutions JAX's transformations write after the rewrite (differentiating or
``vmap``-ing the wrapped function): wrap the derivative, not the function. Programs without
such convolutions (MLPs) are evaluated from the same trace unchanged (the same program).

:data:`landscape.engine.CANONICAL_CONVS` selects when it applies (read at trace time).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import numpy as np
from jax import lax

from landscape import _compat

__all__ = ["call_canonical", "noncanonical_convs"]

_CONV = lax.conv_general_dilated_p


def _jex():
    """``jax.extend.core``, imported when first needed (24 ms: not at ``import landscape``)."""
    import jax.extend.core

    return jax.extend.core


def _canonical_dn(nd: int) -> lax.ConvDimensionNumbers:
    spatial = tuple(range(1, nd - 1))
    return lax.ConvDimensionNumbers(
        lhs_spec=(0, nd - 1, *spatial),
        rhs_spec=(nd - 1, nd - 2, *range(nd - 2)),
        out_spec=(0, nd - 1, *spatial),
    )


def _needs_rewrite(params) -> bool:
    """A convolution XLA:CPU can run fast once transposed (one or two spatial dimensions, the
    only ones its library kernels take) whose dimension numbers are not already canonical."""
    dn = params["dimension_numbers"]
    nd = len(dn.lhs_spec)
    return nd in (3, 4) and tuple(map(tuple, dn)) != tuple(map(tuple, _canonical_dn(nd)))


def _canonical_conv(lhs, rhs, *, dimension_numbers, out_sharding=None, **params):
    """``conv_general_dilated`` with any dimension numbers as transposes around the canonical
    ``NHWC``/``HWIO``/``NHWC`` convolution (the form of XLA's ``ConvCanonicalization``).

    An explicit ``out_sharding`` (set by JAX's derivative rules under explicit sharding) names
    the axes of the original output; it is permuted to the canonical output's axes."""
    l, r, o = dimension_numbers
    out_axes = (o[0], *o[2:], o[1])  # canonical output axis j is original output axis out_axes[j]
    if out_sharding is not None:
        out_sharding = _permuted(out_sharding, out_axes)
    lhs = lax.transpose(lhs, (l[0], *l[2:], l[1]))
    rhs = lax.transpose(rhs, (*r[2:], r[1], r[0]))
    out = _CONV.bind(
        lhs, rhs, dimension_numbers=_canonical_dn(len(l)), out_sharding=out_sharding, **params
    )
    return lax.transpose(out, tuple(int(i) for i in np.argsort(out_axes)))


def _permuted(sharding, axes):
    """``sharding`` (a ``NamedSharding`` of the original output) for the array whose axis ``j``
    is the original axis ``axes[j]``."""
    from jax.sharding import NamedSharding

    if not isinstance(sharding, NamedSharding):
        raise TypeError(f"out_sharding {sharding!r}")  # left as it is by the caller
    parts = tuple(sharding.spec) + (None,) * (len(axes) - len(sharding.spec))
    return sharding.update(spec=sharding.spec.update(partitions=tuple(parts[a] for a in axes)))


@functools.lru_cache(maxsize=512)
def _helper(avals: tuple, params: tuple):
    """The jaxpr of :func:`_canonical_conv` for these input avals and convolution parameters
    (traced once per shape and settings: a ResNet has many equal convolutions)."""
    return jax.make_jaxpr(functools.partial(_canonical_conv, **dict(params)))(*avals)


def _spliced(eqn) -> list:
    """The equations of :func:`_canonical_conv` standing in for the convolution ``eqn`` (same
    input and output variables, fresh intermediate ones, the original source information and
    context)."""
    jex = _jex()
    avals = tuple(v.aval for v in eqn.invars)
    try:
        try:
            helper = _helper(avals, tuple(sorted(eqn.params.items())))
        except TypeError:  # unhashable parameters: trace for this equation alone
            helper = jax.make_jaxpr(functools.partial(_canonical_conv, **eqn.params))(*avals)
    except TypeError:  # a sharding the rewrite cannot permute: the convolution as it is
        return [eqn]
    jx = helper.jaxpr
    if helper.consts or len(jx.outvars) != 1 or jx.outvars[0] in jx.invars:
        return [eqn]  # pragma: no cover - the helper is transposes and one convolution
    sub = dict(zip(jx.invars, eqn.invars))
    sub[jx.outvars[0]] = eqn.outvars[0]
    out = []
    for e in jx.eqns:
        for v in e.outvars:  # a cached helper is spliced many times: its variables are renamed
            if v not in sub:
                sub[v] = jex.Var(v.aval)
        out.append(
            e.replace(
                invars=[sub.get(v, v) if isinstance(v, jex.Var) else v for v in e.invars],
                outvars=[sub[v] for v in e.outvars],
                source_info=eqn.source_info,
                ctx=eqn.ctx,
            )
        )
    return out


def _rewrite_param(val, memo):
    jex = _jex()
    if isinstance(val, jex.ClosedJaxpr):
        new = _rewrite(val.jaxpr, memo)
        return val if new is val.jaxpr else val.replace(jaxpr=new)
    if isinstance(val, jex.Jaxpr):
        return _rewrite(val, memo)
    if isinstance(val, (tuple, list)) and any(
        isinstance(v, (jex.ClosedJaxpr, jex.Jaxpr)) for v in val
    ):
        new = [_rewrite_param(v, memo) for v in val]
        return val if all(a is b for a, b in zip(new, val)) else type(val)(new)
    return val


def _rewrite(jaxpr, memo: dict):
    """``jaxpr`` with every non-canonical convolution rewritten (the same object when there is
    none); sub-jaxprs shared by several equations are rewritten once."""
    key = id(jaxpr)
    if key in memo:
        return memo[key][1]
    eqns, changed = [], False
    for eqn in jaxpr.eqns:
        if eqn.primitive is _CONV and _needs_rewrite(eqn.params):
            eqns.extend(_spliced(eqn))
            changed = True
            continue
        params = {k: _rewrite_param(v, memo) for k, v in eqn.params.items()}
        if any(params[k] is not v for k, v in eqn.params.items()):
            eqn = eqn.replace(params=params)
            changed = True
        eqns.append(eqn)
    out = jaxpr.replace(eqns=eqns) if changed else jaxpr
    memo[key] = (jaxpr, out)  # the original is kept alive so its id is not reused
    return out


def noncanonical_convs(jaxpr) -> int:
    """Number of convolutions in ``jaxpr`` (a ``Jaxpr`` or ``ClosedJaxpr``, sub-jaxprs
    included) that the rewrite would replace (0 once rewritten)."""
    jex = _jex()
    if isinstance(jaxpr, jex.ClosedJaxpr):
        jaxpr = jaxpr.jaxpr
    n = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive is _CONV and _needs_rewrite(eqn.params):
            n += 1
        for sub in jex.jaxprs_in_params(eqn.params):
            n += noncanonical_convs(sub)
    return n


def _is_traced(x) -> bool:
    return _compat.is_tracer(x)


def call_canonical(fn: Callable, *args):
    """``fn(*args)`` with every non-canonical convolution rewritten (traceable).

    ``fn`` is traced once with the traced leaves of ``args`` as the jaxpr's inputs (concrete
    leaves, NumPy arrays and Python numbers are passed through as they are: what ``fn`` may read
    as concrete stays concrete), the jaxpr rewritten and evaluated in place of ``fn``: its
    values, in the enclosing trace. A jaxpr without such convolutions is evaluated as traced.
    """
    jex = _jex()
    leaves, treedef = jax.tree.flatten(args)
    where = [i for i, x in enumerate(leaves) if _is_traced(x)]

    def flat_fn(*arrays):
        full = list(leaves)
        for i, a in zip(where, arrays):
            full[i] = a
        return fn(*jax.tree.unflatten(treedef, full))

    arrays = [leaves[i] for i in where]
    closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(*arrays)
    new = _rewrite(closed.jaxpr, {})
    run = jex.jaxpr_as_fun(closed if new is closed.jaxpr else closed.replace(jaxpr=new))
    return jax.tree.unflatten(jax.tree.structure(out_shape), run(*arrays))
