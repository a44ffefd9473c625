"""A resume continues the run that was started, from a checkpoint that verifies, or stops and says why.

Each case runs the real command (in this process or a fresh one) on the tiny MNIST job of
test_train and checks what is on disk afterwards, not only the exit status."""
import hashlib
import io
import json
import os
import random

import pytest
import torch

from diffstride.train import checkpoint as ckpt
from diffstride.train import main as main_lib

from . import launch
from .conftest import _args, _metrics, _run, _run_killed_at, _trained_then_newest_truncated

# the pad-crop-flip augmentation draws random numbers in every batch: a resume must continue them
AUGMENTED = ["data.load_datasets.augment_fn = @data.augment"]
COMPARED = ("test_accuracy", "test_loss", "train_loss", "train_accuracy", "step", "pooling", "complexity")


def _files(workdir):
    """Name -> SHA-256 of every file but the lock and the TensorBoard events."""
    out = {}
    for name in sorted(os.listdir(workdir)):
        if name == ".lock" or name.startswith("events."):
            continue
        with open(os.path.join(workdir, name), "rb") as f:
            out[name] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    """The 3-epoch job uninterrupted: what every interrupted run must end with."""
    workdir = str(tmp_path_factory.mktemp("clean") / "run")
    result = _run(_args(workdir, epochs=3, extra=AUGMENTED))
    assert result.returncode == 0, result.stderr[-2000:]
    return _metrics(workdir)


# ----------------------------------------------------------------------------------------------
# Configuration


