"""``fleetwatch evaluate``: precision, recall, F1, FAR and MAR on labelled data."""

from __future__ import annotations

import argparse
import sys

from fleetwatch.cli.commands.train import MODEL_SETTINGS
from fleetwatch.cli.parser import Command
from fleetwatch.config import Settings


def run(args: argparse.Namespace, settings: Settings) -> int:
    from fleetwatch.evaluation.run import run_evaluation
    from fleetwatch.output import emit_record

    evaluation = run_evaluation(settings, args.source)
    record = evaluation.as_record()
    if settings.evaluate.format != "text":
        emit_record("fleetwatch evaluate", record, settings.evaluate.format)
        return 0
    out = sys.stdout
    out.write(
        f"fleetwatch evaluate: {record['dataset']}\n"
        f"  {record['devices_trained']} of {record['devices']} devices trained on their first "
        f"{record['train_first']}, {record['window']:g} s windows, target false-alarm rate "
        f"{record['target_far']:g}, {record['kind']} models; {record['hours_scored']} hours "
        f"scored in {record['seconds']:g} s\n"
        f"  slow sensors (described by their change): {record['slow_sensors']}\n"
        f"  test set: {record['test_points']} {record['unit']} "
        f"({record['anomalous_points']} anomalous, {record['episodes']} episodes)"
        + (f", {record['unscored_points']} not scored" if record["unscored_points"] else "")
        + "\n\n"
        f"  precision {record['precision']:.3f}   recall {record['recall']:.3f}   "
        f"F1 {record['f1']:.3f}   FAR {record['far_percent']:.1f}%   "
        f"MAR {record['mar_percent']:.1f}%\n"
        f"  point-adjusted F1 {record['point_adjusted_f1']:.3f}   event recall "
        f"{record['event_recall']:.3f} ({record['episodes_found']} of {record['episodes']} "
        "episodes found)\n"
    )
    for kind, row in record.get("by_kind", {}).items():
        out.write(f"    {kind:<14} {row['found']:>4} of {row['episodes']:<4} found\n")
    for device_id, reason in list(record["skipped_reasons"].items())[:10]:
        out.write(f"  not trained: {device_id}: {reason}\n")
    return 0


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        help="`simulator`, a folder of labelled files (one device each), or one labelled file",
    )


COMMAND = Command(
    "evaluate",
    "measure detection on labelled data (precision, recall, F1, FAR, MAR) by the product's path",
    """
    fleetwatch evaluate simulator                       # the demo's fleet and its labels
    fleetwatch evaluate ../shared/datasets/skab/data --label-columns changepoint \\
        --train-first 400 --window 5s                   # SKAB's protocol
    fleetwatch evaluate pumps.parquet --label-column label --kind-column fault --format json
    """,
    {
        "": ("log_level",),
        "evaluate": "*",
        "train": MODEL_SETTINGS,
        "score": ("incident_gap",),
        "aggregate": ("window", "parquet_compression"),
        "import": ("assume_timezone", "exclude_columns", "delimiter", "device_id"),
        "demo": (
            "devices",
            "sensors",
            "interval",
            "train_for",
            "score_for",
            "anomaly_rate",
            "daily_cycle",
            "drift",
            "seed",
        ),
    },
    run,
    arguments,
)
