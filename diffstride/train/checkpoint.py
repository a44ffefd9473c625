"""Checkpoints that are verified or refused: atomic writes, a checksum inside the file, ``weights_only`` loads.

File layout (format 2): ``torch.save({"diffstride_checkpoint": 2, "sha256": hex, "payload": bytes})``
where ``payload`` is the ``torch.save`` of the training state. The checksum travels with the
``.pt`` file, so copying only the ``.pt`` files keeps them verifiable, and a damaged or missing
sidecar can neither make a corrupted file trusted nor an intact one rejected. Any other file
(a plain ``torch.save``, another tool's checkpoint) is refused.

Names: ``ckpt-0003.pt`` after 3 complete epochs; ``ckpt-0003-step000123.pt`` in the middle of
epoch 4, at global step 123. Newest first means larger ``(epoch, step)`` first.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import io
import os
import re
from typing import Any, Dict, List, Optional, Tuple

import torch

from diffstride.train.atomic import atomic_replace, describe_write_error

__all__ = ["CheckpointError", "RefusedCheckpoint", "save_checkpoint", "load_checkpoint", "find_usable", "list_checkpoints",
           "set_aside", "checkpoint_name", "FORMAT"]

FORMAT = 2
_NAME = re.compile(r"ckpt-(\d+)(?:-step(\d+))?\.pt$")
REQUIRED_KEYS = ("format", "epoch", "step", "model", "optimizer", "rng")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or no checkpoint can be trusted; the message says what to do."""


@dataclasses.dataclass
class RefusedCheckpoint:
    """A checkpoint file that was refused, and why."""

    path: str
    reason: str


# ----------------------------------------------------------------------------------------------
# Writing


def checkpoint_name(epoch: int, step: int, mid_epoch: bool) -> str:
    return f"ckpt-{epoch:04d}-step{step:06d}.pt" if mid_epoch else f"ckpt-{epoch:04d}.pt"


def _encode(state: Dict[str, Any]) -> bytes:
    inner = io.BytesIO()
    torch.save(state, inner)
    payload = inner.getvalue()
    outer = io.BytesIO()
    torch.save({"diffstride_checkpoint": FORMAT, "sha256": hashlib.sha256(payload).hexdigest(), "payload": payload},
               outer)
    return outer.getvalue()


def save_checkpoint(workdir: str, state: Dict[str, Any], mid_epoch: bool = False) -> str:
    """Writes ``state`` atomically under its name (see the module doc), reads it back and verifies
    it; returns the path. Raises :class:`CheckpointError` (the previous checkpoints untouched)
    when the file cannot be written or does not read back identically."""
    path = os.path.join(workdir, checkpoint_name(int(state["epoch"]), int(state["step"]), mid_epoch))
    data = _encode(state)
    try:
        atomic_replace(lambda f: f.write(data), path)
    except OSError as err:
        raise CheckpointError(f"could not write the checkpoint {path}: {describe_write_error(err)}. "
                              "The previous checkpoints are intact; make room and run the same command to resume "
                              "from the newest one") from None
    with open(path, "rb") as f:
        if f.read() != data:
            raise CheckpointError(f"the checkpoint {path} does not read back as written (storage error?); "
                                  "the previous checkpoints are kept")
    return path


# ----------------------------------------------------------------------------------------------
# Reading


def list_checkpoints(workdir: str) -> List[Tuple[int, str]]:
    """``(completed epochs, path)`` of the checkpoints in ``workdir``, newest first."""
    found = []
    for path in glob.glob(os.path.join(workdir, "ckpt-*.pt")):
        match = _NAME.search(os.path.basename(path))
        if match:
            epoch, step = int(match.group(1)), int(match.group(2)) if match.group(2) else -1
            found.append(((epoch, step), path))
    return [(key[0], path) for key, path in sorted(found, reverse=True)]


def load_checkpoint(path: str, map_location=None) -> Dict[str, Any]:
    """The verified training state in ``path``; ``ValueError`` (or an unpickling error) says why not."""
    with open(path, "rb") as f:
        raw = f.read()
    outer = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    if isinstance(outer, dict) and "diffstride_checkpoint" in outer:
        payload, expected = outer.get("payload"), outer.get("sha256")
        if not isinstance(payload, bytes) or not isinstance(expected, str):
            raise ValueError("the checksum or the payload is missing")
        actual = hashlib.sha256(payload).hexdigest()
        if actual != expected:
            raise ValueError(f"its SHA-256 {actual[:12]}... differs from the one stored in it ({expected[:12]}...)")
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    else:
        raise ValueError("not a diffstride checkpoint (no checksum inside)")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"missing {missing}")
    return state


def find_usable(workdir: str, map_location=None) -> Tuple[Optional[Tuple[Dict[str, Any], str]], List[RefusedCheckpoint]]:
    """The newest checkpoint that verifies (``(state, path)`` or None), and the newer ones refused."""
    refused = []
    for _, path in list_checkpoints(workdir):
        try:
            return (load_checkpoint(path, map_location), path), refused
        except Exception as err:  # any failure to read or verify means: not usable
            refused.append(RefusedCheckpoint(path, f"{type(err).__name__}: {str(err)[:200]}"))
    return None, refused


def set_aside(refused: List[RefusedCheckpoint]) -> List[str]:
    """Renames refused checkpoints to ``NAME.unusable`` (kept for inspection, never loaded nor
    deleted, and out of the way of the names new checkpoints take). Returns the new paths."""
    moved = []
    for item in refused:
        target = item.path + ".unusable"
        os.replace(item.path, target)
        moved.append(target)
    return moved


def remove(paths: List[str]) -> None:
    for path in paths:
        if os.path.exists(path):
            os.remove(path)
