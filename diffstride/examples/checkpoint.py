"""Checkpoints that survive crashes: atomic writes, ``weights_only`` loads, fallback to the previous one."""
from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
import sys
from typing import Any, Dict, List, Optional, Tuple

import torch

__all__ = ["save_checkpoint", "load_latest_checkpoint", "list_checkpoints", "atomic_write_text"]

_NAME = re.compile(r"ckpt-(\d+)\.pt$")
REQUIRED_KEYS = ("format", "epoch", "step", "model", "optimizer", "rng")


def _fsync_dir(path: str) -> None:
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


def _atomic_replace(write, path: str) -> None:
    """Writes through ``write(file)`` to a temporary file beside ``path``, fsyncs, then renames over it."""
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
    _fsync_dir(directory)


def atomic_write_text(path: str, text: str) -> None:
    _atomic_replace(lambda f: f.write(text.encode()), path)


def list_checkpoints(workdir: str) -> List[Tuple[int, str]]:
    """``(epoch, path)`` of the checkpoints in ``workdir``, newest first."""
    found = []
    for path in glob.glob(os.path.join(workdir, "ckpt-*.pt")):
        match = _NAME.search(os.path.basename(path))
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def save_checkpoint(workdir: str, state: Dict[str, Any], keep: int = 3) -> str:
    """Saves ``state`` as ``ckpt-{epoch:04d}.pt`` atomically and keeps the newest ``keep`` checkpoints.

    A SHA-256 of the file goes beside it (``.sha256``), so that bytes corrupted later are
    detected at load time (``torch.load`` does not check them).
    """
    path = os.path.join(workdir, f"ckpt-{state['epoch']:04d}.pt")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    _atomic_replace(lambda f: f.write(data), path)
    atomic_write_text(path + ".sha256", hashlib.sha256(data).hexdigest() + "\n")
    for _, old in list_checkpoints(workdir)[keep:]:
        for stale in (old, old + ".sha256"):
            if os.path.exists(stale):
                os.remove(stale)
    return path


def _verify(path: str) -> None:
    digest_path = path + ".sha256"
    if not os.path.exists(digest_path):
        return
    with open(digest_path) as f:
        expected = f.read().strip()
    with open(path, "rb") as f:
        actual = hashlib.sha256(f.read()).hexdigest()
    if actual != expected:
        raise ValueError(f"its SHA-256 {actual[:12]}... differs from the one saved with it ({expected[:12]}...)")


def load_latest_checkpoint(workdir: str, map_location=None, log=None) -> Optional[Tuple[Dict[str, Any], str]]:
    """The newest readable checkpoint of ``workdir`` (``weights_only=True``), or None if there is none.

    An unreadable or incomplete checkpoint (truncated file, corrupted bytes, missing keys) is
    reported through ``log`` and the previous one is tried; nothing is deleted.
    """
    log = log or (lambda message: print(message, file=sys.stderr))
    for epoch, path in list_checkpoints(workdir):
        try:
            _verify(path)
            state = torch.load(path, map_location=map_location, weights_only=True)
            missing = [k for k in REQUIRED_KEYS if k not in state]
            if missing:
                raise ValueError(f"missing {missing}")
            return state, path
        except Exception as err:  # any failure to read means: not usable
            log(f"warning: checkpoint {path} is unreadable ({type(err).__name__}: {str(err)[:200]}); "
                f"trying the previous one")
    return None


def write_json(path: str, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
