"""JAX's persistent compilation cache, on by default in a per-user cache directory.

A notebook or script pays XLA's compilation for every model, shape and setting it analyses;
with the cache, a second process (the next run of the script, a restarted kernel) loads the
compiled programs from disk instead. Importing :mod:`landscape` turns it on, but only where
nothing is configured already:

* ``JAX_COMPILATION_CACHE_DIR`` in the environment, or ``jax.config.jax_compilation_cache_dir``
  set before the import, wins: then none of JAX's cache settings is touched;
* otherwise the cache goes to ``jax/`` in the toolkit's per-user cache
  (:func:`landscape.data.cache_dir`: ``$LANDSCAPE_CACHE_DIR``, or the platform's location,
  ``~/.cache/landscape-ntk`` on Linux), never the working directory; every program is cached
  (:data:`MIN_COMPILE_SECS`, unless ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` says
  otherwise). The directory is not
  size-limited (JAX's limit needs the ``filelock`` package, and its LRU bookkeeping warned on
  every write into a directory written without it): entries are small (about 13 kB each, 520 kB
  for the top-5 workload); delete the directory to clear it;
* ``LANDSCAPE_COMPILATION_CACHE=0`` (or ``off``/``false``/``no``) turns the default off;
  ``LANDSCAPE_COMPILATION_CACHE=/some/dir`` chooses the directory.

The cache saves XLA's backend compilation, not tracing and lowering (Python work, repeated in
every process). :func:`status` says what is in use.
"""

from __future__ import annotations

import os
from pathlib import Path

SWITCH = "LANDSCAPE_COMPILATION_CACHE"

MIN_COMPILE_SECS = 0.0
"""Programs that compile faster than this are not written to the cache: 0, every program.

JAX's default (1 s) skips almost every program of ours: in the test suite 3,500 programs
compile and 33 of them take more than 1 s (18% of the compile seconds). Measured on the
benchmark's top-5 workload (a whole script in a second process, 2026-12-04, load 3-4 from other
work, two alternated runs each): the first ``eigenvalues`` call took 3.0-4.0 s with a 0.1 s
threshold (11 entries), 1.8-2.0 s with 0.01 s (29 entries) and 1.4-1.5 s with 0 (39 entries,
520 kB), against 7-9 s without a cache. Reading an entry back (about 4 ms) costs less than
compiling even the smallest program (5-30 ms), so every program is worth caching."""

_OFF = {"0", "off", "false", "no"}
_STATE: dict = {"dir": None, "source": "not configured"}


def default_dir() -> Path:
    """Where compiled programs go by default: ``jax/`` in the toolkit's per-user cache
    (:func:`landscape.data.cache_dir`, which also holds the embedded data sets)."""
    from landscape.data import cache_dir  # here, not at the top: this module loads before JAX

    return cache_dir() / "jax"


def enable() -> str | None:
    """Turn the cache on as described in the module docstring (idempotent); the directory in
    use, or ``None`` when it is off."""
    import jax

    switch = os.environ.get(SWITCH, "").strip()
    user_dir = os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir
    if user_dir:
        _STATE.update(dir=str(user_dir), source="set by the user (JAX's settings left as they are)")
        return str(user_dir)
    if switch.lower() in _OFF:
        _STATE.update(dir=None, source=f"off ({SWITCH}={switch})")
        return None
    try:
        path = Path(switch).expanduser() if switch else default_dir()
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(13, "not writable")
    except (OSError, RuntimeError, KeyError) as e:
        # no home, a read-only or foreign directory: run without the cache rather than fail
        # the import or warn at every compilation
        why = getattr(e, "strerror", None) or str(e)
        _STATE.update(dir=None, source=f"off (cannot use the cache directory: {why})")
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECS)
    from landscape import _compat

    _compat.recheck_compilation_cache()  # in case something compiled before this import
    _STATE.update(dir=str(path), source=f"landscape default ({SWITCH}={switch})" if switch
                  else "landscape default")
    return str(path)


def status() -> dict:
    """Where compiled programs are cached: ``{"dir": path or None, "source": ..., ...}``."""
    import jax

    return {
        **_STATE,
        "min_compile_time_secs": float(jax.config.jax_persistent_cache_min_compile_time_secs),
    }
