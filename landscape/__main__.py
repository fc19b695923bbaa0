"""``python -m landscape``: the ``landscape`` command (:func:`landscape.cli.main`)."""

import sys

from landscape.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m landscape"))
