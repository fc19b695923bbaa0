"""The first-layer trick, found from the traced program: the first affine layer's products
are computed once per basis point, not once per grid point.

At a grid point ``theta = sum_k c_k b_k`` (``b_0`` the centre and ``b_k`` the directions with
``c_0 = 1``; or a path's control points with its basis weights), a product of the data with a
parameter leaf is bilinear: ``x * W(theta) = sum_k c_k (x * W_k)``, where ``*`` is a
``dot_general`` or a convolution and ``x`` does not depend on the parameters. The ``K``
products ``z_k = x * W_k`` are computed ONCE for the whole data set; each point then needs a
``K``-term linear combination instead of the product, and the rest of the program (bias,
activation, the other layers, the loss and its metrics) runs unchanged on the point's
parameters.

The product is found in the loss's own program, never from layer names: the loss is traced to
a jaxpr (calls to ``jit`` functions inlined) and its equations are followed in order. The
target is the first ``dot_general`` or ``conv_general_dilated`` whose

* weight operand is a parameter leaf, or a reshape/transpose/broadcast/exact widening of one
  (so it is linear in the leaf), and whose
* other operand depends on the data and on no parameter (any function of the batch and the
  model's fixed state: a flatten, a cast, a fixed normalisation), with the examples on its
  leading axis, not contracted, and not mixed (checked on a two-example probe).

Every other use of the same leaf (tied weights, the weight-decay penalty) is evaluated as
usual. The substituted program computes the same numbers up to floating-point reassociation
(tests: float64 to 1e-12, float32 to 1e-5 relative, on an MLP and on a CNN).

When no product qualifies, or the batch-norm policy changes the state per point, or the
precomputed products would not fit in the memory budget, the grid falls back to the plain
evaluation and records why (``result.settings["first_layer"]``, also in the provenance). With
``mode="auto"`` (the slices' default) the trick is also skipped where it does not pay: a
product with fewer than :data:`MIN_CONTRACTION_PER_TERM` multiply-adds per output element and
basis point (a 3 x 3 convolution of one input channel: 9 multiply-adds against 3 terms of a
combination that must read 3 arrays of the output's size).

The grid evaluator (:mod:`landscape.grid`) calls :meth:`AffineFirstLayer.prepare`; the data it
then scans are the original entries plus ``z_k`` (one array per basis point, examples on the
leading axis), so chunking, sharding and resuming are unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore
from jax.tree_util import Partial

from landscape import _compat, engine
from landscape import tree as _tree
from landscape import validate as _validate
from landscape._model import Model

PyTree = Any

__all__ = ["AffineFirstLayer", "as_first_layer", "affine_first_layer"]

Z_KEY = "__first_layer_z__"
MODES = ("auto", "always")
PRODUCTS = ("dot_general", "conv_general_dilated")
MIN_CONTRACTION_PER_TERM = 4
"""``mode="auto"`` applies the trick when the product's multiply-adds per output element are at
least this many times the number of basis points (the combination's terms)."""

# calls whose programs are followed equation by equation (inlined)
_INLINE = {"jit", "pjit", "closed_call", "core_call"}
# unary operations through which a parameter leaf stays a linear image of itself
_STRUCTURAL = {
    "reshape",
    "transpose",
    "squeeze",
    "expand_dims",
    "broadcast_in_dim",
    "copy",
    "copy_p",
}


class NotApplicable(Exception):
    """The trick does not apply; ``str(e)`` says why."""


# --------------------------------------------------------------------------------------------
# Walking a program (calls to jit functions inlined)
# --------------------------------------------------------------------------------------------
def _sub_program(eqn):
    if eqn.primitive.name not in _INLINE:
        return None
    for key in ("jaxpr", "call_jaxpr"):
        p = eqn.params.get(key)
        if isinstance(p, jcore.ClosedJaxpr):
            return p
        if isinstance(p, jcore.Jaxpr):
            return jcore.ClosedJaxpr(p, [])
    return None


def _walk(jaxpr, consts, args, visit, path=()):
    """Evaluate ``jaxpr`` with ``visit(eqn, invals, path)`` for every equation outside inlined
    calls; ``path`` is the tuple of equation indices from the top program down."""
    env = {}

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    for i, eqn in enumerate(jaxpr.eqns):
        invals = [read(v) for v in eqn.invars]
        sub = _sub_program(eqn)
        if sub is not None:
            outs = _walk(sub.jaxpr, sub.consts, invals, visit, path + (i,))
        else:
            outs = visit(eqn, invals, path + (i,))
        env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]


