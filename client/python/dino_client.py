"""A small NumPy-friendly Python client for dino-serve (the dino.v1.Surrogate gRPC service).

The gRPC stubs are generated at build time into the build tree (build/python, as
dino/v1/surrogate_pb2.py and surrogate_pb2_grpc.py, without __init__.py files: they are found
as namespace packages). This module locates them through, in order: the ``gen_dir`` argument,
the ``DINO_PYTHON_GEN_DIR`` environment variable, then ``<repository>/build/python``.

    from dino_client import DinoClient
    with DinoClient("localhost:50051") as client:
        print(client.list_models())
        q = client.evaluate("poisson", m)              # m: [d_M] or [B, d_M] -> q: [B, d_Q]
        jv = client.jvp("poisson", m0, directions)     # [k, d_Q]
        jr, q = client.reduced_jacobian("poisson", m)  # [B, r_Q, r_M], [B, d_Q]

Arrays travel as the protocol's Tensor: raw little-endian row-major bytes of float32 or float64.
Inputs of any other dtype (integers, float16, ...) are sent as float64; float32 inputs stay
float32. Results come back as writable NumPy arrays in the requested ``dtype`` ("fp32" /
"fp64"), by default the model's own dtype. A failed call raises DinoError carrying the gRPC
status code and the server's message.

Runs with Debian's /usr/bin/python3 (python3-numpy, python3-grpcio, python3-protobuf).
"""

import importlib
import importlib.util
import os
import sys
import types

import grpc
import numpy as np

__all__ = ["DinoClient", "DinoError", "load_stubs", "to_tensor", "from_tensor"]

_stubs = None


def _default_gen_dir():
    env = os.environ.get("DINO_PYTHON_GEN_DIR")
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.normpath(os.path.join(here, "..", "..", "build", "python"))


def load_stubs(gen_dir=None):
    """Imports the generated modules once and returns them as a namespace with the attributes
    pb (surrogate_pb2), pb_grpc (surrogate_pb2_grpc) and health_pb (health_pb2)."""
    global _stubs
    if _stubs is not None:
        return _stubs
    gen_dir = os.path.abspath(gen_dir or _default_gen_dir())
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
    _stubs = types.SimpleNamespace(pb=pb, pb_grpc=pb_grpc, health_pb=health_pb)
    return _stubs


def _load_health(gen_dir):
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


class DinoError(Exception):
    """A failed call: ``code`` is the grpc.StatusCode, ``details`` the server's message."""

    def __init__(self, method, code, details):
        super().__init__("%s failed: %s: %s" % (method, code.name, details))
        self.method = method
        self.code = code
        self.details = details


_NUMPY_DTYPES = {"fp32": np.dtype("<f4"), "fp64": np.dtype("<f8")}


def _proto_dtype(name):
    pb = load_stubs().pb
    if name is None:
        return pb.DTYPE_UNSPECIFIED
    try:
        return {"fp32": pb.FP32, "fp64": pb.FP64}[name]
    except KeyError:
        raise ValueError("dtype must be None, 'fp32' or 'fp64', got %r" % (name,)) from None


def to_tensor(array, dtype=None):
    """Encodes an array-like as a dino.v1.Tensor. ``dtype`` ("fp32"/"fp64") forces the element
    type; by default float32 stays float32 and everything else becomes float64."""
    pb = load_stubs().pb
    a = np.asarray(array)
    if dtype is None:
        dtype = "fp32" if a.dtype == np.float32 else "fp64"
    np_dtype = _NUMPY_DTYPES.get(dtype)
    if np_dtype is None:
        raise ValueError("dtype must be None, 'fp32' or 'fp64', got %r" % (dtype,))
    a = np.ascontiguousarray(a, dtype=np_dtype)
    return pb.Tensor(shape=list(a.shape), dtype=_proto_dtype(dtype), data=a.tobytes())


