"""Reference kernels from neural-tangents 0.6.5 for tests/ntk (run in the pinned environment).

    bash benchmarks/envs/make_nt_env.sh
    .venv-nt/bin/python tests/data/make_ntk_fixtures.py

Writes tests/data/ntk_analytic.npz (analytic NNGP/NTK of the architectures in ARCHS, float64)
and tests/data/ntk_empirical.npz (finite stax networks: weights, inputs and their empirical
NTK, implementation 1 = Jacobian contraction, traced over outputs). Architectures are stored as
JSON so the tests build the same networks with ``ntk``. TensorFlow is not needed:
``neural_tangents.experimental`` is replaced by an empty module before import.
"""

import json
import sys
import types
from pathlib import Path

sys.modules["neural_tangents.experimental"] = types.ModuleType("neural_tangents.experimental")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
import neural_tangents as nt  # noqa: E402
import numpy as np  # noqa: E402
from neural_tangents import stax  # noqa: E402

HERE = Path(__file__).resolve().parent

# (name, input kind, layers); a layer is [type, kwargs] or ["residual", [layers]]
D = dict(W_std=1.5, b_std=0.1)
ARCHS = [
    ("mlp_relu_ntk", "vec", [["Dense", dict(width=64, **D)], ["Relu", {}], ["Dense", dict(width=64, **D)], ["Relu", {}], ["Dense", dict(width=3, **D)]]),
    ("mlp_relu_std", "vec", [["Dense", dict(width=64, parameterization="standard", **D)], ["Relu", {}], ["Dense", dict(width=48, parameterization="standard", **D)], ["Relu", {}], ["Dense", dict(width=3, parameterization="standard", **D)]]),
    ("mlp_relu_nobias_std", "vec", [["Dense", dict(width=32, W_std=1.3, parameterization="standard")], ["Relu", {}], ["Dense", dict(width=2, W_std=1.3, parameterization="standard")]]),
    ("mlp_erf_ntk", "vec", [["Dense", dict(width=64, **D)], ["Erf", {}], ["Dense", dict(width=64, **D)], ["Erf", dict(a=1.3, b=0.7, c=0.2)], ["Dense", dict(width=3, **D)]]),
    ("mlp_erf_std", "vec", [["Dense", dict(width=64, parameterization="standard", **D)], ["Erf", {}], ["Dense", dict(width=3, parameterization="standard", **D)]]),
    ("mlp_gelu_ntk", "vec", [["Dense", dict(width=64, **D)], ["Gelu", {}], ["Dense", dict(width=64, **D)], ["Gelu", {}], ["Dense", dict(width=3, **D)]]),
    ("mlp_gelu_std", "vec", [["Dense", dict(width=64, parameterization="standard", **D)], ["Gelu", {}], ["Dense", dict(width=3, parameterization="standard", **D)]]),
    ("mlp_leaky_ntk", "vec", [["Dense", dict(width=64, **D)], ["LeakyRelu", dict(alpha=0.1)], ["Dense", dict(width=64, **D)], ["ABRelu", dict(a=-0.5, b=1.2)], ["Dense", dict(width=3, **D)]]),
    ("mlp_leaky_std", "vec", [["Dense", dict(width=64, parameterization="standard", **D)], ["LeakyRelu", dict(alpha=0.2)], ["Dense", dict(width=3, parameterization="standard", **D)]]),
    ("mlp_layernorm", "vec", [["Dense", dict(width=64, **D)], ["LayerNorm", {}], ["Relu", {}], ["Dense", dict(width=3, **D)]]),
    ("mlp_residual", "vec", [["Dense", dict(width=64, **D)], ["residual", [["Relu", {}], ["Dense", dict(width=64, **D)]]], ["Relu", {}], ["Dense", dict(width=3, **D)]]),
    ("cnn_same_flatten", "img", [["Conv", dict(channels=16, filter_shape=[3, 3], padding="SAME", **D)], ["Relu", {}], ["Conv", dict(channels=16, filter_shape=[3, 3], padding="SAME", **D)], ["Relu", {}], ["Flatten", {}], ["Dense", dict(width=3, **D)]]),
    ("cnn_valid_flatten_std", "img", [["Conv", dict(channels=16, filter_shape=[3, 2], strides=[1, 2], padding="VALID", parameterization="standard", **D)], ["Erf", {}], ["Conv", dict(channels=8, filter_shape=[2, 2], padding="VALID", parameterization="standard", **D)], ["Relu", {}], ["Flatten", {}], ["Dense", dict(width=3, parameterization="standard", **D)]]),
    ("cnn_same_gap", "img", [["Conv", dict(channels=16, filter_shape=[3, 3], padding="SAME", **D)], ["Relu", {}], ["Conv", dict(channels=16, filter_shape=[3, 3], padding="SAME", **D)], ["Relu", {}], ["GlobalAvgPool", {}], ["Dense", dict(width=3, **D)]]),
    ("cnn_gap_std", "img", [["Conv", dict(channels=16, filter_shape=[3, 3], padding="SAME", parameterization="standard", **D)], ["Gelu", {}], ["GlobalAvgPool", {}], ["Dense", dict(width=3, parameterization="standard", **D)]]),
    ("cnn_avgpool", "img", [["Conv", dict(channels=16, filter_shape=[3, 3], padding="SAME", **D)], ["Relu", {}], ["AvgPool", dict(window=[2, 2], strides=[2, 2], padding="VALID")], ["Conv", dict(channels=16, filter_shape=[2, 2], padding="VALID", **D)], ["Relu", {}], ["Flatten", {}], ["Dense", dict(width=3, **D)]]),
    # AvgPool with a Flatten readout: ntk keeps only the band of position pairs the pools need
    ("cnn_band_residual_layernorm", "img", [["Conv", dict(channels=16, filter_shape=[3, 3], padding="SAME", **D)], ["LayerNorm", {}], ["Erf", dict(a=1.3, b=0.7, c=0.2)], ["Conv", dict(channels=16, filter_shape=[2, 2], padding="SAME", **D)], ["residual", [["Gelu", {}], ["AvgPool", dict(window=[3, 3], strides=[1, 1], padding="SAME")], ["Conv", dict(channels=16, filter_shape=[3, 3], padding="SAME", **D)]]], ["Relu", {}], ["AvgPool", dict(window=[2, 1], strides=[1, 1], padding="VALID")], ["Conv", dict(channels=16, filter_shape=[3, 3], strides=[2, 1], padding="SAME", parameterization="standard", **D)], ["Relu", {}], ["AvgPool", dict(window=[2, 2], strides=[2, 2], padding="VALID")], ["Flatten", {}], ["Dense", dict(width=3, parameterization="standard", **D)]]),
    ("cnn_avgpool_same_gap", "img", [["Conv", dict(channels=16, filter_shape=[2, 2], strides=[2, 1], padding="SAME", **D)], ["Erf", {}], ["AvgPool", dict(window=[3, 3], strides=[1, 1], padding="SAME")], ["Dense", dict(width=8, **D)], ["Relu", {}], ["GlobalAvgPool", {}], ["Dense", dict(width=3, **D)]]),
]


