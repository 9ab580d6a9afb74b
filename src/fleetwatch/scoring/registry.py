"""The model registry: versions of each device's model, one of them active.

A version holds ``model.joblib`` (the fitted scikit-learn objects), ``params.bin`` (the same
parameters as one raw little-endian blob, float64 but for the float32 support vectors, laid
out in the manifest (:func:`pack_arrays`), loaded without pickle in microseconds) and its
manifest (sha256 of both, feature names, training range, hyper-parameters, library
versions). Nothing is loaded before its sha256 matches the manifest,
and the manifest the digest recorded when it was published or activated: a tampered version
fails its device, never runs.

Versions are rows of run objects, and what is active or in shadow is the journal's
(:mod:`fleetwatch.scoring.journal`). A registry written before the columnar store (a folder
per version, ``ACTIVE``, ``SHADOW``, ``history.json``: :mod:`fleetwatch.storage.models`) is
read as it is: its versions stay versions, its pointers hold until the journal says otherwise
for that device, and every change is written to the journal.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fleetwatch.errors import FleetwatchError, InvalidInputError
from fleetwatch.faults import point
from fleetwatch.scoring.calibration import Calibration
from fleetwatch.scoring.journal import (
    COLUMN_OF,
    MODES,
    DeviceState,
    Journal,
    Op,
    Row,
    RunObjects,
    new_run_name,
    run_writer,
    run_written_at,
)
from fleetwatch.scoring.kinds import ModelKind
from fleetwatch.storage.layout import DataLayout
from fleetwatch.storage.models import (
    ACTIVE,
    ESTIMATOR,
    MANIFEST,
    MODEL_FILES,
    PARAMS,
    SHADOW,
    ModelFiles,
)
from fleetwatch.storage.store import DataStore
from fleetwatch.telemetry import is_valid_name

log = logging.getLogger(__name__)


def pack_arrays(arrays: dict[str, np.ndarray]) -> tuple[dict[str, Any], bytes]:
    """Numeric arrays -> one blob and its layout (a manifest's ``params``): ``layout``
    {name: [offset, shape, dtype]} for arrays kept as float64 (offsets in float64s, from
    the start), ``float32`` {"at": byte, "layout": {name: [offset, shape]}} for float32
    arrays (the support vectors), after them; ``strings`` aside."""
    layout: dict[str, list[Any]] = {}
    narrow: dict[str, list[Any]] = {}
    strings: dict[str, list[str]] = {}
    wide_parts, narrow_parts = [], []
    wide = narrow_size = 0
    for name, array in arrays.items():
        if array.dtype.kind in "US":
            strings[name] = [str(x) for x in array.tolist()]
        elif array.dtype == np.float32:
            narrow[name] = [narrow_size, list(array.shape)]
            narrow_parts.append(np.ascontiguousarray(array, dtype="<f4").tobytes())
            narrow_size += array.size
        else:
            layout[name] = [wide, list(array.shape), array.dtype.str]
            wide_parts.append(np.ascontiguousarray(array, dtype="<f8").tobytes())
            wide += array.size
    params: dict[str, Any] = {"layout": layout, "strings": strings}
    if narrow:
        params["float32"] = {"at": 8 * wide, "layout": narrow}
    return params, b"".join(wide_parts + narrow_parts)


class ParamsLayout:
    """How a ``params.bin`` blob is cut into its arrays: a manifest's ``params`` section,
    planned once (the model pack shares one plan among the models laid out alike)."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params  # see pack_arrays
        self._numeric = [
            (name, offset, math.prod(shape), tuple(shape), np.dtype(dtype))
            for name, (offset, shape, dtype) in params["layout"].items()
        ]
        narrow = params.get("float32") or {"at": None, "layout": {}}
        self._at: int | None = narrow["at"]
        self._narrow = [
            (name, int(offset), math.prod(shape), tuple(shape))
            for name, (offset, shape) in narrow["layout"].items()
        ]
        self._strings = {name: np.array(items) for name, items in params["strings"].items()}

    def arrays(self, blob: bytes | memoryview) -> dict[str, np.ndarray]:
        """Read-only views of ``blob`` (a copy only for an array kept in another dtype)."""
        at = len(blob) if self._at is None else self._at
        if not 0 <= at <= len(blob) or at % 8:
            raise ValueError(f"the parameters' float32 part starts at {at} of {len(blob)} bytes")
        values = np.frombuffer(blob, dtype="<f8", count=at // 8)
        result = dict(self._strings)
        for name, offset, size, shape, dtype in self._numeric:
            array = values[offset : offset + size].reshape(shape)
            result[name] = array if array.dtype == dtype else array.astype(dtype)
        if self._narrow:
            singles = np.frombuffer(blob, dtype="<f4", offset=at)
            for name, offset, size, shape in self._narrow:
                result[name] = singles[offset : offset + size].reshape(shape)
        return result


def unpack_arrays(params: dict[str, Any], blob: bytes) -> dict[str, np.ndarray]:
    return ParamsLayout(params).arrays(blob)


class ModelIntegrityError(FleetwatchError):
    """A model file does not match the sha256 in its manifest."""


#: The window features and score scale of the models this fleetwatch saves (see
#: ``fleetwatch.scoring.features`` and ``kinds.svm``); a model saved with others is refused.
FEATURES_VERSION = 2
#: ``models prune`` deletes a run object no journal record names once it is this old (a
#: training run publishes its run objects within minutes of writing them).
ORPHAN_AGE = timedelta(days=1)


@dataclass(frozen=True)
class PruneResult:
    """What ``models prune`` forgot (each device's versions) and deleted (run objects)."""

    forgotten: dict[str, list[str]]
    deleted_runs: list[str]
    dry_run: bool

    def as_record(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "devices": len(self.forgotten),
            "versions_forgotten": sum(len(v) for v in self.forgotten.values()),
            "run_objects_deleted": len(self.deleted_runs),
            "forgotten": self.forgotten,
            "deleted_runs": self.deleted_runs,
        }


def check_current(model: ModelVersion) -> None:
    """Refuse a model whose features or score scale this fleetwatch no longer computes."""
    if model.manifest.get("features_version") != FEATURES_VERSION:
        raise ModelIntegrityError(
            f"{model.device_id} {model.version} was saved by an older fleetwatch (other "
            "features and score scale); retrain it with `fleetwatch train`"
        )


@dataclass(frozen=True)
class ModelVersion:
    device_id: str
    version: str
    location: str  # the version's folder, for messages
    manifest: dict[str, Any]
    local: Path | None = None  # the folder on this machine (None in an object store, a run)
    run: str | None = None  # the run object holding it (None: a version folder)

    @property
    def path(self) -> Path:
        """The version's folder on this machine's file system (local data directories)."""
        if self.local is None:
            raise FleetwatchError(f"{self.location} is not on this machine's file system")
        return self.local


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored_files(model: ModelVersion) -> list[str]:
    """The files a version has (``params.bin``; ``model.joblib`` when it was kept)."""
    listed = model.manifest.get("sha256", {})
    return [name for name in MODEL_FILES if name in listed] or list(MODEL_FILES)


#: What a published version becomes: the active one, the one in shadow, or just kept.
Mode = Literal["activate", "shadow", "keep"]


def model_row(
    device_id: str,
    model: ModelKind,
    features: list[str],
    trained_from: datetime,
    trained_until: datetime,
    windows: int,
    parameters: dict[str, Any],
    calibration: Calibration | None = None,
    keep_estimator: bool = True,
) -> Row:
    """A fitted model as a run object's row (its version is given when it is published);
    with ``keep_estimator``, its scikit-learn objects too (``model.joblib``)."""
    import joblib
    import sklearn

    calibration = calibration or Calibration(0.0, 1.0, 0.0, "set by hand", [])
    params, blob = pack_arrays(model.arrays())
    files = {PARAMS: blob}
    if keep_estimator:
        buffer = io.BytesIO()
        joblib.dump(model.estimator(), buffer)
        files[ESTIMATOR] = buffer.getvalue()
    manifest = {
        "device_id": device_id,
        "kind": model.name,
        "sha256": {name: sha256_hex(data) for name, data in files.items()},
        "params": params,
        "features": features,
        "training": {
            "from": trained_from.isoformat(),
            "until": trained_until.isoformat(),
            "windows": windows,
        },
        "parameters": parameters,
        "features_version": FEATURES_VERSION,
        "threshold": calibration.threshold,
        "calibration": calibration.as_manifest(),
        "created_at": datetime.now(UTC).isoformat(),
        "libraries": {
            "python": platform.python_version(),
            "scikit-learn": sklearn.__version__,
            "numpy": np.__version__,
            "joblib": joblib.__version__,
        },
    }
    return Row(device_id, json.dumps(manifest, separators=(",", ":")).encode(), files)


class ModelRegistry:
    """Every device's model versions in one data directory."""

    def __init__(self, store: DataStore, live: bool = True) -> None:
        """``live``: each read sees the changes other processes made since (one listing of
        the journal); False: the journal as read once, the view of a scoring or training
        run (reads of 100,000 devices make no listing each)."""
        self.files = ModelFiles(store)
        self.store = store
        self.journal = Journal(self.files, live)
        self.runs = RunObjects(self.files)
        self._folders: set[str] | None = None  # devices with a version folder (listed once)

    @classmethod
    def of(cls, location: str | Path | DataLayout, live: bool = True) -> ModelRegistry:
        """The registry of a data directory (its folder, URL or layout)."""
        layout = location if isinstance(location, DataLayout) else DataLayout.open(location)
        return cls(layout.store, live)

    def device_dir(self, device_id: str) -> Path:
        """A device's version folder on this machine (a registry before the columnar store)."""
        folder = self.store.local_path(self.files.device_key(self.check_device(device_id)))
        if folder is None:
            raise FleetwatchError(f"{self.store.location} is not on this machine's file system")
        return folder

    @staticmethod
    def check_device(device_id: str) -> str:
        if not is_valid_name(device_id):
            raise InvalidInputError(f"device id {device_id!r} is not 1-64 of [A-Za-z0-9_.-]")
        return device_id

    def _state(self, device_id: str) -> DeviceState | None:
        return self.journal.devices().get(device_id)

    def _folder_devices(self) -> set[str]:
        if self._folders is None:
            self._folders = {name for name in self.files.devices() if is_valid_name(name)}
        return self._folders

    # ------------------------------------------------------------------ writing

    def save(
        self,
        device_id: str,
        model: ModelKind,
        features: list[str],
        trained_from: datetime,
        trained_until: datetime,
        windows: int,
        parameters: dict[str, Any],
        activate: bool = True,
        calibration: Calibration | None = None,
    ) -> ModelVersion:
        """One device's new version (training publishes its devices together: :meth:`publish`)."""
        row = model_row(
            device_id, model, features, trained_from, trained_until, windows, parameters,
            calibration,
        )  # fmt: skip
        _, versions = self.publish([row], {device_id: "activate" if activate else "keep"})
        return self.get(device_id, versions[device_id])

    def publish(self, rows: Sequence[Row], modes: Mapping[str, Mode]) -> tuple[str, dict[str, str]]:
        """``rows`` as one run object, then one journal record making each row its device's
        next version, activated, put in shadow or kept as ``modes`` says (default: activated).
        Returns the run object's name and each device's new version."""
        devices = [self.check_device(row.device_id) for row in rows]
        if len(set(devices)) != len(devices):
            raise InvalidInputError("a run object holds one version of each device")
        if not rows:
            return "", {}
        run = new_run_name()
        self.files.write_run(run, run_writer(rows))
        point("registry.run_written")  # the fault suite: a run object no record publishes
        assigned: dict[str, str] = {}

        def build(state: dict[str, DeviceState]) -> list[Op]:
            versions, digests, chosen = [], [], []
            for row in rows:
                known = state.get(row.device_id) or DeviceState()
                taken = self._version_names(row.device_id, known)
                number = 1 + max((int(v[1:]) for v in taken if v[1:].isdigit()), default=0)
                versions.append(f"v{number:04d}")
                digests.append(row.digest)
                chosen.append(MODES[modes.get(row.device_id, "activate")])
            assigned.update(zip(devices, versions, strict=True))
            return [["publish", run, devices, versions, digests, chosen]]

        self.journal.append(build)
        point("registry.published")
        return run, assigned

    def with_threshold(
        self, device_id: str, version: str, calibration: Calibration, activate: bool = True
    ) -> ModelVersion:
        """A new version with ``version``'s model files (checked) and another threshold:
        versions never change, so a rollback brings the old threshold back."""
        if not math.isfinite(calibration.threshold):
            raise InvalidInputError(
                f"threshold {calibration.threshold}: a threshold must be a finite score"
            )
        source = self.get(device_id, version)
        check_current(source)
        files = {name: self.verified(source, name) for name in stored_files(source)}
        manifest = {
            **source.manifest,
            "threshold": calibration.threshold,
            "calibration": calibration.as_manifest(),
            "derived_from": version,
            "created_at": datetime.now(UTC).isoformat(),
        }
        manifest.pop("version", None)
        row = Row(device_id, json.dumps(manifest, separators=(",", ":")).encode(), files)
        _, versions = self.publish([row], {device_id: "activate" if activate else "keep"})
        return self.get(device_id, versions[device_id])

    def activate(self, device_id: str, version: str) -> None:
        self.check_device(device_id)
        if version not in (names := self._version_names(device_id)):
            raise _no_such_version(device_id, version, names)
        # the manifest's digest beside the version: a manifest changed afterwards (its
        # threshold, its features) is refused like a changed model file
        digest = self._manifest_digest(device_id, version)
        self.journal.append(lambda _: [["activate", device_id, version, digest]])

    def _manifest_digest(self, device_id: str, version: str) -> str:
        state = self._state(device_id)
        if state is not None and version in state.versions:
            return state.versions[version][1]
        try:
            raw = self.files.read(device_id, version, MANIFEST)
        except FileNotFoundError:  # a folder a writer left without its manifest
            raise InvalidInputError(f"{device_id} has no model version {version}") from None
        return sha256_hex(raw)

    def set_shadow(self, device_id: str, version: str) -> None:
        """Score ``version`` next to the active one (recorded, never alerting)."""
        self.check_device(device_id)
        if version not in (names := self._version_names(device_id)):
            raise _no_such_version(device_id, version, names)
        if version == self.active_version(device_id):
            raise InvalidInputError(f"{device_id}: {version} is the active version already")
        check_current(self.get(device_id, version))
        digest = self._manifest_digest(device_id, version)
        self.journal.append(lambda _: [["shadow", device_id, version, digest]])

    def clear_shadow(self, device_id: str) -> str | None:
        """Stop shadow scoring; the version that was in shadow, if any."""
        pointer = self._shadow_pointer(self.check_device(device_id))
        if pointer is None:
            return None
        self.journal.append(lambda _: [["unshadow", device_id]])
        return pointer[0]

    def shadowed_devices(self) -> set[str]:
        """The devices with a version in shadow."""
        devices = self.journal.devices()
        listed: set[str] = set()
        raw = self.files.read_shadows()  # a registry before the journal: its SHADOWS
        if raw is not None:
            try:
                listed = {d for d in json.loads(raw) if isinstance(d, str) and is_valid_name(d)}
            except ValueError:
                log.warning("the registry's SHADOWS is unreadable: its versions are not scored")
        kept = {d for d in listed if d not in devices or not devices[d].shadow_set}
        return kept | {d for d, state in devices.items() if state.shadow is not None}

    def _shadow_pointer(self, device_id: str) -> tuple[str, str | None] | None:
        state = self._state(device_id)
        if state is not None and state.damaged:
            raise ModelIntegrityError(f"{device_id}: {state.damaged}")
        if state is not None and state.shadow_set:
            return state.shadow
        return self._pointer(device_id, SHADOW)

    def shadow(self, device_id: str) -> ModelVersion | None:
        """The version in shadow, its manifest checked against the digest recorded for it."""
        pointer = self._shadow_pointer(self.check_device(device_id))
        return None if pointer is None else self.get(device_id, *pointer)

    def prune(self, keep: int, dry_run: bool = False) -> PruneResult:
        """Forget every device's versions but its ``keep`` newest, its active one and the one
        in shadow (one journal record), then delete the run objects no version names any more,
        and those no record ever published (a training run that died) once a day old. Version
        numbers are never reused; folders of an older registry are left as they are."""
        if keep < 1:
            raise InvalidInputError(f"--keep {keep}: keep at least the newest version (1)")
        forgotten: dict[str, list[str]] = {}
        runs_of_forgotten: set[str] = set()

        def build(state: dict[str, DeviceState]) -> list[Op]:
            forgotten.clear()
            runs_of_forgotten.clear()
            for device_id, known in sorted(state.items()):
                if known.damaged or len(known.versions) <= keep:
                    continue
                numbered = sorted(known.versions, key=lambda v: (len(v), v))
                kept = set(numbered[-keep:]) | known.pinned()
                gone = [v for v in numbered if v not in kept]
                if gone:
                    forgotten[device_id] = gone
                    runs_of_forgotten.update(known.versions[v][0] for v in gone)
            if dry_run or not forgotten:
                return []
            return [["forget", list(forgotten), list(forgotten.values())]]

        self.journal.append(build)
        if not dry_run and forgotten:
            point("registry.forgotten")  # the fault suite: forgotten, their objects not deleted
        named = {  # after the record (or, for a dry run, as it would leave them)
            run
            for device_id, known in self.journal.devices().items()
            for version, (run, _) in known.versions.items()
            if not dry_run or version not in forgotten.get(device_id, ())
        }
        cutoff = datetime.now(UTC) - ORPHAN_AGE
        unnamed = []
        for item in self.files.runs():
            run = item.name[: -len(".parquet")]
            if run in named:
                continue
            written = run_written_at(run)
            if written is None:
                continue  # not a run object's name: not ours to delete
            if run in runs_of_forgotten or written < cutoff:
                unnamed.append(run)
        if not dry_run and unnamed:
            self.files.delete_runs(unnamed)
        return PruneResult(
            {d: versions for d, versions in forgotten.items()}, sorted(unnamed), dry_run
        )

    def promote(self, device_id: str) -> str:
        """Make the version in shadow the active one (its manifest checked first)."""
        in_shadow = self.shadow(device_id)
        if in_shadow is None:
            raise InvalidInputError(
                f"{device_id} has no version in shadow (models activate ID VERSION --shadow)"
            )
        self.activate(device_id, in_shadow.version)  # clears the shadow
        return in_shadow.version

    def rollback(self, device_id: str) -> str:
        """Re-activate the version that was active before the current one."""
        history = self.history(device_id)
        active = self.active_version(device_id)
        previous = [v for v in reversed(history) if v != active]
        if not previous:
            raise InvalidInputError(f"{device_id} has no earlier active version to roll back to")
        self.activate(device_id, previous[0])
        return previous[0]

    # ------------------------------------------------------------------ reading

    def _version_names(self, device_id: str, state: DeviceState | None = None) -> list[str]:
        """Every version number taken: published ones, and folders a writer before the
        journal left without a manifest (never reused)."""
        self.check_device(device_id)
        state = state or self._state(device_id)
        names = set(state.versions) if state is not None else set()
        if device_id in self._folder_devices():
            names.update(self.files.versions(device_id))
        return sorted(names)

    def history(self, device_id: str) -> list[str]:
        """The versions activated, oldest first."""
        self.check_device(device_id)
        raw = self.files.read_history(device_id) if device_id in self._folder_devices() else None
        older: list[str] = json.loads(raw) if raw is not None else []
        state = self._state(device_id)
        return older + ([v for v, _ in state.activated] if state is not None else [])

    def devices(self) -> list[str]:
        return sorted(self.model_devices())

    def pointer(self, device_id: str) -> tuple[str, str | None] | None:
        """The active version and the sha256 of its manifest when it was activated (None for
        an ``ACTIVE`` written by an older fleetwatch), or None without one."""
        state = self._state(self.check_device(device_id))
        if state is not None and state.damaged:
            raise ModelIntegrityError(f"{device_id}: {state.damaged}")
        if state is not None and state.activated:
            return state.activated[-1]
        return self._pointer(device_id, ACTIVE)

    def active_source(self, device_id: str) -> tuple[str, str, str | None] | None:
        """``(version, manifest digest, run object)`` of the active version when the journal
        says which it is (the run None for a version folder); None when a folder's ``ACTIVE``
        does (a registry before the journal)."""
        state = self._state(device_id)
        if state is None or not state.activated:
            return None
        if state.damaged:
            raise ModelIntegrityError(f"{device_id}: {state.damaged}")
        version, digest = state.activated[-1]
        saved = state.versions.get(version)
        return version, digest, saved[0] if saved is not None else None

    def _pointer(self, device_id: str, name: Any) -> tuple[str, str | None] | None:
        if device_id not in self._folder_devices():
            return None
        raw = self.files.read_pointer(self.check_device(device_id), name)
        if raw is None:
            return None
        words = raw.decode(errors="replace").split()
        if not words:
            return None
        digest = next((w[7:] for w in words[1:] if w.startswith("sha256=")), None)
        return words[0], digest

    def active_version(self, device_id: str) -> str | None:
        pointer = self.pointer(device_id)
        return None if pointer is None else pointer[0]

    def model_devices(self) -> set[str]:
        """Devices with a model (active or not): the journal's and the version folders'."""
        if self.journal.live:
            self._folders = None  # listed again
        journal = {d for d, state in self.journal.devices().items() if state.versions}
        return journal | self._folder_devices()

    def versions(self, device_id: str) -> list[ModelVersion]:
        """Every published version (a folder without a manifest, left by a writer that
        stopped half-way, is not one)."""
        found = []
        for version in self._version_names(device_id):
            try:
                found.append(self.get(device_id, version))
            except InvalidInputError:
                continue
        return found

    def get(self, device_id: str, version: str, digest: str | None = None) -> ModelVersion:
        """A version's manifest; with ``digest``, only if the manifest still has that sha256
        (a version of a run object: always checked against the digest it was published with)."""
        self.check_device(device_id)
        if not is_valid_name(version):
            raise InvalidInputError(f"model version {version!r} is not 1-64 of [A-Za-z0-9_.-]")
        state = self._state(device_id)
        if state is not None and version in state.versions:
            return self._from_run(device_id, version, *state.versions[version], digest)
        try:
            raw = self.files.read(device_id, version, MANIFEST)
        except FileNotFoundError:
            raise _no_such_version(device_id, version, self._version_names(device_id)) from None
        if digest is not None and sha256_hex(raw) != digest:
            raise ModelIntegrityError(
                f"{device_id} {version}: manifest.json does not match the sha256 recorded when "
                "it was activated (tampered or corrupt); it was not used. Retrain, roll back, "
                "or activate it again if the change was yours"
            )
        return ModelVersion(
            device_id,
            version,
            self.files.describe(device_id, version),
            json.loads(raw),
            self.files.local_path(device_id, version),
        )

    def _from_run(
        self, device_id: str, version: str, run: str, published: str, digest: str | None
    ) -> ModelVersion:
        where = f"{self.store.describe(self.files.run_key(run))} ({device_id})"
        try:
            row = self.runs.row(run, device_id)
        except FileNotFoundError:
            raise ModelIntegrityError(
                f"{device_id} {version}: its run object {where} is missing or unreadable; "
                "retrain or roll back"
            ) from None
        if sha256_hex(row["manifest"]) != published:
            raise ModelIntegrityError(
                f"{device_id} {version}: manifest.json does not match the sha256 recorded when "
                f"it was published ({where}: tampered or corrupt); it was not used. Retrain or "
                "roll back"
            )
        if digest is not None and digest != published:
            raise ModelIntegrityError(
                f"{device_id} {version}: manifest.json does not match the sha256 recorded when "
                "it was activated (the journal is inconsistent); it was not used"
            )
        manifest = json.loads(row["manifest"])
        manifest["version"] = version
        return ModelVersion(device_id, version, where, manifest, None, run)

    def active(self, device_id: str) -> ModelVersion | None:
        """The active version, its manifest checked against the digest it was activated with."""
        pointer = self.pointer(device_id)
        return None if pointer is None else self.get(device_id, *pointer)

    def overview(self) -> list[dict[str, Any]]:
        """One row per device: its active version, how many it has, kind, training end."""
        rows = []
        for device_id in self.devices():
            active = self.active(device_id)
            shadow = self._shadow_pointer(device_id)
            rows.append(
                {
                    "device_id": device_id,
                    "active": active.version if active else None,
                    "shadow": shadow[0] if shadow else None,
                    "versions": len(self._version_names(device_id)),
                    "kind": active.manifest.get("kind") if active else None,
                    "threshold": active.manifest.get("threshold") if active else None,
                    "trained_until": active.manifest["training"]["until"] if active else None,
                }
            )
        return rows

    def describe(self, device_id: str, version: str | None = None) -> dict[str, Any]:
        """A version's manifest (default: the active one's), after both its files checked out."""
        version = version or self.active_version(device_id)
        if version is None:
            raise InvalidInputError(f"{device_id} has no active model; train one first")
        model = self.get(device_id, version)
        for name in stored_files(model):
            self.verified(model, name)
        shadow = self._shadow_pointer(device_id)
        return {
            **model.manifest,
            "active": version == self.active_version(device_id),
            "shadow": shadow is not None and version == shadow[0],
            "sha256_verified": True,
            "stored_in": model.location,
        }

    def verified(self, model: ModelVersion, file_name: str) -> bytes:
        """The bytes of ``file_name`` once their sha256 matched the manifest."""
        expected = model.manifest.get("sha256", {}).get(file_name)
        if expected is None and file_name == ESTIMATOR and PARAMS in model.manifest["sha256"]:
            raise InvalidInputError(
                f"{model.device_id} {model.version} was trained without [train] keep_estimator: "
                "its parameters are stored, not its scikit-learn objects (model.joblib)"
            )
        if expected is None:
            raise ModelIntegrityError(
                f"{model.device_id} {model.version} has no {file_name} in its manifest (saved "
                "by an older fleetwatch); retrain it with `fleetwatch train`"
            )
        try:
            if model.run is not None:
                data = self.runs.row(model.run, model.device_id)[COLUMN_OF[file_name]]
                if data is None:
                    raise FileNotFoundError(file_name)
            else:
                data = self.files.read(model.device_id, model.version, file_name)
        except FileNotFoundError:
            raise ModelIntegrityError(
                f"{model.device_id} {model.version}: {file_name} is missing; retrain or roll back"
            ) from None
        if sha256_hex(data) != expected:
            raise ModelIntegrityError(
                f"{model.device_id} {model.version}: {file_name} does not match the sha256 in its "
                "manifest (tampered or corrupt); it was not loaded. Retrain or roll back."
            )
        return data

    def load_params(self, model: ModelVersion) -> tuple[str, dict[str, np.ndarray]]:
        """The kind and parameter arrays: read once, sha256-checked, decoded without pickle."""
        kind = str(model.manifest["kind"])
        return kind, unpack_arrays(model.manifest["params"], self.read_params(model))

    def read_params(self, model: ModelVersion) -> bytes:
        """``params.bin`` as bytes, once its sha256 matched the manifest."""
        return self.verified(model, PARAMS)

    def load_estimator(self, model: ModelVersion) -> Any:
        """The scikit-learn objects; unpickled only after the sha256 check."""
        import joblib

        return joblib.load(io.BytesIO(self.verified(model, ESTIMATOR)))


def _no_such_version(device_id: str, version: str, names: Sequence[str]) -> InvalidInputError:
    """The error for a version a device does not have, naming those it has (``names``, in
    order: :meth:`ModelRegistry._version_names`)."""
    known = list(names)
    shown = ", ".join(known[-5:]) if known else "none: train it first"
    more = f" (and {len(known) - 5} older)" if len(known) > 5 else ""
    return InvalidInputError(
        f"{device_id} has no model version {version}; its versions: {shown}{more}"
    )
