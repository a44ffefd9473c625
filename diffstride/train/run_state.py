"""The state of a run and its checkpoints: what a resume continues, and what it refuses.

A run's state (:class:`RunState`: epochs and steps done, history, the configuration it started
with and every recorded change, the RNG of the current epoch) is saved in every checkpoint beside
the weights, the optimizer and the RNG. :func:`resume` finds the newest verified checkpoint,
compares the configurations *before* loading any weight, then loads; :func:`save` writes,
verifies and applies retention; :func:`final_records` writes (or, for a finished run started
again, keeps or rebuilds) ``metrics.json`` and ``history.json``.
"""
from __future__ import annotations

import ast
import dataclasses
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import gin
import torch
from gin import config as gin_config
from gin import config_parser
from torch import nn

from diffstride.train import checkpoint as ckpt
from diffstride.train import optim
from diffstride.train.atomic import read_json, write_json
from diffstride.train.distributed import DistributedContext

__all__ = ["TrainingError", "ConfigChanged", "NoUsableCheckpoint", "TrainingSetup", "RunState", "UNCHECKED_PARAMETERS",
           "resolved_config", "config_differences", "rng_state", "set_rng_state", "resume", "save", "call_hooks",
           "final_records"]


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, a checkpoint that does not fit the model, ...)."""


# ----------------------------------------------------------------------------------------------
# The run's state and configuration

# Parameters that do not change what a run computes: a resume may change them freely.
# (``num_epochs`` may grow; that is checked on its own.)
UNCHECKED_PARAMETERS = frozenset({
    "num_epochs", "workdir", "keep_checkpoints", "checkpoint_every_steps", "checkpoint_every_minutes",
    "on_config_change", "restart", "progress", "log", "hooks", "device", "data_dir", "download",
    "shift_consistency", "shift_mode", "num_workers", "prefetch_factor", "compile",
})


@dataclasses.dataclass
class TrainingSetup:
    """The built parts of a run (everything but its state)."""

    ctx: DistributedContext
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
    output_sizes: Dict[str, tuple]  # filled by forward hooks (removed by close())
    hooks: List[Any]
    info: Dict[str, Any]
    shift_consistency: Optional[Tuple[int, str]] = None  # (max_shift, mode) evaluated with the test split
    accumulate_steps: int = 1  # each step's batch in this many forward/backward parts
    train_net: Optional[nn.Module] = None  # what training calls: net, or torch.compile(net)
    budget: Optional[Any] = None  # train.Budget (train.train.budget_macs): the constraint the run meets

    def close(self) -> None:
        for handle in self.hooks:
            handle.remove()
        self.hooks = []


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
    # every process's ``partial`` (rank order) in a mid-epoch checkpoint of a torchrun run: each
    # resumes its own running sums (the epoch's metrics are their sum over the processes)
    partial_shares: List[Dict[str, float]] = dataclasses.field(default_factory=list)
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

def rng_state(device: torch.device) -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


# ----------------------------------------------------------------------------------------------
# Resume and save


def resume(workdir: str, run: TrainingSetup, config: Dict[str, str], num_epochs: int, on_config_change: str,
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
    set_rng_state(saved["rng"], ctx.device)
    say(f"resumed from {path} (epoch {state.epoch}" + (f", batch {state.batch}" if state.batch else "")
        + f", step {state.step})")
    return state, path, changes


def save(workdir: str, run: TrainingSetup, state: RunState, keep: int, mid_epoch: bool, hooks: Sequence[Callable]) -> str:
    """Writes a checkpoint, verifies it, then applies retention to this run's older ones.

    Retention: the ``keep`` newest end-of-epoch checkpoints of this run stay; its mid-epoch
    checkpoints older than the one just verified go. Files this run did not write are never deleted.
    """
    name = ckpt.checkpoint_name(state.epoch, state.step, mid_epoch)
    record = dataclasses.replace(state, checkpoints=[n for n in state.checkpoints if n != name] + [name])
    payload = {"format": ckpt.FORMAT, "epoch": state.epoch, "step": state.step, "model": run.model.state_dict(),
               "optimizer": run.optimizer.state_dict(), "rng": rng_state(run.ctx.device),
               "run": dataclasses.asdict(record)}
    if run.scaler.is_enabled():
        payload["scaler"] = run.scaler.state_dict()
    call_hooks(hooks, "before_checkpoint", state)
    path = ckpt.save_checkpoint(workdir, payload, mid_epoch=mid_epoch)
    call_hooks(hooks, "checkpoint_written", state)
    state.checkpoints = record.checkpoints
    epoch_ends = [n for n in state.checkpoints if "-step" not in n]
    stale = [n for n in state.checkpoints if n != name and ("-step" in n or n not in epoch_ends[-keep:])]
    ckpt.remove([os.path.join(workdir, n) for n in stale])
    state.checkpoints = [n for n in state.checkpoints if n not in stale]
    return path


def call_hooks(hooks: Sequence[Callable], event: str, state: RunState) -> None:
    for hook in hooks:
        hook(event, state)


def _final(workdir: Optional[str], run: TrainingSetup, state: RunState, num_epochs: int) -> Dict[str, Any]:
    """What ``metrics.json`` holds: the last epoch's metrics, the run's description, its time."""
    info = dict(run.info, seed=ast.literal_eval(state.config.get("--seed", "None")),  # as trained: the first start's
                config_changes=state.config_changes)
    return {"num_epochs": num_epochs, "seconds": state.seconds, "workdir": workdir, "run": info,
            **(state.history[-1] if state.history else {})}


def is_final_metrics(metrics: Any) -> bool:
    """Whether ``metrics`` (a parsed ``metrics.json``) is a finished run's record."""
    return isinstance(metrics, dict) and "test_accuracy" in metrics



def final_records(workdir: Optional[str], run: TrainingSetup, state: RunState, num_epochs: int, writes: bool,
                   checkpoint: Optional[str] = None, say: Callable[[str], None] = print) -> Dict[str, Any]:
    """Writes ``metrics.json`` at the end of training and returns it. For a finished run started
    again (``checkpoint`` given) the records are kept as they are, except those that are missing
    or do not parse, which are rebuilt from the checkpoint (with a line saying so)."""
    final = _final(workdir, run, state, num_epochs)
    if not writes:
        return final
    if checkpoint is None:
        write_json(os.path.join(workdir, "metrics.json"), final)
        return final
    recorded = {name: read_json(os.path.join(workdir, name)) for name in ("history.json", "metrics.json")}
    intact = {"history.json": isinstance(recorded["history.json"], list),
              "metrics.json": is_final_metrics(recorded["metrics.json"])}
    for name, content in (("history.json", state.history), ("metrics.json", final)):
        if not intact[name]:
            path = os.path.join(workdir, name)
            write_json(path, content)
            say(f"rebuilt {path} from {checkpoint} (it was missing or not a valid record)")
    return recorded["metrics.json"] if intact["metrics.json"] else final
