"""Training on file sources (issue "any data, any scale"): a short run per source, a SIGKILL
mid-epoch with workers then the same command, torchrun over two processes, bad files during
training, gradient accumulation, torch.compile, and torchvision / timm models by name."""
import functools
import json
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from diffstride import pooling
from diffstride.train import checkpoint as ckpt
from diffstride import data
from diffstride.train import main as main_lib
from diffstride.train import models
from diffstride import train as train_lib

from .conftest import CLASSES, _metrics, _run, _run_killed_at, _shards, _two_processes, _until

SMALL = [
    "data.load_datasets.image_size = 24",
    "data.load_datasets.batch_size = 6",
    "data.load_datasets.num_workers = 2",
    "resnet.Resnet.filters = [4, 8]",
    "resnet.Resnet.strides = [1, 2]",
    "tf.keras.optimizers.schedules.PiecewiseConstantDecay.boundaries = [4]",
    "tf.keras.optimizers.schedules.PiecewiseConstantDecay.values = [0.02, 0.05]",
]


def _file_args(workdir, name, root, epochs=1, extra=()):
    binds = [f"data.load_datasets.name = '{name}'", f"data.load_datasets.data_dir = '{root}'",
             f"train.train.num_epochs = {epochs}"] + SMALL + list(extra)
    return ["--gin_config=mnist.gin", f"--workdir={workdir}", "--seed=1"] + [f"--gin_bindings={b}" for b in binds]