@pytest.mark.slow
def test_a_resume_with_changed_bindings_stops_listing_them_and_changes_nothing(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    assert main_lib.main(_args(workdir, epochs=1)) == 0
    before = _files(workdir)
    changed = ["tf.keras.optimizers.schedules.PiecewiseConstantDecay.values = [0.03, 0.05]"]
    capsys.readouterr()
    assert main_lib.main(_args(workdir, epochs=2, extra=changed) + ["--seed=8"]) == 2
    err = capsys.readouterr().err
    assert "was trained with another configuration" in err and "Traceback" not in err
    assert "PiecewiseConstantDecay.values: [0.02, 0.05] -> [0.03, 0.05]" in err
    assert "--seed: 1 -> 8" in err and "train.train.on_config_change = 'continue'" in err
    assert "num_epochs" not in err  # growing a run is not a change
    assert _files(workdir) == before  # nothing written, nothing removed

    # the opt-in continues and records the change; the first config.gin stays
    assert main_lib.main(_args(workdir, epochs=2, extra=changed + [
        "train.train.on_config_change = 'continue'", "train.train.keep_checkpoints = 5"]) + ["--seed=8"]) == 0
    metrics = _metrics(workdir)
    assert metrics["epoch"] == 2 and metrics["run"]["seed"] == 1
    (change,) = metrics["run"]["config_changes"]
    assert change["step"] == 8 and change["changes"]["--seed"] == ["1", "8"]
    assert change["changes"]["PiecewiseConstantDecay.values"] == ["[0.02, 0.05]", "[0.03, 0.05]"]
    assert _files(workdir)["config.gin"] == before["config.gin"]
    starts = [json.loads(line) for line in open(os.path.join(workdir, "starts.jsonl"))]
    assert len(starts) == 2 and starts[0]["resumed_from"] is None and starts[0]["config_changes"] == {}
    assert starts[1]["resumed_from"].endswith("ckpt-0001.pt") and "--seed" in starts[1]["config_changes"]
    # the changed values are now the run's: the same command extends it without a complaint
    capsys.readouterr()
    assert main_lib.main(_args(workdir, epochs=3, extra=changed) + ["--seed=8"]) == 0
    assert "continuing with a changed configuration" not in capsys.readouterr().out
    assert len(_metrics(workdir)["run"]["config_changes"]) == 1


def test_differences_ignore_what_does_not_change_the_result():
    from diffstride.train import config_differences

    old = {"--seed": "1", "train.num_epochs": "3", "train.workdir": "'/a'", "load_datasets.data_dir": "'/x'",
           "train.checkpoint_every_steps": "None", "Resnet.filters": "[4, 8]"}
    new = {"--seed": "1", "train.num_epochs": "9", "train.workdir": "'/b'", "load_datasets.data_dir": "'/y'",
           "train.device": "'cpu'", "Resnet.filters": "[4, 8]", "DiffStride.smoothness_factor": "2.0"}
    assert config_differences(old, new) == {"DiffStride.smoothness_factor": (None, "2.0")}


# ----------------------------------------------------------------------------------------------
# Integrity


def _flip_payload_value(path):
    """Rewrites ``path`` with one weight of its payload set to 1e29, keeping the stored checksum:
    a copy damaged on the way, whose checksum is intact."""
    outer = torch.load(path, weights_only=True)
    state = torch.load(io.BytesIO(outer["payload"]), weights_only=True)
    key = next(k for k, v in state["model"].items() if v.is_floating_point() and v.numel() > 1)
    state["model"][key].view(-1)[0] = 1e29
    buffer = io.BytesIO()
    torch.save(state, buffer)
    outer["payload"] = buffer.getvalue()
    torch.save(outer, path)


def test_a_checkpoint_carries_its_checksum_so_damage_is_refused_without_any_sidecar(tmp_path):
    state = {"format": 2, "epoch": 1, "step": 5, "model": {"w": torch.randn(64, 64)}, "optimizer": {},
             "rng": {"torch": torch.get_rng_state()}}
    path = ckpt.save_checkpoint(str(tmp_path), state)
    assert os.listdir(tmp_path) == ["ckpt-0001.pt"]  # nothing beside it to lose
    assert torch.equal(ckpt.load_checkpoint(path)["model"]["w"], state["model"]["w"])
    open(path + ".sha256", "w").write("0" * 64 + "\n")  # a damaged sidecar (from older tools) is not trusted
    assert torch.equal(ckpt.load_checkpoint(path)["model"]["w"], state["model"]["w"])
    os.remove(path + ".sha256")
    intact = open(path, "rb").read()
    # a byte flipped anywhere: refused, or (in bytes nothing reads) the very same state
    for position in random.Random(0).sample(range(len(intact)), 40):
        damaged = bytearray(intact)
        damaged[position] ^= 0xFF
        open(path, "wb").write(bytes(damaged))
        try:
            loaded = ckpt.load_checkpoint(path)
        except Exception:
            continue
        assert torch.equal(loaded["model"]["w"], state["model"]["w"]), position
    open(path, "wb").write(intact)
    _flip_payload_value(path)
    with pytest.raises(ValueError, match="SHA-256 .* differs from the one stored in it"):
        ckpt.load_checkpoint(path)


def test_a_plain_torch_save_is_not_a_checkpoint(tmp_path):
    path = str(tmp_path / "ckpt-0002.pt")
    torch.save({"format": 1, "epoch": 2, "step": 5, "model": {"w": torch.ones(3)}, "optimizer": {},
                "rng": {"torch": torch.get_rng_state()}}, path)
    with pytest.raises(ValueError, match="not a diffstride checkpoint"):
        ckpt.load_checkpoint(path)


@pytest.mark.slow
def test_when_no_checkpoint_verifies_the_run_stops_and_restarts_only_when_asked(tmp_path, capsys):
    workdir = _trained_then_newest_truncated(tmp_path)
    _flip_payload_value(os.path.join(workdir, "ckpt-0001.pt"))
    before = _files(workdir)
    capsys.readouterr()
    assert main_lib.main(_args(workdir, epochs=2)) == 1
    err = capsys.readouterr().err
    assert "no checkpoint in" in err and "can be trusted" in err and "--restart" in err
    assert "ckpt-0002.pt: " in err and "ckpt-0001.pt: ValueError: its SHA-256" in err
    assert _files(workdir) == before  # no restart, nothing overwritten

    assert main_lib.main(_args(workdir, epochs=2) + ["--restart"]) == 0
    after = _files(workdir)
    assert after["ckpt-0001.pt.unusable"] == before["ckpt-0001.pt"]
    assert after["ckpt-0002.pt.unusable"] == before["ckpt-0002.pt"]
    assert ckpt.load_checkpoint(os.path.join(workdir, "ckpt-0002.pt"))["step"] == 16
    # with a usable checkpoint, --restart is refused rather than throwing it away
    capsys.readouterr()
    assert main_lib.main(_args(workdir, epochs=2) + ["--restart"]) == 1
    assert "is a usable checkpoint" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Retention


@pytest.mark.slow
def test_retention_deletes_only_this_runs_older_checkpoints(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    steps = ["train.train.checkpoint_every_steps = 3", "train.train.keep_checkpoints = 2"]
    assert main_lib.main(_args(workdir, epochs=1, extra=steps)) == 0
    assert sorted(os.listdir(workdir)).count("ckpt-0001.pt") == 1
    assert not [n for n in os.listdir(workdir) if "-step" in n]  # superseded by the epoch's end
    foreign = tmp_path / "run" / "ckpt-0000.pt"
    foreign.write_bytes(b"a file this run did not write")
    junk = tmp_path / "run" / "ckpt-0007.pt"  # newer than anything, unreadable
    junk.write_bytes(b"not a checkpoint")
    capsys.readouterr()
    assert main_lib.main(_args(workdir, epochs=4, extra=steps)) == 0
    out = capsys.readouterr().out
    assert "ckpt-0007.pt is unusable" in out and "resumed from" in out and "ckpt-0001.pt" in out
    names = sorted(n for n in os.listdir(workdir) if n.startswith("ckpt-"))
    assert names == ["ckpt-0000.pt", "ckpt-0003.pt", "ckpt-0004.pt", "ckpt-0007.pt.unusable"]
    assert foreign.read_bytes() == b"a file this run did not write"
    assert _metrics(workdir)["epoch"] == 4


# ----------------------------------------------------------------------------------------------
# Kills, mid-epoch checkpoints, a full disk


@pytest.mark.slow
def test_a_kill_mid_epoch_resumes_from_the_mid_epoch_checkpoint_to_the_same_results(tmp_path, clean_run):
    workdir = str(tmp_path / "run")
    args = _args(workdir, epochs=3, extra=AUGMENTED + ["train.train.checkpoint_every_steps = 3"])
    first = _run_killed_at(args, "step", 13)  # epoch 2, a step after its checkpoint at step 12
    assert first.returncode == -9
    assert [os.path.basename(p) for _, p in ckpt.list_checkpoints(workdir)] == ["ckpt-0001-step000012.pt",
                                                                               "ckpt-0001.pt"]
    second = _run(args)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "(epoch 1, batch 4, step 12)" in second.stdout and "epoch   1/3" not in second.stdout
    metrics = _metrics(workdir)
    for key in COMPARED:
        assert metrics[key] == clean_run[key], key
    with open(os.path.join(workdir, "history.json")) as f:
        assert [h["step"] for h in json.load(f)] == [8, 16, 24]


def _kill_points(seed):
    """Moments to die at, in the order a run passes them: steps, and around each checkpoint write."""
    rng = random.Random(seed)
    points = [("step", s) for s in range(1, 25)]
    points += [(event, s) for s in (3, 6, 8, 9, 12, 15, 16, 18, 21) for event in ("before_checkpoint",
                                                                                  "checkpoint_written")]
    points += [("epoch_end", s) for s in (8, 16)]
    chosen = sorted(rng.sample(points, 4), key=lambda p: (p[1], p[0] != "step"))
    return chosen


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 7])
def test_sigkill_at_random_moments_again_and_again_ends_as_an_uninterrupted_run(tmp_path, clean_run, seed):
    """Four SIGKILLs at random moments (seeded) of one run, each resumed, plus one by a timer at a
    random wall-clock time; the last start completes with the uninterrupted run's results."""
    workdir = str(tmp_path / "run")
    args = _args(workdir, epochs=3, extra=AUGMENTED + ["train.train.checkpoint_every_steps = 3"])
    killed = 0
    for event, step in _kill_points(seed):
        result = _run_killed_at(args, event, step)
        assert result.returncode in (-9, 0), result.stderr[-2000:]
        killed += result.returncode == -9
        if result.returncode == 0:
            break
    assert killed >= 1
    delay = random.Random(seed).uniform(0.2, 2.0)  # a run of this job takes about 2 s after its imports
    proc = launch.Started(args)
    if proc.wait(timeout=delay) is None:
        proc.kill()
    proc.result()
    last = _run(args)
    assert last.returncode == 0, last.stderr[-2000:]
    assert not [n for n in os.listdir(workdir) if ".tmp-" in n]  # orphans of the kills removed
    metrics = _metrics(workdir)
    for key in COMPARED:
        assert metrics[key] == clean_run[key], (key, seed, _kill_points(seed))


