"""The reference's training loop in PyTorch: SGD by steps, test every epoch, TensorBoard, checkpoints, resume, DDP.

Gin-configurable as ``train.train`` (``train.workdir``, ``train.train.num_epochs``, ...). Read
:func:`train` top to bottom: :func:`build` the run, :func:`resume` it from the newest verified
checkpoint (configuration compared), then per epoch :func:`train_one_epoch`,
:func:`epoch_metrics` (with :func:`evaluate`) and :func:`save`. Everything a checkpoint needs
besides weights, optimizer and RNG is a :class:`RunState`.
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import datetime
import json
import math
import os
import socket
import sys
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import gin
import torch
import torch.distributed as dist
from torch import nn

from diffstride import pooling
from diffstride.examples import checkpoint as ckpt
from diffstride.examples import optim
from diffstride.examples.workdir import RunLock, check_int, prepare, remove_orphans
from diffstride.resnet import l2_param_groups

__all__ = ["train", "TrainingError", "ConfigChanged", "NoUsableCheckpoint", "RunState", "Run", "build", "resume",
           "save", "train_one_epoch", "evaluate", "epoch_metrics", "resolved_config", "config_differences",
           "pooling_report", "UNCHECKED_PARAMETERS"]


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, a checkpoint that does not fit the model, ...)."""


# ----------------------------------------------------------------------------------------------
# Distributed and device set-up


class _Context:
    def __init__(self, device_arg: Optional[str]):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available() and device_arg in (None, "cuda")
        if device_arg not in (None, "cuda", "cpu"):
            raise ValueError(f"device must be None, 'cuda' or 'cpu', but got {device_arg!r}")
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
        if not self.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return t.tolist()

    def gather_strides(self, model: nn.Module) -> List[Dict[str, List[float]]]:
        """Every rank's stride values (one dict per rank): they must agree under DDP."""
        mine = {name: info["strides"] for name, info in pooling_report(model, {}).items()}
        if not self.distributed:
            return [mine]
        everyone: List[Any] = [None] * self.world_size
        dist.all_gather_object(everyone, mine)
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


# ----------------------------------------------------------------------------------------------
# Reports on pooling layers


def pooling_report(model: nn.Module, output_sizes: Dict[str, tuple]) -> Dict[str, Dict[str, Any]]:
    """``{layer name: {'strides': [...], 'output_size': [...]}}`` for every pooling layer."""
    report = {}
    for name, layer in pooling.pooling_layers(model):
        report[name] = {"strides": [round(v, 6) for v in layer.stride_values()],
                        "output_size": list(output_sizes.get(name, ()))}
    return report


def _track_output_sizes(model: nn.Module) -> Dict[str, tuple]:
    sizes: Dict[str, tuple] = {}
    for name, layer in pooling.pooling_layers(model):
        layer.register_forward_hook(lambda m, i, o, name=name: sizes.__setitem__(name, tuple(o.shape[2:])))
    return sizes


def _format_strides(report: Dict[str, Dict[str, Any]]) -> str:
    parts = []
    for name, info in report.items():
        parts.append(f"{name}=(" + ",".join(f"{v:.2f}" for v in info["strides"]) + ")")
    return " ".join(parts)


# ----------------------------------------------------------------------------------------------
# The run's state and configuration

# Parameters that do not change what a run computes: a resume may change them freely.
# (``num_epochs`` may grow; that is checked on its own.)
UNCHECKED_PARAMETERS = frozenset({
    "num_epochs", "workdir", "keep_checkpoints", "checkpoint_every_steps", "checkpoint_every_minutes",
    "on_config_change", "restart", "progress", "log", "hooks", "device", "data_dir", "download",
    "shift_consistency", "shift_mode",
})


@dataclasses.dataclass
class RunState:
    """Where a run is; saved in every checkpoint beside the weights, the optimizer and the RNG.

    ``batch`` > 0 only in a checkpoint written in the middle of an epoch: the epoch's data order
    is drawn again from ``epoch_rng`` and training goes on at that batch, with the epoch's sums
    so far in ``partial``.
    """

    run_id: str
    config: Dict[str, str]  # the resolved bindings the run started with
    epoch: int = 0  # complete epochs
    step: int = 0  # optimizer steps in all
    batch: int = 0  # batches done in the current epoch
    history: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
    partial: Dict[str, float] = dataclasses.field(default_factory=dict)
    epoch_rng: Optional[Dict[str, Any]] = None
    checkpoints: List[str] = dataclasses.field(default_factory=list)  # names this run wrote, oldest first
    config_changes: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0  # wall time of the complete epochs (training, evaluation, checkpoint), over all starts

    def effective_config(self) -> Dict[str, str]:
        config = dict(self.config)
        for change in self.config_changes:
            for key, (_, new) in change["changes"].items():
                if new is None:
                    config.pop(key, None)
                else:
                    config[key] = new
        return config


