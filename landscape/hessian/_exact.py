"""Exact traces of the Gauss-Newton matrix and empirical Fisher from per-example gradient norms,
and when the Hessian's trace equals the GGN's, decided from the traced program.

**The identity.** ``H = GGN + sum_i sum_c r_ic d2 f_ic`` (the residual, ``r = dL/df``). When the
network's outputs are (piecewise) affine in each parameter leaf -- ReLU, leaky-ReLU, max-pool,
linear read-out, batch norm in evaluation mode -- ``d2 f / dW dW = 0`` almost everywhere, so the
residual has zero diagonal blocks within each leaf and ``tr H_WW = tr GGN_WW`` for every leaf
``W``. :func:`affine_leaves` decides this per leaf from the jaxpr of the model's outputs: no
multiplicative op whose two operands both depend on the leaf, only piecewise-linear
nonlinearities (``max``, ``min``, ``abs``, ``select``) on values that depend on it, no division by
or ``rsqrt`` of a value that depends on it. Layer names are never used. Tied weights, LayerNorm,
batch norm in training mode, weight standardisation, attention and smooth activations fail the
test (for the leaves they touch) with the operation named.

**The GGN trace.** ``tr GGN = (1/N) sum_i tr(J_i^T H_i J_i)`` with ``H_i`` the output-space
Hessian of example ``i``'s loss (block diagonal over rows: examples, or positions).
Factoring each row's block ``H_r = sum_k lambda_rk v_rk v_rk^T`` (``O x O``; analytic for
cross-entropy, ``(m/n)(diag p - p p^T) = (m/n) sum_k a_k a_k^T`` with
``a_k = sqrt(p_k)(e_k - p)``, and for MSE, ``I / size``) gives
``tr GGN = (1/N) sum_i sum_m w_im ||J_i^T c_im||^2``: per-example squared gradient norms of
``M = R O`` cotangent directions (``R`` rows per example, ``O`` outputs). The empirical Fisher is
the same with one direction per example (``c_i = dl_i/df_i``, weight 1).

**Per-example norms without per-example gradients.** For a leaf whose only use is a dense layer
``y = a W`` (``a``: ``(B, in)`` or ``(B, S, in)``), ``||a_i^T delta_i||^2 = ||a_i||^2 ||delta_i||^2``
(or ``sum_st (a_is . a_it)(delta_is . delta_it)``), and for a broadcast bias or scale
(``y = h + b``, ``y = h * s``) the per-example gradient is a reduction of ``delta_i``
(``h_i * delta_i``). The cotangents ``delta`` at those layers come from one backward pass per
direction through a zero perturbation added to the layer's output (the program is re-evaluated
with these taps, eqn by eqn). Any other leaf (convolution kernels, leaves used twice, leaves
inside nested programs) gets its per-example gradients from a vectorised per-example VJP,
chunked over examples to bound memory.

Cost: ``M`` backward passes (``M = O = 10`` for a 10-class classifier) plus the forward pass, and
``O`` output-space products; memory of ``M`` cotangents per tapped layer and of
``chunk x M x (leaves without taps)`` per-example gradients.

References:
  Schraudolph 2002; Martens 2020 (GGN); Papyan 2019 (the residual term); Goodfellow 2015
  (per-example gradient norms of dense layers); Yao et al. 2020 (PyHessian traces).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.extend as jex
import jax.numpy as jnp
import numpy as np

from landscape import engine
from landscape import tree as _tree

PyTree = Any

# ---------------------------------------------------------------------------------------------
# Which leaves the outputs are piecewise affine in (from the jaxpr)
# ---------------------------------------------------------------------------------------------
def _names(text: str) -> frozenset:
    return frozenset(text.split())


# outputs affine in every operand jointly (structure, sums, selections)
_LINEAR = _names(
    """add add_any sub neg reshape broadcast_in_dim transpose squeeze expand_dims slice
    dynamic_slice dynamic_update_slice concatenate pad reduce_sum convert_element_type copy copy_p
    rev cumsum gather scatter-add scatter_add reduce_precision real imag conj select_n
    sharding_constraint mesh_cast reshard device_put optimization_barrier split reduce_window_sum stack"""
)
# bilinear: affine in each operand separately
_BILINEAR = _names("mul dot_general conv_general_dilated")
# piecewise affine in their (float) operands
_PIECEWISE = _names("max min abs reduce_max reduce_min clamp argmax argmin sort cummax cummin reduce_window_max reduce_window_min")
# piecewise constant: derivative zero almost everywhere
_CONSTANT = _names(
    """sign floor ceil round is_finite eq ne lt le gt ge and or not xor stop_gradient
    iota rng_bit_generator random_bits random_seed random_wrap random_unwrap"""
)


def _is_float(aval) -> bool:
    return jnp.issubdtype(getattr(aval, "dtype", np.float32), jnp.inexact)


@dataclasses.dataclass
class _Dep:
    dep: frozenset  # leaves the value depends on
    nl: dict  # leaf -> reason it is not affine in that leaf


_NONE = _Dep(frozenset(), {})


def _merge(deps) -> _Dep:
    dep = frozenset().union(*[d.dep for d in deps]) if deps else frozenset()
    nl: dict = {}
    for d in deps:
        for k, v in d.nl.items():
            nl.setdefault(k, v)
    return _Dep(dep, nl)


def _analyse(jaxpr, in_deps: list[_Dep]) -> list[_Dep]:
    """Propagate dependence and non-affinity through a jaxpr; returns the outvars' records."""
    env: dict = {}

    def read(v):
        if isinstance(v, jex.core.Literal):
            return _NONE
        return env.get(v, _NONE)

    for v, d in zip(jaxpr.invars, in_deps):
        env[v] = d
    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        outs = _rule(eqn, ins)
        for v, d in zip(eqn.outvars, outs):
            env[v] = d if _is_float(v.aval) else _NONE
    return [read(v) for v in jaxpr.outvars]


