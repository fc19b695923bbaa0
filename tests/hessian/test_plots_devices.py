"""Plots return axes; multi-device results equal single-device ones (one subprocess)."""

from __future__ import annotations

import json

import jax
import numpy as np

import landscape
from landscape import hessian


def test_plots_return_axes(small):
    import matplotlib.pyplot as plt

    from landscape import plot

    d = hessian.spectral_density(small.relu_loss, small.relu_params32, small.data32, key=jax.random.key(0),
                                 num_probes=2, num_steps=40, reorthogonalize=False, check=False,
                                 batch_size=small.batch)
    e = hessian.eigenvalues(small.relu_loss, small.relu_params32, small.data32, k=3, key=jax.random.key(3),
                            batch_size=small.batch)
    t = hessian.trace(small.relu_loss, small.relu_params32, small.data32, key=jax.random.key(0), max_hvps=12,
                      batch_size=small.batch)
    for yscale in ("linear", "log"):
        ax = plot.plot_density(d, yscale=yscale, eigen=e, show_nodes=True)
        assert ax.get_yscale() == yscale and len(ax.lines) >= 4
    ax = plot.plot_density({"a": d, "b": d})
    assert len(ax.get_legend().get_texts()) == 2
    assert plot.plot_eigenvalues(e) is not None
    assert len(plot.plot_trace_layers(t).patches) == len(t.per_layer)
    hist = {"sharpness_step": np.array([0, 10]), "sharpness": np.array([1.0, 2.0]),
            "sharpness_threshold": np.array([4.0, 4.0])}
    ax = plot.plot_sharpness(hist)
    assert len(ax.lines) == 2
    plt.close("all")


_CODE = r"""
import json, sys, jax, numpy as np
import landscape
from landscape import hessian
assert "matplotlib" not in sys.modules  # importing landscape.hessian does not import matplotlib
z = np.load(sys.argv[1])
data = {"x": z["x"], "y": z["y"]}
model = landscape.make_model("mlp", input_shape=(64,), num_outputs=10, hidden=(16,), seed=0)
params = jax.tree.map(lambda a, path: z[path], model.params,
                      jax.tree.unflatten(jax.tree.structure(model.params), landscape.tree.leaf_paths(model.params)))
loss = landscape.make_loss_fn(model)
e = hessian.eigenvalues(loss, params, data, k=3, key=jax.random.key(3), batch_size=128)
t = hessian.trace(loss, params, data, key=jax.random.key(0), max_hvps=12, batch_size=128)
print(json.dumps({"devices": jax.device_count(), "eig": list(map(float, e.values)), "trace": float(t.estimate)}))
"""


def test_four_devices_equal_one_device(small, tmp_path, four_devices):
    # the same computations as test_plots_return_axes (compiled there) on 4 virtual devices
    flat = landscape.tree.flatten_dict_paths(small.relu_params32)
    np.savez(tmp_path / "p.npz", x=small.data32["x"], y=small.data32["y"], **{k: np.asarray(v) for k, v in flat.items()})
    code = _CODE.replace("sys.argv[1]", repr(str(tmp_path / "p.npz")))
    out = json.loads(four_devices.run(code).strip().splitlines()[-1])
    assert out["devices"] == 4
    e = hessian.eigenvalues(small.relu_loss, small.relu_params32, small.data32, k=3, key=jax.random.key(3),
                            batch_size=small.batch)
    t = hessian.trace(small.relu_loss, small.relu_params32, small.data32, key=jax.random.key(0), max_hvps=12,
                      batch_size=small.batch)
    # sharded batches sum in another order: float32 rounding (1e-5 relative)
    np.testing.assert_allclose(out["eig"], e.values, rtol=1e-5)
    np.testing.assert_allclose(out["trace"], float(t.estimate), rtol=1e-5)
