"""Batch-norm policies along paths, on the foundation's :mod:`landscape.batchnorm`.

A point on a path between two batch-norm networks has no running statistics of its own.
Garipov et al. 2018 (``utils.update_bn``) re-estimate them at every evaluated ``t``; without it
the curve does not even reproduce its endpoints (dnn-mode-connectivity#8). The policies:

* ``"reestimate"``: statistics recomputed at the point from training batches
  (:func:`landscape.batchnorm.reestimated_state`, the same routine slices use);
* ``"interpolate"``: ``(1 - t) s_a + t s_b`` from the endpoints' statistics;
* ``"fixed"``: the loss's own state everywhere (e.g. endpoint A's statistics);
* ``"none"``: the model has no floating state;
* ``"auto"``: ``"reestimate"`` for batch-norm models, else ``"none"``.
"""

from __future__ import annotations

from landscape.batchnorm import reestimate_bn

BN_POLICIES = ("auto", "reestimate", "interpolate", "fixed", "none")

__all__ = ["BN_POLICIES", "reestimate_bn"]