def _closed(j):
    return j.jaxpr if hasattr(j, "jaxpr") and hasattr(j, "consts") else j


def _rule(eqn, ins: list[_Dep]) -> list[_Dep]:
    name = eqn.primitive.name
    nout = len(eqn.outvars)
    if not any(d.dep for d in ins):
        return [_NONE] * nout
    if name in _CONSTANT:
        return [_NONE] * nout
    if name in _LINEAR or name in _PIECEWISE:
        if name == "select_n":  # the predicate is piecewise constant
            ins = ins[1:]
        elif name in ("gather", "dynamic_slice", "dynamic_update_slice", "scatter-add", "scatter_add"):
            # indices are piecewise constant; the operand(s) carry the value
            ins = [d for d, v in zip(ins, eqn.invars) if _is_float(v.aval)]
        return [_merge(ins)] * nout
    if name in _BILINEAR:
        a, b = ins[0], ins[1]
        m = _merge([a, b])
        for leaf in a.dep & b.dep:
            m.nl.setdefault(leaf, f"{name} multiplies two values that both depend on it")
        return [m] * nout
    if name == "div":
        a, b = ins[0], ins[1]
        m = _merge([a, b])
        for leaf in b.dep:
            m.nl.setdefault(leaf, "div divides by a value that depends on it")
        return [m] * nout
    if name == "integer_pow" and eqn.params.get("y") == 1:
        return [ins[0]] * nout
    sub = _subjaxprs(eqn)
    if sub is not None:
        return _rule_higher(eqn, ins, sub)
    m = _merge(ins)
    for leaf in m.dep:
        m.nl.setdefault(leaf, f"{name} is applied to a value that depends on it")
    return [m] * nout


def _subjaxprs(eqn):
    name = eqn.primitive.name
    p = eqn.params
    if name in ("pjit", "jit", "closed_call", "core_call", "remat", "remat2", "checkpoint"):
        j = p.get("jaxpr", p.get("call_jaxpr"))
        return ("call", j) if j is not None else None
    if name == "custom_jvp_call" and _custom_name(eqn) in _PIECEWISE_RULES:
        # jax.nn's piecewise-linear units (their custom JVP is piecewise constant too): the body
        j = p.get("call_jaxpr")
        return ("call", j) if j is not None else None
    # other custom derivatives: autodiff uses the rule, not the body we could read: not affine
    if name == "cond":
        return ("cond", p["branches"])
    if name == "scan":
        return ("scan", p["jaxpr"])
    if name == "while":
        return ("while", p["body_jaxpr"])
    return None


_PIECEWISE_RULES = frozenset(["relu", "relu6", "leaky_relu", "hard_tanh"])


def _custom_name(eqn) -> str:
    """The name of a ``jax.nn`` function behind a custom-JVP call ("" for anything else: a
    user's rule of the same name is not trusted)."""
    j = eqn.params.get("call_jaxpr")
    dbg = getattr(_closed(j), "debug_info", None) if j is not None else None
    src = str(getattr(dbg, "func_src_info", "") or "")
    if "jax/_src/nn/" not in src.replace("\\", "/"):
        return ""
    return str(getattr(dbg, "func_name", "") or "")


