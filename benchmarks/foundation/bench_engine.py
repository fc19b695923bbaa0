"""Engine overhead: the exact batched mean against one plain jitted full-batch call.

Workload: digits (all 1797 examples), MLP 64-256-256-10, cross-entropy, float32. The variants
run interleaved (round robin) so machine noise hits them alike; medians over repeats.
Run: python benchmarks/foundation/bench_engine.py
"""

from __future__ import annotations

import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

import landscape
from landscape import engine


def main(repeats: int = 100):
    ds = landscape.load_data("digits")
    data = {k: np.concatenate([ds.train[k], ds.test[k]]) for k in ("x", "y")}
    model = landscape.make_model("mlp", input_shape=(64,), num_outputs=10, seed=0)
    lf = landscape.make_loss_fn(model)
    p = model.params
    dd = jax.tree.map(jnp.asarray, data)
    plain_loss = jax.jit(lambda p, b: lf(p, b))
    plain_grad = jax.jit(jax.value_and_grad(lambda p, b: lf(p, b)[0]))
    fns = {
        "plain jit loss (one batch of 1797)": lambda: plain_loss(p, dd),
        "plain jit value_and_grad": lambda: plain_grad(p, dd),
    }
    for bs in (1797, 512, 128):
        loss_mean = engine.make_mean_fn(Partial(engine.loss_dict, lf), data, batch_size=bs)
        grad_mean = engine.make_mean_fn(Partial(engine._value_and_grad, lf), data, batch_size=bs)
        fns[f"engine loss+acc, batch {bs}"] = lambda f=loss_mean: f(p)
        fns[f"engine value_and_grad, batch {bs}"] = lambda f=grad_mean: f(p)
    b = engine.batch(data, 1797)
    fns["landscape.evaluate (validation incl.), batch 1797"] = lambda: landscape.evaluate(lf, p, b)
    for f in fns.values():
        jax.block_until_ready(f())
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(f())
            times[k].append(time.perf_counter() - t)
    print(
        f"machine: {platform.machine()}, {jax.device_count()} x {jax.default_backend()} "
        f"({jax.devices()[0].device_kind}), jax {jax.__version__}; median of {repeats}"
    )
    print("| variant | median |")
    print("|---|---|")
    for k, v in times.items():
        print(f"| {k} | {np.median(v) * 1e3:.2f} ms |")


if __name__ == "__main__":
    main()
