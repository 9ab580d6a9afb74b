"""Alerts survive a crash in the middle of a delivery pass: each alert is marked as its sink
takes it, so a crash repeats at most the one alert it interrupted (issue 23, defect 3: a pass
used to mark what it sent only at its end, and a kill repeated up to 13 alerts)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from fleetwatch.alerts import Alerter, read_alerts
from fleetwatch.config import Settings
from fleetwatch.scheduler.service import CatchUp
from fleetwatch.scoring.train import train
from tests.unit.scoring.conftest import (
    DEVICES,
    T0,
    set_watermark,
    settings_for,
    synthetic_windows,
    write_windows,
)


class Crash(BaseException):
    """The process dying (kill -9) right after a sink took an alert."""


@pytest.fixture
def scored(tmp_path: Path) -> Settings:
    root = tmp_path / "data"
    frame = synthetic_windows(hours=3)
    for device in DEVICES[4:]:  # more incidents: a spike in three windows of four pumps
        for minute in (135, 150, 170):
            rows = (frame["device_id"] == device) & (
                frame["window_start"] == T0 + timedelta(minutes=minute)
            )
            frame.loc[rows, ["mean", "min", "max"]] += 50
    write_windows(root, frame)
    settings = settings_for(root)
    train(settings, T0, T0 + timedelta(hours=2), DEVICES)
    set_watermark(settings, T0 + timedelta(hours=3))
    CatchUp(settings)()
    jsonl = tmp_path / "alerts.jsonl"
    return replace(settings, alerts=replace(settings.alerts, jsonl=jsonl, silent=False))


def crashing_after(alerter: Alerter, deliveries: int, monkeypatch: pytest.MonkeyPatch) -> None:
    sent = 0
    real = alerter._send  # noqa: SLF001 - the test plays the crash at the sink

    def send(sink: str, payload: dict[str, Any]) -> str | None:
        nonlocal sent
        outcome = real(sink, payload)
        sent += 1
        if sent == deliveries:
            raise Crash
        return outcome

    monkeypatch.setattr(alerter, "_send", send)


@pytest.mark.parametrize("crash_after", [1, 3, 5])
def test_a_crash_mid_delivery_repeats_at_most_one_alert(
    scored: Settings, monkeypatch: pytest.MonkeyPatch, crash_after: int
) -> None:
    from contextlib import nullcontext

    alerter = Alerter(scored, nullcontext)
    crashing_after(alerter, crash_after, monkeypatch)
    with pytest.raises(Crash):
        alerter()
    restarted = Alerter(scored, nullcontext)  # a new process
    restarted()
    restarted()  # and a later tick sends nothing again
    assert scored.alerts.jsonl is not None
    sent = Counter(alert["alert_id"] for alert in read_alerts(scored.alerts.jsonl))
    assert len(sent) > crash_after + 2  # every incident alerted
    assert sum(sent.values()) - len(sent) <= 1, sent  # at most one repeat for the one crash
