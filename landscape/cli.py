"""The ``landscape`` command line (also ``python -m landscape``).

``landscape demo``: train the default model (MLP 64-256-256-10, ReLU, Adam) on the embedded
digits data, print a summary, write the run directory, then analyse the trained network with
every part of the toolkit (:mod:`landscape.report`: Hessian eigenvalues, trace and density, a
loss-surface slice and the interpolation from initialisation, the barrier between two seeds
before and after weight matching, the empirical NTK before and after training) and write
``report.json`` and ``report.png`` next to the run. ``--quick`` runs a few steps and tiny
analyses (for tests); ``--no-report`` stops after training.

Ctrl-C (SIGINT) ends the command with exit code 130 and one line on stderr that names what is
saved (the run directory, the finished report sections) and the command that resumes; no
traceback. Run as a program, the process then ends with ``os._exit`` after flushing its output,
without the interpreter's shutdown. An interrupt leaves the compilation it interrupted running on
XLA's thread pool, and the shutdown would destroy the XLA client under it: a segfault in jaxlib
(0.10.2), reproduced without our code in ``benchmarks/interrupts/README.md``. Nothing is lost by
skipping it: every file the demo writes is atomic (a temporary file, then a rename), and an entry
is complete on disk once its section ends.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

from landscape import _startup

DEFAULT_OUT = "landscape-runs/demo"
DISTRIBUTION = "landscape-ntk"  # pyproject.toml's [project] name
INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command ended by Ctrl-C

DESCRIPTION = (
    "The command line of landscape-ntk, a JAX toolkit for the loss-landscape geometry of "
    "neural networks (Hessian spectra, loss-surface slices, mode connectivity) and their neural "
    "tangent kernels. It has one command today, 'demo': it trains the default MLP "
    "(64-256-256-10, ReLU, Adam) on the embedded scikit-learn digits data, saves the run, and "
    "writes a report of every analysis (Hessian eigenvalues, trace and spectral density, a "
    "loss-surface slice and the interpolation from initialisation, the loss barrier between two "
    "seeds before and after weight matching, the empirical NTK before and after training) as "
    "report.json and report.png in the run directory. Nothing is downloaded."
)
EPILOG = (
    "Run 'landscape demo --help' for the demo's options. The Python API behind every analysis "
    "(its arguments, costs and results) is described in README.md at the root of the "
    "landscape-ntk source tree."
)
DEMO_DESCRIPTION = (
    "Train the default MLP (64-256-256-10, ReLU, Adam, batch 64) on the embedded digits data "
    "(or MNIST-1D), print a summary and save the run (parameters, history, config, provenance) "
    "in --out; then analyse the trained network with every part of the toolkit and write "
    "report.json, report.png and each section's result (in --out/report). About 30 s on two CPU "
    "cores (--quick: one epoch and tiny analyses, about 25 s, mostly compilation). Ctrl-C stops "
    "it with exit code 130 and says what is saved; the same command run again loads the "
    "finished report sections instead of recomputing them (training, a few seconds, is redone)."
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


class _Progress:
    """What the demo has saved so far (for the message of an interrupted run)."""

    def __init__(self, out: Path):
        self.out = out
        self.run_saved = False
        self.sections: list[str] = []
        self.num_sections: int | None = None
        self.report_done = False

    def message(self, command: str) -> str:
        """The one line an interrupted demo prints."""
        where = self.out.resolve()
        if not self.run_saved:
            return (f"landscape demo: interrupted before the trained run was saved (training "
                    f"does not resume); nothing is saved yet in {where}; start again with: "
                    f"{command}")
        if self.report_done:
            saved = "the trained run and its full report"
        else:
            total = f"/{self.num_sections}" if self.num_sections else ""
            names = f" ({', '.join(self.sections)})" if self.sections else ""
            saved = f"the trained run and {len(self.sections)}{total} report sections{names}"
        return f"landscape demo: interrupted; saved {saved} in {where}; resume with: {command}"


def _demo(args, interrupts: _Interrupts, progress: _Progress) -> int:
    t0 = time.perf_counter()
    import jax
    import optax

    import landscape
    from landscape.runs import save_run
    from landscape.train import train

    ds = landscape.load_data(args.data)
    model = landscape.make_model(
        "mlp",
        input_shape=ds.input_shape,
        num_outputs=ds.num_outputs,
        hidden=(256, 256),
        seed=args.seed,
    )
    num_epochs = 1 if args.quick else args.epochs
    print(f"landscape demo: {ds!r}")
    print(
        f"model: MLP {ds.input_shape[0]}-256-256-{ds.num_outputs} (ReLU), {model.num_params} parameters, "
        f"devices: {jax.device_count()} x {jax.default_backend()}"
    )

    def fit(seed, show):
        m = model if seed == args.seed else landscape.make_model(
            "mlp", input_shape=ds.input_shape, num_outputs=ds.num_outputs, hidden=(256, 256), seed=seed
        )
        return train(
            m,
            ds.train,
            test_data=ds.test,
            optimizer=optax.adam(args.lr),
            optimizer_config={"name": "adam", "learning_rate": args.lr},  # recorded in the run
            num_epochs=num_epochs,
            batch_size=64,
            seed=seed,
            progress=show,
            snapshot_steps=None,
        )

    result = fit(args.seed, not args.no_progress)
    h = result.history
    out = save_run(args.out, result, config={"data": ds.spec, "command": "landscape demo"})
    progress.run_saved = True
    elapsed = time.perf_counter() - t0
    print()
    print("summary")
    print(
        f"  steps            {int(h['step'][-1])} ({num_epochs} epochs of {len(ds.train['y']) // 64} steps)"
    )
    print(f"  train loss       {h['train_loss'][0]:.4f} -> {h['train_loss'][-1]:.4f}")
    print(f"  test loss        {h['test_loss'][0]:.4f} -> {h['test_loss'][-1]:.4f}")
    print(f"  train accuracy   {h['train_accuracy'][-1]:.4f}")
    print(f"  test accuracy    {h['test_accuracy'][-1]:.4f}")
    print(f"  parameters       {model.num_params}")
    print(
        f"  training time    {result.elapsed:.1f} s (total {elapsed:.1f} s incl. start-up and compilation)"
    )
    print(f"  run directory    {Path(out).resolve()}", flush=True)
    interrupts.check()  # a Ctrl-C during training that a callback swallowed stops here
    if args.no_report:
        progress.report_done = True
        return 0
    from landscape.report import SECTIONS, ReportSizes, analysis_report

    progress.num_sections = len(SECTIONS)

    def log(*parts):
        print(*parts, flush=True)  # each section as it finishes, also into a pipe
        interrupts.check()  # an interrupt a callback swallowed stops here

    def on_section(name):
        progress.sections.append(name)

    t1 = time.perf_counter()
    analysis_report(
        out,
        result,
        ds,
        init_params=model.params,
        train_other=lambda seed: fit(seed, False),
        sizes=ReportSizes.quick() if args.quick else ReportSizes(),
        seed=args.seed,
        log=log,
        on_section=on_section,
    )
    progress.report_done = True
    print(f"  report time      {time.perf_counter() - t1:.1f} s -> {Path(out).resolve() / 'report.json'}")
    return 0


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"landscape {_version()}",
                        help="print 'landscape <version>' and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                title="commands", help="one of:")
    demo = sub.add_parser(
        "demo",
        help="train the default MLP on the embedded digits data and write a report of every analysis",
        description=DEMO_DESCRIPTION,
    )
    demo.add_argument("--quick", action="store_true",
                      help="one epoch and tiny analyses: a smoke test of every part (about 25 s)")
    demo.add_argument("--out", default=DEFAULT_OUT,
                      help=f"the run directory (default {DEFAULT_OUT}); the same directory again "
                           "resumes an interrupted report")
    demo.add_argument("--data", default="digits", choices=["digits", "mnist1d"],
                      help="embedded data set (default digits)")
    demo.add_argument("--epochs", type=int, default=20,
                      help="training epochs (default 20; --quick trains one)")
    demo.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    demo.add_argument("--seed", type=int, default=0,
                      help="seed of initialisation, data order and the report's random choices "
                           "(default 0)")
    demo.add_argument("--no-progress", action="store_true",
                      help="no progress bars (the summary and report lines are still printed)")
    demo.add_argument("--no-report", action="store_true",
                      help="train and save the run only, no analyses")
    return parser


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
    if args.command != "demo":  # pragma: no cover
        return 2
    progress = _Progress(Path(args.out))
    # JAX and the foundation (the package import skips them on the command line, so that --help
    # and --version need neither), still under the start-up guard
    import landscape

    landscape._load_foundation()
    _startup.release()  # the start-up guard hands Ctrl-C over to the command's handler
    with _Interrupts(hard=as_program) as interrupts:
        try:
            code = _demo(args, interrupts, progress)
        except KeyboardInterrupt:
            _flush()
            command = shlex.join([*shlex.split(prog), *args_list])
            print(f"\n{progress.message(command)}", file=sys.stderr, flush=True)
            if as_program:
                _flush()
                os._exit(INTERRUPTED)
            return INTERRUPTED
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(prog="python -m landscape.cli"))
