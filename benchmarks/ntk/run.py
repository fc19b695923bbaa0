"""ntk versus neural-tangents on the issue's workloads: alternating timings, medians, peak RSS.

    bash benchmarks/envs/make_nt_env.sh      # once: .venv-nt with neural-tangents 0.6.5
    python benchmarks/ntk/run.py [--repeats 5] > benchmarks/ntk/RESULTS.md

Each (workload, implementation) runs in its own pair of fresh processes (ours on current JAX,
theirs in .venv-nt); both compile and warm up, then timings alternate ours/theirs so machine
noise hits both alike. float32, W_std 1.5, b_std 0.05, traced over 10 outputs.
"""

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORKER = str(Path(__file__).with_name("worker.py"))
NT_PY = str(REPO / ".venv-nt" / "bin" / "python")
LOADED = 1.5  # 1-minute load average above which a row's ratio is marked as loaded

CASES = [
    (
        "analytic NTK, Dense-Relu-Dense-Relu-Dense, 256 x 256, dim 64",
        "analytic_mlp",
        "analytic",
        "0",
    ),
    (
        "analytic CNTK, 2 x Conv3x3 SAME-Relu, GAP, Dense; 64 x 64 images 8x8x3",
        "analytic_cntk",
        "analytic",
        "0",
    ),
    ("empirical NTK, MLP 64-512-512-10, 128 x 128", "empirical_mlp", "structured", "3"),
    ("", "empirical_mlp", "jacobian", "1"),
    ("", "empirical_mlp", "ntvp", "2"),
    (
        "empirical NTK, CNN 2 x Conv(64, 3x3, SAME) + GAP + Dense(10), 32 x 32 images 8x8x3",
        "empirical_cnn",
        "structured",
        "3",
    ),
    ("", "empirical_cnn", "jacobian", "1"),
    ("", "empirical_cnn", "ntvp", "2"),
]


def start(py, side, workload, impl):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    p = subprocess.Popen(
        [py, WORKER, side, workload, impl],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=REPO,
    )
    line = p.stdout.readline().strip()
    if line != "ready":
        raise RuntimeError(f"{side} {workload} {impl} failed to start: {line!r}")
    return p


def once(p):
    p.stdin.write("go\n")
    p.stdin.flush()
    return float(p.stdout.readline())


def stop(p):
    p.stdin.write("stop\n")
    p.stdin.flush()
    out = p.stdout.read()
    p.wait()
    return out.split()[-1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--only",
        default="",
        help="comma-separated workload:method filters, e.g. empirical_cnn:structured",
    )
    args = ap.parse_args()
    only = [o.split(":") for o in args.only.split(",") if o]
    print(
        "| workload | ours (method) | ours median s | neural-tangents (impl) | NT median s | NT / ours | peak RSS ours / NT (MB) | load before / after |"
    )
    print("|---|---|---|---|---|---|---|---|")
    names = {
        "1": "Jacobian contraction",
        "2": "NTK-vector products",
        "3": "structured derivatives",
        "0": "kernel_fn",
    }
    for label, wl, ours_m, nt_i in CASES:
        if only and not any(wl == o[0] and (len(o) == 1 or ours_m == o[1]) for o in only):
            continue
        a = start(sys.executable, "ours", wl, ours_m)
        b = start(NT_PY, "nt", wl, nt_i)
        load0 = os.getloadavg()[0]
        ta, tb = [], []
        for _ in range(args.repeats):
            ta.append(once(a))
            tb.append(once(b))
        load1 = os.getloadavg()[0]
        ra, rb = stop(a), stop(b)
        ma, mb = statistics.median(ta), statistics.median(tb)
        # a ratio measured while the 1-minute load exceeded 1.5 (on 2 cores) is marked: the
        # two sides stall differently when the cores are shared
        mark = " (loaded)" if max(load0, load1) > LOADED else ""
        print(
            f"| {label} | {ours_m} | {ma:.4g} | {names[nt_i]} | {mb:.4g} | {mb / ma:.2f}{mark} | "
            f"{ra} / {rb} | {load0:.2f} / {load1:.2f} |",
            flush=True,
        )
    print()
    print(
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.platform()}; {args.repeats} alternating repeats per row; 1-minute load "
        f"average {os.getloadavg()[0]:.2f} at the end; {datetime.date.today().isoformat()}."
    )


if __name__ == "__main__":
    main()
