"""Moved to :mod:`diffstride.experiments.sweep`; this name stays for the configs and code written before."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module("diffstride.experiments.sweep")