def _checked_run(workdir, dataset, train_examples, test_examples, batch=6, epochs=1):
    """The run read its source whole: one step per full batch of the training split (the last
    partial batch left out), an evaluation over exactly the test examples (the accuracy is a
    whole number of them), a 3-class head, and finite losses."""
    metrics = _metrics(workdir)
    assert metrics["run"]["dataset"] == dataset and metrics["skipped_files"] == 0
    assert math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["test_loss"])
    assert metrics["step"] == epochs * (train_examples // batch)
    correct = metrics["test_accuracy"] * test_examples
    assert abs(correct - round(correct)) < 1e-6 and 0 <= round(correct) <= test_examples
    newest = sorted(n for n in os.listdir(workdir) if n.startswith("ckpt-"))[-1]
    head = [v for k, v in ckpt.load_checkpoint(os.path.join(workdir, newest))["model"].items() if k.endswith("weight")][-1]
    assert head.shape[0] == len(CLASSES)
    return metrics


def test_a_short_training_on_each_file_source(files, tmp_path, capsys):
    images, audio = files["root"] / "images", files["root"] / "audio"
    n_images, n_sounds = len(files["images"]["train"]), len(files["audio"]["train"])
    n_images_val, n_sounds_val = len(files["images"]["val"]), len(files["audio"]["val"])
    assert main_lib.main(_file_args(tmp_path / "folder", "imagefolder", images)) == 0
    _checked_run(tmp_path / "folder", "imagefolder", n_images, n_images_val)
    _shards(tmp_path, files["images"]["train"], "train", 9)
    _shards(tmp_path, files["images"]["val"], "val", 6)
    name = f"wds:{tmp_path}/{{split}}-*.tar"
    assert main_lib.main(_file_args(tmp_path / "wds", name, tmp_path)) == 0
    _checked_run(tmp_path / "wds", name, n_images, n_images_val)
    # audio: log-mel spectrograms for the 2-D ResNet, raw waveforms for the 1-D one
    audio_args = ["data.load_datasets.sample_rate = 8000", "data.load_datasets.clip_seconds = 0.25",
                  "data.load_datasets.n_mels = 16"]
    assert main_lib.main(_file_args(tmp_path / "mel", "audiofolder", audio, extra=audio_args)) == 0
    mel = _checked_run(tmp_path / "mel", "audiofolder", n_sounds, n_sounds_val)
    assert mel["flops"] > 0 and all(len(info["strides"]) == 2 for info in mel["pooling"].values())
    wave = audio_args + ["data.load_datasets.audio_features = 'waveform'", "resnet.Resnet.dims = 1",
                         "resnet.Resnet.pooling_cls = @pooling.DiffStride1d"]
    assert main_lib.main(_file_args(tmp_path / "wave", "audiofolder", audio, extra=wave)) == 0
    metrics = _checked_run(tmp_path / "wave", "audiofolder", n_sounds, n_sounds_val)
    assert all(len(info["strides"]) == 1 for info in metrics["pooling"].values())


def test_hugging_face_audio_dataset_trains(files, tmp_path):
    datasets = pytest.importorskip("datasets")

    def split(name):  # the audio column as the hub stores it (bytes and path), typed Audio; encoding
        # through datasets.Audio would need torchcodec, which reading here does not
        rows = files["audio"][name]
        audio = [{"bytes": open(p, "rb").read(), "path": os.path.basename(p)} for p, _ in rows]
        ds = datasets.Dataset.from_dict({"audio": audio, "label": [y for _, y in rows]})
        return ds.cast_column("audio", datasets.Audio()).cast_column("label", datasets.ClassLabel(num_classes=3))

    datasets.DatasetDict({"train": split("train"), "validation": split("val")}).save_to_disk(str(tmp_path / "hf"))
    args = _file_args(tmp_path / "run", f"hf:{tmp_path / 'hf'}", tmp_path,
                      extra=["data.load_datasets.sample_rate = 8000", "data.load_datasets.clip_seconds = 0.25"])
    assert main_lib.main(args) == 0
    _checked_run(tmp_path / "run", f"hf:{tmp_path / 'hf'}", len(files["audio"]["train"]), len(files["audio"]["val"]))


def _ended(pid):
    """Whether process ``pid`` has ended (gone, or a zombie waiting for its parent)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="Linux pidfd (Python 3.9+, Linux 5.3+)")
def test_a_killed_runs_workers_end_with_it_under_the_forkserver_start_method(files, tmp_path):
    """Workers started through a forkserver (Python 3.14's default on Linux) are not the run's
    children: DataLoader's watchdog watches the forkserver, which the workers keep alive, so after a
    SIGKILL of the run they waited for work forever (seen). They now end with the run."""
    import textwrap

    code = textwrap.dedent(f"""
        import multiprocessing, os, signal
        multiprocessing.set_start_method("forkserver")
        from diffstride import data
        ds = data.load_datasets("imagefolder", data_dir={str(files["root"] / "images")!r}, batch_size=6,
                                image_size=24, num_workers=2)
        next(ds.train.batches(ds.train.order(0)))
        print(" ".join(str(w.pid) for w in ds.train.loader.loader._iterator._workers), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    out = tmp_path / "out.txt"
    with open(out, "w") as f:  # a file, not a pipe: leftover workers would hold a pipe open
        code_ = subprocess.run([sys.executable, "-c", code], stdout=f, stderr=subprocess.STDOUT, timeout=120,
                               env=dict(os.environ, OMP_NUM_THREADS="1")).returncode
    assert code_ == -signal.SIGKILL, out.read_text()[-2000:]
    workers = [int(p) for p in out.read_text().split()[-2:]]
    try:
        _until(lambda: all(_ended(p) for p in workers), seconds=30)  # (DataLoader's own watchdog: every 5 s)
    finally:
        for pid in workers:
            if not _ended(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_worker_that_starts_after_its_run_was_killed_ends_at_once():
    """The other order of the same race (seen under load): the run is gone before a worker reaches
    its set-up, which then ends it instead of watching nothing."""
    from diffstride.data.loader import exit_with

    gone = subprocess.Popen(["true"])
    gone.wait()  # an ended (and reaped) process
    child = os.fork()
    if child == 0:
        try:
            exit_with(gone.pid)
        finally:
            os._exit(3)  # returned: it would have kept running
    _, status = os.waitpid(child, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


RANDOM_BATCHES = ["data.load_datasets.mixup_alpha = 0.2", "data.load_datasets.augment_fn = @data.augment"]
# two processes on this machine: gloo on the CPU, also where a GPU is (one GPU cannot take two ranks)
ON_CPU = "train.train.device = 'cpu'"


@pytest.mark.slow
def test_workers_never_change_a_run_with_mixup_and_augmentation(files, tmp_path):
    """0 and 2 DataLoader workers, Mixup and the batch augmentation on, 2 epochs: the same run
    (the second epoch differed: a DataLoader iterator drew from torch's global generator every
    epoch with 0 workers and once with persistent workers, and Mixup drew from it too)."""
    root = files["root"] / "images"
    runs = []
    for workers in (0, 2):
        extra = RANDOM_BATCHES + [f"data.load_datasets.num_workers = {workers}"]
        workdir = tmp_path / f"workers{workers}"
        assert main_lib.main(_file_args(workdir, "imagefolder", root, epochs=2, extra=extra)) == 0
        with open(workdir / "history.json") as f:
            runs.append(json.load(f))
    assert len(runs[0]) == 2
    for a, b in zip(*runs):
        for key in ("train_loss", "test_loss", "test_accuracy", "step", "pooling"):
            assert a[key] == b[key], (a["epoch"], key)


@pytest.mark.slow
def test_killed_mid_epoch_with_workers_then_rerun_gives_the_same_metrics(files, tmp_path):
    """SIGKILL after the mid-epoch checkpoint of step 4 (epoch 2 of 3 steps each), then the same
    command, 2 workers, RandAugment, Mixup and the batch augmentation on: the run resumes at
    batch 1 of epoch 2 and ends exactly as a run never interrupted."""
    root = files["root"] / "images"
    extra = ["train.train.checkpoint_every_steps = 2", "data.load_datasets.auto_augment = 'randaugment'"] + RANDOM_BATCHES
    whole = _run(_file_args(tmp_path / "whole", "imagefolder", root, epochs=2, extra=extra))
    assert whole.returncode == 0, whole.stderr[-2000:]
    args = _file_args(tmp_path / "killed", "imagefolder", root, epochs=2, extra=extra)
    killed = _run_killed_at(args, "checkpoint_written", 4)
    assert killed.returncode == -9 and not os.path.exists(tmp_path / "killed" / "metrics.json")
    again = _run(args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed from" in again.stdout and "step 4" in again.stdout
    a, b = _metrics(tmp_path / "whole"), _metrics(tmp_path / "killed")
    for key in ("train_loss", "test_loss", "test_accuracy", "step"):
        assert a[key] == b[key], key
    assert a["pooling"] == b["pooling"]


def _break_share(root, batch, rank=0, world_size=1, global_batch=6, seed=1):
    """Overwrites with garbage every training file of ``rank``'s share of ``batch`` in epoch 0 (the
    order the pipeline draws from the seed); returns their paths."""
    from diffstride.data.loader import EpochBatchSampler
    from diffstride.data.sources import FolderSource

    source = FolderSource(str(root / "train"), "image")
    sampler = EpochBatchSampler(len(source), global_batch, rank, world_size, seed, shuffle=True)
    share = list(sampler)[batch]
    paths = [source.files[index] for _, index in share]
    for path in paths:
        with open(path, "wb") as f:
            f.write(b"\xff\xd8\xff\xe0 not an image")
    return paths


@pytest.mark.slow
def test_a_batch_of_bad_files_only_is_skipped_and_a_resume_after_it_is_exact(files, tmp_path):
    """skip_bad_files with every file of a batch bad: the batch is read and counted, not trained
    on, so that a mid-epoch checkpoint after it resumes at the right batch (it once resumed one
    batch early and trained a batch twice)."""
    import shutil

    root = tmp_path / "images"
    shutil.copytree(files["root"] / "images", root)
    assert len(_break_share(root, batch=1)) == 6
    extra = ["data.load_datasets.skip_bad_files = True", "train.train.checkpoint_every_steps = 2"]
    whole = _run(_file_args(tmp_path / "whole", "imagefolder", root, epochs=2, extra=extra))
    assert whole.returncode == 0, whole.stderr[-2000:]
    args = _file_args(tmp_path / "killed", "imagefolder", root, epochs=2, extra=extra)
    killed = _run_killed_at(args, "checkpoint_written", 2)  # batches 0 and 2 trained, batch 1 skipped
    assert killed.returncode == -9
    again = _run(args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "(epoch 0, batch 3, step 2)" in again.stdout
    a, b = _metrics(tmp_path / "whole"), _metrics(tmp_path / "killed")
    assert a["skipped_files"] == b["skipped_files"] == 6
    with open(tmp_path / "whole" / "history.json") as f:
        assert json.load(f)[0]["step"] == 5  # 6 batches in epoch 1, one of bad files only
    for key in ("train_loss", "test_loss", "test_accuracy", "step", "pooling"):
        assert a[key] == b[key], key


@pytest.mark.slow
def test_torchrun_two_processes_read_their_shards_and_resume(files, tmp_path):
    """Two processes (gloo) on an image folder, with gradient accumulation (DDP's no_sync on all
    but the last part): each rank reads its half of each batch; the second command resumes: rank 0
    chooses the checkpoint and every rank loads it. (The in-memory sets' sharding: test_data.)
    Rank 1's whole share of the second batch is bad files, skipped: both processes skip that step
    (one trained on, the other not, they stopped pairing their all-reduces and hung)."""
    import shutil

    root = tmp_path / "images"
    shutil.copytree(files["root"] / "images", root)
    assert len(_break_share(root, batch=1, rank=1, world_size=2)) == 3
    workdir = tmp_path / "ddp"

    def torchrun(epochs):
        args = _file_args(workdir, "imagefolder", root, epochs=epochs,
                          extra=["train.train.accumulate_steps = 2", "train.train.checkpoint_every_steps = 4",
                                 "data.load_datasets.skip_bad_files = True", ON_CPU])
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "diffstride.train.main", *args]
        # its own process group: a hang (the failure this test looks for) is killed whole
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, OMP_NUM_THREADS="1"), start_new_session=True)
        try:
            out, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)

    result = torchrun(1)
    assert result.returncode == 0, result.stderr[-3000:]
    result = torchrun(2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("resumed from") == 1 and "ckpt-0001.pt" in result.stdout  # rank 0 says it
    metrics = _metrics(workdir)
    assert metrics["step"] == 11 and metrics["run"]["world_size"] == 2 and metrics["run"]["accumulate_steps"] == 2
    assert metrics["skipped_files"] == 3
    replicas = metrics["replica_strides"]
    assert len(replicas) == 2 and replicas[0] == replicas[1]
    assert replicas[0]["stem_pooling"] != [1.0, 1.0]  # the strides did train
    assert result.stdout.count("final test accuracy") == 1  # only rank 0 reports


@pytest.mark.slow
def test_two_processes_killed_mid_epoch_resume_with_the_history_of_an_uninterrupted_run(files, tmp_path):
    """Two processes (torchrun's environment, gloo), Mixup and augmentation on: rank 0 SIGKILLed
    after the mid-epoch checkpoint of step 4 (in epoch 2), then both started again: every epoch of history.json
    equals the uninterrupted run's. (The unfinished epoch's running sums were rank 0's alone in the
    checkpoint and every process resumed from them: its train loss was wrong.)"""
    root = files["root"] / "images"
    extra = ["train.train.checkpoint_every_steps = 2", ON_CPU] + RANDOM_BATCHES

    def history(workdir):
        with open(workdir / "history.json") as f:
            return json.load(f)

    whole = _two_processes(_file_args(tmp_path / "whole", "imagefolder", root, epochs=2, extra=extra))
    assert [r.returncode for r in whole] == [0, 0], whole[0].stderr[-2000:] + whole[1].stderr[-2000:]
    args = _file_args(tmp_path / "killed", "imagefolder", root, epochs=2, extra=extra)
    killed = _two_processes(args, kill_at=("checkpoint_written", 4))
    assert killed[0].returncode == -9 and len(history(tmp_path / "killed")) == 1  # in epoch 2 (3 steps an epoch)
    again = _two_processes(args)
    assert [r.returncode for r in again] == [0, 0], again[0].stderr[-2000:] + again[1].stderr[-2000:]
    assert "resumed from" in again[0].stdout and "step 4" in again[0].stdout
    a, b = history(tmp_path / "whole"), history(tmp_path / "killed")
    assert len(a) == len(b) == 2
    for epoch_a, epoch_b in zip(a, b):
        for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "step", "pooling"):
            assert epoch_a[key] == epoch_b[key], (epoch_a["epoch"], key)


@pytest.mark.slow
def test_under_torchrun_a_bad_file_is_one_message_and_exit_2(files, tmp_path):
    """torchrun, 2 processes, a corrupt file in rank 1's share: rank 1 names the file once and
    exits 2; rank 0 ends quietly (no traceback: it used to print gloo's "Connection closed by
    peer", then a KeyboardInterrupt in an exit callback); torchrun adds its own summary."""
    import shutil

    root = tmp_path / "images"
    shutil.copytree(files["root"] / "images", root)
    (bad,) = _break_share(root, batch=1, rank=1, world_size=2)[:1]
    args = _file_args(tmp_path / "run", "imagefolder", root, epochs=1, extra=[ON_CPU])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "diffstride.train.main", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    err = proc.stderr
    assert proc.returncode != 0
    assert err.count("error: ") == 1 and os.path.basename(bad) in err, err[-3000:]
    # no process of ours printed a traceback (torchrun prefixes their lines with [rankN]); the one
    # traceback left is torchrun's own ChildFailedError summary. (Rank 0 may say it was interrupted:
    # torchrun's SIGTERM can reach it before the broken collective does; one line, no traceback.)
    ours = [line for line in err.splitlines() if line.startswith("[rank") and "interrupted; the newest" not in line]
    assert not ours and err.count("Traceback") <= 1, err
    assert "KeyboardInterrupt" not in err and "Connection closed" not in err, err
    assert "exitcode  : 2" in err  # torchrun's summary: the process that met the file


def test_a_bad_file_stops_the_run_by_name_and_keeps_the_checkpoint(files, tmp_path, capsys):
    import shutil

    root = tmp_path / "images"
    shutil.copytree(files["root"] / "images", root)
    workdir = tmp_path / "run"
    assert main_lib.main(_file_args(workdir, "imagefolder", root, epochs=1)) == 0
    kept = sorted(p for p in os.listdir(workdir) if p.startswith("ckpt-"))
    bad = root / "train" / "dog" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    capsys.readouterr()
    assert main_lib.main(_file_args(workdir, "imagefolder", root, epochs=2)) == 2
    err = capsys.readouterr().err
    assert f"{bad}: cannot be decoded as an image" in err and "skip_bad_files = True" in err
    assert sorted(p for p in os.listdir(workdir) if p.startswith("ckpt-")) == kept
    state = ckpt.load_checkpoint(os.path.join(workdir, kept[-1]))  # verifies, or raises
    assert state["epoch"] == 1
    # skipping instead: counted once in the metrics, however many epochs read it
    args = _file_args(tmp_path / "skip", "imagefolder", root, epochs=2,
                      extra=["data.load_datasets.skip_bad_files = True"])
    assert main_lib.main(args) == 0
    assert _metrics(tmp_path / "skip")["skipped_files"] == 1


# ----------------------------------------------------------------------------------------------
# The loop's new knobs


def _small_net(num_output_classes, in_channels):
    torch.manual_seed(0)  # no batch statistics: accumulation gives the whole batch's gradient
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), pooling.DiffStride(strides=(2, 2)), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_output_classes), nn.Softmax(-1))


