"""The reference's training loop in PyTorch: SGD by steps, test every epoch, TensorBoard, checkpoints, resume, DDP.

Gin-configurable as ``train.train`` (``train.workdir``, ``train.train.num_epochs``, ...). Read
:func:`train` top to bottom: :func:`build` the run, resume it from the newest verified checkpoint
(:mod:`~diffstride.train.run_state`), then per epoch :func:`train_one_epoch`,
:func:`epoch_metrics` (with :func:`evaluate`), the log (:mod:`~diffstride.train.logs`) and a
checkpoint. The process group and device are a
:class:`~diffstride.train.distributed.DistributedContext`.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import os
import sys
import time
import uuid
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import gin
import torch
from torch import nn

from diffstride import metrics as shift_metrics
from diffstride import pooling
from diffstride._validation import check_int
from diffstride.complexity import count_flops, forward_trace
from diffstride.data.sources import DataError
from diffstride.resnet import l2_param_groups
from diffstride.train import configurables, optim
from diffstride.train.budget import budget_for
from diffstride.train.distributed import DistributedContext
from diffstride.train.logs import RunRecorder, pooling_report, progress_bar, track_output_sizes
from diffstride.train.run_state import (RunState, TrainingError, TrainingSetup, call_hooks, final_records,
                                        resolved_config, resume, rng_state, set_rng_state)
from diffstride.train.saving import CheckpointSchedule, CheckpointWriter
from diffstride.train.workdir import RunLock, prepare_workdir, remove_orphans

__all__ = ["train", "build", "train_one_epoch", "evaluate", "epoch_metrics"]


# ----------------------------------------------------------------------------------------------
# What the loop works with


def compiled(net: nn.Module, model: nn.Module) -> nn.Module:
    """``torch.compile(net)``; with sizes marked dynamic when learned strides may move them, and
    dynamo's recompile limit raised to 8 + 4 per pooling layer. The training loop calls
    :func:`diffstride.pooling.sync_plans` after every optimizer step: the step then runs as one
    graph, recompiled when a plan changes (the first compiled step plans outside the graph, which
    records each layer's input size)."""
    from torch import _dynamo  # over a second to import: only a compiled run pays it

    layers = pooling.pooling_layers(model)
    _dynamo.config.recompile_limit = max(_dynamo.config.recompile_limit, 8 + 4 * len(layers))
    moving = any(getattr(layer, "trainable", False) for _, layer in layers)
    return torch.compile(net, dynamic=True if moving else None)


def build(ctx: DistributedContext, load_data_fn, model_cls, optimizer_cls, loss_cls, complexity_fn, complexity_weight,
          channels_last, mixed_precision, seed, shift_consistency=None, accumulate_steps=1, compile=False,
          budget_macs=None) -> TrainingSetup:
    """Loads the data and builds the model, the optimizer, the loss and the precision policy."""
    data_args = dict(device=ctx.device, rank=ctx.rank, world_size=ctx.world_size)
    if "seed" in inspect.signature(load_data_fn).parameters:  # the order of file sources follows --seed
        data_args["seed"] = seed
    datasets = load_data_fn(**data_args)
    model = model_cls(num_output_classes=datasets.num_classes, in_channels=datasets.image_shape[0]).to(ctx.device)
    budget = budget_for(model, datasets.image_shape, budget_macs, complexity_weight)  # refused here, before training
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
        "accumulate_steps": accumulate_steps, "compile": bool(compile),
    }
    output_sizes, handles = track_output_sizes(model)
    return TrainingSetup(
        ctx=ctx, datasets=datasets, model=model, net=net, optimizer_spec=optimizer_spec,
        optimizer=optimizer_spec.build(l2_param_groups(model)), loss_fn=(loss_cls or configurables.categorical_crossentropy)(),
        scaler=torch.amp.GradScaler("cuda", enabled=mixed_precision and use_cuda and amp_dtype == torch.float16),
        amp_dtype=amp_dtype, mixed_precision=mixed_precision, memory_format=memory_format,
        complexity_fn=complexity_fn or configurables.complexity_loss,  # complexity_loss.weighting binds
        complexity_weight=complexity_weight, structure=forward_trace(model, datasets.image_shape),
        output_sizes=output_sizes, hooks=handles, info=info, shift_consistency=shift_consistency,
        accumulate_steps=accumulate_steps, train_net=compiled(net, model) if compile else net, budget=budget)


