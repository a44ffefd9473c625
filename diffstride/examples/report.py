"""Moved to :mod:`diffstride.experiments.report`; this name stays for the configs and code written before."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module("diffstride.experiments.report")
