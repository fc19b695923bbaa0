"""Ctrl-C at many moments of ``landscape demo --quick``: clean exits, and reruns that resume.

For each of ``--trials`` moments spread from ``--first`` to ``--last`` seconds after the start
(start-up and the import of JAX, training and its compilation, every study section and the
report), the script starts::

    python -m landscape demo --quick --out DIR --no-progress

in a fresh directory, sends one SIGINT at that moment, and records the return code, the time
the process took to exit after the signal, whether ``Traceback`` appeared on stderr, the last
lines of stdout and stderr, and which sections ``results.json`` lists as finished. It then
reruns the same command in the same directory to completion and checks that it succeeds and
loads (prints ``(loaded)`` for) every section the interrupted run had finished.

A *crash* is a negative return code (killed by a signal: SIGSEGV is -11; an uncaught
KeyboardInterrupt re-raises SIGINT, -2) or a return code outside {0, 130}. A return code of 0
after the signal was sent means the interrupt was lost (counted as *ignored*). The table and a summary go to stdout; ``--json`` writes every
record. Slow (about 20 trials x (interrupt + rerun), ten minutes on two cores): outside the
test suite.

Usage (from the repository root, the package installed)::

    python benchmarks/interrupts/interrupt_demo.py                # fresh XLA cache per trial
    python benchmarks/interrupts/interrupt_demo.py --cache none   # no compilation cache
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SECTIONS = ("training", "hessian", "surface", "connect", "ntk")  # the quick demo's sections


PROGRESS = False  # --progress: with tqdm's bars (and their monitor thread)


def _command(out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "landscape", "demo", "--quick", "--out", str(out)]
    return cmd if PROGRESS else [*cmd, "--no-progress"]


def _tail(text: str, n: int = 1) -> str:
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    return " | ".join(lines[-n:])


def _finished_sections(out: Path) -> list[str]:
    path = out / "results.json"
    if not path.exists():
        return []
    try:
        return list(json.loads(path.read_text())["sections"])
    except (ValueError, KeyError):
        return ["<unreadable results.json>"]


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run(cmd, env, *, at: float | None, timeout: float, logdir: Path, name: str) -> dict:
    """Run ``cmd``; with ``at``, send one SIGINT ``at`` seconds after the start."""
    out_path, err_path = logdir / f"{name}.out", logdir / f"{name}.err"
    with open(out_path, "w") as fo, open(err_path, "w") as fe:
        t0 = time.perf_counter()
        # SIGINT as in a terminal, also when this script runs in the background (a shell
        # without job control starts background commands with SIGINT ignored, and an ignored
        # signal stays ignored across exec)
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, env=env, preexec_fn=_default_sigint)
        sent = None
        if at is not None:
            try:
                proc.wait(timeout=at)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGINT)
                sent = time.perf_counter() - t0
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = f"hung (killed after {timeout:.0f} s)"
            proc.wait()
        total = time.perf_counter() - t0
    out, err = out_path.read_text(), err_path.read_text()
    return {
        "rc": rc,
        "sent": sent,
        "exit_after": None if sent is None else total - sent,
        "total": total,
        "stdout": out,
        "stderr": err,
        "traceback": "Traceback" in err,
    }


def _calibrate(cmd, env, err_path: Path) -> tuple[float, list[tuple[float, str]]]:
    """One uninterrupted run: its duration and when each line reached stdout (the CLI flushes
    the end of training and every report section; earlier lines come with the first flush)."""
    stamps = []
    with open(err_path, "w") as fe:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=fe, env=env, text=True,
                                preexec_fn=_default_sigint)
        for line in proc.stdout:
            stamps.append((time.perf_counter() - t0, line.rstrip()))
        proc.wait()
        total = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"the uninterrupted run failed (rc {proc.returncode}); see {err_path}")
    return total, stamps


def _is_crash(rc) -> bool:
    return not isinstance(rc, int) or rc < 0 or rc not in (0, 130)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--first", type=float, default=0.5, help="first moment (s after start)")
    p.add_argument("--last", type=float, default=None,
                   help="last moment (s after start; default 92%% of a first, uninterrupted run, "
                        "which also times the phases)")
    p.add_argument("--cache", default="fresh",
                   help="JAX's persistent compilation cache: 'fresh' (default: a new directory "
                        "per trial, shared by its rerun, every program written: the cache writer "
                        "at its busiest), 'none' (no cache), or a directory shared by all runs")
    p.add_argument("--workdir", default=None, help="keep run directories and logs here")
    p.add_argument("--json", default=None, help="write every record to this file")
    p.add_argument("--no-rerun", action="store_true", help="interrupt only")
    p.add_argument("--progress", action="store_true",
                   help="run with progress bars (default --no-progress, as in the issue)")
    args = p.parse_args()
    global PROGRESS
    PROGRESS = args.progress

    env = dict(os.environ)
    env.pop("PYTHONUNBUFFERED", None)  # stdout to a file is block-buffered, as in a pipe
    env["PYTHONFAULTHANDLER"] = "1"  # a crash prints every thread's Python stack
    work = Path(args.workdir or tempfile.mkdtemp(prefix="landscape-interrupts-"))
    work.mkdir(parents=True, exist_ok=True)
    for k in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
              "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"):
        env.pop(k, None)
    if args.cache == "none":
        env["LANDSCAPE_COMPILATION_CACHE"] = "0"  # landscape's own default cache, if any, off
    else:
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
        if args.cache != "fresh":
            env["JAX_COMPILATION_CACHE_DIR"] = str(Path(args.cache).resolve())
    load_before = os.getloadavg()
    print(f"uptime before: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    print(f"work directory: {work}; compilation cache: {args.cache}")
    cal_out = work / "calibration"
    shutil.rmtree(cal_out, ignore_errors=True)
    if args.cache == "fresh":
        env["JAX_COMPILATION_CACHE_DIR"] = str(work / "calibration.xla")
        shutil.rmtree(env["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
    total, stamps = _calibrate(_command(cal_out), env, work / "calibration.err")
    print(f"uninterrupted run: {total:.1f} s; when lines reached stdout:")
    for t, line in stamps:
        if line.startswith(("  training ", "  hessian ", "  surface ", "  connect ", "  ntk ",
                            "summary:", "  report ")):
            print(f"  {t:5.1f} s  {line.strip()[:70]}")
    last = args.last if args.last is not None else 0.92 * total
    n = args.trials
    moments = [args.first + (last - args.first) * i / max(1, n - 1) for i in range(n)]
    records = []
    t_all = time.perf_counter()
    header = (f"{'#':>2} {'at s':>5} {'rc':>5} {'exit s':>6} {'tb':>2} {'msg':>3} {'saved':>5} "
              f"{'rerun':>5} {'loaded':>6} {'rerun s':>7}  last stdout line | last stderr line")
    print(header)
    for i, at in enumerate(moments):
        out = work / f"run{i:02d}"
        shutil.rmtree(out, ignore_errors=True)
        if args.cache == "fresh":
            env["JAX_COMPILATION_CACHE_DIR"] = str(work / f"run{i:02d}.xla")
            shutil.rmtree(env["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
        r = _run(_command(out), env, at=at, timeout=120, logdir=work, name=f"run{i:02d}")
        errs = [ln for ln in r["stderr"].splitlines() if ln.strip()]
        # the one-line message: the last thing on stderr, and the only line that says so
        r["message"] = (bool(errs) and errs[-1].startswith(("landscape: interrupted",
                                                            "landscape demo: interrupted"))
                        and sum("interrupted" in ln for ln in errs) == 1)
        r["at"] = at
        r["saved"] = _finished_sections(out)
        if not args.no_rerun:
            rr = _run(_command(out), env, at=None, timeout=300, logdir=work, name=f"run{i:02d}.rerun")
            loaded = [s for s in SECTIONS if re.search(rf"^  {s}\s.*\(loaded\)", rr["stdout"], re.M)]
            r["rerun"] = {"rc": rr["rc"], "total": rr["total"], "loaded": loaded,
                          "traceback": rr["traceback"], "stderr_tail": _tail(rr["stderr"], 3)}
            # resumes: succeeds, and every section the interrupted run finished is loaded
            r["resumed"] = rr["rc"] == 0 and set(r["saved"]) <= set(loaded)
        records.append(r)
        rer = r.get("rerun", {})
        line = f"{_tail(r['stdout'])[:40]} | {_tail(r['stderr'])}"
        exit_after = "" if r["exit_after"] is None else f"{r['exit_after']:.2f}"
        print(f"{i:2d} {at:5.1f} {r['rc']!s:>5} {exit_after:>6} "
              f"{'y' if r['traceback'] else '':>2} {'y' if r['message'] else '':>3} "
              f"{len(r['saved']):>5} "
              f"{rer.get('rc', '')!s:>5} {len(rer.get('loaded', [])):>6} "
              f"{rer.get('total', 0):7.1f}  {line[:160]}", flush=True)
    elapsed = time.perf_counter() - t_all
    load_after = os.getloadavg()
    crashes = [r for r in records if _is_crash(r["rc"])]
    tracebacks = [r for r in records if r["traceback"]]
    finished = [r for r in records if r["rc"] == 0 and r["sent"] is None]
    ignored = [r for r in records if r["rc"] == 0 and r["sent"] is not None]
    interrupted = [r for r in records if r["rc"] == 130]
    print()
    print(f"summary: {n} interrupts at {moments[0]:.1f} .. {moments[-1]:.1f} s; "
          f"{len(interrupted)} exited 130 ({sum(r['message'] for r in interrupted)} with the "
          f"one-line message), {len(finished)} finished before the signal, {len(ignored)} ignored "
          f"it (rc 0), "
          f"{len(crashes)} crashes (rc {sorted({str(r['rc']) for r in crashes}) or '-'}), "
          f"{len(tracebacks)} with a traceback")
    exits = sorted(r["exit_after"] for r in interrupted if r["exit_after"] is not None)
    if exits:
        print(f"  exit after the signal: median {exits[len(exits) // 2]:.2f} s, max {exits[-1]:.2f} s")
    if not args.no_rerun:
        resumed = [r for r in records if r.get("resumed")]
        print(f"  reruns: {len(resumed)}/{n} succeeded and loaded every finished section "
              f"(sections saved at the interrupt: {sum(len(r['saved']) for r in records)}, "
              f"loaded by the reruns: {sum(len(r['rerun']['loaded']) for r in records)})")
    print(f"  wall time {elapsed:.0f} s; load average before {load_before[0]:.2f} "
          f"{load_before[1]:.2f} {load_before[2]:.2f}, after {load_after[0]:.2f} "
          f"{load_after[1]:.2f} {load_after[2]:.2f}")
    print(f"uptime after: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    for r in crashes:
        print(f"\n--- crash at {r['at']:.1f} s (rc {r['rc']}), stderr tail:\n{_tail(r['stderr'], 40)}")
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1, default=str))
    ok = not crashes and (args.no_rerun or all(r.get("resumed") for r in records))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