@dataclasses.dataclass(frozen=True)
class _Tag:
    """What a value of the traced program depends on."""

    params: frozenset = frozenset()  # parameter leaves
    data: bool = False  # the batch
    leaf: int | None = None  # a linear (structural) image of this parameter leaf


_CONST = _Tag()


def _tag(x) -> _Tag:
    return x if isinstance(x, _Tag) else _CONST


def _widening(eqn) -> bool:
    """A ``convert_element_type`` that is exact (same or wider floating type)."""
    if eqn.primitive.name != "convert_element_type":
        return False
    src, dst = eqn.invars[0].aval.dtype, eqn.params["new_dtype"]
    return (
        jnp.issubdtype(src, jnp.floating)
        and jnp.issubdtype(dst, jnp.floating)
        and np.dtype(dst).itemsize >= np.dtype(src).itemsize
    )


@dataclasses.dataclass(frozen=True)
class _Target:
    """The product replaced (static, hashable: part of the compiled program's key)."""

    path: tuple
    primitive: str
    leaf: int  # index of the weight's parameter leaf
    weight_side: int  # operand index of the weight (0 or 1)
    data_axis: int  # the data operand's axis of examples
    example_axis: int  # the product's output axis of examples
    contraction: int  # multiply-adds per output element
    num_basis: int = 0

    def __repr__(self):
        return (
            f"_Target({self.primitive} at {self.path}, leaf {self.leaf}, side "
            f"{self.weight_side}, examples on axes {self.data_axis} -> {self.example_axis}, "
            f"K={self.num_basis})"
        )


def _check_product(eqn, tags, n: int) -> tuple[_Target | None, str | None]:
    """``(target, None)`` if ``eqn`` is a product of the data (``n`` examples) with a parameter
    leaf, else ``(None, reason)`` (``reason`` None when the data is not involved at all)."""
    name = eqn.primitive.name
    t = [_tag(x) for x in tags]
    data_side = [s for s in (0, 1) if t[s].data and not t[s].params]
    if not data_side:
        return None, None
    d = data_side[0]
    w = 1 - d
    shapes = [tuple(v.aval.shape) for v in eqn.invars]
    if t[w].leaf is None:
        why = (
            "depends on the data too"
            if t[w].data
            else "is computed from the parameters, not a parameter leaf itself"
            if t[w].params
            else "is not a parameter"
        )
        return None, f"the first {name} of the data: its other operand {why}"
    axes = [i for i, size in enumerate(shapes[d]) if size == n]
    if not axes:
        return None, f"the {name}'s data operand (shape {shapes[d]}) has no axis of examples"
    if name == "dot_general":
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        contracting, batch = (lc, lb) if d == 0 else (rc, rb)
        free = [i for i in range(len(shapes[d])) if i not in contracting and i not in batch]
        axes = [i for i in axes if i in free]
        if not axes:
            return None, f"the {name} contracts or batches over the examples' axis"
        lhs_free = len(shapes[0]) - len(lc) - len(lb)
        axis = len(lb) + free.index(axes[0]) + (0 if d == 0 else lhs_free)
        contraction = math.prod(shapes[d][i] for i in contracting)
    else:  # conv_general_dilated
        dn = eqn.params["dimension_numbers"]
        if d != 0:
            return None, f"the {name} has the data as its kernel"
        if eqn.params.get("batch_group_count", 1) != 1:
            return None, f"the {name} has batch_group_count > 1 (mixes examples)"
        if dn.lhs_spec[0] not in axes:
            return None, f"the {name}'s batch dimension is not the data's axis of examples"
        axes = [dn.lhs_spec[0]]
        axis = dn.out_spec[0]
        rhs = shapes[1]
        contraction = rhs[dn.rhs_spec[1]] * math.prod(rhs[k] for k in dn.rhs_spec[2:])
    return _Target(tuple(), name, t[w].leaf, w, axes[0], int(axis), int(contraction)), None


