"""Walking a traced program: the toolkit's one way to follow a model's jaxpr.

Analyses that look inside a model (permutation symmetries in :mod:`landscape.connect`, the
layers of :mod:`landscape.diagnostics`) trace ``apply_fn`` to a jaxpr and follow its equations.
The pieces they share live here, once:

* :func:`trace_model`: the closed jaxpr of ``apply_fn(params, state, x, train=...)``'s outputs,
  traced on abstract values (shapes and dtypes only, so it works on tracers too);
* :data:`INLINE` and :func:`inlined`: the calls that are followed equation by equation (``jit``
  and its relatives: a call changes nothing about the values); every other call
  (``custom_jvp_call``, ``custom_vjp_call``, ``remat``, ``cond``, loops) is one equation;
* :func:`sub_jaxpr`, :func:`sub_programs`: the program(s) nested in an equation;
* :func:`evaluate`: evaluates a program equation by equation (the inlined calls followed), with
  a hook ``after(position, eqn, outputs) -> outputs`` that may read or replace every equation's
  outputs (capture activations, add a perturbation at one value to differentiate by it);
* :func:`flatten`: the program as one list of equations in evaluation order, the inlined calls
  expanded, every value an integer id with its producer and consumers (for analyses that
  follow data flow: what depends on the data, on which parameter, what comes after what).

A *position* is the tuple of equation indices from the top program down through inlined calls
(``(3,)``: the fourth equation; ``(3, 0)``: the first equation of the call at index 3).
:func:`flatten` and :func:`evaluate` use the same positions, so a position found by an analysis
of the flat program addresses the same equation during evaluation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.extend import core as jcore

from landscape import _compat

__all__ = [
    "INLINE",
    "NARY",
    "PRODUCTS",
    "UNARY",
    "Flat",
    "FlatEqn",
    "evaluate",
    "flatten",
    "inlined",
    "location",
    "sub_jaxpr",
    "sub_programs",
    "trace_model",
]

INLINE = frozenset({"jit", "pjit", "closed_call", "core_call"})
"""Calls followed equation by equation (their values are the program's values)."""

PRODUCTS = ("dot_general", "conv_general_dilated")
"""The primitives of dense layers and convolutions."""

UNARY = frozenset(
    {
        "neg",
        "sign",
        "floor",
        "ceil",
        "round",
        "is_finite",
        "exp",
        "exp2",
        "log",
        "log1p",
        "expm1",
        "tanh",
        "logistic",
        "sin",
        "cos",
        "tan",
        "asin",
        "acos",
        "atan",
        "sinh",
        "cosh",
        "asinh",
        "acosh",
        "atanh",
        "sqrt",
        "rsqrt",
        "cbrt",
        "abs",
        "not",
        "integer_pow",
        "square",
        "erf",
        "erfc",
        "erf_inv",
        "lgamma",
        "digamma",
        "convert_element_type",
        "reduce_precision",
        "copy",
        "copy_p",
        "real",
        "imag",
        "conj",
        "stop_gradient",
        "population_count",
        "clz",
        "bessel_i0e",
        "bessel_i1e",
        "optimization_barrier",
    }
)
NARY = frozenset(
    {
        "add",
        "sub",
        "mul",
        "div",
        "rem",
        "pow",
        "max",
        "min",
        "atan2",
        "nextafter",
        "and",
        "or",
        "xor",
        "eq",
        "ne",
        "lt",
        "le",
        "gt",
        "ge",
        "select_n",
        "clamp",
        "add_any",
        "shift_left",
        "shift_right_logical",
        "shift_right_arithmetic",
        "complex",
        "igamma",
        "igammac",
        "polygamma",
        "zeta",
        "random_gamma_grad",
    }
)
"""Elementwise primitives on one operand (``UNARY``) and on several broadcast operands
(``NARY``): the rule tables of the analyses that follow values through a program."""


def closed_jaxpr(p) -> jcore.ClosedJaxpr | None:
    """``p`` as a closed jaxpr (a plain ``Jaxpr`` gets no constants), or None."""
    if isinstance(p, jcore.ClosedJaxpr):
        return p
    if isinstance(p, jcore.Jaxpr):
        return jcore.ClosedJaxpr(p, [])
    return None


def sub_jaxpr(eqn) -> jcore.ClosedJaxpr | None:
    """The program a call equation runs (``jit``, ``custom_jvp_call``, ``remat``, ...), or
    None."""
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        if key in eqn.params:
            c = closed_jaxpr(eqn.params[key])
            if c is not None:
                return c
    return None


def sub_programs(eqn) -> list[jcore.ClosedJaxpr]:
    """Every program nested in an equation's parameters (a call's, ``cond``'s branches, a
    loop's body and condition)."""
    out = []
    for v in eqn.params.values():
        for item in v if isinstance(v, (tuple, list)) else (v,):
            c = closed_jaxpr(item)
            if c is not None:
                out.append(c)
    return out


def inlined(eqn, num_args: int | None = None) -> jcore.ClosedJaxpr | None:
    """The program of an :data:`INLINE` call (followed equation by equation), or None (the
    equation is evaluated as one). ``num_args``: the call's argument count, checked against
    the program's inputs."""
    if eqn.primitive.name not in INLINE:
        return None
    sub = sub_jaxpr(eqn)
    if sub is None:
        return None
    n = len(eqn.invars) if num_args is None else num_args
    return sub if len(sub.jaxpr.invars) == n else None


def location(eqn, enclosing: tuple[str, ...] = ()) -> str:
    """The equation's source line; equations inside library calls (``jnp.cumsum`` is a nested
    jit) carry no user location, so they report the innermost enclosing call's."""
    loc = _compat.source_summary(getattr(eqn, "source_info", None))
    if loc.strip() and loc != _compat.UNKNOWN_LOCATION:
        return loc
    return next((x for x in reversed(enclosing) if x.strip()), _compat.UNKNOWN_LOCATION)


def _abstract(tree):
    """Arrays and tracers as ``jax.ShapeDtypeStruct`` (anything else, a Python number, as is)."""

    def one(a):
        if hasattr(a, "shape") and hasattr(a, "dtype"):
            return jax.ShapeDtypeStruct(np.shape(a), a.dtype)
        return a

    return jax.tree.map(one, tree)


def trace_model(apply_fn: Callable, params, state, x, *, train: bool = False) -> jcore.ClosedJaxpr:
    """The closed jaxpr of ``apply_fn(params, state, x, train=train)[0]`` (the outputs; the new
    state is dropped), traced on the arguments' shapes and dtypes. Its inputs are the leaves of
    ``params``, then of ``state``, then ``x``."""

    def f(p, s, xx):
        out, _ = apply_fn(p, s, xx, train=train)
        return out

    return jax.make_jaxpr(f)(*_abstract((params, state, x)))


def evaluate(
    closed: jcore.ClosedJaxpr, args: list, after: Callable | None = None, *, prefix: tuple = ()
) -> list:
    """Evaluate ``closed`` on ``args`` (concrete values or tracers) equation by equation,
    following :data:`INLINE` calls; ``after(position, eqn, outputs) -> outputs`` (optional) sees
    and may replace the outputs of every equation, an inlined call's too (after its
    equations). Traceable: use it inside ``jit``, ``grad`` and ``vmap``."""
    jaxpr = closed.jaxpr
    env = dict(zip(jaxpr.constvars, closed.consts))
    env.update(zip(jaxpr.invars, args))

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    for i, eqn in enumerate(jaxpr.eqns):
        vals = [read(v) for v in eqn.invars]
        sub = inlined(eqn, len(vals))
        pos = prefix + (i,)
        outs = (
            evaluate(sub, vals, after, prefix=pos)
            if sub is not None
            else _compat.bind_equation(eqn, vals)
        )
        if after is not None:
            outs = after(pos, eqn, outs)
        for v, val in zip(eqn.outvars, outs):
            if not isinstance(v, jcore.DropVar):
                env[v] = val
    return [read(v) for v in jaxpr.outvars]


@dataclasses.dataclass(frozen=True, eq=False)
class FlatEqn:
    """One equation of a :class:`Flat` program.

    Attributes:
      index: its place in the flat program (evaluation order).
      pos: its position (equation indices through inlined calls), as :func:`evaluate` sees it.
      eqn: the jaxpr equation.
      ins: per input, the value id, or None for a literal (read ``eqn.invars[k].val``).
      outs: per output, the value id (dropped outputs get an id too).
      loc: its source line (or the enclosing call's).
    """

    index: int
    pos: tuple
    eqn: Any
    ins: tuple
    outs: tuple
    loc: str

    @property
    def name(self) -> str:
        return self.eqn.primitive.name


@dataclasses.dataclass(frozen=True, eq=False)
class Flat:
    """A program with its inlined calls expanded: equations in evaluation order over integer
    value ids.

    Attributes:
      eqns: the equations (:class:`FlatEqn`), inlined calls replaced by their equations.
      inputs: the ids of the program's inputs (in ``closed.jaxpr.invars`` order).
      outputs: the ids of its outputs.
      avals: ``{id: abstract value}`` (shape and dtype).
      consts: ``{id: value}`` of the constants (closed-over arrays and literals returned as
        outputs of inlined calls).
      producer: ``{id: (equation index, output index)}``.
      consumers: ``{id: [equation index, ...]}`` (in order, one entry per use).
    """

    eqns: list
    inputs: list
    outputs: list
    avals: dict
    consts: dict
    producer: dict
    consumers: dict

    def shape(self, vid: int) -> tuple:
        a = self.avals.get(vid)
        return tuple(getattr(a, "shape", ()))


def flatten(closed: jcore.ClosedJaxpr) -> Flat:
    """The program as a :class:`Flat` list of equations (:data:`INLINE` calls expanded)."""
    eqns: list[FlatEqn] = []
    avals: dict = {}
    consts: dict = {}
    counter = [0]

    def new(aval) -> int:
        i = counter[0]
        counter[0] += 1
        avals[i] = aval
        return i

    def go(cj, in_ids, prefix, enclosing):
        jaxpr = cj.jaxpr
        env = {}
        for v, c in zip(jaxpr.constvars, cj.consts):
            env[v] = new(v.aval)
            consts[env[v]] = c
        env.update(zip(jaxpr.invars, in_ids))

        def ref(v):
            if isinstance(v, jcore.Literal):
                return None
            return env[v]

        for i, eqn in enumerate(jaxpr.eqns):
            pos = prefix + (i,)
            ins = tuple(ref(v) for v in eqn.invars)
            loc = location(eqn, enclosing)
            sub = inlined(eqn)
            if sub is not None:
                sub_ins = []
                for v, r in zip(eqn.invars, ins):
                    if r is None:  # a literal argument: a constant of the inner program
                        r = new(v.aval)
                        consts[r] = v.val
                    sub_ins.append(r)
                outs = go(sub, sub_ins, pos, enclosing + (loc,))
            else:
                outs = tuple(new(v.aval) for v in eqn.outvars)
                eqns.append(FlatEqn(len(eqns), pos, eqn, ins, outs, loc))
            for v, o in zip(eqn.outvars, outs):
                if not isinstance(v, jcore.DropVar):
                    env[v] = o
        out_ids = []
        for v in jaxpr.outvars:
            r = ref(v)
            if r is None:
                r = new(v.aval)
                consts[r] = v.val
            out_ids.append(r)
        return tuple(out_ids)

    inputs = [new(v.aval) for v in closed.jaxpr.invars]
    outputs = list(go(closed, inputs, (), ()))
    producer, consumers = {}, {}
    for e in eqns:
        for k, o in enumerate(e.outs):
            producer[o] = (e.index, k)
        for r in e.ins:
            if r is not None:
                consumers.setdefault(r, []).append(e.index)
    return Flat(eqns, inputs, outputs, avals, consts, producer, consumers)
