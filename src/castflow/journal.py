"""The submit journal: each provider request id this process got, on disk before the database has it.

Between a provider's answer to a submit and the commit of its request id lies a window in which a
crash, a database outage or a full disk would leave a paid job that nobody can name, and the next run
would pay for it again. So the id is first appended to this process's journal file and synced
(``fdatasync``), then written to the database. The file is preallocated, so appending needs no new
blocks: it still works when the disk fills up.

Each process has its own file, ``<data dir>/journal/<owner>.jsonl`` (one JSON object a line: stage key,
request id, provider, time). A later process on the same host reconciles the files of owners that are
gone (:func:`reconcile`): it writes their request ids to the database, then deletes the file. A live
process also reads its own entries (:meth:`Journal.find`) when its database write failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from castflow.claims import Owner, is_dead, me

PREALLOCATE = 1 << 20  # 1 MiB: about 8,000 entries; a full file grows like any other (or refuses)


class JournalError(Exception):
    """The journal cannot be written: no submit may be sent (its id could be lost)."""


def journal_dir(data_dir: Path) -> Path:
    return data_dir / "journal"


def _file_name(owner: Owner) -> str:
    return f"{owner}.jsonl".replace(os.sep, "_")


class Journal:
    """This process's journal for one data dir (one object per process and folder: :func:`journal_for`),
    opened on first use; a forked child opens a file of its own."""

    def __init__(self, data_dir: Path) -> None:
        self._dir = journal_dir(data_dir)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._pid = 0
        self._offset = 0
        self._entries: dict[str, tuple[str, float]] = {}  # stage key → (request id, when), not yet in the DB

    def _open(self) -> int:
        if self._fd is not None and self._pid == os.getpid():
            return self._fd
        owner = me()
        if self._pid != os.getpid():
            self._entries = {}  # a forked child: the parent's ids are the parent's to settle
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            path = self._dir / _file_name(owner)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            with open(path, "rb") as fh:  # reopened in this process: append after what is there
                offset = len(fh.read().rstrip(b"\0"))
            if offset == 0:
                header = (json.dumps({"owner": str(owner)}) + "\n").encode()
                self._write(fd, 0, header)
                offset = len(header)
            self._reserve(fd, offset)
        except OSError as exc:
            raise JournalError(
                f"cannot write the submit journal in {self._dir}: {exc.strerror or exc}"
            ) from None
        self._fd, self._pid, self._offset = fd, os.getpid(), offset
        return fd

    @staticmethod
    def _reserve(fd: int, offset: int) -> None:
        """Keep PREALLOCATE bytes allocated past ``offset``: appends then need no new blocks."""
        with contextlib.suppress(AttributeError):  # no posix_fallocate: the file grows as written
            os.posix_fallocate(fd, 0, offset + PREALLOCATE)

    @staticmethod
    def _write(fd: int, offset: int, data: bytes) -> None:
        while data:
            written = os.pwrite(fd, data, offset)
            data, offset = data[written:], offset + written
        os.fdatasync(fd)

    def check(self) -> None:
        """Before a submit: the journal is open and has room for the answer (JournalError otherwise, and
        nothing is sent)."""
        with self._lock:
            fd = self._open()
            if self._offset > PREALLOCATE // 2:  # grow the reserve ahead of need, while sending nothing
                try:
                    self._reserve(fd, self._offset)
                except OSError as exc:
                    raise JournalError(f"cannot grow the submit journal: {exc.strerror or exc}") from None

    def record(self, *, stage_key: str, request_id: str, provider: str) -> None:
        """Keep one request id (in memory first, then appended and synced); JournalError if the disk
        refuses even the reserved space (the id is still held in memory for this process)."""
        ts = time.time()
        line = json.dumps({"stage_key": stage_key, "request_id": request_id, "provider": provider, "ts": ts})
        with self._lock:
            try:
                fd = self._open()
            finally:  # held in memory even if the file cannot be opened
                self._entries[stage_key] = (request_id, ts)
            data = (line + "\n").encode()
            try:
                self._write(fd, self._offset, data)
            except OSError as exc:
                raise JournalError(f"cannot write the submit journal: {exc.strerror or exc}") from None
            self._offset += len(data)

    def find(self, stage_key: str, since: float = 0.0) -> str | None:
        """The id this process got for ``stage_key`` and has not yet seen in the database, if it was
        answered at or after ``since`` (an older one belongs to an earlier attempt)."""
        with self._lock:
            if self._pid != os.getpid():
                return None
            found = self._entries.get(stage_key)
        return found[0] if found is not None and found[1] >= since - 1.0 else None

    def close(self) -> None:
        """Close the file, and remove it once every id in it is in the database."""
        with self._lock:
            if self._fd is None or self._pid != os.getpid():
                return
            os.close(self._fd)
            self._fd = None
            if not self._entries:  # nothing a later process needs: drop the file
                with contextlib.suppress(OSError):
                    (self._dir / _file_name(me())).unlink()

    def forget(self, stage_key: str) -> None:
        """The id of ``stage_key`` is in the database now."""
        with self._lock:
            self._entries.pop(stage_key, None)


_JOURNALS: dict[tuple[int, Path], Journal] = {}
_JOURNALS_LOCK = threading.Lock()


def journal_for(data_dir: Path) -> Journal:
    """The one journal of this process for ``data_dir`` (runtimes rebuilt in one process share it, so
    no second object ever writes over the first one's entries)."""
    key = (os.getpid(), Path(data_dir).resolve())
    with _JOURNALS_LOCK:
        found = _JOURNALS.get(key)
        if found is None:
            found = _JOURNALS[key] = Journal(data_dir)
        return found


def read_entries(path: Path) -> tuple[str | None, list[dict[str, Any]]]:
    """The owner and the entries of a journal file; a torn last line (a crash mid-write) is skipped."""
    owner: str | None = None
    entries: list[dict[str, Any]] = []
    with open(path, "rb") as fh:
        for line in fh.read().split(b"\n"):
            raw = line.strip(b"\0 \r")  # the preallocated tail reads as NUL bytes
            if not raw:
                continue
            try:
                item = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(item, dict):
                continue
            if "owner" in item and owner is None:
                owner = str(item["owner"])
            elif isinstance(item.get("stage_key"), str) and isinstance(item.get("request_id"), str):
                entries.append(item)
    return owner, entries


def dead_journals(data_dir: Path) -> Iterator[tuple[Path, str, list[dict[str, Any]]]]:
    """The journal files of owners that are gone (this host's), with their entries."""
    folder = journal_dir(data_dir)
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.jsonl")):
        try:
            owner, entries = read_entries(path)
        except OSError:
            continue
        if owner is not None and owner != str(me()) and is_dead(owner):
            yield path, owner, entries


def reconcile(data_dir: Path, apply: Callable[[str, list[dict[str, Any]]], None]) -> int:
    """Hand each dead owner's entries to ``apply(owner, entries)`` (which writes them to the database),
    then delete its file. Returns how many request ids were handed over. A file whose ``apply`` raised
    stays for the next process."""
    count = 0
    for path, owner, entries in dead_journals(data_dir):
        if entries:
            apply(owner, entries)
            count += len(entries)
        with contextlib.suppress(OSError):
            path.unlink()
    return count


__all__ = [
    "Journal",
    "JournalError",
    "dead_journals",
    "journal_dir",
    "journal_for",
    "read_entries",
    "reconcile",
]
