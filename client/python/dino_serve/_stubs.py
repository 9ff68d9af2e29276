"""Locating and importing the gRPC code generated from proto/dino/v1 at build time.

The build writes it into the build tree (``build/python``: ``dino/v1/surrogate_pb2.py``,
``training_pb2.py``, their ``_grpc`` modules and ``grpc/health/v1/health_pb2.py``, without
``__init__.py`` files: they are found as namespace packages). :func:`load_stubs` finds that
folder through, in order: its ``gen_dir`` argument, the ``DINO_PYTHON_GEN_DIR`` environment
variable, then ``<repository>/build/python``.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types

__all__ = ["load_stubs", "default_gen_dir", "prior_stubs", "training_stubs"]

_stubs: types.SimpleNamespace | None = None


def default_gen_dir() -> str:
    """``$DINO_PYTHON_GEN_DIR`` if set, else ``<repository>/build/python``."""
    env = os.environ.get("DINO_PYTHON_GEN_DIR")
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.normpath(os.path.join(here, "..", "..", "..", "build", "python"))


def load_stubs(gen_dir: str | None = None) -> types.SimpleNamespace:
    """Imports the generated modules once and returns them as a namespace with the attributes
    ``pb`` (surrogate_pb2), ``pb_grpc`` (surrogate_pb2_grpc), ``health_pb`` (health_pb2) and,
    when the build generated them, ``tpb`` (training_pb2), ``tpb_grpc``
    (training_pb2_grpc), ``ppb`` (prior_pb2) and ``ppb_grpc`` (prior_pb2_grpc), else None. Later calls return the first result whatever their
    ``gen_dir``. ImportError, saying what to do, when the generated code is not found."""
    global _stubs
    if _stubs is not None:
        return _stubs
    gen_dir = os.path.abspath(gen_dir or default_gen_dir())
    surrogate = os.path.join(gen_dir, "dino", "v1", "surrogate_pb2.py")
    if not os.path.isfile(surrogate):
        raise ImportError(
            "cannot find the generated gRPC code %s: build the project (it is generated into "
            "build/python) and pass gen_dir= or set DINO_PYTHON_GEN_DIR to that folder"
            % surrogate)
    if gen_dir not in sys.path:
        sys.path.insert(0, gen_dir)
    pb = importlib.import_module("dino.v1.surrogate_pb2")
    pb_grpc = importlib.import_module("dino.v1.surrogate_pb2_grpc")
    health_pb = _load_health(gen_dir)
    tpb = tpb_grpc = None
    if os.path.isfile(os.path.join(gen_dir, "dino", "v1", "training_pb2.py")):
        tpb = importlib.import_module("dino.v1.training_pb2")
        tpb_grpc = importlib.import_module("dino.v1.training_pb2_grpc")
    ppb = ppb_grpc = None
    if os.path.isfile(os.path.join(gen_dir, "dino", "v1", "prior_pb2.py")):
        ppb = importlib.import_module("dino.v1.prior_pb2")
        ppb_grpc = importlib.import_module("dino.v1.prior_pb2_grpc")
    _stubs = types.SimpleNamespace(pb=pb, pb_grpc=pb_grpc, health_pb=health_pb, tpb=tpb,
                                   tpb_grpc=tpb_grpc, ppb=ppb, ppb_grpc=ppb_grpc,
                                   gen_dir=gen_dir)
    return _stubs


def _stubs_with(attribute: str, generated_file: str) -> types.SimpleNamespace:
    """load_stubs(), or ImportError when the build did not generate ``generated_file``."""
    stubs = load_stubs()
    if getattr(stubs, attribute) is None:
        raise ImportError("the generated %s is missing: rebuild the project (it is generated "
                          "next to surrogate_pb2.py)" % generated_file)
    return stubs


def training_stubs() -> types.SimpleNamespace:
    """load_stubs(), or ImportError when the build did not generate training_pb2.py."""
    return _stubs_with("tpb", "training_pb2.py")


def prior_stubs() -> types.SimpleNamespace:
    """load_stubs(), or ImportError when the build did not generate prior_pb2.py."""
    return _stubs_with("ppb", "prior_pb2.py")


def _load_health(gen_dir: str) -> types.ModuleType:
    # The health messages' package is "grpc.health.v1", but "grpc" is grpcio's own package,
    # so the generated file cannot be imported under its package path. Use grpcio-health-
    # checking's copy when installed (registering the same proto twice would clash), else load
    # the generated file under a private module name.
    try:
        return importlib.import_module("grpc_health.v1.health_pb2")
    except ImportError:
        pass
    path = os.path.join(gen_dir, "grpc", "health", "v1", "health_pb2.py")
    spec = importlib.util.spec_from_file_location("_dino_health_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
