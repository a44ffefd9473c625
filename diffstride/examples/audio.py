"""Moved to :mod:`diffstride.data.audio`; this name stays for the configs and code written before."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module("diffstride.data.audio")
