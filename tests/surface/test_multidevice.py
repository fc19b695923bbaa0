"""Equal results on 1 and 4 virtual CPU devices (all multi-device checks of landscape.surface in
ONE subprocess), and importing the package does not import matplotlib."""

from __future__ import annotations

import numpy as np

_COMPUTE = """
import jax, jax.numpy as jnp, numpy as np
import landscape
from landscape.surface import (affine_first_layer, interpolate, random_direction,
                               random_directions, slice_1d, slice_2d)
from tests.surface.test_bn import _model as bn_model

def compute():
    digits = landscape.load_data("digits")
    train = {k: np.asarray(v[:300]) for k, v in digits.train.items()}
    test = {k: np.asarray(v[:100]) for k, v in digits.test.items()}
    m = landscape.make_model("mlp", input_shape=(64,), num_outputs=10, hidden=(12, 10), seed=0)
    b = landscape.make_model("mlp", input_shape=(64,), num_outputs=10, hidden=(12, 10), seed=1)
    loss_fn = landscape.make_loss_fn(m)
    d1, d2 = random_directions(jax.random.key(0), m.params, 2)
    out = {}
    r = slice_2d(loss_fn, m.params, train, (d1, d2), alphas=np.linspace(-1, 1, 5),
                 betas=np.linspace(-1, 1, 3), test_data=test,
                 settings=landscape.GridSettings(chunk_size=6))
    out["plane_train"], out["plane_test_acc"] = r.loss, r.test["accuracy"]
    out["chunk_size"] = r.settings["chunk_size"]
    ri = interpolate(loss_fn, m.params, b.params, train, ts=np.linspace(-0.5, 1.5, 7),
                     first_layer=affine_first_layer(m))
    out["interp_fast"] = ri.loss
    bn = bn_model(0, jnp.float32)
    bl = landscape.make_loss_fn(bn)
    d = random_direction(jax.random.key(1), bn.params)
    rb = slice_1d(bl, bn.params, train, d, alphas=np.linspace(-1, 1, 6), bn="reestimate",
                  settings=landscape.GridSettings(bn_batch_size=100))
    out["bn_train"] = rb.loss
    return out
"""


def test_one_and_four_devices_agree(tmp_path, small_digits, four_devices):
    path = tmp_path / "four.npz"
    code = (
        _COMPUTE
        + f"""
import sys
assert jax.device_count() == 4
out = compute()
assert "matplotlib" not in sys.modules, "importing/using landscape.surface imported matplotlib"
np.savez({str(path)!r}, **out)
"""
    )
    four_devices.run(code)
    four = dict(np.load(path))
    ns: dict = {}
    exec(_COMPUTE, ns)  # the same computation on this process's single device
    one = ns["compute"]()
    assert int(four["chunk_size"]) == 8 and int(one["chunk_size"]) == 6  # rounded to 4 devices
    for k in one:
        if k == "chunk_size":
            continue
        # the same per-point programs on other devices: float32 agreement to rounding (1e-6)
        np.testing.assert_allclose(four[k], one[k], rtol=1e-6, atol=1e-7, err_msg=k)
