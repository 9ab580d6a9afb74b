from __future__ import annotations

from fleetwatch.cli import run

run()