def _detect(jaxpr, num_params: int, num_inputs: int) -> tuple[_Target | None, str]:
    """The first qualifying product of ``jaxpr`` (inputs: ``num_params`` parameter leaves, then
    the batch's leaves, ``n`` examples each) and, if none, why."""
    n = jaxpr.invars[num_params].aval.shape[0] if num_inputs > num_params else 0
    found: list = []
    reasons: list = []

    def visit(eqn, invals, path):
        tags = [_tag(x) for x in invals]
        name = eqn.primitive.name
        if name in PRODUCTS and not found:
            target, why = _check_product(eqn, tags, n)
            if target is not None:
                found.append(dataclasses.replace(target, path=path))
            elif why is not None:
                reasons.append(why)
        params = frozenset().union(*(t.params for t in tags))
        data = any(t.data for t in tags)
        leaf = None
        ins = [t for t, v in zip(tags, eqn.invars) if not isinstance(v, jcore.Literal)]
        if len(ins) == 1 and ins[0].leaf is not None and (name in _STRUCTURAL or _widening(eqn)):
            leaf = ins[0].leaf
        return [_Tag(params, data, leaf) for _ in eqn.outvars]

    args = [_Tag(frozenset([i]), False, i) for i in range(num_params)]
    args += [_Tag(frozenset(), True, None)] * (num_inputs - num_params)
    _walk(jaxpr, [_CONST] * len(jaxpr.constvars), args, visit)
    if found:
        return found[0], ""
    if reasons:
        return None, reasons[0]
    return None, "no dot_general or convolution of the data with a parameter leaf in the loss"


# --------------------------------------------------------------------------------------------
# Tracing the loss
# --------------------------------------------------------------------------------------------
def _trace(loss_fn, params, batch):
    """``(closed jaxpr, flat inputs, output tree, number of parameter leaves)`` of
    ``engine.loss_dict(loss_fn, params, batch)`` (works on concrete values and on tracers)."""
    p_leaves, p_tree = jax.tree.flatten(params)
    b_leaves, b_tree = jax.tree.flatten(batch)

    def f(*leaves):
        p = jax.tree.unflatten(p_tree, leaves[: len(p_leaves)])
        b = jax.tree.unflatten(b_tree, leaves[len(p_leaves) :])
        return engine.loss_dict(loss_fn, p, b)

    with jax.default_matmul_precision(engine.ANALYSIS_PRECISION):
        closed, shape = jax.make_jaxpr(f, return_shape=True)(*p_leaves, *b_leaves)
    return closed, p_leaves + b_leaves, jax.tree.structure(shape), len(p_leaves)


class _Captured(Exception):
    def __init__(self, eqn, invals):
        super().__init__("captured")
        self.eqn, self.invals = eqn, invals


def _capture(closed, args, path):
    """The operands of the equation at ``path`` (the program evaluated up to it)."""

    def visit(eqn, invals, p):
        if p == path:
            raise _Captured(eqn, invals)
        return _compat.bind_equation(eqn, invals)

    try:
        _walk(closed.jaxpr, closed.consts, args, visit)
    except _Captured as c:
        return c.eqn, c.invals
    raise RuntimeError("landscape.surface: internal error: the first-layer product was not found")


def _products(loss_fn, target: _Target, basis: tuple, batch):
    """``z_k`` for each basis point (examples on axis 0): the product evaluated with the data
    operand of ``batch`` and the weight operand of basis point ``k``."""
    zs = []
    for p in basis:
        closed, args, _, _ = _trace(loss_fn, p, batch)
        eqn, invals = _capture(closed, args, target.path)
        with jax.default_matmul_precision(engine.ANALYSIS_PRECISION):
            (z,) = _compat.bind_equation(eqn, invals)
        zs.append(jnp.moveaxis(z, target.example_axis, 0))
    return tuple(zs)


@functools.partial(jax.jit, static_argnames=("fn_static", "target"))
def _features(fn_static, fn_dyn, target, basis, batch):
    """One jitted program: the ``K`` products over a whole data set."""
    return _products(engine.merge_fn(fn_static, fn_dyn), target, basis, batch)


def _is_z(key) -> bool:
    return isinstance(key, str) and key.startswith(Z_KEY)


def loss_dict(loss_fn, target: _Target, point, batch):
    """``{"loss", aux...}`` at ``point = (basis weights, params)``: the loss's program with the
    target product replaced by ``sum_k w_k z_k`` (traceable; the grid's per-batch function)."""
    w, params = point
    zs = [batch[f"{Z_KEY}{k}"] for k in range(target.num_basis)]
    orig = {k: v for k, v in batch.items() if not _is_z(k)}
    closed, args, out_tree, num_params = _trace(loss_fn, params, orig)
    again, why = _detect(closed.jaxpr, num_params, len(args))
    if again is None or dataclasses.replace(again, num_basis=target.num_basis) != target:
        raise RuntimeError(
            f"{_validate.where()}: internal error: the loss's program at batch shape "
            f"{jax.tree.map(jnp.shape, orig)} has another first-layer product ({again}) than "
            f"the one prepared ({target}); {why}"
        )
    h = zs[0] * w[0].astype(zs[0].dtype)
    for k in range(1, len(zs)):
        h = h + zs[k] * w[k].astype(zs[k].dtype)
    h = jnp.moveaxis(h, 0, target.example_axis)

    def visit(eqn, invals, path):
        if path == target.path:
            return [h.astype(eqn.outvars[0].aval.dtype)]
        return _compat.bind_equation(eqn, invals)

    outs = _walk(closed.jaxpr, closed.consts, args, visit)
    return jax.tree.unflatten(out_tree, outs)


