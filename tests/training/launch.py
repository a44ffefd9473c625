"""The training command in a process of its own, started in milliseconds instead of seconds.

A new Python process spends about 3 s importing torch, Gin and the training system before it
trains a tiny job for 2; the tests that kill, limit or race real processes start about fifty of
them. Here each run is a fresh process **forked from a server** (multiprocessing's
``forkserver``) that imported those modules once and has done nothing else: no thread pool
started, no configuration parsed, no tensor computed. The child then does what
``python -m diffstride.examples.main ARGS`` does after its imports (the SIGTERM handler of
``cli()``, ``main(ARGS)``, the exit status), with its own environment, working directory, stdout
and stderr (file descriptors 1 and 2, so C-level output is captured too), and dies of a real
SIGKILL when told to. The console entry points themselves are run as real commands by
tests/test_packaging.py and test_train.py's main-job test.
"""
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
from typing import Optional, Sequence, Tuple

# what the server imports once (what a training run imports besides the optional extras)
_PRELOAD = ["torch", "gin", "numpy", "diffstride.train.main", "diffstride.train.configurables",
            "diffstride.train", "diffstride.data", "diffstride.train.logs",
            "torch.utils.tensorboard", "tests.training.launch"]
_context = None


def _server():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(_PRELOAD)
    return _context


def _limit_file_size(limit: int) -> None:
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def _child(args: Sequence[str], env: dict, cwd: Optional[str], out: str, err: str,
           kill_at: Optional[Tuple[str, int]], file_size_limit: Optional[int]) -> None:
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    os.environ.clear()
    os.environ.update(env)
    if cwd is not None:
        os.chdir(cwd)
    # a forkserver child inherits 'forkserver' as its default start method; a new interpreter has
    # the platform's default (DataLoader workers started from the server were twice as slow)
    multiprocessing.set_start_method(None, force=True)
    import torch

    torch.set_num_threads(int(env.get("OMP_NUM_THREADS", "1")))
    if file_size_limit is not None:
        _limit_file_size(file_size_limit)
    from diffstride.train import main

    hooks = []
    if kill_at is not None:
        event, step = kill_at

        def hook(name, state):
            if name == event and state.step == step:
                os.kill(os.getpid(), signal.SIGKILL)

        hooks.append(hook)
    signal.signal(signal.SIGTERM, main._interrupt)  # as cli() does
    sys.argv = ["diffstride.train.main", *args]
    code = main.main(list(args), hooks=hooks)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


class Started:
    """A started run: ``wait``, ``kill``, ``pid``, and ``result()`` as ``subprocess.run`` gives it."""

    def __init__(self, args, env=None, cwd=None, kill_at=None, file_size_limit=None):
        self.args = list(args)
        self._dir = tempfile.mkdtemp(prefix="diffstride-run-")
        self._out, self._err = os.path.join(self._dir, "stdout"), os.path.join(self._dir, "stderr")
        full_env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
        self.process = _server().Process(target=_child, args=(self.args, full_env, None if cwd is None else str(cwd),
                                                              self._out, self._err, kill_at, file_size_limit))
        self.process.start()
        self.pid = self.process.pid

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        """The exit status (negative: the signal that killed it), or None if still running at ``timeout``."""
        self.process.join(timeout)
        return self.process.exitcode

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.process.exitcode is None:
            os.kill(self.pid, sig)

    def result(self, timeout: float = 300) -> subprocess.CompletedProcess:
        if self.wait(timeout) is None:
            self.kill()
            self.wait()
            raise subprocess.TimeoutExpired(self.args, timeout)
        with open(self._out) as out, open(self._err) as err:
            stdout, stderr = out.read(), err.read()
        for path in (self._out, self._err):
            os.remove(path)
        os.rmdir(self._dir)
        return subprocess.CompletedProcess(self.args, self.process.exitcode, stdout, stderr)


def run(args, env=None, cwd=None, kill_at=None, file_size_limit=None, timeout=300) -> subprocess.CompletedProcess:
    """``python -m diffstride.examples.main ARGS`` in a new process; ``kill_at=(event, step)``
    SIGKILLs it at that hook of the training loop; ``file_size_limit`` is ``ulimit -f`` in bytes."""
    return Started(args, env, cwd, kill_at, file_size_limit).result(timeout)
