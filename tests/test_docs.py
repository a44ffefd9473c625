"""Every docstring example of the package runs and prints what it shows (doctest)."""
import doctest
import importlib
import inspect
import pkgutil
import re

import pytest
import torch

import diffstride

# every module of the package, found by walking it (a new module's examples run without a list to
# update); the old diffstride.examples.* names are aliases of these and are left out
MODULES = sorted(m.name for m in pkgutil.walk_packages(diffstride.__path__, "diffstride.")
                 if not m.name.startswith("diffstride.examples.") and m.name != "diffstride.timm")
TRAINING = ("diffstride.data", "diffstride.train", "diffstride.experiments")  # need the train extra (Gin)


def _run(name: str) -> doctest.TestResults:
    if name.startswith(TRAINING):
        pytest.importorskip("gin")
    module = importlib.import_module(name)
    torch.manual_seed(0)
    return doctest.testmod(module, extraglobs={"torch": torch}, report=False,
                           optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = _run(name)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples of {name} failed"


@pytest.mark.parametrize("name", MODULES)
def test_every_example_written_in_a_module_is_run(name):
    """doctest finds only the docstrings of objects defined in the module itself: an example on
    an object it cannot reach (a re-export, a nested helper) would pass by never running. The
    number of examples run must equal the number of ``>>>`` lines in the module's source."""
    source = inspect.getsource(importlib.import_module(name))
    written = len(re.findall(r"^\s*>>> (?!#)", source, flags=re.M))  # (a comment alone is not an example)
    assert _run(name).attempted == written, f"{name}: {written} examples written"


def test_the_public_layers_and_converters_show_examples():
    """The modules a user meets first carry runnable examples."""
    for name in ("diffstride.pooling", "diffstride.convert", "diffstride.resnet", "diffstride.complexity"):
        assert _run(name).attempted >= 3, name
