"""Compilation per analysis on the demo MLP: programs compiled, seconds, and the warm call.

Each analysis runs in its own fresh process (so nothing is shared with another analysis), with
the persistent compilation cache off (``LANDSCAPE_COMPILATION_CACHE=0``: every program is
compiled), on the demo's workload: digits (1437 training examples), MLP 64-256-256-10 ReLU at
its seed-0 initialisation, float32. A ``jax.monitoring`` listener counts backend compilations and
sums the time of the three phases JAX reports: tracing (jaxpr), lowering (MLIR) and XLA's backend
compile. The first call's wall time includes them; the warm call is the median of 3 repeats.

``--xla-flags`` adds XLA flags for a comparison (e.g. ``--xla_cpu_use_fusion_emitters=false``);
``--both`` runs every analysis with and without it, alternating.

Usage (repository root)::

    python benchmarks/foundation/compile_profile.py --both --out benchmarks/foundation/compile_profile.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ANALYSES = ["eigenvalues_top5", "trace", "density", "slice_1d", "slice_2d_21", "interpolate", "barrier", "ntk_empirical"]

CHILD = r'''
import json, os, sys, time
t_start = time.perf_counter()
import jax, jax.numpy as jnp, numpy as np
from jax import monitoring
stats = {"programs": 0, "backend_s": 0.0, "trace_s": 0.0, "lower_s": 0.0}
def listener(event, duration, **kw):
    if event.endswith("backend_compile_duration"):
        stats["programs"] += 1; stats["backend_s"] += duration
    elif event.endswith("jaxpr_trace_duration"):
        stats["trace_s"] += duration
    elif event.endswith("jaxpr_to_mlir_module_duration"):
        stats["lower_s"] += duration
monitoring.register_event_duration_secs_listener(listener)
import landscape, ntk
from landscape import hessian, surface, connect
t_import = time.perf_counter() - t_start
ds = landscape.load_data("digits")
data = ds.train
model = landscape.make_model("mlp", input_shape=(64,), num_outputs=10, hidden=(256, 256), seed=0)
other = landscape.make_model("mlp", input_shape=(64,), num_outputs=10, hidden=(256, 256), seed=1)
loss = landscape.make_loss_fn(model)
key = jax.random.key(0)
batched = landscape.engine.batch(data)
name = sys.argv[1]
d1, d2 = surface.random_directions(key, model.params, 2)
def run():
    if name == "eigenvalues_top5":
        return hessian.eigenvalues(loss, model.params, batched, k=5, key=key)
    if name == "trace":
        return hessian.trace(loss, model.params, batched, key=key)
    if name == "density":
        return hessian.spectral_density(loss, model.params, batched, key=key, num_probes=2, num_steps=40)
    if name == "slice_1d":
        return surface.slice_1d(loss, model.params, batched, d1, alphas=np.linspace(-1, 1, 41))
    if name == "slice_2d_21":
        return surface.slice_2d(loss, model.params, batched, (d1, d2), alphas=np.linspace(-1, 1, 21),
                                betas=np.linspace(-1, 1, 21))
    if name == "interpolate":
        return surface.interpolate(loss, other.params, model.params, batched, ts=np.linspace(0, 1, 21))
    if name == "barrier":
        return connect.barrier(connect.profile(loss, connect.linear_path(model.params, other.params), batched,
                                               num_ts=21, refine=False))
    if name == "ntk_empirical":
        return ntk.empirical_ntk(model, data["x"][:128])
    raise SystemExit("unknown analysis " + name)
base = dict(stats)
t0 = time.perf_counter(); r = run(); jax.block_until_ready(jax.tree.leaves(r)); first = time.perf_counter() - t0
comp = {k: stats[k] - base[k] for k in stats}
warm = []
for _ in range(3):
    t0 = time.perf_counter(); r = run(); jax.block_until_ready(jax.tree.leaves(r)); warm.append(time.perf_counter() - t0)
after = {k: stats[k] - base[k] - comp[k] for k in stats}
print("RESULT " + json.dumps({"analysis": name, "import_s": t_import, "first_s": first, "warm_s": sorted(warm)[1],
                              "compile": comp, "recompiled_on_repeat": after["programs"]}))
'''


def run_child(name: str, flags: str) -> dict:
    env = dict(os.environ, LANDSCAPE_COMPILATION_CACHE="0")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # no cache of the user's either: every program compiled
    if flags:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flags).strip()
    p = subprocess.run([sys.executable, "-c", CHILD, name], capture_output=True, text=True, env=env, cwd=REPO)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            out = json.loads(line[7:])
            out["xla_flags"] = flags
            return out
    raise RuntimeError(f"{name} failed:\n{p.stderr[-3000:]}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--analyses", nargs="*", default=ANALYSES)
    ap.add_argument("--xla-flags", default="--xla_cpu_use_fusion_emitters=false")
    ap.add_argument("--both", action="store_true", help="each analysis with and without --xla-flags, alternating")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "foundation" / "compile_profile.json"))
    args = ap.parse_args()
    info = {"loadavg_start": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count()}
    rows = []
    for name in args.analyses:
        variants = ["", args.xla_flags] if args.both else [""]
        for flags in variants:
            r = run_child(name, flags)
            rows.append(r)
            c = r["compile"]
            print(f"{name:18s} flags={flags or '-':40s} programs {c['programs']:3d}  backend {c['backend_s']:6.2f} s  "
                  f"trace {c['trace_s']:5.2f} s  lower {c['lower_s']:5.2f} s  first {r['first_s']:6.2f} s  "
                  f"warm {r['warm_s']:6.3f} s  recompiled {r['recompiled_on_repeat']}", flush=True)
    info["loadavg_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps({"machine": info, "rows": rows}, indent=1))
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