def from_tensor(tensor, field="tensor"):
    """Decodes a dino.v1.Tensor into a writable NumPy array, checking the byte count."""
    pb = load_stubs().pb
    if tensor.dtype == pb.FP32:
        np_dtype = _NUMPY_DTYPES["fp32"]
    elif tensor.dtype == pb.FP64:
        np_dtype = _NUMPY_DTYPES["fp64"]
    else:
        raise ValueError("%s: unsupported dtype %d" % (field, tensor.dtype))
    shape = tuple(tensor.shape)
    if any(d < 0 for d in shape):
        raise ValueError("%s: negative dimension in shape %s" % (field, list(shape)))
    expected = int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize
    if len(tensor.data) != expected:
        raise ValueError("%s: data holds %d bytes but shape %s of %s needs %d"
                         % (field, len(tensor.data), list(shape), np_dtype.name, expected))
    return np.frombuffer(tensor.data, dtype=np_dtype).reshape(shape).copy()


class DinoClient:
    """A connection to one dino-serve server. Thread-safe, like the underlying channel."""

    def __init__(self, target="localhost:50051", timeout=30.0, max_message_bytes=1 << 30,
                 wait_for_ready=False, gen_dir=None):
        """``timeout``: per-call deadline in seconds (None: no deadline). ``wait_for_ready``:
        calls wait (until their deadline) for an unreachable server instead of failing at once
        with UNAVAILABLE."""
        self._stubs = load_stubs(gen_dir)
        self._channel = grpc.insecure_channel(target, options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ])
        self._stub = self._stubs.pb_grpc.SurrogateStub(self._channel)
        health = self._stubs.health_pb
        self._health_check = self._channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health.HealthCheckRequest.SerializeToString,
            response_deserializer=health.HealthCheckResponse.FromString)
        self.target = target
        self.timeout = timeout
        self.wait_for_ready = wait_for_ready

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, method, request, timeout=None):
        rpc = self._health_check if method == "Health/Check" else getattr(self._stub, method)
        try:
            return rpc(request, timeout=timeout if timeout is not None else self.timeout,
                       wait_for_ready=self.wait_for_ready)
        except grpc.RpcError as e:
            raise DinoError(method, e.code(), e.details()) from None

    def _ref(self, model, version):
        return self._stubs.pb.ModelRef(name=model, version=version)

    # Discovery -----------------------------------------------------------------------

    def health(self, service="", timeout=None):
        """The grpc.health.v1 status name: "SERVING", "NOT_SERVING", ..."""
        health = self._stubs.health_pb
        response = self._call("Health/Check", health.HealthCheckRequest(service=service), timeout)
        return health.HealthCheckResponse.ServingStatus.Name(response.status)

    def list_models(self):
        """[{"name": str, "versions": [int, ...], "default_version": int}, ...], by name."""
        response = self._call("ListModels", self._stubs.pb.ListModelsRequest())
        out = []
        for m in response.models:
            default = [v.version for v in m.versions if v.is_default]
            out.append({"name": m.name, "versions": [v.version for v in m.versions],
                        "default_version": default[0] if default else 0})
        return out

    def model_info(self, model, version=0):
        """The model's description as a dict; "metadata" is the parsed metadata JSON."""
        import json
        pb = self._stubs.pb
        r = self._call("GetModelInfo", pb.GetModelInfoRequest(model=self._ref(model, version)))
        try:
            metadata = json.loads(r.metadata_json) if r.metadata_json else {}
        except ValueError:
            metadata = r.metadata_json
        return {"name": r.name, "version": r.version, "versions": list(r.versions),
                "input_dim": r.input_dim, "output_dim": r.output_dim,
                "has_reduced_bases": r.has_reduced_bases, "input_rank": r.input_rank,
                "output_rank": r.output_rank, "architecture": r.architecture,
                "dtype": {pb.FP32: "fp32", pb.FP64: "fp64"}.get(r.dtype, "unspecified"),
                "metadata": metadata}

    def bases(self, model, version=0, dtype=None):
        """{"input_basis": V [d_M, r_M], "output_basis": U [d_Q, r_Q], "output_shift": b [d_Q]}."""
        pb = self._stubs.pb
        r = self._call("GetBases", pb.GetBasesRequest(model=self._ref(model, version),
                                                       output_dtype=_proto_dtype(dtype)))
        return {"input_basis": from_tensor(r.input_basis, "input_basis"),
                "output_basis": from_tensor(r.output_basis, "output_basis"),
                "output_shift": from_tensor(r.output_shift, "output_shift")}

    # Evaluation and derivatives --------------------------------------------------------

    def evaluate(self, model, m, version=0, dtype=None):
        """q = f(m): m [d_M] or [B, d_M] -> q [B, d_Q]."""
        pb = self._stubs.pb
        r = self._call("Evaluate", pb.EvaluateRequest(
            model=self._ref(model, version), m=to_tensor(m), output_dtype=_proto_dtype(dtype)))
        return from_tensor(r.q, "q")

    def jvp(self, model, m, directions, version=0, dtype=None, return_q=False):
        """J(m)·v_i for directions [k, d_M] (or [d_M]) -> [k, d_Q]; (jvp, q) with return_q."""
        pb = self._stubs.pb
        r = self._call("Jvp", pb.JvpRequest(
            model=self._ref(model, version), m=to_tensor(m), directions=to_tensor(directions),
            return_q=return_q, output_dtype=_proto_dtype(dtype)))
        jvp = from_tensor(r.jvp, "jvp")
        return (jvp, from_tensor(r.q, "q")) if return_q else jvp

    def vjp(self, model, m, cotangents, version=0, dtype=None, return_q=False):
        """J(m)ᵀ·w_i for cotangents [k, d_Q] (or [d_Q]) -> [k, d_M]; (vjp, q) with return_q."""
        pb = self._stubs.pb
        r = self._call("Vjp", pb.VjpRequest(
            model=self._ref(model, version), m=to_tensor(m), cotangents=to_tensor(cotangents),
            return_q=return_q, output_dtype=_proto_dtype(dtype)))
        vjp = from_tensor(r.vjp, "vjp")
        return (vjp, from_tensor(r.q, "q")) if return_q else vjp

    def reduced_jacobian(self, model, m, output_basis=None, input_basis=None, version=0,
                         dtype=None):
        """(Φᵀ·J(m)·Ψ [B, r_Q, r_M], q [B, d_Q]) for m [B, d_M] (or [d_M]), with the model's
        bases, or with client bases output_basis [d_Q, k_Q] and input_basis [d_M, k_M]
        (orthonormal columns; give both or neither)."""
        if (output_basis is None) != (input_basis is None):
            raise ValueError("give both output_basis and input_basis, or neither")
        pb = self._stubs.pb
        request = pb.ReducedJacobianRequest(model=self._ref(model, version), m=to_tensor(m),
                                            output_dtype=_proto_dtype(dtype))
        if output_basis is not None:
            request.output_basis.CopyFrom(to_tensor(output_basis))
            request.input_basis.CopyFrom(to_tensor(input_basis))
        r = self._call("ReducedJacobian", request)
        return from_tensor(r.reduced_jacobian, "reduced_jacobian"), from_tensor(r.q, "q")

    def jacobian(self, model, m, version=0, dtype=None, return_q=False):
        """The full Jacobian J(m) [d_Q, d_M] at m [d_M]; (J, q) with return_q."""
        pb = self._stubs.pb
        r = self._call("Jacobian", pb.JacobianRequest(
            model=self._ref(model, version), m=to_tensor(m), return_q=return_q,
            output_dtype=_proto_dtype(dtype)))
        jac = from_tensor(r.jacobian, "jacobian")
        return (jac, from_tensor(r.q, "q")) if return_q else jac