def _train_small(**kwargs):
    load = functools.partial(data.load_datasets, name="mnist", train_examples=128, test_examples=64, batch_size=32)
    return train_lib.train(load_data_fn=load, model_cls=_small_net, num_epochs=1, workdir=None, seed=0,
                           log=lambda *_: None, complexity_weight=0.01, **kwargs)


def test_gradient_accumulation_gives_the_large_batch_result():
    whole, parts = _train_small(accumulate_steps=1), _train_small(accumulate_steps=4)
    for key in ("train_loss", "test_loss"):
        assert math.isclose(whole[key], parts[key], rel_tol=1e-5), key
    assert np.allclose(whole["pooling"]["1"]["strides"], parts["pooling"]["1"]["strides"], rtol=1e-5)
    assert whole["pooling"]["1"]["strides"] != [2.0, 2.0]  # the strides did move (complexity term, once)
    with pytest.raises(ValueError, match="train.train.accumulate_steps must be >= 1, but got 0"):
        _train_small(accumulate_steps=0)


@pytest.mark.slow
def test_compiled_training_matches_eager():
    eager, compiled = _train_small(), _train_small(compile=True)
    assert compiled["run"]["compile"] is True
    assert math.isclose(eager["test_loss"], compiled["test_loss"], rel_tol=1e-4)


