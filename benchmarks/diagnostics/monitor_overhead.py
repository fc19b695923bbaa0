"""Steps per second of ``landscape.train`` with and without the training monitor
(:func:`landscape.diagnostics.training_monitor`) on the digits MLP 64-32-32-10 (Adam, batch 64).

Each configuration is warmed up once (compilation), then timed ``--repeats`` times, the
configurations alternating so that all see the same machine load; the median is reported with
the load average before and after.

    python benchmarks/diagnostics/monitor_overhead.py --steps 2000 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np


def _load() -> str:
    if os.path.exists("/proc/loadavg"):
        return " ".join(open("/proc/loadavg").read().split()[:3])
    return "n/a"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--every", type=int, nargs="*", default=[100, 50, 10])
    args = ap.parse_args()

    import jax

    import landscape
    from landscape import diagnostics as D

    data = landscape.load_data("digits")
    model = landscape.make_model("mlp", input_shape=(64,), num_outputs=10, hidden=(32, 32), seed=0)
    eval_every = args.steps // 4

    def run(every):
        if every is None:
            cbs = []
        elif isinstance(every, str):  # "noop=N": train's callback machinery alone
            cbs = [landscape.callback(lambda info: None, every=int(every.split("=")[1]))]
        else:
            cbs = [D.training_monitor(every=every)]
        t = time.perf_counter()
        r = landscape.train(
            model,
            data.train,
            optimizer="adam",
            learning_rate=1e-3,
            num_steps=args.steps,
            batch_size=64,
            eval_every=eval_every,
            callbacks=cbs,
            progress=False,
        )
        jax.block_until_ready(r.params)
        return time.perf_counter() - t

    configs = [None, *args.every, *[f"noop={e}" for e in args.every if e < 50]]
    for c in configs:  # warm-up: compile every block length and the monitor's programs
        run(c)
    times = {c: [] for c in configs}
    load0 = _load()
    for _ in range(args.repeats):
        for c in configs:
            times[c].append(run(c))
    load1 = _load()
    base = statistics.median(times[None])
    print(
        f"jax {jax.__version__}, {jax.devices()[0].platform}, {os.cpu_count()} CPUs, "
        f"load {load0} -> {load1}"
    )
    print(
        f"digits MLP 64-32-32-10, Adam, batch 64, {args.steps} steps, eval every {eval_every}, "
        f"median of {args.repeats}"
    )
    print(f"{'monitor':>14} {'steps/s':>9} {'slowdown':>9}  block  runs (s)")
    for c in configs:
        med = statistics.median(times[c])
        g = args.steps
        period = int(c.split("=")[1]) if isinstance(c, str) else (c or 0)
        for p in (eval_every, period):
            if p:
                g = np.gcd(g, p)
        block = max(d for d in range(1, 51) if g % d == 0)
        name = "none" if c is None else (c if isinstance(c, str) else f"every={c}")
        print(
            f"{name:>14} {args.steps / med:9.0f} {med / base:8.3f}x  {block:5d}  "
            + " ".join(f"{t:.2f}" for t in times[c])
        )


if __name__ == "__main__":
    main()
