"""The training system as users run it: command line, configs, logs, checkpoints, resume, failures, DDP.

Everything runs the real entry point on a tiny ResNet and a slice of the offline MNIST digits."""
import json
import math
import os

import gin
import pytest
import torch

from diffstride import pooling
from diffstride.train import atomic
from diffstride.train import checkpoint as ckpt
from diffstride.train import main as main_lib

from .conftest import _args, _metrics, _run, _run_killed_at, _trained_then_newest_truncated

@pytest.mark.slow
def test_main_job_writes_logs_checkpoints_configs_and_metrics(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    assert main_lib.main(_args(workdir)) == 0
    out = capsys.readouterr().out
    assert "epoch   2/2" in out and "strides stem_pooling=(" in out and "final test accuracy" in out
    assert f"metrics.json in {workdir}" in out
    files = set(os.listdir(workdir))
    assert {"ckpt-0001.pt", "ckpt-0002.pt", "metrics.json", "history.json", "config.gin", "operative_config.gin"} <= files
    metrics = _metrics(workdir)
    assert metrics["epoch"] == 2 and metrics["step"] == 16
    # a count of correct answers among the 128 test digits, the one printed and the last epoch's
    correct = metrics["test_accuracy"] * 128
    assert abs(correct - round(correct)) < 1e-9 and f"final test accuracy {metrics['test_accuracy']:.4f}" in out
    with open(os.path.join(workdir, "history.json")) as f:
        assert json.load(f)[-1]["test_accuracy"] == metrics["test_accuracy"]
    assert metrics["flops"] > 0 and 0 < metrics["complexity"] < 2
    assert set(metrics["pooling"]) == {"stem_pooling", "blocks.0.0.pooling"}
    # the logged output size is the one the logged strides give on the stem's output
    stem, block = metrics["pooling"]["stem_pooling"], metrics["pooling"]["blocks.0.0.pooling"]
    assert stem["output_size"] == [28, 28]
    assert list(pooling.DiffStride(strides=block["strides"]).output_size((28, 28))) == block["output_size"]
    operative = open(os.path.join(workdir, "operative_config.gin")).read()
    assert "load_datasets.name = 'mnist'" in operative and "DiffStride" in operative
    state = ckpt.load_checkpoint(os.path.join(workdir, "ckpt-0002.pt"))
    assert state["epoch"] == 2 and "blocks.0.0.pooling.strides" in state["model"]
    # TensorBoard: losses, accuracies, learning rate, speed, and per pooling layer strides and sizes
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(workdir)
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("train/loss", "train/accuracy", "test/loss", "test/accuracy", "learning_rate", "steps_per_second",
                "pooling/blocks.0.0.pooling/stride_h", "pooling/blocks.0.0.pooling/stride_w",
                "pooling/stem_pooling/output_h", "pooling/stem_pooling/output_w", "complexity/J", "complexity/flops"):
        assert tag in tags, tag
    assert [e.step for e in events.Scalars("test/accuracy")] == [8, 16]
    # the learning rate follows the step schedule: 0.02 up to step 4, then 0.05
    assert events.Scalars("learning_rate")[-1].value == pytest.approx(0.05)


@pytest.mark.slow
def test_running_again_resumes_from_the_latest_checkpoint(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    assert main_lib.main(_args(workdir, epochs=1)) == 0
    capsys.readouterr()
    assert main_lib.main(_args(workdir, epochs=2)) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "ckpt-0001.pt" in out and "epoch   1/2" not in out and "epoch   2/2" in out
    assert _metrics(workdir)["step"] == 16
    assert len(json.load(open(os.path.join(workdir, "history.json")))) == 2


# Mixup and the batch augmentation on: their draws are keyed by (seed, epoch, batch, rank), so a
# resume replays them (before 2026-12-04 they came from torch's global stream)
RANDOM_BATCHES = ["data.load_datasets.mixup_alpha = 0.2", "data.load_datasets.augment_fn = @data.augment"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_equals_an_uninterrupted_run(tmp_path):
    """The built-in set on the device, Mixup and augmentation on: killed after the mid-epoch
    checkpoint of step 6 (4 steps an epoch), the same command ends as the uninterrupted run."""
    clean, killed = str(tmp_path / "clean"), str(tmp_path / "killed")
    extra = RANDOM_BATCHES + ["train.train.checkpoint_every_steps = 3"]
    args_clean, args_killed = _args(clean, epochs=3, extra=extra), _args(killed, epochs=3, extra=extra)
    assert _run(args_clean).returncode == 0
    first = _run_killed_at(args_killed, "checkpoint_written", 6)  # mid-epoch 2
    assert first.returncode == -9
    assert [e for e, _ in ckpt.list_checkpoints(killed)] == [1, 1]  # the end of epoch 1, step 6
    second = _run(args_killed)
    assert second.returncode == 0, second.stderr
    assert "resumed from" in second.stdout and "step 6" in second.stdout
    a, b = _metrics(clean), _metrics(killed)
    for key in ("test_accuracy", "test_loss", "train_loss", "train_accuracy", "step", "pooling"):
        assert a[key] == b[key], key


def _state(epoch):
    model = torch.nn.Linear(2, 2)
    return {"format": 2, "epoch": epoch, "step": epoch * 10, "model": model.state_dict(), "optimizer": {},
            "rng": {"torch": torch.get_rng_state()}}


def test_unreadable_checkpoints_are_refused_and_the_newest_verified_one_is_found(tmp_path):
    for epoch in (1, 2, 3):
        ckpt.save_checkpoint(str(tmp_path), _state(epoch))
    path3 = tmp_path / "ckpt-0003.pt"
    path3.write_bytes(path3.read_bytes()[:100])  # truncated
    path2 = tmp_path / "ckpt-0002.pt"
    raw = bytearray(path2.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 64] = b"\x00" * 64  # corrupted bytes
    path2.write_bytes(bytes(raw))
    (state, path), refused = ckpt.find_usable(str(tmp_path))
    assert state["epoch"] == 1 and path.endswith("ckpt-0001.pt")
    assert [os.path.basename(r.path) for r in refused] == ["ckpt-0003.pt", "ckpt-0002.pt"]
    assert all(r.reason for r in refused)
    assert path3.exists() and path2.exists()  # finding deletes nothing


def test_checkpoints_are_written_atomically(tmp_path):
    for epoch in range(1, 4):
        ckpt.save_checkpoint(str(tmp_path), _state(epoch))
    names = ["ckpt-0001.pt", "ckpt-0002.pt", "ckpt-0003.pt"]
    assert sorted(os.listdir(tmp_path)) == names  # no temporary, no sidecar left

    class Boom(Exception):
        pass

    def failing(f):
        f.write(b"partial")
        raise Boom()

    with pytest.raises(Boom):
        atomic.atomic_replace(failing, str(tmp_path / "ckpt-0003.pt"))
    assert ckpt.load_checkpoint(str(tmp_path / "ckpt-0003.pt"))["epoch"] == 3  # old file intact
    assert sorted(os.listdir(tmp_path)) == names


@pytest.mark.slow
def test_resume_with_a_corrupted_latest_checkpoint(tmp_path, capsys):
    workdir = _trained_then_newest_truncated(tmp_path)
    capsys.readouterr()
    assert main_lib.main(_args(workdir, epochs=2)) == 0
    captured = capsys.readouterr()
    assert "ckpt-0002.pt is unusable" in captured.out and "kept as" in captured.out
    assert "resumed from" in captured.out and "ckpt-0001.pt" in captured.out and "epoch   2/2" in captured.out
    # the refused file is kept aside, out of the way of the new epoch-2 checkpoint
    assert os.path.getsize(os.path.join(workdir, "ckpt-0002.pt.unusable")) == 1000
    assert ckpt.load_checkpoint(os.path.join(workdir, "ckpt-0002.pt"))["epoch"] == 2


@pytest.mark.slow
def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    workdir = str(tmp_path / "run")
    result = _run(_args(workdir, epochs=3, extra=[
        "tf.keras.optimizers.schedules.PiecewiseConstantDecay.boundaries = [8]",
        "tf.keras.optimizers.schedules.PiecewiseConstantDecay.values = [0.02, 1e30]"]))
    assert result.returncode == 1
    assert "non-finite" in result.stderr and "ckpt-0001.pt" in result.stderr and "Traceback" not in result.stderr
    assert [e for e, _ in ckpt.list_checkpoints(workdir)] == [1]
    (state, _), _ = ckpt.find_usable(workdir)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--gin_config=mnist.gin", "--gin_bindings=train.train.no_such_argument = 3"], "no_such_argument"),
        (["--gin_config=mnist.gin", "--gin_bindings=data.load_datasets.name = 'imagenet'"], "unknown dataset name 'imagenet'"),
        (["--gin_config=mnist.gin", "--gin_bindings=resnet.Resnet.strides = [1, 0.5, 2]"], "strides[1] must be finite numbers >= 1"),
        (["--gin_config=mnist.gin", "--gin_bindings=resnet.Resnet.strides = [1, 2]"], "number of filters (3) must match"),
        (["--gin_config=nosuch.gin"], "gin config 'nosuch.gin' not found"),
        ([], "give at least one --gin_config"),
    ],
)
def test_user_errors_fail_before_training_without_traceback(tmp_path, capsys, args, message):
    assert main_lib.main(args + [f"--workdir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not ckpt.list_checkpoints(str(tmp_path))


def test_cifar10_command_resolves_its_config_from_any_directory_and_explains_missing_data(tmp_path):
    result = _run(["--gin_config=cifar10.gin", f"--gin_bindings=train.workdir = '{tmp_path}/exp/'",
                   f"--gin_bindings=data.load_datasets.data_dir = '{tmp_path}/data'",
                   "--gin_bindings=data.load_datasets.download = False"], cwd=str(tmp_path))
    assert result.returncode == 2
    assert "cifar10 is not in" in result.stderr and "cifar-10-python.tar.gz" in result.stderr
    assert "Traceback" not in result.stderr


def _reference_surface_model(bindings):
    from diffstride.train import configurables as external_configurables  # noqa: F401

    gin.clear_config()
    files = [main_lib.resolve_config("cifar10.gin")]
    gin.parse_config_files_and_bindings(files, bindings, finalize_config=False)
    try:
        model = gin.get_configurable("resnet.resnet18")(num_output_classes=10)
        return model, gin.query_parameter("data.load_datasets.name"), gin.query_parameter("data.load_datasets.mixup_alpha")
    finally:
        gin.clear_config()


def test_the_reference_gin_names_bind():
    """The bindings users bring from the reference's README and configs."""
    model, name, mixup = _reference_surface_model([
        "data.load_datasets.name = 'cifar100'", "data.load_datasets.mixup_alpha = 0.0",
        "resnet.resnet18.strides = [1, 1, 3, 2, 3]", "pooling.DiffStride.smoothness_factor = 2.0",
        "pooling.DiffStride.shared_stride = True", "train.train.num_epochs = 3"])
    assert (name, mixup) == ("cifar100", 0.0)
    layers = [m for _, m in pooling.pooling_layers(model)]
    assert all(isinstance(m, pooling.DiffStride) and m.smoothness_factor == 2.0 and m.shared_stride for m in layers)
    assert [m.strides.tolist() for m in layers] == [[1.0], [3.0], [2.0], [3.0]]
    model, _, _ = _reference_surface_model(["resnet.resnet18.strides = '1, 1, 3, 2, 3'",
                                            "resnet.Resnet.pooling_cls = @pooling.FixedSpectralPooling"])
    assert [m.strides for _, m in pooling.pooling_layers(model)] == [(1.0, 1.0), (3.0, 3.0), (2.0, 2.0), (3.0, 3.0)]
    model, _, _ = _reference_surface_model(["resnet.Resnet.pooling_cls = None"])
    assert not pooling.pooling_layers(model) and model.blocks[1][0].strided_conv.stride == (2, 2)


def test_packaged_cifar_configs_carry_the_reference_recipe():
    from diffstride.train import configurables as external_configurables  # noqa: F401

    for name, dataset in (("cifar10.gin", "cifar10"), ("cifar100.gin", "cifar100")):
        gin.clear_config()
        gin.parse_config_file(main_lib.resolve_config(name), skip_unknown=False)
        q = gin.query_parameter
        assert q("data.load_datasets.name") == dataset and q("data.load_datasets.batch_size") == 128
        assert q("data.load_datasets.mixup_alpha") == 0.2 and q("train.train.num_epochs") == 400
        assert q("tf.keras.optimizers.schedules.PiecewiseConstantDecay.boundaries") == [400, 18000, 32000]
        assert q("tf.keras.optimizers.schedules.PiecewiseConstantDecay.values") == [0.01, 0.1, 0.01, 0.001]
        assert q("tf.keras.optimizers.SGD.momentum") == 0.9
        # as the reference ran it: its smoothing binding never reached its loss, and its
        # load_datasets never augmented (augment_fn defaults to None there)
        assert q("tf.keras.losses.CategoricalCrossentropy.label_smoothing") == 0.0
        assert q("data.load_datasets.augment_fn") is None
        assert q("resnet.Resnet.weight_decay") == 5e-4 and q("resnet.resnet18.strides") == [1, 1, 2, 2, 2]
    gin.clear_config()


@pytest.mark.slow
def test_bf16_mixed_precision_training_on_cpu(tmp_path, capsys):
    workdir = str(tmp_path / "bf16")
    assert main_lib.main(_args(workdir, epochs=1, extra=["train.train.mixed_precision = True"])) == 0
    metrics = _metrics(workdir)
    assert metrics["run"]["precision"] == "bfloat16 autocast"
    correct = metrics["test_accuracy"] * 128  # a count of correct answers among the 128 test digits
    assert abs(correct - round(correct)) < 1e-9 and math.isfinite(metrics["train_loss"])
    assert all(math.isfinite(v) for info in metrics["pooling"].values() for v in info["strides"])


def test_more_processes_than_gpus_is_one_clear_error_before_any_work(tmp_path, capsys, monkeypatch):
    """torchrun --nproc_per_node=2 on a one-GPU node: rank 1 names the counts and exits 2 (it used
    to die in CUDA with "invalid device ordinal"). CUDA's presence is simulated: this runs on CPUs."""
    from diffstride.train.distributed import DistributedContext

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: pytest.fail("a device was chosen"))
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"2 processes per node but this node has 1 GPU\(s\) \(local rank 1 has "
                                         r"none\).*--nproc_per_node=1.*train.train.device = 'cpu'"):
        DistributedContext(None)
    assert DistributedContext("cpu").device.type == "cpu"  # the CPU is always there
    workdir = str(tmp_path / "run")
    assert main_lib.main(_args(workdir, epochs=1)) == 2
    assert "2 processes per node but this node has 1 GPU(s)" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(workdir, "ckpt-0001.pt"))


