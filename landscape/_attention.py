"""Attention layers recognised in a parameter pytree, from names and shapes together.

The head-axis layout of Flax's ``DenseGeneral`` (``flax.linen.MultiHeadDotProductAttention``,
``make_model("transformer")``): a folder with ``query/kernel`` and ``value/kernel`` of one shape
``(d_model, heads, d_head)``, ``key/kernel`` of that shape or absent (tied queries and keys),
and ``out/kernel`` of shape ``(heads, d_head, d_out)``. Shared by the Hessian's per-head
selections (:mod:`landscape.hessian._select`) and the surfaces' filter normalisation
(:mod:`landscape.surface._directions`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np

from landscape import tree as _tree


class AttentionFolder(NamedTuple):
    """One recognised layer: ``prefix`` (its folder with a trailing ``/``, ``""`` at the top),
    its ``heads`` and ``d_head``, and ``shapes``, ``{leaf path: shape}`` of the whole tree."""

    prefix: str
    heads: int
    d_head: int
    shapes: dict


def attention_folders(params: Any) -> list[AttentionFolder]:
    """The attention layers of ``params`` in leaf order (see the module docstring)."""
    shapes = dict(
        zip(_tree.leaf_paths(params), (tuple(np.shape(x)) for x in jax.tree.leaves(params)))
    )
    out = []
    for path, shape in shapes.items():
        if not (path == "query/kernel" or path.endswith("/query/kernel")) or len(shape) != 3:
            continue
        prefix = path[: -len("query/kernel")]
        _, h, k = shape
        o = shapes.get(prefix + "out/kernel")
        if (
            shapes.get(prefix + "value/kernel") != shape
            or shapes.get(prefix + "key/kernel", shape) != shape
        ):
            continue
        if o is None or len(o) != 3 or o[:2] != (h, k):
            continue
        out.append(AttentionFolder(prefix, int(h), int(k), shapes))
    return out
