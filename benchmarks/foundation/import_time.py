"""Wall time of importing the packages and of the command's ``--help``/``--version``, each in a
fresh interpreter, and the largest contributors to ``import landscape`` (``-X importtime``).

With ``--ref REF`` the same commands run alternately in a copy of that commit's ``landscape/``
and ``ntk/`` (``git archive``) and in the working tree, so both see the same load.

    python benchmarks/foundation/import_time.py --repeats 5 --ref HEAD~1
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

COMMANDS = {
    "import landscape": ["-c", "import landscape"],
    "import ntk": ["-c", "import ntk"],
    "python -m landscape --version": ["-m", "landscape", "--version"],
    "python -m landscape --help": ["-m", "landscape", "--help"],
}


def _load() -> str:
    return (
        " ".join(Path("/proc/loadavg").read_text().split()[:3])
        if os.path.exists("/proc/loadavg")
        else "n/a"
    )


def _wall(argv, cwd) -> float:
    t = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, cwd=cwd)
    return time.perf_counter() - t


def _top_imports(cwd, n: int) -> list[tuple[str, float]]:
    """The ``n`` largest cumulative times (s) at the first two levels below ``landscape``."""
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import landscape"],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=True,
    ).stderr
    rows = []
    for line in err.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if m and len(m.group(2)) <= 5:  # the package and two levels below it
            rows.append((m.group(2) + m.group(3), int(m.group(1)) / 1e6))
    return sorted(rows, key=lambda r: -r[1])[:n]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ref", help="a git commit to compare with (its landscape/ and ntk/)")
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    trees = {"now": REPO}
    tmp = None
    if args.ref:
        tmp = Path(tempfile.mkdtemp(prefix="landscape-ref-"))
        archive = subprocess.run(
            ["git", "archive", args.ref, "landscape", "ntk"],
            cwd=REPO,
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
        trees = {args.ref: tmp, "now": REPO}
    script = shutil.which("landscape")
    print(f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}; load average {_load()}")
    times = {(c, t): [] for c in COMMANDS for t in trees}
    script_times = []
    try:
        for _ in range(args.repeats):
            for c, argv in COMMANDS.items():
                for t, cwd in trees.items():  # -c and -m import from the working directory
                    times[c, t].append(_wall([sys.executable, *argv], cwd))
            if script:
                script_times.append(_wall([script, "--version"], REPO))
        for c in COMMANDS:
            cells = [
                f"{t}: {statistics.median(times[c, t]):.3f} s (min {min(times[c, t]):.3f})"
                for t in trees
            ]
            print(f"{c:31s} median of {args.repeats}: " + ", ".join(cells))
        if script_times:
            print(
                f"{'landscape --version (script)':31s} median of {args.repeats}: now: "
                f"{statistics.median(script_times):.3f} s (min {min(script_times):.3f})"
            )
        for t, cwd in trees.items():
            print(f"-X importtime, import landscape ({t}), cumulative:")
            for name, secs in _top_imports(cwd, args.top):
                print(f"  {secs:6.3f} s  {name}")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average at the end {_load()}")


if __name__ == "__main__":
    main()
