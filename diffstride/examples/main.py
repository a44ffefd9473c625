"""``python3 -m diffstride.examples.main``: the reference's command, kept; the code is
:mod:`diffstride.train.main` (also ``diffstride-train``)."""
import importlib
import sys

if __name__ == "__main__":
    importlib.import_module("diffstride.train.main").cli()
else:
    sys.modules[__name__] = importlib.import_module("diffstride.train.main")
