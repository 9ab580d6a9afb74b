"""The model registry: versions of each device's model, one of them active.

A version holds ``model.joblib`` (the fitted scikit-learn objects), ``params.bin`` (the same
parameters as one raw little-endian float64 blob, laid out in the manifest, loaded without
pickle in microseconds) and ``manifest.json`` (sha256 of both files, feature names, training
range, hyper-parameters, library versions). Nothing is loaded before its sha256 matches the
manifest: a tampered file fails its device, never runs. Where each object lives is
:mod:`fleetwatch.storage.models`'s.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import platform
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from fleetwatch.errors import FleetwatchError, InvalidInputError
from fleetwatch.scoring.calibration import Calibration
from fleetwatch.scoring.kinds import ModelKind
from fleetwatch.storage.layout import DataLayout
from fleetwatch.storage.locks import ProcessLock
from fleetwatch.storage.models import (
    ACTIVE,
    ESTIMATOR,
    MANIFEST,
    MODEL_FILES,
    PARAMS,
    SHADOW,
    ModelFiles,
    VersionTakenError,
)
from fleetwatch.storage.store import DataStore
from fleetwatch.telemetry import is_valid_name

log = logging.getLogger(__name__)


def pack_arrays(
    arrays: dict[str, np.ndarray],
) -> tuple[dict[str, list[Any]], dict[str, list[str]], bytes]:
    """Numeric arrays -> one float64 blob + {name: [offset, shape, dtype]}; strings aside."""
    layout: dict[str, list[Any]] = {}
    strings: dict[str, list[str]] = {}
    parts = []
    offset = 0
    for name, array in arrays.items():
        if array.dtype.kind in "US":
            strings[name] = [str(x) for x in array.tolist()]
            continue
        flat = np.ascontiguousarray(array, dtype="<f8").ravel()
        layout[name] = [offset, list(array.shape), array.dtype.str]
        parts.append(flat.tobytes())
        offset += flat.size
    return layout, strings, b"".join(parts)


class ParamsLayout:
    """How a ``params.bin`` blob is cut into its arrays: a manifest's ``params`` section,
    planned once (the model pack shares one plan among the models laid out alike)."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params  # {"layout": {name: [offset, shape, dtype]}, "strings": {...}}
        self._numeric = [
            (name, offset, math.prod(shape), tuple(shape), np.dtype(dtype))
            for name, (offset, shape, dtype) in params["layout"].items()
        ]
        self._strings = {name: np.array(items) for name, items in params["strings"].items()}

    def arrays(self, blob: bytes | memoryview) -> dict[str, np.ndarray]:
        """Read-only views of ``blob`` (a copy only for a non-float64 array)."""
        values = np.frombuffer(blob, dtype="<f8")
        result = dict(self._strings)
        for name, offset, size, shape, dtype in self._numeric:
            array = values[offset : offset + size].reshape(shape)
            result[name] = array if array.dtype == dtype else array.astype(dtype)
        return result


def unpack_arrays(params: dict[str, Any], blob: bytes) -> dict[str, np.ndarray]:
    return ParamsLayout(params).arrays(blob)


class ModelIntegrityError(FleetwatchError):
    """A model file does not match the sha256 in its manifest."""


