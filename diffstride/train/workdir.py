"""The work directory of a run: checked before any work, held by one run at a time.

:func:`prepare` creates the directory and writes a probe file in it, so that a path under a
regular file, a read-only or full filesystem or an empty name stop the run with one line before
data and model are loaded. :class:`RunLock` holds an OS-level lock (``fcntl.flock``) on
``WORKDIR/.lock`` for the whole run: a second run on the same directory stops at once and names
the holder; the lock dies with its process, so a stale lock file never blocks.
"""
from __future__ import annotations

import datetime
import errno
import glob
import json
import os
import socket
import time
from typing import Optional

__all__ = ["WorkdirError", "WorkdirBusy", "prepare_workdir", "RunLock", "held_by", "remove_orphans"]


class WorkdirError(RuntimeError):
    """The work directory cannot be used; the message says why and what to do."""


class WorkdirBusy(WorkdirError):
    """Another run holds the work directory."""


_REASONS = {
    errno.EROFS: "it is on a read-only filesystem",
    errno.ENOSPC: "its filesystem is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a part of the path is a regular file, not a directory",
    errno.EEXIST: "a regular file of that name is in the way",
}


def _explain(workdir: str, err: OSError) -> WorkdirError:
    reason = _REASONS.get(err.errno, err.strerror or str(err))
    return WorkdirError(f"cannot use the work directory {workdir!r}: {reason}; choose another with --workdir")


def prepare_workdir(workdir: str) -> str:
    """Creates ``workdir`` if needed and proves it writable; returns its absolute path."""
    if not isinstance(workdir, str) or not workdir.strip():
        raise WorkdirError(f"the work directory must be a non-empty path, but got {workdir!r}; "
                           "pass --workdir DIR (or train.train.workdir = None to write nothing)")
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".probe-{os.getpid()}")
        with open(probe, "wb") as f:
            f.write(b"diffstride" * 100)
            f.flush()
            os.fsync(f.fileno())
        os.remove(probe)
    except FileNotFoundError as err:
        if os.path.isdir(workdir):  # the probe only: another run started together removed it
            return os.path.abspath(workdir)
        raise _explain(workdir, err) from None
    except OSError as err:
        raise _explain(workdir, err) from None
    return os.path.abspath(workdir)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_orphans(workdir: str) -> list:
    """Removes the temporary files (``*.tmp-PID``, ``.probe-PID``) of processes that no longer
    exist: what a killed run left. Returns what was removed."""
    removed = []
    for path in glob.glob(os.path.join(workdir, "*.tmp-*")) + glob.glob(os.path.join(workdir, ".probe-*")):
        pid = path.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue
        try:
            os.remove(path)
            removed.append(path)
        except OSError:
            pass
    return removed


class RunLock:
    """``with RunLock(workdir):`` holds ``workdir/.lock`` for one run (POSIX ``flock``).

    Raises :class:`WorkdirBusy` naming the holder (PID, host, start time) when another process
    holds it. Where ``fcntl`` does not exist (Windows) no lock is taken. ``filename``, ``holder``
    and ``advice`` adapt it to other directories (the sweep locks its root with ``.sweep.lock``).
    """

    def __init__(self, workdir: str, filename: str = ".lock", holder: str = "another run",
                 advice: str = "wait for it to end, or choose another --workdir") -> None:
        self.path = os.path.join(workdir, filename)
        self.holder, self.advice = holder, advice
        self._file = None

    def __enter__(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        f = open(self.path, "a+")
        deadline = time.monotonic() + ORPHAN_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                f.seek(0)
                text = f.read()
                ended = _holder_has_ended(text)
                # The holder died but processes it forked (DataLoader workers, which exit within
                # seconds of their parent) still share its lock: wait for them a little.
                if ended and time.monotonic() < deadline:
                    time.sleep(0.1)
                    continue
                f.close()
                holder = _holder(text)
                if ended:
                    holder += ", which has ended, but processes it started still hold the lock"
                raise WorkdirBusy(
                    f"the work directory {os.path.dirname(self.path)!r} is in use by {self.holder} ({holder}); "
                    f"{self.advice}") from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}))
        f.flush()
        self._file = f
        _held.add(f.fileno())
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            _held.discard(self._file.fileno())
            self._file.close()  # closing releases the flock
            self._file = None


# Descriptors of the locks this process holds: a forked child shares them (an flock belongs to
# the open file), so a run's DataLoader workers would keep its work directory locked after the
# run was killed, until they noticed; they let go at their start (release_inherited_locks).
_held: set = set()
ORPHAN_WAIT_SECONDS = 10.0


def release_inherited_locks() -> None:
    """In a forked child: stops sharing the parent's work-directory locks. Each descriptor is
    pointed at /dev/null (not closed, so that a file object of the parent's, copied into the
    child, never closes a descriptor number reused for something else)."""
    if not _held:
        return
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        for fd in _held:
            os.dup2(null, fd)
    finally:
        os.close(null)
    _held.clear()


if hasattr(os, "register_at_fork"):  # every forked child (DataLoader workers) lets go at once
    os.register_at_fork(after_in_child=release_inherited_locks)


def _holder_has_ended(text: str) -> bool:
    """Whether the lock file names a process of this host that no longer exists."""
    try:
        info = json.loads(text)
        if info["host"] != socket.gethostname():
            return False
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return True
    except (ValueError, KeyError, TypeError, PermissionError, OverflowError):
        return False
    return False


def held_by(workdir: str, filename: str = ".lock") -> Optional[str]:
    """Who holds ``workdir``'s lock (as in :class:`RunLock`'s message), or None when nobody does."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return None
    path = os.path.join(workdir, filename)
    if not os.path.exists(path):
        return None
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            return _holder(f.read())
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return None


def _holder(text: str) -> str:
    try:
        info = json.loads(text)
        return f"PID {info['pid']} on {info['host']}, started {info['started']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"
