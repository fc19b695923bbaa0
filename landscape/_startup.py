"""Ctrl-C while the ``landscape`` command is starting up (importing JAX and the foundation, about
1.2 s, which :func:`landscape.cli.main` does before it installs its own handler): one line and
exit code 130, instead of Python's traceback or a lost interrupt.

Importing this module (the package's first import) installs the guard, but only when the process
is the command line (the ``landscape`` script or ``python -m landscape``) and only in place of
Python's own handler: a library user's import, a notebook and a SIGINT ignored by whoever started
the process (nohup) are left alone. Nothing has been computed or saved yet, so the guard ends the
process at once (``os._exit``: see :mod:`landscape.cli` for why not a normal exit).
:func:`release` hands Ctrl-C back before the command installs its own handler. The package
import asks :func:`_is_command_line` too: the command line imports the package without the
foundation (``landscape --help`` and ``--version`` need no JAX).
"""

from __future__ import annotations

import os
import signal
import sys
import threading

_INSTALLED = False


def _is_command_line() -> bool:
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if name in ("landscape", "landscape.exe", "landscape-script.py"):
        return True
    orig = list(getattr(sys, "orig_argv", ()))
    # the interpreter's own options only (``python my_script.py -m landscape`` is a script)
    orig = orig[: max(len(orig) - len(sys.argv) + 1, 0)] if sys.argv else orig
    if "-m" in orig:
        i = orig.index("-m")
        return i + 1 < len(orig) and orig[i + 1] in ("landscape", "landscape.cli")
    return False


def _handler(signum, frame):  # pragma: no cover - runs in the command-line process
    os.write(2, b"\nlandscape: interrupted while starting up; nothing was computed or saved.\n")
    os._exit(130)


def guard() -> bool:
    """Install the start-up handler (see the module docstring); whether it was installed."""
    global _INSTALLED
    if (_INSTALLED or not _is_command_line()
            or threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        return False
    signal.signal(signal.SIGINT, _handler)
    _INSTALLED = True
    return True


def release() -> None:
    """Give Ctrl-C back to Python's own handler (before the command installs its own)."""
    global _INSTALLED
    if _INSTALLED and signal.getsignal(signal.SIGINT) is _handler:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    _INSTALLED = False


guard()
