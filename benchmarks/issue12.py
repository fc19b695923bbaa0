"""Every comparison of issue 12 (speed a user feels) in one run, with the machine's load.

Runs, one after the other (each script alternates ours and the peer's runs internally):

1. ``hessian/bench_pyhessian.py``: warm top-1, top-5, trace (default: exact here; and Hutch++ 30),
   densities against PyHessian, products and errors against float64 references;
2. ``hessian/whole_process.py``: whole processes (start, import, load, one analysis, exit),
   ours with a warm compilation cache against PyHessian, and our cold-cache process;
3. ``foundation/compile_profile.py --both``: programs, compile seconds and warm seconds per
   analysis on the demo MLP, with and without ``--xla_cpu_use_fusion_emitters=false``;
4. ``ntk/run.py`` and ``surface/bench_surface.py``: the small-call NTK and the 51 x 51 plane.

Then writes the "Latest run" block of ``benchmarks/hessian/RESULTS.md`` (between the markers)
from the JSON files, and rebuilds ``BENCHMARKS.md``'s per-area part
(``collect_results.py``). A run is marked **loaded** when the 1- or 5-minute load average was
above 1.5 at its start or its end (2 cores): its ratios are not headline figures. The end
reading includes the benchmark's own threads (up to 2), so it is conservative.

Usage (repository root)::

    python benchmarks/issue12.py            # everything (about 20 minutes on 2 cores)
    python benchmarks/issue12.py --only hessian whole compile
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BEGIN = "<!-- issue12: latest run (written by benchmarks/issue12.py) -->"
END = "<!-- /issue12 -->"

STEPS = {
    "hessian": ["hessian/bench_pyhessian.py", "--repeats", "5", "--out", "hessian/results.json"],
    "whole": ["hessian/whole_process.py", "--rounds", "5", "--out", "hessian/whole_process.json"],
    "compile": ["foundation/compile_profile.py", "--both", "--out", "foundation/compile_profile.json"],
    "ntk": ["ntk/run.py"],
    "surface": ["surface/bench_surface.py", "--rounds", "5"],
}


def loaded(load) -> bool:
    return max(load[0], load[1]) > 1.5


def json_load(d: dict):
    m = d.get("machine", {})
    a, b = m.get("loadavg_start"), m.get("loadavg_end")
    return (tuple(a), tuple(b)) if a and b else None


def fmt_load(a, b) -> str:
    tag = " — **loaded**: ratios not headline figures" if loaded(a) or loaded(b) else ""
    return f"load {a[0]:.2f} at start, {b[0]:.2f} at end{tag}"


def hessian_block(runs: dict) -> list[str]:
    lines = []
    path = HERE / "hessian" / "results.json"
    if path.exists():
        r = json.loads(path.read_text())
        lo = json_load(r) or runs.get("hessian") or ((0, 0), (0, 0))
        lines += [f"### Warm calls against PyHessian ({fmt_load(*lo)}) — `results.json`", "",
                  "| task | ours (s) | products | rel. error | PyHessian (s) | products | rel. error | ratio |",
                  "|---|---|---|---|---|---|---|---|"]
        for task, s in r["summary"].items():
            o, t = s["ours"], s.get("theirs")
            ratio = s.get("speedup") or next((v for k, v in s.items() if k.startswith("speedup_vs_")), None)
            against = "" if "theirs" in s else next((f" (vs {k[11:]})" for k in s if k.startswith("speedup_vs_")), "")
            tt = f"{t['time']:.3f} | {t['hvps']:.0f} | {t['rel_error']:.1e}" if t else "| |"
            lines.append(f"| {task}{against} | {o['time']:.3f} | {o['hvps']:.0f} | {o['rel_error']:.1e} | {tt} | "
                         f"{ratio:.2f} |" if ratio else f"| {task} | {o['time']:.3f} | {o['hvps']:.0f} | "
                         f"{o['rel_error']:.1e} | {tt} | |")
        c = r["cost"]
        ex = r["reference"]["arpack"].get("ours_exact_trace64")
        lines += ["", f"Cost: gradient {c['grad'] * 1e3:.2f} ms; product linearised {c['hvp_linearized'] * 1e3:.2f} ms, "
                  f"forward-over-reverse {c['hvp_fwd_over_rev'] * 1e3:.2f} ms; PyHessian product "
                  f"{c['pyhessian_hvp'] * 1e3:.2f} ms, gradient {c['pyhessian_grad'] * 1e3:.2f} ms."]
        if ex:
            lines.append(f"Float64 exact trace: ours {ex['value']:.6f} in {ex['time']:.2f} s (first call, compilation "
                         f"included; relative difference {ex['rel_diff']:.1e}) against the per-example-Jacobian "
                         f"reference {r['reference']['trace']:.6f} in {r['reference']['arpack']['trace_time']:.1f} s.")
        lines.append("")
    path = HERE / "hessian" / "whole_process.json"
    if path.exists():
        w = json.loads(path.read_text())
        lo = json_load(w) or runs.get("whole") or ((0, 0), (0, 0))
        lines += [f"### Whole processes against PyHessian ({fmt_load(*lo)}) — `whole_process.json`", "",
                  "| task | ours: process (s) | import | first call | warm call | PyHessian: process (s) | import | "
                  "call | ratio | our cold-cache process (s) | its first call |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for task, res in w["results"].items():
            m, c = res["median"], res["cold"]
            o, t = m["ours"], m["theirs"]
            lines.append(f"| {task} | {o['process_s']:.2f} | {o['import_s']:.2f} | {o['first_call_s']:.2f} | "
                         f"{o['warm_call_s']:.3f} | {t['process_s']:.2f} | {t['import_s']:.2f} | {t['first_call_s']:.2f} | "
                         f"{m['ratio_process']:.2f} | {c['process_s']:.2f} | {c['first_call_s']:.2f} |")
        lines.append("")
    path = HERE / "foundation" / "compile_profile.json"
    if path.exists():
        cp = json.loads(path.read_text())
        lo = json_load(cp) or runs.get("compile") or ((0, 0), (0, 0))
        lines += [f"### Compilation per analysis, demo MLP, cache off ({fmt_load(*lo)}) — "
                  "`../foundation/compile_profile.json`", "",
                  "| analysis | XLA flags | programs | backend compile (s) | trace (s) | lower (s) | first call (s) | "
                  "warm (s) |", "|---|---|---|---|---|---|---|---|"]
        for row in cp["rows"]:
            k = row["compile"]
            lines.append(f"| {row['analysis']} | {row['xla_flags'] or 'default'} | {k['programs']} | "
                         f"{k['backend_s']:.2f} | {k['trace_s']:.2f} | {k['lower_s']:.2f} | {row['first_s']:.2f} | "
                         f"{row['warm_s']:.3f} |")
        lines.append("")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=list(STEPS))
    args = ap.parse_args()
    runs = {}
    for name in args.only:
        a = os.getloadavg()
        print(f"== {name} (load {a[0]:.2f})", flush=True)
        subprocess.run([sys.executable, str(HERE / STEPS[name][0]), *[
            str(HERE / x) if x.endswith(".json") else x for x in STEPS[name][1:]]], cwd=REPO, check=True)
        runs[name] = (a, os.getloadavg())
        print(f"== {name} done (load {runs[name][1][0]:.2f})", flush=True)
    block = [BEGIN, f"## Latest run: {time.strftime('%Y-%m-%d %H:%M')} (benchmarks/issue12.py)", "",
             *hessian_block(runs), END]
    res = HERE / "hessian" / "RESULTS.md"
    text = res.read_text()
    if BEGIN in text:
        pre, rest = text.split(BEGIN, 1)
        post = rest.split(END, 1)[1] if END in rest else rest
        text = pre + "\n".join(block) + post
    else:  # first time: after the introduction (before the first "## " section)
        i = text.find("\n## ")
        text = (text[:i] + "\n\n" + "\n".join(block) + "\n" + text[i:]) if i >= 0 else text + "\n" + "\n".join(block)
    res.write_text(text)
    subprocess.run([sys.executable, str(HERE / "collect_results.py")], cwd=REPO, check=True)
    print("\n".join(block))
    return 0


if __name__ == "__main__":
    sys.exit(main())
