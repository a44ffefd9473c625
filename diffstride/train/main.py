r"""Trains a model from Gin configs, as the reference's ``main.py``.

    python3 -m diffstride.examples.main --gin_config=cifar10.gin \
      --gin_bindings="train.workdir = '/tmp/exp/diffstride/resnet18/'"

A bare config name (``cifar10``, ``cifar10.gin``) resolves from the packaged configs folder,
whatever the working directory; a path is used as given. Running the same command again with
the same work directory resumes from its newest checkpoint.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Callable, List, Optional, Sequence

import gin
import torch.distributed

import diffstride.data  # noqa: F401  (the Gin names a config may use: data.*, train.*, resnet.*, ...)
import diffstride.resnet  # noqa: F401
from diffstride.data.builtin import DatasetUnavailable
from diffstride.examples import CONFIGS_DIR
from diffstride.train import configurables  # noqa: F401
from diffstride.train import loop
from diffstride.train.workdir import WorkdirError


class UsageError(Exception):
    """A mistake in the command line or the configuration (reported without a traceback)."""


def packaged_configs() -> List[str]:
    return sorted(f for f in os.listdir(CONFIGS_DIR) if f.endswith(".gin"))


def resolve_config(name: str) -> str:
    """A path as given if it exists, else a packaged config (``.gin`` optional)."""
    if os.path.exists(name):
        return name
    if os.sep not in name and "/" not in name:
        for candidate in (name, f"{name}.gin"):
            path = os.path.join(CONFIGS_DIR, candidate)
            if os.path.exists(path):
                return path
    raise UsageError(f"gin config {name!r} not found: not a file, nor one of the packaged configs "
                     f"{packaged_configs()} (in {CONFIGS_DIR})")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python3 -m diffstride.examples.main", description="Train a DiffStride model from Gin configs.")
    parser.add_argument("--gin_config", action="append", default=[],
                        help=f"config file: a packaged name ({', '.join(c[:-4] for c in packaged_configs())}) or a path; repeatable")
    parser.add_argument("--gin_bindings", action="append", default=[],
                        help="Gin binding such as \"train.train.num_epochs = 10\"; repeatable")
    parser.add_argument("--workdir", default=None, help="logs, checkpoints and metrics (overrides train.workdir)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--restart", action="store_true",
                        help="when the work directory has checkpoints and none verifies: set them aside "
                             "(*.unusable) and start afresh (without it the run stops and lists them)")
    return parser.parse_args(argv)


def configure(args: argparse.Namespace) -> None:
    """Parses the configs and bindings; any mistake becomes a UsageError."""
    if not args.gin_config and not args.gin_bindings:
        raise UsageError(f"give at least one --gin_config (packaged: {packaged_configs()})")
    files = [resolve_config(name) for name in args.gin_config]
    gin.clear_config()
    try:
        gin.parse_config_files_and_bindings(files, args.gin_bindings, finalize_config=False)
    except (ValueError, KeyError, SyntaxError, ImportError, TypeError) as err:
        raise UsageError(f"bad gin configuration: {err}") from None


def _without_gin_context(err: BaseException) -> str:
    """The message without the lines Gin appends ("In call to configurable 'train' ...")."""
    return str(err).split("\n  In call to configurable")[0]


def main(argv: Optional[Sequence[str]] = None, hooks: Sequence[Callable] = ()) -> int:
    """Runs the command line ``argv``; ``hooks`` go to :func:`~diffstride.train.train`
    (``hook(event, state)``; the tests inject faults through them). Returns the exit status."""
    try:
        return _main(argv, hooks)
    except KeyboardInterrupt:  # Ctrl-C at any moment: no traceback
        if _rank() == 0:  # (under torchrun every process is interrupted: one line for the run)
            print("interrupted; the newest checkpoint in the work directory (if any) resumes the run",
                  file=sys.stderr)
        return 130


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


# what the collectives raise when another process of the run has gone (gloo, NCCL, the store)
_PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "/gloo/transport/",
              "NCCL communicator", "ProcessGroupNCCL", "Socket Timeout", "failed to recv", "ProcessGroupGloo",
              "c10d")


def _lost_a_peer(err: RuntimeError) -> bool:
    return isinstance(err, torch.distributed.DistError) or any(marker in str(err) for marker in _PEER_LOST)


def _report(err: BaseException) -> None:
    """Prints the run's error once: by every process of a single-process run; under torchrun by
    rank 0 (an error found before training is the same in every process), or by the process that
    met it during training (a bad file in its share: ``met_by_this_process``)."""
    if _rank() == 0 or getattr(err, "met_by_this_process", False):
        print(f"error: {_without_gin_context(err)}", file=sys.stderr)


def _main(argv: Optional[Sequence[str]], hooks: Sequence[Callable]) -> int:
    args = parse_args(argv)
    try:
        configure(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    overrides = {"seed": args.seed, "hooks": tuple(hooks)}
    if args.restart:
        overrides["restart"] = True
    if args.workdir is not None:
        overrides["workdir"] = args.workdir
    try:
        metrics = loop.train(**overrides)
    except (ValueError, TypeError, DatasetUnavailable, WorkdirError) as err:
        _report(err)
        return 2
    except loop.TrainingError as err:
        _report(err)
        return 1
    except RuntimeError as err:
        if int(os.environ.get("WORLD_SIZE", "1")) == 1 or not _lost_a_peer(err):
            raise
        # another process of the run stopped (it printed its error) and the collectives broke:
        # this process ends quietly, with the run's status
        return 2
    workdir = metrics.get("workdir")
    if int(os.environ.get("RANK", "0")) == 0:
        if "test_accuracy" in metrics:
            print(f"final test accuracy {metrics['test_accuracy']:.4f} (test loss {metrics['test_loss']:.4f}) "
                  f"after {metrics['num_epochs']} epochs")
        if workdir:
            print(f"logs, checkpoints and metrics.json in {workdir} (tensorboard --logdir {workdir})")
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def cli() -> None:
    """The command line (``python3 -m diffstride.examples.main``, ``diffstride-train``): a SIGTERM
    (``kill``, a sweep that stops, a scheduler's preemption) ends the run as Ctrl-C does, with its
    last line printed; the newest checkpoint resumes it."""
    signal.signal(signal.SIGTERM, _interrupt)
    code = main()
    # from here on a SIGTERM or SIGINT (torchrun ending the other processes of a run that failed)
    # ends the process as the default action does, not as a KeyboardInterrupt inside the
    # interpreter's exit callbacks (a traceback per process)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.exit(code)


if __name__ == "__main__":
    cli()