# --------------------------------------------------------------------------------------------
# The object the grid calls
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Prepared:
    """What :meth:`AffineFirstLayer.prepare` gives the grid."""

    applied: bool
    info: dict
    splits: list | None = None
    value_fn: Callable | None = None


def _probe(data, n):
    return _tree.to_device(jax.tree.map(lambda x: x[:n], data))


@dataclasses.dataclass(frozen=True)
class AffineFirstLayer:
    """How to apply the first-layer trick (static, hashable). Build it with
    :func:`affine_first_layer`, or pass ``first_layer="auto"`` / ``True`` to the slices.

    Attributes:
      mode: ``"auto"`` (apply where it is exact and pays; skip silently otherwise, the reason
        recorded) or ``"always"`` (apply wherever it is exact; warn when falling back).
      apply_fn: the model's ``apply_fn`` when built from a model (the loss must be that
        model's), else ``None``.
    """

    mode: str = "always"
    apply_fn: Callable | None = None

    def __repr__(self):
        return f"AffineFirstLayer(mode={self.mode!r})"

    def _fallback(self, reason: str) -> Prepared:
        if self.mode == "always":
            _validate.warn(
                f"{_validate.where()}: the first-layer trick does not apply ({reason}); "
                "evaluating every point in full (same values, no speed-up).",
                UserWarning,
            )
        return Prepared(False, {"mode": self.mode, "applied": False, "reason": reason})

    def prepare(self, loss_fn, family, splits, *, policy: str, memory_budget: int) -> Prepared:
        """Find the product in ``loss_fn``'s program and precompute it for ``family``'s basis
        points on every split; or say why not (the grid then evaluates as usual).

        Raises:
          ValueError: built from a model that is not ``loss_fn``'s.
        """
        if self.apply_fn is not None and getattr(loss_fn, "apply_fn", None) is not self.apply_fn:
            raise ValueError(
                f"{_validate.where()}: first_layer was built for another model than loss_fn's; "
                "build both from the same landscape.Model (or use first_layer='auto')."
            )
        if policy != "fixed":
            return self._fallback(
                f"bn={policy!r} changes the model state at every point; the trick needs bn='fixed'"
            )
        if not hasattr(family, "basis") or not hasattr(family, "basis_weights"):
            return self._fallback(f"the family {type(family).__name__} has no basis points")
        if any(isinstance(d, engine.Batched) for _, d in splits):
            return self._fallback("the data were passed already batched (engine.Batched)")
        basis = tuple(family.basis())
        origin = family.origin
        train = splits[0][1]
        try:
            target, why = self._find(loss_fn, origin, train)
        except NotApplicable as e:
            return self._fallback(str(e))
        if target is None:
            return self._fallback(why)
        target = dataclasses.replace(target, num_basis=len(basis))
        k = len(basis)
        info = {
            "mode": self.mode,
            "applied": False,
            "product": target.primitive,
            "weight_leaf": _leaf_name(origin, target.leaf),
            "contraction": target.contraction,
            "num_basis": k,
        }
        if self.mode == "auto" and target.contraction < MIN_CONTRACTION_PER_TERM * k:
            info["reason"] = (
                f"not worth it: the {target.primitive} has {target.contraction} multiply-adds per "
                f"output element, fewer than {MIN_CONTRACTION_PER_TERM} x {k} (the combination's "
                "terms); use first_layer=True to apply it anyway"
            )
            return Prepared(False, info)
        fs, fd = engine.split_fn(loss_fn)
        shapes = [
            jax.eval_shape(lambda b: _features(fs, fd, target, basis, b), d) for _, d in splits
        ]
        nbytes = sum(
            int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize for ss in shapes for s in ss
        )
        info["feature_bytes"] = nbytes
        if nbytes > memory_budget:
            return self._fallback(
                f"the precomputed products need {nbytes / 2**20:.0f} MiB, more than the memory "
                f"budget {memory_budget / 2**20:.0f} MiB (settings.memory_budget)"
            )
        out = []
        for name, d in splits:
            zs = _features(fs, fd, target, basis, d)
            new = dict(d)
            new.update({f"{Z_KEY}{i}": z for i, z in enumerate(zs)})
            out.append((name, new))
        info["applied"] = True
        return Prepared(True, info, out, Partial(loss_dict, loss_fn, target))

    def _find(self, loss_fn, params, data):
        """The product, checked on the whole data set's shapes and on two- and three-example
        probes (the same product, the examples on the same axis, not mixed)."""
        if not isinstance(data, dict) or any(_is_z(k) for k in data):
            raise NotApplicable("the data must be a dict of arrays without first-layer entries")
        n = _validate.num_examples(data)
        shaped = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)), data
        )
        closed, args, _, num_params = _trace(loss_fn, params, shaped)
        target, why = _detect(closed.jaxpr, num_params, len(args))
        if target is None:
            return None, why
        ops = {}
        for m in [m for m in (2, 3) if m < n]:
            c, a, _, _ = _trace(loss_fn, params, _probe(data, m))
            again, _ = _detect(c.jaxpr, num_params, len(a))
            if again != target:
                raise NotApplicable(
                    f"the loss's program differs with the batch size ({m} vs {n} examples: "
                    f"{again} vs {target})"
                )
            _, invals = _capture(c, a, target.path)
            ops[m] = np.moveaxis(np.asarray(invals[1 - target.weight_side]), target.data_axis, 0)
        if len(ops) == 2 and not np.allclose(ops[3][:2], ops[2], rtol=1e-5, atol=1e-6):
            raise NotApplicable(f"the {target.primitive}'s data operand mixes examples")
        return target, ""


