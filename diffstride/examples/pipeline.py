"""Split into :mod:`diffstride.data.transforms`, :mod:`diffstride.data.loader` and
:mod:`diffstride.data.files`; this name stays for code written before, with their public names."""
from diffstride.data.files import *  # noqa: F401,F403
from diffstride.data.loader import *  # noqa: F401,F403
from diffstride.data.transforms import *  # noqa: F401,F403
