"""The model registry's objects in the data directory: the one place that knows their keys.

::

    models/SHADOWS                                  the devices with a version in shadow
    models/<device_id>/ACTIVE                       "v0003 sha256=<manifest digest>"
    models/<device_id>/SHADOW                       the same, for the version in shadow
    models/<device_id>/history.json                 the versions activated, in order
    models/<device_id>/<version>/.claim             taken first: one writer per version
    models/<device_id>/<version>/{model.joblib, params.bin}
    models/<device_id>/<version>/manifest.json      written last: what makes it a version

What the files mean (digests, activation, shadows) is :mod:`fleetwatch.scoring.registry`'s;
this module only reads and writes them through the store, which checks every key.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Final, Literal

from fleetwatch.errors import StorageError
from fleetwatch.storage.store import ConflictError, DataStore, join

ROOT: Final = "models"
MANIFEST: Final = "manifest.json"
#: A version's model files, by the names its manifest's digests use.
ESTIMATOR: Final = "model.joblib"  # the scikit-learn objects (pickled: checked before loading)
PARAMS: Final = "params.bin"  # the same parameters as raw float64 (loaded without pickle)
MODEL_FILES: Final = (ESTIMATOR, PARAMS)
Pointer = Literal["ACTIVE", "SHADOW"]
ACTIVE: Final = "ACTIVE"
SHADOW: Final = "SHADOW"


class VersionTakenError(StorageError):
    """Another writer claimed this version number first."""


class ModelFiles:
    """The registry's objects of one data directory."""

    def __init__(self, store: DataStore) -> None:
        self.store = store

    @staticmethod
    def device_key(device_id: str) -> str:
        return join(ROOT, device_id)

    @staticmethod
    def version_key(device_id: str, version: str, name: str = "") -> str:
        return join(ROOT, device_id, version, name)

    def describe(self, device_id: str, version: str = "", name: str = "") -> str:
        return self.store.describe(join(ROOT, device_id, version, name))

    def local_path(self, device_id: str, version: str) -> Path | None:
        return self.store.local_path(self.version_key(device_id, version))

    # ------------------------------------------------------------------ versions

    def read(self, device_id: str, version: str, name: str) -> bytes:
        """A version's file (``FileNotFoundError`` when there is none)."""
        return self.store.read(self.version_key(device_id, version, name))

    def file_version(self, device_id: str, version: str, name: str) -> str | None:
        """The store's version of a version's file (changes when it is replaced)."""
        return self.store.version(self.version_key(device_id, version, name))

    def versions(self, device_id: str) -> list[str]:
        """The version folders of a device (published or not: see :meth:`publish`)."""
        return [
            name for name in self.store.folders(self.device_key(device_id)) if name.startswith("v")
        ]

    def devices(self) -> list[str]:
        """The names of the folders under ``models/`` (the caller checks them as ids)."""
        return self.store.folders(ROOT)

    def publish(
        self, device_id: str, version: str, files: Mapping[str, bytes], manifest: bytes
    ) -> None:
        """A new version: claimed (one writer per number: :class:`VersionTakenError` for the
        second), its files written, its manifest last. A version without a manifest (its
        writer died) is not a version for the registry, and is never reused."""
        claim = self.version_key(device_id, version, ".claim")
        written: list[str] = []
        try:
            try:
                self.store.write_if(claim, b"", None)
            except ConflictError:
                raise VersionTakenError(
                    f"{device_id} {version} is taken by another writer"
                ) from None
            written.append(claim)
            for name, data in files.items():
                written.append(self.version_key(device_id, version, name))
                self.store.write(written[-1], data)
            self.store.write(self.version_key(device_id, version, MANIFEST), manifest)
        except VersionTakenError:
            raise
        except BaseException:  # a full disk: leave no half version behind (best effort)
            with contextlib.suppress(Exception):
                self.store.delete(written)
                self.store.remove_empty_folder(self.version_key(device_id, version))
            raise

    # ------------------------------------------------------------------ pointers

    def read_pointer(self, device_id: str, name: Pointer) -> bytes | None:
        try:
            return self.store.read(join(ROOT, device_id, name))
        except FileNotFoundError:
            return None

    def write_pointer(self, device_id: str, name: Pointer, text: str) -> None:
        self.store.write(join(ROOT, device_id, name), text.encode())

    def remove_pointer(self, device_id: str, name: Pointer) -> None:
        self.store.delete([join(ROOT, device_id, name)])

    def read_history(self, device_id: str) -> bytes | None:
        try:
            return self.store.read(join(ROOT, device_id, "history.json"))
        except FileNotFoundError:
            return None

    def write_history(self, device_id: str, text: str) -> None:
        self.store.write(join(ROOT, device_id, "history.json"), text.encode())

    def read_shadows(self) -> bytes | None:
        try:
            return self.store.read(join(ROOT, "SHADOWS"))
        except FileNotFoundError:
            return None

    def write_shadows(self, text: str) -> None:
        self.store.write(join(ROOT, "SHADOWS"), text.encode())
