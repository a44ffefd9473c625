"""Files written whole or not at all (a temporary beside the target, fsynced, renamed over it),
and JSON records read back without failing on a missing or damaged file: the work directory's
``metrics.json``, ``history.json``, configs and the checkpoints themselves."""
from __future__ import annotations

import errno
import json
import os
from typing import Any, Callable

__all__ = ["atomic_replace", "atomic_write_text", "write_json", "read_json", "describe_write_error", "fsync_dir"]


def fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_replace(write: Callable, path: str) -> None:
    """Writes through ``write(file)`` to a temporary file beside ``path``, fsyncs, then renames over it.

    A crash at any moment leaves either the old file or the new one, never a mix; the temporary
    (``PATH.tmp-PID``) is removed on errors, and by the next run's start after a kill.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    fsync_dir(directory)


def atomic_write_text(path: str, text: str) -> None:
    atomic_replace(lambda f: f.write(text.encode()), path)


def write_json(path: str, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str) -> Any:
    """The parsed file, or None when it is missing or does not parse."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


_WRITE_ERRORS = {
    errno.ENOSPC: "the filesystem is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file is larger than the filesystem or the process limit (ulimit -f) allows",
    errno.EROFS: "the filesystem became read-only",
    errno.EIO: "an I/O error occurred",
}


def describe_write_error(err: OSError) -> str:
    return _WRITE_ERRORS.get(err.errno, err.strerror or str(err))
