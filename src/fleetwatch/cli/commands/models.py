"""``fleetwatch models list|show|activate|rollback|pack``: the model registry."""

from __future__ import annotations

import argparse
import json
import sys

from fleetwatch.cli.parser import Command
from fleetwatch.config import Settings
from fleetwatch.errors import FleetwatchError
from fleetwatch.output import emit_record, emit_table


def run(args: argparse.Namespace, settings: Settings) -> int:
    from fleetwatch.scoring.registry import ModelRegistry
    from fleetwatch.storage.layout import DataLayout

    layout = DataLayout(settings.data_dir)
    registry = ModelRegistry(layout.models)
    if args.action == "list":
        columns = ["device_id", "active", "versions", "kind", "trained_until"]
        sys.stdout.write(emit_table(registry.overview(), columns, args.format))
        return 0
    if args.action == "pack":
        from fleetwatch.scoring.pack import ModelPack

        pack = ModelPack.open(layout.model_pack, registry)
        packed = pack.refresh([args.device] if args.device else None)
        pack.compact()
        record = {"packed_now": packed, "in_pack": len(pack), "folder": str(pack.folder)}
        emit_record("fleetwatch models pack", record, args.format)
        return 0
    if not args.device:
        raise FleetwatchError(f"`models {args.action}` needs a device id: models {args.action} ID")
    if args.action == "show":
        print(json.dumps(registry.describe(args.device, args.version), indent=2))
    elif args.action == "activate":
        if not args.version:
            raise FleetwatchError("`models activate` needs a version: models activate ID v0002")
        registry.activate(args.device, args.version)
        print(f"{args.device}: {args.version} is active")
    else:
        print(f"{args.device}: rolled back to {registry.rollback(args.device)}")
    return 0


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["list", "show", "activate", "rollback", "pack"])
    parser.add_argument("device", nargs="?", help="device id")
    parser.add_argument("version", nargs="?", help="version, e.g. v0002")
    parser.add_argument("--format", choices=["text", "json", "csv"], default="text")


COMMAND = Command(
    "models",
    "list, show, activate or roll back per-device model versions; pack them for scoring",
    """
    fleetwatch models list
    fleetwatch models show pump-0001            # manifest, sha256 verified
    fleetwatch models activate pump-0001 v0002
    fleetwatch models rollback pump-0001
    fleetwatch models pack                      # after copying models in by hand
    """,
    {"": "*"},
    run,
    arguments,
)
