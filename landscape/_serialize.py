"""Saving pytrees and metadata without pickle.

Pytrees of arrays (nested dicts with ``str``/``int`` keys, lists, tuples, ``None``, arrays,
scalars and typed PRNG keys) are written as one ``.npz`` file: the leaves under their slash
paths plus a JSON description of the structure, so they load back with the exact structure,
key types, dtypes and values. Every write is atomic (write to a temporary file in the same
directory, then ``os.replace``), so an interrupted job never leaves a half-written file.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any

_SPEC_KEY = "__treespec__"


def _encode(tree: PyTree, prefix: str, arrays: dict[str, np.ndarray]):
    if tree is None:
        return {"t": "none"}
    if isinstance(tree, dict):
        items = []
        for k in tree:
            if isinstance(k, bool) or not isinstance(k, (str, int)):
                raise TypeError(f"cannot save dict key {k!r} of type {type(k).__name__}")
            kt = "int" if isinstance(k, int) else "str"
            items.append([str(k), kt, _encode(tree[k], f"{prefix}/{k}", arrays)])
        return {"t": "dict", "items": items}
    if isinstance(tree, (list, tuple)) and not hasattr(tree, "_fields"):
        return {
            "t": "list" if isinstance(tree, list) else "tuple",
            "items": [_encode(x, f"{prefix}/{i}", arrays) for i, x in enumerate(tree)],
        }
    if isinstance(tree, (bool, int, float, str)) and not isinstance(tree, np.generic):
        return {"t": "py", "v": tree}
    # arrays and numpy scalars
    name = prefix.lstrip("/") or "_root"
    if name in arrays:  # e.g. {"a/b": x, "a": {"b": y}} or {0: x, "0": y}: one file name
        raise ValueError(
            f"cannot save two leaves under one name {name!r}: dict keys must not contain '/' or "
            "repeat as int and str"
        )
    if hasattr(tree, "dtype") and jnp.issubdtype(tree.dtype, jax.dtypes.prng_key):
        impl = str(jax.random.key_impl(tree))
        arrays[name] = np.asarray(jax.random.key_data(tree))
        return {"t": "key", "k": name, "impl": impl}
    arr = np.asarray(tree)
    if arr.dtype == object:
        raise TypeError(f"cannot save leaf '{name}' of type {type(tree).__name__}")
    arrays[name] = arr
    return {"t": "array", "k": name}


def _decode(spec, arrays):
    t = spec["t"]
    if t == "none":
        return None
    if t == "dict":
        return {
            (int(k) if kt == "int" else k): _decode(sub, arrays) for k, kt, sub in spec["items"]
        }
    if t in ("list", "tuple"):
        items = [_decode(s, arrays) for s in spec["items"]]
        return items if t == "list" else tuple(items)
    if t == "py":
        return spec["v"]
    if t == "key":
        return jax.random.wrap_key_data(jnp.asarray(arrays[spec["k"]]), impl=spec["impl"])
    return arrays[spec["k"]]


def to_host(tree: PyTree) -> PyTree:
    """Device arrays to NumPy, leaf by leaf; typed PRNG keys are kept as they are."""

    def f(x):
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            return x
        return np.asarray(x)

    return jax.tree.map(f, tree)


def tree_to_arrays(tree: PyTree) -> tuple[dict[str, np.ndarray], dict]:
    """Flatten a pytree to ``{path: ndarray}`` and a JSON-able structure spec."""
    arrays: dict[str, np.ndarray] = {}
    spec = _encode(tree, "", arrays)
    return arrays, spec


def arrays_to_tree(arrays: dict[str, np.ndarray], spec: dict) -> PyTree:
    return _decode(spec, arrays)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mode: str = "wb"):
    """Open a temporary file next to ``path``; rename it over ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_tree(path: str | os.PathLike, tree: PyTree, *, meta: dict | None = None) -> Path:
    """Atomically save a pytree of arrays (and optional JSON metadata) to ``path`` (.npz)."""
    arrays, spec = tree_to_arrays(tree)
    header = {"spec": spec, "meta": meta or {}}
    payload = dict(arrays)
    payload[_SPEC_KEY] = np.frombuffer(
        json.dumps(header, default=_json_default).encode(), np.uint8
    )
    buf = io.BytesIO()
    np.savez(buf, **payload)
    with atomic_path(path) as f:
        f.write(buf.getvalue())
    return Path(path)


def load_tree(path: str | os.PathLike, *, with_meta: bool = False):
    """Load what :func:`save_tree` wrote. Never unpickles."""
    with np.load(path, allow_pickle=False) as z:
        header = json.loads(bytes(z[_SPEC_KEY]).decode())
        arrays = {k: z[k] for k in z.files if k != _SPEC_KEY}
    tree = arrays_to_tree(arrays, header["spec"])
    return (tree, header["meta"]) if with_meta else tree


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, (np.ndarray, jax.Array)):
        return np.asarray(o).tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    if hasattr(o, "dtype") and hasattr(o, "name"):  # numpy dtype
        return str(o)
    return repr(o)


def save_json(path: str | os.PathLike, obj: Any, *, sort_keys: bool = True) -> Path:
    """Atomically write JSON (numpy scalars and arrays converted); ``sort_keys=False`` keeps
    the dicts' order (a document meant to be read, such as a study's results.json)."""
    text = json.dumps(obj, indent=2, sort_keys=sort_keys, default=_json_default)
    with atomic_path(path, "w") as f:
        f.write(text + "\n")
    return Path(path)


def load_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def to_jsonable(obj: Any) -> Any:
    """Round-trip ``obj`` through JSON with the converters above."""
    return json.loads(json.dumps(obj, default=_json_default))
