"""Plots (matplotlib only). Functions take result objects and an optional ``ax``, return the
axes, and never call ``plt.show()``. Importing :mod:`landscape` does not import this module."""

from landscape.plot._connect import *  # noqa: F403
from landscape.plot._hessian import *  # noqa: F403
from landscape.plot._surface import *  # noqa: F403