def _rule_higher(eqn, ins, sub):
    kind, j = sub
    nout = len(eqn.outvars)
    if kind == "call":
        jj = _closed(j)
        consts = [_NONE] * (len(jj.invars) - len(ins))
        if len(jj.invars) >= len(ins):
            return _analyse(jj, consts + ins)[:nout]
        m = _merge(ins)  # an unexpected calling convention: not affine
        for leaf in m.dep:
            m.nl.setdefault(leaf, f"{eqn.primitive.name} (a call the analysis cannot follow)")
        return [m] * nout
    if kind == "cond":
        outs = [_analyse(_closed(b), ins[1:]) for b in j]
        return [_merge([o[i] for o in outs]) for i in range(nout)]
    if kind in ("scan", "while"):
        jj = _closed(j)
        if kind == "scan":
            nc, ncar = eqn.params["num_consts"], eqn.params["num_carry"]
            consts, carry, xs = ins[:nc], ins[nc : nc + ncar], ins[nc + ncar :]
        else:
            nb = eqn.params["body_nconsts"]
            ncc = eqn.params["cond_nconsts"]
            consts, carry, xs = ins[ncc : ncc + nb], ins[ncc + nb :], []
        for _ in range(8):  # fixed point over the carries
            out = _analyse(jj, list(consts) + list(carry) + list(xs))
            new = [_merge([c, o]) for c, o in zip(carry, out[: len(carry)])]
            if all(n.dep == c.dep and n.nl.keys() == c.nl.keys() for n, c in zip(new, carry)):
                break
            carry = new
        else:
            m = _merge(ins)
            for leaf in m.dep:
                m.nl.setdefault(leaf, f"{eqn.primitive.name} loop (dependence did not settle)")
            return [m] * nout
        return (list(carry) + list(out[len(carry) :]))[:nout]
    return [_merge(ins)] * nout  # pragma: no cover


def affine_leaves(out_fn, leaves: list, batch: PyTree) -> list[str | None]:
    """For each parameter leaf: ``None`` if ``out_fn(leaves, batch)`` is piecewise affine in it
    (from the traced program), else the reason it is not."""
    closed = jax.make_jaxpr(out_fn)(leaves, batch)
    nl = len(leaves)
    nb = len(jax.tree.leaves(batch))
    jaxpr = closed.jaxpr
    in_deps = [_Dep(frozenset([i]), {}) for i in range(nl)] + [_NONE] * nb
    consts = [_NONE] * len(jaxpr.constvars)
    env_deps = _analyse_with_consts(jaxpr, consts, in_deps)
    out = _merge(env_deps)
    return [out.nl.get(i) if i in out.dep else None for i in range(nl)]


def _analyse_with_consts(jaxpr, const_deps, in_deps):
    j = jaxpr.replace(invars=list(jaxpr.constvars) + list(jaxpr.invars), constvars=[])
    return _analyse(j, list(const_deps) + list(in_deps))


# ---------------------------------------------------------------------------------------------
# Taps: per-example gradient norms of dense layers, biases and scales
# ---------------------------------------------------------------------------------------------
_SHAPE_OPS = _names("convert_element_type reshape broadcast_in_dim transpose squeeze expand_dims copy")
_NORM_PRESERVING = _names("convert_element_type reshape transpose squeeze expand_dims copy")


@dataclasses.dataclass(frozen=True)
class _Tap:
    eqn: int  # index of the use in the top-level jaxpr
    leaf: int  # position in the selected leaves
    kind: str  # "dense", "broadcast_add", "broadcast_mul"
    other: int  # operand position of the activation
    chain: tuple  # eqn indices from the leaf to the use (shape ops)


def _uses(jaxpr) -> dict:
    uses: dict = {}
    for i, eqn in enumerate(jaxpr.eqns):
        for pos, v in enumerate(eqn.invars):
            if not isinstance(v, jex.core.Literal):
                uses.setdefault(v, []).append((i, pos))
    for v in jaxpr.outvars:
        if not isinstance(v, jex.core.Literal):
            uses.setdefault(v, []).append((None, None))
    return uses


def plan_taps(jaxpr, leaf_vars: dict, batch_size: int, alt_jaxpr=None) -> tuple[dict, set]:
    """Taps for the leaves in ``leaf_vars`` (``{position: invar}``) whose only use can be
    tapped; returns ``({eqn index: _Tap}, leaves needing per-example VJPs)``.

    ``alt_jaxpr`` is the same program traced with one more example: a tap is kept only if its
    activation and output grow on the axis taken as the example axis and nowhere else (a
    time-major ``(T, B, D)`` activation with ``T == B`` would otherwise pass for per-example)."""
    uses = _uses(jaxpr)
    taps: dict = {}
    generic: set = set()
    same = alt_jaxpr is not None and len(alt_jaxpr.eqns) == len(jaxpr.eqns)
    for pos, var in leaf_vars.items():
        tap = _tap_for(jaxpr, uses, pos, var, batch_size)
        if tap is not None and not (same and _grows_on_example_axis(jaxpr, alt_jaxpr, tap)):
            tap = None
        if tap is None or tap.eqn in taps:
            generic.add(pos)
        else:
            taps[tap.eqn] = tap
    return taps, generic


