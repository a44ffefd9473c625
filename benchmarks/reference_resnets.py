"""How close our ResNets come to the reference's Keras ResNets on their own weights (a
measurement; tests/test_resnet_reference.py holds the bound, 1e-4).

    python benchmarks/reference_resnets.py

Prints, per golden model (tests/data/tf_resnet_reference.*) and mode, max |ours - ref| / max |ref|.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchmarks.common import machine_header  # noqa: E402
from diffstride import keras_weights  # noqa: E402
from tests import test_resnet_reference as golden  # noqa: E402


def main() -> None:
    print(machine_header(torch.device("cpu"), threads=torch.get_num_threads()))
    print("| model | mode | relative error |\n|---|---|---:|")
    worst = 0.0
    for key in golden.MODELS:
        for mode in ("inference", "training"):
            model = golden._build(key)
            keras_weights.load_reference_weights(model, golden._reference_weights(key))
            model.train(mode == "training")
            with torch.no_grad():
                error = golden.rel_err(model(golden._input(key)), golden.ARRAYS[f"{key}/y_{mode}"])
            worst = max(worst, error)
            print(f"| {key} | {mode} | {error:.2e} |")
    print(f"worst: {worst:.2e}")


if __name__ == "__main__":
    main()
