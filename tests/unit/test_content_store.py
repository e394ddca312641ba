"""`cachefile.ContentStore`, the content-addressed SQLite store both vector caches are built on: what it
stores comes back whole and keyed, a put is one transaction, a damaged file is moved aside and rebuilt,
two writers share one file, and one process at a time computes one identity's values."""

from __future__ import annotations

import sqlite3
import threading
import time

import numpy as np
import pytest

from aplot_cli import cachefile
from aplot_cli.cachefile import ContentStore

SIDE = "CREATE TABLE IF NOT EXISTS notes (key TEXT PRIMARY KEY, note TEXT)"


def _store(folder, name: str = "test.sqlite") -> ContentStore:
    return ContentStore(folder / name, label="test cache", flag="--test-dir", tables=(SIDE,))


def _vector(i: int, dim: int = 8) -> np.ndarray:
    return np.arange(dim, dtype=np.float32) + i


@pytest.fixture
def warnings(monkeypatch) -> list[str]:
    said: list[str] = []
    monkeypatch.setattr(cachefile, "info", said.append)
    return said


def test_vectors_come_back_by_key_with_their_side_rows(tmp_path):
    store = _store(tmp_path)
    try:
        keys = [f"k{i}" for i in range(2000)]  # more keys than SQLite binds in one statement
        store.put_vectors([(k, _vector(i)) for i, k in enumerate(keys)], "notes", [(k, f"n{k}") for k in keys])
        store.put_vectors([("lone", _vector(-1))])  # no side row
        found = store.get_vectors([*keys, "lone", "absent"], "notes", ("note",))
        assert sorted(found) == sorted(keys)  # a side get serves only vectors stored with their side row
        for i, k in enumerate(keys):
            vector, note = found[k]
            np.testing.assert_array_equal(vector, _vector(i))
            assert vector.dtype == np.float32 and note == f"n{k}"
        plain = store.get_vectors(["lone", "k3", "absent"])
        assert sorted(plain) == ["k3", "lone"] and plain["lone"][0][0] == -1
    finally:
        store.close()


def test_a_put_is_one_transaction(tmp_path):
    store = _store(tmp_path)
    try:
        with pytest.raises(sqlite3.Error):  # the side rows do not fit the table: nothing of the put is kept
            store.put_vectors([("a", _vector(0))], "notes", [("a", "note", "one column too many")])
        assert store.get_vectors(["a"]) == {}
    finally:
        store.close()


def test_a_row_of_the_wrong_size_is_left_out(tmp_path):
    store = _store(tmp_path)
    store.put_vectors([("a", _vector(0)), ("b", _vector(1))])
    store.run(lambda db: db.execute("UPDATE vectors SET vec = ? WHERE key = 'b'", (b"\x00" * 10,)) and db.commit())
    try:
        assert list(store.get_vectors(["a", "b"])) == ["a"]
    finally:
        store.close()


def test_a_file_found_damaged_while_open_is_moved_aside_and_the_store_rebuilt(tmp_path, warnings):
    store = _store(tmp_path)
    store.put_vectors([(f"k{i}", _vector(i, 64)) for i in range(400)])  # several pages
    store.close()
    path = store.path
    data = path.read_bytes()
    page = int.from_bytes(data[16:18], "big")
    # the header and the schema's pages stay whole, so the store opens; the rows' pages are damaged
    path.write_bytes(data[: 2 * page] + np.random.default_rng(1).bytes(len(data) - 2 * page))
    damaged = path.read_bytes()
    store = _store(tmp_path)
    assert warnings == [] and path.read_bytes() == damaged  # not found yet
    try:
        assert store.get_vectors([f"k{i}" for i in range(400)]) == {}  # the read runs again, on an empty store
        store.put_vectors([("new", _vector(7))])
        assert list(store.get_vectors(["new", "k1"])) == ["new"]
    finally:
        store.close()
    aside = sorted(tmp_path.glob("test.sqlite.damaged-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == damaged
    assert len(warnings) == 1 and "test cache" in warnings[0] and "computed again" in warnings[0]
    reopened = _store(tmp_path)
    try:
        assert list(reopened.get_vectors(["new"])) == ["new"] and len(warnings) == 1  # the new file is whole
    finally:
        reopened.close()


def test_two_writers_share_one_file(tmp_path):
    errors: list[BaseException] = []

    def write(name: str) -> None:
        store = _store(tmp_path)
        try:
            for batch in range(20):
                keys = [f"{name}-{batch}-{i}" for i in range(50)]
                store.put_vectors([(k, _vector(batch)) for k in keys], "notes", [(k, name) for k in keys])
        except BaseException as exc:  # reported below: a thread's exception is otherwise lost
            errors.append(exc)
        finally:
            store.close()

    writers = [threading.Thread(target=write, args=(name,)) for name in ("a", "b")]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
    assert errors == []
    store = _store(tmp_path)
    try:
        found = store.get_vectors(
            [f"{n}-{b}-{i}" for n in "ab" for b in range(20) for i in range(50)], "notes", ("note",)
        )
        assert len(found) == 2000 and {note for _, note in found.values()} == {"a", "b"}
    finally:
        store.close()


def test_one_process_at_a_time_computes_one_identity(tmp_path, warnings):
    store, other = _store(tmp_path), _store(tmp_path)
    entered = threading.Event()

    def second() -> None:
        with other.computing("model-1"):
            entered.set()

    try:
        with store.computing("model-1", "test values"):
            worker = threading.Thread(target=second)
            worker.start()
            time.sleep(0.5)
            assert not entered.is_set()  # waits while the first holds the identity
            with other.computing("model-2"):  # another identity does not wait
                pass
        worker.join(timeout=30)
        assert entered.is_set()
        assert any("waiting for another process that is computing these vectors" in w for w in warnings)
    finally:
        store.close()
        other.close()
