"""When a run writes its checkpoints: at every epoch's end, and inside an epoch every N steps
and/or M minutes (:class:`CheckpointSchedule`); :class:`CheckpointWriter` writes them (rank 0)
through :func:`~diffstride.train.run_state.save`."""
from __future__ import annotations

import time
from typing import Callable, Optional

from diffstride.train import checkpoint as ckpt
from diffstride.train.run_state import RunState, TrainingError, TrainingSetup, save

__all__ = ["CheckpointSchedule", "CheckpointWriter"]


class CheckpointSchedule:
    """When to write a checkpoint in the middle of an epoch (every N steps and/or M minutes)."""

    def __init__(self, every_steps: Optional[int], every_minutes: Optional[float],
                 agree: Optional[Callable[[bool], bool]] = None):
        """``agree``: under torchrun, rank 0's decision broadcast to every process (the minutes
        are each process's own clock; the processes must all take part in a checkpoint)."""
        self.every_steps, self.every_minutes, self.agree = every_steps, every_minutes, agree
        self.last = time.monotonic()

    def due(self, step: int) -> bool:
        if self.every_steps and step % self.every_steps == 0:
            return True
        if not self.every_minutes:
            return False
        due = time.monotonic() - self.last >= 60.0 * self.every_minutes
        return self.agree(due) if self.agree is not None else due

    def done(self) -> None:
        self.last = time.monotonic()


class CheckpointWriter:
    """Writes this run's checkpoints (end of epoch, and mid-epoch when the schedule says so)."""

    def __init__(self, workdir: Optional[str], run: TrainingSetup, state: RunState, keep: int, every_steps, every_minutes,
                 hooks, checkpointing: bool):
        """``workdir``: where this process writes (rank 0's), None elsewhere; ``checkpointing``:
        whether the run checkpoints at all (every process takes part in a mid-epoch checkpoint:
        their sums are gathered into it)."""
        self.workdir, self.run, self.state, self.keep, self.hooks = workdir, run, state, keep, hooks
        agree = run.ctx.broadcast if run.ctx.distributed else None
        self.schedule = CheckpointSchedule(every_steps, every_minutes, agree)
        self.mid_epoch = self._mid_epoch if checkpointing and (every_steps or every_minutes) else None

    def _save(self, mid_epoch: bool) -> None:
        if self.workdir is None:
            return  # another process writes
        try:
            save(self.workdir, self.run, self.state, self.keep, mid_epoch, self.hooks)
        except ckpt.CheckpointError as err:
            raise TrainingError(str(err)) from None

    def _mid_epoch(self) -> None:
        self._save(True)

    def end_of_epoch(self) -> None:
        if self.workdir is not None:
            self._save(False)
            self.schedule.done()
