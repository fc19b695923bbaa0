"""The ``landscape`` command line (also ``python -m landscape``).

``landscape study CONFIG.toml`` trains the model a TOML config names and runs its analyses into
a run directory (results.json, figures/, report.html; :mod:`landscape.study`);
``landscape analyse RUN_DIR`` runs analyses on a saved run; ``landscape report RUN_DIR``
re-renders the report; ``landscape demo`` is the study of a built-in config. ``--help`` on each
explains every option with its default.

Ctrl-C (SIGINT) ends a command with exit code 130 and one line on stderr that names what is
saved (the finished sections) and the command that resumes; no traceback. Run as a program, the
process then ends with ``os._exit`` after flushing its output, without the interpreter's
shutdown. An interrupt leaves the compilation it interrupted running on XLA's thread pool, and
the shutdown would destroy the XLA client under it: a segfault in jaxlib (0.10.2), reproduced
without our code in ``benchmarks/interrupts/README.md``. Nothing is lost by skipping it: every
file a study writes is atomic (a temporary file, then a rename), and a section is complete on
disk once it ends. A bad config or input exits with status 2 and a one-line message.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import sys
import threading
from pathlib import Path

from landscape import _startup

DEFAULT_OUT = "landscape-runs/demo"
DISTRIBUTION = "landscape-ntk"  # pyproject.toml's [project] name
INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command ended by Ctrl-C

DESCRIPTION = (
    "The command line of landscape-ntk, a JAX toolkit for the loss-landscape geometry of "
    "neural networks (Hessian spectra, loss-surface slices, mode connectivity) and their neural "
    "tangent kernels. 'study' runs a study from a TOML config on your model or ours and writes "
    "results.json, figures and a self-contained report.html; 'analyse' runs analyses on a saved "
    "run; 'report' re-renders a report; 'demo' is the study of a built-in config (the default "
    "MLP on the embedded digits data). Nothing is downloaded."
)
EPILOG = (
    "Run 'landscape COMMAND --help' for a command's options (e.g. 'landscape demo --help'; "
    "'landscape study --print-config' writes a commented config). The Python API behind every "
    "analysis (its arguments, costs and results) is described in README.md at the root of the "
    "landscape-ntk source tree."
)


def _version() -> str:
    """The installed distribution's version, else ``landscape.__version__`` (a source tree
    that is not installed)."""
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        import landscape

        return getattr(landscape, "__version__", "unknown")


# ---------------------------------------------------------------------------------------------
# Ctrl-C
# ---------------------------------------------------------------------------------------------
class _Interrupts:
    """SIGINT while a command runs.

    The handler raises ``KeyboardInterrupt`` as Python's own does (so the toolkit's clean-ups
    run: temporary files of atomic writes removed, progress bars closed). Python cannot raise an
    exception out of a garbage-collection callback or a ``__del__`` method: a ``KeyboardInterrupt``
    raised there is printed as ``Exception ignored in: <function _xla_gc_callback ...>`` (JAX's
    callback, which runs at every collection) and the program carries on as if Ctrl-C had never
    been pressed. Such an interrupt is caught (``sys.unraisablehook``: nothing printed) and the
    signal sent again a moment later, when the callback is over; :meth:`check`, called between
    steps, is the backstop for any other code that swallows one. A second Ctrl-C while the first
    is being handled ends the process at once when ``hard`` (the command runs as the program),
    else raises again.
    """

    REDELIVER_S = 0.02  # after a swallowed interrupt: far longer than a GC callback runs

    def __init__(self, *, hard: bool):
        self.count = 0
        self.hard = hard
        self._old = None
        self._old_hook = None
        self._timer = None

    def _handler(self, signum, frame):
        self.count += 1
        if self.count > 1 and self.hard:
            _flush()
            os.write(2, b"\nlandscape: interrupted again; exiting now.\n")
            os._exit(INTERRUPTED)
        raise KeyboardInterrupt

    def _unraisable(self, info):
        if isinstance(info.exc_value, KeyboardInterrupt) and self.count:
            self.count -= 1  # the same Ctrl-C, delivered again: not a second one
            self._timer = threading.Timer(self.REDELIVER_S, os.kill, (os.getpid(), signal.SIGINT))
            self._timer.daemon = True
            self._timer.start()
            return
        self._old_hook(info)

    def check(self) -> None:
        if self.count:
            raise KeyboardInterrupt

    def __enter__(self):
        # only in place of Python's own handler: signals reach only the main thread, and a
        # SIGINT ignored by whoever started us (nohup, a background job) stays ignored
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._old = signal.signal(signal.SIGINT, self._handler)
            self._old_hook, sys.unraisablehook = sys.unraisablehook, self._unraisable
        return self

    def __exit__(self, *exc):
        if self._timer is not None:  # the command finished before the signal came again
            self._timer.cancel()
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            sys.unraisablehook = self._old_hook
        return False


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):  # closed or replaced
            stream.flush()


DEFAULT_STUDY_OUT = "landscape-runs/<config name>"
STUDY_DESCRIPTION = (
    "Run a study from a TOML config: train the model it names (one of ours, or your own "
    "factory 'package.module:function') on the data it names (an embedded set or .npz files), "
    "then run the analyses it lists (hessian, surface, connect, ntk, trainability, structure, "
    "skips) and write the run "
    "directory: results.json (every number with its settings and provenance), figures/ (PNG, "
    "and SVG for line plots) and report.html (one self-contained page). Each section is saved "
    "as it finishes: Ctrl-C exits with code 130 and says what is saved and the command that "
    "resumes; the rerun loads the finished sections, and a changed setting recomputes only the "
    "sections it affects. Start from 'landscape study --print-config > study.toml'. A bad config "
    "exits with status 2 and a message naming the key."
)
ANALYSE_DESCRIPTION = (
    "Run analyses on a saved run: a directory written by landscape.save_run (its model and "
    "data are read from its config.json when they are ours; otherwise pass --config with your "
    "model's factory and the data) or by a previous 'landscape study'. Results, figures and "
    "report.html go into the run directory (or --out). The second network of 'connect' is "
    "--other RUN_DIR, or trained here from seed + 1 with the config's [train] settings."
)
REPORT_DESCRIPTION = (
    "Write report.html again from a run directory's results.json and figures, without "
    "recomputing anything."
)
DEMO_DESCRIPTION = (
    "The study of a built-in config (print it with --config): the default MLP (64-256-256-10, "
    "ReLU, Adam, batch 64, 20 epochs, sharpness recorded during training) on the embedded "
    "digits data through every analysis (Hessian eigenvalues, trace and spectral density; 1-D "
    "and 2-D slices and the interpolation from initialisation; the barrier to a second network "
    "before and after weight matching; the empirical NTK and its convergence with width; the "
    "network at initialisation; the class structure of the Gauss-Newton matrix, lottery "
    "tickets and instability to SGD noise), and "
    "Li et al. 2018's comparison of the same small ResNet with and without skip connections and "
    "batch norm. Writes results.json, figures/ and report.html in --out. A few minutes on two "
    "CPU cores (--quick: tiny sizes, under a minute; --full: the paper-scale sizes). Ctrl-C "
    "exits with code 130 and says what is saved; the same command again resumes an interrupted "
    "study."
)


def _sizes(parser):
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true",
                   help="tiny sizes everywhere (a smoke test; default: the config's sizes; the "
                        "demo then leaves out its skips and structure sections)")
    g.add_argument("--full", action="store_true",
                   help="the paper-scale sizes for every size the config does not set")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (section lines and the summary are still printed)")


def _mode(args) -> str:
    return "quick" if args.quick else "full" if args.full else "default"


def _only(args):
    if not args.only:
        return None
    return [s.strip() for s in args.only.split(",") if s.strip()]


def _status(args, results: dict) -> int:
    """0, or 1 with one line on stderr when a section failed (the others are saved)."""
    failed = {n: e["values"].get("error", "") for n, e in results.get("sections", {}).items()
              if e.get("status") == "failed"}
    if not failed:
        return 0
    first = next(iter(failed.items()))
    print(f"landscape {args.command}: {len(failed)} section(s) failed ({', '.join(failed)}); the "
          f"first: {first[0]}: {first[1][:200]}. The other sections are saved; tracebacks are "
          "in RUN_DIR/errors.", file=sys.stderr, flush=True)
    return 1


def _study(args, interrupts):
    from landscape import study

    if args.print_config:
        sys.stdout.write(study.default_config_text())
        return 0
    if args.config is None:
        raise study.ConfigError("give a config file (landscape study CONFIG.toml), or "
                                "--print-config to write a commented default one.")
    cfg = study.load_config(args.config, mode=_mode(args))
    out = args.out or str(Path("landscape-runs") / Path(args.config).stem)
    return _status(args, study.run_study(cfg, out, only=_only(args), progress=not args.no_progress,
                                         command=args.command_line, log=_logger(interrupts)))


def _analyse(args, interrupts):
    from landscape import study

    return _status(args, study.analyse(args.run_dir, args.out, only=_only(args), other=args.other,
                                       config=args.config, data=args.data, mode=_mode(args),
                                       progress=not args.no_progress, command=args.command_line,
                                       log=_logger(interrupts)))


def _report(args, interrupts):
    from landscape import study

    path = study.render_report(args.run_dir)
    print(f"landscape report: wrote {path.resolve()}")
    return 0


def _demo(args, interrupts):
    from landscape import study

    if args.config:
        sys.stdout.write(study.demo_config_text())
        return 0
    cfg = study.demo_config(_mode(args))
    only = _only(args)
    if only is None and args.quick:  # the four ResNets' compilation alone exceeds a minute
        only = [s for s in cfg.sections if s not in ("skips", "structure")]
        print("landscape demo --quick: the skips section (four ResNets) and the structure "
              "section (a dozen retrainings) are left out of the smoke test; --quick --only "
              "skips,structure runs them")
    return _status(args, study.run_study(cfg, args.out, only=only, progress=not args.no_progress,
                                         command=args.command_line, log=_logger(interrupts)))


def _logger(interrupts):
    def log(*parts):
        print(*parts, flush=True)  # each line as it happens, also into a pipe
        interrupts.check()  # an interrupt a callback swallowed stops here
    return log


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"landscape {_version()}",
                        help="print 'landscape <version>' and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                title="commands", help="one of:")
    st = sub.add_parser("study", help="train a model from a TOML config and run its analyses "
                                      "into a report", description=STUDY_DESCRIPTION)
    st.add_argument("config", nargs="?", metavar="CONFIG.toml",
                    help="the study config (see --print-config)")
    st.add_argument("--out", default=None,
                    help=f"the run directory (default {DEFAULT_STUDY_OUT}, the config file's "
                         "name without .toml); the same directory again resumes")
    st.add_argument("--only", default=None, metavar="A,B",
                    help="run only these analyses (comma-separated, from hessian, surface, "
                         "connect, ntk, trainability, structure, skips; 'training' trains only; default: the config's "
                         "analyses.run); the other sections already in results.json are kept "
                         "while still valid")
    st.add_argument("--print-config", action="store_true",
                    help="write the fully commented default config to standard output and exit")
    _sizes(st)
    an = sub.add_parser("analyse", aliases=["analyze"],
                        help="run analyses on a saved run directory",
                        description=ANALYSE_DESCRIPTION)
    an.add_argument("run_dir", metavar="RUN_DIR", help="a run saved by landscape.save_run or by "
                                                       "landscape study")
    an.add_argument("--only", default=None, metavar="A,B",
                    help="the analyses (default: hessian, surface, connect, ntk; or the saved "
                         "study's list)")
    an.add_argument("--other", default=None, metavar="RUN_DIR",
                    help="the second network of connect (default: trained here from seed + 1, "
                         "which needs training settings: a study directory or --config)")
    an.add_argument("--config", default=None, metavar="CONFIG.toml",
                    help="a study config for what the run does not record (your model's "
                         "factory, the data, analysis sizes, training settings for connect); "
                         "default: the run's own records")
    an.add_argument("--data", default=None, metavar="NAME",
                    help="the data set the run was trained on (digits, mnist1d, teacher), when "
                         "the run does not record it (default: the run's record)")
    an.add_argument("--out", default=None,
                    help="where results.json, figures and report.html go (default RUN_DIR)")
    _sizes(an)
    rp = sub.add_parser("report", help="re-render report.html from saved results",
                        description=REPORT_DESCRIPTION)
    rp.add_argument("run_dir", metavar="RUN_DIR", help="a directory with results.json")
    demo = sub.add_parser(
        "demo",
        help="the built-in study: the default MLP on the embedded digits data through every "
             "analysis, and a ResNet with and without skips",
        description=DEMO_DESCRIPTION,
    )
    demo.add_argument("--out", default=DEFAULT_OUT,
                      help=f"the run directory (default {DEFAULT_OUT}); the same directory again "
                           "resumes an interrupted study")
    demo.add_argument("--config", action="store_true",
                      help="print the demo's config (a study config to copy and edit) and exit")
    demo.add_argument("--only", default=None, metavar="A,B",
                      help="run only these analyses (default: all: hessian, surface, connect, "
                           "ntk, trainability, structure, skips)")
    _sizes(demo)
    return parser


_COMMANDS = {"study": _study, "analyse": _analyse, "analyze": _analyse, "report": _report,
             "demo": _demo}


def main(argv: list[str] | None = None, *, prog: str = "landscape") -> int:
    """Run the command line ``argv`` (default: the process's own, ``sys.argv[1:]``).

    Returns the exit code: 0, or 130 after Ctrl-C (with a one-line message on stderr naming
    what is saved and the command that resumes). With ``argv=None`` the call *is* the program
    (the ``landscape`` script, ``python -m landscape``): an interrupted run then ends the
    process itself with ``os._exit(130)`` once its output is flushed, skipping the
    interpreter's shutdown (see the module docstring).
    """
    as_program = argv is None
    args_list = sys.argv[1:] if argv is None else list(argv)
    args = _parser(prog).parse_args(args_list)
    args.command_line = shlex.join([*shlex.split(prog), *args_list])
    # JAX and the foundation (the package import skips them on the command line, so that --help
    # and --version need neither), still under the start-up guard
    import landscape

    landscape._load_foundation()
    _startup.release()  # the start-up guard hands Ctrl-C over to the command's handler
    from landscape import study

    with _Interrupts(hard=as_program) as interrupts:
        try:
            return _COMMANDS[args.command](args, interrupts)
        except study.ConfigError as e:
            _flush()
            print(f"landscape {args.command}: error: {e}", file=sys.stderr, flush=True)
            return 2
        except KeyboardInterrupt as e:
            _flush()
            if isinstance(e, study.StudyInterrupted):
                study.print_interrupted(e, args.command_line)
            else:
                print(f"\nlandscape {args.command}: interrupted before anything was saved; "
                      f"start again with: {args.command_line}", file=sys.stderr, flush=True)
            if as_program:
                _flush()
                os._exit(INTERRUPTED)
            return INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(prog="python -m landscape.cli"))
