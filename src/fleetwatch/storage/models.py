"""The model registry's objects in the data directory: the one place that knows their keys.

::

    models/runs/<run>.parquet                       a group of devices' versions, a row each
    models/journal/<seq>.json                       a change of the registry (create-only)
    models/journal/S<seq>.json                      the state after record <seq>

    models/SHADOWS                                  the devices with a version in shadow
    models/<device_id>/ACTIVE                       "v0003 sha256=<manifest digest>"
    models/<device_id>/SHADOW                       the same, for the version in shadow
    models/<device_id>/history.json                 the versions activated, in order
    models/<device_id>/<version>/.claim             taken first: one writer per version
    models/<device_id>/<version>/{model.joblib, params.bin}
    models/<device_id>/<version>/manifest.json      written last: what makes it a version

Versions are rows of run objects, and every change (a version published, activated, put in
or out of shadow) is a record of the journal. The last seven lines are what a fleetwatch
before the columnar store wrote (a folder per version): they are read as they are, never
written.

What the files mean (digests, activation, shadows) is :mod:`fleetwatch.scoring.registry`'s;
this module only reads and writes them through the store, which checks every key.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Final, Literal

from fleetwatch.storage.store import Content, DataStore, StoredObject, join

ROOT: Final = "models"
RUNS: Final = "models/runs"
JOURNAL: Final = "models/journal"
MANIFEST: Final = "manifest.json"
#: A version's model files, by the names its manifest's digests use.
ESTIMATOR: Final = "model.joblib"  # the scikit-learn objects (pickled: checked before loading)
PARAMS: Final = "params.bin"  # the parameters as raw float64/float32 (loaded without pickle)
MODEL_FILES: Final = (ESTIMATOR, PARAMS)
Pointer = Literal["ACTIVE", "SHADOW"]
ACTIVE: Final = "ACTIVE"
SHADOW: Final = "SHADOW"


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
        """The names of the device folders under ``models/`` (the caller checks them as ids)."""
        return [name for name in self.store.folders(ROOT) if name not in ("runs", "journal")]

    # ------------------------------------------------------------------ pointers

    def read_pointer(self, device_id: str, name: Pointer) -> bytes | None:
        try:
            return self.store.read(join(ROOT, device_id, name))
        except FileNotFoundError:
            return None

    def read_history(self, device_id: str) -> bytes | None:
        try:
            return self.store.read(join(ROOT, device_id, "history.json"))
        except FileNotFoundError:
            return None

    def read_shadows(self) -> bytes | None:
        try:
            return self.store.read(join(ROOT, "SHADOWS"))
        except FileNotFoundError:
            return None

    # ------------------------------------------------------------------ runs and journal

    @staticmethod
    def run_key(name: str) -> str:
        return join(RUNS, f"{name}.parquet")

    def write_run(self, name: str, content: Content) -> None:
        """A run object (written whole, once: nothing refers to it before the journal does)."""
        self.store.write(self.run_key(name), content)

    def runs(self) -> list[StoredObject]:
        """The run objects, as a listing finds them."""
        return [item for item in self.store.listing(RUNS) if item.name.endswith(".parquet")]

    def delete_runs(self, names: Iterable[str]) -> int:
        return self.store.delete([self.run_key(name) for name in names])

    def journal_names(self) -> list[str]:
        """The journal's objects: records ``<seq>`` and snapshots ``S<seq>`` (the state after
        record ``<seq>``), as named, unsorted."""
        return [
            item.name[: -len(".json")]
            for item in self.store.listing(JOURNAL)
            if item.name.endswith(".json") and not item.name.startswith(".")
        ]

    def read_journal(self, name: str) -> bytes:
        return self.store.read(join(JOURNAL, f"{name}.json"))

    def append_journal(self, sequence: int, content: bytes) -> None:
        """Record ``sequence``, only if there is none (the store's create-only write:
        :class:`ConflictError` for the second writer of a number)."""
        self.store.write_if(join(JOURNAL, f"{sequence:012d}.json"), content, None)

    def write_snapshot(self, sequence: int, content: bytes) -> None:
        self.store.write(join(JOURNAL, f"S{sequence:012d}.json"), content)

    def delete_journal(self, names: list[str]) -> None:
        self.store.delete([join(JOURNAL, f"{name}.json") for name in names])
