"""benchmarks/gpu.py's dry run: the GPU benchmark's code on the CPU at toy sizes (CI has no GPU;
the figures it prints there mean nothing, the run proves the script works)."""
import pytest

from benchmarks import gpu


@pytest.mark.slow
def test_the_gpu_benchmark_runs_dry_on_the_cpu(capsys):
    from diffstride import settings

    before = settings.current()
    gpu.main(["--dry-run"])
    assert settings.current() == before  # its settings do not outlive it
    out = capsys.readouterr().out
    assert "## Layers" in out and out.count("## Training step") == 3  # CIFAR and 224-style eager, CIFAR compiled
    for name in ("DiffStride oracle", "FixedSpectralPooling oracle", "| strided |"):
        assert name in out
    # the operation counts it prints: DiffStride's call within the limit, the transcription far above
    row = next(line for line in out.splitlines() if line.startswith("| 2x4x16x16 | float32"))
    ops = [int(v) for v in row.split("|")[8].split("/")]
    assert ops[0] <= 40 and ops[2] > 2 * ops[0]
