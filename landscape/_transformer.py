"""A small pre-LayerNorm transformer encoder (Flax NNX) behind ``make_model("transformer")``,
public as ``landscape.models.Transformer``.

The network (Vaswani et al. 2017, in the pre-LayerNorm arrangement of Xiong et al. 2020)::

    h_0 = embed(x) [+ positions]                       (T tokens of width d = width)
    h_l = h_{l-1} + MHA(LN(h_{l-1}))                     one block: attention, then MLP
    h_l = h_l + W_2 phi(W_1 LN(h_l) + b_1) + b_2
    f(x) = W_head pool(LN(h_depth)) + b_head

* Inputs: floating images ``(H, W, C)`` or signals ``(L, C)`` / ``(L,)`` cut into
  non-overlapping patches (ViT style, Dosovitskiy et al. 2021: ``patch x patch x C`` squares of
  an image in row-major order, ``patch`` consecutive samples of a signal), each patch flattened
  and mapped to ``d`` by one dense layer (``embed``); or integer tokens ``(T,)`` with
  ``vocab_size`` (a table ``embed.embedding`` of shape ``(vocab_size, d)``, applied as
  ``one_hot(ids) @ table``: see :class:`TokenEmbed`).
* Positions: ``"learned"`` (a parameter ``pos`` of shape ``(T, d)``, ``T`` counting the class
  token), ``"sinusoidal"`` (the fixed encoding of Vaswani et al.: ``sin(t / 10000^(2i/d))`` in
  the even, ``cos`` in the odd coordinates; no parameter) or ``"none"``.
* Attention: ``heads`` heads of width ``d_head = width // heads``; scores ``s = c q k^T`` with
  ``c = 1/sqrt(d_head)`` (``qk_scale="sqrt"``, the standard) or ``1/d_head`` (``"linear"``),
  then ``softmax`` over the keys, or no nonlinearity (``attention="identity"``) or ``relu``,
  the variants whose infinite-width limits Hron et al. (2020) derive (the non-softmax
  variants are not normalised by the sequence length, as in Hron et al. and neural-tangents'
  ``GlobalSelfAttention``). A causal mask (``causal=True``) removes the keys after each query:
  their scores become the dtype's most negative number before the softmax (weight exactly 0),
  their weights 0 for the other variants. ``tie_qk=True``
  uses the query kernel (and bias) for the keys too: the tied-weight network whose
  ``1/d_head`` limit is analytic (Hron et al. 2020).
* LayerNorm (``layer_norm=True``): before each sublayer and once before the readout,
  ``epsilon = 1e-6`` (Flax's default), a learned scale and bias per feature.
* Readout: ``pool="mean"`` (over tokens), ``"cls"`` (a learned class token ``cls`` prepended,
  as in ViT; not with ``causal``), ``"last"`` (the last token: the causal language-model
  readout) or ``"none"`` (per-token outputs of shape ``(N, T, num_outputs)``).
* No model state (no batch norm, no dropout): ``model.state == {}``. Inputs may carry any
  number of leading batch axes, or none (one example, as under ``jax.vmap``). Cost per block
  and example: ``O(T d^2)`` for the projections and MLP, ``O(T^2 d)`` for the scores.

Parameter layout (paths of ``model.params``; a head is a slice along an axis, as in
``flax.linen.DenseGeneral``)::

    embed/kernel (patch_dim, d), embed/bias (d,)        or embed/embedding (vocab_size, d)
    pos (T, d)                                          positions="learned"
    cls (d,)                                            pool="cls"
    blocks/<l>/ln1/scale (d,), ln1/bias (d,)            layer_norm=True
    blocks/<l>/attn/query/kernel (d, heads, d_head), query/bias (heads, d_head)
    blocks/<l>/attn/key/kernel   (d, heads, d_head), key/bias   (heads, d_head)   not tie_qk
    blocks/<l>/attn/value/kernel (d, heads, d_head), value/bias (heads, d_head)
    blocks/<l>/attn/out/kernel   (heads, d_head, d), out/bias   (d,)
    blocks/<l>/ln2/scale (d,), ln2/bias (d,)
    blocks/<l>/mlp/fc1/kernel (d, m), fc1/bias (m,), mlp/fc2/kernel (m, d), fc2/bias (d,)
    ln_f/scale (d,), ln_f/bias (d,)
    head/kernel (d, num_outputs), head/bias (num_outputs,)

with ``m = mlp_ratio * d`` (``mlp_ratio=0``: no MLP sublayer) and no ``bias`` leaves with
``use_bias=False`` (LayerNorm then has only its scale). Head ``j`` of block ``l`` is
``query/kernel[:, j]``, ``key/kernel[:, j]``, ``value/kernel[:, j]`` and ``out/kernel[j]``.

Initialisation (:func:`landscape.models.resolve_init`, the MLP's names and variances): every
dense kernel is drawn as the 2-D matrix ``(fan_in, fan_out)`` it acts as (``(d, heads *
d_head)`` for query/key/value, ``(heads * d_head, d)`` for the output) and reshaped, so LeCun,
He, Glorot, orthogonal and ``sigma_w2`` mean what they mean for a dense layer; biases are
``N(0, sigma_b2)``. The token table is a dense layer on one-hot inputs (fan-in 1): entries
``N(0, sigma_w2)`` (the scheme's variance at fan-in 1; a callable ``init`` gets the table's
shape). Learned positions are ``N(0, pos_std^2)`` (``pos_std=0.02``, ViT's and BERT's; ``1``
is Hron et al.'s), the class token starts at zero (ViT), LayerNorm at scale 1 and bias 0. The
readout follows ``init`` like every other dense layer (ViT starts its head at zero; here one
scheme covers all layers, as for the MLP).

References:
  Vaswani et al. (2017), Attention is all you need. Dosovitskiy et al. (2021), An image is
  worth 16x16 words: transformers for image recognition at scale. Xiong et al. (2020), On
  layer normalization in the transformer architecture. Hron, Bahri, Sohl-Dickstein and Novak
  (2020), Infinite attention: NNGP and NTK for deep attention networks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from landscape import validate as _validate
from landscape.models import InitSpec, _finish, _flat_draw, get_activation, resolve_init

ATTENTIONS = ("softmax", "identity", "relu")
QK_SCALES = ("sqrt", "linear")
POSITIONS = ("learned", "sinusoidal", "none")
POOLS = ("mean", "cls", "last", "none")

_WHERE = "landscape.models.Transformer"


def _lead(a, ndim: int):
    """``a`` with leading unit axes up to ``ndim`` (explicit broadcasting: the toolkit's tests
    run with ``jax_numpy_rank_promotion="raise"``)."""
    return jnp.reshape(a, (1,) * (ndim - a.ndim) + a.shape)


def _draw(init: Callable, key, shape: tuple, fans: tuple[int, int], dtype):
    """``init`` applied to the 2-D ``fans`` matrix a kernel acts as, reshaped to ``shape`` (on
    the host when the draw is concrete on one device: a reshape moves no value, and
    ``device_put`` compiles no program per shape)."""
    if init is jax.nn.initializers.zeros:
        init = _host_zeros
    return _host_reshape(init(key, fans, dtype), shape)


def _host_reshape(x, shape: tuple):
    if _validate.is_tracer(x) or not isinstance(x, jax.Array) or len(x.devices()) != 1:
        return jnp.reshape(x, shape)
    y = np.asarray(x).reshape(shape)
    return jax.device_put(y, x.sharding if x.committed else None)


def _scaled_normal(key, shape: tuple, std: float, dtype):
    """``std * jax.random.normal(key, shape, dtype)``, the same values: the first
    ``prod(shape)`` entries of a flat draw of the next power-of-two size (threefry's counters
    are the positions, so a longer draw begins with the shorter one; row-major, as the shaped
    draw), times ``std`` rounded to ``dtype`` (:func:`landscape.models._finish`: NumPy's
    correctly rounded product on one CPU device). One compiled draw per size bucket, shared
    with the initialisers, instead of a draw and a multiply per shape."""
    n = max(math.prod(shape), 1)
    z = _flat_draw(key, 1 << (n - 1).bit_length(), "normal", jnp.dtype(dtype))
    return _finish(z, np.asarray(std, z.dtype), tuple(shape))


class HeadDense(nnx.Module):
    """``(..., d) -> (..., heads, d_head)``: a dense layer with an explicit head axis (kernel
    ``(d, heads, d_head)``, bias ``(heads, d_head)``)."""

    def __init__(self, d, heads, d_head, spec: InitSpec, *, use_bias, param_dtype, rngs):
        shape, fans = (d, heads, d_head), (d, heads * d_head)
        self.kernel = nnx.Param(_draw(spec.kernel_init, rngs.params(), shape, fans, param_dtype))
        self.bias = (
            nnx.Param(
                _draw(
                    spec.bias_init, rngs.params(), (heads, d_head), (heads * d_head,), param_dtype
                )
            )
            if use_bias
            else None
        )

    def __call__(self, x):
        y = jnp.einsum("...d,dhk->...hk", x, self.kernel[...])
        return y if self.bias is None else y + _lead(self.bias[...], y.ndim)


class HeadOut(nnx.Module):
    """``(..., heads, d_head) -> (..., d)``: the heads' outputs mixed back into the residual
    stream (kernel ``(heads, d_head, d)``, bias ``(d,)``)."""

    def __init__(self, heads, d_head, d, spec: InitSpec, *, use_bias, param_dtype, rngs):
        shape, fans = (heads, d_head, d), (heads * d_head, d)
        self.kernel = nnx.Param(_draw(spec.kernel_init, rngs.params(), shape, fans, param_dtype))
        self.bias = (
            nnx.Param(_draw(spec.bias_init, rngs.params(), (d,), (d,), param_dtype))
            if use_bias
            else None
        )

    def __call__(self, y):
        x = jnp.einsum("...hk,hkd->...d", y, self.kernel[...])
        return x if self.bias is None else x + _lead(self.bias[...], x.ndim)


class TokenEmbed(nnx.Module):
    """Token ids ``(...)`` -> ``(..., d)`` rows of ``embedding`` (``(vocab_size, d)``).

    Computed as ``one_hot(ids) @ embedding``, a dense layer on one-hot inputs (initialised at
    fan-in 1, module docstring), rather than a gather: the result is the same row exactly, the
    cost ``O(vocab_size * d)`` per token is nothing at this toolkit's sizes, and the program is
    then a matrix product that :func:`landscape.connect.permutation_spec` follows (the
    vocabulary axis meets the data, not a permutable unit axis). Ids may be integers or
    integer-valued floats (``ntk.empirical_ntk`` passes inputs as floats); an id outside
    ``[0, vocab_size)`` (or a non-integer float) embeds as the zero vector, since it cannot be
    checked inside compiled code.
    """

    def __init__(self, vocab_size, d, spec: InitSpec, *, param_dtype, rngs):
        key = rngs.params()
        if spec.name == "callable":
            table = spec.kernel_init(key, (vocab_size, d), param_dtype)
        else:
            std = math.sqrt(spec.target_variance(1, d))
            table = _scaled_normal(key, (vocab_size, d), std, param_dtype)
        self.embedding = nnx.Param(jnp.asarray(table, param_dtype))
        self.vocab_size = int(vocab_size)

    def __call__(self, tokens):
        table = self.embedding[...]
        ids = jnp.arange(self.vocab_size, dtype=tokens.dtype)
        onehot = (tokens[..., None] == _lead(ids, tokens.ndim + 1)).astype(table.dtype)
        return jnp.einsum("...v,vd->...d", onehot, table)


def _host_zeros(key, shape, dtype=jnp.float32, out_sharding=None):
    """``jax.nn.initializers.zeros`` built on the host (the same zeros; ``device_put``
    compiles no program per shape)."""
    del key
    return jax.device_put(np.zeros(tuple(shape), jnp.dtype(dtype)), out_sharding)


def _dense(a, b, spec: InitSpec, *, use_bias, param_dtype, rngs):
    return nnx.Linear(
        a,
        b,
        use_bias=use_bias,
        kernel_init=spec.kernel_init,
        bias_init=_host_zeros if spec.bias_init is jax.nn.initializers.zeros else spec.bias_init,
        param_dtype=param_dtype,
        rngs=rngs,
    )


def _host_ones(key, shape, dtype=jnp.float32, out_sharding=None):
    """``jax.nn.initializers.ones`` built on the host (as :func:`_host_zeros`)."""
    del key
    return jax.device_put(np.ones(tuple(shape), jnp.dtype(dtype)), out_sharding)


def _layer_norm(d, *, use_bias, param_dtype, rngs):
    return nnx.LayerNorm(
        d,
        use_bias=use_bias,
        param_dtype=param_dtype,
        scale_init=_host_ones,
        bias_init=_host_zeros,
        rngs=rngs,
    )


def causal_mask(num_tokens: int) -> np.ndarray:
    """``(T, T)`` boolean: query ``t`` may attend to key ``s`` iff ``s <= t``."""
    return np.tril(np.ones((num_tokens, num_tokens), dtype=bool))


def sinusoidal_positions(num_tokens: int, d: int, dtype=jnp.float32):
    """The fixed encoding of Vaswani et al. (2017): ``P[t, 2i] = sin(t / 10000^(2i/d))``,
    ``P[t, 2i+1] = cos(t / 10000^(2i/d))``; shape ``(num_tokens, d)``."""
    t = np.arange(num_tokens, dtype=np.float64)[:, None]
    i = np.arange(d)[None, :]
    angle = t / np.power(10000.0, (2 * (i // 2)) / d)
    return jnp.asarray(np.where(i % 2 == 0, np.sin(angle), np.cos(angle)), dtype)


class SelfAttention(nnx.Module):
    """Multi-head self-attention on ``(..., T, d)`` (see the module docstring for the options).

    ``query``, ``key`` (absent with ``tie_qk``), ``value``: :class:`HeadDense`; ``out``:
    :class:`HeadOut`. The attention weights of the last call are not stored.
    """

    def __init__(
        self,
        d,
        heads,
        spec: InitSpec,
        *,
        attention,
        qk_scale,
        tie_qk,
        causal,
        use_bias,
        param_dtype,
        rngs,
    ):
        d_head = d // heads
        kw = dict(use_bias=use_bias, param_dtype=param_dtype, rngs=rngs)
        self.query = HeadDense(d, heads, d_head, spec, **kw)
        self.key = None if tie_qk else HeadDense(d, heads, d_head, spec, **kw)
        self.value = HeadDense(d, heads, d_head, spec, **kw)
        self.out = HeadOut(heads, d_head, d, spec, **kw)
        self.attention = attention
        self.scale = 1.0 / (math.sqrt(d_head) if qk_scale == "sqrt" else d_head)
        self.causal = bool(causal)

    def weights(self, x):
        """Attention weights ``(..., heads, T_query, T_key)`` on ``x`` of shape ``(..., T, d)``."""
        q = self.query(x)
        k = q if self.key is None else self.key(x)
        s = jnp.einsum("...qhk,...shk->...hqs", q, k) * jnp.asarray(self.scale, q.dtype)
        mask = _lead(causal_mask(x.shape[-2]), s.ndim) if self.causal else None
        if self.attention == "softmax":
            if mask is not None:
                s = jnp.where(mask, s, jnp.finfo(s.dtype).min)
            return jax.nn.softmax(s, axis=-1)
        a = s if self.attention == "identity" else jax.nn.relu(s)
        return a if mask is None else jnp.where(mask, a, jnp.zeros((), a.dtype))

    def __call__(self, x):
        a = self.weights(x)
        v = self.value(x)
        y = jnp.einsum("...hqs,...shk->...qhk", a, v)
        return self.out(y)


class MLPBlock(nnx.Module):
    """``fc2(phi(fc1(x)))``, ``d -> m -> d``."""

    def __init__(self, d, m, spec: InitSpec, *, activation, use_bias, param_dtype, rngs):
        kw = dict(use_bias=use_bias, param_dtype=param_dtype, rngs=rngs)
        self.fc1 = _dense(d, m, spec, **kw)
        self.fc2 = _dense(m, d, spec, **kw)
        self.activation = activation

    def __call__(self, x):
        return self.fc2(self.activation(self.fc1(x)))


class Block(nnx.Module):
    """One pre-LN encoder block: ``h + MHA(LN1(h))``, then ``h + MLP(LN2(h))``."""

    def __init__(
        self,
        d,
        heads,
        m,
        spec: InitSpec,
        *,
        layer_norm,
        activation,
        attention,
        qk_scale,
        tie_qk,
        causal,
        use_bias,
        param_dtype,
        rngs,
    ):
        norm = dict(use_bias=use_bias, param_dtype=param_dtype, rngs=rngs)
        self.ln1 = _layer_norm(d, **norm) if layer_norm else None
        self.attn = SelfAttention(
            d,
            heads,
            spec,
            attention=attention,
            qk_scale=qk_scale,
            tie_qk=tie_qk,
            causal=causal,
            **norm,
        )
        self.ln2 = _layer_norm(d, **norm) if layer_norm and m else None
        self.mlp = MLPBlock(d, m, spec, activation=activation, **norm) if m else None

    def __call__(self, h):
        h = h + self.attn(h if self.ln1 is None else self.ln1(h))
        if self.mlp is not None:
            h = h + self.mlp(h if self.ln2 is None else self.ln2(h))
        return h


def _check_int(value, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{_WHERE}: {name} must be an integer >= {minimum}; got {value!r}.")
    return int(value)


def _check_choice(value, choices, name: str) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{_WHERE}: {name} must be one of {choices}; got {value!r}.")
    return value


def _check_flag(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{_WHERE}: {name} must be True or False; got {value!r}.")
    return bool(value)


def _tokens_of(input_shape: tuple, patch: int | None, vocab_size: int | None):
    """``(num_tokens, patch_dim)`` of an input shape (``patch_dim`` None for token inputs)."""
    if vocab_size is not None:
        if len(input_shape) != 1:
            raise ValueError(
                f"{_WHERE}: integer token inputs (vocab_size={vocab_size}) need "
                f"input_shape=(T,); got {input_shape}."
            )
        if patch not in (None, 1):
            raise ValueError(
                f"{_WHERE}: patch={patch!r} cuts floating signals or images into patches; token "
                "inputs (vocab_size given) take no patch: drop patch."
            )
        return input_shape[0], None
    p = 1 if patch is None else _check_int(patch, "patch")
    if len(input_shape) == 3:
        h, w, c = input_shape
        if h % p or w % p:
            raise ValueError(
                f"{_WHERE}: patch={p} must divide the image's height and width; got "
                f"input_shape={input_shape}. Choose a patch size that divides both."
            )
        return (h // p) * (w // p), p * p * c
    if len(input_shape) in (1, 2):
        length = input_shape[0]
        c = input_shape[1] if len(input_shape) == 2 else 1
        if length % p:
            raise ValueError(
                f"{_WHERE}: patch={p} must divide the signal length {length}; got "
                f"input_shape={input_shape}. Choose a patch size that divides it."
            )
        return length // p, p * c
    raise ValueError(
        f"{_WHERE}: input_shape must be (H, W, C) images, (L, C) or (L,) signals, or (T,) "
        f"tokens with vocab_size; got {input_shape}."
    )


class Transformer(nnx.Module):
    """A small pre-LayerNorm transformer encoder (module docstring: architecture, layout,
    initialisation, references).

    Args:
      input_shape: one input's shape: ``(H, W, C)`` images, ``(L, C)`` or ``(L,)`` signals
        (floating), or ``(T,)`` token ids (with ``vocab_size``; integers, or integer-valued
        floats, see :class:`TokenEmbed`).
      num_outputs: outputs (classes) per example, or per token with ``pool="none"``.
      width: the residual stream's width ``d`` (``d_model``).
      depth: number of blocks.
      heads: attention heads; must divide ``width`` (``d_head = width // heads``).
      mlp_ratio: the MLP's hidden width is ``mlp_ratio * width`` (0: no MLP sublayer, an
        attention-only network).
      patch: patch side (images) or length (signals); must divide the spatial sizes. ``None``:
        1 (every pixel or sample a token). Not with token inputs.
      vocab_size: number of token ids (``None``: floating signals or images; then integer
        inputs are refused).
      positions: ``"learned"``, ``"sinusoidal"`` or ``"none"``.
      pos_std: standard deviation of learned positions at initialisation.
      attention: ``"softmax"``, ``"identity"`` or ``"relu"`` (the map applied to the scores).
      qk_scale: ``"sqrt"`` (scores times ``1/sqrt(d_head)``) or ``"linear"`` (``1/d_head``).
      tie_qk: keys use the query kernel and bias (no ``key`` parameters).
      causal: query ``t`` attends only to keys ``s <= t``.
      pool: ``"mean"``, ``"cls"``, ``"last"`` or ``"none"`` (per-token outputs).
      layer_norm: pre-LN blocks and a final LayerNorm before the head (``False``: none).
      activation: the MLP's activation, a name in :data:`landscape.models.ACTIVATIONS` or a
        callable.
      init, sigma_w2, sigma_b2: as for :class:`landscape.models.MLP`.
      use_bias: biases in every dense layer and LayerNorm.
      param_dtype: dtype of the parameters (computations follow it).
      rngs: ``nnx.Rngs``.

    Raises:
      ValueError: ``heads`` not dividing ``width``, ``patch`` not dividing the input, a patch
        with token inputs, ``pool="cls"`` with ``causal``, an unknown option (each message
        names the argument).
      TypeError: a switch that is not a bool.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        *,
        width: int = 32,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: int = 4,
        patch: int | None = None,
        vocab_size: int | None = None,
        positions: str = "learned",
        pos_std: float = 0.02,
        attention: str = "softmax",
        qk_scale: str = "sqrt",
        tie_qk: bool = False,
        causal: bool = False,
        pool: str = "mean",
        layer_norm: bool = True,
        activation: str | Callable = "gelu",
        init: str | Callable | None = None,
        sigma_w2: float | None = None,
        sigma_b2: float = 0.0,
        use_bias: bool = True,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        input_shape = tuple(int(s) for s in input_shape)
        d = _check_int(width, "width")
        depth = _check_int(depth, "depth", minimum=0)
        heads = _check_int(heads, "heads")
        mlp_ratio = _check_int(mlp_ratio, "mlp_ratio", minimum=0)
        num_outputs = _check_int(num_outputs, "num_outputs")
        if d % heads:
            raise ValueError(
                f"{_WHERE}: heads={heads} must divide width={d} (each head gets width // heads "
                "dimensions); choose heads among the divisors of width."
            )
        if vocab_size is not None:
            vocab_size = _check_int(vocab_size, "vocab_size")
        _check_choice(positions, POSITIONS, "positions")
        _check_choice(attention, ATTENTIONS, "attention")
        _check_choice(qk_scale, QK_SCALES, "qk_scale")
        _check_choice(pool, POOLS, "pool")
        for name, flag in (
            ("tie_qk", tie_qk),
            ("causal", causal),
            ("layer_norm", layer_norm),
            ("use_bias", use_bias),
        ):
            _check_flag(flag, name)
        if pool == "cls" and causal:
            raise ValueError(
                f"{_WHERE}: pool='cls' with causal=True: the class token comes first and would "
                "attend to nothing but itself; use pool='last' (the causal readout) or "
                "causal=False."
            )
        if (
            isinstance(pos_std, bool)
            or not isinstance(pos_std, (int, float, np.number))
            or not (math.isfinite(pos_std) and pos_std >= 0)
        ):
            raise ValueError(f"{_WHERE}: pos_std must be a finite number >= 0; got {pos_std!r}.")
        spec = resolve_init(init, sigma_w2, sigma_b2, use_bias=use_bias, where=_WHERE)
        act = get_activation(activation)
        num_tokens, patch_dim = _tokens_of(input_shape, patch, vocab_size)
        self.input_shape = input_shape
        self.patch = 1 if patch is None else int(patch)
        self.vocab_size = vocab_size
        self.positions = positions
        self.pool = pool
        self.num_tokens = num_tokens + (pool == "cls")
        if vocab_size is None:
            self.embed = _dense(
                patch_dim, d, spec, use_bias=use_bias, param_dtype=param_dtype, rngs=rngs
            )
        else:
            self.embed = TokenEmbed(vocab_size, d, spec, param_dtype=param_dtype, rngs=rngs)
        self.pos = (
            nnx.Param(
                _scaled_normal(rngs.params(), (self.num_tokens, d), float(pos_std), param_dtype)
            )
            if positions == "learned"
            else None
        )
        self.cls = (  # host zeros: no program per width
            nnx.Param(jax.device_put(np.zeros((d,), jnp.dtype(param_dtype))))
            if pool == "cls"
            else None
        )
        m = mlp_ratio * d
        self.blocks = nnx.List(
            [
                Block(
                    d,
                    heads,
                    m,
                    spec,
                    layer_norm=layer_norm,
                    activation=act,
                    attention=attention,
                    qk_scale=qk_scale,
                    tie_qk=tie_qk,
                    causal=causal,
                    use_bias=use_bias,
                    param_dtype=param_dtype,
                    rngs=rngs,
                )
                for _ in range(depth)
            ]
        )
        self.ln_f = (
            _layer_norm(d, use_bias=use_bias, param_dtype=param_dtype, rngs=rngs)
            if layer_norm
            else None
        )
        self.head = _dense(
            d, num_outputs, spec, use_bias=use_bias, param_dtype=param_dtype, rngs=rngs
        )

    # ------------------------------------------------------------------------------------
    def patches(self, x):
        """``(N, *input_shape)`` floating inputs -> ``(N, T, patch_dim)`` patches (images:
        row-major over patches, each flattened as ``(row, column, channel)``)."""
        p, n = self.patch, x.shape[0]
        if x.ndim == 4:
            _, h, w, c = x.shape
            x = x.reshape(n, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
            return x.reshape(n, (h // p) * (w // p), p * p * c)
        return x.reshape(n, x.shape[1] // p, -1)

    def tokens(self, x):
        """The residual stream entering the first block, ``(N, T, d)``."""
        h = self.embed(self.patches(x)) if self.vocab_size is None else self.embed(x)
        if self.cls is not None:
            c = jnp.broadcast_to(self.cls[...].astype(h.dtype), (h.shape[0], 1, h.shape[-1]))
            h = jnp.concatenate([c, h], axis=1)
        if self.positions == "learned":
            h = h + _lead(self.pos[...], h.ndim)
        elif self.positions == "sinusoidal":
            h = h + _lead(sinusoidal_positions(h.shape[1], h.shape[2], h.dtype), h.ndim)
        return h

    def features(self, x):
        """Final (normalised) residual stream ``(N, T, d)``."""
        h = self.tokens(x)
        for block in self.blocks:
            h = block(h)
        return h if self.ln_f is None else self.ln_f(h)

    def _check_input(self, x):
        k = len(self.input_shape)
        if x.ndim < k or tuple(x.shape[x.ndim - k :]) != self.input_shape:
            raise ValueError(
                f"{_WHERE}: inputs must have shape (..., {', '.join(map(str, self.input_shape))}) "
                f"(the input_shape the model was built with); got {tuple(x.shape)}."
            )
        if self.vocab_size is None and jnp.issubdtype(x.dtype, jnp.integer):
            raise ValueError(
                f"{_WHERE}: integer inputs ({x.dtype}) need a token embedding; build the model "
                "with vocab_size=<number of token ids> (or pass floating signals or images)."
            )

    def __call__(self, x):
        x = jnp.asarray(x)
        self._check_input(x)
        batch = x.shape[: x.ndim - len(self.input_shape)]
        x = x.reshape((-1, *self.input_shape))
        h = self.features(x)
        if self.pool == "mean":
            h = h.mean(axis=1)
        elif self.pool == "cls":
            h = h[:, 0]
        elif self.pool == "last":
            h = h[:, -1]
        out = self.head(h)
        return out.reshape(batch + out.shape[1:])
