"""Moved to :mod:`diffstride.data.batch_ops`; this name stays for the configs and code written before."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module("diffstride.data.batch_ops")