def _eqn_at(jaxpr, path):
    eqn = jaxpr.eqns[path[0]]
    for i in path[1:]:
        jaxpr = _sub_program(eqn).jaxpr
        eqn = jaxpr.eqns[i]
    return eqn


def _leaf_name(params, i: int) -> str:
    paths = jax.tree_util.tree_flatten_with_path(params)[0]
    return jax.tree_util.keystr(paths[i][0]) if i < len(paths) else str(i)


# --------------------------------------------------------------------------------------------
# Public constructors
# --------------------------------------------------------------------------------------------
@_validate.public("landscape.surface.affine_first_layer")
def affine_first_layer(model: Model | None = None, *, mode: str = "always") -> AffineFirstLayer:
    """The first-layer trick, for any model whose loss has a product of the data with a
    parameter leaf (a dense layer, a convolution; found from the traced program).

    Pass the result as ``first_layer=`` to :func:`slice_1d`, :func:`slice_2d` or
    :func:`interpolate` (or :func:`landscape.grid.evaluate`): the product of every grid point
    is then a linear combination of ``K`` (number of directions + 1, or a path's control
    points) products computed once, which removes it from the per-point cost. The slices'
    default ``first_layer="auto"`` is ``affine_first_layer(mode="auto")``.

    Args:
      model: optional: the :class:`landscape.Model` whose loss will be evaluated (checked: a
        loss of another model raises).
      mode: ``"always"`` (apply wherever it is exact; a warning when it falls back) or
        ``"auto"`` (also skip it where it does not pay, silently).

    Returns:
      An :class:`AffineFirstLayer`. Whether it applied, to which product and leaf, and why
      not, is recorded in ``result.settings["first_layer"]`` (and the provenance).

    Cost: ``K`` products over the data set once, and ``K`` arrays of the product's output
    size held in memory (bounded by ``settings.memory_budget``; above it: the plain
    evaluation).

    Raises:
      TypeError, ValueError: ``model`` is not a :class:`landscape.Model`, an unknown mode.
    """
    _validate.check_choice(mode, MODES, name="mode")
    if model is None:
        return AffineFirstLayer(mode)
    if not isinstance(model, Model):
        raise TypeError(
            f"{_validate.where()}: model must be a landscape.Model (or None); got "
            f"{type(model).__name__}."
        )
    return AffineFirstLayer(mode, model.apply_fn)


def as_first_layer(first_layer) -> AffineFirstLayer | None:
    """The ``first_layer=`` argument of the slices as an object: ``"auto"``, ``True``
    (``mode="always"``), ``None``/``False`` (off) or an :class:`AffineFirstLayer`."""
    if first_layer is None or first_layer is False:
        return None
    if first_layer is True:
        return AffineFirstLayer("always")
    if isinstance(first_layer, str) and first_layer == "auto":
        return AffineFirstLayer("auto")
    if isinstance(first_layer, AffineFirstLayer):
        return first_layer
    raise TypeError(
        f"{_validate.where()}: first_layer must be 'auto', True, False/None or "
        f"landscape.surface.affine_first_layer(...); got {first_layer!r}."
    )
