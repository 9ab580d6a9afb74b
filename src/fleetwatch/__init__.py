"""fleetwatch: watch a fleet of IoT devices.

Telemetry flows from Kafka through event-time windows (Parquet) into hourly per-device anomaly
scoring (DuckDB). See the README for the architecture and the CLI.
"""

from __future__ import annotations

__version__ = "0.1.0"