# ----------------------------------------------------------------------------------------------
# One epoch, evaluation


def train_one_epoch(run: TrainingSetup, state: RunState, num_epochs: int, save_mid_epoch: Optional[Callable[[], None]],
                    checkpointing: CheckpointSchedule, hooks: Sequence[Callable], show_progress: bool) -> Dict[str, float]:
    """Trains from ``state.batch`` to the end of epoch ``state.epoch + 1``; returns the epoch's sums."""
    ctx, train = run.ctx, run.datasets.train
    if state.batch == 0:
        state.epoch_rng = rng_state(ctx.device)
        order = train.order(state.epoch)
        state.partial = {"loss": 0.0, "correct": 0.0, "seen": 0.0, "seconds": 0.0}
    else:  # resumed mid-epoch: the same order, from the next batch, with the RNG as it was
        now = rng_state(ctx.device)
        set_rng_state(state.epoch_rng, ctx.device)
        order = train.order(state.epoch)
        set_rng_state(now, ctx.device)
        if len(state.partial_shares) == ctx.world_size:  # this process's own sums of the epoch so far
            state.partial = dict(state.partial_shares[ctx.rank])
    run.net.train()
    loss_sum = torch.tensor(state.partial["loss"], device=ctx.device, dtype=torch.float64)
    correct = torch.tensor(state.partial["correct"], device=ctx.device, dtype=torch.float64)
    seen, started, earlier = int(state.partial["seen"]), time.time(), state.partial["seconds"]
    bar = progress_bar(len(train), f"epoch {state.epoch + 1}/{num_epochs}", show_progress, initial=state.batch)
    diverged = ""

    def sums() -> Dict[str, float]:
        return {"loss": loss_sum.item(), "correct": correct.item(), "seen": float(seen),
                "seconds": earlier + time.time() - started}

    try:
        for images, labels in train.batches(order, start=state.batch):
            if _skipped_everywhere(run, images is None):
                state.batch += 1  # a batch of bad files only (skip_bad_files): read, not trained on
                continue
            if run.budget is not None and (run.budget.exact == 0 or state.step % run.budget.refresh_steps == 0):
                run.budget.fit(run)  # the exact count; over budget: projected back within it
            lr = run.optimizer_spec.learning_rate_at(state.step)
            for group in run.optimizer.param_groups:
                group["lr"] = lr
            images = images.contiguous(memory_format=run.memory_format)
            run.optimizer.zero_grad(set_to_none=True)
            loss, outputs = _accumulate(run, images, labels)
            run.scaler.step(run.optimizer)
            run.scaler.update()
            if run.train_net is not run.net:  # compiled: the plans of the next step (one device read)
                pooling.sync_plans(run.model)
            state.step += 1
            state.batch += 1
            loss_sum += loss.double() * labels.shape[0]
            correct += (outputs.argmax(-1) == labels.argmax(-1)).sum()
            seen += labels.shape[0]
            if bar is not None:
                bar.update(1)
                if state.step % 10 == 0:
                    bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.3f}")
            call_hooks(hooks, "step", state)
            if state.step % 20 == 0 and not torch.isfinite(loss):
                break
            if save_mid_epoch is not None and state.batch < len(train) and checkpointing.due(state.step):
                state.partial = sums()
                state.partial_shares = ctx.gather(state.partial)  # every process's sums (all take part)
                if not all(math.isfinite(share["loss"]) for share in state.partial_shares):
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