def _grows_on_example_axis(jaxpr, alt, tap: _Tap) -> bool:
    e, a = jaxpr.eqns[tap.eqn], alt.eqns[tap.eqn]
    if e.primitive is not a.primitive:
        return False

    def only_axis(s0, s1, axis):
        s0, s1 = tuple(s0), tuple(s1)
        return (len(s0) == len(s1) and s1[axis] == s0[axis] + 1
                and all(x == y for i, (x, y) in enumerate(zip(s0, s1)) if i != axis))

    act0, act1 = e.invars[tap.other].aval.shape, a.invars[tap.other].aval.shape
    out0, out1 = e.outvars[0].aval.shape, a.outvars[0].aval.shape
    out_axis = 1 if (tap.kind == "dense" and tap.other == 1) else 0
    return only_axis(act0, act1, 0) and only_axis(out0, out1, out_axis)


def _tap_for(jaxpr, uses, pos, var, B):
    chain = []
    v = var
    norm_preserving = True
    while True:
        u = uses.get(v, [])
        if len(u) != 1 or u[0][0] is None:
            return None
        i, opnd = u[0]
        eqn = jaxpr.eqns[i]
        name = eqn.primitive.name
        if name in _SHAPE_OPS:
            if name == "broadcast_in_dim" and math.prod(eqn.outvars[0].aval.shape) != math.prod(v.aval.shape):
                norm_preserving = False
            chain.append(i)
            v = eqn.outvars[0]
            continue
        break
    out = eqn.outvars[0].aval
    if len(eqn.invars) != 2 or len(eqn.outvars) != 1:
        return None
    other = 1 - opnd
    a = eqn.invars[other]
    if isinstance(a, jex.core.Literal):
        return None
    a_aval = a.aval
    t_aval = v.aval
    if name == "dot_general":
        if not norm_preserving:
            return None
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        if lb or rb or len(t_aval.shape) != 2 or not a_aval.shape or a_aval.shape[0] != B:
            return None
        ac = lc if other == 0 else rc
        if tuple(ac) != (len(a_aval.shape) - 1,) or len(a_aval.shape) < 2:
            return None
        if len(a_aval.shape) > 2 and other != 0:
            return None
        return _Tap(i, pos, "dense", other, tuple(chain))
    if name in ("add", "mul"):
        if len(out.shape) == 0 or out.shape[0] != B or tuple(a_aval.shape) != tuple(out.shape):
            return None
        if len(t_aval.shape) != len(out.shape) or t_aval.shape[0] != 1:
            return None
        return _Tap(i, pos, "broadcast_add" if name == "add" else "broadcast_mul", other, tuple(chain))
    return None


def eval_with_taps(closed, args: list, taps: dict, eps: dict):
    """Evaluate a closed jaxpr on ``args``, adding ``eps[i]`` to the output of every tapped eqn;
    returns ``(outputs, {eqn: (activation, leaf-derived operand)})``."""
    jaxpr = closed.jaxpr
    env: dict = {}

    def read(v):
        return v.val if isinstance(v, jex.core.Literal) else env[v]

    for v, x in zip(jaxpr.constvars, closed.consts):
        env[v] = x
    for v, x in zip(jaxpr.invars, args):
        env[v] = x
    seen: dict = {}
    for i, eqn in enumerate(jaxpr.eqns):
        invals = [read(v) for v in eqn.invars]
        with eqn.ctx.manager:
            outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
        if not eqn.primitive.multiple_results:
            outs = [outs]
        if i in taps:
            t = taps[i]
            seen[i] = (invals[t.other], invals[1 - t.other])
            outs = [outs[0] + eps[i]]
        for v, x in zip(eqn.outvars, outs):
            env[v] = x
    return [read(v) for v in jaxpr.outvars], seen


