"""Reports on real runs (tables and plots), the complexity weight in training, and the report's statistics."""
import json
import math
import os

import numpy as np
import pytest

from diffstride.train import main as main_lib
from diffstride.experiments import report, tables

from .conftest import TINY


# ------------------------------------------------------------------------------------------
# the complexity weight in training, and reports


def _train(workdir, extra, epochs=2, seed=1):
    args = ["--gin_config=mnist.gin", f"--workdir={workdir}", f"--seed={seed}",
            f"--gin_bindings=train.train.num_epochs = {epochs}"] + [f"--gin_bindings={b}" for b in TINY + list(extra)]
    assert main_lib.main(args) == 0
    with open(os.path.join(workdir, "metrics.json")) as f:
        return json.load(f)


@pytest.mark.slow
def test_complexity_weight_ends_with_larger_strides_and_fewer_flops(tmp_path):
    plain = _train(str(tmp_path / "w0"), [])
    costly = _train(str(tmp_path / "w1"), ["train.train.complexity_weight = 2.0"])
    product = lambda m: [s[0] * s[-1] for s in (v["strides"] for v in m["pooling"].values())]  # noqa: E731
    assert all(c > p for c, p in zip(product(costly), product(plain)))
    assert costly["flops"] < plain["flops"] and costly["complexity"] < plain["complexity"]
    assert costly["run"]["complexity_weight"] == 2.0


