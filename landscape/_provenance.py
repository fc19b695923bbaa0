"""Provenance: what produced a result (versions, devices, dtype, seeds, data, settings)."""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import importlib.metadata as _md
import platform
import subprocess
from pathlib import Path
from typing import Any

import jax
import numpy as np

from landscape import _serialize

_PACKAGES = ("landscape-ntk", "jax", "jaxlib", "flax", "optax", "numpy", "scipy")


@functools.cache
def _package_versions() -> tuple[tuple[str, str], ...]:
    out = []
    for name in _PACKAGES:
        try:
            out.append((name, _md.version(name)))
        except _md.PackageNotFoundError:
            out.append((name, "not installed"))
    return tuple(out)


def package_versions() -> dict[str, str]:
    """Versions of the packages a result depends on (read once per process)."""
    return dict(_package_versions())


def _read_head(git: Path) -> str | None:
    """The commit of HEAD read from the files of a plain ``.git`` directory (no subprocess)."""
    head = (git / "HEAD").read_text().strip()
    if not head.startswith("ref:"):
        return head or None
    ref = head[4:].strip()
    loose = git / ref
    if loose.is_file():
        return loose.read_text().strip() or None
    packed = git / "packed-refs"
    if packed.is_file():
        for line in packed.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == ref:
                return parts[0]
    return None


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent.parent
    git = here / ".git"
    if not git.exists():
        return None
    if git.is_dir():
        try:
            commit = _read_head(git)
        except (OSError, ValueError):  # unreadable, or not text
            commit = None
        if commit and len(commit) in (40, 64) and all(c in "0123456789abcdef" for c in commit):
            return commit  # a SHA-1 or SHA-256 object name; anything else asks git itself
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def data_hash(data: Any) -> str:
    """SHA-256 (first 16 hex digits) of a data pytree's leaves: shapes, dtypes and bytes."""
    h = hashlib.sha256()
    leaves_with_path = jax.tree_util.tree_flatten_with_path(data)[0]
    for path, leaf in leaves_with_path:
        if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)  # a typed PRNG key (NNX's Rngs, Dropout): its bits
        arr = np.ascontiguousarray(np.asarray(leaf))
        h.update(jax.tree_util.keystr(path).encode())
        h.update(str(arr.dtype).encode())
        h.update(str(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()[:16]


def provenance(
    *, dtype: Any = None, seeds: Any = None, data: Any = None, settings: dict | None = None
) -> dict:
    """Provenance record attached to every saved result.

    Args:
      dtype: the dtype the computation ran in (of the parameters).
      seeds: integer seeds or a description of the keys used.
      data: the data pytree (hashed, never stored) or a precomputed hash string.
      settings: the settings that produced the result (JSON-able).

    Returns:
      A JSON-able dict with package versions, Python, platform, JAX backend and devices,
      x64 flag, git commit (when run from a checkout), time, dtype, seeds, data hash and
      settings.
    """
    dhash = data if data is None or isinstance(data, str) else data_hash(data)
    devices = jax.devices()
    return _serialize.to_jsonable(
        {
            "packages": package_versions(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "backend": jax.default_backend(),
            "devices": [str(d) for d in devices[:8]] + (["..."] if len(devices) > 8 else []),
            "device_count": len(devices),
            "process_count": jax.process_count(),
            "x64_enabled": bool(jax.config.jax_enable_x64),
            "git_commit": _git_commit(),
            "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "dtype": None if dtype is None else str(np.dtype(dtype)),
            "seeds": seeds,
            "data_hash": dhash,
            "settings": settings or {},
        }
    )