def _tap_sq_norms(tap: _Tap, jaxpr, act, operand, delta, leaf_shape):
    """Per-example squared norms ``(B,)`` of the leaf's gradient through one tap, from the
    activation and the output cotangent ``delta``."""
    if tap.kind == "dense":
        if act.ndim == 2:
            out_b = 0 if tap.other == 0 else 1
            d = jnp.moveaxis(delta, out_b, 0).reshape(delta.shape[out_b], -1)
            return jnp.sum(act * act, axis=1) * jnp.sum(d * d, axis=1)
        B = act.shape[0]
        a = act.reshape(B, -1, act.shape[-1])
        d = delta.reshape(B, a.shape[1], -1)
        ga = jnp.einsum("bsi,bti->bst", a, a, precision=jax.lax.Precision.HIGHEST)
        gd = jnp.einsum("bso,bto->bst", d, d, precision=jax.lax.Precision.HIGHEST)
        return jnp.sum(ga * gd, axis=(1, 2))
    g = delta if tap.kind == "broadcast_add" else delta * act
    axes = tuple(ax for ax in range(1, g.ndim) if operand.shape[ax] == 1 and g.shape[ax] != 1)
    if axes:
        g = jnp.sum(g, axis=axes, keepdims=True)
    # through the shape chain back to the leaf (sums over broadcast dims: a linear map)
    g = g.reshape(g.shape[0], -1)
    chain_fn = _chain_fn(jaxpr, tap, leaf_shape)
    if chain_fn is not None:
        gl = jax.vmap(lambda r: jax.linear_transpose(chain_fn, jnp.zeros(leaf_shape, r.dtype))(r.reshape(operand.shape))[0])(g)
        g = gl.reshape(gl.shape[0], -1)
    return jnp.sum(g * g, axis=1)


def _chain_fn(jaxpr, tap: _Tap, leaf_shape):
    """The shape chain leaf -> operand as a function, or ``None`` if it preserves norms."""
    eqns = [jaxpr.eqns[i] for i in tap.chain]
    if all(e.primitive.name in _NORM_PRESERVING for e in eqns):
        return None

    def f(x):
        for e in eqns:
            x = e.primitive.bind(x, **e.primitive.get_bind_params(e.params))
        return x

    return f


# ---------------------------------------------------------------------------------------------
# The per-batch terms
# ---------------------------------------------------------------------------------------------
def _rows(F):
    """Outputs as ``(B, R, O)``."""
    if F.ndim == 1:
        return F.reshape(F.shape[0], 1, 1)
    return F.reshape(F.shape[0], -1, F.shape[-1])


def ggn_directions(pieces, F, batch):
    """Cotangent directions ``(M, B, R, O)`` and weights ``(M, B)`` with
    ``tr(J^T H J) = sum_m sum_b w_mb ||J_b^T c_mb||^2`` (``H``: the batch loss's output Hessian)."""
    F3 = _rows(F)
    B, R, O = F3.shape
    rows = jnp.eye(R, dtype=F.dtype)  # (s, r)
    if pieces.kind == "cross_entropy":
        # H_r = (m_r / n) (diag p - p p^T) = (m_r / n) sum_k a_k a_k^T, a_k = sqrt(p_k) (e_k - p)
        t = batch[pieces.target_key]
        p = jax.nn.softmax(F3, axis=-1)  # (B, R, O)
        mass = jnp.ones((B, R), F.dtype) if jnp.issubdtype(t.dtype, jnp.integer) else (
            jnp.sum(t, axis=-1).reshape(B, R).astype(F.dtype))
        eye = jnp.eye(O, dtype=F.dtype)
        A = jnp.sqrt(p)[..., None, :] * (eye[None, None] - p[..., :, None])  # (B, R, j, k)
        C = jnp.einsum("sr,brjk->skbrj", rows, A).reshape(R * O, B, R, O)
        w = jnp.broadcast_to((mass / (B * R))[:, :, None], (B, R, O))
        return C, jnp.moveaxis(w, 0, -1).reshape(R * O, B)
    if pieces.kind == "mse":  # H = I / (B R O)
        eye = jnp.eye(O, dtype=F.dtype)
        C = jnp.einsum("sr,jk,b->skbrj", rows, eye, jnp.ones((B,), F.dtype)).reshape(R * O, B, R, O)
        return C, jnp.full((R * O, B), 1.0 / (B * R * O), F.dtype)
    raise NotImplementedError(f"exact GGN trace for output loss kind {pieces.kind!r}")  # see support()


