"""The data directory check: one line naming the folder, the reason and the setting, for cases that fail
even as root (tests here often run as root, which permission bits do not stop)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from castflow.datadir import DATA_DIR_ENV, DataDirError, check_data_dir, clean_stale_temp


def _error(path: Path, **kwargs: str) -> str:
    with pytest.raises(DataDirError) as info:
        check_data_dir(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 64 KiB tmpfs (needs root, or the right to mount); unmounted after the test."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def _remount_read_only(mount: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)


def test_the_setting_named_in_messages_is_the_data_dirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from castflow.settings import Settings

    monkeypatch.chdir(tmp_path)  # no developer's .env
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "elsewhere"))
    assert Settings().data_dir == tmp_path / "elsewhere"


def test_a_missing_folder_is_created_and_left_clean(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b"
    check_data_dir(path)
    check_data_dir(path)  # and again, existing
    assert path.is_dir()
    assert list(path.iterdir()) == []  # the probe is gone


def test_a_file_in_the_way(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_text("not a folder")
    message = _error(path)
    assert (
        message
        == f"data directory {path} is a file, not a folder: set CASTFLOW_DATA_DIR to a writable folder"
    )
    assert _error(path / "sub").startswith(
        f"data directory {path / 'sub'} cannot be created (Not a directory)"
    )


@pytest.mark.parametrize("path", [Path("/sys/castflow-test"), Path("/proc/castflow-test/data")])
def test_a_folder_that_cannot_be_created_even_by_root(path: Path) -> None:
    """sysfs and procfs take no new folders, whoever asks."""
    message = _error(path)
    assert message.startswith(f"data directory {path} cannot be created (")
    assert message.endswith("): set CASTFLOW_DATA_DIR to a writable folder")


def test_a_read_only_file_system(tmpfs: Path) -> None:
    (tmpfs / "data").mkdir()
    _remount_read_only(tmpfs)
    assert _error(tmpfs / "data") == (
        f"data directory {tmpfs / 'data'} is not writable (Read-only file system): "
        "set CASTFLOW_DATA_DIR to a writable folder"
    )
    assert _error(tmpfs / "new").startswith(f"data directory {tmpfs / 'new'} cannot be created (Read-only")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes regardless of permission bits")
def test_a_folder_without_write_permission(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.mkdir(mode=0o500)
    assert _error(path) == (
        f"data directory {path} is not writable (Permission denied): set CASTFLOW_DATA_DIR to a writable folder"
    )


def _fill(path: Path) -> None:
    with path.open("wb", buffering=0) as filler:
        while True:
            filler.write(b"\0" * 4096)


def test_a_full_disk(tmpfs: Path) -> None:
    (tmpfs / "data").mkdir()
    with pytest.raises(OSError, match="No space left"):
        _fill(tmpfs / "filler")
    message = _error(tmpfs / "data")
    assert message == (
        f"data directory {tmpfs / 'data'} is on a full disk (No space left on device): free some space "
        "or set CASTFLOW_DATA_DIR to a folder on another disk"
    )
    assert list((tmpfs / "data").iterdir()) == []  # no half-written probe left behind


def test_prefects_home_names_its_own_setting(tmp_path: Path) -> None:
    path = tmp_path / "prefect"
    path.write_text("")
    assert _error(path, setting="PREFECT_HOME").endswith(": set PREFECT_HOME to a writable folder")


def test_an_unprintable_path_keeps_the_message_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "two\nlines"
    path.write_text("")
    assert repr(str(path)) in _error(path)


def test_stale_temp_folders_of_dead_owners_go(tmp_path: Path) -> None:
    root, outside = tmp_path / "tmp", tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not ours")
    root.mkdir()
    (root / "dead-1" / "nested").mkdir(parents=True)
    (root / "dead-1" / "nested" / "part.wav").write_bytes(b"x")
    (root / "dead-1" / "link").symlink_to(outside)  # removed as a link, its target untouched
    (root / "dead-2").mkdir()
    (root / "alive-1").mkdir()
    (root / "dead-file").write_text("a file, not a folder")
    (root / "dead-link").symlink_to(outside, target_is_directory=True)
    asked: list[str] = []

    def alive(name: str) -> bool:
        asked.append(name)
        return name.startswith("alive")

    assert clean_stale_temp(root, alive) == 2
    assert sorted(p.name for p in root.iterdir()) == ["alive-1", "dead-file", "dead-link"]
    assert (outside / "keep.txt").read_text() == "not ours"
    assert sorted(asked) == ["alive-1", "dead-1", "dead-2"]  # files and symlinks are never candidates


def test_stale_temp_clean_up_ignores_errors(tmp_path: Path, tmpfs: Path) -> None:
    assert clean_stale_temp(tmp_path / "missing", lambda name: False) == 0
    (tmp_path / "a-file").write_text("")
    assert clean_stale_temp(tmp_path / "a-file", lambda name: False) == 0
    (tmpfs / "dead" / "inside").mkdir(parents=True)
    _remount_read_only(tmpfs)
    assert clean_stale_temp(tmpfs, lambda name: False) == 0  # cannot remove: counted as not removed
    assert (tmpfs / "dead" / "inside").is_dir()