def resolved_config(seed: Optional[int]) -> Dict[str, str]:
    """Every Gin binding in force (``scope/selector.parameter`` -> the value as written) and the seed."""
    from gin import config as gin_config
    from gin import config_parser

    bindings = {"--seed": repr(seed)}
    parser = config_parser.ConfigParser(gin.config_str(), gin_config.ParserDelegate(skip_unknown=True))
    for statement in parser:
        if isinstance(statement, config_parser.BindingStatement):
            key = f"{statement.scope + '/' if statement.scope else ''}{statement.selector}.{statement.arg_name}"
            bindings[key] = repr(statement.value)
    return bindings


def config_differences(old: Dict[str, str], new: Dict[str, str]) -> Dict[str, Tuple[Optional[str], Optional[str]]]:
    """``{binding: (old, new)}`` for the bindings that change what a run computes (None: unbound)."""
    changes = {}
    for key in sorted(set(old) | set(new)):
        if key.rsplit(".", 1)[-1] in UNCHECKED_PARAMETERS:
            continue
        if old.get(key) != new.get(key):
            changes[key] = (old.get(key), new.get(key))
    return changes


class ConfigChanged(ValueError):
    """A resume whose configuration differs from the run's in something that changes the result."""


class NoUsableCheckpoint(TrainingError):
    """The work directory has checkpoints and none of them can be trusted."""


# ----------------------------------------------------------------------------------------------
# What the loop works with


@dataclasses.dataclass
class Run:
    """The built parts of a run (everything but its state)."""

    ctx: _Context
    datasets: Any
    model: nn.Module
    net: nn.Module  # the model, or its DistributedDataParallel wrapper
    optimizer_spec: optim.SGD
    optimizer: torch.optim.Optimizer
    loss_fn: Callable
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype
    mixed_precision: bool
    memory_format: torch.memory_format
    complexity_fn: Callable
    complexity_weight: float
    structure: Any  # the forward trace: pooling order and conv costs, for the complexity terms
    output_sizes: Dict[str, tuple]
    info: Dict[str, Any]
    shift_consistency: Optional[Tuple[int, str]] = None  # (max_shift, mode) evaluated with the test split


def build(ctx: _Context, load_data_fn, model_cls, optimizer_cls, loss_cls, complexity_fn, complexity_weight,
          channels_last, mixed_precision, seed) -> Run:
    """Loads the data and builds the model, the optimizer, the loss and the precision policy."""
    from diffstride.complexity import forward_trace
    from diffstride.examples.external_configurables import CATEGORICAL_CROSSENTROPY, COMPLEXITY_LOSS

    datasets = load_data_fn(device=ctx.device, rank=ctx.rank, world_size=ctx.world_size)
    model = model_cls(num_output_classes=datasets.num_classes, in_channels=datasets.image_shape[0]).to(ctx.device)
    use_cuda = ctx.device.type == "cuda"
    # channels_last is a layout of 4-D tensors: images only, never 1-D series
    channels_last = (True if channels_last is None else channels_last) and len(datasets.image_shape) == 3
    mixed_precision = use_cuda if mixed_precision is None else mixed_precision
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer_spec = optimizer_cls()
    amp_dtype = torch.float16 if (use_cuda and not torch.cuda.is_bf16_supported()) else torch.bfloat16
    net = model
    if ctx.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[ctx.device] if use_cuda else None)
    info = {
        "dataset": datasets.name, "seed": seed,
        "pooling": next((type(m).__name__ for _, m in pooling.pooling_layers(model)), "strided conv"),
        "initial_strides": [list(s) if isinstance(s, (list, tuple)) else s for s in getattr(model, "strides", [])],
        "complexity_weight": complexity_weight,
        "precision": str(amp_dtype).replace("torch.", "") + " autocast" if mixed_precision else "float32",
        "memory_format": "channels_last" if channels_last else "contiguous",
        "device": str(ctx.device), "world_size": ctx.world_size,
    }
    return Run(
        ctx=ctx, datasets=datasets, model=model, net=net, optimizer_spec=optimizer_spec,
        optimizer=optimizer_spec.build(l2_param_groups(model)), loss_fn=(loss_cls or CATEGORICAL_CROSSENTROPY)(),
        scaler=torch.amp.GradScaler("cuda", enabled=mixed_precision and use_cuda and amp_dtype == torch.float16),
        amp_dtype=amp_dtype, mixed_precision=mixed_precision, memory_format=memory_format,
        complexity_fn=complexity_fn or COMPLEXITY_LOSS,  # complexity_loss.weighting binds
        complexity_weight=complexity_weight, structure=forward_trace(model, datasets.image_shape),
        output_sizes=_track_output_sizes(model), info=info)


