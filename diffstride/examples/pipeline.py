"""Moved to :mod:`diffstride.data.pipeline`; this name stays for the configs and code written before."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module("diffstride.data.pipeline")
