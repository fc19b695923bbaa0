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
  input (patch) Gram ``G_l`` and signal Gram ``S_l``: one forward and ``O`` backward passes
  per example plus Gram products of cost ``N^2 P_l^2 (fan_in + O C_out)`` per layer, or, when
  cheaper for a convolution, the per-layer Jacobian ``N O P_l fan_in C_out`` and its
  contraction ``N^2 O fan_in C_out``; chosen per layer from these formulas.

``method="auto"`` picks ``"structured"`` for our architectures and otherwise the cheaper of
the other two (forward-pass flops from XLA's cost analysis).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

import landscape
from landscape import _tree, _validate, engine
from landscape._model import Model
from ntk import _blocks, _checks
from ntk._arch import Architecture, _Ctx, arch_of_model

_HI = jax.lax.Precision.HIGHEST
METHODS = ("auto", "jacobian", "ntvp", "structured")


# --------------------------------------------------------------------------------------------
# Normalising the model argument
# --------------------------------------------------------------------------------------------
def _call_model(apply_fn, state, params, x):
    return apply_fn(params, state, x, train=False)[0]


def _is_triple(f) -> bool:
    return isinstance(f, Model) or (isinstance(f, tuple) and len(f) == 3 and callable(f[0]))


def resolve(f, params, x1, x2, *, fn: str):
    """``(f(params, x), params, x1, x2, arch)`` from either calling convention."""
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
            f"{fn}: pass the model (arch.init(key, input_shape)) or arch.apply with its "
            "params, not the architecture itself; the architecture's analytic "
            "kernel is ntk.kernel(arch, x1, x2)."
        )
    else:
        _validate.check_callable(f, fn=fn, name="f")
        owner = getattr(f, "__self__", None)
        if isinstance(owner, Architecture) and getattr(f, "__name__", "") == "apply":
            arch = owner
    _validate.check_params(params, fn=fn)
    return f, params, x1, x2, arch


def _out_dim(f, params, x, *, fn: str) -> int:
    try:
        out = jax.eval_shape(f, params, jax.ShapeDtypeStruct((1,) + tuple(x.shape[1:]), x.dtype))
    except Exception as e:  # the model rejects these inputs
        raise ValueError(
            f"{fn}: the model could not be applied to x1 examples of shape {tuple(x.shape[1:])}: "
            f"{type(e).__name__}: {str(e)[:300]}"
        ) from e
    if not hasattr(out, "shape") or out.ndim not in (1, 2) or out.shape[0] != 1:
        raise ValueError(
            f"{fn}: f(params, x) must return outputs of shape (n,) or (n, num_outputs); got "
            f"{getattr(out, 'shape', type(out).__name__)} for one example."
        )
    return 1 if out.ndim == 1 else int(out.shape[1])


def _outputs_2d(out):
    return out[:, None] if out.ndim == 1 else out


# --------------------------------------------------------------------------------------------
# Jacobian contraction and NTK-vector products (any f)
# --------------------------------------------------------------------------------------------
def _jacobians(f, params, x):
    """Per-example Jacobians: leaves ``(b, O, *leaf)``."""

    def f1(p, xi):
        return _outputs_2d(f(p, xi[None]))[0]

    return jax.vmap(jax.jacrev(f1), in_axes=(None, 0))(params, x)


def _contract(j1, j2, trace: bool):
    out = None
    for a, b in zip(jax.tree.leaves(j1), jax.tree.leaves(j2)):
        a = a.reshape(a.shape[:2] + (-1,))
        b = b.reshape(b.shape[:2] + (-1,))
        if trace:
            t = jnp.einsum("iok,jok->ij", a, b, precision=_HI) / a.shape[1]
        else:
            t = jnp.einsum("iok,jrk->ijor", a, b, precision=_HI)
        out = t if out is None else out + t
    return out


def ntk_jacobian(f, params, x1, x2=None, *, trace_outputs: bool = True):
    """Empirical NTK block by Jacobian contraction (traceable)."""
    j1 = _jacobians(f, params, x1)
    j2 = j1 if x2 is None else _jacobians(f, params, x2)
    return _contract(j1, j2, trace_outputs)


def ntk_ntvp(f, params, x1, x2=None, *, trace_outputs: bool = True):
    """Empirical NTK block by NTK-vector products (traceable)."""
    x2 = x1 if x2 is None else x2
    j2 = _jacobians(f, params, x2)  # the vector-Jacobian products of every output of x2
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
def _features(arch: Architecture, params, x):
    """Inputs of every affine layer and the back-propagated signals ``(O, b, *z)``."""
    probe = _Ctx()
    jax.eval_shape(lambda p, xx: arch.apply(p, xx, probe), params, x)
    eps0 = {k: jnp.zeros(s.shape, s.dtype) for k, s in probe.zshapes.items()}

    def g(eps):
        ctx = _Ctx(eps)
        out = _outputs_2d(arch.apply(params, x, ctx))
        return out, ctx.inputs

    out, vjp_fn, inputs = jax.vjp(g, eps0, has_aux=True)
    b, O = out.shape
    cts = jnp.broadcast_to(jnp.eye(O, dtype=out.dtype)[:, None, :], (O, b, O))
    (signals,) = jax.vmap(vjp_fn)(cts)
    return inputs, signals, O


