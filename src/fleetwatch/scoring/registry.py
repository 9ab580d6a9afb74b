"""The model registry: ``<data>/models/<device_id>/<version>/`` with one active version per device.

A version folder holds ``model.joblib`` (the fitted scikit-learn objects), ``params.bin`` (the
same parameters as one raw little-endian float64 blob, laid out in the manifest, loaded without
pickle in microseconds) and ``manifest.json`` (sha256 of both files, feature names, training
range, hyper-parameters, library versions). Nothing is loaded
before its sha256 matches the manifest: a tampered file fails its device, never runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from fleetwatch.errors import FleetwatchError, InvalidInputError
from fleetwatch.ingest.telemetry import is_valid_name
from fleetwatch.scoring.calibration import Calibration
from fleetwatch.scoring.kinds import ModelKind
from fleetwatch.storage import remote
from fleetwatch.storage.atomic import (
    publish_directory,
    read_whole,
    storage_error,
    write_text_atomically,
)
from fleetwatch.storage.locks import ProcessLock

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
    path: Path
    manifest: dict[str, Any]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_bytes(path: str) -> bytes:
    """A whole file, with plain os calls (several times cheaper than ``open()`` for small files:
    scoring reads three small files for each of thousands of devices). The registry's files are
    replaced by rename, never rewritten in place, so their size is known when they are opened."""
    if remote.is_url(path):
        return remote.read_url(path)
    descriptor = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(descriptor).st_size
        data = os.read(descriptor, size)
        while len(data) < size and (more := os.read(descriptor, size - len(data))):
            data += more
        return data
    finally:
        os.close(descriptor)


class ModelRegistry:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.remote = remote.is_remote(root)
        self._root = str(root) if self.remote else os.fspath(root)

    def device_dir(self, device_id: str) -> Path:
        self.device_path(device_id)  # validates the id
        return self.root / device_id

    def _path(self, text: str) -> Path:
        return remote.parse_location(text) if self.remote else Path(text)

    def _lock(self) -> ProcessLock:
        """Serialises changes to ``SHADOWS``; beside a remote registry, in this machine's
        temporary folder (changes to one remote registry come from one machine at a time)."""
        if not self.remote:
            return ProcessLock(self.root / ".shadows.lock", "shadow list", wait=30.0)
        digest = hashlib.sha256(self._root.encode()).hexdigest()[:16]
        folder = Path(tempfile.gettempdir())
        return ProcessLock(folder / f"fleetwatch-shadows-{digest}.lock", "shadow list", wait=30.0)

    def device_path(self, device_id: str) -> str:
        """``device_dir`` as a string, for the per-device hot paths (no ``Path`` objects)."""
        if not is_valid_name(device_id):
            raise InvalidInputError(f"device id {device_id!r} is not 1-64 of [A-Za-z0-9_.-]")
        return f"{self._root}/{device_id}"  # f-strings: os.path.join costs more, per device

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

        def fill(version: str, staging: Path) -> dict[str, Any]:
            with (staging / "model.joblib").open("wb") as handle:
                joblib.dump(model.estimator(), handle)
            layout, strings, blob = pack_arrays(model.arrays())
            (staging / "params.bin").write_bytes(blob)
            manifest = {
                "device_id": device_id,
                "version": version,
                "kind": model.name,
                "sha256": {
                    "model.joblib": sha256_of(staging / "model.joblib"),
                    "params.bin": sha256_of(staging / "params.bin"),
                },
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
            return manifest

        return self._write_version(device_id, fill, activate)

    def _write_version(
        self,
        device_id: str,
        fill: Callable[[str, Path], dict[str, Any]],
        activate: bool,
    ) -> ModelVersion:
        """A new version: ``fill(version, staging)`` writes its model files into the staging
        folder and returns its manifest; the folder is published whole (or removed on a
        storage error), then activated if asked. In an object store the files go straight to
        the version's folder, the manifest last: a version without one does not exist for the
        registry, and a new number is taken after it."""
        version, target, staging = self._new_version(device_id)
        try:
            if not self.remote:
                staging.mkdir(parents=True)
            manifest = fill(version, staging)
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
        except OSError as exc:
            if not self.remote:
                shutil.rmtree(staging, ignore_errors=True)
            raise storage_error(target, exc) from exc
        except Exception as exc:  # an object store's own errors
            if not self.remote:
                raise
            raise remote.fail(target, exc) from exc
        publish_directory(staging, target)
        if activate:
            self.activate(device_id, version)
        return ModelVersion(device_id, version, target, manifest)

    def _new_version(self, device_id: str) -> tuple[str, Path, Path]:
        """The next version's name, folder and (emptied) staging folder."""
        folder = self.device_dir(device_id)
        number = 1 + max((int(v[1:]) for v in self._version_names(device_id)), default=0)
        version = f"v{number:04d}"
        if self.remote:
            return version, folder / version, folder / version
        folder.mkdir(parents=True, exist_ok=True)
        staging = folder / f".{version}.tmp"
        shutil.rmtree(staging, ignore_errors=True)  # left by a writer that crashed
        return version, folder / version, staging

    def with_threshold(
        self, device_id: str, version: str, calibration: Calibration, activate: bool = True
    ) -> ModelVersion:
        """A new version with ``version``'s model files (checked) and another threshold:
        versions never change, so a rollback brings the old threshold back."""
        source = self.get(device_id, version)
        check_current(source)

        def fill(new: str, staging: Path) -> dict[str, Any]:
            for name in ("model.joblib", "params.bin"):
                (staging / name).write_bytes(self.verified(source, name).read_bytes())
            return {
                **source.manifest,
                "version": new,
                "threshold": calibration.threshold,
                "calibration": calibration.as_manifest(),
                "derived_from": version,
                "created_at": datetime.now(UTC).isoformat(),
            }

        return self._write_version(device_id, fill, activate)

    def activate(self, device_id: str, version: str) -> None:
        folder = self.device_dir(device_id)
        if version not in self._version_names(device_id):
            raise InvalidInputError(f"{device_id} has no model version {version}")
        history = self.history(device_id)
        history.append(version)
        digest = self._manifest_digest(device_id, version)
        write_text_atomically(folder / "history.json", json.dumps(history))
        # the manifest's digest beside the version: a manifest changed afterwards (its
        # threshold, its features) is refused like a changed model file
        write_text_atomically(folder / "ACTIVE", f"{version} sha256={digest}\n")
        shadow = self._pointer(device_id, "SHADOW")
        if shadow is not None and shadow[0] == version:  # promoted by hand
            self.clear_shadow(device_id)

    def _manifest_digest(self, device_id: str, version: str) -> str:
        try:
            raw = read_bytes(f"{self.device_path(device_id)}/{version}/manifest.json")
        except FileNotFoundError:  # a folder a writer left without its manifest
            raise InvalidInputError(f"{device_id} has no model version {version}") from None
        return hashlib.sha256(raw).hexdigest()

    def set_shadow(self, device_id: str, version: str) -> None:
        """Score ``version`` next to the active one (recorded, never alerting).

        ``<device>/SHADOW`` says which version (and its manifest's sha256); the registry's
        ``SHADOWS`` lists the devices that have one, so that a scoring run reads one file to
        know them (a device in ``SHADOWS`` without ``SHADOW`` is simply not shadow-scored)."""
        folder = self.device_dir(device_id)
        if version not in self._version_names(device_id):
            raise InvalidInputError(f"{device_id} has no model version {version}")
        if version == self.active_version(device_id):
            raise InvalidInputError(f"{device_id}: {version} is the active version already")
        check_current(self.get(device_id, version))
        digest = self._manifest_digest(device_id, version)
        write_text_atomically(folder / "SHADOW", f"{version} sha256={digest}\n")
        with self._lock():
            self._write_shadows(self.shadowed_devices() | {device_id})

    def clear_shadow(self, device_id: str) -> str | None:
        """Stop shadow scoring; the version that was in shadow, if any."""
        pointer = self._pointer(device_id, "SHADOW")
        if pointer is None:
            return None
        with self._lock():
            self._write_shadows(self.shadowed_devices() - {device_id})
        (self.device_dir(device_id) / "SHADOW").unlink(missing_ok=True)
        return None if pointer is None else pointer[0]

    def shadowed_devices(self) -> set[str]:
        """The devices listed as having a version in shadow."""
        try:
            listed = json.loads(read_bytes(f"{self._root}/SHADOWS"))
        except FileNotFoundError:
            return set()
        except ValueError:
            log.warning("%s/SHADOWS is unreadable: no version is shadow-scored", self._root)
            return set()
        return {d for d in listed if isinstance(d, str) and is_valid_name(d)}

    def _write_shadows(self, devices: set[str]) -> None:
        write_text_atomically(self.root / "SHADOWS", json.dumps(sorted(devices)))

    def shadow(self, device_id: str) -> ModelVersion | None:
        """The version in shadow, its manifest checked against the digest in ``SHADOW``."""
        pointer = self._pointer(device_id, "SHADOW")
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
        folder = self.device_dir(device_id)
        if self.remote:
            return sorted(name for name in remote.subfolders(folder) if name.startswith("v"))
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name.startswith("v"))

    def history(self, device_id: str) -> list[str]:
        try:
            value: list[str] = json.loads(read_whole(self.device_dir(device_id) / "history.json"))
        except FileNotFoundError:
            return []
        return value

    def devices(self) -> list[str]:
        if self.remote:
            return sorted(self.model_devices())
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and is_valid_name(p.name))

    def pointer(self, device_id: str) -> tuple[str, str | None] | None:
        """``ACTIVE``: the active version and the sha256 of its manifest at activation (None
        for an ``ACTIVE`` written by an older fleetwatch), or None without one."""
        return self._pointer(device_id, "ACTIVE")

    def _pointer(self, device_id: str, name: str) -> tuple[str, str | None] | None:
        # read_bytes, not Path.read_text: scoring calls this for every device of the fleet.
        try:
            words = read_bytes(f"{self.device_path(device_id)}/{name}").decode().split()
        except FileNotFoundError:
            return None
        if not words:
            return None
        digest = next((w[7:] for w in words[1:] if w.startswith("sha256=")), None)
        return words[0], digest

    def active_version(self, device_id: str) -> str | None:
        pointer = self.pointer(device_id)
        return None if pointer is None else pointer[0]

    def model_devices(self) -> set[str]:
        """Devices that have a model folder (active or not); a directory listing only."""
        if self.remote:
            return {name for name in remote.subfolders(self.root) if is_valid_name(name)}
        if not self.root.is_dir():
            return set()
        return {e.name for e in os.scandir(self.root) if e.is_dir() and is_valid_name(e.name)}

    def versions(self, device_id: str) -> list[ModelVersion]:
        """Every published version (a folder without a manifest, left by a writer that
        stopped half-way in an object store, is not one)."""
        found = []
        for version in self._version_names(device_id):
            try:
                found.append(self.get(device_id, version))
            except InvalidInputError:
                continue
        return found

    def get(self, device_id: str, version: str, digest: str | None = None) -> ModelVersion:
        """A version's manifest; with ``digest``, only if the manifest still has that sha256."""
        if not is_valid_name(version):
            raise InvalidInputError(f"model version {version!r} is not 1-64 of [A-Za-z0-9_.-]")
        path = f"{self.device_path(device_id)}/{version}"
        try:
            raw = read_bytes(f"{path}/manifest.json")
        except FileNotFoundError:
            raise InvalidInputError(f"{device_id} has no model version {version}") from None
        if digest is not None and hashlib.sha256(raw).hexdigest() != digest:
            raise ModelIntegrityError(
                f"{device_id} {version}: manifest.json does not match the sha256 recorded when "
                "it was activated (tampered or corrupt); it was not used. Retrain, roll back, "
                "or activate it again if the change was yours"
            )
        return ModelVersion(device_id, version, self._path(path), json.loads(raw))

    def active(self, device_id: str) -> ModelVersion | None:
        """The active version, its manifest checked against the digest in ``ACTIVE``."""
        pointer = self.pointer(device_id)
        return None if pointer is None else self.get(device_id, *pointer)

    def overview(self) -> list[dict[str, Any]]:
        """One row per device: its active version, how many it has, kind, training end."""
        rows = []
        for device_id in self.devices():
            active = self.active(device_id)
            shadow = self._pointer(device_id, "SHADOW")
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
        self.verified(model, "model.joblib")
        self.verified(model, "params.bin")
        shadow = self._pointer(device_id, "SHADOW")
        return {
            **model.manifest,
            "active": version == self.active_version(device_id),
            "shadow": shadow is not None and version == shadow[0],
            "sha256_verified": True,
        }

    @staticmethod
    def verified(model: ModelVersion, file_name: str) -> Path:
        """The path of ``file_name`` after its sha256 matched the manifest."""
        path = model.path / file_name
        expected = model.manifest["sha256"][file_name]
        if sha256_of(path) != expected:
            raise ModelIntegrityError(
                f"{model.device_id} {model.version}: {file_name} does not match the sha256 in its "
                "manifest (tampered or corrupt); it was not loaded. Retrain or roll back."
            )
        return path

    @classmethod
    def load_params(cls, model: ModelVersion) -> tuple[str, dict[str, np.ndarray]]:
        """The kind and parameter arrays: read once, sha256-checked, decoded without pickle."""
        kind = str(model.manifest["kind"])
        return kind, unpack_arrays(model.manifest["params"], cls.read_params(model))

    @staticmethod
    def read_params(model: ModelVersion) -> bytes:
        """``params.bin`` as bytes, once its sha256 matched the manifest."""
        if "params.bin" not in model.manifest.get("sha256", {}):
            raise ModelIntegrityError(
                f"{model.device_id} {model.version} has no params.bin in its manifest (saved by "
                "an older fleetwatch); retrain it with `fleetwatch train`"
            )
        blob = read_bytes(f"{model.path}/params.bin")
        if hashlib.sha256(blob).hexdigest() != model.manifest["sha256"]["params.bin"]:
            raise ModelIntegrityError(
                f"{model.device_id} {model.version}: params.bin does not match the sha256 in its "
                "manifest (tampered or corrupt); it was not loaded. Retrain or roll back."
            )
        return blob

    @classmethod
    def load_estimator(cls, model: ModelVersion) -> Any:
        """The scikit-learn objects; unpickled only after the sha256 check."""
        import io

        import joblib

        blob = (model.path / "model.joblib").read_bytes()  # checked and loaded: the same bytes
        if hashlib.sha256(blob).hexdigest() != model.manifest["sha256"]["model.joblib"]:
            raise ModelIntegrityError(
                f"{model.device_id} {model.version}: model.joblib does not match the sha256 in "
                "its manifest (tampered or corrupt); it was not loaded. Retrain or roll back."
            )
        return joblib.load(io.BytesIO(blob))
