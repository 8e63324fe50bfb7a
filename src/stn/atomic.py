"""Atomic file writes: readers (and a resumed run) never see half a file, whatever interrupts the writer; and one
lock per data folder, so two commands never prepare the same data at once."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
# A temporary name holds its writer's host and pid, so that a later writer can tell a dead writer's leftover
# (kill -9 leaves it) from a live one's, even on a folder several hosts share.
TEMPORARY = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")
LOCK_NAME = ".stn.lock"
# The errors of a write itself: full disk or quota, file size limit, read-only or forbidden folder, device error.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


class WriteError(OSError):
    """A file could not be written (full disk, file size limit, read-only folder ...); the message names it."""


def temporary_name(name: str) -> str:
    return f".{name}.{HOST}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files (and extraction folders) in `folder` whose writer, a process of this host, is
    dead; return them. A live writer's, and another host's, are left alone."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:  # missing or unreadable folder: nothing of ours there
        return removed
    for entry in entries:
        match = TEMPORARY.match(entry.name)
        if not match or match["host"] != HOST or _alive(int(match["pid"])):
            continue
        try:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        except OSError:
            continue  # e.g. a read-only folder: nothing we could have written
        log.warning("removed %s, left by a writer (pid %s) that was killed", entry, match["pid"])
        removed.append(entry)
    return removed


def write_error(path: Path, error: BaseException) -> WriteError:
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**30:.1f} GB free there"
    except OSError:
        free = "free space unknown"
    message = (
        f"could not write {path} ({type(error).__name__}: {error}; {free}). Free some space (or fix the folder's "
        f"permissions) and run again: the previous {path.name}, if any, is unchanged"
    )
    code = getattr(error, "errno", None)
    return WriteError(code, message) if code else WriteError(message)  # torch's RuntimeError has no errno


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write to; on success fsync it and rename it over `path`.

    On any error (or KeyboardInterrupt) the temporary file is removed and `path` is left as it was; an OSError or
    RuntimeError of the write (torch reports a full disk as a RuntimeError) becomes a WriteError naming `path`.
    Dead writers' temporaries in the folder are removed first. The file gets the usual (umask) permissions.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)
    temporary = path.with_name(temporary_name(path.name))
    try:
        yield temporary
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except (OSError, RuntimeError) as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, WriteError) or not _is_write_failure(error, temporary):
            raise
        raise write_error(path, error) from error
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _is_write_failure(error: BaseException, temporary: Path) -> bool:
    """The error is the write's own (not, say, a download's connection error raised inside the block)."""
    if isinstance(error, OSError):
        return error.filename in (None, str(temporary)) and error.errno in WRITE_ERRNOS
    return "inline_container" in str(error) or "file write failed" in str(error)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write text or bytes to `path` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data.encode() if isinstance(data, str) else data)


_held: dict[Path, int] = {}  # lock file -> depth: a process may take a folder's lock again (nested preparations)


@contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Hold the lock of a data folder (flock on folder/.stn.lock) while preparing data in it: a second command
    preparing the same data waits, then finds it done. Re-entrant within a process; a folder where no lock file
    can be made (read-only) is used unlocked, as nothing can be written there either."""
    folder = Path(folder)
    lock_file = (folder / LOCK_NAME).absolute()
    depth = _held.get(lock_file, 0)
    _held[lock_file] = depth + 1
    try:
        if depth:
            yield
            return
        try:
            folder.mkdir(parents=True, exist_ok=True)
            handle = open(lock_file, "a")
        except OSError:
            handle = None
        if handle is None:
            yield
            return
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.warning("waiting for another process that prepares data in %s (lock %s)", folder, lock_file)
                fcntl.flock(handle, fcntl.LOCK_EX)
            yield  # closing the file releases the lock
    finally:
        _held[lock_file] -= 1
