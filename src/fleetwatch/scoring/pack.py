"""The model pack: every device's active scoring parameters in a few memory-mapped files.

Scoring a device from the registry costs its manifest (read, checked, parsed) and a fresh
copy of its parameters: about 0.15 ms, more than scoring its hour. The pack keeps
the active versions' parameters (a single pipeline in the form scoring uses, its ``Scorer``;
other kinds as in their ``params.bin``), with what scoring needs from their manifests, in
segments under ``<data>/state/model-pack/``: ``<seq>-<token>.bin`` (the parameters, aligned)
and ``<seq>-<token>.json`` (their index). Workers inherit the mapping and check the bytes in
place. It is a cache, never the truth:

- an entry is used only while the registry's journal names its version as active with the
  manifest digest it was packed with, and the run object holding it has the store version it
  had (a version folder of an older registry: while its ``ACTIVE`` names it and its files
  have the store versions they had); otherwise scoring reads the registry as before (so an
  ``activate``, a rollback, a hand-made journal record or a rewritten run object takes effect
  at once);
- the bytes are made from parameters checked against their manifest's sha256, and are
  checked against their CRC-32 each time they are used (damage to the pack is caught; the
  CRC is kept beside the bytes, so like a sha256 there it could not stop someone who may
  write the pack: the registry's files and their sha256 stay the reference);
- segments are written aside and renamed into place, and only ever deleted whole, so a run
  that mapped a segment keeps reading it even while a refresh replaces it.

Measured (benchmarks/score.py --variants, 10,000 devices, 8 rotated rounds): a scoring run
takes 1.16 s with the pack and 1.80 s reading every model from its files (+55%).

``fleetwatch train`` packs the models it saves; ``fleetwatch score`` packs, after its run, the
devices it had to read from their files; ``fleetwatch models pack`` packs every device.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import threading
import time
import uuid
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from fleetwatch.errors import FleetwatchError
from fleetwatch.scoring.kinds import KINDS, ModelKind, Scorer, kind_named
from fleetwatch.scoring.registry import (
    ModelRegistry,
    ModelVersion,
    ParamsLayout,
    check_current,
    pack_arrays,
)
from fleetwatch.storage.atomic import write_atomically, write_bytes_atomically
from fleetwatch.storage.models import ACTIVE, MANIFEST, PARAMS
from fleetwatch.telemetry import is_valid_name

log = logging.getLogger(__name__)

#: 1: params.bin copies with a sha256 each (as in the manifests); 2: with a CRC-32, 2.4x faster;
#: 3: single-pipeline models as their ``Scorer`` (20 us less per device than params.bin);
#: 4: the calibration's tail scale beside the threshold (models of features version 2);
#: 5: the store's versions of the files, not their inode, size and time
FORMAT = 5
ALIGN = 64  # every entry starts on a cache line: float64 views of the mapping are aligned
#: A refresh rewrites the pack as one segment when it stores more than this many times the
#: entries in use (superseded versions pile up with every retraining).
COMPACT_ABOVE = 2.0
Signature = str  # the store's version of a file: it changes whenever the file is replaced


@dataclass(frozen=True)
class ActiveModel:
    """A device's active model as scoring needs it, from the pack or the registry's files."""

    version: str
    kind: type[ModelKind]
    features: tuple[str, ...]
    threshold: float
    tail_scale: float  # normalised score = (score - threshold) / tail_scale
    scorer: Scorer


class _Entry(NamedTuple):  # 10,000 made per run: a tuple is made 4x faster than a dataclass
    version: str
    manifest: Signature
    params: Signature
    crc32: int  # of the packed bytes
    kind: type[ModelKind]
    features: tuple[str, ...]
    layout: ParamsLayout
    threshold: float
    tail_scale: float
    segment: str
    offset: int
    length: int


#: One device's pack entry: its id, the entry, its packed bytes.
PackItem = tuple[str, _Entry, bytes]


class ModelPack:
    def __init__(self, folder: Path, registry: ModelRegistry) -> None:
        self.folder = folder
        self.registry = registry
        self._entries: dict[str, _Entry] = {}
        self._maps: dict[str, mmap.mmap] = {}
        self._stored = 0  # entries in all segments, superseded ones included
        self._preloaded: dict[str, ActiveModel | None] = {}
        self._unreadable: list[str] = []  # damaged segments: a compaction deletes them

    @classmethod
    def open(cls, folder: Path, registry: ModelRegistry) -> ModelPack:
        """The pack as it is on disk now; a damaged or vanished segment is left out."""
        pack = cls(folder, registry)
        pack.open_segments()
        return pack

    @staticmethod
    def state_of(folder: Path) -> tuple[tuple[str, int], ...]:
        """The names and modification times of a pack folder's indexes (empty: no pack)."""
        if not folder.is_dir():
            return ()
        return tuple(sorted((p.name, p.stat().st_mtime_ns) for p in folder.glob("[!.]*.json")))

    def open_segments(self) -> None:
        for name in self._segment_names():
            try:
                self._read_segment(name)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning(
                    "model pack segment %s left out (%s): its models are read from their "
                    "files, and the pack is rewritten after the next scoring run",
                    name,
                    exc,
                )
                self._unreadable.append(name)

    def __len__(self) -> int:
        return len(self._entries)

    def _segment_names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(p.stem for p in self.folder.glob("*.json") if not p.name.startswith("."))

    def _read_segment(self, name: str) -> None:
        index = json.loads((self.folder / f"{name}.json").read_bytes())
        if index.get("format") != FORMAT:  # an older fleetwatch's: compacted away, repacked
            raise ValueError(f"format {index.get('format')!r}, this fleetwatch reads {FORMAT}")
        with (self.folder / f"{name}.bin").open("rb") as handle:
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        features = [tuple(f) for f in index["features"]]
        layouts = [ParamsLayout(params) for params in index["layouts"]]
        for device_id, row in index["entries"].items():
            version, manifest, params, crc, kind, feature_id, layout_id, calibrated, at, size = row
            threshold, tail_scale = calibrated
            if not (is_valid_name(device_id) and is_valid_name(version) and kind in KINDS):
                raise ValueError(f"an entry names {device_id!r} {version!r} {kind!r}")
            kind = KINDS[kind]
            if at + size > len(mapped):
                raise ValueError(f"{device_id}'s entry lies past the end of {name}.bin")
            self._entries[device_id] = _Entry(
                version,
                str(manifest),
                str(params),
                int(crc),
                kind,
                features[feature_id],
                layouts[layout_id],
                float(threshold),
                float(tail_scale),
                name,
                at,
                size,
            )
        self._maps[name] = mapped
        self._stored += len(index["entries"])

    # ------------------------------------------------------------------ reading

    def preload(self, devices: Iterable[str], stop: threading.Event | None = None) -> int:
        """``load`` ``devices`` ahead, in order, until ``stop`` is set (from another thread);
        ``load`` then returns what was found at once. Returns how many were tried."""
        tried = 0
        for device_id in devices:
            if stop is not None and stop.is_set():
                break
            try:
                self._preloaded[device_id] = self._load(device_id)
            except Exception as exc:  # not loaded ahead: `load` raises it again, for its device
                log.debug("%s not preloaded: %s", device_id, exc)
            tried += 1
        return tried

    def forget(self, devices: Iterable[str]) -> None:
        """Let go of the models ``preload`` loaded for ``devices`` (scoring an hour in parts:
        one part's models at a time), and of the pack's pages this process has read: they stay
        in the page cache (the next access reads them from there), but no longer count in its
        memory (at 100,000 devices the pack is ~630 MB, which the parts would otherwise read
        into the scoring process one part at a time)."""
        for device_id in devices:
            self._preloaded.pop(device_id, None)
        if hasattr(mmap, "MADV_DONTNEED"):  # Linux, macOS
            for mapped in self._maps.values():
                mapped.madvise(mmap.MADV_DONTNEED)

    def load(self, device_id: str) -> ActiveModel | None:
        """The device's active model from the pack, or None when the pack does not hold it as
        the registry has it now (the caller then reads the registry's files)."""
        if device_id in self._preloaded:
            return self._preloaded[device_id]
        return self._load(device_id)

    def _load(self, device_id: str) -> ActiveModel | None:
        entry = self._entries.get(device_id)
        if entry is None:
            return None
        try:
            if signatures(self.registry, device_id, entry.version) != (
                entry.manifest,
                entry.params,
            ):
                return None
        except (OSError, UnicodeDecodeError, FleetwatchError):
            return None
        blob = memoryview(self._maps[entry.segment])[entry.offset : entry.offset + entry.length]
        if zlib.crc32(blob) != entry.crc32:
            log.warning("model pack: %s %s damaged, read from files", device_id, entry.version)
            return None
        try:
            scorer = entry.kind.from_packed(entry.layout.arrays(blob))
        except (KeyError, ValueError, IndexError, TypeError) as exc:
            log.warning("model pack: %s %s unusable (%s)", device_id, entry.version, exc)
            return None
        return ActiveModel(
            entry.version, entry.kind, entry.features, entry.threshold, entry.tail_scale, scorer
        )

    # ------------------------------------------------------------------ writing

    def refresh(self, devices: Iterable[str] | None = None) -> int:
        """Pack the active models of ``devices`` (default: every device with a model folder)
        that the pack does not hold as they are now. Returns how many were packed.

        A device whose files do not check out (no active version, a sha256 mismatch, ...) is
        left to the registry's own path, which reports why when it is scored."""
        chosen = sorted(self.registry.model_devices() if devices is None else set(devices))
        fresh = []
        for device_id in chosen:
            if device_id in self._entries and self._load(device_id) is not None:
                continue
            item = self._from_registry(device_id)
            if item is not None:
                fresh.append(item)
        if fresh:
            self._write(fresh)
        if self._unreadable or self._stored > COMPACT_ABOVE * max(len(self._entries), 1):
            self.compact()
        return len(fresh)

    def compact(self) -> None:
        """Rewrite what is in use as one segment; delete the others and any damaged one."""
        for name in self._unreadable:  # an index is renamed into place whole: this one is bad
            self._delete_segment(name)
        self._unreadable.clear()
        if len(self._maps) <= 1 and self._stored == len(self._entries):
            return  # one segment, nothing superseded
        old = list(self._maps)
        keep = []
        for device_id, entry in sorted(self._entries.items()):
            if self._load(device_id) is not None:
                view = memoryview(self._maps[entry.segment])
                keep.append((device_id, entry, view[entry.offset : entry.offset + entry.length]))
        self._entries.clear()
        self._stored = 0
        if keep:
            self._write(keep)
        for name in old:
            self._delete_segment(name)
        for stale in self.folder.glob(".*.tmp"):  # left by a writer that crashed
            with contextlib.suppress(FileNotFoundError):
                if stale.stat().st_mtime < time.time() - 3600:
                    stale.unlink()

    def _delete_segment(self, name: str) -> None:
        for suffix in (".json", ".bin"):  # index first: no reader finds an index without data
            (self.folder / f"{name}{suffix}").unlink(missing_ok=True)
        self._maps.pop(name, None)  # its pages stay readable for whoever still maps them

    def _from_registry(self, device_id: str) -> tuple[str, _Entry, bytes] | None:
        return pack_entry(self.registry, device_id)

    def add(self, items: Iterable[PackItem | None]) -> int:
        """Pack entries made elsewhere (:func:`pack_entry`, by the training workers right after
        they saved the models): one segment, no registry read here. Returns how many."""
        fresh = [item for item in items if item is not None]
        if fresh:
            self._write(fresh)
        if self._unreadable or self._stored > COMPACT_ABOVE * max(len(self._entries), 1):
            self.compact()
        return len(fresh)

    def _write(self, items: Sequence[tuple[str, _Entry, bytes | memoryview]]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        names = self._segment_names()
        sequence = 1 + max((int(n.split("-", 1)[0]) for n in names), default=0)
        name = f"{sequence:08d}-{uuid.uuid4().hex[:8]}"
        features: dict[tuple[str, ...], int] = {}
        layouts: dict[str, int] = {}
        layout_list: list[dict[str, Any]] = []
        entries: dict[str, list[Any]] = {}
        offset = 0
        rows: list[tuple[bytes | memoryview, int]] = []
        for device_id, entry, blob in items:
            key = json.dumps(entry.layout.params, sort_keys=True)
            if key not in layouts:
                layouts[key] = len(layout_list)
                layout_list.append(entry.layout.params)
            entries[device_id] = [
                entry.version,
                entry.manifest,
                entry.params,
                entry.crc32,
                entry.kind.name,
                features.setdefault(entry.features, len(features)),
                layouts[key],
                [entry.threshold, entry.tail_scale],
                offset,
                len(blob),
            ]
            padding = -len(blob) % ALIGN
            rows.append((blob, padding))
            offset += len(blob) + padding

        def write_blobs(handle: BinaryIO) -> None:
            for blob, padding in rows:
                handle.write(blob)
                handle.write(b"\0" * padding)

        # data first, then its index: no reader finds an index whose data is not there
        write_atomically(self.folder / f"{name}.bin", write_blobs)
        index = {
            "format": FORMAT,
            "features": [list(f) for f in features],
            "layouts": layout_list,
            "entries": entries,
        }
        write_bytes_atomically(
            self.folder / f"{name}.json", json.dumps(index, separators=(",", ":")).encode()
        )
        self._read_segment(name)


def signatures(
    registry: ModelRegistry, device_id: str, version: str
) -> tuple[Signature, Signature] | None:
    """What a pack entry of ``device_id``'s ``version`` must carry to be used: None unless it
    is the active version. A version of a run object: the object's store version (a replaced
    object misses: its rows are read and checked again) and the manifest digest the journal
    published it with; a version folder: the store's versions of its manifest and parameters."""
    source = registry.active_source(registry.check_device(device_id))
    if source is not None:
        active, digest, run = source
        if active != version:
            return None
        if run is not None:
            return f"{run}@{registry.runs.store_version(run)}", digest
    else:  # a registry before the journal: its ACTIVE file
        raw = registry.files.read_pointer(device_id, ACTIVE)
        words = raw.decode().split() if raw is not None else []
        if not words or words[0] != version:
            return None
    files = registry.files
    manifest = files.file_version(device_id, version, MANIFEST)
    params = files.file_version(device_id, version, PARAMS)
    return None if manifest is None or params is None else (manifest, params)


def pack_entry(registry: ModelRegistry, device_id: str) -> PackItem | None:
    """The pack entry of ``device_id``'s active model, from its checked files; None when they
    do not check out (scoring then reads the files and reports why)."""
    try:
        version = registry.active_version(device_id)
        if version is None or not is_valid_name(version):
            return None
        # signatures before contents: a version changed after this no longer matches them
        signed = signatures(registry, device_id, version)
        if signed is None:
            return None
        model = registry.active(device_id)  # the manifest checked against its digest
        if model is None or model.version != version:
            return None
        check_current(model)
        blob = registry.read_params(model)  # sha256-checked
        arrays = ParamsLayout(model.manifest["params"]).arrays(blob)
        return entry_of(device_id, version, model.manifest, arrays, signed)
    except (OSError, ValueError, KeyError, TypeError, FleetwatchError):
        return None


def entry_of(
    device_id: str,
    version: str,
    manifest: dict[str, Any],
    arrays: dict[str, Any],
    signed: tuple[Signature, Signature],
) -> PackItem | None:
    """A pack entry of a model's checked parameters (None for a kind this fleetwatch lacks:
    scoring reads the files and reports why)."""
    kind = KINDS.get(manifest["kind"])
    if kind is None:
        return None
    params, blob = pack_arrays(kind.packed(arrays))
    layout = ParamsLayout(params)
    entry = _Entry(
        version,
        *signed,
        zlib.crc32(blob),
        kind,
        tuple(manifest["features"]),
        layout,
        *calibrated(manifest),
        "",
        0,
        len(blob),
    )
    return device_id, entry, blob


def read_active(registry: ModelRegistry, device_id: str) -> ActiveModel | None:
    """The device's active model from the registry's own files (sha256-checked, no pickle)."""
    return model_from_files(registry, registry.active(device_id))


def model_from_files(registry: ModelRegistry, model: ModelVersion | None) -> ActiveModel | None:
    """A version as scoring needs it, from its files (sha256-checked, no pickle)."""
    if model is None:
        return None
    check_current(model)
    name, arrays = registry.load_params(model)
    kind = kind_named(name)
    features = tuple(model.manifest["features"])
    return ActiveModel(
        model.version, kind, features, *calibrated(model.manifest), kind.scorer(arrays)
    )


def calibrated(manifest: dict[str, Any]) -> tuple[float, float]:
    """A manifest's threshold and tail scale."""
    scale = float(manifest["calibration"]["tail_scale"])
    if not scale > 0:
        raise ValueError(f"tail scale {scale!r} in the manifest: it must be positive")
    return float(manifest["threshold"]), scale


def refresh_quietly(pack: ModelPack, devices: Iterable[str] | None = None) -> int:
    """``pack.refresh``, for callers whose own work is done: a pack that cannot be written
    (a full disk, a read-only folder) only makes the next run slower, so it is logged."""
    try:
        return pack.refresh(devices)
    except Exception as exc:  # the pack is a cache: never fail the caller for it
        log.warning("model pack not updated (%s); scoring reads the model files instead", exc)
        return 0
