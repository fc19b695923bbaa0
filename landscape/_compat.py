"""Compatibility shim: the one module of ``landscape`` that touches JAX internals.

Why it exists: JAX's private modules (``jax._src``) and a few undocumented methods change
between releases without deprecation. Every use of them goes through this module, so a JAX
upgrade breaks at most this file, each use says what it falls back to, and ``grep jax._src``
finds one place. It is private to ``landscape``; other packages (``ntk``) use the public
wrapper :func:`landscape.validate.is_tracer`.

* :func:`source_summary`: the ``file:line (function)`` of a jaxpr equation, for error messages.
  Uses ``jax.extend.source_info_util.summarize``; on a JAX without it,
  ``jax._src.source_info_util.summarize``; if neither works, ``"unknown location"`` (the
  message loses its source line, nothing else changes).
* :func:`is_tracer`: whether a value is a JAX tracer (abstract, inside ``jit``/``grad``/...).
  Uses ``jax.core.Tracer``; if ``jax.core`` stops exporting it, ``jax._src.core.Tracer``.
* :func:`bind_equation`: evaluate one jaxpr equation on concrete or traced values, as
  ``jax.core.eval_jaxpr`` does (``Primitive.get_bind_params`` then ``bind``). Current JAX
  returns the parameters; older releases returned a ``(subfuns, params)`` pair for call-like
  primitives (``custom_jvp_call``): both forms are accepted.
"""

from __future__ import annotations

from typing import Any

import jax

__all__ = ["bind_equation", "is_tracer", "source_summary"]

UNKNOWN_LOCATION = "unknown location"


def _summarize_fn():
    try:
        from jax.extend.source_info_util import summarize
    except ImportError:  # pragma: no cover - older JAX
        try:
            from jax._src.source_info_util import summarize
        except ImportError:
            return None
    return summarize


_SUMMARIZE = _summarize_fn()


def source_summary(source_info: Any) -> str:
    """``"file:line (function)"`` of an equation's ``source_info``, or ``"unknown location"``."""
    if _SUMMARIZE is None:  # pragma: no cover - neither API available
        return UNKNOWN_LOCATION
    try:
        return _SUMMARIZE(source_info)
    except Exception:  # noqa: BLE001 - best effort: only an error message's detail
        return UNKNOWN_LOCATION


def _tracer_type() -> type:
    tracer = getattr(jax.core, "Tracer", None)
    if tracer is None:  # pragma: no cover - a JAX whose jax.core no longer exports it
        from jax._src.core import Tracer as tracer
    return tracer


_TRACER = _tracer_type()


def is_tracer(x: Any) -> bool:
    """Whether ``x`` is a JAX tracer (a value inside a transformation, not a concrete array)."""
    return isinstance(x, _TRACER)


def bind_equation(eqn: Any, values: list) -> list:
    """The outputs (always a list) of jaxpr equation ``eqn`` applied to ``values``."""
    bind_params = eqn.primitive.get_bind_params(eqn.params)
    subfuns, bind_params = bind_params if isinstance(bind_params, tuple) else ((), bind_params)
    outs = eqn.primitive.bind(*subfuns, *values, **bind_params)
    return outs if eqn.primitive.multiple_results else [outs]


def recheck_compilation_cache() -> bool:
    """Make JAX look at its persistent-cache settings again: JAX decides once, at the first
    compilation of the process, whether the cache is used, so a directory set after something
    compiled (``import jax; jnp.ones(3) + 1; import landscape``) would otherwise be ignored.
    Only an undecided or 'unused' state is reset, never a cache in use. Whether it reset."""
    try:
        from jax._src import compilation_cache as cc
    except ImportError:  # pragma: no cover - a JAX without the module: nothing to reset
        return False
    if getattr(cc, "_cache_checked", False) and not getattr(cc, "_cache_used", True):
        cc.reset_cache()
        return True
    return False
