"""One contract, two stores: every behaviour the data plane relies on, checked on a local folder
and on an S3 bucket (moto's server) alike (see :mod:`fleetwatch.storage.store`)."""

from __future__ import annotations

import pickle
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetwatch.errors import StorageError
from fleetwatch.storage.store import ConflictError, DataStore, open_store
from tests.conftest import S3Server


@pytest.fixture(params=["local", "s3"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "local":
        yield str(tmp_path / "data")
    else:
        s3: S3Server = request.getfixturevalue("s3_server")
        yield f"{s3.bucket()}/data"


@pytest.fixture
def store(location: str) -> DataStore:
    return open_store(location)


def test_a_write_reads_back_whole_and_a_missing_key_is_not_found(store: DataStore) -> None:
    with pytest.raises(FileNotFoundError):
        store.read("aggregates/none.parquet")
    assert store.version("aggregates/none.parquet") is None
    first = store.write("state/x.json", b"one")
    assert store.read("state/x.json") == b"one"
    assert store.version("state/x.json") == first
    second = store.write("state/x.json", lambda handle: handle.write(b"two, longer"))
    assert store.read("state/x.json") == b"two, longer"
    assert second != first and store.version("state/x.json") == second


def test_listings_are_fresh_and_see_another_clients_writes(store: DataStore) -> None:
    other = open_store(store.location)  # another process's client, as the aggregator is
    assert store.listing("aggregates") == []
    other.write("aggregates/date=2026-11-22/hour=10/p0000-000000000000-000000000009.parquet", b"a")
    listed = store.listing("aggregates")
    assert [item.name for item in listed] == ["p0000-000000000000-000000000009.parquet"]
    other.write("aggregates/date=2026-11-22/hour=10/p0001-000000000000-000000000009.parquet", b"b")
    other.write("aggregates/date=2026-11-22/hour=11/.p0001-x.staged", b"c")
    listed = store.listing("aggregates/date=2026-11-22")
    assert len(listed) == 3  # hidden names are listed too: callers decide what they mean
    assert [item.size for item in listed] == [1, 1, 1]
    assert store.folders("aggregates/date=2026-11-22") == ["hour=10", "hour=11"]
    assert store.listing("aggregates/date=2026-11-22/hour=1") == []  # a folder, not a prefix


def test_a_listing_while_another_client_adds_files_is_whole(store: DataStore) -> None:
    """Every object written before the listing began is in it; every object in it reads back
    whole; a concurrent writer never makes a listing fail."""
    writer = open_store(store.location)
    before = {f"aggregates/h/p{i:04d}.parquet" for i in range(20)}
    for key in before:
        writer.write(key, b"x" * 100)
    stop = threading.Event()

    def keep_adding() -> None:
        count = 0
        while not stop.is_set():
            writer.write(f"aggregates/h/q{count:05d}.parquet", b"y" * 100)
            count += 1

    thread = threading.Thread(target=keep_adding)
    thread.start()
    try:
        for _ in range(5):
            listed = store.listing("aggregates/h")
            keys = {item.key for item in listed}
            assert before <= keys
            for item in listed[:5] + listed[-5:]:
                assert item.size == 100 and len(store.read(item.key)) == 100
    finally:
        stop.set()
        thread.join()


def test_conditional_writes_fence_a_stale_writer(store: DataStore) -> None:
    key = "state/aggregate/telemetry/p0000.json"
    created = store.write_if(key, b'{"owner": "a"}', None)
    with pytest.raises(ConflictError):
        store.write_if(key, b'{"owner": "b"}', None)  # create-only, but it exists
    taken = store.write_if(key, b'{"owner": "b"}', created)  # b takes it over
    with pytest.raises(ConflictError):
        store.write_if(key, b'{"owner": "a", "more": 1}', created)  # a is fenced off
    assert store.read(key) == b'{"owner": "b"}'
    assert store.write_if(key, b'{"owner": "b", "more": 2}', taken) != taken


def test_concurrent_conditional_writers_lose_no_update(store: DataStore) -> None:
    """Read-modify-write by four threads through write_if: the counter ends at the number of
    writes that succeeded (none overwrote another)."""
    key = "state/counter"
    store.write(key, b"0")
    successes = []

    def increment() -> None:
        client = open_store(store.location)
        done = 0
        while done < 8:
            version = client.version(key)
            value = int(client.read(key))
            try:
                client.write_if(key, str(value + 1).encode(), version)
            except ConflictError:
                continue
            done += 1
        successes.append(done)

    threads = [threading.Thread(target=increment) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert int(store.read(key)) == sum(successes) == 32


def test_a_reader_racing_a_replacement_gets_old_or_new_bytes(store: DataStore) -> None:
    key = "state/aggregate/telemetry/topic.json"
    old, new = b"o" * 50_000, b"n" * 70_000
    store.write(key, old)
    stop = threading.Event()

    def replace_it() -> None:
        while not stop.is_set():
            store.write(key, new)
            store.write(key, old)

    thread = threading.Thread(target=replace_it)
    thread.start()
    try:
        for _ in range(50):
            assert store.read(key) in (old, new)
    finally:
        stop.set()
        thread.join()


def test_delete_removes_what_it_names_and_move_publishes(store: DataStore) -> None:
    for name in ("a", "b", "c"):
        store.write(f"late/h/{name}.parquet", name.encode())
    assert store.delete(["late/h/a.parquet", "late/h/gone.parquet"]) == 1
    assert [item.name for item in store.listing("late")] == ["b.parquet", "c.parquet"]
    assert store.move("late/h/b.parquet", "late/h/final.parquet")
    assert store.read("late/h/final.parquet") == b"b"
    assert not store.move("late/h/b.parquet", "late/h/final.parquet")  # moved already
    assert [item.name for item in store.listing("late")] == ["c.parquet", "final.parquet"]


def test_temporaries_of_writes_a_crash_cut_short_are_listed_apart(store: DataStore) -> None:
    """A kill -9 during a local write leaves its temporary: not data (``listing`` omits it),
    found by ``temporaries`` for its owner to delete; an object store leaves none."""
    store.write("aggregates/h/p0000-a.parquet", b"a")
    store.write_if("state/p0000.json", b"{}", None)
    folder = store.local_path("aggregates/h")
    if folder is not None:
        (folder / ".p0000-b.parquet.0a1b2c3d.tmp").write_bytes(b"cut short")
        (folder / "..p0000-c.parquet.1a2b3c4d.staged.5e6f7a8b.tmp").write_bytes(b"cut short")
        (folder / ".p0000-d.parquet.lock").write_bytes(b"")  # a lock is not a temporary
    assert [item.name for item in store.listing("aggregates")] == ["p0000-a.parquet"]
    found = store.temporaries("aggregates")
    expected = [".p0000-b.parquet.0a1b2c3d.tmp", "..p0000-c.parquet.1a2b3c4d.staged.5e6f7a8b.tmp"]
    assert sorted(item.name for item in found) == (sorted(expected) if folder else [])
    assert store.delete(item.key for item in found) == len(found)
    assert store.temporaries("aggregates") == [] and store.temporaries("state") == []
    assert [item.name for item in store.listing("aggregates")] == ["p0000-a.parquet"]


@pytest.mark.parametrize("key", ["../outside", "/etc/passwd", "a//b", "models/./x", "", "a/.."])
def test_keys_cannot_leave_the_data_directory(store: DataStore, key: str) -> None:
    with pytest.raises(StorageError, match="invalid storage key"):
        store.write(key, b"x")
    with pytest.raises(StorageError, match="invalid storage key"):
        store.read(key)


def test_a_store_travels_as_its_location(store: DataStore) -> None:
    store.write("models/SHADOWS", b"[]")
    for again in (open_store(store.location), pickle.loads(pickle.dumps(store))):  # noqa: S301
        assert again.location == store.location
        assert again.read("models/SHADOWS") == b"[]"