# ----------------------------------------------------------------------------------------------
# Models by name


def test_torchvision_model_by_name_converted_with_grayscale_input():
    import torchvision

    torch.manual_seed(0)
    model = models.torchvision_model("resnet18", num_output_classes=5, in_channels=1, image_size=32)
    layers = pooling.pooling_layers(model)
    assert len(layers) == 5 and all(isinstance(m, pooling.DiffStride) for _, m in layers)
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 5)
    strided = models.torchvision_model("resnet18", num_output_classes=5, pooling_cls=None, weight_decay=5e-5)
    assert not pooling.pooling_layers(strided) and strided.conv1.stride == (2, 2) and strided.weight_decay == 5e-5
    # one input channel: the RGB kernels summed, so a gray image gives what RGB copies of it gave
    reference = torchvision.models.resnet18(num_classes=5).eval()
    adapted = torchvision.models.resnet18(num_classes=5)
    adapted.load_state_dict(reference.state_dict())
    models.adapt_in_channels(adapted, 1)
    assert adapted.conv1.in_channels == 1
    image = torch.rand(2, 1, 40, 40)
    torch.testing.assert_close(adapted.eval()(image), reference(image.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="torchvision has no model 'resnet19'"):
        models.torchvision_model("resnet19", num_output_classes=5)


def test_timm_model_by_name_converted():
    pytest.importorskip("timm")
    model = models.timm_model("resnet18", num_output_classes=4, image_size=32,
                              pooling_cls=pooling.FixedSpectralPooling)
    assert {type(m) for _, m in pooling.pooling_layers(model)} == {pooling.FixedSpectralPooling}
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 4)


