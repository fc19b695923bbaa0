"""Multi-head global self-attention: finite layer and its infinite-width NNGP/NTK where a
closed form exists (Hron, Bahri, Sohl-Dickstein, Novak 2020, "Infinite attention: NNGP and NTK
for deep attention networks").

Finite layer (NTK parameterisation, ``u`` the layer input with positional embeddings added or
concatenated, ``n_u`` its channels; ``W`` standard normal)::

    z_q = W_query_std u W_q / sqrt(n_u)      z_k = W_key_std u W_k / sqrt(n_u)   (per head h)
    G_h = z_q z_k^T / d_k  ("linear")   or   z_q z_k^T / sqrt(d_k)  ("sqrt")
    v   = W_value_std v_in W_v / sqrt(n_v)   (v_in = u if val_pos_emb else the input)
    out = W_out_std concat_h(phi(G_h) v_h) W_o / sqrt(H d_v) + b_std b

with ``phi`` the softmax over key positions, ReLU, abs or the identity. Tied query and key
weights (``W_q = W_k``, ``tie_qk=True``) share one projection ``z = u W / sqrt(n_u)``.

Infinite width (``d_k, d_v, H`` or the channels to infinity; kernels per channel, positions
flattened to ``P``; ``K``, ``Theta``: the pair NNGP and NTK of the layer input, ``S`` the
same-example covariance, ``.^u`` with positional embeddings, ``.^v`` of the value input):

* ``qk_scale="linear"``, tied: the logits converge to ``G_a = c S^u_a`` with ``c = W_query_std
  W_key_std`` (deterministic), so ``A_a = phi(c S^u_a)`` and, with ``o = W_out_std
  W_value_std``, ``Sigma' = o^2 A_a K^v A_b^T + b_std^2`` and ``Theta' = o^2 A_a Theta^v A_b^T +
  2 (Sigma' - b_std^2) + b_std^2`` (the value and output weights each contribute ``Sigma' -
  b^2``; the query/key gradients contribute ``O(1/d_k)``). With untied weights the logits
  converge to 0 (a constant attention) and with ``"sqrt"`` and tied weights they diverge:
  both are refused.
* ``qk_scale="sqrt"``, untied, identity attention: the logits are Gaussian with
  ``E[G_a[p,q] G_b[p',q']] = c^2 K^u[p,p'] K^u[q,q']``, so ``Sigma' = (c o)^2 D K^u + b^2``
  with ``D = sum_{q,q'} K^u[q,q'] K^v[q,q']`` and ``Theta' = (c o)^2 [D Theta^u + K^u
  (<Theta^u, K^v> + <K^u, Theta^v>) + 4 D K^u] + b^2`` (query, key and value paths of the
  input, then the four weight matrices; the standard parameterisation weighs the latter by
  their fan-ins). The logits of a head do not concentrate, so a finite network's kernel
  approaches this one as the number of heads grows (``O(1/sqrt(H))`` fluctuations), not as
  ``d_k`` does. Softmax, ReLU and abs attention with ``"sqrt"``
  need ``E[phi(G) ...]`` of a Gaussian ``G`` with no known closed form: refused (Monte
  Carlo with :func:`ntk.monte_carlo` on the finite network).

Positional embeddings (``pos_emb_type``) are trainable parameters ``W_pos_emb_std L e`` with
``e`` standard normal of shape ``(P, C)`` and ``L L^T = R``, the fixed positional covariance
(identity, or ``pos_emb_decay_fn(sum_k |p_k - p'_k|^pos_emb_p_norm)``): ``"sum"`` adds them to
the input (``K^u = K + W_pe^2 R``, ``Theta^u = Theta + W_pe^2 R``), ``"concat"`` appends as
many channels as the input has (``K^u = (K + W_pe^2 R) / 2``, likewise ``Theta^u``); the
values use them only with ``val_pos_emb=True``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from ntk._layers import PARAMETERIZATIONS, Dense, KState, _Affine, _err

ATTENTIONS = ("softmax", "identity", "relu", "abs")
QK_SCALES = ("linear", "sqrt")
POS_EMB_TYPES = ("none", "sum", "concat")
_HIGHEST = jax.lax.Precision.HIGHEST


def _phi(name: str):
    return {
        "softmax": lambda g: jax.nn.softmax(g, axis=-1),
        "identity": lambda g: g,
        "relu": lambda g: jnp.maximum(g, 0),
        "abs": jnp.abs,
    }[name]


def _number(v, name, *, allow_none=False):
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        extra = "None or " if allow_none else ""
        raise ValueError(
            f"ntk.GlobalSelfAttention: {name} must be {extra}a finite number >= 0; got {v!r}."
        )


def _pos_int(v, name):
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ValueError(f"ntk.GlobalSelfAttention: {name} must be a positive int; got {v!r}.")


@dataclasses.dataclass(frozen=True, repr=False)
class _PosEmb(_Affine):
    """The positional embeddings as an affine sub-layer: ``z = W_pe L e`` (``L`` broadcast
    over the batch is its input, ``e`` its kernel), so the structured empirical NTK sees
    their gradient (``W_pe^2 R`` per channel)."""

    W_std: float = 1.0
    parameterization: str = "ntk"
    b_std: None = None
    kind: ClassVar[str] = "pos_emb"

    def coefs(self, fan_in):
        return (self.W_std if self.parameterization == "ntk" else 1.0), 0.0

    def patches(self, h):
        return h.reshape(h.shape[0], -1, h.shape[-1])


@dataclasses.dataclass(frozen=True, repr=False)
class GlobalSelfAttention(_Affine):
    """Multi-head scaled dot-product self-attention over all positions of a sequence ``(N, T,
    C)`` (or of images ``(N, H, W, C)``, their positions flattened), with the analytic
    infinite-width NNGP/NTK of Hron et al. (2020) where one exists.

    Args:
      n_chan_out: output channels (the layer's width).
      n_chan_key: query/key channels per head (``d_k``).
      n_chan_val: value channels per head (``d_v``).
      n_heads: number of heads ``H``.
      attention: ``"softmax"`` (default, over key positions), ``"identity"``, ``"relu"`` or
        ``"abs"``, applied to the logits.
      qk_scale: ``"linear"`` (default; logits divided by ``d_k``: the analytic limit, with
        tied query and key weights) or ``"sqrt"`` (the standard ``1 / sqrt(d_k)``).
      tie_qk: share the query and key weights; default ``None``: tied for ``"linear"``,
        untied for ``"sqrt"``.
      W_query_std, W_key_std, W_value_std, W_out_std: weight scales; the kernels depend on
        ``W_query_std W_key_std`` and ``W_value_std W_out_std`` (NTK parameterisation).
      b_std: output bias scale; ``None`` (default): no bias.
      pos_emb_type: ``"none"`` (default), ``"sum"`` or ``"concat"`` (as many positional
        channels as input channels); trainable positional embeddings (module docstring).
      W_pos_emb_std: their scale.
      val_pos_emb: also feed them to the values (default: queries and keys only).
      pos_emb_decay_fn: ``None`` (independent positions, ``R = I``) or a function of the
        distance ``sum_k |p_k - p'_k|^pos_emb_p_norm`` giving a positive definite
        covariance ``R`` (hashable: a module-level function), as neural-tangents'.
      pos_emb_p_norm: the exponent of that distance.
      parameterization: ``"ntk"`` (default) or ``"standard"`` (weights drawn with variance
        ``W_std^2 / fan_in``; analytic only for ``qk_scale="sqrt"`` identity attention: with
        ``"linear"`` scaling the query/key gradients contribute ``O(fan_in / d_k)`` to the
        standard NTK, which has no closed form here).

    Parameters: ``{"pos_emb": {"kernel": (P, C)}, "qk" (tied) or "query", "key": {"kernel":
    (C_u, H d_k)}, "value": {"kernel": (C_v, H d_v)}, "out": {"kernel": (H d_v, n_chan_out),
    "bias": (n_chan_out,)}}``; the positional embeddings fix the sequence length.

    Analytic kernel (:func:`ntk.kernel`): ``qk_scale="linear"`` with ``tie_qk=True`` (any
    attention) and ``qk_scale="sqrt"`` with identity attention; every other setting raises
    :class:`ntk.ArchitectureError` naming the option (estimate the kernel of the finite
    network with :func:`ntk.monte_carlo`). The analytic kernel needs the full
    position-position covariance (cost ``P^2`` per pair, ``P^3`` for the attention
    products). Neural-tangents' ``GlobalSelfAttention`` computes the same kernels
    (``linear_scaling=True`` is our ``"linear"`` with tied weights).

    References:
      Hron, Bahri, Sohl-Dickstein, Novak (2020), Infinite attention: NNGP and NTK for deep
      attention networks, ICML. Vaswani et al. (2017), Attention is all you need.
    """

    n_chan_out: int
    n_chan_key: int
    n_chan_val: int
    n_heads: int
    attention: str = "softmax"
    qk_scale: str = "linear"
    tie_qk: bool | None = None
    W_query_std: float = 1.0
    W_key_std: float = 1.0
    W_value_std: float = 1.0
    W_out_std: float = 1.0
    b_std: float | None = None
    pos_emb_type: str = "none"
    W_pos_emb_std: float = 1.0
    val_pos_emb: bool = False
    pos_emb_decay_fn: Callable | None = None
    pos_emb_p_norm: float = 2.0
    parameterization: str = "ntk"
    kind: ClassVar[str] = "attention"
    spatial: ClassVar[bool] = True

    def __post_init__(self):
        for name in ("n_chan_out", "n_chan_key", "n_chan_val", "n_heads"):
            _pos_int(getattr(self, name), name)
        choices = (
            ("attention", ATTENTIONS),
            ("qk_scale", QK_SCALES),
            ("pos_emb_type", POS_EMB_TYPES),
            ("parameterization", PARAMETERIZATIONS),
        )
        for name, options in choices:
            if getattr(self, name) not in options:
                raise ValueError(
                    f"ntk.GlobalSelfAttention: {name} must be one of {options}; "
                    f"got {getattr(self, name)!r}."
                )
        if self.tie_qk is None:
            object.__setattr__(self, "tie_qk", self.qk_scale == "linear")
        elif not isinstance(self.tie_qk, bool):
            raise TypeError(
                f"ntk.GlobalSelfAttention: tie_qk must be True, False or None; got {self.tie_qk!r}."
            )
        if not isinstance(self.val_pos_emb, bool):
            raise TypeError(
                f"ntk.GlobalSelfAttention: val_pos_emb must be a bool; got {self.val_pos_emb!r}."
            )
        for name in ("W_query_std", "W_key_std", "W_value_std", "W_out_std", "W_pos_emb_std"):
            _number(getattr(self, name), name)
        _number(self.b_std, "b_std", allow_none=True)
        if self.pos_emb_decay_fn is not None and not callable(self.pos_emb_decay_fn):
            raise TypeError(
                "ntk.GlobalSelfAttention: pos_emb_decay_fn must be None or a function of the "
                f"distance; got {type(self.pos_emb_decay_fn).__name__}."
            )
        p = self.pos_emb_p_norm
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not p > 0:
            raise ValueError(
                f"ntk.GlobalSelfAttention: pos_emb_p_norm must be a number > 0; got {p!r}."
            )

    def describe(self):
        keep = ("n_chan_out", "n_chan_key", "n_chan_val", "n_heads", "attention", "qk_scale")
        args = [f"{k}={getattr(self, k)!r}" for k in keep]
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for f in dataclasses.fields(self):
            if f.name in keep or f.name == "tie_qk":
                continue
            v = getattr(self, f.name)
            if v != defaults[f.name]:
                args.append(f"{f.name}={getattr(v, '__name__', v)!r}")
        args.insert(6, f"tie_qk={self.tie_qk!r}")
        return "GlobalSelfAttention(" + ", ".join(args) + ")"

    # ---------------------------------------------------------------------------------
    # shapes and sub-layers
    # ---------------------------------------------------------------------------------
    def out_shape(self, in_shape):
        if len(in_shape) < 2:
            raise _err(
                f"{self.describe()} needs sequence inputs (n, positions, channels) or images "
                f"(n, H, W, channels); got examples of shape {tuple(in_shape)}."
            )
        return tuple(in_shape[:-1]) + (self.n_chan_out,)

    def _widths(self, in_shape):
        """(channels of the query/key input, of the value input, positions)."""
        c = in_shape[-1]
        cu = 2 * c if self.pos_emb_type == "concat" else c
        cv = cu if self.val_pos_emb else c
        return cu, cv, math.prod(in_shape[:-1])

    def _parts(self) -> dict:
        par = self.parameterization
        hk, hv = self.n_heads * self.n_chan_key, self.n_heads * self.n_chan_val
        parts = {}
        if self.pos_emb_type != "none":
            parts["pos_emb"] = _PosEmb(W_std=float(self.W_pos_emb_std), parameterization=par)
        if self.tie_qk:
            parts["qk"] = Dense(hk, W_std=1.0, parameterization=par)
        else:
            parts["query"] = Dense(hk, W_std=self.W_query_std, parameterization=par)
            parts["key"] = Dense(hk, W_std=self.W_key_std, parameterization=par)
        parts["value"] = Dense(hv, W_std=self.W_value_std, parameterization=par)
        parts["out"] = Dense(
            self.n_chan_out, W_std=self.W_out_std, b_std=self.b_std, parameterization=par
        )
        return parts

    def param_specs(self, in_shape):
        self.out_shape(in_shape)
        cu, cv, P = self._widths(in_shape)
        specs = {}
        for name, part in self._parts().items():
            if name == "pos_emb":
                scale = 1.0 if self.parameterization == "ntk" else float(self.W_pos_emb_std)
                specs[name] = {"kernel": ((P, in_shape[-1]), scale)}
            elif name in ("qk", "query", "key"):
                specs[name] = part.param_specs((cu,))
            elif name == "value":
                specs[name] = part.param_specs((cv,))
            else:
                specs[name] = part.param_specs((self.n_heads * self.n_chan_val,))
        return specs

    def affine_layers(self, path):
        return [(f"{path}/{name}", part) for name, part in self._parts().items()]

    def position_covariance(self, spatial: tuple) -> np.ndarray:
        """``R``: ``(P, P)`` covariance of the positional embeddings (float64, NumPy).

        Raises:
          ntk.ArchitectureError: ``pos_emb_decay_fn`` gives a matrix of another shape, not
            finite, not symmetric or not positive semi-definite (no embeddings have it).
        """
        P = math.prod(spatial)
        if self.pos_emb_decay_fn is None:
            return np.eye(P)
        grids = np.meshgrid(*[np.arange(n) for n in spatial], indexing="ij")
        pos = np.stack([g.reshape(-1) for g in grids], -1).astype(np.float64)
        dist = np.sum(np.abs(pos[:, None, :] - pos[None, :, :]) ** self.pos_emb_p_norm, -1)
        R = np.asarray(self.pos_emb_decay_fn(dist), np.float64)
        if R.shape != (P, P) or not np.all(np.isfinite(R)) or not np.allclose(R, R.T):
            raise _err(
                f"{self.describe()}: pos_emb_decay_fn must map the ({P}, {P}) distance matrix "
                f"to a finite symmetric matrix of the same shape; got shape {R.shape}."
            )
        lo = float(np.linalg.eigvalsh(R)[0])
        if lo < -1e-10 * max(float(np.abs(R).max()), 1e-300):
            raise _err(
                f"{self.describe()}: the positional covariance pos_emb_decay_fn(distance) is "
                f"not positive semi-definite (smallest eigenvalue {lo:.3g}), so no positional "
                "embeddings have it; use a positive definite decay such as exp(-d) with "
                "pos_emb_p_norm=1 or 1 / (1 + d) with pos_emb_p_norm=2."
            )
        return R

    def _factor(self, spatial: tuple) -> np.ndarray:
        """``L`` with ``L L^T = R`` (symmetric square root: defined for singular ``R``)."""
        lam, vec = np.linalg.eigh(self.position_covariance(spatial))
        return (vec * np.sqrt(np.clip(lam, 0.0, None))) @ vec.T

    # ---------------------------------------------------------------------------------
    # finite network
    # ---------------------------------------------------------------------------------
    def apply(self, params, x, ctx=None, path=""):
        parts = self._parts()
        b, spatial, C = x.shape[0], x.shape[1:-1], x.shape[-1]
        h = x.reshape(b, -1, C)
        P = h.shape[1]
        u = v_in = h
        if "pos_emb" in parts:
            pe = parts["pos_emb"]
            L = None if self.pos_emb_decay_fn is None else self._factor(tuple(spatial))
            e = params["pos_emb"]["kernel"]
            lin = jnp.eye(P, dtype=h.dtype) if L is None else jnp.asarray(L, h.dtype)
            z = e if L is None else jnp.matmul(lin, e, precision=_HIGHEST)
            wc, _ = pe.coefs(P)
            if wc != 1.0:
                z = z * jnp.asarray(wc, z.dtype)
            z = jnp.broadcast_to(z[None], (b, P, C))
            if ctx is not None:
                z = ctx.record(f"{path}/pos_emb", pe, jnp.broadcast_to(lin[None], (b, P, P)), z)
            u = h + z if self.pos_emb_type == "sum" else jnp.concatenate([h, z], axis=-1)
            if self.val_pos_emb:
                v_in = u

        def sub(name, inp):
            return parts[name].apply(params[name], inp, ctx, f"{path}/{name}")

        H, dk, dv = self.n_heads, self.n_chan_key, self.n_chan_val
        if self.tie_qk:
            zqk = sub("qk", u)
            q = zqk * jnp.asarray(self.W_query_std, zqk.dtype)
            k = zqk * jnp.asarray(self.W_key_std, zqk.dtype)
        else:
            q, k = sub("query", u), sub("key", u)
        v = sub("value", v_in)
        q, k, v = q.reshape(b, P, H, dk), k.reshape(b, P, H, dk), v.reshape(b, P, H, dv)
        scale = 1.0 / dk if self.qk_scale == "linear" else 1.0 / math.sqrt(dk)
        g = jnp.einsum("bphd,bqhd->bhpq", q, k, precision=_HIGHEST) * jnp.asarray(scale, q.dtype)
        a = _phi(self.attention)(g)
        heads = jnp.einsum("bhpq,bqhd->bphd", a, v, precision=_HIGHEST).reshape(b, P, H * dv)
        out = sub("out", heads)
        return out.reshape((b,) + tuple(spatial) + (self.n_chan_out,))

    # ---------------------------------------------------------------------------------
    # infinite width
    # ---------------------------------------------------------------------------------
    def analytic_error(self) -> str | None:
        """Why this layer has no analytic kernel (``None`` when it has one)."""
        mc = "estimate its kernel with ntk.monte_carlo(arch, x, key=...) on the finite network"
        if self.qk_scale == "sqrt":
            if self.tie_qk:
                return (
                    "qk_scale='sqrt' with tie_qk=True has no infinite-width limit (the tied "
                    "logits grow like sqrt(n_chan_key)); use tie_qk=False, or "
                    f"qk_scale='linear' with tied weights (Hron et al. 2020), or {mc}"
                )
            if self.attention != "identity":
                return (
                    f"attention={self.attention!r} with qk_scale='sqrt' (the standard "
                    "1/sqrt(d_k) scaling) has no closed-form limit: the logits stay Gaussian "
                    "and the kernel is an expectation over them with no known closed form "
                    "(neural-tangents refuses it too); use qk_scale='linear' with tie_qk=True "
                    f"(Hron et al. 2020), attention='identity', or {mc}"
                )
            return None
        if not self.tie_qk:
            return (
                "qk_scale='linear' with tie_qk=False: with independent query and key weights "
                "the 1/d_k logits converge to 0, a constant attention the paper's limit "
                f"excludes; use tie_qk=True (Hron et al. 2020), or {mc}"
            )
        if self.parameterization == "standard":
            return (
                "parameterization='standard' with qk_scale='linear': the query/key gradients "
                "contribute O(fan_in / n_chan_key) to the standard-parameterisation NTK, "
                "which has no closed form here; use parameterization='ntk' (where they "
                f"vanish), or {mc}"
            )
        return None

    def kernel(self, ks: KState) -> KState:
        why = self.analytic_error()
        if why is not None:
            raise _err(f"{self.describe()}: no analytic kernel: {why}.")
        if ks.mode != "full" or ks.d == 0:
            raise _err(
                f"{self.describe()} needs sequence inputs (n, positions, channels) or images; "
                f"got {ks.d} position axes after {ks.last}."
            )
        shape = ks.shape
        P = math.prod(shape)
        dt = ks.nngp.dtype

        def flat(a, nb):
            return None if a is None else a.reshape(a.shape[:nb] + (P, P))

        K, T = flat(ks.nngp, 2), flat(ks.ntk, 2)
        S1, S2 = flat(ks.s1, 1), flat(ks.s2, 1)

        # positional embeddings: K^u, Theta^u (queries/keys) and K^v, Theta^v (values)
        wr = float(self.W_pos_emb_std) ** 2
        wt = wr if self.parameterization == "ntk" else 1.0
        if self.pos_emb_type == "none":
            mix = None
        else:
            R = jnp.asarray(self.position_covariance(shape), dt)
            f = 0.5 if self.pos_emb_type == "concat" else 1.0
            mix = (f, R)

        def with_pe(a, w):
            if a is None or mix is None:
                return a
            f, R = mix
            return f * (a + w * R.reshape((1,) * (a.ndim - 2) + R.shape))

        Ku, Tu, S1u, S2u = with_pe(K, wr), with_pe(T, wt), with_pe(S1, wr), with_pe(S2, wr)
        if self.val_pos_emb:
            Kv, Tv, S1v, S2v = Ku, Tu, S1u, S2u
        else:
            Kv, Tv, S1v, S2v = K, T, S1, S2

        bv = 0.0 if self.b_std is None else float(self.b_std) ** 2
        o2 = (float(self.W_out_std) * float(self.W_value_std)) ** 2
        c = float(self.W_query_std) * float(self.W_key_std)
        hp = _HIGHEST
        if self.qk_scale == "linear":
            phi = _phi(self.attention)
            A1 = phi(c * S1u)
            A2 = A1 if S2u is None else phi(c * S2u)

            def pair(M):
                return jnp.einsum("ipq,ijqr,jsr->ijps", A1, M, A2, precision=hp)

            def selfk(A, M):
                return o2 * jnp.einsum("ipq,iqr,isr->ips", A, M, A, precision=hp) + bv

            nngp = o2 * pair(Kv) + bv
            ntk = o2 * pair(Tv) + 2 * (nngp - bv) + bv
            s1 = selfk(A1, S1v)
            s2 = None if S2 is None else selfk(A2, S2v)
        else:  # sqrt scaling, identity attention
            s2c = (c * c) * o2

            def dot(a, b, nb):
                return jnp.sum(a * b, axis=(nb, nb + 1))

            D12 = dot(Ku, Kv, 2)[:, :, None, None]
            nngp = s2c * D12 * Ku + bv
            paths = Tu * D12 + Ku * (dot(Tu, Kv, 2) + dot(Ku, Tv, 2))[:, :, None, None]
            if self.parameterization == "ntk":
                weights = 4.0 * s2c
                bias_ntk = bv
            else:
                cu = 2 * ks.width if self.pos_emb_type == "concat" else ks.width
                cv = cu if self.val_pos_emb else ks.width
                wq, wk = float(self.W_query_std) ** 2, float(self.W_key_std) ** 2
                wv, wo = float(self.W_value_std) ** 2, float(self.W_out_std) ** 2
                hdv = self.n_heads * self.n_chan_val
                weights = cu * wk * wv * wo + cu * wq * wv * wo + cv * wq * wk * wo
                weights += hdv * wq * wk * wv
                bias_ntk = 1.0 if self.b_std is not None else 0.0
            ntk = s2c * paths + weights * D12 * Ku + bias_ntk

            def selfk(S, Sv):
                return s2c * dot(S, Sv, 1)[:, None, None] * S + bv

            s1 = selfk(S1u, S1v)
            s2 = None if S2 is None else selfk(S2u, S2v)

        def back(a, nb):
            return None if a is None else a.reshape(a.shape[:nb] + shape + shape)

        return ks.replace(
            nngp=back(nngp, 2),
            ntk=back(ntk, 2),
            s1=back(s1, 1),
            s2=back(s2, 1),
            width=self.n_chan_out,
            gaussian=True,
            last=self.describe(),
        )

    def needs_full(self):
        return True

    def band_need(self, r):  # pragma: no cover - attention forces the full layout
        return r
