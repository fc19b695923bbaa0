"""One side of the ntk benchmark: ``ours`` (this repository, current JAX) or ``nt``
(neural-tangents 0.6.5 in .venv-nt). Reads ``go``/``stop`` lines on stdin after warming up;
prints one timing per ``go`` and the peak resident memory at ``stop``. Driven by run.py."""

import resource
import sys
import time
import types

import numpy as np

side, workload, impl = sys.argv[1], sys.argv[2], sys.argv[3]
W, B = 1.5, 0.05
rng = np.random.default_rng(0)
if workload in ("analytic_mlp",):
    x = rng.standard_normal((256, 64)).astype(np.float32)
elif workload == "analytic_cntk":
    x = rng.standard_normal((64, 8, 8, 3)).astype(np.float32)
elif workload == "empirical_mlp":
    x = rng.standard_normal((128, 64)).astype(np.float32)
else:
    x = rng.standard_normal((32, 8, 8, 3)).astype(np.float32)

if side == "nt":
    sys.modules["neural_tangents.experimental"] = types.ModuleType("neural_tangents.experimental")
    import jax
    import neural_tangents as nt
    from neural_tangents import stax as L

    def arch():
        if workload == "analytic_mlp":
            return L.serial(L.Dense(512, W, B), L.Relu(), L.Dense(512, W, B), L.Relu(), L.Dense(10, W, B))
        if workload == "empirical_mlp":
            return L.serial(L.Dense(512, W, B), L.Relu(), L.Dense(512, W, B), L.Relu(), L.Dense(10, W, B))
        return L.serial(L.Conv(64, (3, 3), padding="SAME", W_std=W, b_std=B), L.Relu(),
                        L.Conv(64, (3, 3), padding="SAME", W_std=W, b_std=B), L.Relu(),
                        L.GlobalAvgPool(), L.Dense(10, W, B))

    init_fn, apply_fn, kernel_fn = arch()
    if workload.startswith("analytic"):
        kf = jax.jit(kernel_fn, static_argnames="get")
        run = lambda: kf(x, None, "ntk").block_until_ready()  # noqa: E731
    else:
        _, params = init_fn(jax.random.PRNGKey(0), x.shape)
        efn = jax.jit(nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,), vmap_axes=0, implementation=int(impl)))
        run = lambda: efn(x, None, params).block_until_ready()  # noqa: E731
else:
    import jax

    import ntk as N

    def arch():
        if workload in ("analytic_mlp", "empirical_mlp"):
            return N.serial(N.Dense(512, W, B), N.Relu(), N.Dense(512, W, B), N.Relu(), N.Dense(10, W, B))
        return N.serial(N.Conv(64, (3, 3), padding="SAME", W_std=W, b_std=B), N.Relu(),
                        N.Conv(64, (3, 3), padding="SAME", W_std=W, b_std=B), N.Relu(),
                        N.GlobalAvgPool(), N.Dense(10, W, B))

    a = arch()
    if workload.startswith("analytic"):
        run = lambda: N.kernel(a, x)  # noqa: E731
    else:
        model = a.init(jax.random.key(0), x.shape[1:])
        run = lambda: N.empirical_ntk(model, x, method=impl, block_size=len(x))  # noqa: E731

run()
run()
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() == "go":
        t = time.perf_counter()
        run()
        print(f"{time.perf_counter() - t:.6f}", flush=True)
    else:
        break
print(f"maxrss_mb {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}", flush=True)