#: The window features and score scale of the models this fleetwatch saves (see
#: ``fleetwatch.scoring.features`` and ``kinds.svm``); a model saved with others is refused.
FEATURES_VERSION = 2


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
    local: Path | None = None  # the folder on this machine (None in an object store)

    @property
    def path(self) -> Path:
        """The version's folder on this machine's file system (local data directories)."""
        if self.local is None:
            raise FleetwatchError(f"{self.location} is not on this machine's file system")
        return self.local


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ModelRegistry:
    """Every device's model versions in one data directory."""

    def __init__(self, store: DataStore, lock_dir: Path | None = None) -> None:
        self.files = ModelFiles(store)
        self.store = store
        self.lock_dir = lock_dir

    @classmethod
    def of(cls, location: str | Path | DataLayout) -> ModelRegistry:
        """The registry of a data directory (its folder, URL or layout)."""
        layout = location if isinstance(location, DataLayout) else DataLayout.open(location)
        return cls(layout.store, layout.state)

    def _lock(self) -> ProcessLock:
        """Serialises changes to ``SHADOWS`` on this machine (changes to one registry come
        from one machine at a time)."""
        if self.lock_dir is None:
            folder = Path(tempfile.gettempdir())
            digest = hashlib.sha256(self.store.location.encode()).hexdigest()[:16]
            return ProcessLock(folder / f"fleetwatch-shadows-{digest}.lock", "shadow list", 30.0)
        return ProcessLock(self.lock_dir / "shadows.lock", "shadow list", wait=30.0)

    def device_dir(self, device_id: str) -> Path:
        """A device's folder on this machine's file system (a local data directory)."""
        folder = self.store.local_path(self.files.device_key(self.check_device(device_id)))
        if folder is None:
            raise FleetwatchError(f"{self.store.location} is not on this machine's file system")
        return folder

    @staticmethod
    def check_device(device_id: str) -> str:
        if not is_valid_name(device_id):
            raise InvalidInputError(f"device id {device_id!r} is not 1-64 of [A-Za-z0-9_.-]")
        return device_id

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
        import joblib
        import sklearn

        calibration = calibration or Calibration(0.0, 1.0, 0.0, "set by hand", [])
        buffer = io.BytesIO()
        joblib.dump(model.estimator(), buffer)
        layout, strings, blob = pack_arrays(model.arrays())
        files = {ESTIMATOR: buffer.getvalue(), PARAMS: blob}

        def manifest(version: str) -> dict[str, Any]:
            return {
                "device_id": device_id,
                "version": version,
                "kind": model.name,
                "sha256": {name: sha256_hex(data) for name, data in files.items()},
                "params": {"layout": layout, "strings": strings},
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

        return self._write_version(device_id, files, manifest, activate)

    def _write_version(
        self,
        device_id: str,
        files: dict[str, bytes],
        manifest: Callable[[str], dict[str, Any]],
        activate: bool,
    ) -> ModelVersion:
        """A new version of ``files`` and its manifest (see
        :meth:`fleetwatch.storage.models.ModelFiles.publish`), activated if asked."""
        self.check_device(device_id)
        for _ in range(20):
            number = 1 + max((int(v[1:]) for v in self._version_names(device_id)), default=0)
            version = f"v{number:04d}"
            document = manifest(version)
            try:
                self.files.publish(
                    device_id, version, files, json.dumps(document, indent=2).encode()
                )
            except VersionTakenError:
                continue
            break
        else:
            raise FleetwatchError(f"{device_id}: could not claim a new model version number")
        if activate:
            self.activate(device_id, version)
        return self._version(device_id, version, document)

    def _version(self, device_id: str, version: str, manifest: dict[str, Any]) -> ModelVersion:
        return ModelVersion(
            device_id,
            version,
            self.files.describe(device_id, version),
            manifest,
            self.files.local_path(device_id, version),
        )

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
        files = {name: self.verified(source, name) for name in MODEL_FILES}

        def manifest(new: str) -> dict[str, Any]:
            return {
                **source.manifest,
                "version": new,
                "threshold": calibration.threshold,
                "calibration": calibration.as_manifest(),
                "derived_from": version,
                "created_at": datetime.now(UTC).isoformat(),
            }

        return self._write_version(device_id, files, manifest, activate)

    def activate(self, device_id: str, version: str) -> None:
        self.check_device(device_id)
        if version not in self._version_names(device_id):
            raise InvalidInputError(f"{device_id} has no model version {version}")
        history = self.history(device_id)
        history.append(version)
        digest = self._manifest_digest(device_id, version)
        self.files.write_history(device_id, json.dumps(history))
        # the manifest's digest beside the version: a manifest changed afterwards (its
        # threshold, its features) is refused like a changed model file
        self.files.write_pointer(device_id, ACTIVE, f"{version} sha256={digest}\n")
        shadow = self._pointer(device_id, SHADOW)
        if shadow is not None and shadow[0] == version:  # promoted by hand
            self.clear_shadow(device_id)

    def _manifest_digest(self, device_id: str, version: str) -> str:
        try:
            raw = self.files.read(device_id, version, MANIFEST)
        except FileNotFoundError:  # a folder a writer left without its manifest
            raise InvalidInputError(f"{device_id} has no model version {version}") from None
        return sha256_hex(raw)

    def set_shadow(self, device_id: str, version: str) -> None:
        """Score ``version`` next to the active one (recorded, never alerting).

        ``<device>/SHADOW`` says which version (and its manifest's sha256); the registry's
        ``SHADOWS`` lists the devices that have one, so that a scoring run reads one file to
        know them (a device in ``SHADOWS`` without ``SHADOW`` is simply not shadow-scored)."""
        self.check_device(device_id)
        if version not in self._version_names(device_id):
            raise InvalidInputError(f"{device_id} has no model version {version}")
        if version == self.active_version(device_id):
            raise InvalidInputError(f"{device_id}: {version} is the active version already")
        check_current(self.get(device_id, version))
        digest = self._manifest_digest(device_id, version)
        self.files.write_pointer(device_id, SHADOW, f"{version} sha256={digest}\n")
        with self._lock():
            self._write_shadows(self.shadowed_devices() | {device_id})

    def clear_shadow(self, device_id: str) -> str | None:
        """Stop shadow scoring; the version that was in shadow, if any."""
        pointer = self._pointer(device_id, SHADOW)
        if pointer is None:
            return None
        with self._lock():
            self._write_shadows(self.shadowed_devices() - {device_id})
        self.files.remove_pointer(device_id, SHADOW)
        return pointer[0]

    def shadowed_devices(self) -> set[str]:
        """The devices listed as having a version in shadow."""
        raw = self.files.read_shadows()
        if raw is None:
            return set()
        try:
            listed = json.loads(raw)
        except ValueError:
            log.warning("%s is unreadable: no version is shadow-scored", "the registry's SHADOWS")
            return set()
        return {d for d in listed if isinstance(d, str) and is_valid_name(d)}

    def _write_shadows(self, devices: set[str]) -> None:
        self.files.write_shadows(json.dumps(sorted(devices)))

    def shadow(self, device_id: str) -> ModelVersion | None:
        """The version in shadow, its manifest checked against the digest in ``SHADOW``."""
        pointer = self._pointer(device_id, SHADOW)
        return None if pointer is None else self.get(device_id, *pointer)

    def promote(self, device_id: str) -> str:
        """Make the version in shadow the active one (its manifest checked first)."""
        in_shadow = self.shadow(device_id)
        if in_shadow is None:
            raise InvalidInputError(
                f"{device_id} has no version in shadow (models activate ID VERSION --shadow)"
            )
        self.activate(device_id, in_shadow.version)  # clears SHADOW
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

    def _version_names(self, device_id: str) -> list[str]:
        return sorted(self.files.versions(self.check_device(device_id)))

    def history(self, device_id: str) -> list[str]:
        raw = self.files.read_history(self.check_device(device_id))
        if raw is None:
            return []
        value: list[str] = json.loads(raw)
        return value

    def devices(self) -> list[str]:
        return sorted(self.model_devices())

    def pointer(self, device_id: str) -> tuple[str, str | None] | None:
        """``ACTIVE``: the active version and the sha256 of its manifest at activation (None
        for an ``ACTIVE`` written by an older fleetwatch), or None without one."""
        return self._pointer(device_id, ACTIVE)

    def _pointer(self, device_id: str, name: Any) -> tuple[str, str | None] | None:
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
        """Devices that have a model folder (active or not); a directory listing only."""
        return {name for name in self.files.devices() if is_valid_name(name)}

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
        """A version's manifest; with ``digest``, only if the manifest still has that sha256."""
        self.check_device(device_id)
        if not is_valid_name(version):
            raise InvalidInputError(f"model version {version!r} is not 1-64 of [A-Za-z0-9_.-]")
        try:
            raw = self.files.read(device_id, version, MANIFEST)
        except FileNotFoundError:
            raise InvalidInputError(f"{device_id} has no model version {version}") from None
        if digest is not None and sha256_hex(raw) != digest:
            raise ModelIntegrityError(
                f"{device_id} {version}: manifest.json does not match the sha256 recorded when "
                "it was activated (tampered or corrupt); it was not used. Retrain, roll back, "
                "or activate it again if the change was yours"
            )
        return self._version(device_id, version, json.loads(raw))

    def active(self, device_id: str) -> ModelVersion | None:
        """The active version, its manifest checked against the digest in ``ACTIVE``."""
        pointer = self.pointer(device_id)
        return None if pointer is None else self.get(device_id, *pointer)

    def overview(self) -> list[dict[str, Any]]:
        """One row per device: its active version, how many it has, kind, training end."""
        rows = []
        for device_id in self.devices():
            active = self.active(device_id)
            shadow = self._pointer(device_id, SHADOW)
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
        for name in MODEL_FILES:
            self.verified(model, name)
        shadow = self._pointer(device_id, SHADOW)
        return {
            **model.manifest,
            "active": version == self.active_version(device_id),
            "shadow": shadow is not None and version == shadow[0],
            "sha256_verified": True,
        }

    def verified(self, model: ModelVersion, file_name: str) -> bytes:
        """The bytes of ``file_name`` once their sha256 matched the manifest."""
        expected = model.manifest.get("sha256", {}).get(file_name)
        if expected is None:
            raise ModelIntegrityError(
                f"{model.device_id} {model.version} has no {file_name} in its manifest (saved "
                "by an older fleetwatch); retrain it with `fleetwatch train`"
            )
        try:
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
