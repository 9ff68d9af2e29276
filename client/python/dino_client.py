"""A small NumPy-friendly Python client for dino-serve: the dino.v1.Surrogate gRPC service
(evaluation and derivatives) and the dino.v1.Training / dino.v1.ModelAdmin services
(fine-tuning served models, managing versions).

The gRPC stubs are generated at build time into the build tree (build/python, as
dino/v1/surrogate_pb2.py, training_pb2.py and their _grpc modules, without __init__.py files:
they are found as namespace packages). This module locates them through, in order: the
``gen_dir`` argument, the ``DINO_PYTHON_GEN_DIR`` environment variable, then
``<repository>/build/python``.

    from dino_client import DinoClient
    with DinoClient("localhost:50051") as client:
        print(client.list_models())
        q = client.evaluate("poisson", m)              # m: [d_M] or [B, d_M] -> q: [B, d_Q]
        jv = client.jvp("poisson", m0, directions)     # [k, d_Q]
        jb = client.jvp("poisson", ms, dirs)           # ms [B, d_M], dirs [B, d_M] -> [B, d_Q]
        jr, q = client.reduced_jacobian("poisson", m)  # [B, r_Q, r_M], [B, d_Q]

Fine-tuning (see finetune_example.py), with the admin token when the server has one:

    with DinoClient("localhost:50051", token_file="admin.token") as client:
        data = load_dino_data("data/train")            # {"m", "q", "J"} or {"m", "q", "U", ...}
        job_id, _ = client.start_finetune("poisson", iter_batches(**data), loss="h1", epochs=20)
        for status in client.watch_job(job_id):
            print(status["state"], status["epoch"], status["validation"])

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

__all__ = ["DinoClient", "DinoError", "load_stubs", "to_tensor", "from_tensor",
           "read_token_file", "finetune_config", "sample_batch", "iter_batches",
           "load_dino_data", "job_status_dict", "LOSSES", "GATE_METRICS",
           "TERMINAL_STATES", "DEFAULT_CHUNK_BYTES"]

_stubs = None


def _default_gen_dir():
    env = os.environ.get("DINO_PYTHON_GEN_DIR")
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.normpath(os.path.join(here, "..", "..", "build", "python"))


def load_stubs(gen_dir=None):
    """Imports the generated modules once and returns them as a namespace with the attributes
    pb (surrogate_pb2), pb_grpc (surrogate_pb2_grpc), health_pb (health_pb2) and, when the
    build generated them, tpb (training_pb2) and tpb_grpc (training_pb2_grpc), else None."""
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
    tpb = tpb_grpc = None
    if os.path.isfile(os.path.join(gen_dir, "dino", "v1", "training_pb2.py")):
        tpb = importlib.import_module("dino.v1.training_pb2")
        tpb_grpc = importlib.import_module("dino.v1.training_pb2_grpc")
    _stubs = types.SimpleNamespace(pb=pb, pb_grpc=pb_grpc, health_pb=health_pb, tpb=tpb,
                                   tpb_grpc=tpb_grpc)
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


# Fine-tuning helpers -----------------------------------------------------------------------

# Samples per upload message by default: as many as fit in 4 MiB (gRPC's default receive
# limit) less 64 KiB for the message framing; the `dino` CLI uses the same budget.
DEFAULT_CHUNK_BYTES = (4 << 20) - (64 << 10)

# Names accepted for FineTuneConfig.loss and AcceptanceRule.metric (as the `dino` CLI's).
LOSSES = ("l2", "h1", "reduced_h1", "reduced_h1_ms", "sketched_h1")
GATE_METRICS = ("l2", "h1", "reduced_h1")


def _training_stubs():
    stubs = load_stubs()
    if stubs.tpb is None:
        raise ImportError("the generated training_pb2.py is missing: rebuild the project (it is "
                          "generated next to surrogate_pb2.py)")
    return stubs


def read_token_file(path):
    """The bearer token in ``path``, without surrounding whitespace. ValueError (naming the
    file, never the token) when the rest is empty or not visible ASCII."""
    with open(path, "rb") as f:
        token = f.read().strip()
    if not token:
        raise ValueError("token file %s is empty" % path)
    if any(c < 0x21 or c > 0x7E for c in token):
        raise ValueError("token file %s: the token holds whitespace, control or non-ASCII "
                         "characters" % path)
    return token.decode("ascii")


def finetune_config(model, version=0, loss=None, epochs=0, learning_rate=0.0, batch_size=0,
                    l2_weight=0.0, h1_weight=0.0, seed=0, validation_fraction=0.0,
                    gate_metric=None, max_regression=0.0, svd_rank=0, subsample_size=0,
                    sketch_rank=0, description=""):
    """A dino.v1.FineTuneConfig. Zeros and None mean the server's defaults (training.proto):
    loss h1, 100 epochs, learning rate 1e-3, batch size 32, ... ``loss`` is one of LOSSES,
    ``gate_metric`` one of GATE_METRICS."""
    tpb = _training_stubs().tpb
    config = tpb.FineTuneConfig(
        base=load_stubs().pb.ModelRef(name=model, version=version), epochs=epochs,
        learning_rate=learning_rate, batch_size=batch_size, l2_weight=l2_weight,
        h1_weight=h1_weight, seed=seed, validation_fraction=validation_fraction,
        svd_rank=svd_rank, subsample_size=subsample_size, sketch_rank=sketch_rank,
        description=description)
    if loss is not None:
        if loss not in LOSSES:
            raise ValueError("loss must be one of %s, got %r" % (", ".join(LOSSES), loss))
        config.loss = tpb.Loss.Value(loss.upper())
    if gate_metric is not None:
        if gate_metric not in GATE_METRICS:
            raise ValueError("gate_metric must be one of %s, got %r"
                             % (", ".join(GATE_METRICS), gate_metric))
        config.acceptance.metric = tpb.GateMetric.Value(gate_metric.upper() + "_ACCURACY")
    if max_regression:
        config.acceptance.max_regression = max_regression
    return config


def sample_batch(m, q, J=None, U=None, sigma=None, V=None, reduced_jacobian=None,
                 jacobian_norm_sq=None, validation=False):
    """A dino.v1.SampleBatch of b samples: m [b, d_M], q [b, d_Q] and at most one Jacobian
    form: the full J [b, d_Q, d_M]; its truncated SVD U [b, d_Q, r], sigma [b, r],
    V [b, d_M, r]; or reduced_jacobian Uᵀ J V [b, r_Q, r_M] in the model's bases (with the
    optional jacobian_norm_sq ‖J‖²_F [b]). ``validation``: these samples form the validation
    set."""
    tpb = _training_stubs().tpb
    m, q = np.asarray(m), np.asarray(q)
    if m.ndim != 2 or q.ndim != 2 or m.shape[0] != q.shape[0]:
        raise ValueError("m and q must be [b, d_M] and [b, d_Q] with the same b, got %s and %s"
                         % (m.shape, q.shape))
    batch = tpb.SampleBatch(m=to_tensor(m), q=to_tensor(q), validation=validation)
    svd = (U, sigma, V)
    forms = [J is not None, any(a is not None for a in svd), reduced_jacobian is not None]
    if sum(forms) > 1:
        raise ValueError("give one Jacobian form: J, or U/sigma/V, or reduced_jacobian")
    if J is not None:
        batch.full.CopyFrom(to_tensor(J))
    elif forms[1]:
        if any(a is None for a in svd):
            raise ValueError("the SVD form needs U, sigma and V")
        batch.svd.u.CopyFrom(to_tensor(U))
        batch.svd.sigma.CopyFrom(to_tensor(sigma))
        batch.svd.v.CopyFrom(to_tensor(V))
    elif reduced_jacobian is not None:
        batch.reduced.reduced_jacobian.CopyFrom(to_tensor(reduced_jacobian))
        if jacobian_norm_sq is not None:
            batch.reduced.jacobian_norm_sq.CopyFrom(to_tensor(jacobian_norm_sq))
    return batch


def iter_batches(m, q, chunk=None, validation=False, max_bytes=DEFAULT_CHUNK_BYTES, **jacobian):
    """Cuts the arrays m [n, d_M], q [n, d_Q] and the Jacobian arrays (keyword arguments of
    sample_batch: J, or U/sigma/V, or reduced_jacobian/jacobian_norm_sq, each [n, ...]) into
    dicts of ``chunk`` samples each (default: as many as fit in ``max_bytes``, at least one),
    ready for start_finetune. Slicing makes no copies; encoding happens batch by batch."""
    arrays = {"m": m, "q": q}
    arrays.update({k: v for k, v in jacobian.items() if v is not None})
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    n = arrays["m"].shape[0]
    for name, a in arrays.items():
        if a.ndim == 0 or a.shape[0] != n:
            raise ValueError("%s must have %d samples along its first axis, has shape %s"
                             % (name, n, a.shape))
    if chunk is None:
        per_sample = sum(a[:1].nbytes for a in arrays.values())
        chunk = max(1, max_bytes // max(per_sample, 1))
    for start in range(0, n, chunk):
        batch = {k: a[start:start + chunk] for k, a in arrays.items()}
        batch["validation"] = validation
        yield batch


def load_dino_data(directory, jacobian="auto", count=None):
    """Reads the dino / hIPPYflow data layout: {"m", "q"} from mq_data.npz (m_data, q_data),
    plus "J" from J_data.npz (jacobian="full") or "U", "sigma", "V" from Jsvd_data.npz
    (jacobian="svd"). "auto" takes J_data.npz if present, else Jsvd_data.npz, else neither
    ("none"). ``count`` keeps the first samples only."""
    files = {"full": ("J_data.npz", {"J": "J_data"}),
             "svd": ("Jsvd_data.npz", {"U": "U_data", "sigma": "sigma_data", "V": "V_data"})}
    if jacobian == "auto":
        jacobian = next((k for k in ("full", "svd")
                         if os.path.isfile(os.path.join(directory, files[k][0]))), "none")
    if jacobian not in ("full", "svd", "none"):
        raise ValueError("jacobian must be auto, full, svd or none, got %r" % (jacobian,))
    wanted = [("mq_data.npz", {"m": "m_data", "q": "q_data"})]
    if jacobian != "none":
        wanted.append(files[jacobian])
    data = {}
    for file, names in wanted:
        with np.load(os.path.join(directory, file)) as archive:
            for key, member in names.items():
                data[key] = archive[member][:count]
    return data


def _accuracies_dict(present, a):
    if not present:
        return None
    return {"samples": a.samples, "l2": a.l2 if a.HasField("l2") else None,
            "h1": a.h1 if a.HasField("h1") else None,
            "reduced_h1": a.reduced_h1 if a.HasField("reduced_h1") else None}


def job_status_dict(status):
    """A dino.v1.JobStatus as a plain dict with the proto's field names (the JSON of
    `dino job --json`): "state" is the state's name ("SUCCEEDED", ...), "validation" and
    "base_validation" are None or {"samples", "l2", "h1", "reduced_h1"} (None when unknown)."""
    tpb = _training_stubs().tpb
    return {
        "job_id": status.job_id,
        "base": {"name": status.base.name, "version": status.base.version},
        "state": tpb.JobState.Name(status.state),
        "message": status.message,
        "train_samples": status.train_samples,
        "validation_samples": status.validation_samples,
        "samples_received": status.samples_received,
        "bytes_received": status.bytes_received,
        "epoch": status.epoch,
        "epochs": status.epochs,
        "train_loss": status.train_loss,
        "validation_loss": status.validation_loss,
        "validation": _accuracies_dict(status.HasField("validation"), status.validation),
        "base_validation": _accuracies_dict(status.HasField("base_validation"),
                                            status.base_validation),
        "samples_per_second": status.samples_per_second,
        "eta_seconds": status.eta_seconds,
        "new_version": status.new_version,
        "created_unix_seconds": status.created_unix_seconds,
        "updated_unix_seconds": status.updated_unix_seconds,
        "revision": status.revision,
    }


TERMINAL_STATES = ("SUCCEEDED", "REJECTED", "FAILED", "CANCELLED")


class DinoClient:
    """A connection to one dino-serve server. Thread-safe, like the underlying channel."""

    def __init__(self, target="localhost:50051", timeout=30.0, max_message_bytes=1 << 30,
                 wait_for_ready=False, gen_dir=None, token=None, token_file=None):
        """``timeout``: per-call deadline in seconds (None: no deadline). ``wait_for_ready``:
        calls wait (until their deadline) for an unreachable server instead of failing at once
        with UNAVAILABLE. ``token`` (or ``token_file``, see read_token_file): a bearer token
        sent as "authorization: Bearer <token>" on every call, as the Training and ModelAdmin
        services of a server run with --admin_token_file require (and every service with
        --require_token_for_inference)."""
        self._stubs = load_stubs(gen_dir)
        if token_file is not None:
            token = read_token_file(token_file)
        if token and any(ord(c) < 0x21 or ord(c) > 0x7E for c in token):
            raise ValueError("the token holds whitespace, control or non-ASCII characters")
        self._metadata = (("authorization", "Bearer " + token),) if token else None
        self._channel = grpc.insecure_channel(target, options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ])
        self._stub = self._stubs.pb_grpc.SurrogateStub(self._channel)
        if self._stubs.tpb_grpc is not None:
            self._training = self._stubs.tpb_grpc.TrainingStub(self._channel)
            self._admin = self._stubs.tpb_grpc.ModelAdminStub(self._channel)
        else:
            self._training = self._admin = None
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

    def _call(self, method, request, timeout=None, stub=None):
        if method == "Health/Check":
            rpc = self._health_check
        else:
            rpc = getattr(stub or self._stub, method)
        try:
            return rpc(request, timeout=timeout if timeout is not None else self.timeout,
                       wait_for_ready=self.wait_for_ready, metadata=self._metadata)
        except grpc.RpcError as e:
            raise DinoError(method, e.code(), e.details()) from None

    def _training_stub(self):
        if self._training is None:
            _training_stubs()  # Raises ImportError saying what is missing.
        return self._training

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
        """Jacobian-vector products; (jvp, q) with return_q. The shapes of the proto's
        JvpRequest, passed through as given (the server checks them):
        one point m [d_M] or [1, d_M], directions [k, d_M] or [d_M] -> [k, d_Q];
        B >= 2 points m [B, d_M], directions [B, d_M] (one each) -> [B, d_Q];
        B points, k each: directions [B, k, d_M] -> [B, k, d_Q]. q is [d_Q] or [B, d_Q]."""
        pb = self._stubs.pb
        r = self._call("Jvp", pb.JvpRequest(
            model=self._ref(model, version), m=to_tensor(m), directions=to_tensor(directions),
            return_q=return_q, output_dtype=_proto_dtype(dtype)))
        jvp = from_tensor(r.jvp, "jvp")
        return (jvp, from_tensor(r.q, "q")) if return_q else jvp

    def vjp(self, model, m, cotangents, version=0, dtype=None, return_q=False):
        """Vector-Jacobian products J(m)ᵀ·w; (vjp, q) with return_q. As jvp: one point with
        cotangents [k, d_Q] or [d_Q] -> [k, d_M]; B >= 2 points m [B, d_M] with cotangents
        [B, d_Q] -> [B, d_M] (e.g. per-chain log-likelihood gradients), or [B, k, d_Q] ->
        [B, k, d_M]."""
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

    # Fine-tuning (dino.v1.Training) -------------------------------------------------------

    def start_finetune(self, model, batches, version=0, progress=None, config=None,
                       timeout=None, **options):
        """Uploads a fine-tuning job and returns (job_id, status dict) once the upload is
        complete; training then runs on the server (follow it with watch_job).

        ``batches``: an iterable of dicts with the keyword arguments of sample_batch (m, q,
        J | U, sigma, V | reduced_jacobian, jacobian_norm_sq, validation), e.g. from
        iter_batches, or of dino.v1.SampleBatch messages; consumed lazily, one message each.
        ``options``: the arguments of finetune_config (loss="h1", epochs=20, ...), or pass a
        ready ``config``. ``progress``: called after each batch is handed to gRPC with
        {"batches", "samples", "validation_samples", "bytes", "elapsed"} (from gRPC's sending
        thread). ``timeout``: a deadline for the whole upload (default: none).

        An exception raised by ``batches``, or KeyboardInterrupt, cancels the call, so the
        server aborts the job; the exception is re-raised. Server errors raise DinoError."""
        import time
        tpb = _training_stubs().tpb
        stub = self._training_stub()
        if config is None:
            config = finetune_config(model, version=version, **options)
        elif options:
            raise TypeError("give either config or finetune_config options, not both")
        failure = []
        sent = {"batches": 0, "samples": 0, "validation_samples": 0, "bytes": 0, "elapsed": 0.0}
        start = time.monotonic()

        def uploads():
            yield tpb.FineTuneUpload(config=config)
            try:
                for item in batches:
                    batch = item if isinstance(item, tpb.SampleBatch) else sample_batch(**item)
                    yield tpb.FineTuneUpload(samples=batch)
                    b = batch.m.shape[0] if batch.m.shape else 0
                    sent["batches"] += 1
                    sent["samples"] += b
                    sent["validation_samples"] += b if batch.validation else 0
                    sent["bytes"] += batch.ByteSize()
                    sent["elapsed"] = time.monotonic() - start
                    if progress is not None:
                        progress(dict(sent))
            except Exception as e:  # gRPC cancels the call when the iterator raises.
                failure.append(e)
                raise

        future = stub.StartFineTune.future(uploads(), timeout=timeout,
                                           wait_for_ready=self.wait_for_ready,
                                           metadata=self._metadata)
        try:
            response = future.result()
        except KeyboardInterrupt:
            future.cancel()
            raise
        except grpc.RpcError as e:
            if failure:
                raise failure[0] from None
            raise DinoError("StartFineTune", e.code(), e.details()) from None
        return response.job_id, job_status_dict(response.status)

    def watch_job(self, job_id, timeout=None):
        """Yields the job's status dicts (see job_status_dict): the current one, then one per
        change, until the job ends. Stopping the iteration early stops watching (not the
        job). ``timeout``: a deadline for the whole watch (default: none)."""
        tpb = _training_stubs().tpb
        call = self._training_stub().WatchJob(tpb.WatchJobRequest(job_id=job_id),
                                              timeout=timeout, wait_for_ready=self.wait_for_ready,
                                              metadata=self._metadata)
        try:
            for status in call:
                yield job_status_dict(status)
        except grpc.RpcError as e:
            raise DinoError("WatchJob", e.code(), e.details()) from None
        finally:
            call.cancel()

    def get_job(self, job_id):
        """The job's status dict now."""
        tpb = _training_stubs().tpb
        return job_status_dict(self._call("GetJob", tpb.GetJobRequest(job_id=job_id),
                                          stub=self._training_stub()))

    def list_jobs(self):
        """Every job's status dict, oldest first."""
        tpb = _training_stubs().tpb
        r = self._call("ListJobs", tpb.ListJobsRequest(), stub=self._training_stub())
        return [job_status_dict(s) for s in r.jobs]

    def cancel_job(self, job_id):
        """Cancels a job that has not ended (nothing is published); returns its status dict
        (unchanged if it had already ended)."""
        tpb = _training_stubs().tpb
        return job_status_dict(self._call("CancelJob", tpb.CancelJobRequest(job_id=job_id),
                                          stub=self._training_stub()))

    # Served versions (dino.v1.ModelAdmin) -------------------------------------------------

    def set_default_version(self, model, version):
        """Requests without a version get ``version`` from now on; 0 restores the default
        policy (the highest loaded version)."""
        tpb = _training_stubs().tpb
        self._training_stub()
        self._call("SetDefaultVersion", tpb.SetDefaultVersionRequest(name=model, version=version),
                   stub=self._admin)

    def unload_version(self, model, version):
        """Stops serving ``version`` of ``model`` until its file in the repository changes."""
        tpb = _training_stubs().tpb
        self._training_stub()
        self._call("UnloadVersion", tpb.UnloadVersionRequest(name=model, version=version),
                   stub=self._admin)
