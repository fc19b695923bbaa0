"""Singular values of a network's hidden-to-hidden Jacobian (dynamical isometry).

For every input ``x_i`` of a batch, ``J_i = d a_to(x_i) / d a_from(x_i)``: the Jacobian of a
later layer's output with respect to an earlier layer's output, both found from the traced
program (:mod:`landscape.diagnostics._layers`; by default the activations of the first and the
last hidden layer, a square map for a network of constant width: the input-output Jacobian of a
classifier, ``10 x 64``, says little about isometry). A network is dynamically isometric when
the singular values of ``J`` concentrate around 1 (Saxe et al. 2014; Pennington et al. 2017,
2018): their mean square ``chi`` (``chi_1`` per layer in mean-field theory) must be 1
(criticality) and their spread small, which orthogonal weights can give for tanh near
criticality with a small ``q*`` and Gaussian weights cannot (nor ReLU with any weights).

Two routes, one result:

* ``method="exact"``: the dense per-example Jacobians, column by column from forward-mode
  products (one ``jvp`` of the batch per column: the examples' Jacobians are independent), and
  their singular values by NumPy's SVD in float64 on the host. Memory ``n d_to d_from``
  numbers; refused above ``max_dense`` (default :data:`MAX_DENSE`).
* ``method="lanczos"``: the spectrum of the block-diagonal ``J^T J = diag(J_i^T J_i)`` (the
  pooled squared singular values of every input) by stochastic Lanczos quadrature through
  :func:`landscape.hessian.spectral_density` on a matvec (one ``jvp`` and one ``vjp`` of the
  batch per product), its top eigenvalue by :func:`landscape.hessian.eigenvalues` (the density's
  check): the mean square from the probes' trace estimate (with its standard error), the spread
  from the quadrature's second moment, the largest singular value to the eigensolver's
  tolerance, the histogram from the quadrature nodes and weights.

With batch norm in batch mode the examples are coupled through the batch statistics: ``J_i`` is
then the diagonal block (perturb example ``i`` alone, the statistics responding), formed one
example at a time (``n`` times the cost).

References:
  Saxe, McClelland, Ganguli (2014), Exact solutions to the nonlinear dynamics of learning in deep
  linear neural networks. Pennington, Schoenholz, Ganguli (2017), Resurrecting the sigmoid in
  deep learning through dynamical isometry; (2018), The emergence of spectral universality in
  deep networks. Xiao et al. (2018).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from landscape import _provenance, engine
from landscape import tree as _tree
from landscape import validate as _validate
from landscape._model import as_model
from landscape._result import Result, result, static_field
from landscape.diagnostics import _layers
from landscape.diagnostics._signal import _has_bn, check_inputs, resolve_bn_mode

PyTree = Any

__all__ = ["JacobianSpectrumResult", "MAX_DENSE", "jacobian_spectrum"]

MAX_DENSE = 1 << 24
"""Largest dense Jacobian (``n x d_to x d_from`` numbers, 64 MB in float32) that
``method="exact"`` forms; ``"auto"`` switches to Lanczos above it."""

METHODS = ("auto", "exact", "lanczos")
POINTS = ("activation", "preactivation")


@result
class JacobianSpectrumResult(Result):
    """:func:`jacobian_spectrum`.

    Attributes:
      mean_sq: mean squared singular value over every input (``tr(J^T J) / min(d_to, d_from)``
        averaged over inputs): ``chi`` of the map, 1 at criticality.
      var_sq: the variance of the squared singular values (pooled over inputs): the spread.
      largest: the largest singular value over every input.
      mean_sq_error: the standard error of ``mean_sq`` (Lanczos: the probes'; 0 when exact).
      singular_values: ``(n, min(d_to, d_from))`` per input, descending (exact; else None).
      nodes, weights: the quadrature of the pooled ``J^T J`` spectrum, ``(num_probes,
        num_steps)``: eigenvalues (squared singular values) and their weights (Lanczos; else
        None). Weights of a non-square map include its ``d_from - d_to`` zero eigenvalues.
      method: ``"exact"`` or ``"lanczos"``; from_layer, to_layer: layer indices; from_name,
        to_name: their kernels' paths; point: ``"activation"`` or ``"preactivation"``;
        dims: ``(d_to, d_from)`` per input; num_examples; bn_mode (as in signal propagation);
        coupled: whether batch statistics coupled the examples; num_products: Jacobian
        products used (jvp columns, or matvecs).
    """

    mean_sq: float
    var_sq: float
    largest: float
    mean_sq_error: float
    singular_values: np.ndarray | None = None
    nodes: np.ndarray | None = None
    weights: np.ndarray | None = None
    method: str = static_field(default="exact")
    from_layer: int = static_field(default=0)
    to_layer: int = static_field(default=0)
    from_name: str = static_field(default="")
    to_name: str = static_field(default="")
    point: str = static_field(default="activation")
    dims: tuple = static_field(default=())
    num_examples: int = static_field(default=0)
    bn_mode: str = static_field(default="none")
    coupled: bool = static_field(default=False)
    num_products: int = static_field(default=0)
    provenance: dict = static_field(default_factory=dict)

    def histogram(self, bins=40, range=None):  # noqa: A002 - numpy's name
        """``(edges, density)`` of the singular values (pooled over inputs; Lanczos: the
        quadrature nodes' square roots weighted by their weights)."""
        if self.singular_values is not None:
            s = np.asarray(self.singular_values, np.float64).ravel()
            return _density(s, None, bins, range)
        nodes = np.sqrt(np.clip(np.asarray(self.nodes, np.float64), 0, None)).ravel()
        w = np.asarray(self.weights, np.float64).ravel()
        return _density(nodes, w, bins, range)


def _density(values, weights, bins, range):  # noqa: A002
    density, edges = np.histogram(values, bins=bins, range=range, weights=weights, density=True)
    return edges, density


# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Map:
    """``E -> a_to`` with ``E`` added at ``a_from`` (static, hashable): the map whose Jacobian
    is wanted, and its ``J^T J`` matvec."""

    apply_fn: Any
    plan: _layers.LayerPlan
    site_from: tuple
    site_to: tuple
    coupled: bool

    def value(self, params, state, x, e):
        _, found = _layers.run_tapped(
            self.apply_fn,
            self.plan,
            params,
            state,
            x,
            capture=[self.site_to],
            perturb={self.site_from: e},
        )
        return found[self.site_to]

    def jvp(self, params, state, x, e0, v):
        return jax.jvp(lambda e: self.value(params, state, x, e), (e0,), (v,))[1]

    def __call__(self, params, state, x, v):
        """``J^T J v`` (block diagonal over examples)."""
        e0 = jnp.zeros_like(v)
        f = lambda e: self.value(params, state, x, e)  # noqa: E731
        if not self.coupled:
            u = jax.jvp(f, (e0,), (v,))[1]
            return jax.vjp(f, e0)[1](u)[0]
        n = v.shape[0]

        def one(i):
            mask_in = (jnp.arange(n) == i).reshape((n,) + (1,) * (v.ndim - 1)).astype(v.dtype)
            u = jax.jvp(f, (e0,), (v * mask_in,))[1]
            mask_out = (jnp.arange(n) == i).reshape((n,) + (1,) * (u.ndim - 1)).astype(u.dtype)
            return jax.vjp(f, e0)[1](u * mask_out)[0][i]

        return jax.lax.map(one, jnp.arange(n))


@engine.at_analysis_precision
@jax.jit
def _dense_jacobians(fmap: _Map, params, state, x):
    """``(n, d_to, d_from)``: every example's Jacobian, column by column."""
    e0 = jnp.zeros(*_site(fmap, "from"))
    n = e0.shape[0]
    d_from = math.prod(e0.shape[1:])

    if not fmap.coupled:
        _, lin = jax.linearize(lambda e: fmap.value(params, state, x, e), e0)

        def column(j):
            t = jnp.broadcast_to(jax.nn.one_hot(j, d_from, dtype=e0.dtype), (n, d_from))
            return lin(t.reshape(e0.shape)).reshape(n, -1)

        cols = jax.lax.map(column, jnp.arange(d_from))  # (d_from, n, d_to)
        return jnp.transpose(cols, (1, 2, 0))

    _, lin = jax.linearize(lambda e: fmap.value(params, state, x, e), e0)

    def example(i):
        def column(j):
            t = jnp.zeros((n, d_from), e0.dtype).at[i, j].set(1)
            return lin(t.reshape(e0.shape)).reshape(n, -1)[i]

        return jax.lax.map(column, jnp.arange(d_from)).T  # (d_to, d_from)

    return jax.lax.map(example, jnp.arange(n))


def _site(fmap: _Map, which: str) -> tuple:
    """``(shape, dtype)`` of the map's input or output value."""
    site = fmap.site_from if which == "from" else fmap.site_to
    for layer in fmap.plan.layers:
        for s in (layer.preact, layer.phi_in, layer.act):
            if s == site:
                return tuple(layer.shape), jnp.dtype(layer.dtype)
    raise AssertionError("site not in plan")  # pragma: no cover


jax.tree_util.register_static(_Map)


def _layer_index(i, L: int, *, name: str) -> int:
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
        raise TypeError(f"{_validate.where()}: {name} must be an int (a layer index); got {i!r}.")
    if not -L <= i < L:
        raise ValueError(
            f"{_validate.where()}: {name}={i} is out of range: the model has {L} layers "
            f"(indices 0..{L - 1}, or -{L}..-1 from the end)."
        )
    return int(i) % L


@_validate.public
def jacobian_spectrum(
    model,
    x,
    *,
    from_layer: int = 0,
    to_layer: int | None = None,
    point: str = "activation",
    method: str = "auto",
    bn_mode: str = "auto",
    key=None,
    num_probes: int = 4,
    num_steps: int = 40,
    max_dense: int = MAX_DENSE,
) -> JacobianSpectrumResult:
    """Singular values of ``d a_to / d a_from`` for every input of ``x``: their mean square,
    spread and maximum, and histogram data.

    Args:
      model: a :class:`landscape.Model` (or triple, or NNX module).
      x: a batch of inputs (finite, leading example axis): the inputs the Jacobians are taken
        at.
      from_layer, to_layer: layer indices in evaluation order (negative from the end;
        :func:`signal_propagation`'s order): the map goes from ``from_layer``'s output to
        ``to_layer``'s (``to_layer > from_layer``). Default: the first layer to the last hidden
        layer (the one before the readout).
      point: which output of a layer: ``"activation"`` (default) or ``"preactivation"``.
      method: ``"exact"`` (dense Jacobians and SVD), ``"lanczos"`` (matrix-free, through
        :func:`landscape.hessian.spectral_density` and :func:`landscape.hessian.eigenvalues`),
        or ``"auto"``: exact when the dense Jacobians have at most ``max_dense`` numbers.
      bn_mode: as in :func:`signal_propagation` (``"batch"`` couples the examples).
      key: PRNG key: required by the Lanczos route (its probes), unused by the exact one.
      num_probes, num_steps: the Lanczos quadrature (probes, steps per probe).
      max_dense: the largest dense request (``n d_to d_from`` numbers).

    Returns:
      :class:`JacobianSpectrumResult` (plot with :func:`landscape.plot.plot_jacobian_spectrum`).

    Cost:
      Exact: ``d_from`` forward-mode products of the batch (``n d_from`` with coupled batch
      norm), memory ``n d_to d_from``; Lanczos: ``num_probes x num_steps`` matvecs (one jvp and
      one vjp of the batch each; ``n`` of each when coupled) plus the top eigenvalue's check.

    Raises:
      ValueError: layer indices out of range or not increasing, a dense request above
        ``max_dense`` with ``method="exact"`` (use ``method="lanczos"``), a layer output
        without the examples on its leading axis, non-finite or misshapen inputs.
      TypeError: a missing ``key`` on the Lanczos route, bad settings.
      LayerEnumerationError: the model's layers cannot be enumerated.

    Example:
      >>> res = landscape.diagnostics.jacobian_spectrum(model, x)
      >>> res.mean_sq, res.var_sq, res.largest
    """
    model = as_model(model)
    _validate.check_params(model.params)
    _validate.check_choice(method, METHODS, name="method")
    _validate.check_choice(point, POINTS, name="point")
    max_dense = _validate.check_positive_int(max_dense, name="max_dense")
    mode, train = resolve_bn_mode(bn_mode, model.state)
    coupled = train and _has_bn(model.state)
    x = check_inputs(x, min_examples=2 if coupled else 1)
    plan = _layers.layer_plan(model, x, train=train)
    L = len(plan.layers)
    fi = _layer_index(from_layer, L, name="from_layer")
    if to_layer is None:
        hidden = plan.hidden
        if not hidden or hidden[-1] <= fi:
            raise ValueError(
                f"{_validate.where()}: the model has no hidden layer after from_layer={fi} "
                f"(hidden layers: {list(hidden)}); pass to_layer= (e.g. to_layer=-1, the readout)."
            )
        ti = hidden[-1]
    else:
        ti = _layer_index(to_layer, L, name="to_layer")
    if ti <= fi:
        raise ValueError(
            f"{_validate.where()}: to_layer ({ti}) must come after from_layer ({fi}) in evaluation "
            "order."
        )
    lf, lt = plan.layers[fi], plan.layers[ti]
    n = int(x.shape[0])
    for lay, nm in ((lf, "from_layer"), (lt, "to_layer")):
        if not lay.shape or lay.shape[0] != n:
            raise ValueError(
                f"{_validate.where()}: {nm}'s output ({lay.name}) has shape {lay.shape}, without the "
                f"{n} examples on its leading axis: per-example Jacobians need them there."
            )
    pick = (lambda lay: lay.act) if point == "activation" else (lambda lay: lay.preact)
    fmap = _Map(model.apply_fn, plan, pick(lf), pick(lt), coupled)
    d_from = math.prod(lf.shape[1:])
    d_to = math.prod(lt.shape[1:])
    r = min(d_from, d_to)
    size = n * d_from * d_to
    if method == "exact" and size > max_dense:
        raise ValueError(
            f"{_validate.where()}: the dense Jacobians are too large to form: {n} inputs x "
            f"{d_to} x {d_from} = {size:,} numbers > max_dense={max_dense:,}. Use the "
            "matrix-free route, method='lanczos' (with key=), or fewer inputs, or raise max_dense."
        )
    use_exact = method == "exact" or (method == "auto" and size <= max_dense)
    common = dict(
        method="exact" if use_exact else "lanczos",
        from_layer=fi,
        to_layer=ti,
        from_name=lf.name,
        to_name=lt.name,
        point=point,
        dims=(d_to, d_from),
        num_examples=n,
        bn_mode=mode,
        coupled=coupled,
    )
    dtype = _tree.dtype_of(model.params)
    settings = {
        "method": common["method"],
        "from_layer": fi,
        "to_layer": ti,
        "point": point,
        "bn_mode": mode,
    }
    if use_exact:
        J = np.asarray(_dense_jacobians(fmap, model.params, model.state, x), np.float64)
        if not np.isfinite(J).all():
            raise FloatingPointError(
                f"{_validate.where()}: the Jacobian from layer {fi} to layer {ti} is not finite "
                "(the signal overflowed between them)."
            )
        s = np.linalg.svd(J, compute_uv=False)[:, :r]
        sq = s**2
        return JacobianSpectrumResult(
            mean_sq=float(sq.mean()),
            var_sq=float(sq.var()),
            largest=float(s.max()),
            mean_sq_error=0.0,
            singular_values=s,
            num_products=d_from * (n if coupled else 1),
            provenance=_provenance.provenance(dtype=dtype, settings=settings),
            **common,
        )
    if key is None:
        raise TypeError(
            f"{_validate.where()}: the Lanczos route needs key= (its random probes)"
            + (
                f"; method='auto' chose it because the dense Jacobians would hold {size:,} numbers "
                f"(> max_dense={max_dense:,})."
                if method == "auto"
                else "."
            )
        )
    key = _validate.check_key(key)
    num_probes = _validate.check_positive_int(num_probes, name="num_probes")
    num_steps = _validate.check_positive_int(num_steps, name="num_steps")
    from landscape import hessian

    P = n * d_from
    matvec = Partial(fmap, model.params, model.state, x)
    like = jax.ShapeDtypeStruct((n,) + tuple(lf.shape[1:]), jnp.dtype(lf.dtype))
    dens = hessian.spectral_density(
        matvec, like=like, key=key, num_probes=num_probes, num_steps=min(num_steps, P)
    )
    nodes = np.asarray(dens.nodes, np.float64)
    weights = np.asarray(dens.weights, np.float64)
    scale = P / (n * r)  # moments over the n r singular values (a wider input adds zeros)
    trace = float(dens.checks["hutchinson_trace"])
    mean_sq = trace / (n * r)
    err = float(dens.checks.get("trace_std_error", np.nan)) / (n * r)
    m2 = float(np.mean(np.sum(weights * nodes**2, axis=1))) * scale
    top = float(dens.checks.get("top_eigenvalue", np.max(nodes)))
    return JacobianSpectrumResult(
        mean_sq=mean_sq,
        var_sq=max(m2 - mean_sq**2, 0.0),
        largest=math.sqrt(max(top, 0.0)),
        mean_sq_error=err,
        nodes=nodes,
        weights=weights,
        num_products=int(dens.num_hvps),
        provenance=_provenance.provenance(dtype=dtype, settings=settings),
        **common,
    )
