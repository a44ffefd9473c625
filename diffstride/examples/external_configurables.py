"""Moved to :mod:`diffstride.train.configurables`; this name stays for the configs and code written before."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module("diffstride.train.configurables")
