"""Every docstring example of the package runs and prints what it shows (doctest)."""
import doctest
import importlib

import pytest
import torch

MODULES = ["diffstride.pooling", "diffstride.functional", "diffstride._plans", "diffstride._kernels", "diffstride.resnet", "diffstride.keras_weights",
           "diffstride.complexity", "diffstride.metrics", "diffstride.settings", "diffstride.convert"]
EXAMPLES = ["diffstride.data", "diffstride.experiments.report"]  # the training system: needs the train extra


@pytest.mark.parametrize("name", MODULES + EXAMPLES)
def test_docstring_examples(name):
    if name in EXAMPLES:
        pytest.importorskip("gin")
    module = importlib.import_module(name)
    torch.manual_seed(0)
    result = doctest.testmod(module, extraglobs={"torch": torch}, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples of {name} failed"


def test_the_package_has_docstring_examples_to_run():
    attempted = sum(doctest.testmod(importlib.import_module(n), extraglobs={"torch": torch}, report=False).attempted
                    for n in ("diffstride.pooling", "diffstride.resnet"))
    assert attempted >= 10
