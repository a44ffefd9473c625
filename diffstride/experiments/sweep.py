r"""A grid of training runs: poolings x initial strides x seeds (x complexity weights), resumable.

    python3 -m diffstride.experiments.sweep --gin_config=translated_mnist.gin \
        --poolings DiffStride FixedSpectralPooling None --strides 1,2,2 4,2,2 --seeds 1 2 3 \
        --root /tmp/diffstride-runs/sweep --jobs 2

Each cell is one run of ``python3 -m diffstride.examples.main`` with the sweep's configs and
bindings plus the cell's pooling class, initial strides, seed and complexity weight, in its own
work directory under ``--root`` (its output in ``log.txt`` there). ``--jobs`` cells run at once,
the CPU threads split between them. Running the same command again skips finished cells (those
with a valid ``metrics.json``) and resumes unfinished ones from their newest checkpoint; a cell
whose records were damaged runs again, which rebuilds them from its newest checkpoint.

Safety: every cell's configuration is parsed before any starts (a bad binding stops the sweep
at once, exit 2, named once). One sweep at a time per root: a second one on the same ``--root``
exits 2 at once naming the first (``ROOT/.sweep.lock``; the lock dies with its holder, so a
killed sweep never blocks the next). A cell is checked again just before it starts. The cells
die with the sweep (Ctrl-C, ``kill``, even ``kill -9`` of the sweep alone on Linux), each ending
as an interrupted run does, its last lines in its ``log.txt``. At the end
the report (:mod:`diffstride.experiments.report`) of every finished run under the root (so a grid
extended by another invocation, e.g. with ``--complexity_weights 1.0``, is reported whole) is
written to ``ROOT/report``: the robustness table with intervals, the learned strides and feature
sizes, and accuracy against MACs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

import gin

from diffstride.experiments import report
from diffstride.train.atomic import read_json
from diffstride.train.main import UsageError, configure, resolve_config
from diffstride.train.run_state import is_final_metrics
from diffstride.train.workdir import RunLock, WorkdirError, held_by

__all__ = ["Cell", "grid", "main"]

POOLINGS = ("DiffStride", "FixedSpectralPooling", "SpatialPooling", "DiffStride1d", "FixedSpectralPooling1d",
            "SpatialPooling1d", "None")


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    pooling: str
    strides: str  # as given: '1,2,2'
    seed: int
    complexity_weight: float = 0.0
    budget: Optional[int] = None  # train.train.budget_macs (trainable poolings only)

    @property
    def name(self) -> str:
        pooling = "strided" if self.pooling == "None" else self.pooling
        name = f"{pooling}-strides{self.strides.replace(',', '_')}-seed{self.seed}"
        name += f"-cw{self.complexity_weight:g}" if self.complexity_weight else ""
        return name + (f"-budget{self.budget}" if self.budget is not None else "")

    def bindings(self, strides_binding: str) -> List[str]:
        pooling = "None" if self.pooling == "None" else f"@pooling.{self.pooling}"
        out = [f"resnet.Resnet.pooling_cls = {pooling}", f"{strides_binding} = [{self.strides}]"]
        if self.complexity_weight:
            out.append(f"train.train.complexity_weight = {self.complexity_weight!r}")
        if self.budget is not None:
            out.append(f"train.train.budget_macs = {self.budget}")
        return out


def grid(poolings: Sequence[str], strides: Sequence[str], seeds: Sequence[int],
         complexity_weights: Sequence[float] = (0.0,), budgets: Sequence[Optional[int]] = (None,)) -> List[Cell]:
    """Every combination, in the order given (pooling outermost, seed innermost). Budgets apply
    to the poolings with learnable strides (DiffStride*); the others run once per strides."""
    for p in poolings:
        if p not in POOLINGS:
            raise ValueError(f"unknown pooling {p!r}; expected one of {list(POOLINGS)} (None: strided convolutions)")
    for s in strides:
        try:
            values = [float(v) for v in s.split(",")]
        except ValueError:
            values = []
        if not values or any(v < 1 for v in values):
            raise ValueError(f"strides must be numbers >= 1 separated by commas, like 1,2,2, but got {s!r}")
    for b in budgets:
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1):
            raise ValueError(f"budgets must be whole numbers of multiply-adds >= 1, but got {b!r}")
    cells = []
    for p in poolings:
        for b in (budgets if p.startswith("DiffStride") else (None,)):
            cells += [Cell(p, s, seed, cw, b) for s in strides for cw in complexity_weights for seed in seeds]
    return cells


def _budget_arg(text: str) -> int:
    """``22.9M``, ``5.7e6`` or ``1650000`` as a whole number of multiply-adds."""
    scale = {"k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}.get(text[-1:], 1.0)
    try:
        value = float(text[:-1] if scale != 1.0 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"a budget is a number of multiply-adds like 22.9M or 5.7e6, not {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"a budget must be at least 1 multiply-add, but got {text!r}")
    return int(round(value))


def _is_done(workdir: str) -> bool:
    """A finished cell: its ``metrics.json`` parses and holds a final test accuracy (a damaged one
    is not finished: the cell runs again, which rebuilds the records from its newest checkpoint)."""
    return is_final_metrics(read_json(os.path.join(workdir, "metrics.json")))


def _command(args: argparse.Namespace, cell: Cell, workdir: str) -> List[str]:
    cmd = [sys.executable, "-m", "diffstride.train.main"]
    cmd += [f"--gin_config={c}" for c in args.gin_config]
    cmd += [f"--gin_bindings={b}" for b in list(args.gin_bindings) + cell.bindings(args.strides_binding)]
    return cmd + [f"--workdir={workdir}", f"--seed={cell.seed}"]


def _threads(args: argparse.Namespace) -> int:
    if args.threads:
        return args.threads
    return max(1, (os.cpu_count() or 1) // args.jobs)


def _summary(workdir: str) -> str:
    with open(os.path.join(workdir, "metrics.json")) as f:
        m = json.load(f)
    return f"test accuracy {100 * m['test_accuracy']:.2f}%, {m.get('flops', 0) / 1e6:.1f} M MACs, {m.get('seconds', 0):.0f} s"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child, between fork and exec
    """Linux: the child gets SIGTERM when the sweep dies, even by SIGKILL (``PR_SET_PDEATHSIG``),
    so no orphan keeps training and holding its cell's lock."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _wait_unlocked(workdir: str, seconds: float, log) -> Optional[str]:
    """Waits up to ``seconds`` for the cell's run lock to be free (a child of a sweep killed a
    moment ago is still writing its last lines); returns the holder if it is still held."""
    deadline, said = time.monotonic() + seconds, False
    while True:
        holder = held_by(workdir)
        if holder is None or time.monotonic() >= deadline:
            return holder
        if not said:
            log(f"waiting for {workdir} to be released ({holder})")
            said = True
        time.sleep(0.2)


