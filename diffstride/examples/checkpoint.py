"""Moved to :mod:`diffstride.train.checkpoint`; this name stays for the configs and code written before."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module("diffstride.train.checkpoint")
