"""``fleetwatch models ...``: the model registry, thresholds and shadow versions."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from fleetwatch.cli.parser import Command
from fleetwatch.config import Settings
from fleetwatch.errors import FleetwatchError

ACTIONS = (
    "list",
    "show",
    "activate",
    "promote",
    "rollback",
    "unshadow",
    "set-threshold",
    "compare",
    "pack",
    "prune",
)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from fleetwatch.output import emit_record, emit_table
    from fleetwatch.scoring.pack import ModelPack, refresh_quietly
    from fleetwatch.scoring.registry import ModelRegistry

    layout = settings.layout
    layout.require()
    registry = ModelRegistry(layout.store)
    action = args.action
    if (action in ("list", "pack", "prune") and args.version is not None) or (
        action in ("list", "prune") and args.device is not None
    ):
        extra = " ".join(v for v in (args.device, args.version) if v)
        raise FleetwatchError(
            f"`models {action}` takes no {extra!r}: see `fleetwatch models --help`"
        )
    if action != "list" and action != "compare" and args.format == "csv":
        raise FleetwatchError(
            f"`models {action}` has no CSV form (a manifest is a document): use --format json"
        )
    if action == "list":
        columns = [
            "device_id",
            "active",
            "shadow",
            "versions",
            "kind",
            "threshold",
            "trained_until",
        ]
        sys.stdout.write(emit_table(registry.overview(), columns, args.format))
        return 0
    if action == "pack":
        pack = ModelPack.open(layout.model_pack, registry)
        packed = pack.refresh([args.device] if args.device else None)
        pack.compact()
        record = {"packed_now": packed, "in_pack": len(pack), "folder": str(pack.folder)}
        emit_record("fleetwatch models pack", record, args.format)
        return 0
    if action == "prune":
        if args.keep is None:
            raise FleetwatchError("`models prune` needs --keep N: how many newest versions to keep")
        result = registry.prune(args.keep, dry_run=args.dry_run).as_record()
        if args.format == "text":
            del result["forgotten"], result["deleted_runs"]
        emit_record("fleetwatch models prune", result, args.format)
        return 0
    if not args.device:
        raise FleetwatchError(f"`models {action}` needs a device id: models {action} ID")
    device = args.device
    if action == "show":
        print(json.dumps(registry.describe(device, args.version), indent=2))
    elif action == "activate":
        if not args.version:
            raise FleetwatchError("`models activate` needs a version: models activate ID v0002")
        if args.shadow:
            registry.set_shadow(device, args.version)
            print(f"{device}: {args.version} is in shadow (scored next to the active version)")
        else:
            registry.activate(device, args.version)
            print(f"{device}: {args.version} is active")
    elif action == "promote":
        print(f"{device}: {registry.promote(device)} (was in shadow) is active")
    elif action == "unshadow":
        cleared = registry.clear_shadow(device)
        print(f"{device}: " + (f"{cleared} is no longer in shadow" if cleared else "no shadow"))
    elif action == "rollback":
        print(f"{device}: rolled back to {registry.rollback(device)}")
    elif action == "set-threshold":
        _set_threshold(registry, device, args)
    elif action == "compare":
        record, differing = _compare(settings, device, args.limit)
        if args.format == "text":
            emit_record("fleetwatch models compare", record, "text")
            sys.stdout.write(emit_table(differing, list(_DIFFERING), "text"))
        else:
            emit_record(
                "fleetwatch models compare", {**record, "differing": differing}, args.format
            )
        return 0
    if action in ("activate", "promote", "rollback", "set-threshold"):
        refresh_quietly(ModelPack.open(layout.model_pack, registry), [device])
    return 0


def _set_threshold(registry: Any, device: str, args: argparse.Namespace) -> None:
    from fleetwatch.scoring.calibration import Calibration, recalibrated
    from fleetwatch.scoring.registry import check_current

    if (args.value is None) == (args.target_far is None):
        raise FleetwatchError(
            "give the new threshold as --value SCORE or --target-far RATE (one of them)"
        )
    version = args.version or registry.active_version(device)
    if version is None:
        raise FleetwatchError(f"{device} has no active model; train one first")
    model = registry.get(device, version)
    check_current(model)
    current = Calibration.from_manifest(model.manifest["calibration"])
    if args.value is not None:
        if not math.isfinite(args.value):
            raise FleetwatchError(
                f"--value {args.value}: a threshold must be a finite score (e.g. -4.5)"
            )
        calibration = Calibration(
            args.value, current.tail_scale, current.target_far, "set by hand", current.held_out
        )
    else:
        if not 0 < args.target_far < 1:
            raise FleetwatchError("--target-far must be between 0 and 1 (e.g. 0.001)")
        calibration = recalibrated(current, args.target_far)
    saved = registry.with_threshold(device, version, calibration)
    print(
        f"{device}: {saved.version} (= {version} with threshold {calibration.threshold:.6g}, "
        f"was {current.threshold:.6g}) is active; `models rollback {device}` undoes it"
    )


_DIFFERING = ("window_start", "active", "shadow", "active_normalized", "shadow_normalized")


def _compare(
    settings: Settings, device: str, limit: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """How the version in shadow's anomalies differ from the active version's, over the
    windows it scored."""
    from fleetwatch.storage.duck import connect, has_table
    from fleetwatch.telemetry import is_valid_name

    if not is_valid_name(device):
        raise FleetwatchError(f"device id {device!r} is not 1-64 of [A-Za-z0-9_.-]")
    layout = settings.layout
    if not layout.database.exists():
        raise FleetwatchError(f"no scores yet in {layout.database}: run `fleetwatch score` first")
    with connect(layout.database, read_only=True) as connection:
        if not has_table(connection, "shadow_scores"):
            rows: list[tuple[Any, ...]] = []
        else:
            rows = connection.execute(
                "SELECT s.window_start, coalesce(a.is_anomaly, false), s.is_anomaly, "
                "a.score_normalized, s.score_normalized, a.model_version, s.model_version "
                "FROM shadow_scores s LEFT JOIN scores a "
                "ON a.device_id = s.device_id AND a.window_start = s.window_start "
                "WHERE s.device_id = ? ORDER BY s.window_start",
                [device],
            ).fetchall()
    if not rows:
        raise FleetwatchError(
            f"{device} has no shadow scores: put a version in shadow (models activate {device} "
            "VERSION --shadow), then let scoring run"
        )
    active = sum(1 for r in rows if r[1])
    shadow = sum(1 for r in rows if r[2])
    both = sum(1 for r in rows if r[1] and r[2])
    record = {
        "device_id": device,
        "active_versions": ",".join(sorted({r[5] for r in rows if r[5]})) or None,
        "shadow_versions": ",".join(sorted({r[6] for r in rows if r[6]})),
        "windows_compared": len(rows),
        "from": rows[0][0].isoformat(),
        "until": rows[-1][0].isoformat(),
        "anomalies_active": active,
        "anomalies_shadow": shadow,
        "anomalies_both": both,
        "only_active": active - both,
        "only_shadow": shadow - both,
    }
    differing = [
        {
            "window_start": r[0].isoformat(),
            "active": bool(r[1]),
            "shadow": bool(r[2]),
            "active_normalized": None if r[3] is None else round(r[3], 3),
            "shadow_normalized": None if r[4] is None else round(r[4], 3),
        }
        for r in rows
        if bool(r[1]) != bool(r[2])
    ][:limit]
    return record, differing


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=ACTIONS)
    parser.add_argument("device", nargs="?", help="device id")
    parser.add_argument("version", nargs="?", help="version, e.g. v0002")
    parser.add_argument(
        "--shadow", action="store_true", help="activate: score it next to the active version"
    )
    parser.add_argument("--value", type=float, help="set-threshold: this score")
    parser.add_argument(
        "--target-far", type=float, help="set-threshold: recompute for this false-alarm rate"
    )
    parser.add_argument("--limit", type=int, default=20, help="compare: differing windows shown")
    parser.add_argument(
        "--keep",
        type=int,
        help="prune: the newest versions kept a device (and its active one and its shadow)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="prune: say what would go, change nothing"
    )
    parser.add_argument("--format", choices=["text", "json", "csv"], default="text")


COMMAND = Command(
    "models",
    "list, show, activate, shadow, promote, roll back or prune model versions; set thresholds",
    """
    fleetwatch models list
    fleetwatch models show pump-0001            # manifest, sha256 verified
    fleetwatch models activate pump-0001 v0002
    fleetwatch models activate pump-0001 v0003 --shadow   # scored next to it, never alerting
    fleetwatch models compare pump-0001         # how the shadow's anomalies differ
    fleetwatch models promote pump-0001         # the version in shadow becomes active
    fleetwatch models set-threshold pump-0001 --target-far 0.0001
    fleetwatch models set-threshold pump-0001 --value -4.5
    fleetwatch models rollback pump-0001
    fleetwatch models pack                      # after copying models in by hand
    fleetwatch models prune --keep 3 --dry-run  # what older versions would go
    """,
    {"": "*"},
    run,
    arguments,
)
