"""The reference's training loop in PyTorch: SGD by steps, test every epoch, TensorBoard, checkpoints, resume, DDP.

Gin-configurable as ``train.train`` (``train.workdir``, ``train.train.num_epochs``, ...).
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import gin
import torch
import torch.distributed as dist
from torch import nn

from diffstride import pooling
from diffstride.examples import checkpoint as ckpt
from diffstride.examples import optim
from diffstride.examples.workdir import RunLock, check_int, prepare, remove_orphans
from diffstride.resnet import l2_param_groups

__all__ = ["train", "TrainingError", "pooling_report"]

CHECKPOINT_FORMAT = 1


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

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


# ----------------------------------------------------------------------------------------------
# Reports on pooling layers


def pooling_report(model: nn.Module, output_sizes: Dict[str, tuple]) -> Dict[str, Dict[str, Any]]:
    """``{layer name: {'strides': [...], 'output_size': [...]}}`` for every pooling layer."""
    report = {}
    for name, layer in pooling.pooling_layers(model):
        strides = layer.strides
        values = strides.detach().float().cpu().tolist() if isinstance(strides, torch.Tensor) else list(strides)
        report[name] = {"strides": [round(float(v), 6) for v in values],
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
# The loop


def _rng_state(device: torch.device) -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: Dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _progress(total: int, desc: str, enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, disable=not enabled)


@gin.configurable
def train(
    load_data_fn: Callable = gin.REQUIRED,
    model_cls: Callable[..., nn.Module] = gin.REQUIRED,
    optimizer_cls: Callable[[], optim.SGD] = optim.SGD,
    loss_cls: Optional[Callable[[], Callable]] = None,
    num_epochs: int = 200,
    workdir: Optional[str] = "/tmp/diffstride-runs/",
    keep_checkpoints: int = 3,
    complexity_weight: float = 0.0,
    complexity_fn: Optional[Callable] = None,
    device: Optional[str] = None,
    channels_last: Optional[bool] = None,
    mixed_precision: Optional[bool] = None,
    seed: Optional[int] = None,
    progress: Optional[bool] = None,
    log: Callable[[str], None] = print,
) -> Dict[str, Any]:
    """Trains ``model_cls`` on ``load_data_fn``'s data and returns the final metrics.

    Running it again with the same ``workdir`` resumes from the newest readable checkpoint.

    Args:
        load_data_fn: returns :class:`~diffstride.examples.data.Datasets` (``data.load_datasets``).
        model_cls: called as ``model_cls(num_output_classes=..., in_channels=...)``.
        optimizer_cls: returns an :class:`~diffstride.examples.optim.SGD` (``@tf.keras.optimizers.SGD``).
        loss_cls: returns the loss; default ``@tf.keras.losses.CategoricalCrossentropy`` (so that
            the reference's ``tf.keras.losses.CategoricalCrossentropy.label_smoothing`` binding applies).
        num_epochs: epochs in all (a resumed run trains the remaining ones).
        workdir: TensorBoard logs, checkpoints, configs and metrics; None writes nothing.
        keep_checkpoints: how many of the newest checkpoints to keep.
        complexity_weight: weight of :func:`diffstride.complexity_loss` added to the loss (0: off).
        complexity_fn: the complexity term, ``complexity_fn(model)``; default ``diffstride.complexity_loss``.
        device: 'cuda', 'cpu' or None (CUDA when available).
        channels_last: channels_last memory format (None: on; faster on CPU and GPU for convolutions).
        mixed_precision: autocast to bfloat16 (float16 with loss scaling on GPUs without bf16);
            None means on with CUDA, off on CPU (where bf16 autocast is opt-in).
        seed: seeds torch before the model is built (the command line's ``--seed``).
        progress: a progress bar (None: when the output is a terminal).
        log: where the per-epoch lines go.
    """
    check_int(num_epochs, "train.train.num_epochs", minimum=0)
    check_int(keep_checkpoints, "train.train.keep_checkpoints (checkpoints kept; 1 or more, or nothing could resume)",
              minimum=1)
    ctx = _Context(device)
    stack = contextlib.ExitStack()
    try:
        if seed is not None:
            torch.manual_seed(seed)
        is_main = ctx.is_main
        say = log if is_main else (lambda *_: None)
        if workdir is not None and is_main:
            # before any data or model work: a bad directory or a second run stops at once
            prepare(workdir)
            stack.enter_context(RunLock(workdir))
            for path in remove_orphans(workdir):
                say(f"removed {path}, left by an interrupted run")

        datasets = load_data_fn(device=ctx.device, rank=ctx.rank, world_size=ctx.world_size)
        model = model_cls(num_output_classes=datasets.num_classes, in_channels=datasets.image_shape[0]).to(ctx.device)
        use_cuda = ctx.device.type == "cuda"
        # channels_last is a layout of 4-D tensors: images only, never 1-D series
        channels_last = (True if channels_last is None else channels_last) and len(datasets.image_shape) == 3
        mixed_precision = use_cuda if mixed_precision is None else mixed_precision
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(memory_format=memory_format)
        optimizer_spec = optimizer_cls()
        optimizer = optimizer_spec.build(l2_param_groups(model))
        if loss_cls is None:
            from diffstride.examples.external_configurables import CATEGORICAL_CROSSENTROPY as loss_cls
        loss_fn = loss_cls()
        amp_dtype = torch.float16 if (use_cuda and not torch.cuda.is_bf16_supported()) else torch.bfloat16
        from diffstride.complexity import count_flops, forward_trace
        from diffstride.examples.external_configurables import COMPLEXITY_LOSS

        complexity_fn = complexity_fn or COMPLEXITY_LOSS  # complexity_loss.weighting binds
        structure = forward_trace(model, datasets.image_shape)  # pooling order and conv costs, once
        run_info = {
            "dataset": datasets.name, "seed": seed,
            "pooling": next((type(m).__name__ for _, m in pooling.pooling_layers(model)), "strided conv"),
            "initial_strides": [list(s) if isinstance(s, (list, tuple)) else s for s in getattr(model, "strides", [])],
            "complexity_weight": complexity_weight,
            "precision": str(amp_dtype).replace("torch.", "") + " autocast" if mixed_precision else "float32",
            "memory_format": "channels_last" if channels_last else "contiguous",
            "device": str(ctx.device), "world_size": ctx.world_size,
        }
        scaler = torch.amp.GradScaler("cuda", enabled=mixed_precision and use_cuda and amp_dtype == torch.float16)
        output_sizes = _track_output_sizes(model)

        start_epoch, step, history = 0, 0, []
        writer = None
        if workdir is not None:
            found = ckpt.load_latest_checkpoint(workdir, map_location=ctx.device, log=say)
            if found is not None:
                state, path = found
                try:
                    model.load_state_dict(state["model"])
                    optimizer.load_state_dict(state["optimizer"])
                except (RuntimeError, ValueError, KeyError) as err:
                    raise TrainingError(
                        f"the checkpoint {path} does not fit this model/optimizer ({str(err)[:300]}); "
                        f"use another workdir or remove the checkpoints of {workdir}") from None
                _set_rng_state(state["rng"], ctx.device)
                if "scaler" in state and scaler.is_enabled():
                    scaler.load_state_dict(state["scaler"])
                start_epoch, step, history = int(state["epoch"]), int(state["step"]), list(state.get("history", []))
                if start_epoch > num_epochs:
                    raise ValueError(
                        f"the run in {workdir} has done {start_epoch} epochs, more than train.train.num_epochs = "
                        f"{num_epochs}; raise num_epochs to extend it, or choose another --workdir")
                say(f"resumed from {path} (epoch {start_epoch}, step {step})")
            if is_main:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(workdir, purge_step=step if step else None)
                ckpt.atomic_write_text(os.path.join(workdir, "config.gin"), gin.config_str())

        net = model
        if ctx.distributed:
            net = nn.parallel.DistributedDataParallel(model, device_ids=[ctx.device] if use_cuda else None)

        kill_at = int(os.environ.get("DIFFSTRIDE_KILL_AT_STEP", "-1"))  # fault injection for the tests
        show_progress = (sys.stderr.isatty() if progress is None else progress) and is_main
        started = time.time()
        metrics: Dict[str, Any] = history[-1] if history else {}
        for epoch in range(start_epoch, num_epochs):
            net.train()
            loss_sum = torch.zeros((), device=ctx.device, dtype=torch.float64)
            correct = torch.zeros((), device=ctx.device, dtype=torch.float64)
            seen, epoch_start = 0, time.time()
            bar = _progress(len(datasets.train), f"epoch {epoch + 1}/{num_epochs}", show_progress)
            diverged = ""
            try:
                for images, labels in datasets.train:
                    if step == kill_at:
                        os.kill(os.getpid(), signal.SIGKILL)
                    lr = optimizer_spec.learning_rate_at(step)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    images = images.contiguous(memory_format=memory_format)
                    with torch.autocast(ctx.device.type, dtype=amp_dtype, enabled=mixed_precision):
                        outputs = net(images)
                        loss = loss_fn(outputs, labels)
                    total = loss + complexity_weight * complexity_fn(model, trace=structure) if complexity_weight else loss
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(total).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    step += 1
                    loss_sum += loss.detach().double() * labels.shape[0]
                    correct += (outputs.detach().argmax(-1) == labels.argmax(-1)).sum()
                    seen += labels.shape[0]
                    if bar is not None:
                        bar.update(1)
                        if step % 10 == 0:
                            bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.3f}")
                    if step % 20 == 0 and not torch.isfinite(loss):
                        break
            except FloatingPointError as err:  # e.g. strides that became NaN
                loss_sum.fill_(float("nan"))
                diverged = str(err)
            if bar is not None:
                bar.close()
            train_loss_sum, train_correct, train_seen = ctx.all_sum([loss_sum.item(), correct.item(), float(seen)])
            train_loss = train_loss_sum / max(train_seen, 1)
            if not math.isfinite(train_loss):
                last = ckpt.list_checkpoints(workdir)[0][1] if workdir and ckpt.list_checkpoints(workdir) else None
                raise TrainingError(
                    f"the training loss became non-finite ({train_loss}) in epoch {epoch + 1} (by step {step}); "
                    f"stopped without saving. Last good checkpoint: {last or 'none'}. "
                    f"Lower the learning rate, or check the data." + (f" ({diverged})" if diverged else ""))
            seconds = time.time() - epoch_start
            test_loss, test_acc = _evaluate(net, model, datasets.test, loss_fn, ctx, memory_format, amp_dtype, mixed_precision)
            report = pooling_report(model, output_sizes)
            metrics = {
                "epoch": epoch + 1, "step": step, "learning_rate": lr if seen else optimizer_spec.learning_rate_at(step),
                "train_loss": train_loss, "train_accuracy": train_correct / max(train_seen, 1),
                "test_loss": test_loss, "test_accuracy": test_acc,
                "images_per_second": train_seen / seconds if seconds > 0 else 0.0,
                "steps_per_second": len(datasets.train) / seconds if seconds > 0 else 0.0,
                "pooling": report,
            }
            with torch.no_grad():
                metrics["complexity"] = float(complexity_fn(model, trace=structure))
            metrics["flops"] = count_flops(model, datasets.image_shape)
            history.append(metrics)
            say(f"epoch {epoch + 1:>3}/{num_epochs}  loss {train_loss:.4f}  acc {metrics['train_accuracy']:.4f}  "
                f"test_loss {test_loss:.4f}  test_acc {test_acc:.4f}  lr {metrics['learning_rate']:.4g}  "
                f"{metrics['images_per_second']:.0f} img/s  MMACs {metrics['flops'] / 1e6:.1f}"
                + (f"  strides {_format_strides(report)}" if report else ""))
            if writer is not None:
                _log_tensorboard(writer, metrics, step)
            if ctx.distributed:
                replicas = ctx.gather_strides(model)
                if any(r != replicas[0] for r in replicas):
                    raise TrainingError(f"the strides differ between processes after epoch {epoch + 1}: {replicas}")
                metrics["replica_strides"] = replicas
            if workdir is not None and is_main:
                state = {"format": CHECKPOINT_FORMAT, "epoch": epoch + 1, "step": step, "model": model.state_dict(),
                         "optimizer": optimizer.state_dict(), "rng": _rng_state(ctx.device), "history": history}
                if scaler.is_enabled():
                    state["scaler"] = scaler.state_dict()
                ckpt.save_checkpoint(workdir, state, keep=keep_checkpoints)
                ckpt.write_json(os.path.join(workdir, "history.json"), history)
                ckpt.atomic_write_text(os.path.join(workdir, "operative_config.gin"), gin.operative_config_str())
            ctx.barrier()

        final = {"num_epochs": num_epochs, "seconds": time.time() - started, "workdir": workdir, "run": run_info,
                 **metrics}
        if writer is not None:
            writer.close()
        if workdir is not None and is_main:
            ckpt.write_json(os.path.join(workdir, "metrics.json"), final)
        return final
    finally:
        stack.close()
        ctx.close()


@torch.no_grad()
def _evaluate(net, model, batches, loss_fn, ctx, memory_format, amp_dtype, mixed_precision):
    net.eval()
    loss_sum = correct = count = 0.0
    for images, labels in batches:
        with torch.autocast(ctx.device.type, dtype=amp_dtype, enabled=mixed_precision):
            outputs = model(images.contiguous(memory_format=memory_format))
        loss_sum += loss_fn(outputs, labels).item() * labels.shape[0]
        correct += (outputs.argmax(-1) == labels).sum().item()
        count += labels.shape[0]
    loss_sum, correct, count = ctx.all_sum([loss_sum, correct, count])
    return loss_sum / max(count, 1), correct / max(count, 1)


def _log_tensorboard(writer, metrics: Dict[str, Any], step: int) -> None:
    for split in ("train", "test"):
        writer.add_scalar(f"{split}/loss", metrics[f"{split}_loss"], step)
        writer.add_scalar(f"{split}/accuracy", metrics[f"{split}_accuracy"], step)
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
