"""The SQLite task store's files are its owner's alone: tasks hold payloads and results."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from asyncinvoke import contract
from asyncinvoke.errors import ConfigError
from asyncinvoke.tasks.sqlite import SqliteTaskStore


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """The umask most systems give (022), under which SQLite creates its files 0644."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _mode(path: Path) -> str:
    return oct(stat.S_IMODE(path.stat().st_mode))


async def test_a_new_database_and_its_wal_and_shm_files_are_created_0600(
    tmp_path: Path, usual_umask: None
) -> None:
    path = tmp_path / "tasks.db"
    store = SqliteTaskStore(str(path))
    await store.open()
    try:
        await store.create("t1", "resize", contract.pack({"secret": "payload"}), 1_700_000_000_000)
        files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
        assert all(file.exists() for file in files)
        assert {file.name: _mode(file) for file in files} == {file.name: "0o600" for file in files}
    finally:
        await store.close()


async def test_an_existing_database_keeps_the_mode_its_operator_gave_it(
    tmp_path: Path, usual_umask: None
) -> None:
    path = tmp_path / "tasks.db"
    path.touch(mode=0o640)  # shared with a group on purpose, say
    store = SqliteTaskStore(str(path))
    await store.open()
    await store.close()
    assert _mode(path) == "0o640"


async def test_a_folder_that_does_not_exist_is_named(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "tasks.db"
    store = SqliteTaskStore(str(path))
    with pytest.raises(ConfigError, match="ASYNCINVOKE_TASK_STORE") as info:
        await store.open()
    assert str(path) in str(info.value)
