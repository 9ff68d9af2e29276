"""Compatibility module: the Python client now lives in the ``dino_serve`` package (this
folder, client/python/dino_serve). ``from dino_client import DinoClient`` keeps working and
gives the same objects as ``from dino_serve import DinoClient``; new code should import
dino_serve."""
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
if _here not in sys.path:
    sys.path.insert(0, _here)

from dino_serve import *  # noqa: E402,F401,F403
from dino_serve import __all__  # noqa: E402,F401
