"""The evidence sweeps: the 1-D training path, shift consistency in training, the sweep command
(grid, parallel cells, resume after an interruption, one sweep per root, damaged records, bad
bindings, a killed parent) and its report."""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from diffstride import data
from diffstride.experiments import report
from diffstride.experiments import sweep
from diffstride.train import main as main_lib

from .conftest import TINY, _until


def test_one_dimensional_training_from_the_packaged_config(tmp_path):
    pytest.importorskip("sktime")
    workdir = str(tmp_path / "osuleaf")
    bindings = ["train.train.num_epochs = 1", "data.load_datasets.test_examples = 64", "resnet.Resnet.filters = [4, 8]",
                "resnet.Resnet.strides = [2, 2]"]
    assert main_lib.main(["--gin_config=osuleaf.gin", f"--workdir={workdir}"]
                         + [f"--gin_bindings={b}" for b in bindings]) == 0
    with open(os.path.join(workdir, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["run"]["pooling"] == "DiffStride1d" and metrics["run"]["memory_format"] == "contiguous"
    assert metrics["run"]["dataset"] == "osuleaf" and metrics["flops"] > 0
    stem = metrics["pooling"]["stem_pooling"]
    from diffstride import pooling

    assert len(stem["strides"]) == 1 and stem["strides"] != [2.0]  # one learned stride, trained
    assert stem["output_size"] == list(pooling.DiffStride1d(strides=stem["strides"][0]).output_size(427))


def test_cbf_series_follow_saitos_shapes_and_are_fixed_by_the_seed():
    ds = data.load_datasets("cbf", batch_size=16)
    again = data.load_datasets("cbf", batch_size=16)
    x, y = ds.train.split.images[:, 0].double(), ds.train.split.labels
    assert ds.image_shape == (1, 128) and ds.num_classes == 3 and (len(ds.train.split), len(ds.test.split)) == (1000, 1000)
    assert torch.equal(ds.train.split.images, again.train.split.images) and y.bincount().tolist() == [334, 333, 333]
    assert not torch.equal(ds.train.split.images, ds.test.split.images)
    assert torch.allclose(x.mean(1), torch.zeros(1000, dtype=torch.float64), atol=1e-5)
    # t = 32..48 lies inside every event window (a <= 32, b >= 48): there the class means are flat
    # (cylinder), rising (bell) and falling (funnel)
    slopes = [float(x[y == c][:, 48].mean() - x[y == c][:, 32].mean()) for c in range(3)]
    assert abs(slopes[0]) < 0.15 and slopes[1] > 0.4 and slopes[2] < -0.4
    # before any window (t < 16) every class is noise around a constant level
    for c in range(3):
        assert abs(float(x[y == c][:, :8].mean() - x[y == c][:, 8:16].mean())) < 0.05
    import gin

    gin.bind_parameter("data.cbf.length", 16)
    with pytest.raises(ValueError, match=r"data.cbf.length must be >= 32, but got 16"):
        data.load_datasets("cbf")


def test_shift_consistency_is_measured_with_each_evaluation_and_does_not_change_training(tmp_path):
    bindings = ["train.train.num_epochs = 1", "data.load_datasets.name = 'cbf'", "data.cbf.train_size = 96",
                "data.cbf.test_size = 48", "resnet.Resnet.filters = [4, 8]", "resnet.Resnet.strides = [2, 2]"]
    runs = {}
    for name, extra in (("plain", []), ("measured", ["train.train.shift_consistency = 8"])):
        workdir = str(tmp_path / name)
        assert main_lib.main(["--gin_config=osuleaf.gin", f"--workdir={workdir}"]
                             + [f"--gin_bindings={b}" for b in bindings + extra]) == 0
        with open(os.path.join(workdir, "metrics.json")) as f:
            runs[name] = json.load(f)
    assert "shift_consistency" not in runs["plain"]
    assert 0.0 <= runs["measured"]["shift_consistency"] <= 1.0
    # the shifts come from their own generator: the training and its results are the same
    for key in ("train_loss", "test_loss", "test_accuracy", "pooling"):
        assert runs["plain"][key] == runs["measured"][key]
    with pytest.raises(ValueError, match=r"shift_mode must be 'circular' or 'zeros', but got 'wrap'"):
        from diffstride import train as train_lib

        train_lib.train(load_data_fn=lambda **_: None, model_cls=None, shift_mode="wrap")


# ------------------------------------------------------------------------------------------
# The sweep command

SWEEP_BINDINGS = TINY[:3] + ["resnet.Resnet.filters = [4, 8]", "train.train.num_epochs = 1",
                             "data.load_datasets.train_examples = 128", "data.load_datasets.test_examples = 64"]


def _sweep_args(root, jobs=2, seeds=("1", "2"), poolings=("DiffStride", "None")):
    args = ["--gin_config=mnist.gin", "--poolings", *poolings, "--strides", "1,2", "2,2",
            "--seeds", *seeds, "--root", str(root), "--jobs", str(jobs), "--threads", "1"]
    for b in SWEEP_BINDINGS:
        args += ["--gin_bindings", b]
    return args


def _sweep(args, **kwargs):
    return subprocess.run([sys.executable, "-m", "diffstride.experiments.sweep", *args], capture_output=True, text=True,
                          timeout=600, **kwargs)


@pytest.mark.slow
def test_sweep_runs_the_grid_and_writes_the_report(tmp_path, capsys):
    # the sweep in this process (its cells are real processes, as always); it gives the caller's
    # signal handlers back
    handler = signal.getsignal(signal.SIGTERM)
    assert sweep.main(_sweep_args(tmp_path)) == 0, capsys.readouterr()
    assert signal.getsignal(signal.SIGTERM) is handler
    capsys.readouterr()
    cells = sorted(d for d in os.listdir(tmp_path) if d not in ("report", ".sweep.lock"))
    assert cells == sorted(f"{p}-strides{s}-seed{seed}" for p in ("DiffStride", "strided") for s in ("1_2", "2_2")
                           for seed in (1, 2))
    runs = {c: json.load(open(tmp_path / c / "metrics.json")) for c in cells}
    assert runs["DiffStride-strides2_2-seed2"]["run"]["seed"] == 2
    assert runs["DiffStride-strides2_2-seed2"]["run"]["initial_strides"] == [2, 2]
    assert runs["strided-strides1_2-seed1"]["run"]["pooling"] == "strided conv"
    table = (tmp_path / "report" / "results.md").read_text()
    accs = [100 * runs[f"DiffStride-strides1_2-seed{s}"]["test_accuracy"] for s in (1, 2)]
    assert f"| DiffStride | {np.mean(accs):.2f} ± {np.std(accs, ddof=1):.2f} (2 runs)" in table
    drop = np.mean([100 * runs[f"DiffStride-strides2_2-seed{s}"]["test_accuracy"] for s in (1, 2)]) - np.mean(accs)
    assert "drop from strides 1, 2" in table and f"| DiffStride | {drop:+.2f} pp" in table
    assert "Interaction, the strided convolutions' drop minus DiffStride's" in table
    assert "stem_pooling (" in table  # learned strides
    png = (tmp_path / "report" / "accuracy_vs_macs.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # a second invocation finds everything done and only rewrites the report
    assert sweep.main(_sweep_args(tmp_path)) == 0
    assert "8 already finished, 0 to run" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_sweep_resumes_where_it_stopped(tmp_path, sig):
    proc = subprocess.Popen([sys.executable, "-m", "diffstride.experiments.sweep", *_sweep_args(tmp_path, jobs=1, seeds=("1",), poolings=("None",))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    from diffstride.train.workdir import held_by

    for line in proc.stdout:
        if "start strided-strides2_2-seed1" in line:  # the first cell finished, the second started
            break
    _until(lambda: held_by(str(tmp_path / "strided-strides2_2-seed1")))  # and is training
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "run the same command again to resume" in err
    finished = sorted(d for d in os.listdir(tmp_path) if os.path.exists(tmp_path / d / "metrics.json"))
    assert finished[0] == "strided-strides1_2-seed1"
    if len(finished) == 1:  # the running cell was stopped: it ended as an interrupted run, its last line logged
        assert "interrupted" in (tmp_path / "strided-strides2_2-seed1" / "log.txt").read_text()
    # (on a fast machine the tiny second cell may finish within the sweep's grace before it stops
    # its cells; the kill-the-parent test below checks the interrupted line on a longer run)
    stamps = {d: os.path.getmtime(tmp_path / d / "metrics.json") for d in finished}
    result = _sweep(_sweep_args(tmp_path, jobs=1, seeds=("1",), poolings=("None",)))
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{len(finished)} already finished, {2 - len(finished)} to run" in result.stdout
    assert all(os.path.getmtime(tmp_path / d / "metrics.json") == t for d, t in stamps.items())  # not rerun
    assert all(os.path.exists(tmp_path / d / "metrics.json") for d in os.listdir(tmp_path)
               if d not in ("report", ".sweep.lock"))


def test_sweep_refuses_bad_grids_before_running_anything(tmp_path, capsys):
    assert sweep.main(["--gin_config=mnist.gin", "--poolings", "MaxPool", "--strides", "1,2", "--root", str(tmp_path)]) == 2
    assert "unknown pooling 'MaxPool'" in capsys.readouterr().err
    assert sweep.main(["--gin_config=mnist.gin", "--strides", "1,0.5", "--root", str(tmp_path)]) == 2
    assert "strides must be numbers >= 1 separated by commas, like 1,2,2, but got '1,0.5'" in capsys.readouterr().err
    assert sweep.main(["--gin_config=nope.gin", "--strides", "1,2", "--root", str(tmp_path)]) == 2
    assert "gin config 'nope.gin' not found" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------------
# Sweeps as safe as single runs


def _one_cell_args(root, epochs=1, extra=()):
    args = ["--gin_config=mnist.gin", "--poolings", "DiffStride", "--strides", "1,2", "--seeds", "1",
            "--root", str(root), "--jobs", "1", "--threads", "1"]
    for b in SWEEP_BINDINGS + [f"train.train.num_epochs = {epochs}"] + list(extra):
        args += ["--gin_bindings", b]
    return args


@pytest.mark.slow
def test_a_second_sweep_on_the_same_root_stops_at_once_and_damaged_records_are_rebuilt(tmp_path, capsys):
    from diffstride.train.workdir import held_by

    first = subprocess.Popen([sys.executable, "-m", "diffstride.experiments.sweep", *_one_cell_args(tmp_path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    holder = _until(lambda: os.path.exists(tmp_path) and held_by(str(tmp_path), ".sweep.lock"))
    assert sweep.main(_one_cell_args(tmp_path)) == 2
    err = capsys.readouterr().err
    assert f"is in use by another sweep (PID {first.pid} on" in err and "choose another --root" in err
    assert holder.startswith(f"PID {first.pid}")
    out, _ = first.communicate(timeout=300)
    assert first.returncode == 0 and "1/1 done" in out
    cell = tmp_path / "DiffStride-strides1_2-seed1"
    original = json.loads((cell / "metrics.json").read_text())
    assert len((cell / "starts.jsonl").read_text().splitlines()) == 1  # the second sweep started nothing

    # a finished cell whose metrics.json holds garbage is not finished: the cell runs again, and
    # the run, finding its work done, rebuilds the records from its newest checkpoint
    (cell / "metrics.json").write_text("{garbage")
    (cell / "history.json").write_text('[{"epoch": 1, "trunc')
    assert sweep.main(_one_cell_args(tmp_path)) == 0
    capsys.readouterr()
    rebuilt = json.loads((cell / "metrics.json").read_text())
    assert rebuilt == original  # seconds included: the run's own time, kept in its checkpoint
    assert json.loads((cell / "history.json").read_text())[-1]["test_accuracy"] == original["test_accuracy"]
    log = (cell / "log.txt").read_text()
    assert "rebuilt" in log and "metrics.json" in log and "history.json" in log
    assert (tmp_path / "report" / "results.md").exists()
    # the report leaves a damaged run out with a line, instead of dying
    (cell / "metrics.json").write_text("not json")
    lines = []
    with pytest.raises(ValueError, match="none of the 1 work directories holds a finished run"):
        report.write_report([str(cell)], str(tmp_path / "r2"), log=lines.append)
    assert "left out" in lines[0] and "is not valid JSON" in lines[0]


def test_a_misspelt_binding_stops_the_sweep_before_any_cell_naming_it_once(tmp_path, capsys):
    root = tmp_path / "root"
    assert sweep.main(_one_cell_args(root, extra=["train.train.num_epoch = 3"]) + ["--seeds", "1", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("doesn't have a parameter named 'num_epoch'") == 1 and "(every cell)" in err
    assert "no cell was started" in err and not root.exists()


@pytest.mark.slow
def test_killing_only_the_sweep_kills_its_cell_which_logs_its_end_and_a_rerun_finishes(tmp_path):
    from diffstride.train.workdir import held_by

    args = _one_cell_args(tmp_path, epochs=8)
    parent = subprocess.Popen([sys.executable, "-m", "diffstride.experiments.sweep", *args],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cell = tmp_path / "DiffStride-strides1_2-seed1"
    _until(lambda: cell.exists() and held_by(str(cell)))  # the cell's run holds its lock
    parent.kill()
    parent.wait()
    _until(lambda: held_by(str(cell)) is None, seconds=60)  # the child died with its parent
    assert "interrupted" in (cell / "log.txt").read_text()
    result = _sweep(args)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "FAILED" not in result.stdout and json.loads((cell / "metrics.json").read_text())["epoch"] == 8


def test_a_sweep_takes_budgets_for_its_diffstride_cells():
    from diffstride.experiments import sweep

    cells = sweep.grid(["DiffStride", "None"], ["1,2,2"], [1], budgets=[sweep._budget_arg("22.9M"), 5_700_000])
    names = [c.name for c in cells]
    assert names == ["DiffStride-strides1_2_2-seed1-budget22900000", "DiffStride-strides1_2_2-seed1-budget5700000",
                     "strided-strides1_2_2-seed1"]
    assert "train.train.budget_macs = 5700000" in cells[1].bindings("resnet.Resnet.strides")
    assert sweep._budget_arg("5.7e6") == 5_700_000 and sweep._budget_arg("1650000") == 1_650_000
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="like 22.9M"):
        sweep._budget_arg("lots")
