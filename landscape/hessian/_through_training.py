"""Spectra through training: a :func:`landscape.train` callback recording, every ``every`` steps,
the top-k curvature eigenvalues, an SLQ density, the empirical NTK's top eigenvalues on a fixed
probe set and the gradient's overlap with the top-k eigenspace (Ghorbani et al. 2019; Cohen et
al. 2021; Gur-Ari et al. 2018). Resumable through :class:`landscape.Store`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from landscape import _provenance, engine, jacobians
from landscape import store as _store
from landscape import tree as _tree
from landscape import validate as _validate
from landscape._model import Model
from landscape._result import Result, result, static_field
from landscape.hessian import _driver
from landscape.hessian._analysis import gradient_overlap
from landscape.hessian._density import default_sigma, smooth_density, spectral_density
from landscape.hessian._eigen import eigenvalues
from landscape.hessian._operators import METHODS, make_hvp
from landscape.losses import Loss, make_loss_fn
from landscape.train import Callback, TrainInfo

PyTree = Any

__all__ = ["SpectraCallback", "SpectraResult", "spectra_callback"]

BN_MODES = ("auto", "batch", "eval")
"""``bn_mode`` of :func:`spectra_callback`: the vocabulary of ``landscape.diagnostics``."""
SPECTRA_CURVATURES = ("hessian", "ggn")


def _has_floating_state(state) -> bool:
    return any(jnp.issubdtype(jnp.result_type(x), jnp.floating) for x in jax.tree.leaves(state))


def _resolve_bn_mode(bn_mode: str, state) -> tuple[str, bool]:
    """``(recorded mode, training-mode program)``, as ``landscape.diagnostics`` resolves it:
    ``"auto"`` is ``"batch"`` for a model with floating state (batch norm), else ``"none"``."""
    if bn_mode == "auto":
        return ("batch", True) if _has_floating_state(state) else ("none", False)
    return bn_mode, bn_mode == "batch"


@dataclasses.dataclass(frozen=True)
class _TrainModeApply:
    """``apply_fn`` run as the training-mode program (batch statistics), its state update
    discarded: the Hessian of the loss with batch statistics (hashable: no recompilation)."""

    apply_fn: Callable

    def __call__(self, params, state, x, *, train=False):
        out, _ = self.apply_fn(params, state, x, train=True)
        return out, state


@functools.partial(jax.jit, static_argnames=("apply_fn", "trace_outputs"))
def _ntk_gram(apply_fn, params, state, x, trace_outputs):
    """The empirical NTK on ``x`` (evaluation mode): ``(n, n)`` traced over outputs, else
    ``(n O, n O)`` with outputs kept (example-major)."""

    def f(p, xb):
        return apply_fn(p, state, xb, train=False)[0]

    g = jacobians.gram(jacobians.per_example(f, params, x), trace_outputs=trace_outputs)
    if trace_outputs:
        return g
    n, _, o, _ = g.shape
    return g.transpose(0, 2, 1, 3).reshape(n * o, n * o)


@result
class SpectraResult(Result):
    """Spectra recorded through training by :func:`spectra_callback`.

    Attributes:
      steps: ``(R,)`` the steps of the records.
      values: ``(R, k)`` top-k eigenvalues of the curvature (descending, float64);
        ``residuals`` their true residual norms.
      nodes, weights: ``(R, num_probes, num_steps)`` the raw SLQ quadrature of every record.
      grid, density: the fixed grid ``(G,)`` and the smoothed densities ``(R, G)`` (one row per
        record, all with the Gaussian width ``sigma``).
      ntk_values: ``(R, ntk_k)`` top eigenvalues of the empirical NTK on the probe set
        (descending; ``ntk_trace_outputs``: of the ``(n, n)`` output-averaged kernel, else of the
        ``(n O, n O)`` kernel with outputs kept).
      overlap: ``(R,)`` ``||P_k g||^2 / ||g||^2``, the fraction of the squared full-data-set
        gradient norm in the span of the top-k eigenvectors; ``cos2`` ``(R, k)`` per vector.
      grad_norm, loss: ``(R,)`` the gradient norm and loss (in ``bn_mode``).
      num_hvps: ``(R,)`` curvature products per record (eigensolver plus density).
      curvature, bn_mode, ntk_bn_mode, k, ntk_k, every, num_probes, num_steps, sigma,
      ntk_trace_outputs: settings (``bn_mode``: ``"batch"`` batch statistics, ``"eval"``
      population statistics, ``"none"`` no batch norm; the NTK always uses ``ntk_bn_mode``).
    """

    steps: np.ndarray
    values: np.ndarray
    residuals: np.ndarray
    nodes: np.ndarray
    weights: np.ndarray
    grid: np.ndarray
    density: np.ndarray
    ntk_values: np.ndarray
    overlap: np.ndarray
    cos2: np.ndarray
    grad_norm: np.ndarray
    loss: np.ndarray
    num_hvps: np.ndarray
    curvature: str = static_field(default="hessian")
    bn_mode: str = static_field(default="none")
    ntk_bn_mode: str = static_field(default="none")
    k: int = static_field(default=0)
    ntk_k: int = static_field(default=0)
    every: int = static_field(default=1)
    num_probes: int = static_field(default=0)
    num_steps: int = static_field(default=0)
    sigma: float = static_field(default=0.0)
    ntk_trace_outputs: bool = static_field(default=False)
    provenance: dict = static_field(default_factory=dict)

    def density_on(self, grid, sigma: float | None = None) -> np.ndarray:
        """``(R, len(grid))`` densities on another grid (host, no products; default width
        ``self.sigma``)."""
        s = self.sigma if sigma is None else float(sigma)
        return np.stack([smooth_density(n, w, grid, s) for n, w in zip(self.nodes, self.weights)])

    def __repr__(self):
        r = len(self.steps)
        span = f"steps {int(self.steps[0])}..{int(self.steps[-1])}" if r else "no steps"
        return (
            f"SpectraResult({r} records, {span}, curvature={self.curvature}, "
            f"bn_mode={self.bn_mode}, k={self.k}, ntk_k={self.ntk_k}, grid={len(self.grid)})"
        )


@dataclasses.dataclass(frozen=True)
class SpectraCallback(Callback):
    """The :class:`landscape.train.Callback` of :func:`spectra_callback`. ``result()`` gives
    the :class:`SpectraResult` of every record so far (with a store: every record it holds,
    so a run resumed with ``train(initial_state=...)`` and a new callback on the same store
    gets its earlier records too); ``stats`` counts ``computed`` and ``loaded`` records. The
    store's latest record also holds its top-``k`` eigenvectors (``k x P`` numbers; a record
    drops them, rewritten, once a later one is stored), so the first record computed after
    the loaded ones warm-starts Lanczos from the very vectors the uninterrupted run used: a
    resumed run's records equal the uninterrupted run's bit for bit. (A store without them,
    written before they were kept, starts that record cold: its values then agree within
    ``tol``.)"""

    recorder: Any = dataclasses.field(default=None, compare=False, repr=False)

    def result(self) -> SpectraResult:
        return self.recorder.result()

    @property
    def stats(self) -> dict:
        return dict(self.recorder.stats)


def _record_name(step: int) -> str:
    return f"record-{int(step):09d}"


class _Recorder:
    """The callback's state: settings, caches (batched data, batch-mode loss, store) and the
    records by step."""

    def __init__(self, settings: dict, *, key, probe_x, data, grid, store, batch_size):
        self.s = settings
        self.key = key
        self.probe_x = probe_x
        self.data = data
        self.grid = grid
        self.store_arg = store
        self.store = None
        self.batch_size = batch_size
        self.records: dict[int, dict] = {}
        self.stats = {"computed": 0, "loaded": 0}
        self.mode = None
        self.batched = None
        self.batched_src = None
        self.batch_loss = None
        self.prev_vectors = None
        # (name, record without vectors, meta) of the stored record that holds the warm-start
        # vectors: rewritten without them once a later record is stored
        self.warm_entry = None
        self.meta: dict = {}

    # -- setup at the first measurement --------------------------------------------------------
    def _setup(self, info: TrainInfo):
        s = self.s
        mode, train_mode = _resolve_bn_mode(s["bn_mode"], info.state)
        if not _has_floating_state(info.state):  # no batch norm: neither mode applies
            mode = "none"
        self.mode, self.train_mode = mode, train_mode
        # the run this callback measures: a second train call with another model, loss or data
        # would be measured with this one's programs (refused in __call__)
        self._run = (
            engine.split_fn(info.loss_fn)[0],
            info.train_data,
            _provenance.data_hash(info.train_data),
        )
        self.ntk_mode = "eval" if _has_floating_state(info.state) else "none"
        if train_mode and _has_floating_state(info.state) and not isinstance(info.loss_fn, Loss):
            raise TypeError(
                f"{_validate.where()}: bn_mode={s['bn_mode']!r} needs the training-mode loss of a "
                "model: train a landscape.Model (a plain loss_fn has no training-mode program); or "
                "pass bn_mode='eval'."
            )
        d = self.data if self.data is not None else info.train_data
        num_params = _tree.size(info.params)
        if s["k"] > num_params:
            raise ValueError(
                f"{_validate.where()}: k={s['k']} exceeds the number of parameters ({num_params}); "
                f"use k <= {num_params}."
            )
        if s["num_steps"] > num_params:
            raise ValueError(
                f"{_validate.where()}: num_steps={s['num_steps']} exceeds the number of parameters "
                f"({num_params})."
            )
        try:
            out = jax.eval_shape(
                lambda p, st, x: info.model.apply_fn(p, st, x, train=False)[0],
                info.params,
                info.state,
                self.probe_x,
            )
        except (TypeError, ValueError) as e:
            shapes = [np.shape(a) for a in jax.tree.leaves(self.probe_x)]
            raise ValueError(
                f"{_validate.where()}: probe_x (shapes {shapes}) does not fit the model: "
                f"{str(e).splitlines()[0][:200]}; pass inputs shaped like the training data's "
                f"(a leading example axis)."
            ) from None
        n = int(jax.tree.leaves(self.probe_x)[0].shape[0])
        num_out = 1 if out.ndim == 1 else int(np.prod(out.shape[1:]))
        rows = n if s["ntk_trace_outputs"] else n * num_out
        ntk_k = s["ntk_k"] if s["ntk_k"] is not None else min(s["k"], rows)
        if ntk_k > rows:
            raise ValueError(
                f"{_validate.where()}: ntk_k={ntk_k} exceeds the size of the NTK on probe_x "
                f"({rows} = {n} examples{'' if s['ntk_trace_outputs'] else f' x {num_out} outputs'}); "
                f"use ntk_k <= {rows}."
            )
        self.ntk_k = ntk_k
        if self.store_arg is not None:
            loss_static, _ = engine.split_fn(info.loss_fn)
            self.meta = {
                "job": "landscape.hessian.spectra_callback",
                **s,
                "ntk_k": ntk_k,
                "bn_mode": mode,
                "key": _driver.key_desc(self.key),
                "data": _provenance.data_hash(d),
                "probe_x": _provenance.data_hash(self.probe_x),
                "grid": None if self.grid is None else _provenance.data_hash(self.grid),
                "loss": _store.stable_text(loss_static),
                # the optimiser and its rate: another training run is refused here, not at the
                # first record whose parameters differ
                "optimizer": _store.stable_text(info.optimizer),
                "batch_size": self.batch_size,
                "dtype": str(_tree.dtype_of(info.params)),
            }
            self.store = _store.as_store(self.store_arg, self.meta)

    def _loss(self, info: TrainInfo):
        if not (self.train_mode and isinstance(info.loss_fn, Loss)):
            return info.loss_fn
        if self.batch_loss is None:
            lf = info.loss_fn
            model = Model(_TrainModeApply(lf.apply_fn), info.params, info.state)
            self.batch_loss = make_loss_fn(
                model,
                lf.kind,
                weight_decay=lf.weight_decay,
                has_aux=lf.has_aux,
                input_key=lf.input_key,
                target_key=lf.target_key,
                classification=lf.classification,
            )
        return self.batch_loss.with_state(info.state)

    # -- one measurement -------------------------------------------------------------------
    def __call__(self, info: TrainInfo):
        with _validate.boundary("landscape.hessian.spectra_callback"):
            if self.mode is None:
                self._setup(info)
            elif engine.split_fn(info.loss_fn)[0] != self._run[0] or (
                info.train_data is not self._run[1]  # the same object: no hashing per record
                and _provenance.data_hash(info.train_data) != self._run[2]
            ):
                raise ValueError(
                    f"{_validate.where()}: this callback already measured a run of another "
                    "model, loss or data set; use a new spectra_callback(...) for each run (a "
                    "resumed run, train(initial_state=...), may reuse it)."
                )
            step = int(info.step)
            phash = _provenance.data_hash(info.params)
            name = _record_name(step)
            if self.store is not None and self.store.has(name):
                rec, meta = self.store.load_with_meta(name)
                if meta.get("params_hash") != phash:
                    raise ValueError(
                        f"{_validate.where()}: the store {self.store.path} holds a record at step "
                        f"{step} of other parameters (another training run with the same "
                        "settings); use another directory or landscape.Store(path, overwrite=True)."
                    )
                rec = {k: np.asarray(v) for k, v in rec.items() if k != "vectors"}
                self.stats["loaded"] += 1
                self.prev_vectors = None  # the next computed record finds its start in the store
            else:
                if self.prev_vectors is None and self.store is not None:
                    self._restore_warm_start(info, step)
                rec, vectors = self._compute(info, step)
                self.stats["computed"] += 1
                if self.store is not None:
                    meta = {"params_hash": phash}
                    self.store.save(name, {**rec, "vectors": vectors}, meta=meta)
                    if self.warm_entry is not None:  # the previous one keeps its numbers only
                        self.store.save(
                            self.warm_entry[0], self.warm_entry[1], meta=self.warm_entry[2]
                        )
                    self.warm_entry = (name, rec, meta)
            self.records[step] = rec
            nm = self.s["name"]
            return {
                nm: float(rec["values"][0]),
                f"{nm}_overlap": float(rec["overlap"]),
                f"{nm}_ntk": float(rec["ntk_values"][0]),
                f"{nm}_hvps": int(rec["num_hvps"]),
            }

    def _restore_warm_start(self, info: TrainInfo, step: int) -> None:
        """The warm start of the uninterrupted run: the eigenvectors of the store's latest
        record before ``step`` (when it holds them)."""
        before = [
            int(n[7:])
            for n in self.store.entries()
            if n.startswith("record-") and int(n[7:]) < step
        ]
        if not before:
            return
        name = _record_name(max(before))
        rec, meta = self.store.load_with_meta(name)
        if "vectors" not in rec:
            return
        flat = np.asarray(rec.pop("vectors"))
        leaves, treedef = jax.tree.flatten(info.params)
        sizes = np.cumsum([0] + [int(np.size(x)) for x in leaves])
        if flat.shape != (self.s["k"], int(sizes[-1])):
            return
        self.prev_vectors = jax.tree.unflatten(
            treedef,
            [
                _tree.to_device(flat[:, a:b].reshape((self.s["k"],) + np.shape(x)).astype(x.dtype))
                for a, b, x in zip(sizes[:-1], sizes[1:], leaves)
            ],
        )
        self.warm_entry = (name, {k: np.asarray(v) for k, v in rec.items()}, meta)

    def _compute(self, info: TrainInfo, step: int) -> tuple[dict, np.ndarray]:
        """The record at ``step`` and its eigenvectors flattened (``(k, P)``, leaf order)."""
        s = self.s
        d = self.data if self.data is not None else info.train_data
        if self.batched_src is not d:  # a reference, not an id: ids are reused
            self.batched = engine.batch(d, self.batch_size)
            self.batched_src = d
        loss = self._loss(info)
        op = make_hvp(
            loss, info.params, self.batched, curvature=s["curvature"], method=s["method"]
        )
        k_eig, k_den = _tree.split_key(jax.random.fold_in(self.key, step))
        eig = eigenvalues(
            op, k=s["k"], tol=s["tol"], key=k_eig, v0=self.prev_vectors, check_multiplicity=False
        )
        self.prev_vectors = eig.vectors
        ov = gradient_overlap(loss, info.params, self.batched, eigen=eig)
        dens = spectral_density(
            op,
            key=k_den,
            num_probes=s["num_probes"],
            num_steps=s["num_steps"],
            check=False,
            grid=self.grid,
            sigma=s["sigma"],
            num_points=8 if self.grid is None else len(self.grid),
        )
        g = _ntk_gram(
            info.model.apply_fn, info.params, info.state, self.probe_x, s["ntk_trace_outputs"]
        )
        g = np.asarray(g, np.float64)
        ntk = np.linalg.eigvalsh(0.5 * (g + g.T))[::-1][: self.ntk_k].copy()
        rec = {
            "values": np.asarray(eig.values, np.float64),
            "residuals": np.asarray(eig.residuals, np.float64),
            "nodes": np.asarray(dens.nodes, np.float64),
            "weights": np.asarray(dens.weights, np.float64),
            "ntk_values": ntk,
            "overlap": np.float64(ov.fraction),
            "cos2": np.asarray(ov.cos2, np.float64),
            "grad_norm": np.float64(ov.grad_norm),
            "loss": np.float64(ov.loss),
            "num_hvps": np.int64(eig.num_hvps + dens.num_hvps),
        }
        if self.grid is not None:
            rec["density"] = np.asarray(dens.density, np.float64)
        vectors = np.concatenate(
            [np.asarray(x).reshape(len(eig.values), -1) for x in jax.tree.leaves(eig.vectors)],
            axis=1,
        )
        return rec, vectors

    # -- the result --------------------------------------------------------------------------
    def result(self) -> SpectraResult:
        if not self.records:
            raise ValueError(
                "landscape.hessian.spectra_callback: no records yet; pass the callback to "
                "landscape.train(..., callbacks=[cb]) first."
            )
        s = self.s
        records = dict(self.records)
        if self.store is not None:  # a resumed run: the records its earlier part stored too
            for name in self.store.entries():
                if name.startswith("record-") and int(name[7:]) not in records:
                    rec = self.store.load(name)
                    records[int(name[7:])] = {
                        k: np.asarray(v) for k, v in rec.items() if k != "vectors"
                    }
        steps = sorted(records)
        recs = [records[t] for t in steps]

        def stack(key):
            return np.stack([np.asarray(r[key]) for r in recs])

        nodes, weights = stack("nodes"), stack("weights")
        live = weights > 0
        th = nodes[live] if live.any() else nodes.ravel()
        lo, hi = float(th.min()), float(th.max())
        if self.grid is not None:
            grid = np.asarray(self.grid, np.float64)
            sigma = s["sigma"]
            density = stack("density")
        else:
            sigma = s["sigma"] if s["sigma"] is not None else default_sigma(lo, hi, s["num_steps"])
            grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, s["num_points"])
            density = np.stack([smooth_density(n, w, grid, sigma) for n, w in zip(nodes, weights)])
        settings = {**s, "ntk_k": self.ntk_k, "bn_mode": self.mode}
        return SpectraResult(
            steps=np.asarray(steps, np.int64),
            values=stack("values"),
            residuals=stack("residuals"),
            nodes=nodes,
            weights=weights,
            grid=grid,
            density=density,
            ntk_values=stack("ntk_values"),
            overlap=stack("overlap"),
            cos2=stack("cos2"),
            grad_norm=stack("grad_norm"),
            loss=stack("loss"),
            num_hvps=stack("num_hvps"),
            curvature=s["curvature"],
            bn_mode=self.mode,
            ntk_bn_mode=self.ntk_mode,
            k=s["k"],
            ntk_k=self.ntk_k,
            every=s["every"],
            num_probes=s["num_probes"],
            num_steps=s["num_steps"],
            sigma=float(sigma),
            ntk_trace_outputs=s["ntk_trace_outputs"],
            provenance=_provenance.provenance(
                dtype=str(nodes.dtype),
                seeds=_driver.key_desc(self.key),
                data=self.meta.get("data"),
                settings=settings,
            ),
        )


@_validate.public("landscape.hessian.spectra_callback")
def spectra_callback(
    *,
    every: int,
    key,
    probe_x,
    k: int = 5,
    curvature: str = "hessian",
    bn_mode: str = "auto",
    data: PyTree = None,
    num_probes: int = 2,
    num_steps: int = 20,
    grid=None,
    sigma: float | None = None,
    num_points: int = 200,
    ntk_k: int | None = None,
    ntk_trace_outputs: bool = False,
    tol: float = 1e-4,
    batch_size: int | None = None,
    method: str = "auto",
    store=None,
    name: str = "spectra",
    at_start: bool = True,
) -> SpectraCallback:
    """A :func:`landscape.train` callback recording curvature and NTK spectra every ``every``
    steps (Ghorbani, Krishnan, Xiao 2019; Cohen et al. 2021).

    At each record, on the full data set (exact products through :func:`make_hvp`):

    * the top-``k`` eigenpairs of the Hessian or GGN (:func:`eigenvalues`, warm-started from the
      previous record's vectors, relative tolerance ``tol``);
    * an SLQ density (:func:`spectral_density`, ``num_probes`` probes of ``num_steps`` Lanczos
      steps, probes seeded by ``fold_in(key, step)``) whose raw quadrature is kept, so the
      densities of all records stack on one fixed grid into ``(records, grid)``;
    * the empirical NTK's top ``ntk_k`` eigenvalues on ``probe_x`` (per-example Jacobians and
      their Gram through :mod:`landscape.jacobians`; evaluation mode, examples independent);
    * the gradient's overlap with the top-``k`` eigenspace (:func:`gradient_overlap`: the
      fraction of ``||g||^2`` in the span of the eigenvectors; Gur-Ari et al. 2018).

    The top eigenvalue, overlap, top NTK eigenvalue and product count go to the training
    history (``name``, ``name_overlap``, ``name_ntk``, ``name_hvps``); ``cb.result()`` gives the
    :class:`SpectraResult`.

    Args:
      every: steps between records (>= 1).
      key: PRNG key (required): the eigensolver's start and the density probes of the record at
        step ``t`` use ``fold_in(key, t)``, so a resumed run draws the same probes.
      probe_x: the NTK's fixed probe inputs ``(n, ...)`` (finite).
      k: top eigenpairs per record (at most the number of parameters).
      curvature: ``"hessian"`` or ``"ggn"``.
      bn_mode: ``"auto"`` (``"batch"`` for a model with batch norm, else ``"none"``),
        ``"batch"`` (the training-mode program: batch statistics of each of the engine's
        batches of ``batch_size`` examples, state update discarded) or ``"eval"`` (population
        statistics: the toolkit's evaluation mode). Recorded in the result. Ghorbani et al.
        found the outliers largely absent with batch statistics and back with population
        statistics.
      data: the curvature's data (default: the training data).
      num_probes, num_steps: SLQ probes and Lanczos steps per record (a few probes suffice for
        the bulk shape; the density's probe noise falls as ``1/sqrt(num_probes)``).
      grid, sigma, num_points: the density's fixed grid and Gaussian width. Default: after
        training, ``num_points`` points covering every record's nodes with a 5-sigma margin,
        ``sigma`` the node range over ``num_steps``.
      ntk_k: NTK eigenvalues per record (default ``min(k, kernel size)``).
      ntk_trace_outputs: ``False``: the ``(n O, n O)`` kernel with outputs kept; ``True``: the
        ``(n, n)`` output-averaged kernel (neural-tangents' default).
      tol: relative residual tolerance of the eigensolver.
      batch_size, method: of the curvature operator (:func:`make_hvp`).
      store: a directory or :class:`landscape.Store`: each record is saved atomically as it is
        made, bound to the settings, key, data and probe set; a rerun of the same training
        loads every stored record and computes only the missing ones (a record of other
        parameters at the same step is refused), the first of them warm-started from the
        eigenvectors the latest stored record keeps: bit for bit the uninterrupted run's.
      name: history prefix.
      at_start: record at step 0 too.

    Returns:
      A :class:`SpectraCallback` (``result()``, ``stats``).

    Cost:
      Per record: the eigensolver's products (a few dozen cold, fewer warm), ``num_probes x
      num_steps`` density products, one gradient, and the NTK: ``n O`` reverse passes and a
      ``(n O)^2 P`` Gram.

    Raises:
      ValueError, TypeError: bad settings here (``every < 1``, unknown ``curvature`` or
        ``bn_mode``, non-finite ``probe_x``, ...); at the first record, ``k``, ``num_steps`` or
        ``ntk_k`` too large for the model.

    Example:
      >>> cb = landscape.hessian.spectra_callback(every=50, key=key, probe_x=data["x"][:32])
      >>> run = landscape.train(model, data, ..., callbacks=[cb])
      >>> res = cb.result()
      >>> landscape.plot.plot_spectra_heatmap(res)

    References:
      Ghorbani, Krishnan, Xiao 2019 ("An investigation into neural net optimization via Hessian
      eigenvalue density"); Cohen, Kaur, Li, Kolter, Talwalkar 2021; Gur-Ari, Roberts, Dyer
      2018; Jacot, Gabriel, Hongler 2018.
    """
    every = _validate.check_positive_int(every, name="every")
    key = _validate.check_key(key)
    k = _validate.check_positive_int(k, name="k")
    _validate.check_choice(curvature, SPECTRA_CURVATURES, name="curvature")
    _validate.check_choice(bn_mode, BN_MODES, name="bn_mode")
    _validate.check_choice(method, METHODS, name="method")
    num_probes = _validate.check_positive_int(num_probes, name="num_probes")
    num_steps = _validate.check_positive_int(num_steps, name="num_steps")
    num_points = _validate.check_positive_int(num_points, name="num_points")
    if ntk_k is not None:
        ntk_k = _validate.check_positive_int(ntk_k, name="ntk_k")
    if batch_size is not None:
        batch_size = _validate.check_positive_int(batch_size, name="batch_size")
    _validate.check_choice(ntk_trace_outputs, (True, False), name="ntk_trace_outputs")
    _validate.check_choice(at_start, (True, False), name="at_start")
    tol = _validate.check_finite_scalar(tol, name="tol")
    if not tol > 0:
        raise ValueError(f"{_validate.where()}: tol must be > 0; got {tol}.")
    if sigma is not None:
        sigma = _validate.check_finite_scalar(sigma, name="sigma")
        if sigma <= 0:
            raise ValueError(f"{_validate.where()}: sigma must be > 0; got {sigma}.")
    leaves = jax.tree.leaves(probe_x)
    if not leaves or any(np.ndim(x) < 1 for x in leaves) or int(np.shape(leaves[0])[0]) < 1:
        raise ValueError(
            f"{_validate.where()}: probe_x must be inputs with a leading example axis of at least "
            f"one example; got {jax.tree.map(np.shape, probe_x)}."
        )
    _validate.check_finite(probe_x, name="probe_x")
    if grid is not None:
        grid = np.asarray(grid, np.float64)
        if (
            grid.ndim != 1
            or grid.size < 2
            or not np.all(np.isfinite(grid))
            or np.any(np.diff(grid) <= 0)
        ):
            raise ValueError(
                f"{_validate.where()}: grid must be a finite increasing 1-D array of at least 2 "
                f"points; got shape {grid.shape}."
            )
        if sigma is None:
            sigma = float(grid[-1] - grid[0]) / num_steps
    if not isinstance(name, str) or not name:
        raise TypeError(f"{_validate.where()}: name must be a non-empty str; got {name!r}.")
    if (
        store is not None
        and not isinstance(store, (str, _store.Store))
        and not hasattr(store, "__fspath__")
    ):
        raise TypeError(
            f"{_validate.where()}: store must be a path or a landscape.Store; got {type(store).__name__}."
        )
    settings = {
        "every": every,
        "k": k,
        "curvature": curvature,
        "bn_mode": bn_mode,
        "num_probes": num_probes,
        "num_steps": num_steps,
        "sigma": sigma,
        "num_points": num_points,
        "ntk_k": ntk_k,
        "ntk_trace_outputs": bool(ntk_trace_outputs),
        "tol": tol,
        "method": method,
        "name": name,
    }
    probe_x = jax.tree.map(np.asarray, probe_x)  # placed at each use, in the params' dtype setting
    rec = _Recorder(
        settings,
        key=key,
        probe_x=probe_x,
        data=data,
        grid=grid,
        store=store,
        batch_size=batch_size,
    )
    return SpectraCallback(every, rec, bool(at_start), name, rec)
