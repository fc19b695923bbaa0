"""Result objects: frozen dataclasses registered as pytrees, with save/load and short repr.

A result class is declared as::

    @landscape.result
    class SliceResult(landscape.Result):
        losses: jax.Array                                     # array (pytree) field
        alphas: jax.Array
        norm: str = landscape.static_field(default="filter")  # static (settings)
        provenance: dict = landscape.static_field(default_factory=dict)

Array fields are pytree leaves (results can be returned from ``jax.jit`` and ``vmap``-ped);
static fields hold settings and provenance. ``save(path)`` writes one ``.npz`` atomically
(arrays plus JSON metadata, no pickle) and ``Cls.load(path)`` restores an equal object.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar

import jax
import numpy as np

from landscape import _serialize


class Meta(dict):
    """A dict that is hashable by its JSON text, so it can be a static pytree field."""

    def __hash__(self):  # type: ignore[override]
        return hash(json.dumps(self, sort_keys=True, default=_serialize._json_default))


def static_field(**kwargs):
    """A dataclass field stored as static metadata (not a pytree leaf)."""
    md = dict(kwargs.pop("metadata", {}) or {})
    md["static"] = True
    return dataclasses.field(metadata=md, **kwargs)


def freeze(v):
    """Dicts become hashable :class:`Meta`, lists tuples (recursively): values fit for a static
    pytree field. :func:`result` applies it to every static field of a result."""
    if isinstance(v, dict) and not isinstance(v, Meta):
        return Meta({k: freeze(x) for k, x in v.items()})
    if isinstance(v, list):
        return tuple(freeze(x) for x in v)
    return v


class Result:
    """Mixin for result dataclasses: ``save``, ``load``, ``replace`` and a short ``repr``."""

    _result_name: ClassVar[str] = "Result"

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def _split(self):
        data, meta = {}, {}
        for f in dataclasses.fields(self):
            (meta if f.metadata.get("static") else data)[f.name] = getattr(self, f.name)
        return data, meta

    def save(self, path) -> Any:
        """Atomically write this result to ``path`` (``.npz``; arrays plus JSON metadata)."""
        data, meta = self._split()
        host = _serialize.to_host(data)
        return _serialize.save_tree(
            path, host, meta={"class": type(self).__name__, "static": _serialize.to_jsonable(meta)}
        )

    @classmethod
    def load(cls, path):
        """Load a result written by :meth:`save`."""
        data, header = _serialize.load_tree(path, with_meta=True)
        if header.get("class") != cls.__name__:
            raise ValueError(
                f"{cls.__name__}.load: {path} holds a {header.get('class')!r}, not a "
                f"{cls.__name__}."
            )
        static = {k: freeze(v) for k, v in header["static"].items()}
        return cls(**data, **static)

    def __repr__(self):
        parts = []
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "provenance":
                continue
            parts.append(f"{f.name}={_short(v)}")
        return f"{type(self).__name__}(" + ", ".join(parts) + ")"


def _short(v) -> str:
    if v is None:
        return "None"
    if hasattr(v, "shape") and hasattr(v, "dtype"):
        if np.size(v) <= 4:
            return np.array2string(np.asarray(v), precision=5, separator=", ")
        return f"{v.dtype}{list(v.shape)}"
    if isinstance(v, dict):
        if all(hasattr(x, "shape") for x in jax.tree.leaves(v)) and jax.tree.leaves(v):
            leaves = jax.tree.leaves(v)
            return f"<pytree: {len(leaves)} leaves>"
        text = repr(dict(v))
        return text if len(text) < 80 else text[:77] + "..."
    text = repr(v)
    return text if len(text) < 80 else text[:77] + "..."


def _freeze_static(self):
    for f in dataclasses.fields(self):
        if f.metadata.get("static"):
            object.__setattr__(self, f.name, freeze(getattr(self, f.name)))


def result(cls):
    """Class decorator: frozen dataclass + pytree registration (static fields as metadata, frozen
    with :func:`freeze` on construction so they are hashable)."""
    if "__post_init__" not in cls.__dict__:
        cls.__post_init__ = _freeze_static
    cls = dataclasses.dataclass(frozen=True, repr=False, eq=False)(cls)
    data_fields, meta_fields = [], []
    for f in dataclasses.fields(cls):
        (meta_fields if f.metadata.get("static") else data_fields).append(f.name)
    jax.tree_util.register_dataclass(cls, data_fields=data_fields, meta_fields=meta_fields)
    return cls