# GlobalSelfAttention (issue 16; Hron et al. 2020): stored under "attention_specs" (the tests of
# the other entries read "specs"); kwargs are ntk's, translated for stax by nt_attention.
# pos_emb_decay_fn names a function of DECAYS (the same functions in tests/ntk/test_attention.py).
DECAYS = {"cauchy": lambda d: 1.0 / (1.0 + d), "laplace": lambda d: np.exp(-d)}
A = dict(n_chan_key=8, n_chan_val=8, n_heads=2)
ATTENTION = [
    ("att_softmax_linear", "seq", [["Dense", dict(width=16, **D)], ["Relu", {}], ["GlobalSelfAttention", dict(n_chan_out=8, W_query_std=1.3, W_out_std=1.1, b_std=0.2, **A)], ["Flatten", {}], ["Dense", dict(width=3, **D)]]),
    ("att_relu_abs_gap", "seq", [["Dense", dict(width=16, **D)], ["GlobalSelfAttention", dict(n_chan_out=8, attention="relu", W_key_std=0.7, **A)], ["Relu", {}], ["GlobalSelfAttention", dict(n_chan_out=8, attention="abs", b_std=0.3, W_value_std=1.2, **A)], ["GlobalAvgPool", {}], ["Dense", dict(width=3, **D)]]),
    ("att_identity_linear_sum_layernorm", "seq", [["Dense", dict(width=16, **D)], ["Erf", {}], ["GlobalSelfAttention", dict(n_chan_out=8, attention="identity", pos_emb_type="sum", W_pos_emb_std=0.7, pos_emb_decay_fn="cauchy", **A)], ["LayerNorm", {}], ["Flatten", {}], ["Dense", dict(width=3, **D)]]),
    ("att_identity_sqrt", "seq", [["Dense", dict(width=16, **D)], ["Gelu", {}], ["GlobalSelfAttention", dict(n_chan_out=8, attention="identity", qk_scale="sqrt", W_query_std=1.3, b_std=0.2, **A)], ["Flatten", {}], ["Dense", dict(width=3, **D)]]),
    ("att_identity_sqrt_concat", "seq", [["GlobalSelfAttention", dict(n_chan_out=8, attention="identity", qk_scale="sqrt", pos_emb_type="concat", W_pos_emb_std=1.4, **A)], ["Relu", {}], ["GlobalSelfAttention", dict(n_chan_out=8, attention="identity", qk_scale="sqrt", pos_emb_type="concat", val_pos_emb=True, pos_emb_decay_fn="laplace", pos_emb_p_norm=1, **A)], ["GlobalAvgPool", {}], ["Dense", dict(width=3, **D)]]),
    ("att_softmax_concat_img", "img_small", [["Conv", dict(channels=8, filter_shape=[2, 2], padding="SAME", **D)], ["Relu", {}], ["GlobalSelfAttention", dict(n_chan_out=8, pos_emb_type="concat", val_pos_emb=True, pos_emb_decay_fn="cauchy", b_std=0.1, **A)], ["GlobalAvgPool", {}], ["Dense", dict(width=3, **D)]]),
    ("att_transformer_block", "seq", [["Dense", dict(width=16, **D)], ["residual", [["GlobalSelfAttention", dict(n_chan_out=16, pos_emb_type="sum", val_pos_emb=True, W_out_std=0.8, b_std=0.1, **A)]]], ["LayerNorm", {}], ["residual", [["Dense", dict(width=16, **D)], ["Relu", {}], ["Dense", dict(width=16, **D)]]], ["LayerNorm", {}], ["Flatten", {}], ["Dense", dict(width=3, **D)]]),
]


