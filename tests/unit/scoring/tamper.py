"""Changing a stored model behind the registry's back, as someone who may write the store would:
a run object rewritten whole with one device's row changed, a journal record appended."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from fleetwatch.scoring.journal import Row, run_bytes
from fleetwatch.scoring.registry import ModelRegistry, ModelVersion

Change = Callable[[bytes], bytes]


def run_path(data_dir: Path, model: ModelVersion) -> Path:
    assert model.run is not None, f"{model.device_id} {model.version} is not in a run object"
    return data_dir / "models" / "runs" / f"{model.run}.parquet"


def rewrite_row(
    data_dir: Path,
    model: ModelVersion,
    manifest: Change | None = None,
    params: Change | None = None,
    estimator: Change | None = None,
) -> None:
    """``model``'s row rewritten with ``manifest``/``params``/``estimator`` applied to its
    bytes; every other row of its run object unchanged."""
    path = run_path(data_dir, model)
    path.write_bytes(rewritten(path.read_bytes(), model.device_id, manifest, params, estimator))


def rewritten(
    stored: bytes,
    device_id: str,
    manifest: Change | None = None,
    params: Change | None = None,
    estimator: Change | None = None,
) -> bytes:
    """A run object's bytes with ``device_id``'s row changed (:func:`rewrite_row`)."""
    rows = []
    for row in pq.read_table(pa.BufferReader(stored)).to_pylist():
        files = {"params.bin": row["params"]}
        if row["estimator"] is not None:
            files["model.joblib"] = row["estimator"]
        text = row["manifest"]
        if row["device_id"] == device_id:
            text = manifest(text) if manifest else text
            files["params.bin"] = params(files["params.bin"]) if params else files["params.bin"]
            if estimator:
                files["model.joblib"] = estimator(files["model.joblib"])
        rows.append(Row(row["device_id"], text, files))
    return run_bytes(rows)


def edit_manifest(edit: Callable[[dict[str, Any]], None]) -> Change:
    def change(raw: bytes) -> bytes:
        document = json.loads(raw)
        edit(document)
        return json.dumps(document).encode()

    return change


def republish(data_dir: Path, model: ModelVersion, edit: Callable[[dict[str, Any]], None]) -> str:
    """A new version with ``model``'s files and an edited manifest, activated: as by someone
    who meant the change. Returns the new version."""
    registry = ModelRegistry.of(data_dir)
    manifest = dict(model.manifest)
    manifest.pop("version")
    edit(manifest)
    files = {name: registry.verified(model, name) for name in model.manifest["sha256"]}
    row = Row(model.device_id, json.dumps(manifest).encode(), files)
    _, versions = registry.publish([row], {model.device_id: "activate"})
    return versions[model.device_id]


def append_record(data_dir: Path, ops: list[list[Any]]) -> None:
    """A journal record of ``ops``, after the newest."""
    folder = data_dir / "models" / "journal"
    numbers = [int(p.stem.lstrip("S")) for p in folder.glob("*.json")]
    record = {"format": 1, "ops": ops}
    (folder / f"{max(numbers, default=0) + 1:012d}.json").write_text(json.dumps(record))
