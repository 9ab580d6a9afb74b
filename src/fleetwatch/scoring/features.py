"""Window features per device: for every sensor its mean, std, min, max and reading count.

The reading count (0 when the sensor did not report) makes a missing sensor explicit: a model
trained on windows where the sensor always reported sees a window without it as far from
normal (a dropout is an anomaly), while the sensor's own statistics are imputed with the
training medians.

A *slow* sensor (a temperature, a level: see :func:`slow_sensors`) is described by its change
from the previous window (``delta``) instead of its mean, min and max: a training range rarely
covers every level such a sensor will wander to, but how fast it moves stays comparable.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from fleetwatch.errors import InvalidInputError
from fleetwatch.storage.parquet import open_file, read_metadata
from fleetwatch.storage.store import DataStore

#: The window statistics read from the aggregates, in the cube's order.
STATISTICS: Final = ("mean", "std", "min", "max", "count")
LEVEL_FEATURES: Final = ("mean", "std", "min", "max", "count")
SLOW_FEATURES: Final = ("delta", "std", "count")
#: A sensor is slow when the mean squared change of its window means is below this share of
#: twice their variance (von Neumann's ratio; about 1 for noise): its windows' lag-1
#: autocorrelation is above 0.9, it wanders more than it fluctuates.
SLOW_RATIO: Final = 0.1
#: ... judged on at least this many consecutive training windows (fewer: not slow).
SLOW_MIN_WINDOWS: Final = 10
#: ... and only when it reports in at least this share of the windows it spans.
SLOW_MIN_COVERAGE: Final = 0.8
FloatMatrix = npt.NDArray[np.float64]


def feature_names(sensors: list[str], slow: Collection[str] = ()) -> list[str]:
    """The feature columns of a device with these sensors (``slow``: those judged slow).

    >>> feature_names(["temp", "flow"], slow=["temp"])[-4:]
    ['flow__count', 'temp__delta', 'temp__std', 'temp__count']
    """
    return [
        f"{s}__{stat}"
        for s in sorted(sensors)
        for stat in (SLOW_FEATURES if s in slow else LEVEL_FEATURES)
    ]


def judge_slow(
    means: FloatMatrix,
    sensors: list[str],
    starts: np.ndarray | None = None,
    window_ms: int | None = None,
) -> dict[str, bool]:
    """Whether each sensor's window means (columns of ``means``, rows in time order) are slow
    (see :data:`SLOW_RATIO`); sensors with too few windows, or constant, are left out. A
    sensor that reports in fewer than :data:`SLOW_MIN_COVERAGE` of the windows (readings
    further apart than a window) is never slow: its change from one reading to the next spans
    windows the model does not see, and its level is what it has to say. The windows it spans
    are counted from ``starts`` (the rows' window starts, epoch ms) and ``window_ms`` when
    given: windows without any reading are not rows at all."""
    judged = {}
    for index, sensor in enumerate(sensors):
        values = means[:, index]
        present = ~np.isnan(values)
        if present.any():
            rows = np.flatnonzero(present)
            if starts is not None and window_ms:
                spanned = (int(starts[rows[-1]]) - int(starts[rows[0]])) // window_ms + 1
            else:
                spanned = int(rows[-1] - rows[0] + 1)
            if len(rows) < SLOW_MIN_COVERAGE * spanned:
                judged[sensor] = False
                continue
        values = values[present]
        if len(values) < SLOW_MIN_WINDOWS:
            continue
        variance = float(values.var())
        if variance <= 0:
            continue
        judged[sensor] = float(np.mean(np.diff(values) ** 2)) / (2 * variance) < SLOW_RATIO
    return judged


def fleet_slow(votes: Mapping[str, Sequence[bool]]) -> list[str]:
    """The sensors judged slow on more than half of the devices judged on them: one device's
    few training windows can make a noisy sensor look slow (or a thermal one not); the
    devices of a fleet share what their sensors measure.

    >>> fleet_slow({"temp": [True, True, False], "flow": [True, False], "rpm": []})
    ['temp']
    """
    return sorted(s for s, judged in votes.items() if 2 * sum(judged) > len(judged))


def named_slow(
    sensors: list[str], declared: Sequence[str], fleet: Collection[str] | None
) -> list[str] | None:
    """The slow sensors ``declared`` or judged by the ``fleet`` (see :func:`slow_sensors`);
    None when the device judges them alone, from its window means.

    >>> named_slow(["flow", "temp"], ["auto"], None) is None
    True
    """
    if list(declared) == ["none"]:
        return []
    chosen = set(declared) if list(declared) != ["auto"] else fleet
    return None if chosen is None else [sensor for sensor in sensors if sensor in chosen]


def slow_sensors(
    means: FloatMatrix,
    sensors: list[str],
    declared: Sequence[str] = ("auto",),
    fleet: Collection[str] | None = None,
    starts: np.ndarray | None = None,
    window_ms: int | None = None,
) -> list[str]:
    """The sensors of a device to describe by their change: those ``declared``
    (``--slow-sensors`` names; ``none``: no sensor), or with ``auto`` those the devices
    trained together judged slow (``fleet``, see :func:`fleet_slow`), else those this
    device's window means show slow (see :func:`judge_slow`).

    >>> slow_sensors(np.zeros((0, 2)), ["flow", "temp"], ["temp", "humidity"])
    ['temp']
    """
    chosen = named_slow(sensors, declared, fleet)
    if chosen is not None:
        return chosen
    judged = judge_slow(means, sensors, starts, window_ms)
    return [sensor for sensor, slow in judged.items() if slow]


def devices_in_files(store: DataStore, files: Sequence[str]) -> tuple[list[str], int]:
    """The device ids found in ``files`` and their row count, from the device column alone."""
    found: set[str] = set()
    rows = 0
    for key in files:
        parquet = open_file(store, key, read_dictionary=["device_id"])
        rows += parquet.metadata.num_rows
        for chunk in parquet.read(columns=["device_id"]).column(0).chunks:
            found.update(str(v) for v in chunk.dictionary.to_pylist())
    return sorted(found), rows


def sensors_and_window(store: DataStore, files: Sequence[str]) -> tuple[set[str], set[int]]:
    """The sensor names in ``files`` and the window lengths (ms) their windows have, from the
    sensor column's dictionary and one row of each file."""
    sensors: set[str] = set()
    lengths: set[int] = set()
    for key in files:
        parquet = open_file(store, key, read_dictionary=["sensor"])
        if parquet.metadata.num_rows == 0:
            continue
        for chunk in parquet.read(columns=["sensor"]).column(0).chunks:
            sensors.update(str(v) for v in chunk.dictionary.to_pylist())
        first = parquet.read_row_group(0, columns=["window_start", "window_end"]).slice(0, 1)
        start, end = (first.column(name)[0].value for name in ("window_start", "window_end"))
        lengths.add(int(end) - int(start))
    return sensors, lengths


Piece = tuple[str, int]  # a row group of a Parquet file: the unit a Dask task reads


def device_pieces(
    store: DataStore, files: Sequence[str]
) -> tuple[list[Piece], dict[str, tuple[int, ...]]]:
    """The row groups of ``files``, and per device the indices of those that hold its rows,
    from the device column alone (dictionary-encoded: no per-row string)."""
    import pyarrow.compute as pc

    pieces: list[Piece] = []
    found: dict[str, list[int]] = {}
    for key in files:
        parquet = open_file(store, key, read_dictionary=["device_id"])
        for group in range(parquet.metadata.num_row_groups):
            index = len(pieces)
            pieces.append((key, group))
            column = parquet.read_row_group(group, columns=["device_id"]).column(0)
            for chunk in column.chunks:
                names = chunk.dictionary.to_pylist()
                for code in pc.unique(chunk.indices).to_pylist():
                    if code is not None:
                        holders = found.setdefault(str(names[code]), [])
                        if not holders or holders[-1] != index:
                            holders.append(index)
    return pieces, {device: tuple(indices) for device, indices in found.items()}


def by_pieces(where: Mapping[str, tuple[int, ...]], devices: Iterable[str]) -> list[str]:
    """``devices`` in the order of the row groups that hold them (``where``, as
    :func:`device_pieces` gives it), then of their ids: devices whose rows share row groups
    come together (a range of a backfill file, sorted by device; a Kafka partition's live
    files), so that a part of neighbours in this order reads few row groups.

    >>> by_pieces({"a": (1, 3), "b": (0, 2), "c": (1, 3), "d": (0, 2)}, "abcd")
    ['b', 'd', 'a', 'c']
    """
    return sorted(devices, key=lambda device: (where.get(device, ()), device))


def pieces_of(
    pieces: Sequence[Piece], where: Mapping[str, tuple[int, ...]], devices: Iterable[str]
) -> list[Piece]:
    """The row groups among ``pieces`` that hold rows of ``devices`` (``where``, as
    :func:`device_pieces` gives it), in file order: what a part of a fleet reads. In files
    sorted by device (as ``import --backfill`` writes them) a part of neighbouring devices
    reads its share of the hour, not all of it."""
    return [pieces[i] for i in sorted({i for device in devices for i in where.get(device, ())})]


def in_parts(
    pieces: Sequence[Piece],
    where: Mapping[str, tuple[int, ...]],
    devices: Iterable[str],
    rows: int,
    part_rows: int,
) -> list[tuple[list[str], list[Piece]]]:
    """``devices`` (of files of ``rows`` rows in all, whose row groups are ``pieces`` and
    ``where``, as :func:`device_pieces` gives them) in parts of about ``part_rows`` rows, each
    with the row groups it reads: devices that share row groups go together
    (:func:`by_pieces`). How scoring reads an hour, and training its range, when they do not
    fit in one read."""
    ordered = by_pieces(where, devices)
    size = max(1, part_rows * max(len(ordered), 1) // max(rows, 1))  # devices per part
    parts = (ordered[start : start + size] for start in range(0, len(ordered), size))
    return [(part, pieces_of(pieces, where, part)) for part in parts]


def read_cube(
    store: DataStore,
    files: Sequence[str] | Collection[Piece],
    since: datetime,
    until: datetime,
    window_ms: int,
    devices: Collection[str] | None = None,
) -> WindowCube:
    """The windows of ``files`` with ``since <= window_start < until`` as a cube, read once, no
    pandas. ``files`` are keys (read whole) or row groups ``(key, index)`` (a Dask task's share
    of an hour): the caller took them from one listing, and nothing else is read.

    Device ids and sensor names stay dictionary-encoded from the Parquet files to the cube, so
    no per-row string is ever built (an hour of 10,000 devices x 10 sensors is 6M rows). With
    ``devices``, only their rows are kept, file by file, so memory follows what is kept.
    """
    since_ms, until_ms = round(since.timestamp() * 1000), round(until.timestamp() * 1000)
    # Window starts are multiples of the window length: slot = (start - base) // window_ms.
    base = since_ms // window_ms * window_ms
    width = max((until_ms - 1 - base) // window_ms + 1, 1)
    wanted = None if devices is None else set(devices)
    names: dict[str, dict[str, int]] = {"device_id": {}, "sensor": {}}
    groups: dict[str, list[int] | None] = {}
    for item in files:
        if isinstance(item, str):  # a whole file
            groups[item] = None
        else:  # one of its row groups
            key, group = item
            groups.setdefault(key, []).append(group)  # type: ignore[union-attr]
    chosen = [(key, read_metadata(store, key), groups[key]) for key in groups]
    # Filled file by file, so that one file's Arrow memory is reused for the next: fresh
    # memory costs more than decoding here, so each row keeps only its (device, slot) key, its
    # sensor's code and its statistics. Rows left out leave the tails untouched.
    capacity = sum(
        metadata.num_rows if some is None else sum(metadata.row_group(g).num_rows for g in some)
        for _, metadata, some in chosen
    )
    key_type = np.int32 if capacity * width < 2**31 else np.int64
    keys = np.empty(capacity, dtype=key_type)
    sensor_codes = np.empty(capacity, dtype=np.int32)
    statistics = np.empty((len(STATISTICS), capacity))
    filled = 0
    span = (since_ms, until_ms, base, width, window_ms)
    for key, metadata, some in chosen:
        parquet = open_file(store, key, metadata=metadata, read_dictionary=["device_id", "sensor"])
        filled = _fill_from(
            parquet, span, wanted, names, filled, (keys, sensor_codes, statistics), some
        )
    pa.default_memory_pool().release_unused()  # so that forked workers do not inherit it
    return WindowCube(
        keys[:filled],
        sensor_codes[:filled],
        list(names["device_id"]),
        list(names["sensor"]),
        statistics[:, :filled],
        (base, width, window_ms),
    )


def _fill_from(
    parquet: pq.ParquetFile,
    span: tuple[int, int, int, int, int],
    wanted: set[str] | None,
    names: dict[str, dict[str, int]],
    filled: int,
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray],
    row_groups: list[int] | None = None,
) -> int:
    """Append one file's rows in ``span`` (of ``wanted`` devices) to ``arrays`` from row
    ``filled`` on; returns the new end. Codes are numbered in order of first appearance. Its
    Arrow memory is released on return. (ParquetFile, unlike read_table, does not import
    pandas: a third of a second.)"""
    since_ms, until_ms, base, width, window_ms = span
    keys, sensor_codes, statistics = arrays
    columns = ["device_id", "sensor", "window_start", *STATISTICS]
    table = (
        parquet.read(columns=columns)
        if row_groups is None
        else parquet.read_row_groups(row_groups, columns=columns)
    ).unify_dictionaries()  # one dictionary per column
    mappings = {}
    for column, known in names.items():
        chunks = table.column(column).chunks
        values = [str(v) for v in chunks[0].dictionary.to_pylist()] if chunks else []
        skip = set(values) - wanted if column == "device_id" and wanted is not None else ()
        mappings[column] = np.array(
            [-1 if v in skip else known.setdefault(v, len(known)) for v in values],
            dtype=keys.dtype if column == "device_id" else np.int32,
        )
    for batch in table.to_batches():  # columns chunked alike, views of the same buffers
        devices = _numpy(batch.column("device_id").indices, "device_id")
        sensors = _numpy(batch.column("sensor").indices, "sensor")
        start = _numpy(batch.column("window_start"), "window_start")
        stats = [_numpy(batch.column(stat), stat) for stat in STATISTICS]
        inside = not len(start) or (start.min() >= since_ms and start.max() < until_ms)
        if not inside or wanted is not None:
            keep = (start >= since_ms) & (start < until_ms)
            if wanted is not None:
                keep &= mappings["device_id"][devices] >= 0
            devices, sensors, start = devices[keep], sensors[keep], start[keep]
            stats = [array[keep] for array in stats]
        end = filled + len(start)
        key, scratch = keys[filled:end], _scratch(len(start))
        # Through one reused int64 buffer: numpy would otherwise make a fresh temporary (an
        # intp copy of the indices, an int64 slot) per batch, and fresh memory is the cost.
        np.copyto(scratch, devices)
        np.take(mappings["device_id"], scratch, out=key)
        key *= width
        np.subtract(start, base, out=scratch)
        np.floor_divide(scratch, window_ms, out=scratch)
        np.add(key, scratch, out=key, casting="same_kind")  # + slot
        np.copyto(scratch, sensors)
        np.take(mappings["sensor"], scratch, out=sensor_codes[filled:end])
        for index, array in enumerate(stats):
            statistics[index, filled:end] = array
        filled = end
    return filled


_SCRATCH = threading.local()  # `fleetwatch schedule` may score and train in two threads


def _scratch(size: int) -> np.ndarray:
    """A reused int64 buffer of ``size`` (grown when needed; one per thread)."""
    buffer: np.ndarray | None = getattr(_SCRATCH, "buffer", None)
    if buffer is None or len(buffer) < size:
        buffer = _SCRATCH.buffer = np.empty(size, dtype=np.int64)
    return buffer[:size]


def _numpy(chunk: pa.Array, column: str) -> np.ndarray:
    """A zero-copy view of a chunk without nulls (``to_numpy(zero_copy_only=False)`` would
    import pandas, a third of a second). A missing statistic becomes NaN; a row without a
    device id, sensor or window start cannot be placed, and its file is refused."""
    if chunk.null_count:
        if not pa.types.is_floating(chunk.type):
            raise InvalidInputError(
                f"an aggregates file has {chunk.null_count} rows without a {column}; "
                "it was not written by fleetwatch aggregate: remove it and re-aggregate the hour"
            )
        chunk = chunk.fill_null(np.nan)
    if pa.types.is_timestamp(chunk.type):
        if chunk.type.unit != "ms":
            chunk = chunk.cast(pa.timestamp("ms", tz=chunk.type.tz))
        chunk = chunk.view(pa.int64())
    dtype = np.dtype(_DTYPES[str(chunk.type)])
    array: np.ndarray = np.frombuffer(
        chunk.buffers()[1], dtype=dtype, count=len(chunk), offset=chunk.offset * dtype.itemsize
    )
    return array


_DTYPES = {
    "int8": "i1",
    "int16": "<i2",
    "int32": "<i4",
    "int64": "<i8",
    "float": "<f4",
    "double": "<f8",
}


@dataclass(frozen=True)
class DeviceWindows:
    """One device's windows as a wide matrix over a given feature list."""

    device_id: str
    window_start: npt.NDArray[np.int64]  # epoch ms
    window_end: npt.NDArray[np.int64]
    matrix: FloatMatrix  # (windows, features); NaN where a sensor did not report


#: A grid with one column per sensor of the whole fleet is used while it holds at most this many
#: cells per aggregate row (a fleet whose devices share their sensors: about one). A fleet of
#: many device types, each with its own sensors, gets one column per sensor *of each device*
#: instead, so memory follows the rows, not devices x every sensor name.
SHARED_COLUMNS_UP_TO = 2.0


class WindowCube:
    """Windows as a (device-window, sensor) grid over the rows' statistics.

    Built once, vectorised, for all devices by ``read_cube``. The grid holds, per window of a
    device and per sensor, the position of its statistics (or -1): no dense copy of the values
    is made. ``matrix(device, names)`` cuts one device's feature matrix out of it and
    ``gather(devices, names)`` those of many at once.
    """

    def __init__(
        self,
        keys: npt.NDArray[np.integer],
        sensor_codes: npt.NDArray[np.int32],
        device_names: list[str],
        sensor_names: list[str],
        statistics: FloatMatrix,
        grid: tuple[int, int, int],
    ) -> None:
        """Per input row: its ``keys`` (device code * width + window slot; overwritten), its
        sensor code and its ``statistics`` column ((len(STATISTICS), rows): mean, std, min,
        max). Codes index ``device_names`` and ``sensor_names``; ``grid`` is (base, width,
        window_ms): slot s is the window starting at base + s * window_ms."""
        base, width, window_ms = grid
        self.window_ms = window_ms
        # Contiguous (a copy only when rows were left out), so that statistic s of input row r
        # is _flat[s * rows + r]: one np.take instead of 2-d indexing
        self.statistics = np.ascontiguousarray(statistics)
        self._flat = self.statistics.reshape(-1)
        self.devices = sorted(device_names)
        rows_in = len(keys)
        row_keys, rows = _compact(keys, overwrite=True)
        index_type = np.int32 if rows_in < 2**31 else np.int64
        columns = len(sensor_names)
        self._columns: tuple[np.ndarray, np.ndarray] | None = None  # shared: column = sensor
        if len(row_keys) * columns > SHARED_COLUMNS_UP_TO * max(rows_in, 1):
            # Per device, its sensors (codes, sorted) and their columns 0, 1, 2, ...
            device_codes = (row_keys // width)[rows].astype(np.int64)
            pair_keys, pairs = _compact(device_codes * columns + sensor_codes)
            owners = pair_keys // columns
            first = np.searchsorted(owners, np.arange(len(device_names) + 1))
            local = np.arange(len(pair_keys)) - first[owners]
            self._columns = (pair_keys % columns, first)
            columns = int(local.max()) + 1 if len(local) else 0
            sensor_codes = local[pairs]
        self.cells = np.full((len(row_keys), columns), -1, dtype=index_type)
        for begin in range(0, rows_in, 1 << 20):  # cell (row, sensor) = its input row
            end = min(begin + (1 << 20), rows_in)
            positions = np.arange(begin, end, dtype=index_type)
            self.cells[rows[begin:end], sensor_codes[begin:end]] = positions
        self.row_starts = base + (row_keys % width).astype(np.int64) * window_ms
        self._bounds = np.searchsorted(row_keys // width, np.arange(len(device_names) + 1))
        self._index = {d: i for i, d in enumerate(device_names)}
        self._sensor_names = sensor_names
        self._sensor_index = {s: i for i, s in enumerate(sensor_names)}
        self._plans: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def __contains__(self, device_id: str) -> bool:
        return device_id in self._index

    def rows(self, device_id: str) -> tuple[int, int]:
        """The device's rows in the grid, ``begin:end``, one per window, in time order."""
        index = self._index[device_id]
        return int(self._bounds[index]), int(self._bounds[index + 1])

    def window_count(self, device_id: str) -> int:
        begin, end = self.rows(device_id)
        return end - begin

    def sensors(self, device_id: str) -> list[str]:
        """The sensors that reported at least once for this device."""
        begin, end = self.rows(device_id)
        if self._columns is not None:
            codes, first = self._columns
            index = self._index[device_id]
            return sorted(self._sensor_names[c] for c in codes[first[index] : first[index + 1]])
        reported = np.asarray((self.cells[begin:end] >= 0).any(axis=0)).tolist()
        return sorted(s for s, seen in zip(self._sensor_names, reported, strict=True) if seen)

    def _plan(self, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where each feature comes from: (sensor code, statistic index, kind) per column.

        kind: 0 = a statistic (NaN where the sensor did not report), 1 = the reading count (0
        there), 2 = the change of the mean from the previous window (NaN without one); +4
        when the sensor is absent from the whole range. Devices of one fleet share their
        feature list, so this is computed once per list.
        """
        plan = self._plans.get(names)
        if plan is None:
            sensors, stats, kinds = [], [], []
            for name in names:
                sensor, _, stat = name.rpartition("__")
                if stat not in STATISTICS and stat != "delta":
                    raise ValueError(f"unknown feature {name!r}: retrain the model")
                index = self._sensor_index.get(sensor)
                sensors.append(0 if index is None else index)
                stats.append(0 if stat == "delta" else STATISTICS.index(stat))
                kind = 1 if stat == "count" else 2 if stat == "delta" else 0
                kinds.append(kind + (4 if index is None else 0))
            plan = self._plans[names] = (np.array(sensors), np.array(stats), np.array(kinds))
        return plan

    def _cells(
        self, devices: list[str], owner: np.ndarray, rows: np.ndarray, sensors: np.ndarray
    ) -> np.ndarray:
        """Grid cells of ``rows`` (row i belongs to ``devices[owner[i]]``) for sensor codes."""
        if self._columns is None:
            shared: np.ndarray = self.cells[rows][:, sensors]
            return shared
        codes, first = self._columns
        columns = np.empty((len(devices), len(sensors)), dtype=np.int64)
        for position, device_id in enumerate(devices):
            index = self._index[device_id]
            own = codes[first[index] : first[index + 1]]
            found = np.minimum(np.searchsorted(own, sensors), max(len(own) - 1, 0))
            has = (own[found] == sensors) if len(own) else np.zeros(len(sensors), dtype=bool)
            columns[position] = np.where(has, found, -1)
        wanted = columns[owner]
        cells = np.take_along_axis(self.cells[rows], np.maximum(wanted, 0), axis=1)
        cells[wanted < 0] = -1
        return cells

    def _features(
        self, devices: list[str], owner: np.ndarray, rows: np.ndarray, names: list[str]
    ) -> FloatMatrix:
        """The feature matrix of grid ``rows`` over feature ``names``."""
        sensors, stats, kinds = self._plan(tuple(names))
        if not (len(sensors) and self._sensor_index) or not self.cells.shape[1]:
            matrix = np.full((len(rows), len(names)), np.nan)
            matrix[:, kinds % 4 == 1] = 0.0
            return matrix
        cells = self._cells(devices, owner, rows, sensors)
        matrix = self._read(cells, stats)
        counts = kinds == 1
        matrix[:, counts] = np.where(cells[:, counts] < 0, 0.0, matrix[:, counts])
        changes = kinds == 2
        if changes.any():
            matrix[:, changes] -= self._previous_means(devices, owner, rows, sensors[changes])
        matrix[:, kinds == 4] = np.nan
        matrix[:, kinds == 6] = np.nan
        matrix[:, kinds == 5] = 0.0
        return matrix

    def _read(self, cells: np.ndarray, stats: np.ndarray) -> FloatMatrix:
        """The statistics ``stats`` (per column) of grid ``cells``; NaN where a cell is -1."""
        flat = np.add(cells, stats * self.statistics.shape[1], dtype=np.intp)
        matrix: FloatMatrix = np.take(self._flat, flat)  # -1 (missing) reads a neighbour
        matrix[cells < 0] = np.nan
        return matrix

    def _previous_means(
        self, devices: list[str], owner: np.ndarray, rows: np.ndarray, sensors: np.ndarray
    ) -> FloatMatrix:
        """The mean of each of ``sensors`` in the latest window before each of ``rows`` that
        has a reading of it (NaN where there is none in the cube: the sensor's first window of
        the range). The change is defined at any cadence: a sensor read every 5 minutes with
        60 s windows changes from one reading to the next, not from an empty window."""
        cells = self._cells(devices, owner, rows, sensors)
        previous = np.full(cells.shape, -1, dtype=cells.dtype)
        bounds = np.flatnonzero(np.diff(owner, prepend=-1, append=-1))  # one run per device
        for begin, end in itertools.pairwise(bounds):
            block = cells[begin:end]
            seen = np.where(block >= 0, np.arange(len(block))[:, None], -1)
            latest = np.maximum.accumulate(seen, axis=0)  # the latest row with a reading
            before = np.vstack([np.full((1, block.shape[1]), -1), latest[:-1]])
            has = before >= 0
            taken = np.take_along_axis(block, np.maximum(before, 0), axis=0)
            previous[begin:end] = np.where(has, taken, -1)
        return self._read(previous, np.zeros(len(sensors), dtype=np.int64))

    def matrix(self, device_id: str, names: list[str]) -> DeviceWindows:
        begin, end = self.rows(device_id)
        starts = self.row_starts[begin:end]
        rows = np.arange(begin, end)
        matrix = self._features([device_id], np.zeros(len(rows), dtype=np.int64), rows, names)
        return DeviceWindows(device_id, starts, starts + self.window_ms, matrix)

    def gather(self, devices: list[str], names: list[str]) -> tuple[FloatMatrix, np.ndarray]:
        """The windows of several devices as one (devices, most windows, features) array.

        Also returns each device's window count; rows past a device's count are NaN.
        """
        bounds = np.array([self.rows(d) for d in devices], dtype=np.int64).reshape(-1, 2)
        counts = bounds[:, 1] - bounds[:, 0]
        depth = int(counts.max()) if len(counts) else 0
        owner = np.repeat(np.arange(len(devices)), counts)
        position = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)
        rows = np.repeat(bounds[:, 0], counts) + position
        features = self._features(devices, owner, rows, names)
        if (counts == depth).all():  # no padding: the rows are already in place
            return features.reshape(len(devices), depth, len(names)), counts
        windows = np.full((len(devices), depth, len(names)), np.nan)
        windows[owner, position] = features
        return windows, counts


def _compact(
    keys: npt.NDArray[np.integer], overwrite: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The distinct keys, sorted, and each key's index among them (``np.unique`` without a sort
    when the key range is small enough for a bitmap, as an hour of windows always is). With
    ``overwrite``, the indices may be written over ``keys``."""
    span = int(keys.max()) + 1 if len(keys) else 0
    if span <= max(8 * len(keys), 1 << 20):
        seen = np.zeros(span, dtype=bool)
        seen[keys] = True
        ranks = np.cumsum(seen, dtype=keys.dtype)
        ranks -= 1
        if not overwrite:
            return np.flatnonzero(seen), ranks[keys]
        for begin in range(0, len(keys), 1 << 20):  # through the scratch buffer: see _fill_from
            part = keys[begin : begin + (1 << 20)]
            indices = _scratch(len(part))
            np.copyto(indices, part)
            np.take(ranks, indices, out=part)
        return np.flatnonzero(seen), keys
    distinct, inverse = np.unique(keys, return_inverse=True)
    return distinct, inverse
