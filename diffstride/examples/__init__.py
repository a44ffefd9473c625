"""The reference's example, as its users know it: the packaged Gin configs (``configs/``) and the
command ``python3 -m diffstride.examples.main``.

The code moved to :mod:`diffstride.data`, :mod:`diffstride.train` and
:mod:`diffstride.experiments`; the old module names (``diffstride.examples.data``,
``diffstride.examples.train``, ``diffstride.examples.external_configurables``, ...) are aliases
of the new modules, so that configs with ``import diffstride.examples.train`` keep working.
"""
import os

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
