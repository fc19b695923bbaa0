"""landscape-ntk: loss-landscape geometry for JAX/Flax models.

Analyses: :mod:`landscape.hessian` (curvature spectra), :mod:`landscape.surface` (loss-surface
slices), :mod:`landscape.connect` (mode connectivity); plots in :mod:`landscape.plot` (imported
explicitly: it needs matplotlib). Kernels: the sibling package :mod:`ntk`.

The foundation: the model triple (:class:`Model`, :func:`from_nnx`, :func:`from_linen`), losses
(:func:`make_loss_fn`), embedded data (:func:`load_data`), models (:func:`make_model`), training
(:func:`train`), runs on disk (:func:`save_run`, :func:`load_run`), the exact batched engine
(:func:`evaluate`, :func:`value_and_grad`, :mod:`landscape.engine`), the grid evaluator
(:mod:`landscape.grid`, :class:`GridSettings`), paths (:mod:`landscape.paths`), the store of
resumable jobs (:class:`Store`), pytree algebra (:mod:`landscape.tree`), boundary checks
(:mod:`landscape.validate`), and the primitives several analyses share: Gaussian expectations
of elementwise functions (:mod:`landscape.expectations`) and per-example Jacobians with their
Gram matrices (:mod:`landscape.jacobians`).

Importing ``landscape`` (or any foundation module, e.g. ``from landscape import engine``) loads
only the foundation; the analyses load on first use (``landscape.hessian``, or ``from landscape
import hessian``), so :mod:`ntk`, which builds on the foundation alone, never pulls them in.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from landscape import (
    _cache,
    _startup,  # noqa: F401 - first: Ctrl-C while the command starts up
)
from landscape import batchnorm as batchnorm
from landscape import engine as engine
from landscape import expectations as expectations
from landscape import grid as grid
from landscape import jacobians as jacobians
from landscape import paths as paths
from landscape import store as store
from landscape import tree as tree
from landscape import validate as validate
from landscape._cache import status as compilation_cache_status
from landscape._model import Model as Model
from landscape._model import NNXApply as NNXApply
from landscape._model import as_model as as_model
from landscape._model import from_linen as from_linen
from landscape._model import from_nnx as from_nnx
from landscape._provenance import data_hash as data_hash
from landscape._provenance import provenance as provenance
from landscape._result import Result as Result
from landscape._result import result as result
from landscape._result import static_field as static_field
from landscape.batchnorm import reestimate_bn as reestimate_bn
from landscape.data import Dataset as Dataset
from landscape.data import load_data as load_data
from landscape.engine import evaluate as evaluate
from landscape.engine import value_and_grad as value_and_grad
from landscape.grid import GridSettings as GridSettings
from landscape.losses import Loss as Loss
from landscape.losses import make_loss_fn as make_loss_fn
from landscape.models import make_model as make_model
from landscape.runs import load_run as load_run
from landscape.runs import save_run as save_run
from landscape.store import Store as Store
from landscape.train import TrainingDivergedError as TrainingDivergedError
from landscape.train import callback as callback
from landscape.train import train as train

_cache.enable()  # JAX's persistent compilation cache, unless configured already (landscape._cache)

if TYPE_CHECKING:  # the analyses, loaded lazily (PEP 562)
    from landscape import connect as connect
    from landscape import hessian as hessian
    from landscape import surface as surface

__version__ = "0.1.0"

_LAZY_MODULES = {"connect", "hessian", "surface", "plot", "report", "cli"}


def __getattr__(name: str):
    if name in _LAZY_MODULES:
        return importlib.import_module(f"landscape.{name}")
    raise AttributeError(f"module 'landscape' has no attribute {name!r}")


def __dir__():
    # the analyses are listed; plot, report and cli (matplotlib, the command line) are not, so
    # introspection (dir, autodoc, getmembers) never imports matplotlib
    return sorted(set(globals()) | {"connect", "hessian", "surface"})


__all__ = [
    "Dataset",
    "GridSettings",
    "Loss",
    "Model",
    "NNXApply",
    "Result",
    "Store",
    "TrainingDivergedError",
    "as_model",
    "batchnorm",
    "callback",
    "compilation_cache_status",
    "connect",
    "data_hash",
    "engine",
    "expectations",
    "evaluate",
    "from_linen",
    "from_nnx",
    "grid",
    "jacobians",
    "hessian",
    "load_data",
    "load_run",
    "make_loss_fn",
    "make_model",
    "paths",
    "provenance",
    "reestimate_bn",
    "result",
    "save_run",
    "static_field",
    "store",
    "surface",
    "train",
    "tree",
    "validate",
    "value_and_grad",
]
