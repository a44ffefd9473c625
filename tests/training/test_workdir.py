"""The work directory never loses a run: one run at a time, errors before any work, bad values
named, orphans cleaned. Every case checks what is on disk afterwards, not only the exit code."""
import json
import os
import time

import pytest

from diffstride.train import main as main_lib
from diffstride.train import workdir as wd

from . import launch
from .conftest import _args, _metrics, _run


def _listing(path):
    return sorted(os.listdir(path)) if os.path.isdir(path) else None


def test_a_second_run_on_a_held_workdir_stops_at_once_naming_the_holder(tmp_path):
    workdir = str(tmp_path / "run")
    wd.prepare_workdir(workdir)
    with wd.RunLock(workdir):
        started = time.time()
        result = _run(_args(workdir, epochs=1))
        assert time.time() - started < 60
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert f"is in use by another run (PID {os.getpid()} on " in result.stderr and "choose another --workdir" in result.stderr
        assert _listing(workdir) == [".lock"]  # nothing written by the refused run
    # released: the same command now trains
    result = _run(_args(workdir, epochs=1))
    assert result.returncode == 0, result.stderr[-2000:]
    assert _metrics(workdir)["epoch"] == 1


def test_a_stale_lock_file_of_a_dead_process_does_not_block(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / ".lock").write_text(json.dumps({"pid": 999999, "host": "elsewhere", "started": "yesterday"}))
    lock = wd.RunLock(str(workdir))
    with lock:
        info = json.loads((workdir / ".lock").read_text())
        assert info["pid"] == os.getpid()


