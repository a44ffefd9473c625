"""diffstride.train.logs: the epoch line, the pooling report, starts.jsonl, TensorBoard and the
records a start writes (read back from the files, not from the code that wrote them)."""
import json
import os

import gin
import pytest
import torch
from torch import nn

from diffstride import pooling
from diffstride.train import logs

METRICS = {
    "epoch": 3, "train_loss": 0.51234, "train_accuracy": 0.8125, "test_loss": 0.6, "test_accuracy": 0.79,
    "learning_rate": 0.1, "images_per_second": 1234.4, "steps_per_second": 9.6, "flops": 13_100_000,
    "complexity": 2.5, "pooling": {"pool": {"strides": [1.2345, 2.0], "output_size": [26, 16]}},
}


def test_the_epoch_line_shows_every_number_once_with_its_name():
    assert logs.epoch_line(METRICS, 10) == (
        "epoch   3/10  loss 0.5123  acc 0.8125  test_loss 0.6000  test_acc 0.7900  lr 0.1  1234 img/s  MMACs 13.1"
        "  strides pool=(1.23,2.00)")


def test_the_epoch_line_adds_the_budget_and_shift_consistency_when_measured():
    line = logs.epoch_line(dict(METRICS, budget_macs=14_200_000, shift_consistency=0.91234, pooling={}), 10)
    assert line.endswith("MMACs 13.1/14.2  shift_cons 0.9123")


def _net():
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), pooling.DiffStride(strides=(1.5, 2.0)),
                         nn.Conv2d(2, 2, 3, padding=1), pooling.SpatialPooling(strides=2))


def test_the_pooling_report_has_each_layer_with_the_output_size_of_the_last_forward():
    net = _net()
    sizes, handles = logs.track_output_sizes(net)
    assert logs.pooling_report(net, sizes) == {"1": {"strides": [1.5, 2.0], "output_size": []},
                                               "3": {"strides": [2.0, 2.0], "output_size": []}}
    with torch.no_grad():
        hidden = net[1](net[0](torch.zeros(1, 1, 30, 20)))
        out = net(torch.zeros(1, 1, 30, 20))
    report = logs.pooling_report(net, sizes)
    assert report["1"]["output_size"] == list(hidden.shape[2:])
    assert report["3"]["output_size"] == list(out.shape[2:]) == [-(-n // 2) for n in hidden.shape[2:]]
    for handle in handles:
        handle.remove()
    net(torch.zeros(1, 1, 60, 40))
    assert logs.pooling_report(net, sizes)["3"]["output_size"] == list(out.shape[2:])  # hooks removed: not updated


def test_append_start_adds_one_json_line_per_start(tmp_path):
    logs.append_start(str(tmp_path), {"epoch": 0, "resumed_from": None})
    logs.append_start(str(tmp_path), {"epoch": 2, "resumed_from": "ckpt-0002.pt"})
    lines = (tmp_path / "starts.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"epoch": 0, "resumed_from": None},
                                                     {"epoch": 2, "resumed_from": "ckpt-0002.pt"}]


def _scalars(workdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(workdir)
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.fixture
def bound_config():
    gin.clear_config()
    gin.parse_config("tf.keras.optimizers.SGD.momentum = 0.9")
    yield
    gin.clear_config()


def test_a_recorder_writes_the_config_once_a_start_line_each_start_and_tensorboard(tmp_path, bound_config):
    import diffstride.train.configurables  # noqa: F401  (the Gin name bound above)

    workdir = str(tmp_path)
    said = []
    with logs.RunRecorder(workdir, said.append, {"epoch": 0, "run_id": "a"}, step=0) as recorder:
        recorder.epoch(METRICS, 10, step=40)
        recorder.records([METRICS])
    config = (tmp_path / "config.gin").read_text()
    assert "momentum = 0.9" in config
    assert said == [logs.epoch_line(METRICS, 10)]
    assert json.loads((tmp_path / "history.json").read_text()) == [METRICS]
    scalars = _scalars(workdir)
    assert scalars["test/accuracy"] == [(40, pytest.approx(0.79))]
    assert scalars["pooling/pool/stride_h"] == [(40, pytest.approx(1.2345))]
    assert scalars["pooling/pool/output_w"] == [(40, 16.0)]
    assert scalars["complexity/flops"] == [(40, 13_100_000.0)]

    gin.clear_config()  # a second start with other bindings keeps the first start's config.gin
    with logs.RunRecorder(workdir, said.append, {"epoch": 3, "run_id": "a"}, step=40):
        pass
    assert (tmp_path / "config.gin").read_text() == config
    starts = [json.loads(line) for line in (tmp_path / "starts.jsonl").read_text().splitlines()]
    assert [(s["epoch"], s["run_id"], s["pid"]) for s in starts] == [(0, "a", os.getpid()), (3, "a", os.getpid())]


def test_without_a_work_directory_a_recorder_only_prints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    said = []
    with logs.RunRecorder(None, said.append, {"epoch": 0}, step=0) as recorder:
        recorder.epoch(METRICS, 10, step=1)
        recorder.records([METRICS])
    assert said == [logs.epoch_line(METRICS, 10)] and os.listdir(tmp_path) == []
