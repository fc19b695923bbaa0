"""Trainability diagnostics: why a network trains or fails to train.

At initialisation: mean-field theory of fully connected networks (:func:`mean_field`,
:func:`phase_diagram`), per-layer signal propagation through a real network
(:func:`signal_propagation`, :func:`depth_sweep`) and the singular values of its
hidden-to-hidden Jacobian (:func:`jacobian_spectrum`). Before and during training: the data
audit (:func:`audit_data`), the training monitor (a :func:`landscape.train` callback) and the
learning-rate range with the stability limit of the initial curvature
(:func:`learning_rate_range`).

Everything builds on the foundation (:mod:`landscape.expectations` for the Gaussian integrals,
:mod:`landscape.engine` for exact full-data evaluation) and on :mod:`landscape.hessian` for
curvature and Lanczos: there is no second Lanczos and no second grid driver here.

References: Glorot & Bengio (2010); He et al. (2015); Saxe et al. (2014); Poole et al. (2016);
Schoenholz et al. (2017); Pennington et al. (2017, 2018); Xiao et al. (2018); Smith (2017);
Lewkowycz et al. (2020); Cohen et al. (2021).
"""

# Each part is imported from its own module below (one block per module).

# the data audit and the learning-rate range (before and during training)
from landscape.diagnostics._audit import AuditResult as AuditResult
from landscape.diagnostics._audit import audit_data as audit_data

# the hidden-to-hidden Jacobian's spectrum and the layers found from the program (at
# initialisation; signal propagation and the depth sweep at the end)
from landscape.diagnostics._jacobian import JacobianSpectrumResult as JacobianSpectrumResult
from landscape.diagnostics._jacobian import jacobian_spectrum as jacobian_spectrum
from landscape.diagnostics._layers import LayerEnumerationError as LayerEnumerationError

# (the learning-rate range, with the data audit above)
from landscape.diagnostics._lr import LearningRateRangeResult as LearningRateRangeResult
from landscape.diagnostics._lr import learning_rate_range as learning_rate_range
from landscape.diagnostics._lr import stability_limit as stability_limit

# mean-field theory of fully connected networks (at initialisation)
from landscape.diagnostics._meanfield import MeanFieldResult as MeanFieldResult
from landscape.diagnostics._meanfield import PhaseDiagramResult as PhaseDiagramResult
from landscape.diagnostics._meanfield import mean_field as mean_field
from landscape.diagnostics._meanfield import phase_diagram as phase_diagram

# the training monitor (during training: gradient health, the first non-finite step)
from landscape.diagnostics._monitor import DivergenceReport as DivergenceReport
from landscape.diagnostics._monitor import MonitorResult as MonitorResult
from landscape.diagnostics._monitor import TrainingMonitor as TrainingMonitor
from landscape.diagnostics._monitor import diagnose_step as diagnose_step
from landscape.diagnostics._monitor import training_monitor as training_monitor

# signal propagation through a real network and its depth sweep (at initialisation)
from landscape.diagnostics._signal import DEFAULT_INITS as DEFAULT_INITS
from landscape.diagnostics._signal import DepthSweepResult as DepthSweepResult
from landscape.diagnostics._signal import SignalResult as SignalResult
from landscape.diagnostics._signal import depth_sweep as depth_sweep
from landscape.diagnostics._signal import signal_propagation as signal_propagation

__all__ = [
    "DEFAULT_INITS",
    "AuditResult",
    "DepthSweepResult",
    "DivergenceReport",
    "JacobianSpectrumResult",
    "LayerEnumerationError",
    "LearningRateRangeResult",
    "MeanFieldResult",
    "MonitorResult",
    "PhaseDiagramResult",
    "SignalResult",
    "TrainingMonitor",
    "audit_data",
    "depth_sweep",
    "diagnose_step",
    "jacobian_spectrum",
    "learning_rate_range",
    "mean_field",
    "phase_diagram",
    "signal_propagation",
    "stability_limit",
    "training_monitor",
]
