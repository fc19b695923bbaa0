"""Empirical (finite-width) NTK of any model: Jacobian contraction, NTK-vector products, and
per-layer structured products for architectures built with :func:`ntk.serial`.

Costs (Novak et al. 2022, Sec. 3), for blocks of ``N`` examples, ``O`` outputs, ``P``
parameters and ``FP`` the cost of one example's forward pass:

* Jacobian contraction (``"jacobian"``): ``N O FP`` to build the per-example Jacobians
  (``O`` backward passes each) plus ``N^2 O P`` to contract them (``N^2 O^2 P`` for the full
  per-output kernel); memory ``N O P`` per block.
* NTK-vector products (``"ntvp"``): ``N O FP`` for the vector-Jacobian products of the
  second block plus ``N^2 O FP`` for Jacobian-vector products through the first block; memory
  ``N O P``. Preferable when ``FP`` is small relative to ``P`` and the block is small.
* Structured (``"structured"``, our architectures only): the Jacobian of a Dense or Conv layer
  is the outer product of its input (per patch) and the back-propagated signal, so
  ``Theta = sum_layers c_w^2 sum_{p,p'} G_l[p, p'] S_l[p, p'] + c_b^2 sum S_l`` with the
  input (patch) Gram ``G_l`` and signal Gram ``S_l``. Signals cost one batched backward pass
  over the ``O`` outputs (``N O FP``), except where they are known in closed form: the
  readout's signal is the identity (traced term ``c_w^2 H H^T + c_b^2``), and for the traced
  kernel the layer feeding the readout through an elementwise activation and average pooling
  has signals ``c_R u[p] W_R[c, o] act'(z)[p, c]`` whose mean over outputs collapses to ONE
  signal (so a two-layer network needs no backward pass at all). Each layer's products are
  plain matrix products over one contiguous axis: for ``N`` examples, ``P_l`` positions and
  ``M`` signals (``O`` or 1) either the Grams, ``N^2 P_l^2 (fan_in + M C_out)``, or the
  per-example layer Jacobian ``N M P_l fan_in C_out`` and its contraction
  ``N^2 M fan_in C_out``, whichever is cheaper (chosen per layer from these formulas); patches
  are gathered by strided slices (no arithmetic). Timings against neural-tangents:
  benchmarks/ntk/RESULTS.md.

``method="auto"`` picks ``"structured"`` for our architectures and otherwise the cheaper of
the other two (forward-pass flops from XLA's cost analysis). The per-example Jacobians and
row Grams are the foundation's (:mod:`landscape.jacobians`); :func:`empirical_ntk` and
:func:`empirical_nngp` return :class:`EmpiricalKernel` results.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from landscape import Model, Result, data_hash, engine, jacobians, result, static_field
from landscape import store as _store
from landscape import tree as _tree
from landscape import validate as _validate
from ntk import _blocks, _checks, _layers
from ntk._arch import Architecture, Serial, _child_name, _Ctx, arch_of_model

_HI = jax.lax.Precision.HIGHEST
METHODS = ("auto", "jacobian", "ntvp", "structured")


# --------------------------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------------------------
@result
class EmpiricalKernel(Result):
    """An empirical (finite-width) kernel matrix: :func:`ntk.empirical_ntk` or
    :func:`ntk.empirical_nngp`.

    The matrix is ``.matrix``; the result also converts to it wherever an array is expected
    (``np.asarray(k)``, ``ntk.relative_distance(k, ...)``, ``ntk.spectra(empirical=k)``,
    ``ntk.kernel_regression(k, ...)``, ``ntk.plot.plot_kernel(k)``).

    Attributes:
      matrix: ``(n1, n2)`` (the mean over outputs) or ``(n1, n2, O, O)`` (per output pair,
        ``trace_outputs=False``), NumPy, in the parameters' dtype.
      kind: ``"ntk"`` (``J(x1) J(x2)^T``) or ``"nngp"`` (``f(x1) f(x2)^T``).
      method: ``"jacobian"``, ``"ntvp"`` or ``"structured"`` (``None`` for the NNGP).
      trace_outputs: whether ``matrix`` is the mean over outputs.
      block_size: examples per block of the blocked evaluation (``None`` for the NNGP).
      provenance: versions, dtype and settings (numbers of examples and outputs, model).
    """

    matrix: np.ndarray
    kind: str = static_field(default="ntk")
    method: str | None = static_field(default=None)
    trace_outputs: bool = static_field(default=True)
    block_size: int | None = static_field(default=None)
    provenance: dict = static_field(default_factory=dict)

    def __array__(self, dtype=None, copy=None):
        a = np.asarray(self.matrix)
        if dtype is not None and np.dtype(dtype) != a.dtype:
            return a.astype(dtype)
        return a.copy() if copy else a


# --------------------------------------------------------------------------------------------
# Normalising the model argument
# --------------------------------------------------------------------------------------------
def _call_model(apply_fn, state, params, x):
    return apply_fn(params, state, x, train=False)[0]


def _is_triple(f) -> bool:
    return isinstance(f, Model) or (isinstance(f, tuple) and len(f) == 3 and callable(f[0]))


def resolve(f, params, x1, x2, *, finite: bool = True):
    """``(f(params, x), params, x1, x2, arch)`` from either calling convention (``finite=False``:
    the parameters' NaN/Inf check is left to the caller)."""
    arch = None
    if _is_triple(f):
        apply_fn, mparams, state = f
        x1, x2 = params, x1
        params = mparams
        found = arch_of_model(apply_fn, mparams, state)
        if found is not None:
            arch = found[0]
        f = Partial(_call_model, apply_fn, state)
    elif isinstance(f, Architecture):
        raise TypeError(
            f"{_validate.where('ntk')}: pass the model (arch.init(key, input_shape)) or arch.apply with its "
            "params, not the architecture itself; the architecture's analytic "
            "kernel is ntk.kernel(arch, x1, x2)."
        )
    else:
        _validate.check_callable(f, name="f")
        owner = getattr(f, "__self__", None)
        if isinstance(owner, Architecture) and getattr(f, "__name__", "") == "apply":
            arch = owner
    _validate.check_params(params, finite=finite)
    return f, params, x1, x2, arch


def _out_dim(f, params, x) -> int:
    try:
        out = jax.eval_shape(f, params, jax.ShapeDtypeStruct((1,) + tuple(x.shape[1:]), x.dtype))
    except Exception as e:  # the model rejects these inputs
        raise ValueError(
            f"{_validate.where('ntk')}: the model could not be applied to x1 examples of shape {tuple(x.shape[1:])}: "
            f"{type(e).__name__}: {str(e)[:300]}"
        ) from e
    if not hasattr(out, "shape") or out.ndim not in (1, 2) or out.shape[0] != 1:
        raise ValueError(
            f"{_validate.where('ntk')}: f(params, x) must return outputs of shape (n,) or (n, num_outputs); got "
            f"{getattr(out, 'shape', type(out).__name__)} for one example."
        )
    return 1 if out.ndim == 1 else int(out.shape[1])


def _outputs_2d(out):
    return out[:, None] if out.ndim == 1 else out


# --------------------------------------------------------------------------------------------
# Jacobian contraction and NTK-vector products (any f)
# --------------------------------------------------------------------------------------------
@engine.at_analysis_precision
def ntk_jacobian(f, params, x1, x2=None, *, trace_outputs: bool = True):
    """Empirical NTK block by Jacobian contraction (traceable): the Gram of the foundation's
    per-example Jacobians (:mod:`landscape.jacobians`)."""
    j1 = jacobians.per_example(f, params, x1)
    j2 = None if x2 is None else jacobians.per_example(f, params, x2)
    return jacobians.gram(j1, j2, trace_outputs=trace_outputs)


@engine.at_analysis_precision
def ntk_ntvp(f, params, x1, x2=None, *, trace_outputs: bool = True):
    """Empirical NTK block by NTK-vector products (traceable)."""
    x2 = x1 if x2 is None else x2
    j2 = jacobians.per_example(f, params, x2)  # the VJPs of every output of x2
    leaves = jax.tree.leaves(j2)
    b2, O = leaves[0].shape[:2]
    tangents = jax.tree.map(lambda l: l.reshape((b2 * O,) + l.shape[2:]), j2)

    def jvp1(t):
        return _outputs_2d(jax.jvp(lambda p: f(p, x1), (params,), (t,))[1])

    r = jax.vmap(jvp1)(tangents)  # (b2 O, b1, O)
    b1 = r.shape[1]
    r = r.reshape(b2, O, b1, O)
    if trace_outputs:
        return jnp.einsum("joio->ij", r) / O
    return r.transpose(2, 0, 3, 1)


# --------------------------------------------------------------------------------------------
# Structured products (our architectures)
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Plan:
    """How each affine layer's back-propagated signal is obtained (static per architecture).

    * ``readout``: the last layer, a Dense whose output is the network output: its signal is
      the identity, so its traced term is ``c_w^2 H H^T + c_b^2`` (no backward pass).
    * ``head``: the affine layer feeding the readout through an optional elementwise
      activation (``act``) and channel-wise average pooling (``tail``: AvgPool,
      GlobalAvgPool): its signal for output ``o`` is ``c_R u[p] W_R[c, o] act'(z)[p, c]``, so
      the mean over outputs of the signal products collapses to ONE virtual signal
      ``c_R u[p] sqrt(mean_o W_R[c, o]^2) act'(z)[p, c]`` (traced kernels only).
    * every other affine layer: ``O`` back-propagated signals (one batched backward pass).
    """

    readout: str | None
    head: str | None
    act: Any
    tail: tuple


def _flat_layers(layer, path=""):
    """``[(path, layer)]`` of a serial chain, nested serials flattened (parallel blocks are
    single entries)."""
    out = []
    for i, l in enumerate(layer.layers):
        name = _child_name(l, i)
        p = f"{path}/{name}" if path else name
        out += _flat_layers(l, p) if isinstance(l, Serial) else [(p, l)]
    return out


_PLANS: dict = {}


def _plan(arch: Architecture) -> _Plan:
    hit = _PLANS.get(arch)
    if hit is not None:
        return hit
    flat = _flat_layers(arch.net)
    readout = head = act = None
    tail: list = []
    if flat and isinstance(flat[-1][1], _layers.Dense):
        readout = flat[-1][0]
        i = len(flat) - 2
        while i >= 0 and isinstance(
            flat[i][1], (_layers.AvgPool, _layers.GlobalAvgPool, _layers.Identity)
        ):
            tail.insert(0, flat[i][1])
            i -= 1
        if i >= 0 and isinstance(flat[i][1], _layers._Activation):
            act = flat[i][1]
            i -= 1
        if i >= 0 and isinstance(flat[i][1], _layers._Affine):
            head = flat[i][0]
    plan = _Plan(readout, head, act, tuple(tail))
    if len(_PLANS) > 256:
        _PLANS.clear()
    _PLANS[arch] = plan
    return plan


def _features(arch: Architecture, params, x, general: tuple):
    """Inputs and outputs of every affine layer and the back-propagated signals ``(O, b,
    *z)`` of the layers in ``general`` (one batched backward pass over the ``O`` outputs;
    none when ``general`` is empty)."""
    if not general:
        ctx = _Ctx()
        out = _outputs_2d(arch.apply(params, x, ctx))
        return ctx.inputs, ctx.outputs, {}, out.shape[1]
    probe = _Ctx()
    jax.eval_shape(lambda p, xx: arch.apply(p, xx, probe), params, x)
    eps0 = {k: jnp.zeros(probe.zshapes[k].shape, probe.zshapes[k].dtype) for k in general}

    def g(eps):
        ctx = _Ctx(eps)
        out = _outputs_2d(arch.apply(params, x, ctx))
        return out, (ctx.inputs, ctx.outputs)

    out, vjp_fn, (inputs, outputs) = jax.vjp(g, eps0, has_aux=True)
    b, O = out.shape
    cts = jnp.broadcast_to(jnp.eye(O, dtype=out.dtype)[:, None, :], (O, b, O))
    (signals,) = jax.vmap(vjp_fn)(cts)
    return inputs, outputs, signals, O


def _head_signal(plan: _Plan, arch: Architecture, params, z):
    """The virtual signal ``(1, b, *z)`` of the head layer (see :class:`_Plan`)."""
    node = params
    for part in plan.readout.split("/"):
        node = node[part]
    w = node["kernel"]  # (C, O)
    layer = dict(arch.affine_layers())[plan.readout]
    wc, _ = layer.coefs(w.shape[0])
    r = jnp.mean(w * w, axis=1)  # (C,)
    d = z.ndim - 2
    if plan.tail:

        def pool(a):
            for l in plan.tail:
                a = l.apply(None, a)
            return a

        ones = jnp.ones((1,) + z.shape[1:-1] + (1,), z.dtype)
        _, vjp = jax.vjp(pool, ones)
        (u,) = vjp(jnp.ones(jax.eval_shape(pool, ones).shape, z.dtype))
        u = u[0, ..., 0]  # (*positions,)
    else:
        u = jnp.ones(z.shape[1 : 1 + d], z.dtype)
    if plan.act is not None:
        dact = jax.jvp(plan.act.act, (z,), (jnp.ones_like(z),))[1]
    else:
        dact = jnp.ones_like(z)
    scale = jnp.asarray(wc, z.dtype) * jnp.sqrt(r)  # (C,)
    v = dact * scale.reshape((1,) * (d + 1) + (-1,)) * u.reshape((1,) + u.shape + (1,))
    return v[None]


def structured_costs(b1, b2, npos, fan_in, cout, M, trace):
    """(gram, jacobian) multiply-add estimates of one affine layer's block contribution with
    ``M`` signals per example (``M = O`` outputs, or 1 for a collapsed signal)."""
    mm = M if trace else M * M
    gram = b1 * b2 * npos * npos * (fan_in + mm * cout + mm)
    jac = (b1 + b2) * M * npos * fan_in * cout + b1 * b2 * mm * fan_in * cout
    return gram, jac


def _layer_term(layer, p1, p2, d1, d2, sym, trace, norm):
    """One affine layer's weight and bias contributions from its patches ``p (b, P, k)`` and
    signals ``d (b, P, M, C)`` (``norm``: the factor of the mean over outputs).

    Every contraction is a matrix product over one contiguous axis (the foundation's row
    Grams, :func:`landscape.jacobians.row_gram`; ``None`` as the second operand: the
    symmetric Gram)."""
    gram, gram_po = jacobians.row_gram, jacobians.row_gram_per_output
    b1, npos, fan_in = p1.shape
    b2 = p2.shape[0]
    M, cout = d1.shape[2], d1.shape[3]
    wc, bc = layer.coefs(fan_in)
    dt = d1.dtype
    bias = layer.b_std is not None and bc != 0.0
    if npos == 1:
        g = gram(p1, None if sym else p2)
        if trace:
            s = gram(d1, None if sym else d2)
        else:
            s = gram_po(d1[:, 0], None if sym else d2[:, 0])
            g = g[:, :, None, None]
        coef = jnp.asarray(wc * wc, dt) * g
        if bias:
            coef = coef + jnp.asarray(bc * bc, dt)
        return coef * s * jnp.asarray(norm, dt)
    cost_gram, cost_jac = structured_costs(b1, b2, npos, fan_in, cout, M, trace)
    if cost_gram <= cost_jac:
        g = gram(p1.reshape(b1 * npos, -1), p2.reshape(b2 * npos, -1)).reshape(b1, npos, b2, npos)
        if trace:
            s = gram(d1.reshape(b1 * npos, -1), d2.reshape(b2 * npos, -1))
            t = jnp.sum(g * s.reshape(b1, npos, b2, npos), axis=(1, 3))
        else:
            s = gram(d1.reshape(b1 * npos * M, -1), d2.reshape(b2 * npos * M, -1))
            s = s.reshape(b1, npos, M, b2, npos, M)
            t = jnp.einsum("ipjq,iporjqr->ijor", g, s, precision=_HI)
    else:
        # per-example Jacobian of the layer: J[i, k, (m, c)] = sum_p patch[i, p, k] d[i, p, m, c]
        def jac_of(p, d):
            return jnp.matmul(p.transpose(0, 2, 1), d.reshape(d.shape[:2] + (-1,)), precision=_HI)

        j1 = jac_of(p1, d1)
        j2 = j1 if sym else jac_of(p2, d2)
        if trace:
            t = gram(j1, None if sym else j2)
        else:

            def per_output(j):  # (b, k, M C) -> (b, M, k C)
                return j.reshape(j.shape[0], fan_in, M, cout).transpose(0, 2, 1, 3)

            t = gram_po(per_output(j1), None if sym else per_output(j2))
    t = t * jnp.asarray(wc * wc, dt)
    if bias:
        s1 = jnp.sum(d1, axis=1)  # (b, M, C)
        s2 = s1 if sym else jnp.sum(d2, axis=1)
        tb = gram(s1, None if sym else s2) if trace else gram_po(s1, None if sym else s2)
        t = t + tb * jnp.asarray(bc * bc, dt)
    return t * jnp.asarray(norm, dt)


@engine.at_analysis_precision
def ntk_structured(arch: Architecture, params, x1, x2=None, *, trace_outputs: bool = True):
    """Empirical NTK block of an :class:`Architecture` model by per-layer products
    (traceable). See :class:`_Plan` for the signals that need no backward pass."""
    plan = _plan(arch)
    layers = arch.affine_layers()
    special = {plan.readout} | ({plan.head} if trace_outputs else set())
    general = tuple(path for path, _ in layers if path not in special)
    sym = x2 is None
    in1, z1, sig1, O = _features(arch, params, x1, general)
    in2, z2, sig2 = (in1, z1, sig1) if sym else _features(arch, params, x2, general)[:3]
    total = None
    for path, layer in layers:
        p1 = layer.patches(in1[path])
        p2 = p1 if sym else layer.patches(in2[path])
        if path == plan.readout:
            # the output itself (outputs are (n, O), so a vector input): signal = identity,
            # S = 1 (traced) or I_O (full)
            wc, bc = layer.coefs(p1.shape[-1])
            g = jnp.matmul(p1[:, 0], p2[:, 0].T, precision=_HI) * jnp.asarray(wc * wc, p1.dtype)
            if layer.b_std is not None and bc != 0.0:
                g = g + jnp.asarray(bc * bc, g.dtype)
            t = g if trace_outputs else g[:, :, None, None] * jnp.eye(O, dtype=g.dtype)[None, None]
        else:
            if path == plan.head and trace_outputs:
                d1 = _head_signal(plan, arch, params, z1[path])
                d2 = d1 if sym else _head_signal(plan, arch, params, z2[path])
                norm = 1.0
            else:
                d1, d2 = sig1[path], (sig1 if sym else sig2)[path]
                norm = 1.0 / O if trace_outputs else 1.0

            def layout(d, p):  # (M, b, *z) -> (b, P, M, C)
                return d.reshape(d.shape[:2] + (p.shape[1], -1)).transpose(1, 2, 0, 3)

            d1 = layout(d1, p1)
            d2 = d1 if sym else layout(d2, p2)
            t = _layer_term(layer, p1, p2, d1, d2, sym, trace_outputs, norm)
        total = t if total is None else total + t
    return total


# --------------------------------------------------------------------------------------------
# Method choice
# --------------------------------------------------------------------------------------------
def forward_flops(f, params, x) -> float:
    """Flops of one example's forward pass (XLA cost analysis; ``2 P`` if unavailable)."""
    try:
        ca = jax.jit(f).lower(params, x[:1]).cost_analysis()
        if isinstance(ca, (list, tuple)):
            ca = ca[0]
        flops = float(ca.get("flops", 0.0))
        if flops > 0:
            return flops
    except Exception:  # noqa: BLE001 - cost analysis is best effort
        pass
    return 2.0 * _tree.size(params)


def method_costs(fp: float, num_params: int, b1: int, b2: int, O: int, trace: bool) -> dict:
    """Flop estimates of the generic methods for one block (Novak et al. 2022)."""
    oo = O if trace else O * O
    return {
        "jacobian": 3.0 * (b1 + b2) * O * fp + 2.0 * b1 * b2 * oo * num_params,
        "ntvp": 3.0 * b2 * O * fp + 2.0 * b1 * b2 * O * fp,
    }


@dataclasses.dataclass(frozen=True)
class _EmpiricalBlock:
    f_static: Any
    method: str
    trace: bool
    arch: Architecture | None
    with_nngp: bool = False

    def __call__(self, args, x1, x2, same):
        f_dyn, params = args
        x2 = None if same else x2
        if self.method == "structured":
            k = ntk_structured(self.arch, params, x1, x2, trace_outputs=self.trace)
            f = self.arch.apply
        else:
            f = engine.merge_fn(self.f_static, f_dyn)
            impl = ntk_jacobian if self.method == "jacobian" else ntk_ntvp
            k = impl(f, params, x1, x2, trace_outputs=self.trace)
        if not self.with_nngp:
            return k
        o1 = _outputs_2d(f(params, x1))
        o2 = o1 if x2 is None else _outputs_2d(f(params, x2))
        if self.trace:
            g = jnp.matmul(o1, o2.T, precision=_HI) / o1.shape[1]
        else:
            g = jnp.einsum("io,jr->ijor", o1, o2, precision=_HI)
        return k, g


@_validate.public("ntk.empirical_ntk_fn")
def empirical_ntk_fn(f, *, method: str = "jacobian", trace_outputs: bool = True, arch=None):
    """Factory: a traceable ``k(params, x1, x2=None)`` for one block (no blocking).

    Args:
      f: ``f(params, x) -> outputs``.
      method: ``"jacobian"``, ``"ntvp"`` or ``"structured"`` (needs ``arch``).
      trace_outputs: mean over outputs (``(n1, n2)``) or the full ``(n1, n2, O, O)`` kernel.
      arch: the :class:`Architecture` behind ``f`` (for ``"structured"``).

    Returns:
      A jitted function; reuse it to avoid recompiling.
    """
    _validate.check_choice(method, METHODS[1:], name="method")
    if method == "structured" and not isinstance(arch, Architecture):
        raise ValueError(
            f"{_validate.where('ntk')}: method='structured' needs arch=<the ntk.Architecture of f>."
        )
    if method == "structured":
        return jax.jit(
            lambda params, x1, x2=None: ntk_structured(
                arch, params, x1, x2, trace_outputs=trace_outputs
            )
        )
    impl = ntk_jacobian if method == "jacobian" else ntk_ntvp
    return jax.jit(
        lambda params, x1, x2=None: impl(f, params, x1, x2, trace_outputs=trace_outputs)
    )


@_validate.public("ntk.empirical_ntk")
def empirical_ntk(
    f,
    params,
    x1=None,
    x2=None,
    *,
    method: str = "auto",
    trace_outputs: bool = True,
    block_size: int | None = None,
    store=None,
    progress: bool = False,
) -> EmpiricalKernel:
    """Empirical NTK ``Theta(x1, x2) = J(x1) J(x2)^T`` of a finite network.

    Two calling conventions: ``empirical_ntk(f, params, x1, x2)`` with ``f(params, x) ->
    outputs`` (neural-tangents'), or ``empirical_ntk(model, x1, x2)`` with a
    ``landscape.Model`` triple (evaluated in evaluation mode with its state). Models built by
    ``arch.init`` (or ``f = arch.apply``) use the structured per-layer method.

    The kernel is computed in ``block_size x block_size`` blocks (upper triangle when ``x2``
    is ``None``), one block per device at a time; the Jacobian of the whole data set never
    exists. See the module docstring for the cost of each method.

    Args:
      f: ``f(params, x) -> (n, O)`` outputs, or a model triple.
      params: the parameters (pytree), or ``x1`` when ``f`` is a model triple.
      x1, x2: inputs ``(n1, ...)`` and ``(n2, ...)`` (``x2=None``: ``x2 = x1``).
      method: ``"auto"``, ``"jacobian"``, ``"ntvp"`` or ``"structured"``.
      trace_outputs: ``True`` (default): the mean over outputs of the per-output kernels,
        ``(n1, n2)``, comparable with the analytic per-output NTK (neural-tangents'
        ``trace_axes=(-1,)``); ``False``: the full ``(n1, n2, O, O)`` kernel.
      block_size: examples per block (default: the largest within a 1 GiB budget).
      store: a directory or a :class:`landscape.Store`: finished blocks are saved
        atomically and loaded when the same call is repeated after an interruption (the
        store is bound to this call: model, parameters, inputs, method, blocking; a store of
        another job is refused with the differences listed, unless opened with
        ``landscape.Store(path, overwrite=True)``).
      progress: progress bar over waves of blocks.

    Returns:
      :class:`ntk.EmpiricalKernel`: ``.matrix`` ``(n1, n2)`` or ``(n1, n2, O, O)`` (NumPy,
      the parameters' dtype; ``np.asarray(result)`` gives it too), with the method, block
      size and provenance.

    Raises:
      TypeError, ValueError: bad model, parameters or inputs (shape mismatch, NaN/Inf, a
        block size that cannot fit, an unknown method, structured on a foreign model).

    Example:
      >>> model = arch.init(jax.random.key(0), (64,))
      >>> theta = ntk.empirical_ntk(model, x)                      # structured
      >>> theta.matrix                                             # (n, n) NumPy
      >>> theta = ntk.empirical_ntk(f, params, x, method="ntvp")   # any f(params, x)

    References:
      Novak, Sohl-Dickstein, Schoenholz (2022), Fast finite width neural tangent kernel.
    """
    # NaN/Inf in params, x1, x2: checked by the blocked driver (inside the compiled program
    # for one block)
    f, params, x1, x2, arch = resolve(f, params, x1, x2, finite=False)
    _validate.check_choice(method, METHODS, name="method")
    x1 = _checks.as_inputs(x1, name="x1", finite=False)
    x2 = None if x2 is None else _checks.as_inputs(x2, name="x2", dtype=x1.dtype, finite=False)
    _checks.check_pair(x1, x2)
    if arch is not None:
        out_shape = arch.check_input_shape(x1.shape[1:], name="x1")
        if len(out_shape) != 1:
            raise ValueError(
                f"{_validate.where('ntk')}: the architecture's outputs must be (n, num_outputs); got examples of "
                f"shape {out_shape} (end it with ntk.Flatten() or ntk.GlobalAvgPool() and a "
                "Dense readout)."
            )
        O = out_shape[0]
        _check_param_shapes(arch, params, x1)
    else:
        O = _out_dim(f, params, x1)
    P = _tree.size(params)
    n = max(x1.shape[0], 0 if x2 is None else x2.shape[0])
    if method == "structured" and arch is None:
        raise ValueError(
            f"{_validate.where('ntk')}: method='structured' needs a model built by an ntk architecture "
            "(arch.init(...) or f=arch.apply); use 'jacobian' or 'ntvp' for other models."
        )
    if method == "auto":
        if arch is not None:
            method = "structured"
        else:
            b = min(n, 64)
            costs = method_costs(forward_flops(f, params, x1), P, b, b, O, trace_outputs)
            method = min(costs, key=costs.get)
    matrix, bs = _run(
        f,
        params,
        x1,
        x2,
        arch,
        method,
        bool(trace_outputs),
        O,
        block_size,
        store,
        progress,
        check_inputs=True,
    )
    return EmpiricalKernel(
        matrix=matrix,
        kind="ntk",
        method=method,
        trace_outputs=bool(trace_outputs),
        block_size=bs,
        provenance=_blocks.provenance(
            _tree.dtype_of(params),
            kind="ntk",
            method=method,
            trace_outputs=bool(trace_outputs),
            block_size=bs,
            n1=int(x1.shape[0]),
            n2=int((x1 if x2 is None else x2).shape[0]),
            num_outputs=int(O),
            num_params=int(P),
            model=_describe(f, arch),
        ),
    )


def _describe(f, arch) -> str:
    """A process-independent description of the model (the store's binding, provenance)."""
    if arch is not None:
        return repr(arch)
    return _store.stable_text(engine.split_fn(f)[0])


def _empirical_pair(arch: Architecture, params, x1, x2=None):
    """``(ntk, nngp)`` arrays of the finite network ``arch`` with ``params`` (traced over
    outputs, structured method, blocked; one compiled program per architecture and input
    shape). Internal: no validation (the callers drew ``params`` and checked ``x``)."""
    O = int(np.prod(arch.out_shape(x1.shape[1:])))
    out, _ = _run(arch.apply, params, x1, x2, arch, "structured", True, O, None, None, False, True)
    return out


@_validate.public("ntk.empirical_ntk")
def _run(
    f,
    params,
    x1,
    x2,
    arch,
    method,
    trace_outputs,
    O,
    block_size,
    store,
    progress,
    nngp=False,
    *,
    check_inputs=False,
):
    """The blocked evaluation behind :func:`empirical_ntk` (inputs already validated, but for
    NaN/Inf in params, x1 and x2 with ``check_inputs``): ``(kernel arrays, block size)``."""
    pdtype = _tree.dtype_of(params)
    P = _tree.size(params)
    item = np.dtype(pdtype).itemsize
    n = max(x1.shape[0], 0 if x2 is None else x2.shape[0])
    oo = O if trace_outputs else O * O
    if method == "structured":
        feat = _feature_size(arch, params, x1, O)
        per_pair, per_row = 8.0 * oo * item * feat[1], float(feat[0]) * item * 3
    else:
        per_pair, per_row = 4.0 * oo * item, 2.0 * O * P * item
    bs = _blocks.choose_block_size(
        block_size,
        n,
        per_pair,
        bytes_per_row=per_row,
        budget=4 * _blocks.BLOCK_BUDGET_BYTES,
    )
    if method == "structured":
        # the structured block needs only the architecture: models of equal architectures
        # (seeds, snapshots, f=arch.apply) share one compiled program
        fs, fd = None, []
    else:
        fs, fd = engine.split_fn(f)
    block = _EmpiricalBlock(
        fs, method, bool(trace_outputs), arch if method == "structured" else None, nngp
    )
    meta = (
        None
        if store is None
        else dict(
            job="ntk.empirical_ntk",
            model=_describe(f, arch),
            method=method,
            trace=bool(trace_outputs),
            nngp=bool(nngp),
            dtype=str(pdtype),
            data=data_hash({"x1": x1, "x2": x2}),
            params=data_hash(params),
            model_arrays=data_hash(fd),
        )
    )
    out = _blocks.blocked(
        block,
        (fd, params),
        x1,
        x2,
        block_size=bs,
        store=store,
        store_meta=meta,
        progress=progress,
        check_inputs=check_inputs,
        check_args=(("params", 1),) if check_inputs else (),
    )
    return out, bs


def _feature_size(arch, params, x, O) -> tuple[int, int]:
    """(floats per example of the structured features, largest positions^2 of a layer)."""
    return _feature_size_cached(arch, tuple(x.shape[1:]), np.dtype(x.dtype), O)


@functools.lru_cache(maxsize=256)
def _feature_size_cached(arch, shape, dtype, O) -> tuple[int, int]:
    probe = _Ctx()
    jax.eval_shape(
        lambda p, xx: arch.apply(p, xx, probe),
        _param_shapes(arch, shape, dtype),
        jax.ShapeDtypeStruct((1,) + shape, dtype),
    )
    per_row, pos2 = 0, 1
    for path, s in probe.zshapes.items():
        zs = math.prod(s.shape[1:])
        hs = math.prod(probe.inputs[path].shape[1:])
        per_row += hs * 9 + O * zs
        npos = math.prod(s.shape[1:-1]) if len(s.shape) > 2 else 1
        pos2 = max(pos2, npos * npos)
    return per_row, pos2


def _check_param_shapes(arch, params, x):
    """The parameters must be the architecture's for examples shaped like ``x``."""
    want = _param_shape_tuple(arch, tuple(x.shape[1:]))
    try:
        got = jax.tree.map(lambda a: tuple(np.shape(a)), params)
        ok = jax.tree.structure(got) == jax.tree.structure(want) and jax.tree.leaves(
            got
        ) == jax.tree.leaves(want)
    except Exception:  # noqa: BLE001 - any mismatch is reported below
        ok = False
    if not ok:
        raise ValueError(
            f"{_validate.where('ntk')}: the model could not be applied to x1 examples of shape "
            f"{tuple(x.shape[1:])}: its parameters do not match the architecture for such "
            f"inputs (expected parameter shapes {want})."
        )


@functools.lru_cache(maxsize=256)
def _param_shape_tuple(arch, shape):
    def build(node):
        return {k: build(v) if isinstance(v, dict) else tuple(v[0]) for k, v in node.items()}

    return build(arch.net.param_specs(shape))


def _param_shapes(arch, shape, dtype):
    def build(node):
        return {
            k: build(v) if isinstance(v, dict) else jax.ShapeDtypeStruct(v[0], dtype)
            for k, v in node.items()
        }

    return build(arch.net.param_specs(shape))


@_validate.public("ntk.empirical_nngp")
def empirical_nngp(f, params, x1=None, x2=None, *, trace_outputs: bool = True) -> EmpiricalKernel:
    """Empirical NNGP ``f(x1) f(x2)^T / O`` (mean over outputs) of one network, or the full
    ``(n1, n2, O, O)`` outer product with ``trace_outputs=False``. Same calling conventions as
    :func:`empirical_ntk`. Averaged over random initialisations it estimates the analytic NNGP
    (see :func:`ntk.monte_carlo`).

    Returns:
      :class:`ntk.EmpiricalKernel` with ``kind="nngp"``; ``.matrix`` (NumPy, the outputs'
      dtype) is ``(n1, n2)`` or ``(n1, n2, O, O)``.

    Cost: one forward pass over ``x1`` and ``x2`` and an ``n1 x n2 x O`` product on the host.
    """
    f, params, x1, x2, arch = resolve(f, params, x1, x2)
    x1 = _checks.as_inputs(x1, name="x1")
    x2 = None if x2 is None else _checks.as_inputs(x2, name="x2", dtype=x1.dtype)
    _checks.check_pair(x1, x2)
    O = _out_dim(f, params, x1)
    fs, fd = engine.split_fn(f)
    o1 = np.asarray(_apply_jit(fs, fd, params, jnp.asarray(x1)))
    o2 = o1 if x2 is None else np.asarray(_apply_jit(fs, fd, params, jnp.asarray(x2)))
    matrix = o1 @ o2.T / o1.shape[1] if trace_outputs else np.einsum("io,jr->ijor", o1, o2)
    return EmpiricalKernel(
        matrix=matrix,
        kind="nngp",
        trace_outputs=bool(trace_outputs),
        provenance=_blocks.provenance(
            matrix.dtype,
            kind="nngp",
            trace_outputs=bool(trace_outputs),
            n1=int(x1.shape[0]),
            n2=int((x1 if x2 is None else x2).shape[0]),
            num_outputs=int(O),
            model=_describe(f, arch),
        ),
    )


@jax.jit
def _dummy():  # pragma: no cover - keeps jax import used in type checkers
    return None


@engine.at_analysis_precision
def _apply(fs, fd, params, x):
    return _outputs_2d(engine.merge_fn(fs, fd)(params, x))


_apply_jit = jax.jit(_apply, static_argnames=("fs",))