def test_a_run_with_a_budget_ends_within_it_and_reports_it(tmp_path, capsys):
    """train.train.budget_macs: the tiny job (DiffStride, 1.4 M multiply-adds at its initial
    strides) asked for 0.5 M ends at or below it, and says so in the epoch line, metrics.json and
    history; the floor is reported beside it."""
    workdir = str(tmp_path / "run")
    assert main_lib.main(_args(workdir, epochs=2, extra=["train.train.budget_macs = 500000"])) == 0
    out = capsys.readouterr().out
    metrics = _metrics(workdir)
    assert metrics["flops"] <= 500000 and metrics["budget_macs"] == 500000
    assert metrics["floor_macs"] < metrics["flops"]
    assert "MMACs 0.5/0.5" in out or "MMACs 0.4/0.5" in out
    with open(os.path.join(workdir, "history.json")) as f:
        assert all(epoch["flops"] <= 500000 for epoch in json.load(f))


def test_a_budget_below_the_floor_is_refused_before_training(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    assert main_lib.main(_args(workdir, epochs=1, extra=["train.train.budget_macs = 1000"])) == 2
    err = capsys.readouterr().err
    assert "train.train.budget_macs = 1000 is below this network's floor of" in err
    assert "smoothness_factor" in err and "upper_limit_stride" in err and "Traceback" not in err
    assert not os.path.exists(os.path.join(workdir, "metrics.json"))
    assert not [n for n in os.listdir(workdir) if n.startswith("ckpt-")] if os.path.isdir(workdir) else True
    strided = ["resnet.Resnet.pooling_cls = None", "train.train.budget_macs = 100000000"]
    assert main_lib.main(_args(str(tmp_path / "strided"), epochs=1, extra=strided)) == 2
    assert "needs trainable strides" in capsys.readouterr().err