def nt_attention(kw):
    kw = dict(kw)
    out = dict(linear_scaling=kw.pop("qk_scale", "linear") == "linear")
    out["attention_mechanism"] = kw.pop("attention", "softmax").upper()
    out["pos_emb_type"] = kw.pop("pos_emb_type", "none").upper()
    if "pos_emb_decay_fn" in kw:
        out["pos_emb_decay_fn"] = DECAYS[kw.pop("pos_emb_decay_fn")]
    return stax.GlobalSelfAttention(**out, **kw)


def nt_layer(spec):
    kind, kw = spec
    kw = dict(kw) if isinstance(kw, dict) else kw
    if kind == "GlobalSelfAttention":
        return nt_attention(kw)
    if kind == "residual":
        return stax.serial(stax.FanOut(2), stax.parallel(stax.serial(*[nt_layer(s) for s in kw]), stax.Identity()), stax.FanInSum())
    if kind == "Dense":
        return stax.Dense(kw.pop("width"), **kw)
    if kind == "Conv":
        return stax.Conv(kw.pop("channels"), tuple(kw.pop("filter_shape")), **{k: (tuple(v) if isinstance(v, list) else v) for k, v in kw.items()})
    if kind == "AvgPool":
        return stax.AvgPool(tuple(kw["window"]), tuple(kw["strides"]), kw["padding"])
    if kind == "LeakyRelu":
        return stax.LeakyRelu(kw["alpha"])
    return getattr(stax, kind)(**kw)


def inputs(kind, seed):
    rng = np.random.default_rng(seed)
    if kind == "vec":
        return rng.standard_normal((6, 5)), rng.standard_normal((4, 5))
    if kind == "seq":
        return rng.standard_normal((3, 5, 3)), rng.standard_normal((2, 5, 3))
    if kind == "img_small":
        return rng.standard_normal((3, 3, 4, 2)), rng.standard_normal((2, 3, 4, 2))
    return rng.standard_normal((3, 6, 5, 2)), rng.standard_normal((2, 6, 5, 2))


