"""Signal propagation at initialisation: per-layer statistics of the forward signal and, with a
loss, of the backward signal, for any model whose layers can be enumerated from its program.

The layers are found in the traced program (:mod:`landscape.diagnostics._layers`: every
``dot_general``/convolution applied to the data with a parameter operand; its output plus bias
is the pre-activation ``z``; the elementwise region after it ends at the activation ``a``; ``u``
is the input of the nonlinearity, the batch-norm output or residual sum where there is one).
The model is then evaluated equation by equation (:func:`landscape._program.evaluate`) with
those values captured and, for the backward signal, a zero perturbation added at every ``z``
so that the loss's gradient with respect to each pre-activation is an ordinary gradient.
Everything runs in one compiled program per model shape, mode and loss.

Per layer (means over every example, spatial position and unit of the batch):

* ``q``: the second moment ``mean(z^2)`` of the pre-activation (Poole et al. 2016's ``q^l``
  when the network has no normalisation); ``q_phi``: that of ``u``; ``q_act``: that of ``a``;
* ``dead_units``: the fraction of units (output features or channels) whose activation is
  exactly zero on every input of the batch and every position (dead ReLUs); ``zero_fraction``:
  the fraction of activation values that are exactly zero;
* ``saturated``: for tanh, the fraction of activations with ``|a| > saturation`` (default 0.99,
  ``|u| > 2.65``); for the sigmoid, with ``|2 a - 1| > saturation`` (the same threshold on
  ``2 sigmoid(u) - 1 = tanh(u / 2)``: ``|u| > 5.29``); NaN for layers of any other kind (it is
  not defined there, and ``activations`` says which kind each layer is);
* with a loss: ``grad_param_norm``, the norm of the loss's gradient with respect to the layer's
  own parameters (kernel and bias), and ``grad_preact_norm``, its norm with respect to the
  pre-activation ``z`` (the backpropagated signal ``delta^l``, Schoenholz et al. 2017).

Batch norm: in evaluation mode at initialisation (running mean 0, variance 1) it is the
identity up to its ``eps``, so these statistics would not see it. ``bn_mode="batch"`` (the
default for a model with floating state) runs the training-mode program, batch norm normalising
with the batch's own statistics, and discards the state update; ``"eval"`` the evaluation-mode
program. The mode used is recorded in every result.

References:
  Glorot & Bengio (2010); He et al. (2015); Poole et al. (2016), Exponential expressivity in
  deep neural networks through transient chaos; Schoenholz et al. (2017), Deep information
  propagation; Xiao et al. (2018), Dynamical isometry and a mean field theory of CNNs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from landscape import _provenance, engine
from landscape import tree as _tree
from landscape import validate as _validate
from landscape._model import as_model
from landscape._result import Result, result, static_field
from landscape.diagnostics import _layers
from landscape.losses import Loss, cross_entropy, mse

PyTree = Any

__all__ = [
    "BN_MODES",
    "DEFAULT_INITS",
    "DepthSweepResult",
    "LayerEnumerationError",
    "SignalResult",
    "depth_sweep",
    "signal_propagation",
]

LayerEnumerationError = _layers.LayerEnumerationError

BN_MODES = ("auto", "batch", "eval")
DEFAULT_INITS = (
    "zeros",
    "lecun_normal",
    "he_normal",
    "glorot_normal",
    "glorot_uniform",
    "orthogonal",
)
"""The initialisation schemes :func:`depth_sweep` compares by default (names of
:data:`landscape.models.INITS`)."""

_FIELDS = ("q", "q_phi", "q_act", "dead_units", "zero_fraction", "saturated")
_GRAD_FIELDS = ("grad_param_norm", "grad_preact_norm")


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------
@result
class SignalResult(Result):
    """Per-layer statistics of one network at one batch (:func:`signal_propagation`).

    Attributes (arrays of one entry per layer, in evaluation order):
      q, q_phi, q_act: second moments of the pre-activation ``z`` (product plus bias), of the
        input of the nonlinearity ``u`` and of the activation ``a``.
      dead_units: fraction of units zero on every input and position; zero_fraction: fraction
        of zero activation values.
      saturated: fraction of saturated activations (tanh and sigmoid layers; NaN elsewhere).
      grad_param_norm, grad_preact_norm: gradient norms of the loss with respect to the layer's
        parameters and its pre-activation (``None`` without a loss).
        The second moments and norms are float64: each is computed as its largest magnitude
        and the mean square (sum of squares) of the values divided by it, and multiplied out
        on the host, so a vanishing signal or gradient of 1e-30 (whose square is below
        float32's range) or an exploding one of 1e30 keeps its value. The values themselves are
        what the program's arithmetic gives: below float32's smallest normal number (1e-38) an
        activation or gradient is zero; use float64 to follow it further.
      finite: whether the layer's values are finite (an infinite or NaN activation or
        pre-activation makes its statistics so; with a loss, the backward signal's too).
      input_q: second moment of the input batch.
      loss: the loss at the batch (``None`` without a loss).
      layer_names: each layer's kernel path (display only: layers are found from the program).
      ops: ``"dense"`` or ``"conv"``; activations: the kind after each layer (``"relu"``,
        ``"tanh"``, ``"sigmoid"``, ``"gelu"``, ``"silu"``, ..., ``"linear"``, ``"other"``: see
        ``landscape.diagnostics._layers.KINDS``); is_output: the readout layer(s).
      shapes: the pre-activation's shape per layer.
      bn_mode: ``"batch"`` (training-mode program, batch statistics, no state update),
        ``"eval"`` (running statistics) or ``"none"`` (a model without floating state, which
        runs in evaluation mode).
      saturation: the threshold of ``saturated``.
      num_examples: the batch size.
    """

    q: np.ndarray
    q_phi: np.ndarray
    q_act: np.ndarray
    dead_units: np.ndarray
    zero_fraction: np.ndarray
    saturated: np.ndarray
    finite: np.ndarray
    input_q: np.ndarray
    grad_param_norm: np.ndarray | None = None
    grad_preact_norm: np.ndarray | None = None
    loss: np.ndarray | None = None
    layer_names: tuple = static_field(default=())
    ops: tuple = static_field(default=())
    activations: tuple = static_field(default=())
    is_output: tuple = static_field(default=())
    shapes: tuple = static_field(default=())
    bn_mode: str = static_field(default="none")
    saturation: float = static_field(default=0.99)
    num_examples: int = static_field(default=0)
    provenance: dict = static_field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return len(self.layer_names)

    @property
    def hidden(self) -> np.ndarray:
        """Indices of the hidden layers (those whose activation is not a model output)."""
        return np.array([i for i, o in enumerate(self.is_output) if not o], dtype=int)


@result
class DepthSweepResult(Result):
    """:func:`depth_sweep`: per-layer statistics over activations x inits x depths x seeds.

    Every per-layer array has shape ``(A, I, D, S, L)`` (activations, inits, depths, seeds,
    layers up to the deepest network's count); entries beyond a network's own layer count are
    NaN (padding: ``num_layers`` says how many are real).

    Attributes:
      q, q_phi, q_act, dead_units, zero_fraction, saturated: as in :class:`SignalResult`.
      grad_param_norm, grad_preact_norm: with a loss, else ``None``.
      finite: ``(A, I, D, S, L)`` bools (False for padding too).
      num_layers: ``(A, I, D)`` layers of each network; last_hidden: ``(A, I, D)`` the index of
        its last hidden layer (``-1`` when there is none).
      depths, inits, activations: the grid; num_seeds; bn_mode; builder: the model name or the
        callable's name; options: the model options passed through.
      num_programs: compiled programs used (one per distinct architecture and shape).
    """

    q: np.ndarray
    q_phi: np.ndarray
    q_act: np.ndarray
    dead_units: np.ndarray
    zero_fraction: np.ndarray
    saturated: np.ndarray
    finite: np.ndarray
    num_layers: np.ndarray
    last_hidden: np.ndarray
    grad_param_norm: np.ndarray | None = None
    grad_preact_norm: np.ndarray | None = None
    depths: tuple = static_field(default=())
    inits: tuple = static_field(default=())
    activations: tuple = static_field(default=())
    num_seeds: int = static_field(default=1)
    bn_mode: str = static_field(default="none")
    builder: str = static_field(default="")
    options: dict = static_field(default_factory=dict)
    num_programs: int = static_field(default=0)
    provenance: dict = static_field(default_factory=dict)

    def at_last_hidden(self, quantity: str = "q") -> np.ndarray:
        """``(A, I, D, S)``: ``quantity`` at each network's last hidden layer (NaN where it has
        none)."""
        arr = getattr(self, quantity)
        if arr is None:
            raise ValueError(f"DepthSweepResult: no {quantity!r} (the sweep ran without a loss).")
        A, I, D, S, _ = arr.shape
        out = np.full((A, I, D, S), np.nan)
        for a in range(A):
            for i in range(I):
                for d in range(D):
                    j = int(self.last_hidden[a, i, d])
                    if j >= 0:
                        out[a, i, d] = arr[a, i, d, :, j]
        return out


# --------------------------------------------------------------------------------------------
# Boundary checks
# --------------------------------------------------------------------------------------------
def _has_bn(state) -> bool:
    return any(jnp.issubdtype(jnp.result_type(x), jnp.floating) for x in jax.tree.leaves(state))


def resolve_bn_mode(bn_mode, state) -> tuple[str, bool]:
    """``(recorded mode, train flag)`` of a ``bn_mode`` setting for a model with ``state``."""
    _validate.check_choice(bn_mode, BN_MODES, name="bn_mode")
    if bn_mode == "auto":
        return ("batch", True) if _has_bn(state) else ("none", False)
    return bn_mode, bn_mode == "batch"


def check_inputs(x, *, name: str = "x", min_examples: int = 1):
    """An input batch: an array with a leading example axis, finite."""
    if isinstance(x, dict):
        raise TypeError(
            f"{_validate.where()}: {name} must be an array of inputs with a leading example axis "
            f"(e.g. data['x']); got a dict with keys {sorted(map(str, x))}."
        )
    try:
        x = jnp.asarray(x)
    except TypeError as e:
        raise TypeError(
            f"{_validate.where()}: {name} must be an array; got {type(x).__name__}."
        ) from e
    if x.ndim == 0:
        raise ValueError(
            f"{_validate.where()}: {name} must have a leading example axis; got a scalar."
        )
    if x.shape[0] < min_examples:
        raise ValueError(
            f"{_validate.where()}: {name} must hold at least {min_examples} examples "
            f"(batch statistics need a batch); got shape {tuple(x.shape)}."
        )
    _validate.check_finite(x, name=name)
    return x


@dataclasses.dataclass(frozen=True)
class _LossSpec:
    """How the loss is computed from the outputs (static)."""

    kind: str  # "loss" (a landscape.Loss), "fn" (fn(outputs, targets)) or "none"
    fn: Callable | None = None
    treedef: Any = None


def _resolve_loss(loss_fn, targets, n: int):
    """``(spec, dynamic leaves, targets)``."""
    if loss_fn is None:
        if targets is not None:
            raise ValueError(
                f"{_validate.where()}: targets were given without loss_fn; pass loss_fn (a "
                "landscape.Loss, 'cross_entropy', 'mse' or fn(outputs, targets)) for the "
                "backward signal, or drop targets."
            )
        return _LossSpec("none"), [], None
    if targets is None:
        raise ValueError(
            f"{_validate.where()}: loss_fn needs targets= (one per example of x) for the "
            "backward signal."
        )
    t = jnp.asarray(targets)
    if t.ndim == 0 or t.shape[0] != n:
        raise ValueError(
            f"{_validate.where()}: targets must have one entry per example of x ({n}); got shape "
            f"{tuple(t.shape)}."
        )
    _validate.check_finite(t, name="targets")
    if isinstance(loss_fn, Loss):
        leaves, treedef = jax.tree.flatten(loss_fn)
        return _LossSpec("loss", None, treedef), leaves, t
    if isinstance(loss_fn, str):
        _validate.check_choice(loss_fn, ("cross_entropy", "mse"), name="loss_fn")
        return _LossSpec("fn", cross_entropy if loss_fn == "cross_entropy" else mse), [], t
    _validate.check_callable(loss_fn, name="loss_fn")
    try:
        hash(loss_fn)
    except TypeError as e:
        raise TypeError(
            f"{_validate.where()}: loss_fn must be hashable (a module-level function such as "
            "landscape.losses.cross_entropy); it is a static argument of compiled code."
        ) from e
    return _LossSpec("fn", loss_fn), [], t


def _output_loss(spec: _LossSpec, leaves, params, out, x, t):
    if spec.kind == "loss":
        loss = jax.tree.unflatten(spec.treedef, leaves)
        batch = {loss.input_key: x, loss.target_key: t}
        value = loss.output_loss(out, batch)
        if loss.weight_decay:
            value = value + loss.penalty(params)
        return value
    return spec.fn(out, t)


# --------------------------------------------------------------------------------------------
# The compiled program
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Static:
    apply_fn: Any
    plan: _layers.LayerPlan
    saturation: float
    loss: _LossSpec


def _layer_stats(layer: _layers.Layer, z, u, a, saturation: float) -> dict:
    """One layer's statistics: the means in one stacked reduction (few reductions compile
    faster), dead units from the largest |a| per unit. The second moments come as a scale
    (the largest magnitude) and the mean square of the values divided by it, combined on the
    host in float64 (:func:`_host`): a vanishing signal of 1e-25 (whose square is below
    float32's range) or an exploding one of 1e25 keeps its value; a value that is not finite
    makes the layer's statistics so."""
    other = tuple(ax for ax in range(a.ndim) if ax not in layer.unit_axes)
    dt = z.dtype
    if layer.activation == "tanh":
        sat = (jnp.abs(a) > saturation).astype(dt)
    elif layer.activation == "sigmoid":
        sat = (jnp.abs(2 * a - 1) > saturation).astype(dt)
    else:
        sat = jnp.zeros_like(a)
    scales = [jnp.max(jnp.abs(v)) for v in (z, u, a)]
    safe = [jnp.where((m > 0) & jnp.isfinite(m), m, 1).astype(dt) for m in scales]
    means = jnp.mean(
        jnp.stack(
            [jnp.square(v / m) for v, m in zip((z, u, a), safe)] + [(a == 0).astype(dt), sat]
        ),
        axis=tuple(range(1, a.ndim + 1)),
    )
    peak = jnp.max(jnp.abs(a), axis=other) if other else jnp.abs(a)
    zero, saturated = means[3], means[4]
    dead = jnp.mean((peak == 0).astype(dt))
    if layer.activation not in ("tanh", "sigmoid"):
        saturated = jnp.asarray(jnp.nan, dt)
    out = {
        "dead_units": dead,
        "zero_fraction": zero,
        "saturated": saturated,
        "finite": jnp.isfinite(means[0]) & jnp.isfinite(means[1]) & jnp.isfinite(means[2]),
    }
    for i, k in enumerate(("q", "q_phi", "q_act")):
        # a non-finite scale is carried as the scale (inf or NaN)
        out[k + _SCALE] = jnp.where(jnp.isfinite(scales[i]), safe[i], scales[i])
        out[k + _UNIT] = jnp.where(scales[i] > 0, means[i], 0)
        out["finite"] = out["finite"] & jnp.isfinite(scales[i])
    return out


# a statistic computed as (scale, unit): value = scale ** power * unit, on the host in float64
_SCALE, _UNIT = "@scale", "@unit"
_POWER = {"q": 2, "q_phi": 2, "q_act": 2, "grad_param_norm": 1, "grad_preact_norm": 1}


def _norm_parts(arrays):
    """The Euclidean norm of the arrays together as ``(m, sqrt(sum((x / m)^2)))`` with ``m``
    the largest magnitude: scaled before squaring, so a gradient of 1e-25 (whose square
    underflows in float32) or of 1e25 (whose square overflows) keeps its value once the host
    multiplies the two in float64. A non-finite entry gives a non-finite scale; all zeros give
    ``(1, 0)``."""
    arrays = [jnp.ravel(a) for a in arrays]
    m = jnp.max(jnp.stack([jnp.max(jnp.abs(a)) for a in arrays]))
    ok = m > 0
    safe = jnp.where(ok & jnp.isfinite(m), m, 1)
    unit = jnp.sqrt(sum(jnp.sum(jnp.square(a / safe)) for a in arrays))
    return jnp.where(jnp.isfinite(m), safe, m), jnp.where(ok, unit, 0)


def _scaled_norm(arrays):
    """:func:`_norm_parts` multiplied (in the arrays' dtype: for tests and small values)."""
    m, unit = _norm_parts(arrays)
    return m * unit


def _signal_program(static: _Static, params, state, x, targets, loss_leaves):
    """Traceable: the per-layer statistics (stacked over layers)."""
    plan = static.plan
    sites = []
    for layer in plan.layers:
        sites += [layer.preact, layer.phi_in, layer.act]

    def forward(p, deltas):
        perturb = {layer.preact: d for layer, d in zip(plan.layers, deltas)}
        out, found = _layers.run_tapped(
            static.apply_fn, plan, p, state, x, capture=sites, perturb=perturb
        )
        if static.loss.kind == "none":
            value = jnp.zeros((), jnp.result_type(out))
        else:
            value = _output_loss(static.loss, loss_leaves, p, out, x, targets)
        return value, found

    shapes = [layer.shape for layer in plan.layers]
    dtype = _tree.dtype_of(params)
    deltas = [jnp.zeros(s, dtype) for s in shapes]
    if static.loss.kind == "none":
        value, found = forward(params, deltas)
        grads = None
    else:
        (value, found), grads = jax.value_and_grad(forward, argnums=(0, 1), has_aux=True)(
            params, deltas
        )
    stats = [
        _layer_stats(
            layer, found[layer.preact], found[layer.phi_in], found[layer.act], static.saturation
        )
        for layer in plan.layers
    ]
    out = {k: jnp.stack([s[k] for s in stats]) for k in stats[0]}
    out["input_q"] = jnp.mean(jnp.square(x.astype(dtype)))
    if grads is not None:
        gp, gz = grads
        leaves = jax.tree.leaves(gp)
        for k, parts in (
            (
                "grad_param_norm",
                [_norm_parts([leaves[i] for i in ly.params]) for ly in plan.layers],
            ),
            ("grad_preact_norm", [_norm_parts([g]) for g in gz]),
        ):
            out[k + _SCALE] = jnp.stack([m for m, _ in parts])
            out[k + _UNIT] = jnp.stack([u for _, u in parts])
        out["loss"] = value
        out["finite"] = (
            out["finite"]
            & jnp.isfinite(out["grad_preact_norm" + _SCALE])
            & jnp.isfinite(out["grad_preact_norm" + _UNIT])
        )
    return out


@engine.at_analysis_precision
def _signal_eager(static, params, state, x, targets, loss_leaves):
    return _signal_jit(static, params, state, x, targets, loss_leaves)


_signal_jit = jax.jit(_signal_program, static_argnums=(0,))


def _sweep_program(static, params, state, x, targets, loss_leaves):
    return jax.vmap(_signal_program, in_axes=(None, 0, 0, None, None, None))(
        static, params, state, x, targets, loss_leaves
    )


_sweep_jit = jax.jit(_sweep_program, static_argnums=(0,))


def _host(out: dict) -> dict:
    """The program's outputs as NumPy arrays, the scaled statistics combined in float64."""
    host = {k: np.asarray(v) for k, v in out.items() if _SCALE not in k and _UNIT not in k}
    for k, power in _POWER.items():
        if k + _SCALE in out:
            m = np.asarray(out[k + _SCALE], np.float64)
            with np.errstate(invalid="ignore", over="ignore"):
                host[k] = m**power * np.asarray(out[k + _UNIT], np.float64)
    if "finite" in host:  # a product beyond float64's range (a float64 model's 1e160) is not
        for k in ("q", "q_phi", "q_act", "grad_preact_norm"):
            if k in host:
                host["finite"] = host["finite"] & np.isfinite(host[k])
    return host


# --------------------------------------------------------------------------------------------
@_validate.public
def signal_propagation(
    model,
    x,
    *,
    loss_fn=None,
    targets=None,
    bn_mode: str = "auto",
    saturation: float = 0.99,
) -> SignalResult:
    """Per-layer statistics of the forward signal (and, with a loss, of the backward signal) of
    a network on one batch, typically at initialisation.

    Layers are found from the traced program, not from names (see
    :mod:`landscape.diagnostics._layers`): dense layers and convolutions (any Flax model:
    :func:`landscape.make_model`, :func:`landscape.from_nnx`, :func:`landscape.from_linen`),
    weight standardisation, batch and layer norm and residual additions included.

    Args:
      model: a :class:`landscape.Model` (or triple, or NNX module).
      x: a batch of inputs (an array with a leading example axis), finite.
      loss_fn: optional: a :class:`landscape.Loss` (from :func:`landscape.make_loss_fn`: its
        data term on this function's outputs, plus its weight decay), ``"cross_entropy"``,
        ``"mse"``, or a hashable ``fn(outputs, targets) -> scalar``.
      targets: the targets of ``x``'s examples (with ``loss_fn``).
      bn_mode: ``"auto"`` (``"batch"`` for a model with floating state, i.e. batch norm),
        ``"batch"`` (the training-mode program: batch statistics, state update discarded;
        dropout, if any, active) or ``"eval"`` (running statistics: the identity at
        initialisation).
      saturation: threshold of the ``saturated`` fraction (``|tanh| > saturation``,
        ``|2 sigmoid - 1| > saturation``), in ``(0, 1)``.

    Returns:
      :class:`SignalResult` (plot with :func:`landscape.plot.plot_signal`).

    Cost:
      One forward pass (and one backward pass with a loss) of the batch, evaluated equation by
      equation in one compiled program per model, input shape, mode and loss; the program is
      traced twice (the boundary's layer analysis, then the compiled one).

    Raises:
      LayerEnumerationError (a ValueError): no layer found, or layers inside loops, ``cond``,
        ``remat`` or custom-derivative calls (the message names the operation and its line).
      ValueError, TypeError: non-finite or misshapen inputs (a model that cannot run on ``x``),
        missing or misshapen targets, invalid settings.

    Example:
      >>> model = landscape.make_model("mlp", input_shape=(64,), num_outputs=10,
      ...                              hidden=(256,) * 20, activation="tanh")
      >>> res = landscape.diagnostics.signal_propagation(model, x)
      >>> res.q  # pre-activation second moment per layer

    References:
      Poole et al. (2016); Schoenholz et al. (2017); He et al. (2015); Glorot & Bengio (2010).
    """
    model = as_model(model)
    _validate.check_params(model.params)
    mode, train = resolve_bn_mode(bn_mode, model.state)
    x = check_inputs(x, min_examples=2 if train and _has_bn(model.state) else 1)
    saturation = _check_saturation(saturation)
    spec, loss_leaves, t = _resolve_loss(loss_fn, targets, int(x.shape[0]))
    plan = _layers.layer_plan(model, x, train=train)
    static = _Static(model.apply_fn, plan, saturation, spec)
    out = _host(_signal_eager(static, model.params, model.state, x, t, loss_leaves))
    return _make_result(out, plan, mode, saturation, int(x.shape[0]), model, spec)


def _check_saturation(saturation) -> float:
    s = _validate.check_finite_scalar(saturation, name="saturation")
    if not 0 < s < 1:
        raise ValueError(f"{_validate.where()}: saturation must be in (0, 1); got {saturation}.")
    return s


def _make_result(out, plan, mode, saturation, n, model, spec) -> SignalResult:
    layers = plan.layers
    res = SignalResult(
        q=out["q"],
        q_phi=out["q_phi"],
        q_act=out["q_act"],
        dead_units=out["dead_units"],
        zero_fraction=out["zero_fraction"],
        saturated=out["saturated"],
        finite=out["finite"],
        input_q=out["input_q"],
        grad_param_norm=out.get("grad_param_norm"),
        grad_preact_norm=out.get("grad_preact_norm"),
        loss=out.get("loss"),
        layer_names=tuple(layer.name for layer in layers),
        ops=tuple(layer.op for layer in layers),
        activations=tuple(layer.activation for layer in layers),
        is_output=tuple(layer.is_output for layer in layers),
        shapes=tuple(tuple(layer.shape) for layer in layers),
        bn_mode=mode,
        saturation=saturation,
        num_examples=n,
        provenance=_provenance.provenance(
            dtype=_tree.dtype_of(model.params),
            settings={"bn_mode": mode, "saturation": saturation, "loss": spec.kind},
        ),
    )
    bad = [i for i, ok in enumerate(np.asarray(res.finite)) if not ok]
    if bad:
        _validate.warn(
            f"{_validate.where()}: the signal is not finite at layer(s) {bad[:8]} "
            f"({res.layer_names[bad[0]]} first): it overflowed (explosion with depth) or the "
            "model produced NaN; the statistics of those layers are NaN or Inf.",
            RuntimeWarning,
        )
    return res


# --------------------------------------------------------------------------------------------
# Depth sweep
# --------------------------------------------------------------------------------------------
def _make_builder(builder, *, width: int, num_outputs: int, input_shape, options: dict):
    """``build(depth, init, activation, seed) -> Model`` and a name for the record."""
    if callable(builder) and not isinstance(builder, str):
        name = getattr(builder, "__name__", type(builder).__name__)

        def build(depth, init, activation, seed):
            m = builder(depth, init=init, activation=activation, seed=seed, **options)
            return as_model(m)

        return build, name
    if not isinstance(builder, str):
        raise TypeError(
            f"{_validate.where()}: builder must be a make_model name ('mlp', 'cnn', 'resnet') or "
            f"a callable builder(depth, *, init, activation, seed) -> Model; got {type(builder).__name__}."
        )
    from landscape.models import make_model, model_names

    _validate.check_choice(builder, tuple(model_names()), name="builder")
    depth_kw = {
        "mlp": lambda d: {"hidden": (width,) * d},
        "cnn": lambda d: {"channels": (width,) * d},
        "resnet": lambda d: {"blocks": d, "widths": options.get("widths", (width,))},
    }
    if builder not in depth_kw:
        raise ValueError(
            f"{_validate.where()}: depth_sweep knows how to deepen 'mlp', 'cnn' and 'resnet'; for "
            f"{builder!r} pass a callable builder(depth, *, init, activation, seed) -> Model."
        )

    def build(depth, init, activation, seed):
        kw = {k: v for k, v in options.items() if k != "widths"}
        kw.update(depth_kw[builder](depth))
        return make_model(
            builder,
            input_shape=input_shape,
            num_outputs=num_outputs,
            seed=seed,
            init=init,
            activation=activation,
            **kw,
        )

    return build, builder


def _check_names(values, *, name: str) -> tuple:
    if isinstance(values, str) or callable(values):
        values = (values,)
    values = tuple(values)
    if not values:
        raise ValueError(f"{_validate.where()}: {name} must not be empty.")
    return values


@_validate.public
def depth_sweep(
    builder,
    depths: Sequence[int],
    inits: Sequence[str] = DEFAULT_INITS,
    *,
    x,
    activations: Sequence[str] = ("relu",),
    num_seeds: int = 1,
    seed: int = 0,
    width: int = 64,
    num_outputs: int = 10,
    loss_fn=None,
    targets=None,
    bn_mode: str = "auto",
    saturation: float = 0.99,
    **options,
) -> DepthSweepResult:
    """:func:`signal_propagation` over depths x initialisation schemes x activations (x
    seeds): where the signal explodes or vanishes as depth grows.

    Args:
      builder: a :func:`landscape.make_model` name: ``"mlp"`` (``depth`` hidden layers of
        ``width``), ``"cnn"`` (``depth`` convolutions of ``width`` channels) or ``"resnet"``
        (``depth`` basic blocks per stage, stages ``widths=`` or ``(width,)``); or a callable
        ``builder(depth, *, init, activation, seed, **options) -> Model``.
      depths: the depths (positive ints).
      inits: initialisation schemes (names of :data:`landscape.models.INITS`; default
        :data:`DEFAULT_INITS`: zeros, LeCun normal, He normal, Glorot normal and uniform,
        orthogonal).
      x: the input batch (finite, leading example axis).
      activations: activation names (e.g. ``("relu", "tanh", "sigmoid", "gelu")``).
      num_seeds: networks drawn per configuration (seeds ``seed, seed + 1, ...``).
      width, num_outputs: the networks' width and outputs (for a make_model name).
      loss_fn, targets, bn_mode, saturation: as in :func:`signal_propagation`.
      **options: passed to the builder (make_model's ``sigma_w2``, ``sigma_b2``,
        ``weight_standardization``, ``batch_norm``, ``skip``, ``param_dtype``, ...).

    Returns:
      :class:`DepthSweepResult` (plot with :func:`landscape.plot.plot_depth_sweep`).

    Cost:
      Building ``A x I x D x num_seeds`` networks; one compiled program per architecture (per
      activation and depth: the networks of every init and seed share it, their parameters
      stacked and ``vmap``-ped), each one forward (and backward) pass of the batch per network.

    Raises:
      ValueError, TypeError: invalid grid or settings, a builder's error (with the
        configuration), and the errors of :func:`signal_propagation`.
    """
    depths = tuple(
        _validate.check_positive_int(d, name="depths[i]")
        for d in _check_names(depths, name="depths")
    )
    inits = _check_names(inits, name="inits")
    activations = _check_names(activations, name="activations")
    num_seeds = _validate.check_positive_int(num_seeds, name="num_seeds")
    seed = _validate.check_positive_int(seed, name="seed", allow_zero=True)
    width = _validate.check_positive_int(width, name="width")
    num_outputs = _validate.check_positive_int(num_outputs, name="num_outputs")
    saturation = _check_saturation(saturation)
    _validate.check_choice(bn_mode, BN_MODES, name="bn_mode")
    x = check_inputs(x)
    spec, loss_leaves, t = _resolve_loss(loss_fn, targets, int(x.shape[0]))
    build, bname = _make_builder(
        builder,
        width=width,
        num_outputs=num_outputs,
        input_shape=tuple(x.shape[1:]),
        options=options,
    )
    A, I, D, S = len(activations), len(inits), len(depths), num_seeds
    cells: dict = {}
    num_layers = np.zeros((A, I, D), int)
    last_hidden = np.full((A, I, D), -1, int)
    modes = set()
    programs = 0
    for ai, act in enumerate(activations):
        for di, depth in enumerate(depths):
            groups: dict = {}
            for ii, init in enumerate(inits):
                for s in range(S):
                    try:
                        m = build(depth, init, act, seed + s)
                    except (TypeError, ValueError) as e:
                        raise type(e)(
                            f"{_validate.where()}: building depth={depth}, init={init!r}, "
                            f"activation={act!r}, seed={seed + s} failed: {e}"
                        ) from e
                    key = (m.apply_fn, _layers._signature(m.params), _layers._signature(m.state))
                    try:
                        hash(key)
                    except TypeError:
                        key = (id(m.apply_fn),) + key[1:]
                    groups.setdefault(key, []).append((ii, s, m))
            for members in groups.values():
                m0 = members[0][2]
                mode, train = resolve_bn_mode(bn_mode, m0.state)
                if train and _has_bn(m0.state) and x.shape[0] < 2:
                    raise ValueError(
                        f"{_validate.where()}: batch statistics need x with at least 2 examples."
                    )
                modes.add(mode)
                for _, _, m in members:
                    _validate.check_params(m.params)
                plan = _layers.layer_plan(m0, x, train=train)
                static = _Static(m0.apply_fn, plan, saturation, spec)
                P = _tree.stack([m.params for _, _, m in members])
                St = _tree.stack([m.state for _, _, m in members])
                out = _host(_sweep_eager(static, P, St, x, t, loss_leaves))
                programs += 1
                hidden = plan.hidden
                for j, (ii, s, _) in enumerate(members):
                    num_layers[ai, ii, di] = len(plan.layers)
                    last_hidden[ai, ii, di] = hidden[-1] if hidden else -1
                    cells[(ai, ii, di, s)] = {k: v[j] for k, v in out.items()}
    L = int(num_layers.max())
    fields = _FIELDS + (_GRAD_FIELDS if spec.kind != "none" else ())
    arrays = {k: np.full((A, I, D, S, L), np.nan) for k in fields}
    finite = np.zeros((A, I, D, S, L), bool)
    for (ai, ii, di, s), c in cells.items():
        n = len(c["q"])
        for k in fields:
            arrays[k][ai, ii, di, s, :n] = c[k]
        finite[ai, ii, di, s, :n] = c["finite"]
    mode = modes.pop() if len(modes) == 1 else "mixed: " + ", ".join(sorted(modes))
    res = DepthSweepResult(
        **{k: arrays[k] for k in _FIELDS},
        finite=finite,
        num_layers=num_layers,
        last_hidden=last_hidden,
        grad_param_norm=arrays.get("grad_param_norm"),
        grad_preact_norm=arrays.get("grad_preact_norm"),
        depths=depths,
        inits=tuple(map(str, inits)),
        activations=tuple(
            a if isinstance(a, str) else getattr(a, "__name__", "activation") for a in activations
        ),
        num_seeds=S,
        bn_mode=mode,
        builder=bname,
        options={
            k: (v if isinstance(v, (int, float, str, bool, type(None))) else repr(v))
            for k, v in options.items()
        },
        num_programs=programs,
        provenance=_provenance.provenance(
            dtype=_tree.dtype_of(m0.params),
            seeds=list(range(seed, seed + S)),
            settings={"bn_mode": mode, "saturation": saturation, "width": width},
        ),
    )
    return res


@engine.at_analysis_precision
def _sweep_eager(static, P, S, x, t, loss_leaves):
    return _sweep_jit(static, P, S, x, t, loss_leaves)
