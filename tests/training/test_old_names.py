"""The names from before the training system became subpackages keep working: the modules
``diffstride.examples.*`` (aliases), a config written with them (``import diffstride.examples.train``),
and ``python3 -m diffstride.examples.main``."""
import importlib
import json
import os
import subprocess
import sys

import pytest

from diffstride.train import main as main_lib

from .conftest import TINY, _metrics

ALIASES = {
    "data": "diffstride.data", "sources": "diffstride.data.sources", "audio": "diffstride.data.audio",
    "batch_ops": "diffstride.data.batch_ops", "randomness": "diffstride.data.randomness",
    "train": "diffstride.train", "run_state": "diffstride.train.run_state", "checkpoint": "diffstride.train.checkpoint",
    "workdir": "diffstride.train.workdir", "distributed": "diffstride.train.distributed", "logs": "diffstride.train.logs",
    "optim": "diffstride.train.optim", "models": "diffstride.train.models",
    "external_configurables": "diffstride.train.configurables", "main": "diffstride.train.main",
    "sweep": "diffstride.experiments.sweep", "report": "diffstride.experiments.report",
}


@pytest.mark.parametrize("old, new", sorted(ALIASES.items()))
def test_each_old_module_name_is_the_new_module(old, new):
    assert importlib.import_module(f"diffstride.examples.{old}") is importlib.import_module(new)


def test_the_old_pipeline_module_still_offers_its_public_names():
    pipeline = importlib.import_module("diffstride.examples.pipeline")
    from diffstride.data import files, loader, transforms

    for name in ("ImageTransform", "AudioTransform", "ExampleDataset", "EpochBatchSampler", "ShardStream",
                 "LoaderTrainBatches", "LoaderTestBatches", "default_num_workers", "is_file_source"):
        assert getattr(pipeline, name) is (getattr(transforms, name, None) or getattr(loader, name, None)
                                           or getattr(files, name))


OLD_CONFIG = """
import diffstride.examples.external_configurables
import diffstride.examples.data
import diffstride.examples.train
import diffstride.resnet
import diffstride.pooling

include 'diffstride/examples/configs/mnist.gin'

data.load_datasets.augment_fn = @data.augment
train.train.num_epochs = 1
"""


def test_a_config_written_with_the_old_module_names_trains(tmp_path):
    config = tmp_path / "old.gin"
    config.write_text(OLD_CONFIG)
    workdir = tmp_path / "run"
    args = [f"--gin_config={config}", f"--workdir={workdir}"] + [f"--gin_bindings={b}" for b in TINY]
    assert main_lib.main(args) == 0
    metrics = _metrics(workdir)
    assert metrics["num_epochs"] == 1 and metrics["run"]["dataset"] == "mnist"
    operative = (workdir / "operative_config.gin").read_text()
    assert "augment_fn = @data.augment" in operative  # the old config's binding reached the new module


def test_python_m_diffstride_examples_main_is_the_command(tmp_path):
    workdir = tmp_path / "run"
    args = ["--gin_config=mnist.gin", f"--workdir={workdir}", "--gin_bindings=train.train.num_epochs = 1"]
    done = subprocess.run([sys.executable, "-m", "diffstride.examples.main", *args,
                           *[f"--gin_bindings={b}" for b in TINY]],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "final test accuracy" in done.stdout
    assert json.loads((workdir / "metrics.json").read_text())["num_epochs"] == 1


@pytest.mark.parametrize("config", main_lib.packaged_configs())
def test_every_packaged_config_parses_and_names_the_loop_and_its_data(config):
    import argparse

    import gin

    main_lib.configure(argparse.Namespace(gin_config=[config], gin_bindings=[]))
    assert gin.query_parameter("train.train.load_data_fn").selector == "data.load_datasets"
    assert isinstance(gin.query_parameter("data.load_datasets.name"), str)
    assert gin.query_parameter("train.train.model_cls") is not None