def analytic():
    out = {}
    for name, kind, layers in ARCHS + ATTENTION:
        _, _, kfn = stax.serial(*[nt_layer(s) for s in layers])
        x1, x2 = inputs(kind, 0)
        k12 = kfn(x1, x2, ("nngp", "ntk"))
        k11 = kfn(x1, None, ("nngp", "ntk"))
        out[f"{name}/x1"], out[f"{name}/x2"] = x1, x2
        out[f"{name}/nngp12"], out[f"{name}/ntk12"] = np.asarray(k12.nngp), np.asarray(k12.ntk)
        out[f"{name}/nngp11"], out[f"{name}/ntk11"] = np.asarray(k11.nngp), np.asarray(k11.ntk)
        print(name, out[f"{name}/ntk12"].shape, float(np.abs(out[f"{name}/ntk11"]).max()))
    out["specs"] = np.frombuffer(json.dumps([[n, k, l] for n, k, l in ARCHS]).encode(), np.uint8)
    out["attention_specs"] = np.frombuffer(json.dumps([[n, k, l] for n, k, l in ATTENTION]).encode(), np.uint8)
    np.savez(HERE / "ntk_analytic.npz", **out)


EMPIRICAL = [
    ("mlp_ntk", "vec", [["Dense", dict(width=32, W_std=1.5, b_std=0.05)], ["Relu", {}], ["Dense", dict(width=32, W_std=1.5, b_std=0.05)], ["Erf", {}], ["Dense", dict(width=4, W_std=1.5, b_std=0.05)]]),
    ("mlp_std", "vec", [["Dense", dict(width=32, W_std=1.5, b_std=0.05, parameterization="standard")], ["Relu", {}], ["Dense", dict(width=4, W_std=1.5, b_std=0.05, parameterization="standard")]]),
    ("cnn_ntk", "img", [["Conv", dict(channels=8, filter_shape=[3, 3], padding="SAME", W_std=1.5, b_std=0.05)], ["Relu", {}], ["Conv", dict(channels=8, filter_shape=[2, 2], strides=[2, 1], padding="VALID", W_std=1.5, b_std=0.05)], ["Relu", {}], ["GlobalAvgPool", {}], ["Dense", dict(width=4, W_std=1.5, b_std=0.05)]]),
    ("cnn_std_flatten", "img", [["Conv", dict(channels=8, filter_shape=[3, 3], padding="SAME", W_std=1.5, b_std=0.05, parameterization="standard")], ["Gelu", {}], ["AvgPool", dict(window=[2, 2], strides=[2, 2], padding="VALID")], ["Flatten", {}], ["Dense", dict(width=4, W_std=1.5, b_std=0.05, parameterization="standard")]]),
]


def empirical():
    out = {}
    for name, kind, layers in EMPIRICAL:
        init_fn, apply_fn, _ = stax.serial(*[nt_layer(s) for s in layers])
        x1, x2 = inputs(kind, 1)
        _, params = init_fn(jax.random.PRNGKey(3), x1.shape)
        efn = nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,), implementation=nt.NtkImplementation.JACOBIAN_CONTRACTION)
        out[f"{name}/x1"], out[f"{name}/x2"] = x1, x2
        out[f"{name}/ntk12"] = np.asarray(efn(x1, x2, params))
        out[f"{name}/ntk11"] = np.asarray(efn(x1, None, params))
        out[f"{name}/out1"] = np.asarray(apply_fn(params, x1))
        # weights: one entry per parametrised layer, in order
        i = 0
        for layer_params in params:
            if layer_params == () or layer_params is None:
                continue
            w, b = layer_params
            out[f"{name}/w{i}"] = np.asarray(w)
            if b is not None:
                out[f"{name}/b{i}"] = np.asarray(b)
            i += 1
        print(name, out[f"{name}/ntk12"].shape)
    out["specs"] = np.frombuffer(json.dumps([[n, k, l] for n, k, l in EMPIRICAL]).encode(), np.uint8)
    np.savez(HERE / "ntk_empirical.npz", **out)


if __name__ == "__main__":
    print("jax", jax.__version__, "neural-tangents", getattr(nt, "__version__", "0.6.5"))
    analytic()
    empirical()