@pytest.mark.slow
def test_a_checkpoint_that_cannot_be_written_stops_the_run_keeping_the_previous_one(tmp_path):
    workdir = str(tmp_path / "run")
    assert _run(_args(workdir, epochs=1)).returncode == 0
    before = _files(workdir)
    result = launch.run(_args(workdir, epochs=2), file_size_limit=20000)  # below a checkpoint's ~35 kB
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "could not write the checkpoint" in result.stderr and "ulimit -f" in result.stderr
    assert "previous checkpoints are intact" in result.stderr
    assert not [n for n in os.listdir(workdir) if ".tmp-" in n]
    assert ckpt.load_checkpoint(os.path.join(workdir, "ckpt-0001.pt"))["epoch"] == 1
    assert _files(workdir)["ckpt-0001.pt"] == before["ckpt-0001.pt"]
    # room again: the same command resumes
    result = _run(_args(workdir, epochs=2))
    assert result.returncode == 0 and "resumed from" in result.stdout


# ----------------------------------------------------------------------------------------------
# A finished run started again; a changed network


def _events(workdir):
    return sorted(n for n in os.listdir(workdir) if n.startswith("events."))


@pytest.mark.slow
def test_a_finished_run_started_again_changes_nothing_and_a_changed_network_is_listed_before_loading(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    assert main_lib.main(_args(workdir, epochs=1)) == 0
    before, events = _files(workdir), _events(workdir)
    assert _metrics(workdir)["seconds"] > 0  # the run's own time (a GPU run can take under 0.1 s); the rerun rewrites nothing
    capsys.readouterr()
    assert main_lib.main(_args(workdir, epochs=1)) == 0
    assert "has finished its 1 epochs; nothing to train" in capsys.readouterr().out
    assert _files(workdir) == before and _events(workdir) == events  # no record rewritten, no new event file

    # a different pooling class: compared before any weight is loaded, listed like any binding
    changed = ["resnet.Resnet.pooling_cls = @pooling.FixedSpectralPooling"]
    assert main_lib.main(_args(workdir, epochs=2, extra=changed)) == 2
    err = capsys.readouterr().err
    assert "these bindings differ" in err and "Resnet.pooling_cls: @pooling.DiffStride -> @pooling.FixedSpectralPooling" in err
    assert "Traceback" not in err and "state_dict" not in err
    assert _files(workdir) == before
    # 'continue' cannot carry weights over to another architecture: said plainly, nothing written
    assert main_lib.main(_args(workdir, epochs=2, extra=changed + ["train.train.on_config_change = 'continue'"])) == 2
    err = capsys.readouterr().err
    assert "a different architecture cannot continue from these weights" in err and "Resnet.pooling_cls" in err
    assert _files(workdir) == before and _events(workdir) == events
