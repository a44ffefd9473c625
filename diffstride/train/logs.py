"""What a run tells: the epoch line, TensorBoard, ``starts.jsonl``, the configs and ``history.json``.

:class:`RunRecorder` holds the writers of one start of a run (rank 0 with a work directory; a silent
one otherwise). Pooling layers are described by :func:`pooling_report`, with their axes named by
their dimensionality (``l``; ``h, w``; ``d, h, w``).
"""
from __future__ import annotations

import datetime
import json
import os
import socket
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

import gin
import torch
from torch import nn

from diffstride import pooling
from diffstride.train.atomic import atomic_write_text, write_json

__all__ = ["AXES", "pooling_report", "track_output_sizes", "epoch_line", "append_start", "progress_bar", "RunRecorder"]

#: Names of the axes of a pooling layer's strides and output size, by their number.
AXES = {1: ("l",), 2: ("h", "w"), 3: ("d", "h", "w")}


def pooling_report(model: nn.Module, output_sizes: Dict[str, tuple]) -> Dict[str, Dict[str, Any]]:
    """``{layer name: {'strides': [...], 'output_size': [...]}}`` for every pooling layer."""
    return {name: {"strides": [round(v, 6) for v in layer.stride_values()],
                   "output_size": list(output_sizes.get(name, ()))}
            for name, layer in pooling.pooling_layers(model)}


def track_output_sizes(model: nn.Module) -> Tuple[Dict[str, tuple], List[torch.utils.hooks.RemovableHandle]]:
    """A dict that every forward fills with each pooling layer's output size, and the hooks'
    handles (remove them when done)."""
    sizes: Dict[str, tuple] = {}
    handles = [layer.register_forward_hook(lambda m, i, o, name=name: sizes.__setitem__(name, tuple(o.shape[2:])))
               for name, layer in pooling.pooling_layers(model)]
    return sizes, handles


def _format_strides(report: Dict[str, Dict[str, Any]]) -> str:
    return " ".join(f"{name}=(" + ",".join(f"{v:.2f}" for v in info["strides"]) + ")" for name, info in report.items())


def epoch_line(metrics: Dict[str, Any], num_epochs: int) -> str:
    """The line printed after each epoch."""
    report = metrics["pooling"]
    return (f"epoch {metrics['epoch']:>3}/{num_epochs}  loss {metrics['train_loss']:.4f}  "
            f"acc {metrics['train_accuracy']:.4f}  test_loss {metrics['test_loss']:.4f}  "
            f"test_acc {metrics['test_accuracy']:.4f}  lr {metrics['learning_rate']:.4g}  "
            f"{metrics['images_per_second']:.0f} img/s  MMACs {metrics['flops'] / 1e6:.1f}"
            + (f"/{metrics['budget_macs'] / 1e6:.1f}" if metrics.get("budget_macs") else "")
            + (f"  shift_cons {metrics['shift_consistency']:.4f}" if "shift_consistency" in metrics else "")
            + (f"  strides {_format_strides(report)}" if report else ""))


def log_tensorboard(writer, metrics: Dict[str, Any], step: int) -> None:
    for split in ("train", "test"):
        writer.add_scalar(f"{split}/loss", metrics[f"{split}_loss"], step)
        writer.add_scalar(f"{split}/accuracy", metrics[f"{split}_accuracy"], step)
    if "shift_consistency" in metrics:
        writer.add_scalar("test/shift_consistency", metrics["shift_consistency"], step)
    for name in ("learning_rate", "steps_per_second", "images_per_second"):
        writer.add_scalar(name, metrics[name], step)
    if "complexity" in metrics:
        writer.add_scalar("complexity/J", metrics["complexity"], step)
    if "flops" in metrics:
        writer.add_scalar("complexity/flops", metrics["flops"], step)
    if metrics.get("budget_macs"):
        writer.add_scalar("complexity/budget_macs", metrics["budget_macs"], step)
    for name, info in metrics["pooling"].items():
        for axis, value in zip(AXES.get(len(info["strides"]), ()), info["strides"]):
            writer.add_scalar(f"pooling/{name}/stride_{axis}", value, step)
        for axis, value in zip(AXES.get(len(info["output_size"]), ()), info["output_size"]):
            writer.add_scalar(f"pooling/{name}/output_{axis}", value, step)
    writer.flush()


def append_start(workdir: str, record: Dict[str, Any]) -> None:
    """One JSON line per start in ``starts.jsonl``: when, who, from which checkpoint, what changed."""
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(os.path.join(workdir, "starts.jsonl"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def progress_bar(total: int, desc: str, enabled: bool, initial: int = 0):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with the train extra
        return None
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, disable=not enabled, initial=initial)


class RunRecorder:
    """The records of one start: ``with RunRecorder(...) as log:`` then ``log.epoch(...)`` per epoch.

    On entry (with a work directory): ``config.gin`` (the first start's, never overwritten), a
    line in ``starts.jsonl`` and a TensorBoard writer (purged past the resumed step). Per epoch:
    the epoch line, TensorBoard, then, after the checkpoint, ``history.json`` and the first
    ``operative_config.gin``. Without a work directory (or on ranks other than 0) it only prints
    through ``say``.
    """

    def __init__(self, workdir: Optional[str], say: Callable[[str], None], start: Dict[str, Any], step: int):
        self.workdir, self.say, self.start, self.step = workdir, say, start, step
        self.writer = None

    def __enter__(self) -> "RunRecorder":
        if self.workdir is not None:
            from torch.utils.tensorboard import SummaryWriter  # TensorBoard: imported only when writing

            if not os.path.exists(os.path.join(self.workdir, "config.gin")):
                atomic_write_text(os.path.join(self.workdir, "config.gin"), gin.config_str())
            append_start(self.workdir, {"time": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                                        "pid": os.getpid(), "host": socket.gethostname(), "argv": sys.argv,
                                        **self.start})
            self.writer = SummaryWriter(self.workdir, purge_step=self.step or None)
        return self

    def __exit__(self, *exc) -> None:
        if self.writer is not None:
            self.writer.close()

    def epoch(self, metrics: Dict[str, Any], num_epochs: int, step: int) -> None:
        self.say(epoch_line(metrics, num_epochs))
        if self.writer is not None:
            log_tensorboard(self.writer, metrics, step)

    def records(self, history: List[Dict[str, Any]]) -> None:
        if self.workdir is None:
            return
        write_json(os.path.join(self.workdir, "history.json"), history)
        if not os.path.exists(os.path.join(self.workdir, "operative_config.gin")):
            atomic_write_text(os.path.join(self.workdir, "operative_config.gin"), gin.operative_config_str())