def _skipped_everywhere(run: TrainingSetup, empty: bool) -> bool:
    """Whether this step is skipped: this process's share of the batch is empty (all its files
    bad and skipped), or, under DDP, any process's is; every process then skips it, so that their
    steps (and gradient all-reduces) stay paired. One small all-reduce per step, only when the
    data can skip files."""
    if run.ctx.distributed and getattr(run.datasets.train, "may_skip", False):
        flag = torch.tensor([1.0 if empty else 0.0], device=run.ctx.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())
    return empty


def _accumulate(run: TrainingSetup, images: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward of one step's batch in ``run.accumulate_steps`` equal parts (the
    gradient of the whole batch's mean loss, up to rounding; batch-statistics layers such as
    BatchNorm see the smaller parts); gradients synchronise across processes on the last part
    only. The complexity term is added once. Returns the batch's mean loss and its outputs."""
    parts = min(run.accumulate_steps, images.shape[0])  # never an empty part (a batch smaller than the count)
    total_loss, outputs = 0.0, []
    for j, (x, y) in enumerate(zip(images.tensor_split(parts), labels.tensor_split(parts))):
        last = j == parts - 1
        sync = run.net.no_sync() if run.ctx.distributed and not last else contextlib.nullcontext()
        with sync:
            with torch.autocast(run.ctx.device.type, dtype=run.amp_dtype, enabled=run.mixed_precision):
                out = run.train_net(x)
                loss = run.loss_fn(out, y)
            part = loss * (y.shape[0] / labels.shape[0])
            if last and run.budget is not None:
                part = part + run.budget.penalty(run)
            elif last and run.complexity_weight:
                part = part + run.complexity_weight * run.complexity_fn(run.model, trace=run.structure)
            run.scaler.scale(part).backward()
        total_loss = total_loss + loss.detach() * (y.shape[0] / labels.shape[0])
        outputs.append(out.detach())
    return total_loss, torch.cat(outputs)


@torch.no_grad()
def evaluate(run: TrainingSetup, shift_consistency: Optional[Tuple[int, str]] = None) -> Dict[str, float]:
    """Test loss and accuracy over every rank's share of the test split, and with
    ``shift_consistency = (max_shift, mode)`` the shift consistency of the model on it
    (:mod:`diffstride.metrics`; the shifts come from a generator seeded afresh at every
    evaluation: the same shifts every epoch, and the training RNG untouched)."""
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


def epoch_metrics(run: TrainingSetup, state: RunState, sums: Dict[str, float]) -> Dict[str, Any]:
    """The metrics of the epoch just trained: sums across ranks, test results, strides, complexity."""
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
    if run.budget is not None:  # counted at the epoch's end by the budget's fit, at these strides
        metrics["flops"] = int(run.budget.exact)
        metrics["budget_macs"], metrics["floor_macs"] = run.budget.macs, run.budget.floor
    else:
        metrics["flops"] = count_flops(run.model, run.datasets.image_shape)
    train, test = run.datasets.train, run.datasets.test
    if hasattr(train, "skipped_files"):  # file sources: files left out by data.load_datasets.skip_bad_files
        mine = train.skipped_files() | test.skipped_files()
        # distinct files over every process (each scans the same folders; a bad file can land in
        # different processes' shares from one epoch to the next)
        metrics["skipped_files"] = len(set().union(*run.ctx.gather(sorted(mine))))
    return metrics


