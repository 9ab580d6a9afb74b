from __future__ import annotations

from fleetwatch.cli import main

raise SystemExit(main())