def fisher_directions(pieces, F, batch):
    """One direction per example: ``c_b = dl_b/df_b`` (per-example loss), weight ``1/B``."""
    B = F.shape[0]
    g = jax.grad(lambda o: pieces.output_loss(o, batch))(F) * jnp.asarray(B, F.dtype)
    return _rows(g)[None], jnp.full((1, B), 1.0 / B, F.dtype)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the exact route computes (static: part of the compiled program's key)."""

    kind: str  # "ggn" or "fisher"
    selected: tuple  # positions of the selected leaves among all leaves
    chunk_examples: int
    chunk_directions: int


def batch_terms(pieces, plan: Plan, params, batch):
    """Per selected leaf, this batch's mean of ``sum_m w_m ||J_b^T c_m||^2`` (traceable)."""
    leaves, treedef = jax.tree.flatten(params)

    def out_fn(ls, b):
        return pieces.outputs(jax.tree.unflatten(treedef, ls), b)

    closed = jax.make_jaxpr(out_fn)(leaves, batch)
    jaxpr = closed.jaxpr
    B = jax.tree.leaves(batch)[0].shape[0]
    leaf_vars = {pos: jaxpr.invars[pos] for pos in plan.selected}
    grown = jax.tree.map(lambda x: jax.ShapeDtypeStruct((x.shape[0] + 1,) + x.shape[1:], x.dtype), batch)
    alt = jax.make_jaxpr(out_fn)([jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves], grown).jaxpr
    taps, generic = plan_taps(jaxpr, leaf_vars, B, alt)
    args = list(leaves) + list(jax.tree.leaves(batch))
    eps0 = {i: jnp.zeros(jaxpr.eqns[i].outvars[0].aval.shape, jaxpr.eqns[i].outvars[0].aval.dtype) for i in taps}

    def fwd(eps):
        outs, seen = eval_with_taps(closed, args, taps, eps)
        return outs[0], seen

    F, vjp_fn, seen = jax.vjp(fwd, eps0, has_aux=True)
    dirs = ggn_directions if plan.kind == "ggn" else fisher_directions
    C, w = dirs(pieces, F, batch)
    C = jax.lax.stop_gradient(C)
    w = jax.lax.stop_gradient(w)
    M = C.shape[0]
    sums = {pos: jnp.zeros((), F.dtype) for pos in plan.selected}

    if taps:

        def per_direction(cw):
            c, wm = cw
            (delta,) = vjp_fn(c.reshape(F.shape).astype(F.dtype))
            out = {}
            for i, t in taps.items():
                act, operand = seen[i]
                sq = _tap_sq_norms(t, jaxpr, act, operand, delta[i], leaves[t.leaf].shape)
                out[t.leaf] = jnp.sum(wm * sq.astype(wm.dtype))
            return out

        per = jax.lax.map(per_direction, (C, w), batch_size=plan.chunk_directions)
        for pos, v in per.items():
            sums[pos] = sums[pos] + jnp.sum(v)
    if generic:
        gpos = sorted(generic)
        b_leaves = jax.tree.leaves(batch)
        b_def = jax.tree.structure(batch)

        def one(ex):
            xb, cb, wb = ex  # example's batch leaves, (M, R, O), (M,)
            b1 = jax.tree.unflatten(b_def, [x[None] for x in xb])

            def f(gl):
                ls = list(leaves)
                for p, g in zip(gpos, gl):
                    ls[p] = g
                return out_fn(ls, b1)

            out, vjp1 = jax.vjp(f, [leaves[p] for p in gpos])
            grads = jax.vmap(lambda c: vjp1(c.reshape(out.shape).astype(out.dtype))[0])(cb)
            return [jnp.sum(wb * jnp.sum(jnp.square(g).reshape(M, -1), axis=1)) for g in grads]

        Cb = jnp.moveaxis(C, 1, 0)  # (B, M, R, O)
        wb = jnp.moveaxis(w, 1, 0)
        vals = jax.lax.map(one, (b_leaves, Cb, wb), batch_size=plan.chunk_examples)
        for p, v in zip(gpos, vals):
            sums[p] = sums[p] + jnp.sum(v)
    # batch mean of the data term's curvature: the output Hessian is already that of the batch
    # mean loss (1/B inside), so the sum over the batch is this batch's mean contribution.
    return {p: s for p, s in sums.items()}


def chunk_sizes(num_directions: int, leaves_bytes: int, act_bytes: int, budget: int = 256 << 20):
    """Examples per per-example-VJP chunk and directions per tapped backward chunk."""
    ce = max(1, budget // max(1, num_directions * leaves_bytes))
    cd = max(1, min(num_directions, budget // max(1, act_bytes)))
    return int(ce), int(cd)


@functools.partial(jax.jit, static_argnames=("s", "plan"))
def _exact_jit(s, d, plan: Plan):
    pieces, params, batched = engine.merge_fn(s, d)  # not the operator: one program for every curvature

    def value_fn(params, batch):
        t = batch_terms(pieces, plan, params, batch)
        return [t[p] for p in plan.selected]

    return engine.batched_mean(value_fn, params, batched)


def leaf_traces(op, kind: str) -> np.ndarray:
    """Exact per-selected-leaf traces of the data term's GGN (``kind="ggn"``) or empirical Fisher
    (``"fisher"``) of ``op`` (a CurvatureOperator with pieces), float64 on the host."""
    leaves = jax.tree.leaves(op.params)
    paths = list(_tree.leaf_paths(op.params))
    sel = tuple(paths.index(p) for p in op.subset.selected_paths)
    F = output_shape(op)
    O = F.shape[-1] if len(F.shape) > 1 else 1
    R = math.prod(F.shape[1:-1]) if len(F.shape) > 2 else 1
    M = R * O if kind == "ggn" else 1
    item = np.dtype(op.dtype).itemsize
    sel_bytes = sum(int(np.size(leaves[i])) for i in sel) * item
    bs = op.batched.batch_size
    act_bytes = bs * max(int(np.size(leaves[i])) for i in sel) * item * 4
    ce, cd = chunk_sizes(M, sel_bytes, act_bytes)
    if jax.default_backend() == "cpu":
        cd = 1  # one direction at a time: measured fastest on CPU (28 ms vs 70 ms vectorised, 85k MLP)
    plan = Plan(kind, sel, ce, cd)
    s, d = engine.split_fn((op.pieces, op.params, op.batched))
    vals, ok = _exact_jit(s, d, plan)
    if not np.asarray(ok).all():
        from landscape.hessian._operators import raise_nonfinite

        raise_nonfinite(ok, op, what=f"exact {kind} trace")
    return np.asarray([np.float64(v) for v in vals])


def output_shape(op):
    """The shape of the model's outputs on two examples (traced once per operator, cached)."""
    if getattr(op, "_exact_output_shape", None) is None:
        op._exact_output_shape = jax.eval_shape(lambda p, b: op.pieces.outputs(p, _first_examples(b, 2)),
                                                op.params, op.batched)
    return op._exact_output_shape


def _first_examples(batched, n):
    src = batched.full if batched.full is not None else batched.rest
    if batched.full is not None:
        return jax.tree.map(lambda x: x[0, :n], src)
    return jax.tree.map(lambda x: x[:n], src)


# ---------------------------------------------------------------------------------------------
# When the exact route applies
# ---------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("s", "n", "with_loss"))
def _probe_jit(s, d, n: int, with_loss: bool):
    """On the first ``n`` examples, in one program: the batched and the per-example outputs, and
    (for a plain loss_fn) the loss against output_loss(outputs)."""
    pieces, loss_fn, params, batched = engine.merge_fn(s, d)
    batch = _first_examples(batched, n)
    F = pieces.outputs(params, batch)
    Fi = jax.vmap(lambda b: pieces.outputs(params, jax.tree.map(lambda x: x[None], b))[0])(batch)
    # one JVP along a parameter direction, batched and per example: mixing that leaves the
    # values alone (h + m - stop_gradient(m)) changes the derivatives
    v = jax.tree.map(lambda x, i: jax.random.rademacher(jax.random.key(i), x.shape, x.dtype), params,
                     jax.tree.unflatten(jax.tree.structure(params), list(range(len(jax.tree.leaves(params))))))
    dF = jax.jvp(lambda p: pieces.outputs(p, batch), (params,), (v,))[1]
    dFi = jax.vmap(lambda b: jax.jvp(lambda p: pieces.outputs(p, jax.tree.map(lambda x: x[None], b))[0],
                                     (params,), (v,))[1])(batch)
    F = jnp.concatenate([F.reshape(F.shape[0], -1), dF.reshape(F.shape[0], -1)], axis=1)
    Fi = jnp.concatenate([Fi.reshape(F.shape[0], -1), dFi.reshape(F.shape[0], -1)], axis=1)
    if not with_loss:
        return F, Fi, jnp.zeros(()), jnp.zeros(())
    # the curvature along v of loss_fn and of output_loss(outputs): a penalty or any other term
    # the outputs do not explain changes the Hessian, whatever its size in the loss's value

    def quad(f):
        hv = jax.jvp(jax.grad(f), (params,), (v,))[1]
        return sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(hv), jax.tree.leaves(v)))

    lv = quad(lambda p: engine.loss_and_aux(loss_fn, p, batch)[0])
    ov = quad(lambda p: pieces.output_loss(pieces.outputs(p, batch), batch))
    return F, Fi, lv, ov


def examples_independent(F, Fi) -> bool:
    """Whether each example's outputs depend on that example only: the batched outputs ``F``
    equal the per-example ones ``Fi`` (checked on a few examples)."""
    F, Fi = np.asarray(F, np.float64), np.asarray(Fi, np.float64)
    scale = max(1.0, float(np.max(np.abs(F)))) if F.size else 1.0
    return bool(np.allclose(F, Fi, rtol=1e-4, atol=1e-4 * scale))


def support(op) -> tuple[list | None, str]:
    """Cached on the operator (see :func:`_support`)."""
    cached = getattr(op, "_exact_support", None)
    if cached is None:
        cached = _support(op)
        op._exact_support = cached
    return cached


def _support(op) -> tuple[list | None, str]:
    """``(per-selected-leaf reasons (None: affine), why-not)`` for the exact route on ``op``.

    Returns ``(None, reason)`` when no exact route applies at all (no model outputs, a
    preconditioner, examples that interact)."""
    from landscape.hessian._operators import CurvatureOperator

    if not isinstance(op, CurvatureOperator):
        return None, "a plain matvec carries no model outputs"
    if op.pieces is None:
        return None, (
            "the loss carries no model outputs (pass a landscape.Loss from make_loss_fn, or model= and "
            "output_loss=)"
        )
    if op.scale is not None:
        return None, "the operator is preconditioned"
    with_loss = op.pieces.loss is None and op.curvature in ("hessian", "residual")
    ps, pd = engine.split_fn((op.pieces, op.loss_fn if with_loss else None, op.params, op.batched))
    try:
        F, Fi, lv, ov = _probe_jit(ps, pd, min(4, op.batched.num_examples), with_loss)
    except Exception as e:  # pragma: no cover - a model that cannot run one example
        return None, f"the model cannot be evaluated one example at a time ({type(e).__name__})"
    if not examples_independent(F, Fi):
        return None, "examples interact in the model's outputs (batch statistics in training mode?)"
    if with_loss:
        lv, ov = float(lv), float(ov)
        # rounding of one product in the parameters' dtype: 2e-13 (float64), 1.2e-4 (float32)
        if not np.isclose(lv, ov, rtol=1e3 * float(jnp.finfo(op.dtype).eps), atol=1e-30):
            return None, (
                f"loss_fn's curvature (v^T H v = {lv:.6g} on the first examples) is not that of "
                f"output_loss(model outputs) ({ov:.6g}): extra terms in the loss"
            )
    first = jax.eval_shape(lambda b: _first_examples(b, 2), op.batched)
    leaves, treedef = jax.tree.flatten(op.params)

    def out_fn(ls, b):
        return op.pieces.outputs(jax.tree.unflatten(treedef, ls), b)

    reasons = affine_leaves(out_fn, leaves, first)
    paths = list(_tree.leaf_paths(op.params))
    return [reasons[paths.index(p)] for p in op.subset.selected_paths], ""


def penalty_diagonal(op) -> np.ndarray:
    """Per selected leaf: the trace of the L2 penalty's Hessian block (``weight_decay * size``)."""
    wd = float(op.pieces.loss.weight_decay) if op.pieces.loss is not None else 0.0
    leaves = jax.tree.leaves(op.params)
    paths = list(_tree.leaf_paths(op.params))
    return np.asarray([wd * int(np.size(leaves[paths.index(p)])) for p in op.subset.selected_paths], np.float64)


def num_directions(op, kind: str) -> int:
    """Cotangent directions per example of the exact route (``R x O`` for the GGN, 1 for the
    Fisher): its backward passes per batch."""
    if kind == "fisher":
        return 1
    F = output_shape(op)
    if len(F.shape) <= 1:
        return 1
    return int(math.prod(F.shape[1:]))


DIRECTIONS_BUDGET = 512 << 20
"""Bytes the GGN's cotangent directions ``(R O, B, R, O)`` may take per batch."""


def directions_bytes(op, M: int) -> int:
    """Bytes of the GGN's cotangent directions for one batch (``M = R O`` directions, each a
    ``(B, R, O)`` array)."""
    F = output_shape(op)
    per_example = int(math.prod(F.shape[1:])) if len(F.shape) > 1 else 1
    return int(M) * op.batched.batch_size * per_example * np.dtype(op.dtype).itemsize


def residual_operator(op, paths: list[str]):
    """The residual ``H - GGN`` of ``op`` restricted to the leaves ``paths`` (their block)."""
    from landscape.hessian import _operators as ops

    keep = set(paths)
    sub = ops.make_subset(op.params, lambda p: p in keep)
    rop = ops.CurvatureOperator(op.loss_fn, op.params, op.batched, op.pieces, None, curvature="residual",
                                subset=sub, method="forward_over_reverse")
    return rop.replace_method(op.method)