def run_grid(args: argparse.Namespace, cells: Sequence[Cell], log=print) -> List[Cell]:
    """Runs the unfinished cells, ``args.jobs`` at a time; returns the cells that failed.

    Each cell is checked again just before it starts (finished since the list was made: skipped).
    """
    os.makedirs(args.root, exist_ok=True)
    todo = [c for c in cells if not _is_done(os.path.join(args.root, c.name))]
    done, failed = len(cells) - len(todo), []
    log(f"sweep: {len(cells)} cells, {done} already finished, {len(todo)} to run, {args.jobs} at a time, "
        f"{_threads(args)} thread(s) each; results under {args.root}")
    env = dict(os.environ, OMP_NUM_THREADS=str(_threads(args)), MKL_NUM_THREADS=str(_threads(args)),
               PYTHONUNBUFFERED="1")  # the log keeps a killed cell's last lines
    running: Dict[subprocess.Popen, tuple] = {}
    started = time.time()
    try:
        while todo or running:
            while todo and len(running) < args.jobs:
                cell = todo.pop(0)
                workdir = os.path.join(args.root, cell.name)
                if _is_done(workdir):
                    done += 1
                    log(f"[{done}/{len(cells)} done] {cell.name} finished meanwhile; skipped")
                    continue
                os.makedirs(workdir, exist_ok=True)
                holder = _wait_unlocked(workdir, 30.0, log)
                if holder is not None:
                    failed.append(cell)
                    log(f"[{done}/{len(cells)} done] {cell.name} not started: its work directory is in use ({holder})")
                    continue
                out = open(os.path.join(workdir, "log.txt"), "a")
                resumed = " (resuming)" if any(f.startswith("ckpt-") for f in os.listdir(workdir)) else ""
                proc = subprocess.Popen(_command(args, cell, workdir), stdout=out, stderr=subprocess.STDOUT, env=env,
                                        stdin=subprocess.DEVNULL,
                                        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
                running[proc] = (cell, workdir, out, time.time())
                log(f"[{done}/{len(cells)} done, {len(running)} running] start {cell.name}{resumed}")
            time.sleep(0.5)
            for proc in [p for p in running if p.poll() is not None]:
                cell, workdir, out, t0 = running.pop(proc)
                out.close()
                if proc.returncode == 0 and _is_done(workdir):
                    done += 1
                    log(f"[{done}/{len(cells)} done, {len(running)} running] {cell.name}: {_summary(workdir)}; "
                        f"{(time.time() - started) / 60:.1f} min since the sweep started")
                else:
                    failed.append(cell)
                    log(f"[{done}/{len(cells)} done] {cell.name} FAILED (exit {proc.returncode}); "
                        f"see {os.path.join(workdir, 'log.txt')}")
    except KeyboardInterrupt:
        # Ctrl-C reached the children too (one process group); a SIGTERM to the sweep alone did
        # not: stop what still runs. A child stops between checkpoints, printing its last line.
        for proc in running:
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.terminate()
        for proc, (_, _, out, _) in running.items():
            proc.wait()
            out.close()
        raise
    return failed


def check_cells(args: argparse.Namespace, cells: Sequence[Cell]) -> List[str]:
    """Parses every cell's configuration as its run will; returns the distinct errors (each once,
    with how many cells it concerns), empty when every cell parses."""
    errors: Dict[str, List[str]] = {}
    for cell in cells:
        ns = argparse.Namespace(gin_config=args.gin_config,
                                gin_bindings=list(args.gin_bindings) + cell.bindings(args.strides_binding))
        try:
            configure(ns)
        except UsageError as err:
            errors.setdefault(str(err), []).append(cell.name)
    gin.clear_config()
    return [f"{message} ({'every cell' if len(names) == len(cells) else ', '.join(names)})"
            for message, names in errors.items()]


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python3 -m diffstride.experiments.sweep",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--gin_config", action="append", default=[], help="as main: a packaged name or a path; repeatable")
    parser.add_argument("--gin_bindings", action="append", default=[], help="as main; applied to every cell; repeatable")
    parser.add_argument("--poolings", nargs="+", default=["DiffStride", "FixedSpectralPooling", "None"],
                        help=f"pooling classes among {list(POOLINGS)}; None is strided convolutions")
    parser.add_argument("--strides", nargs="+", required=True,
                        help="initial strides per cell, e.g. 1,2,2 4,2,2; the first is the reference for the drops")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--complexity_weights", nargs="+", type=float, default=[0.0],
                        help="train.train.complexity_weight values (default 0 only)")
    parser.add_argument("--budgets", nargs="+", type=_budget_arg, default=[None],
                        help="train.train.budget_macs values for the DiffStride cells (multiply-adds per example; "
                             "e.g. 22.9M 5.7e6 1650000): each DiffStride cell once per budget")
    parser.add_argument("--strides_binding", default="resnet.Resnet.strides",
                        help="the Gin parameter the strides go to (resnet.resnet18.strides for cifar10.gin)")
    parser.add_argument("--root", required=True, help="one work directory per cell under it, and the report")
    parser.add_argument("--jobs", type=int, default=1, help="cells at once (default 1)")
    parser.add_argument("--threads", type=int, default=0, help="threads per cell (default: cores / jobs)")
    args = parser.parse_args(argv)
    if not args.gin_config:
        parser.error("give at least one --gin_config")
    if args.jobs < 1 or args.threads < 0:
        parser.error(f"--jobs must be >= 1 and --threads >= 0, but got {args.jobs} and {args.threads}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        cells = grid(args.poolings, args.strides, args.seeds, args.complexity_weights, args.budgets)
        for name in args.gin_config:
            resolve_config(name)
    except (ValueError, UsageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    problems = check_cells(args, cells)  # before any cell runs: a misspelt binding fails once, not per cell
    if problems:
        print("error: the sweep's configuration does not parse; no cell was started:\n  " + "\n  ".join(problems),
              file=sys.stderr)
        return 2
    started = time.time()
    # `kill` as Ctrl-C (a background job may ignore SIGINT); the caller's handlers come back at the end
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, _interrupt)
    if before[signal.SIGINT] is signal.SIG_IGN:
        signal.signal(signal.SIGINT, _interrupt)
    try:
        return _run_and_report(args, cells, started)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _run_and_report(args: argparse.Namespace, cells, started: float) -> int:
    try:
        os.makedirs(args.root, exist_ok=True)
        # one sweep per root: a second one stops at once, naming the first (the lock dies with its holder)
        with RunLock(args.root, filename=".sweep.lock", holder="another sweep",
                     advice="wait for it to end (it runs the same grid), or choose another --root"):
            failed = run_grid(args, cells)
    except WorkdirError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: cannot use the sweep root {args.root!r}: {err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume the unfinished cells", file=sys.stderr)
        return 130
    # every finished run under the root: a grid extended by later invocations is reported whole
    finished = sorted(os.path.join(args.root, d) for d in os.listdir(args.root) if _is_done(os.path.join(args.root, d)))
    if finished:
        reference = ", ".join(v.strip() for v in args.strides[0].split(","))
        paths = report.write_report(finished, os.path.join(args.root, "report"), reference_strides=reference,
                                    log=lambda line: print(line, file=sys.stderr))
        print(f"sweep: {len(finished)}/{len(cells)} cells finished ({(time.time() - started) / 60:.1f} min this "
              f"invocation); report: " + ", ".join(paths))
    if failed:
        print("error: these cells failed (see their log.txt; rerun the same command to retry them): "
              + ", ".join(c.name for c in failed), file=sys.stderr)
        return 1
    return 0


def cli() -> None:
    """The ``diffstride-sweep`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
