"""landscape-ntk: loss-landscape geometry for JAX/Flax models.

Analyses: :mod:`landscape.hessian` (curvature spectra), :mod:`landscape.surface` (loss-surface
slices), :mod:`landscape.connect` (mode connectivity); plots in :mod:`landscape.plot` (imported
explicitly: it needs matplotlib). Kernels: the sibling package :mod:`ntk`.

The foundation: the model triple (:class:`Model`, :func:`from_nnx`, :func:`from_linen`), losses
(:func:`make_loss_fn`), embedded data (:func:`load_data`), models (:func:`make_model`), training
(:func:`train`), runs on disk (:func:`save_run`, :func:`load_run`) and the exact batched engine
(:func:`evaluate`, :func:`value_and_grad`, :mod:`landscape.engine`).
"""

from landscape import batchnorm as batchnorm
from landscape import connect as connect
from landscape import engine as engine
from landscape import hessian as hessian
from landscape import surface as surface
from landscape._model import Model as Model
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
from landscape.losses import Loss as Loss
from landscape.losses import make_loss_fn as make_loss_fn
from landscape.models import make_model as make_model
from landscape.runs import load_run as load_run
from landscape.runs import save_run as save_run
from landscape.train import TrainingDivergedError as TrainingDivergedError
from landscape.train import callback as callback
from landscape.train import train as train

__version__ = "0.1.0"

__all__ = [
    "Dataset",
    "Loss",
    "Model",
    "Result",
    "batchnorm",
    "connect",
    "data_hash",
    "engine",
    "evaluate",
    "from_linen",
    "from_nnx",
    "hessian",
    "TrainingDivergedError",
    "callback",
    "load_data",
    "load_run",
    "make_loss_fn",
    "make_model",
    "provenance",
    "reestimate_bn",
    "result",
    "save_run",
    "static_field",
    "surface",
    "train",
    "value_and_grad",
]
