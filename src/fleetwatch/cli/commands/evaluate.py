"""``fleetwatch evaluate``: precision, recall, F1, FAR and MAR on labelled data; ``--suite``:
several data sets, their macro average, and a stored baseline (``--save``, ``--compare``)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from fleetwatch.cli.commands.train import MODEL_SETTINGS
from fleetwatch.cli.parser import Command, UsageError
from fleetwatch.config import Settings
from fleetwatch.errors import FleetwatchError


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.suite is not None:
        if args.source is not None:
            raise UsageError("fleetwatch evaluate: give a source or --suite FILE, not both")
        return run_suite(args, settings)
    if args.save is not None or args.compare is not None:
        raise UsageError("fleetwatch evaluate: --save and --compare go with --suite FILE")
    if args.source is None:
        raise UsageError(
            "fleetwatch evaluate: give a source (`simulator`, a folder or a file) or --suite FILE"
        )
    from fleetwatch.evaluation.run import run_evaluation
    from fleetwatch.output import emit_record

    record = run_evaluation(settings, args.source).as_record()
    if settings.evaluate.format != "text":
        emit_record("fleetwatch evaluate", record, settings.evaluate.format)
        return 0
    write_report(record, sys.stdout)
    return 0


def write_report(record: dict[str, Any], out: TextIO) -> None:
    out.write(
        f"fleetwatch evaluate: {record['dataset']}\n"
        f"  {record['devices_trained']} of {record['devices']} devices trained on their "
        f"{record['train_first']}, {record['window']:g} s windows, target false-alarm rate "
        f"{record['target_far']:g}, {record['kind']} models; {record['hours_scored']} hours "
        f"scored in {record['seconds']:g} s\n"
        f"  slow sensors (described by their change): {record['slow_sensors']}\n"
        f"  models use: {record['models_use']}\n"
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
    for device_id, reason in list(record.get("degenerate_reasons", {}).items())[:10]:
        out.write(f"  threshold degenerate: {device_id}: {reason}\n")


def run_suite(args: argparse.Namespace, settings: Settings) -> int:
    """Each set of the suite with its own flags under the command line's, then the table, the
    macro average and the comparison with a stored baseline."""
    from fleetwatch import __version__
    from fleetwatch.cli.parser import build_parser, overrides, parse
    from fleetwatch.config import load_settings
    from fleetwatch.evaluation.run import run_evaluation
    from fleetwatch.evaluation.suite import (
        WorseError,
        compare,
        macro_average,
        read_baseline,
        read_suite,
    )
    from fleetwatch.output import emit_record, emit_table

    sets = read_suite(args.suite)
    parser = build_parser([COMMAND], __version__)  # a set's flags, read as the command's
    baseline = read_baseline(args.compare) if args.compare is not None else None
    text = settings.evaluate.format == "text"
    given = overrides(args)
    environ = {k: v for k, v in os.environ.items() if k != "FLEETWATCH_DEBUG"}
    records: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for chosen in sets:
        missing = chosen.missing()
        if missing is not None:
            skipped[chosen.name] = missing
            if text:
                print(f"fleetwatch evaluate: {chosen.name}: skipped: {missing}", flush=True)
            continue
        try:
            own = overrides(parse(parser, ["evaluate", chosen.source, *chosen.arguments]))
            merged = {s: {**own.get(s, {}), **given.get(s, {})} for s in {*own, *given}}
            options = load_settings(config_path=args.config, environ=environ, overrides=merged)
            if settings.evaluate.keep is not None:
                keep = settings.evaluate.keep / chosen.name
                options = replace(options, evaluate=replace(options.evaluate, keep=keep))
            record = run_evaluation(options, chosen.source).as_record()
        except FleetwatchError as exc:
            raise type(exc)(f"suite set {chosen.name}: {exc}") from None
        records[chosen.name] = record
        if text:
            write_report(record, sys.stdout)
            print(flush=True)
    average = macro_average(records)
    changes, worse, unmatched = (
        compare(baseline, records, args.margin) if baseline is not None else ([], [], [])
    )
    document = {
        "suite": str(args.suite),
        "sets": records,
        "skipped": skipped,
        "macro": average,
    }
    if args.save is not None:
        _save(args.save, document)
    if text:
        rows = [{"set": name, **record} for name, record in records.items()]
        rows.append({"set": f"macro average ({len(records)} sets)", **average})
        columns = ["set", "precision", "recall", "f1", "far_percent", "mar_percent"]
        columns += ["point_adjusted_f1", "event_recall"]
        sys.stdout.write(emit_table(rows, columns, "text"))
        for name, reason in skipped.items():
            print(f"  skipped: {name}: {reason}")
        if baseline is not None:
            print(f"\ncompared with {args.compare} (margin {args.margin:g}):")
            for change in changes:
                mark = "WORSE" if change in worse else "ok"
                print(
                    f"  {change.name:<14} {change.figure:<18} {change.before:.3f} -> "
                    f"{change.now:.3f} ({-change.drop:+.3f}) {mark}"
                )
            for name in unmatched:
                print(f"  {name}: in only one of the runs, not compared")
    else:
        summary = {**document, "worse": [vars(c) for c in worse], "not_compared": unmatched}
        emit_record("fleetwatch evaluate", summary, settings.evaluate.format)
    if not records:
        from fleetwatch.errors import NothingDoneError

        raise NothingDoneError(
            f"--suite {args.suite}: no set could run ({'; '.join(skipped.values())})"
        )
    if worse:
        listed = ", ".join(f"{c.name} {c.figure} {c.before:.3f} -> {c.now:.3f}" for c in worse)
        raise WorseError(f"worse than {args.compare} by more than {args.margin:g}: {listed}")
    return 0


def _save(path: Path, document: dict[str, Any]) -> None:
    from fleetwatch.output import json_value

    try:
        path.write_text(json.dumps(json_value(document), indent=1) + "\n")
    except OSError as exc:
        from fleetwatch.errors import StorageError

        raise StorageError(f"--save {path}: {exc.strerror or exc}") from None


def _margin(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a margin between 0 and 1 (0.02)")
    return value


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        nargs="?",
        help="`simulator`, a folder of labelled files (one device each), or one labelled file",
    )
    parser.add_argument(
        "--suite",
        type=Path,
        metavar="FILE",
        help="evaluate every data set of a suite file (TOML: [sets.NAME] source, arguments) "
        "and their macro average",
    )
    parser.add_argument(
        "--save", type=Path, metavar="FILE", help="with --suite: write the results as JSON"
    )
    parser.add_argument(
        "--compare",
        type=Path,
        metavar="FILE",
        help="with --suite: fail (exit 1) when a set's F1 or point-adjusted F1 is worse than "
        "in FILE (a --save of an earlier run) by more than --margin",
    )
    parser.add_argument(
        "--margin",
        type=_margin,
        default=0.02,
        help="how much worse a figure may get before --compare fails (default: 0.02)",
    )


COMMAND = Command(
    "evaluate",
    "measure detection on labelled data (precision, recall, F1, FAR, MAR) by the product's path",
    """
    fleetwatch evaluate simulator                       # the demo's fleet and its labels
    fleetwatch evaluate ../shared/datasets/skab/data --label-columns changepoint \\
        --train-first 400 --window 5s                   # SKAB's protocol
    fleetwatch evaluate pumps.parquet --label-column label --kind-column fault --format json
    fleetwatch evaluate --suite benchmarks/detection/suite.toml --save now.json \\
        --compare benchmarks/detection/baseline.json    # every set; fail if one got worse
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