def _end_of_epoch(run: TrainingSetup, state: RunState, sums: Dict[str, float], workdir: Optional[str]) -> Dict[str, Any]:
    """Closes the epoch just trained: its metrics (evaluated), the run's time, and the checks
    that stop a run (a non-finite loss; strides that differ between processes)."""
    state.epoch, state.batch, state.partial, state.epoch_rng = state.epoch + 1, 0, {}, None
    state.partial_shares = []
    evaluated = time.time()
    if run.budget is not None and math.isfinite(sums["loss"]):
        run.budget.fit(run)  # every evaluated and saved network is within the budget
    metrics = epoch_metrics(run, state, sums)
    state.seconds += sums["seconds"] + time.time() - evaluated
    if not math.isfinite(metrics["train_loss"]):
        last = os.path.join(workdir, state.checkpoints[-1]) if workdir and state.checkpoints else "none"
        raise TrainingError(
            f"the training loss became non-finite ({metrics['train_loss']}) in epoch {state.epoch} "
            f"(by step {state.step}); stopped without saving. Last good checkpoint: {last}. "
            f"Lower the learning rate, or check the data." + (f" ({sums['diverged']})" if sums["diverged"] else ""))
    if run.ctx.distributed:
        replicas = run.ctx.gather({name: info["strides"] for name, info in metrics["pooling"].items()})
        if any(r != replicas[0] for r in replicas):
            raise TrainingError(f"the strides differ between processes after epoch {state.epoch}: {replicas}")
        metrics["replica_strides"] = replicas
    return metrics


def _check_arguments(num_epochs, keep_checkpoints, checkpoint_every_steps, checkpoint_every_minutes,
                     shift_consistency, shift_mode, on_config_change, accumulate_steps, compile) -> None:
    check_int(num_epochs, "train.train.num_epochs", minimum=0)
    check_int(accumulate_steps, "train.train.accumulate_steps", minimum=1)
    if not isinstance(compile, bool):
        raise TypeError(f"train.train.compile must be True or False, but got {compile!r}")
    check_int(keep_checkpoints, "train.train.keep_checkpoints (checkpoints kept; 1 or more, or nothing could resume)",
              minimum=1)
    check_int(checkpoint_every_steps, "train.train.checkpoint_every_steps", minimum=1, allow_none=True)
    if checkpoint_every_minutes is not None and not (isinstance(checkpoint_every_minutes, (int, float))
                                                     and not isinstance(checkpoint_every_minutes, bool)
                                                     and checkpoint_every_minutes > 0):
        raise ValueError(f"train.train.checkpoint_every_minutes must be a positive number or None, "
                         f"but got {checkpoint_every_minutes!r}")
    check_int(shift_consistency, "train.train.shift_consistency (the largest shift)", minimum=0, allow_none=True)
    if shift_mode not in shift_metrics.MODES:
        raise ValueError(f"train.train.shift_mode must be 'circular' or 'zeros', but got {shift_mode!r}")
    if on_config_change not in ("stop", "continue"):
        raise ValueError(f"train.train.on_config_change must be 'stop' or 'continue', but got {on_config_change!r}")


