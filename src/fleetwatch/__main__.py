"""``fleetwatch`` and ``python -m fleetwatch``: a SIGTERM while the program is still loading (a
second or so of imports) is a clean stop, not a kill; then the CLI takes over."""

from __future__ import annotations

import signal
import sys
from typing import NoReturn


def _stopped(signum: int, frame: object) -> None:
    sys.exit(0)


def entry() -> NoReturn:
    """The ``fleetwatch`` command."""
    signal.signal(signal.SIGTERM, _stopped)  # until `fleetwatch.cli` installs its own
    from fleetwatch.cli import run  # after the handler: loading takes a second

    run()


if __name__ == "__main__":
    entry()