def test_imagenet_config_carries_torchvisions_recipe_and_runs_on_an_image_folder(files, tmp_path, capsys):
    """imagenet.gin parses with the values its comments cite, and runs as written on the
    image-folder layout (shrunk here: 32x32 images, a few examples, one epoch)."""
    import gin

    from diffstride.train import configurables as external_configurables  # noqa: F401

    gin.parse_config_file(main_lib.resolve_config("imagenet.gin"), skip_unknown=False)
    q = gin.query_parameter
    assert q("data.load_datasets.name") == "imagefolder" and q("data.load_datasets.batch_size") == 256
    assert q("data.load_datasets.image_size") == 224 and q("data.load_datasets.crop_ratio") == 0.875
    assert q("models.torchvision.name") == "resnet18" and q("models.torchvision.weight_decay") == 5e-5
    assert q("train.train.num_epochs") == 90 and q("tf.keras.optimizers.SGD.momentum") == 0.9
    assert q("tf.keras.optimizers.schedules.PiecewiseConstantDecay.boundaries") == [150120, 300240]
    assert q("tf.keras.optimizers.schedules.PiecewiseConstantDecay.values") == [0.1, 0.01, 0.001]
    assert q("tf.keras.losses.CategoricalCrossentropy.from_logits") is True
    gin.clear_config()
    binds = [f"data.load_datasets.data_dir = '{files['root'] / 'images'}'", "data.load_datasets.image_size = 32",
             "models.torchvision.image_size = 32", "data.load_datasets.batch_size = 6",
             "data.load_datasets.num_workers = 0", "data.load_datasets.train_examples = 12",
             "train.train.num_epochs = 1"]
    args = ["--gin_config=imagenet.gin", f"--workdir={tmp_path / 'run'}"] + [f"--gin_bindings={b}" for b in binds]
    assert main_lib.main(args) == 0, capsys.readouterr().err[-2000:]
    metrics = _metrics(tmp_path / "run")
    assert metrics["run"]["pooling"] == "DiffStride" and len(metrics["pooling"]) == 5 and metrics["step"] == 2