@gin.configurable(module="diffstride.train")  # the Gin name train.train
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
    budget_macs: Optional[int] = None,
    device: Optional[str] = None,
    channels_last: Optional[bool] = None,
    mixed_precision: Optional[bool] = None,
    seed: Optional[int] = None,
    shift_consistency: Optional[int] = None,
    shift_mode: str = "circular",
    accumulate_steps: int = 1,
    compile: bool = False,
    progress: Optional[bool] = None,
    log: Callable[[str], None] = print,
    hooks: Sequence[Callable[[str, RunState], None]] = (),
) -> Dict[str, Any]:
    """Trains ``model_cls`` on ``load_data_fn``'s data and returns the final metrics.

    Running it again with the same ``workdir`` resumes from the newest verified checkpoint,
    if the configuration is the same (see ``on_config_change``).

    Args:
        load_data_fn: returns :class:`~diffstride.data.Datasets` (``data.load_datasets``).
        model_cls: called as ``model_cls(num_output_classes=..., in_channels=...)``.
        optimizer_cls: returns an :class:`~diffstride.train.optim.SGD` (``@tf.keras.optimizers.SGD``).
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
        budget_macs: multiply-adds per example (the count metrics.json reports as ``flops``) the
            network must end within: the complexity term becomes a constraint (:class:`Budget`;
            ``complexity_weight`` then weighs it, 1 when 0). Refused before training, naming the
            floor and what lowers it, when below ``diffstride.complexity.floor``.
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
        accumulate_steps: gradient accumulation: each step's batch (``data.load_datasets.batch_size``)
            goes through the model in this many equal parts, one optimizer step per batch; the
            same gradient as the whole batch up to rounding (for models without batch
            statistics: BatchNorm normalises each part by its own statistics), in less memory.
        compile: train through ``torch.compile`` of the model (evaluation and checkpoints use
            the model itself).
        progress: a progress bar (None: when the output is a terminal).
        log: where the per-epoch lines go.
        hooks: ``hook(event, state)`` called at 'step', 'before_checkpoint', 'checkpoint_written'
            and 'epoch_end' (e.g. fault injection in the tests, custom logging).
    """
    _check_arguments(num_epochs, keep_checkpoints, checkpoint_every_steps, checkpoint_every_minutes,
                     shift_consistency, shift_mode, on_config_change, accumulate_steps, compile)
    check_int(budget_macs, "train.train.budget_macs (multiply-adds per example)", minimum=1, allow_none=True)
    ctx = DistributedContext(device)
    with contextlib.ExitStack() as stack:
        stack.callback(ctx.close)
        if seed is not None:
            torch.manual_seed(seed)
        say = log if ctx.is_main else (lambda *_: None)
        writes = workdir if workdir is not None and ctx.is_main else None  # the directory rank 0 writes to
        if writes is not None:  # before any data or model work: a bad directory or a second run stops at once
            prepare_workdir(workdir)
            stack.enter_context(RunLock(workdir))
            for path in remove_orphans(workdir):
                say(f"removed {path}, left by an interrupted run")
        run = build(ctx, load_data_fn, model_cls, optimizer_cls, loss_cls, complexity_fn, complexity_weight,
                    channels_last, mixed_precision, seed,
                    None if shift_consistency is None else (shift_consistency, shift_mode), accumulate_steps, compile,
                    budget_macs)
        stack.callback(run.close)
        config = resolved_config(seed)
        state, resumed_from, changes = (resume(workdir, run, config, num_epochs, on_config_change, restart, say)
                                        if workdir is not None else (None, None, {}))
        state = state or RunState(run_id=uuid.uuid4().hex, config=config)
        if resumed_from is not None and state.epoch == num_epochs and state.batch == 0:
            say(f"the run in {workdir} has finished its {num_epochs} epochs; nothing to train "
                f"(raise train.train.num_epochs to extend it)")  # a rerun as is changes nothing it recorded
            return final_records(workdir, run, state, num_epochs, writes is not None, resumed_from, say)
        start = {"run_id": state.run_id, "resumed_from": resumed_from, "epoch": state.epoch, "step": state.step,
                 "num_epochs": num_epochs, "config_changes": {k: list(v) for k, v in changes.items()}}
        records = stack.enter_context(RunRecorder(writes, say, start, state.step))
        saver = CheckpointWriter(writes, run, state, keep_checkpoints, checkpoint_every_steps, checkpoint_every_minutes, hooks,
                       checkpointing=workdir is not None)
        show_progress = (sys.stderr.isatty() if progress is None else progress) and ctx.is_main
        while state.epoch < num_epochs:
            try:
                sums = train_one_epoch(run, state, num_epochs, saver.mid_epoch, saver.schedule, hooks, show_progress)
            except DataError as err:  # a bad file of this process's share: it alone reports it
                err.met_by_this_process = True
                raise
            metrics = _end_of_epoch(run, state, sums, workdir)
            records.epoch(metrics, num_epochs, state.step)
            state.history.append(metrics)
            saver.end_of_epoch()
            records.records(state.history)
            call_hooks(hooks, "epoch_end", state)
            ctx.barrier()
        return final_records(workdir, run, state, num_epochs, writes is not None)
