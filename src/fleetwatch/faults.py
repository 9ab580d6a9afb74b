"""Fault injection for the fault suite (``tests/faults/``): named points where a process can be
told, through the environment, to kill itself (``SIGKILL``: no clean-up, no flush) or stop
(``SIGSTOP``, as a paused machine) on its N-th pass.

``FLEETWATCH_FAULTS="compaction.published:2"`` kills the process the second time it reaches
``point("compaction.published")``; ``...=name:1:stop`` stops it instead. Unset (always, outside
the suite), :func:`point` is one check of an empty tuple. Each point sits where a crash would
test a guarantee: between writing data and recording it, mid-pass, mid-publish.
"""

from __future__ import annotations

import os
import signal
from typing import Final


def _parse(text: str) -> tuple[tuple[str, int, int], ...]:
    armed = []
    for item in text.split(","):
        parts = item.strip().split(":")
        if not parts[0]:
            continue
        count = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 1
        action = signal.SIGSTOP if len(parts) > 2 and parts[2] == "stop" else signal.SIGKILL
        armed.append((parts[0], count, int(action)))
    return tuple(armed)


ARMED: Final = _parse(os.environ.get("FLEETWATCH_FAULTS", ""))
_hits: dict[str, int] = {}


def point(name: str) -> None:
    """A place where the fault suite may stop this process (a no-op unless armed)."""
    if not ARMED:
        return
    _hits[name] = hits = _hits.get(name, 0) + 1
    for armed, count, action in ARMED:
        if armed == name and count == hits:
            os.kill(os.getpid(), action)
