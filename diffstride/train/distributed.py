"""The process group and the device of a run: one process, or one rank of ``torchrun``.

``torchrun --nnodes N --nproc_per_node G -m diffstride.examples.main ...`` sets ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK``; the context joins the group (NCCL on GPUs, gloo on CPUs), picks the
rank's device, and offers the few collectives the loop needs. Rank 0 is the one that writes.
"""
from __future__ import annotations

import os
from typing import Any, List, Optional

import torch
import torch.distributed as dist

__all__ = ["DistributedContext"]


class DistributedContext:
    """This process's place in the run: ``rank``, ``world_size``, ``device``, ``is_main``."""

    def __init__(self, device_arg: Optional[str]):
        if device_arg not in (None, "cuda", "cpu"):
            raise ValueError(f"device must be None, 'cuda' or 'cpu', but got {device_arg!r}")
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available() and device_arg in (None, "cuda")
        if cuda and self.local_rank >= torch.cuda.device_count():
            per_node = os.environ.get("LOCAL_WORLD_SIZE", str(self.local_rank + 1))
            raise ValueError(
                f"{per_node} processes per node but this node has {torch.cuda.device_count()} GPU(s) "
                f"(local rank {self.local_rank} has none): start at most one process per GPU "
                f"(torchrun --nproc_per_node={torch.cuda.device_count()}), or train on the CPU (train.train.device = 'cpu')")
        self.device = torch.device("cuda", self.local_rank) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(self.device)
        self.distributed = self.world_size > 1
        self.owns_group = self.distributed and not dist.is_initialized()
        if self.owns_group:
            dist.init_process_group(backend="nccl" if cuda else "gloo")
        self.is_main = self.rank == 0

    def close(self) -> None:
        """Destroys the process group this context made: a gloo group left to interpreter exit
        can abort the process ("terminate called without an active exception")."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False

    def all_sum(self, values: List[float]) -> List[float]:
        """The sums of ``values`` over the ranks (float64)."""
        if not self.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return t.tolist()

    def gather(self, value: Any) -> List[Any]:
        """Every rank's ``value`` (a picklable object), in rank order."""
        if not self.distributed:
            return [value]
        everyone: List[Any] = [None] * self.world_size
        dist.all_gather_object(everyone, value)
        return everyone

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()