@pytest.mark.slow
def test_report_table_and_plots_from_real_runs(tmp_path, capsys):
    runs = [str(tmp_path / f"diff{seed}") for seed in (1, 2)] + [str(tmp_path / "fixed")]
    accs = [_train(runs[0], [], seed=1)["test_accuracy"], _train(runs[1], [], seed=2)["test_accuracy"]]
    _train(runs[2], ["resnet.Resnet.pooling_cls = @pooling.FixedSpectralPooling"], seed=1)
    out = tmp_path / "report"
    assert report.main(runs + ["--out", str(out)]) == 0
    table = (out / "results.md").read_text()
    assert "| pooling | mnist, strides 1, 2 |" in table
    mean = 100 * sum(accs) / 2
    std = 100 * abs(accs[0] - accs[1]) / 2 ** 0.5
    assert f"| DiffStride | {mean:.2f} ± {std:.2f} (2 runs) |" in table
    assert "| FixedSpectralPooling |" in table and "(1 run)" in table
    for name in ("strides.png", "accuracy.png", "output_sizes.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert report.main([str(tmp_path), "--out", str(out)]) == 2
    assert "is not a finished training run" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------
# Report statistics


def test_contrast_interval_against_scipy_welch():
    stats = pytest.importorskip("scipy.stats")
    a, b = [94.1, 93.2, 95.0], [88.0, 90.5, 86.9, 89.1]
    estimate, half = report.contrast([a, b], [1, -1])
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert estimate == pytest.approx(np.mean(a) - np.mean(b))
    exact = (ci.high - ci.low) / 2
    # our t quantile rounds the Welch degrees of freedom down: never narrower, at most a little wider
    assert exact <= half <= 1.15 * exact


def test_contrast_needs_two_values_per_group_for_an_interval():
    estimate, half = report.contrast([[90.0], [80.0, 81.0]], [1, -1])
    assert estimate == pytest.approx(9.5) and math.isnan(half)
    assert report.t975(4) == 2.776 and report.t975(4.9) == 2.776 and report.t975(200) == 1.96


# ------------------------------------------------------------------------------------------
# Accuracy against compute, shift consistency


def _record(pooling, strides, seed, acc, mmacs, shift=None, weight=0.0):
    metrics = {"test_accuracy": acc, "flops": mmacs * 1e6, "pooling": {}}
    if shift is not None:
        metrics["shift_consistency"] = shift
    label = pooling + (f" (complexity weight {weight:g})" if weight else "")
    return {"workdir": f"{label}-{strides}-{seed}", "metrics": metrics, "history": [], "dataset": "toy",
            "base_pooling": pooling, "complexity_weight": weight, "pooling": label, "strides": strides, "seed": seed}


def test_pareto_fronts_and_the_comparison_at_equal_compute_follow_the_definitions():
    runs = [_record("DiffStride", "1, 2", s, a, m) for s, a, m in ((1, 0.95, 40), (2, 0.97, 42))]
    runs += [_record("DiffStride", "1, 2", s, a, m, weight=1.0) for s, a, m in ((1, 0.93, 10), (2, 0.95, 12))]
    runs += [_record("strided conv", "1, 2", s, a, 20) for s, a in ((1, 0.90), (2, 0.92))]
    runs += [_record("strided conv", "2, 2", s, a, 5) for s, a in ((1, 0.80), (2, 0.84))]
    runs += [_record("strided conv", "4, 2", s, a, 30) for s, a in ((1, 0.85), (2, 0.87))]  # dominated
    configs = tables.configurations(runs, "toy")
    front = report.pareto_front([c for c in configs if c["method"] == "strided conv"])
    assert [(c["label"], c["mmacs"], round(c["acc"], 6)) for c in front] == [
        ("strided conv, strides 2, 2", 5, 82.0), ("strided conv, strides 1, 2", 20, 91.0)]
    text = report.front_analysis(runs)
    # strided (1, 2) at 20 M: DiffStride's best at <= 20 M is the weighted one at 11 M, 94% mean
    estimate, half = report.contrast([[93.0, 95.0], [90.0, 92.0]], [1, -1])
    assert estimate == pytest.approx(3.0)
    assert (f"| strided conv | strided conv, strides 1, 2 | 20.0 | DiffStride (complexity weight 1), strides 1, 2 | "
            f"11.0 | +3.00 pp [{3 - half:+.2f}, {3 + half:+.2f}] |") in text
    assert "| strided conv | strided conv, strides 2, 2 | 5.0 | none (DiffStride's runs all cost more) | | |" in text
    # the other way: DiffStride at 41 M against the strided network's best at <= 41 M (1, 2: 91%)
    assert "| DiffStride, strides 1, 2 | 41.0 | strided conv | strided conv, strides 1, 2 | 20.0 | +5.00 pp" in text
    assert "strides 4, 2 |" not in text.split("And the other way")[0]  # dominated: not on the front


def test_shift_consistency_table_gives_t_intervals_and_is_empty_without_measurements():
    runs = [_record("DiffStride", "1, 2", s, 0.9, 10, shift=v) for s, v in ((1, 0.90), (2, 0.94), (3, 0.92))]
    table = report.shift_consistency_table(runs)
    half = 4.303 * 2.0 / math.sqrt(3)  # t(2) * sd / sqrt(n), in percent
    assert f"| toy | DiffStride | 1, 2 | 3 | 92.00 [{92 - half:.2f}, {92 + half:.2f}] | 90.00 |" in table
    assert report.shift_consistency_table([_record("DiffStride", "1, 2", 1, 0.9, 10)]) == ""


def _fake_run(root, name, pooling, accuracy, flops, shift, budget=None, smoothness=None, seed=1, strides=(1, 2, 2)):
    workdir = root / name
    workdir.mkdir()
    metrics = {"test_accuracy": accuracy, "test_loss": 0.1, "train_accuracy": accuracy, "train_loss": 0.1,
               "flops": flops, "shift_consistency": shift,
               "pooling": {}, "run": {"dataset": "translated_mnist", "pooling": pooling, "seed": seed,
                                      "initial_strides": list(strides), "complexity_weight": 0.0}}
    if budget is not None:
        metrics["budget_macs"] = budget
    (workdir / "metrics.json").write_text(json.dumps(metrics))
    (workdir / "history.json").write_text(json.dumps([dict(metrics, epoch=1, step=10)]))
    if smoothness is not None:
        (workdir / "operative_config.gin").write_text(f"DiffStride.cropping = True\nDiffStride.smoothness_factor = {smoothness}\n")
    return str(workdir)


def test_the_budget_table_compares_each_budget_with_the_fixed_networks_of_the_same_macs(tmp_path):
    """Budgeted DiffStride runs (two R) against strided runs whose multiply-adds equal the budget
    (within 2%), with the differences and their Welch intervals computed from the values written."""
    runs = [_fake_run(tmp_path, f"d4-{i}", "DiffStride", acc, 5.70e6, sh, budget=5_730_000, smoothness=4.0, seed=i)
            for i, (acc, sh) in enumerate([(0.95, 0.96), (0.97, 0.98)], 1)]
    runs += [_fake_run(tmp_path, f"d1-{i}", "DiffStride", acc, 5.72e6, 0.97, budget=5_730_000, smoothness=1.0, seed=i)
             for i, acc in enumerate([0.93, 0.94], 1)]
    runs += [_fake_run(tmp_path, f"s-{i}", "None", acc, 5.73e6, sh, seed=i, strides=(2, 2, 2))
             for i, (acc, sh) in enumerate([(0.90, 0.95), (0.94, 0.97)], 1)]
    runs.append(_fake_run(tmp_path, "far", "None", 0.99, 22.9e6, 0.99, strides=(1, 2, 2)))  # another level
    loaded = [report.load_run(r) for r in runs]
    table = report.budget_table(loaded)
    rows = [line for line in table.splitlines() if line.startswith("| 5.73 |")]
    assert len(rows) == 2  # DiffStride R=1 and R=4, each against the one strided configuration of 5.73 M
    r4 = next(row for row in rows if "DiffStride R=4" in row)
    assert "| 2 | 5.70 | 96.00 ± 1.41 | 97.00 ± 1.41 | strided (2, 2, 2), 2 runs |" in r4
    estimate, half = report.contrast([[95.0, 97.0], [90.0, 94.0]], [1, -1])
    assert f"{estimate:+.2f} pp [{estimate - half:+.2f}, {estimate + half:+.2f}]" in r4 and estimate == 4.0
    assert "22.9" not in table  # the strided (1, 2, 2) runs have no budget run of their MACs
    out = tmp_path / "report"
    assert report.main(runs + ["--out", str(out)]) == 0
    assert "By compute budget" in (out / "results.md").read_text()