def structured_costs(b1, b2, npos, fan_in, cout, O, trace):
    """(gram, jacobian) flop estimates of one affine layer's block contribution."""
    oo = O if trace else O * O
    gram = b1 * b2 * npos * npos * (fan_in + oo * cout) + (
        0 if trace else b1 * b2 * oo * npos * npos
    )
    jac = (b1 + b2) * O * npos * fan_in * cout + b1 * b2 * oo * fan_in * cout
    return gram, jac


def ntk_structured(arch: Architecture, params, x1, x2=None, *, trace_outputs: bool = True):
    """Empirical NTK block of an :class:`Architecture` model by per-layer products
    (traceable)."""
    in1, sig1, O = _features(arch, params, x1)
    in2, sig2, _ = (in1, sig1, O) if x2 is None else _features(arch, params, x2)
    total = None
    for path, layer in arch.affine_layers():
        p1 = layer.patches(in1[path])
        p2 = p1 if x2 is None else layer.patches(in2[path])
        b1, npos, fan_in = p1.shape
        b2 = p2.shape[0]
        d1 = sig1[path].reshape(O, b1, npos, -1)
        d2 = d1 if x2 is None else sig2[path].reshape(O, b2, npos, -1)
        cout = d1.shape[-1]
        wc, bc = layer.coefs(fan_in)
        gram, jac = structured_costs(b1, b2, npos, fan_in, cout, O, trace_outputs)
        if npos == 1 or gram <= jac:
            g = jnp.einsum("ipk,jqk->ijpq", p1, p2, precision=_HI)
            if trace_outputs:
                s = jnp.einsum("oipc,ojqc->ijpq", d1, d2, precision=_HI) / O
                t = jnp.sum(g * s, axis=(2, 3))
            else:
                s = jnp.einsum("oipc,rjqc->ijorpq", d1, d2, precision=_HI)
                t = jnp.einsum("ijpq,ijorpq->ijor", g, s, precision=_HI)
        else:
            j1 = jnp.einsum("oipc,ipk->oikc", d1, p1, precision=_HI)
            j2 = j1 if x2 is None else jnp.einsum("oipc,ipk->oikc", d2, p2, precision=_HI)
            if trace_outputs:
                t = jnp.einsum("oikc,ojkc->ij", j1, j2, precision=_HI) / O
            else:
                t = jnp.einsum("oikc,rjkc->ijor", j1, j2, precision=_HI)
        t = t * jnp.asarray(wc * wc, t.dtype)
        if layer.b_std is not None and bc != 0.0:
            s1 = jnp.sum(d1, axis=2)
            s2 = s1 if x2 is None else jnp.sum(d2, axis=2)
            if trace_outputs:
                tb = jnp.einsum("oic,ojc->ij", s1, s2, precision=_HI) / O
            else:
                tb = jnp.einsum("oic,rjc->ijor", s1, s2, precision=_HI)
            t = t + tb * jnp.asarray(bc * bc, tb.dtype)
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
    fn = "ntk.empirical_ntk_fn"
    _validate.check_choice(method, METHODS[1:], fn=fn, name="method")
    if method == "structured" and not isinstance(arch, Architecture):
        raise ValueError(f"{fn}: method='structured' needs arch=<the ntk.Architecture of f>.")
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
) -> np.ndarray:
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
      store: directory or :class:`landscape.engine.ChunkStore` for resumable blocks.
      progress: progress bar over waves of blocks.

    Returns:
      NumPy array ``(n1, n2)`` or ``(n1, n2, O, O)`` in the parameters' dtype.

    Raises:
      TypeError, ValueError: bad model, parameters or inputs (shape mismatch, NaN/Inf, a
        block size that cannot fit, an unknown method, structured on a foreign model).

    Example:
      >>> model = arch.init(jax.random.key(0), (64,))
      >>> theta = ntk.empirical_ntk(model, x)                      # structured
      >>> theta = ntk.empirical_ntk(f, params, x, method="ntvp")   # any f(params, x)

    References:
      Novak, Sohl-Dickstein, Schoenholz (2022), Fast finite width neural tangent kernel.
    """
    fn = "ntk.empirical_ntk"
    f, params, x1, x2, arch = resolve(f, params, x1, x2, fn=fn)
    _validate.check_choice(method, METHODS, fn=fn, name="method")
    x1 = _checks.as_inputs(x1, fn=fn, name="x1")
    x2 = None if x2 is None else _checks.as_inputs(x2, fn=fn, name="x2", dtype=x1.dtype)
    _checks.check_pair(x1, x2, fn=fn)
    if arch is not None:
        arch.check_input_shape(x1.shape[1:], fn=fn, name="x1")
    O = _out_dim(f, params, x1, fn=fn)
    P = _tree.size(params)
    n = max(x1.shape[0], 0 if x2 is None else x2.shape[0])
    if method == "structured" and arch is None:
        raise ValueError(
            f"{fn}: method='structured' needs a model built by an ntk architecture "
            "(arch.init(...) or f=arch.apply); use 'jacobian' or 'ntvp' for other models."
        )
    if method == "auto":
        if arch is not None:
            method = "structured"
        else:
            b = min(n, 64)
            costs = method_costs(forward_flops(f, params, x1), P, b, b, O, trace_outputs)
            method = min(costs, key=costs.get)
    return _run(
        f, params, x1, x2, arch, method, bool(trace_outputs), O, block_size, store, progress
    )


def _empirical_pair(arch: Architecture, params, x1, x2=None):
    """``(ntk, nngp)`` of the finite network ``arch`` with ``params`` (traced over outputs,
    structured method, blocked; one compiled program per architecture and input shape).
    Internal: no validation (the callers drew ``params`` and checked ``x``)."""
    O = int(np.prod(arch.out_shape(x1.shape[1:])))
    return _run(arch.apply, params, x1, x2, arch, "structured", True, O, None, None, False, True)


def _run(
    f, params, x1, x2, arch, method, trace_outputs, O, block_size, store, progress, nngp=False
):
    """The blocked evaluation behind :func:`empirical_ntk` (inputs already validated)."""
    fn = "ntk.empirical_ntk"
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
        fn=fn,
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
            kind="empirical_ntk",
            method=method,
            trace=bool(trace_outputs),
            dtype=str(pdtype),
            data=landscape.data_hash({"x1": x1, "x2": x2}),
            params=landscape.data_hash(params),
        )
    )
    return _blocks.blocked(
        block,
        (fd, params),
        x1,
        x2,
        block_size=bs,
        fn=fn,
        store=store,
        store_meta=meta,
        progress=progress,
    )


def _feature_size(arch, params, x, O) -> tuple[int, int]:
    """(floats per example of the structured features, largest positions^2 of a layer)."""
    probe = _Ctx()
    jax.eval_shape(
        lambda p, xx: arch.apply(p, xx, probe),
        params,
        jax.ShapeDtypeStruct((1,) + tuple(x.shape[1:]), x.dtype),
    )
    per_row, pos2 = 0, 1
    for path, s in probe.zshapes.items():
        zs = math.prod(s.shape[1:])
        hs = math.prod(probe.inputs[path].shape[1:])
        per_row += hs * 9 + O * zs
        npos = math.prod(s.shape[1:-1]) if len(s.shape) > 2 else 1
        pos2 = max(pos2, npos * npos)
    return per_row, pos2


def empirical_nngp(f, params, x1=None, x2=None, *, trace_outputs: bool = True) -> np.ndarray:
    """Empirical NNGP ``f(x1) f(x2)^T / O`` (mean over outputs) of one network, or the full
    ``(n1, n2, O, O)`` outer product with ``trace_outputs=False``. Same calling conventions as
    :func:`empirical_ntk`. Averaged over random initialisations it estimates the analytic NNGP
    (see :func:`ntk.monte_carlo`)."""
    fn = "ntk.empirical_nngp"
    f, params, x1, x2, _ = resolve(f, params, x1, x2, fn=fn)
    x1 = _checks.as_inputs(x1, fn=fn, name="x1")
    x2 = None if x2 is None else _checks.as_inputs(x2, fn=fn, name="x2", dtype=x1.dtype)
    _checks.check_pair(x1, x2, fn=fn)
    _out_dim(f, params, x1, fn=fn)
    fs, fd = engine.split_fn(f)
    o1 = np.asarray(_apply_jit(fs, fd, params, jnp.asarray(x1)))
    o2 = o1 if x2 is None else np.asarray(_apply_jit(fs, fd, params, jnp.asarray(x2)))
    if trace_outputs:
        return o1 @ o2.T / o1.shape[1]
    return np.einsum("io,jr->ijor", o1, o2)


@jax.jit
def _dummy():  # pragma: no cover - keeps jax import used in type checkers
    return None


def _apply(fs, fd, params, x):
    return _outputs_2d(engine.merge_fn(fs, fd)(params, x))


_apply_jit = jax.jit(_apply, static_argnames=("fs",))