def _rng_state(device: torch.device) -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: Dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


# ----------------------------------------------------------------------------------------------
# Resume and save


def resume(workdir: str, run: Run, config: Dict[str, str], num_epochs: int, on_config_change: str,
           restart: bool, say: Callable[[str], None]) -> Tuple[Optional[RunState], Optional[str], Dict[str, Any]]:
    """Loads the newest verified checkpoint of ``workdir`` into ``run``.

    Returns ``(state, path, changes)``, or ``(None, None, {})`` for a fresh start. Refused newer
    checkpoints are set aside (``.unusable``); when every checkpoint is refused the run stops,
    listing them, unless ``restart``. A configuration that differs in anything that changes
    the result stops the run unless ``on_config_change == 'continue'``.
    """
    ctx = run.ctx
    found = path = None
    if ctx.is_main:
        found, refused = ckpt.find_usable(workdir, map_location=ctx.device)
        listing = "\n".join(f"  {item.path}: {item.reason}" for item in refused)
        if found is None and refused and not restart:
            raise NoUsableCheckpoint(
                f"no checkpoint in {workdir} can be trusted:\n{listing}\nNothing was changed. To start this run "
                f"afresh, pass --restart (the files are kept as *.unusable); or choose another --workdir")
        if found is not None and restart:
            raise TrainingError(f"--restart was given, but {found[1]} is a usable checkpoint: running the same "
                                f"command without --restart resumes from it; to start afresh choose another --workdir")
        for item, moved in zip(refused, ckpt.set_aside(refused)):
            say(f"warning: checkpoint {item.path} is unusable ({item.reason}); kept as {moved}")
        path = found[1] if found else None
    path = ctx.broadcast(path)
    if path is None:
        return None, None, {}
    saved = found[0] if found is not None else ckpt.load_checkpoint(path, map_location=ctx.device)
    state = RunState(**saved["run"])
    if state.epoch > num_epochs:
        raise ValueError(
            f"the run in {workdir} has done {state.epoch} epochs, more than train.train.num_epochs = "
            f"{num_epochs}; raise num_epochs to extend it, or choose another --workdir")
    # the configurations are compared before any weight is loaded: a changed model is listed
    # like any other binding instead of failing in load_state_dict
    changes = config_differences(state.effective_config(), config)
    lines = "\n".join(f"  {key}: {old if old is not None else '(unbound)'} -> {new if new is not None else '(unbound)'}"
                      for key, (old, new) in changes.items())
    if changes and on_config_change != "continue":
        raise ConfigChanged(
            f"the run in {workdir} was trained with another configuration; these bindings differ "
            f"(checkpoint -> now):\n{lines}\nTo proceed: choose another --workdir for a new run, restore the "
            f"values above, or continue this run with the new values and a record of the change: "
            f"--gin_bindings=\"train.train.on_config_change = 'continue'\"")
    try:
        run.model.load_state_dict(saved["model"])
        run.optimizer.load_state_dict(saved["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        if changes:
            raise ConfigChanged(
                f"the run in {workdir} cannot continue with these bindings: they change the network's "
                f"architecture, and a different architecture cannot continue from these weights "
                f"(train.train.on_config_change = 'continue' only carries over changes that keep every weight's "
                f"name and shape):\n{lines}\nChoose another --workdir for the new network, or restore the values "
                f"above. Nothing was written.") from None
        raise TrainingError(
            f"the checkpoint {path} does not fit this model/optimizer ({str(err)[:300]}); "
            f"use another workdir, or move its checkpoints away") from None
    if "scaler" in saved and run.scaler.is_enabled():
        run.scaler.load_state_dict(saved["scaler"])
    if changes:
        say(f"continuing with a changed configuration (recorded in starts.jsonl and metrics.json):\n{lines}")
        state.config_changes.append({"step": state.step, "epoch": state.epoch,
                                     "changes": {k: list(v) for k, v in changes.items()}})
    _set_rng_state(saved["rng"], ctx.device)
    say(f"resumed from {path} (epoch {state.epoch}" + (f", batch {state.batch}" if state.batch else "")
        + f", step {state.step})")
    return state, path, changes


def save(workdir: str, run: Run, state: RunState, keep: int, mid_epoch: bool, hooks: Sequence[Callable]) -> str:
    """Writes a checkpoint, verifies it, then applies retention to this run's older ones.

    Retention: the ``keep`` newest end-of-epoch checkpoints of this run stay; its mid-epoch
    checkpoints older than the one just verified go. Files this run did not write are never deleted.
    """
    name = ckpt.checkpoint_name(state.epoch, state.step, mid_epoch)
    record = dataclasses.replace(state, checkpoints=[n for n in state.checkpoints if n != name] + [name])
    payload = {"format": ckpt.FORMAT, "epoch": state.epoch, "step": state.step, "model": run.model.state_dict(),
               "optimizer": run.optimizer.state_dict(), "rng": _rng_state(run.ctx.device),
               "run": dataclasses.asdict(record)}
    if run.scaler.is_enabled():
        payload["scaler"] = run.scaler.state_dict()
    _fire(hooks, "before_checkpoint", state)
    path = ckpt.save_checkpoint(workdir, payload, mid_epoch=mid_epoch)
    _fire(hooks, "checkpoint_written", state)
    state.checkpoints = record.checkpoints
    epoch_ends = [n for n in state.checkpoints if "-step" not in n]
    stale = [n for n in state.checkpoints if n != name and ("-step" in n or n not in epoch_ends[-keep:])]
    ckpt.remove([os.path.join(workdir, n) for n in stale])
    state.checkpoints = [n for n in state.checkpoints if n not in stale]
    return path


def _fire(hooks: Sequence[Callable], event: str, state: RunState) -> None:
    for hook in hooks:
        hook(event, state)


# ----------------------------------------------------------------------------------------------
# One epoch, evaluation


class _Checkpointing:
    """When to write a checkpoint in the middle of an epoch (every N steps and/or M minutes)."""

    def __init__(self, every_steps: Optional[int], every_minutes: Optional[float]):
        self.every_steps, self.every_minutes = every_steps, every_minutes
        self.last = time.monotonic()

    def due(self, step: int) -> bool:
        if self.every_steps and step % self.every_steps == 0:
            return True
        return bool(self.every_minutes) and time.monotonic() - self.last >= 60.0 * self.every_minutes

    def done(self) -> None:
        self.last = time.monotonic()


def train_one_epoch(run: Run, state: RunState, num_epochs: int, save_mid_epoch: Optional[Callable[[], None]],
                    checkpointing: _Checkpointing, hooks: Sequence[Callable], show_progress: bool) -> Dict[str, float]:
    """Trains from ``state.batch`` to the end of epoch ``state.epoch + 1``; returns the epoch's sums."""
    ctx, train = run.ctx, run.datasets.train
    if state.batch == 0:
        state.epoch_rng = _rng_state(ctx.device)
        perm = train.permutation()
        state.partial = {"loss": 0.0, "correct": 0.0, "seen": 0.0, "seconds": 0.0}
    else:  # resumed mid-epoch: the same order, from the next batch, with the RNG as it was
        now = _rng_state(ctx.device)
        _set_rng_state(state.epoch_rng, ctx.device)
        perm = train.permutation()
        _set_rng_state(now, ctx.device)
    run.net.train()
    loss_sum = torch.tensor(state.partial["loss"], device=ctx.device, dtype=torch.float64)
    correct = torch.tensor(state.partial["correct"], device=ctx.device, dtype=torch.float64)
    seen, started, earlier = int(state.partial["seen"]), time.time(), state.partial["seconds"]
    bar = _progress(len(train), f"epoch {state.epoch + 1}/{num_epochs}", show_progress, initial=state.batch)
    diverged = ""

    def sums() -> Dict[str, float]:
        return {"loss": loss_sum.item(), "correct": correct.item(), "seen": float(seen),
                "seconds": earlier + time.time() - started}

    try:
        for images, labels in train.batches(perm, start=state.batch):
            lr = run.optimizer_spec.learning_rate_at(state.step)
            for group in run.optimizer.param_groups:
                group["lr"] = lr
            images = images.contiguous(memory_format=run.memory_format)
            with torch.autocast(ctx.device.type, dtype=run.amp_dtype, enabled=run.mixed_precision):
                outputs = run.net(images)
                loss = run.loss_fn(outputs, labels)
            total = loss
            if run.complexity_weight:
                total = loss + run.complexity_weight * run.complexity_fn(run.model, trace=run.structure)
            run.optimizer.zero_grad(set_to_none=True)
            run.scaler.scale(total).backward()
            run.scaler.step(run.optimizer)
            run.scaler.update()
            state.step += 1
            state.batch += 1
            loss_sum += loss.detach().double() * labels.shape[0]
            correct += (outputs.detach().argmax(-1) == labels.argmax(-1)).sum()
            seen += labels.shape[0]
            if bar is not None:
                bar.update(1)
                if state.step % 10 == 0:
                    bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.3f}")
            _fire(hooks, "step", state)
            if state.step % 20 == 0 and not torch.isfinite(loss):
                break
            if save_mid_epoch is not None and state.batch < len(train) and checkpointing.due(state.step):
                state.partial = sums()
                if not math.isfinite(state.partial["loss"]):
                    break  # never checkpoint a diverged run
                save_mid_epoch()
                checkpointing.done()
    except FloatingPointError as err:  # e.g. strides that became NaN
        loss_sum.fill_(float("nan"))
        diverged = str(err)
    if bar is not None:
        bar.close()
    result = sums()
    result["diverged"] = diverged
    result["learning_rate"] = run.optimizer_spec.learning_rate_at(max(state.step - 1, 0))
    return result


@torch.no_grad()
def evaluate(run: Run, shift_consistency: Optional[Tuple[int, str]] = None) -> Dict[str, float]:
    """Test loss and accuracy over every rank's share of the test split, and with
    ``shift_consistency = (max_shift, mode)`` the shift consistency of the model on it
    (:mod:`diffstride.metrics`; the shifts come from a generator seeded afresh at every
    evaluation: the same shifts every epoch, and the training RNG untouched)."""
    from diffstride import metrics as shift_metrics

    run.net.eval()
    loss_sum = correct = count = agree = 0.0
    generator = torch.Generator().manual_seed(run.ctx.rank)

    def model(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(run.ctx.device.type, dtype=run.amp_dtype, enabled=run.mixed_precision):
            return run.model(x.contiguous(memory_format=run.memory_format))

    for images, labels in run.datasets.test:
        outputs = model(images)
        loss_sum += run.loss_fn(outputs, labels).item() * labels.shape[0]
        correct += (outputs.argmax(-1) == labels).sum().item()
        count += labels.shape[0]
        if shift_consistency is not None:
            agree += shift_metrics.agreement(model, images, *shift_consistency, generator=generator).sum().item()
    loss_sum, correct, count, agree = run.ctx.all_sum([loss_sum, correct, count, agree])
    result = {"test_loss": loss_sum / max(count, 1), "test_accuracy": correct / max(count, 1)}
    if shift_consistency is not None:
        result["shift_consistency"] = agree / max(count, 1)
    return result


def epoch_metrics(run: Run, state: RunState, sums: Dict[str, float]) -> Dict[str, Any]:
    """The metrics of the epoch just trained: sums across ranks, test results, strides, complexity."""
    from diffstride.complexity import count_flops

    loss_sum, correct, seen = run.ctx.all_sum([sums["loss"], sums["correct"], sums["seen"]])
    train_loss = loss_sum / max(seen, 1)
    if not math.isfinite(train_loss):
        return {"train_loss": train_loss}
    seconds = sums["seconds"]
    metrics = {
        "epoch": state.epoch, "step": state.step, "learning_rate": sums["learning_rate"],
        "train_loss": train_loss, "train_accuracy": correct / max(seen, 1),
        **evaluate(run, run.shift_consistency),
        "images_per_second": seen / seconds if seconds > 0 else 0.0,
        "steps_per_second": len(run.datasets.train) / seconds if seconds > 0 else 0.0,
        "pooling": pooling_report(run.model, run.output_sizes),
    }
    with torch.no_grad():
        metrics["complexity"] = float(run.complexity_fn(run.model, trace=run.structure))
    metrics["flops"] = count_flops(run.model, run.datasets.image_shape)
    return metrics


def _progress(total: int, desc: str, enabled: bool, initial: int = 0):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with the train extra
        return None
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, disable=not enabled, initial=initial)


def _append_start(workdir: str, record: Dict[str, Any]) -> None:
    """One JSON line per start in ``starts.jsonl``: when, who, from which checkpoint, what changed."""
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(os.path.join(workdir, "starts.jsonl"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------
# The loop


@gin.configurable
def train(
    load_data_fn: Callable = gin.REQUIRED,
    model_cls: Callable[..., nn.Module] = gin.REQUIRED,
    optimizer_cls: Callable[[], optim.SGD] = optim.SGD,
    loss_cls: Optional[Callable[[], Callable]] = None,
    num_epochs: int = 200,
    workdir: Optional[str] = "/tmp/diffstride-runs/",
    keep_checkpoints: int = 3,
    checkpoint_every_steps: Optional[int] = None,
    checkpoint_every_minutes: Optional[float] = None,
    on_config_change: str = "stop",
    restart: bool = False,
    complexity_weight: float = 0.0,
    complexity_fn: Optional[Callable] = None,
    device: Optional[str] = None,
    channels_last: Optional[bool] = None,
    mixed_precision: Optional[bool] = None,
    seed: Optional[int] = None,
    shift_consistency: Optional[int] = None,
    shift_mode: str = "circular",
    progress: Optional[bool] = None,
    log: Callable[[str], None] = print,
    hooks: Sequence[Callable[[str, RunState], None]] = (),
) -> Dict[str, Any]:
    """Trains ``model_cls`` on ``load_data_fn``'s data and returns the final metrics.

    Running it again with the same ``workdir`` resumes from the newest verified checkpoint,
    if the configuration is the same (see ``on_config_change``).

    Args:
        load_data_fn: returns :class:`~diffstride.examples.data.Datasets` (``data.load_datasets``).
        model_cls: called as ``model_cls(num_output_classes=..., in_channels=...)``.
        optimizer_cls: returns an :class:`~diffstride.examples.optim.SGD` (``@tf.keras.optimizers.SGD``).
        loss_cls: returns the loss; default ``@tf.keras.losses.CategoricalCrossentropy`` (so that
            the reference's ``tf.keras.losses.CategoricalCrossentropy.label_smoothing`` binding applies).
        num_epochs: epochs in all (a resumed run trains the remaining ones; it may grow, not shrink).
        workdir: TensorBoard logs, checkpoints, configs and metrics; None writes nothing.
        keep_checkpoints: how many of the newest end-of-epoch checkpoints to keep (>= 1).
        checkpoint_every_steps: also write a checkpoint every this many steps inside an epoch.
        checkpoint_every_minutes: also write one when this many minutes passed since the last.
        on_config_change: 'stop' (default): a resume whose bindings differ in anything that changes
            the result stops, listing them; 'continue': go on with the new values and record the change.
        restart: when the workdir has checkpoints and none verifies, set them aside and start afresh
            (without it the run stops and lists them). The command line's ``--restart``.
        complexity_weight: weight of :func:`diffstride.complexity_loss` added to the loss (0: off).
        complexity_fn: the complexity term, ``complexity_fn(model)``; default ``diffstride.complexity_loss``.
        device: 'cuda', 'cpu' or None (CUDA when available).
        channels_last: channels_last memory format (None: on; faster on CPU and GPU for convolutions).
        mixed_precision: autocast to bfloat16 (float16 with loss scaling on GPUs without bf16);
            None means on with CUDA, off on CPU (where bf16 autocast is opt-in).
        seed: seeds torch before the model is built (the command line's ``--seed``).
        shift_consistency: when set, the largest shift (samples per spatial axis) of the shift
            consistency measured with every evaluation (:func:`diffstride.metrics.shift_consistency`:
            the fraction of test examples whose top-1 predictions agree on two random shifts),
            recorded as ``shift_consistency`` in the metrics and TensorBoard; None: not measured.
        shift_mode: ``'circular'`` (wrap around; Zhang 2019's CIFAR protocol) or ``'zeros'``
            (pad with zeros in the normalised input, crop back).
        progress: a progress bar (None: when the output is a terminal).
        log: where the per-epoch lines go.
        hooks: ``hook(event, state)`` called at 'step', 'before_checkpoint', 'checkpoint_written'
            and 'epoch_end' (e.g. fault injection in the tests, custom logging).
    """
    check_int(num_epochs, "train.train.num_epochs", minimum=0)
    check_int(keep_checkpoints, "train.train.keep_checkpoints (checkpoints kept; 1 or more, or nothing could resume)",
              minimum=1)
    check_int(checkpoint_every_steps, "train.train.checkpoint_every_steps", minimum=1, allow_none=True)
    if checkpoint_every_minutes is not None and not (isinstance(checkpoint_every_minutes, (int, float))
                                                     and not isinstance(checkpoint_every_minutes, bool)
                                                     and checkpoint_every_minutes > 0):
        raise ValueError(f"train.train.checkpoint_every_minutes must be a positive number or None, "
                         f"but got {checkpoint_every_minutes!r}")
    check_int(shift_consistency, "train.train.shift_consistency (the largest shift)", minimum=0, allow_none=True)
    if shift_mode not in ("circular", "zeros"):
        raise ValueError(f"train.train.shift_mode must be 'circular' or 'zeros', but got {shift_mode!r}")
    if on_config_change not in ("stop", "continue"):
        raise ValueError(f"train.train.on_config_change must be 'stop' or 'continue', but got {on_config_change!r}")
    ctx = _Context(device)
    with contextlib.ExitStack() as stack:
        stack.callback(ctx.close)
        if seed is not None:
            torch.manual_seed(seed)
        say = log if ctx.is_main else (lambda *_: None)
        writes = workdir is not None and ctx.is_main
        if writes:  # before any data or model work: a bad directory or a second run stops at once
            prepare(workdir)
            stack.enter_context(RunLock(workdir))
            for path in remove_orphans(workdir):
                say(f"removed {path}, left by an interrupted run")

        run = build(ctx, load_data_fn, model_cls, optimizer_cls, loss_cls, complexity_fn, complexity_weight,
                    channels_last, mixed_precision, seed)
        if shift_consistency is not None:
            run.shift_consistency = (shift_consistency, shift_mode)
        config = resolved_config(seed)
        state, resumed_from, changes = (resume(workdir, run, config, num_epochs, on_config_change, restart, say)
                                        if workdir is not None else (None, None, {}))
        state = state or RunState(run_id=uuid.uuid4().hex, config=config)
        if resumed_from is not None and state.epoch == num_epochs and state.batch == 0:
            # finished: a rerun as is changes nothing it recorded (damaged records are rebuilt)
            say(f"the run in {workdir} has finished its {num_epochs} epochs; nothing to train "
                f"(raise train.train.num_epochs to extend it)")
            return _final_records(workdir, run, state, num_epochs, writes, resumed_from, say)
        writer = None
        if writes:
            if not os.path.exists(os.path.join(workdir, "config.gin")):  # the first start's, never overwritten
                ckpt.atomic_write_text(os.path.join(workdir, "config.gin"), gin.config_str())
            _append_start(workdir, {
                "time": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "pid": os.getpid(),
                "host": socket.gethostname(), "argv": sys.argv, "run_id": state.run_id,
                "resumed_from": resumed_from, "epoch": state.epoch, "step": state.step, "num_epochs": num_epochs,
                "config_changes": {k: list(v) for k, v in changes.items()}})
            from torch.utils.tensorboard import SummaryWriter

            writer = stack.enter_context(SummaryWriter(workdir, purge_step=state.step or None))

        def save_now(mid_epoch: bool) -> None:
            try:
                save(workdir, run, state, keep_checkpoints, mid_epoch, hooks)
            except ckpt.CheckpointError as err:
                raise TrainingError(str(err)) from None

        checkpointing = _Checkpointing(checkpoint_every_steps, checkpoint_every_minutes)
        save_mid_epoch = (lambda: save_now(True)) if writes and (checkpoint_every_steps or checkpoint_every_minutes) else None
        show_progress = (sys.stderr.isatty() if progress is None else progress) and ctx.is_main
        while state.epoch < num_epochs:
            sums = train_one_epoch(run, state, num_epochs, save_mid_epoch, checkpointing, hooks, show_progress)
            state.epoch, state.batch, state.partial, state.epoch_rng = state.epoch + 1, 0, {}, None
            evaluated = time.time()
            metrics = epoch_metrics(run, state, sums)
            state.seconds += sums["seconds"] + time.time() - evaluated
            if not math.isfinite(metrics["train_loss"]):
                last = os.path.join(workdir, state.checkpoints[-1]) if workdir and state.checkpoints else "none"
                raise TrainingError(
                    f"the training loss became non-finite ({metrics['train_loss']}) in epoch {state.epoch} "
                    f"(by step {state.step}); stopped without saving. Last good checkpoint: {last}. "
                    f"Lower the learning rate, or check the data." + (f" ({sums['diverged']})" if sums["diverged"] else ""))
            say(_epoch_line(metrics, num_epochs))
            if ctx.distributed:
                replicas = ctx.gather_strides(run.model)
                if any(r != replicas[0] for r in replicas):
                    raise TrainingError(f"the strides differ between processes after epoch {state.epoch}: {replicas}")
                metrics["replica_strides"] = replicas
            state.history.append(metrics)
            if writer is not None:
                _log_tensorboard(writer, metrics, state.step)
            if writes:
                save_now(False)
                checkpointing.done()
                ckpt.write_json(os.path.join(workdir, "history.json"), state.history)
                if not os.path.exists(os.path.join(workdir, "operative_config.gin")):
                    ckpt.atomic_write_text(os.path.join(workdir, "operative_config.gin"), gin.operative_config_str())
            _fire(hooks, "epoch_end", state)
            ctx.barrier()

        return _final_records(workdir, run, state, num_epochs, writes)


def _final(workdir: Optional[str], run: Run, state: RunState, num_epochs: int) -> Dict[str, Any]:
    """What ``metrics.json`` holds: the last epoch's metrics, the run's description, its time."""
    info = dict(run.info, seed=ast.literal_eval(state.config.get("--seed", "None")),  # as trained: the first start's
                config_changes=state.config_changes)
    return {"num_epochs": num_epochs, "seconds": state.seconds, "workdir": workdir, "run": info,
            **(state.history[-1] if state.history else {})}


def _read_json(path: str) -> Any:
    """The parsed file, or None when it is missing or does not parse."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _final_records(workdir: Optional[str], run: Run, state: RunState, num_epochs: int, writes: bool,
                   checkpoint: Optional[str] = None, say: Callable[[str], None] = print) -> Dict[str, Any]:
    """Writes ``metrics.json`` at the end of training and returns it. For a finished run started
    again (``checkpoint`` given) the records are kept as they are, except those that are missing
    or do not parse, which are rebuilt from the checkpoint (with a line saying so)."""
    final = _final(workdir, run, state, num_epochs)
    if not writes:
        return final
    if checkpoint is None:
        ckpt.write_json(os.path.join(workdir, "metrics.json"), final)
        return final
    recorded = {name: _read_json(os.path.join(workdir, name)) for name in ("history.json", "metrics.json")}
    intact = {"history.json": isinstance(recorded["history.json"], list),
              "metrics.json": isinstance(recorded["metrics.json"], dict) and "test_accuracy" in recorded["metrics.json"]}
    for name, content in (("history.json", state.history), ("metrics.json", final)):
        if not intact[name]:
            path = os.path.join(workdir, name)
            ckpt.write_json(path, content)
            say(f"rebuilt {path} from {checkpoint} (it was missing or not a valid record)")
    return recorded["metrics.json"] if intact["metrics.json"] else final


def _epoch_line(metrics: Dict[str, Any], num_epochs: int) -> str:
    report = metrics["pooling"]
    return (f"epoch {metrics['epoch']:>3}/{num_epochs}  loss {metrics['train_loss']:.4f}  "
            f"acc {metrics['train_accuracy']:.4f}  test_loss {metrics['test_loss']:.4f}  "
            f"test_acc {metrics['test_accuracy']:.4f}  lr {metrics['learning_rate']:.4g}  "
            f"{metrics['images_per_second']:.0f} img/s  MMACs {metrics['flops'] / 1e6:.1f}"
            + (f"  shift_cons {metrics['shift_consistency']:.4f}" if "shift_consistency" in metrics else "")
            + (f"  strides {_format_strides(report)}" if report else ""))


def _log_tensorboard(writer, metrics: Dict[str, Any], step: int) -> None:
    for split in ("train", "test"):
        writer.add_scalar(f"{split}/loss", metrics[f"{split}_loss"], step)
        writer.add_scalar(f"{split}/accuracy", metrics[f"{split}_accuracy"], step)
    if "shift_consistency" in metrics:
        writer.add_scalar("test/shift_consistency", metrics["shift_consistency"], step)
    writer.add_scalar("learning_rate", metrics["learning_rate"], step)
    writer.add_scalar("steps_per_second", metrics["steps_per_second"], step)
    writer.add_scalar("images_per_second", metrics["images_per_second"], step)
    if "complexity" in metrics:
        writer.add_scalar("complexity/J", metrics["complexity"], step)
    if "flops" in metrics:
        writer.add_scalar("complexity/flops", metrics["flops"], step)
    for name, info in metrics["pooling"].items():
        for axis, value in zip(("h", "w"), info["strides"]):
            writer.add_scalar(f"pooling/{name}/stride_{axis}", value, step)
        for axis, value in zip(("h", "w"), info["output_size"]):
            writer.add_scalar(f"pooling/{name}/output_{axis}", value, step)
    writer.flush()