def _holder_killed_leaving_a_child(workdir, forked):
    """A process takes the run lock, starts a child, then dies of SIGKILL. ``forked``: the child
    is forked (as DataLoader forks its workers) and so lets go of the lock at once
    (``os.register_at_fork`` in diffstride.train.workdir); otherwise it is started with the lock's
    descriptor passed on (``subprocess`` with ``pass_fds``: no fork hook runs) and keeps the lock.
    Returns the write end of a pipe whose closing lets the child exit."""
    import signal
    import subprocess
    import sys

    ready_r, ready_w = os.pipe()
    hold_r, hold_w = os.pipe()
    holder = os.fork()
    if holder == 0:  # the run
        try:
            os.close(ready_r)
            os.close(hold_w)
            with wd.RunLock(workdir) as lock:
                if not forked:
                    code = "import os, sys; os.write(int(sys.argv[1]), b'x'); os.read(int(sys.argv[2]), 1)"
                    subprocess.Popen([sys.executable, "-c", code, str(ready_w), str(hold_r)],
                                     pass_fds=(lock._file.fileno(), ready_w, hold_r))
                elif os.fork() == 0:  # its worker
                    os.write(ready_w, b"x")
                    os.read(hold_r, 1)  # until the test closes the pipe
                    os._exit(0)
                os.kill(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(1)
    os.close(hold_r)
    os.read(ready_r, 1)  # the child exists (and has let go, if it does)
    os.close(ready_r)
    os.close(ready_w)
    _, status = os.waitpid(holder, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    return hold_w


def test_a_killed_runs_workers_do_not_keep_its_workdir_locked(tmp_path, monkeypatch):
    """DataLoader workers are forked, and would share their run's flock: every forked child lets go
    of it at once, so the same command can start again at once after a SIGKILL; a child that keeps
    it (started with the descriptor passed on) is waited for a little, then named in the error."""
    workdir = str(tmp_path / "run")
    wd.prepare_workdir(workdir)
    release = _holder_killed_leaving_a_child(workdir, forked=True)
    monkeypatch.setattr(wd, "ORPHAN_WAIT_SECONDS", 0.0)
    with wd.RunLock(workdir):  # the worker is alive, the lock free
        pass
    os.close(release)

    release = _holder_killed_leaving_a_child(workdir, forked=False)
    with pytest.raises(wd.WorkdirBusy, match="which has ended, but processes it started still hold the lock"):
        wd.RunLock(workdir).__enter__()
    # waited for: the lock is taken once the leftover process exits
    real_sleep, closed = time.sleep, []

    def sleep(seconds):  # the lock's first wait lets the leftover process exit
        if not closed:
            os.close(release)
        closed.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(wd, "ORPHAN_WAIT_SECONDS", 30.0)
    monkeypatch.setattr(wd.time, "sleep", sleep)
    with wd.RunLock(workdir):
        assert closed  # it did wait
    assert json.loads(open(os.path.join(workdir, ".lock")).read())["pid"] == os.getpid()


def test_two_runs_started_together_one_wins_and_the_other_says_why(tmp_path):
    workdir = str(tmp_path / "run")
    procs = [launch.Started(_args(workdir, epochs=1) + [f"--seed={seed}"]) for seed in (7, 8)]
    results = [(r.stdout, r.stderr, r.returncode) for r in (p.result() for p in procs)]
    codes = sorted(r[2] for r in results)
    assert codes == [0, 2], results
    loser = next(r for r in results if r[2] == 2)
    assert "is in use by another run" in loser[1]
    winner_seed = 7 if results[0][2] == 0 else 8
    assert _metrics(workdir)["run"]["seed"] == winner_seed  # the results on disk are the winner's


@pytest.mark.parametrize("make, match", [
    (lambda tmp: (tmp / "file").write_text("x") and str(tmp / "file" / "run"), "a part of the path is a regular file"),
    (lambda tmp: (tmp / "taken").write_text("x") and str(tmp / "taken"), "a regular file of that name is in the way"),
    (lambda tmp: "", "the work directory must be a non-empty path"),
])
def test_unusable_workdirs_are_one_line_errors_before_any_work(tmp_path, make, match):
    workdir = make(tmp_path)
    before = _listing(tmp_path)
    result = _run(_args(workdir, epochs=1))
    assert result.returncode == 2 and match in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert _listing(tmp_path) == before


@pytest.mark.parametrize("binding, match", [
    ("data.load_datasets.batch_size = '64'", r"data.load_datasets.batch_size must be an integer, but got '64' \(str\)"),
    ("data.load_datasets.batch_size = 32.5", r"data.load_datasets.batch_size must be an integer, but got 32.5 \(float\)"),
    ("train.train.num_epochs = '3'", r"train.train.num_epochs must be an integer, but got '3' \(str\)"),
    ("train.train.keep_checkpoints = 0", r"train.train.keep_checkpoints .* must be >= 1, but got 0"),
    ("data.load_datasets.test_examples = 0", r"data.load_datasets.test_examples must be >= 1, but got 0"),
])
def test_values_of_the_wrong_type_or_range_are_named(tmp_path, capsys, binding, match):
    import re

    workdir = str(tmp_path / "run")
    assert main_lib.main(_args(workdir, epochs=1, extra=[binding])) == 2
    err = capsys.readouterr().err
    assert re.search(match, err), err
    assert not os.path.exists(os.path.join(workdir, "metrics.json"))
    assert not any(f.startswith("ckpt-") for f in (_listing(workdir) or []))


def test_resuming_with_fewer_epochs_than_done_is_refused_and_changes_nothing(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    assert main_lib.main(_args(workdir, epochs=2)) == 0
    before = {f: os.path.getmtime(os.path.join(workdir, f)) for f in os.listdir(workdir) if not f.startswith(".")}
    capsys.readouterr()
    assert main_lib.main(_args(workdir, epochs=1)) == 2
    err = capsys.readouterr().err
    assert "has done 2 epochs, more than train.train.num_epochs = 1; raise num_epochs to extend it" in err
    after = {f: os.path.getmtime(os.path.join(workdir, f)) for f in os.listdir(workdir) if not f.startswith(".")}
    assert after == before and _metrics(workdir)["num_epochs"] == 2


def test_orphaned_temporary_files_are_removed_at_start(tmp_path, capsys):
    workdir = tmp_path / "run"
    workdir.mkdir()
    orphans = ["ckpt-0001.pt.tmp-999991", "history.json.tmp-999992", ".probe-999993"]  # PIDs of no process
    for name in orphans:
        (workdir / name).write_bytes(b"half a file")
    live = f"metrics.json.tmp-{os.getppid()}"  # a live process's file is not an orphan
    (workdir / live).write_bytes(b"being written")
    assert main_lib.main(_args(str(workdir), epochs=1)) == 0
    assert not any(name in os.listdir(workdir) for name in orphans) and live in os.listdir(workdir)
    assert "left by an interrupted run" in capsys.readouterr().out
