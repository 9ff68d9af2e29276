"""DinoClient: a NumPy-friendly client of a dino-serve server's gRPC services
(dino.v1.Surrogate, dino.v1.Prior, dino.v1.Training, dino.v1.ModelAdmin and
grpc.health.v1.Health), with
per-call deadlines, retries of idempotent calls on UNAVAILABLE, bearer tokens and TLS."""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

import grpc
import numpy as np

from ._stubs import load_stubs, prior_stubs, training_stubs
from .credentials import PemSource, channel_credentials, check_token, read_token_file
from .errors import DeadlineExceededError, DinoError, error_from_rpc_error
from .tensors import from_tensor, proto_dtype, to_tensor
from .training import finetune_config, job_status_dict, sample_batch

__all__ = ["DinoClient", "RetryPolicy", "NO_RETRY"]

_log = logging.getLogger("dino_serve")


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """When and how often an idempotent call is sent again.

    A call that fails with a code in ``retryable_codes`` is retried up to ``max_attempts``
    attempts in all, sleeping ``initial_backoff * multiplier**(i-1)`` seconds (at most
    ``max_backoff``) before retry i, each sleep scaled by a random factor in
    [1 - jitter, 1 + jitter]. The call's deadline covers all attempts and sleeps: no retry
    starts that would sleep past it. Only idempotent calls are retried: inference
    (Evaluate, Jvp, Vjp, ReducedJacobian, Jacobian, HessianVectorProduct), the prior (GetPrior, SamplePrior,
    ApplyPrior), discovery (ListModels, GetModelInfo,
    GetBases, health) and job reads (GetJob, ListJobs); never StartFineTune, WatchJob,
    CancelJob or the ModelAdmin calls."""

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2
    retryable_codes: frozenset = frozenset({grpc.StatusCode.UNAVAILABLE})

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("backoffs must be >= 0 and multiplier >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be in [0, 1]")

    def backoff(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to sleep before retry number ``retry`` (1 for the second attempt)."""
        delay = min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry - 1))
        if self.jitter:
            delay *= 1.0 + self.jitter * (2.0 * (rng or random).random() - 1.0)
        return delay


NO_RETRY = RetryPolicy(max_attempts=1)

# What a per-call `timeout` of None means: the client's default deadline.
_NO_DEADLINE = math.inf


class DinoClient:
    """A connection to one dino-serve server. Thread-safe, like the underlying channel.

    Arrays go in as anything np.asarray accepts (float32 stays float32, other types become
    float64) and come back as writable NumPy arrays in the requested ``dtype`` ("fp32" /
    "fp64"; None: the model's). A failed call raises a :class:`dino_serve.DinoError`
    subclass naming the RPC, the gRPC code and the server's message.

    Every call takes ``timeout``: its deadline in seconds (None: the client's ``timeout``;
    ``math.inf``: none), which covers retries too."""

    def __init__(self, target: str = "localhost:50051", timeout: float | None = 30.0,
                 max_message_bytes: int = 1 << 30, wait_for_ready: bool = False,
                 gen_dir: str | None = None, token: str | None = None,
                 token_file: str | None = None, *, retry: RetryPolicy | None = None,
                 tls: bool = False, root_certificates: PemSource | None = None,
                 certificate_chain: PemSource | None = None,
                 private_key: PemSource | None = None,
                 server_name_override: str | None = None,
                 channel_options: Sequence[tuple[str, Any]] = ()) -> None:
        """``target``: "host:port". ``timeout``: the default per-call deadline in seconds
        (None: no deadline). ``max_message_bytes``: the largest message sent or received.
        ``wait_for_ready``: calls wait (until their deadline) for an unreachable server
        instead of failing with UNAVAILABLE. ``gen_dir``: the folder of the generated
        stubs (see load_stubs).

        ``token`` (or ``token_file``, see read_token_file): a bearer token sent as
        "authorization: Bearer <token>" on every call, as the Training and ModelAdmin
        services of a server run with --admin_token_file require (and every service with
        --require_token_for_inference).

        ``retry``: the RetryPolicy of idempotent calls (default RetryPolicy(): 5 attempts,
        backoff 0.1 s doubling to 5 s, on UNAVAILABLE); NO_RETRY disables retries.

        TLS: ``tls=True`` (implied by any of the next three) encrypts the channel and checks
        the server's certificate against ``root_certificates`` (PEM bytes, text or a file
        path; None: the system roots). ``certificate_chain`` and ``private_key`` add the
        client's certificate for mutual TLS. ``server_name_override``: the name checked
        against the server certificate instead of the target's host (tests, IP targets).
        ``channel_options``: further grpc channel arguments."""
        self._stubs = load_stubs(gen_dir)
        if token_file is not None:
            if token is not None:
                raise ValueError("give token or token_file, not both")
            token = read_token_file(token_file)
        if token is not None:
            check_token(token)
        self._metadata = (("authorization", "Bearer " + token),) if token else None
        options = [("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.max_receive_message_length", max_message_bytes)]
        if server_name_override:
            options.append(("grpc.ssl_target_name_override", server_name_override))
        options.extend(channel_options)
        self.tls = bool(tls or root_certificates is not None or certificate_chain is not None
                        or private_key is not None)
        if self.tls:
            self.credentials: grpc.ChannelCredentials | None = channel_credentials(
                root_certificates, certificate_chain, private_key)
            self._channel = grpc.secure_channel(target, self.credentials, options=options)
        else:
            if server_name_override:
                raise ValueError("server_name_override needs TLS")
            self.credentials = None
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = self._stubs.pb_grpc.SurrogateStub(self._channel)
        if self._stubs.tpb_grpc is not None:
            self._training = self._stubs.tpb_grpc.TrainingStub(self._channel)
            self._admin = self._stubs.tpb_grpc.ModelAdminStub(self._channel)
        else:
            self._training = self._admin = None
        if self._stubs.ppb_grpc is not None:
            self._prior = self._stubs.ppb_grpc.PriorStub(self._channel)
        else:
            self._prior = None
        health = self._stubs.health_pb
        self._health_check = self._channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health.HealthCheckRequest.SerializeToString,
            response_deserializer=health.HealthCheckResponse.FromString)
        self.target = target
        self.timeout = timeout
        self.wait_for_ready = wait_for_ready
        self.retry = retry if retry is not None else RetryPolicy()
        self._rng = random.Random()
        self._sleep: Callable[[float], None] = time.sleep

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> "DinoClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # Calls -------------------------------------------------------------------------------

    def _deadline(self, timeout: float | None) -> float:
        """Absolute monotonic deadline of a call (inf: none)."""
        if timeout is None:
            timeout = self.timeout
        if timeout is None or timeout == _NO_DEADLINE:
            return _NO_DEADLINE
        return time.monotonic() + timeout

    def _call(self, method: str, request: Any, timeout: float | None = None,
              stub: Any = None, idempotent: bool = True) -> Any:
        """One unary RPC with the deadline, metadata and (if ``idempotent``) retries."""
        rpc = self._health_check if method == "Health/Check" else getattr(stub or self._stub,
                                                                          method)
        deadline = self._deadline(timeout)
        policy = self.retry if idempotent else NO_RETRY
        attempt = 0
        while True:
            attempt += 1
            remaining = None if deadline == _NO_DEADLINE else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise DeadlineExceededError(method, grpc.StatusCode.DEADLINE_EXCEEDED,
                                            "the deadline passed before attempt %d" % attempt,
                                            attempt - 1)
            try:
                return rpc(request, timeout=remaining, wait_for_ready=self.wait_for_ready,
                           metadata=self._metadata)
            except grpc.RpcError as e:
                if e.code() not in policy.retryable_codes or attempt >= policy.max_attempts:
                    raise error_from_rpc_error(method, e, attempt) from None
                delay = policy.backoff(attempt, self._rng)
                if time.monotonic() + delay >= deadline:
                    raise error_from_rpc_error(method, e, attempt) from None
                _log.debug("%s: %s (attempt %d); retrying in %.3f s", method, e.code().name,
                           attempt, delay)
                self._sleep(delay)

    def _training_stub(self) -> Any:
        if self._training is None:
            training_stubs()  # Raises ImportError saying what is missing.
        return self._training

    def _ref(self, model: str, version: int = 0, label: str = "") -> Any:
        return self._stubs.pb.ModelRef(name=model, version=version, label=label)

    # Discovery ---------------------------------------------------------------------------

    def health(self, service: str = "", timeout: float | None = None) -> str:
        """The grpc.health.v1 status of ``service`` ("" the server, or "dino.v1.Surrogate"):
        "SERVING", "NOT_SERVING", ..."""
        health = self._stubs.health_pb
        response = self._call("Health/Check", health.HealthCheckRequest(service=service),
                              timeout)
        return health.HealthCheckResponse.ServingStatus.Name(response.status)

    def list_models(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """[{"name": str, "versions": [int, ...], "default_version": int}, ...], by name."""
        response = self._call("ListModels", self._stubs.pb.ListModelsRequest(), timeout)
        out = []
        for m in response.models:
            default = [v.version for v in m.versions if v.is_default]
            out.append({"name": m.name, "versions": [v.version for v in m.versions],
                        "default_version": default[0] if default else 0})
        return out

    def model_info(self, model: str, version: int = 0, label: str = "",
                   timeout: float | None = None) -> dict[str, Any]:
        """The model's description: {"name", "version", "versions", "input_dim" (d_M),
        "output_dim" (d_Q), "has_reduced_bases", "input_rank" (r_M), "output_rank" (r_Q),
        "architecture", "dtype" ("fp32"/"fp64"), "metadata" (the parsed metadata JSON)}."""
        pb = self._stubs.pb
        r = self._call("GetModelInfo",
                       pb.GetModelInfoRequest(model=self._ref(model, version, label)), timeout)
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

    def bases(self, model: str, version: int = 0, dtype: str | None = None, label: str = "",
              timeout: float | None = None) -> dict[str, np.ndarray]:
        """A reduced-basis model's {"input_basis": V [d_M, r_M], "output_basis": U [d_Q, r_Q],
        "output_shift": b [d_Q]} (FailedPreconditionError for a model without)."""
        pb = self._stubs.pb
        r = self._call("GetBases", pb.GetBasesRequest(model=self._ref(model, version, label),
                                                       output_dtype=proto_dtype(dtype)), timeout)
        return {"input_basis": from_tensor(r.input_basis, "input_basis"),
                "output_basis": from_tensor(r.output_basis, "output_basis"),
                "output_shift": from_tensor(r.output_shift, "output_shift")}

    # Evaluation and derivatives ------------------------------------------------------------

    def evaluate(self, model: str, m: Any, version: int = 0, dtype: str | None = None,
                 label: str = "", timeout: float | None = None, return_trust: bool = False):
        """q = f(m): m [d_M] or [B, d_M] -> q [B, d_Q]. With return_trust, (q, trust) where
        trust = {"score": [B], "out_of_distribution": [B] bool}: how far each point lies from
        the model's training inputs (docs/model-contract.md, "Trust score")."""
        pb = self._stubs.pb
        r = self._call("Evaluate", pb.EvaluateRequest(
            model=self._ref(model, version, label), m=to_tensor(m),
            output_dtype=proto_dtype(dtype), return_trust=return_trust), timeout)
        q = from_tensor(r.q, "q")
        if not return_trust:
            return q
        return q, {"score": np.array(r.trust.score, dtype=np.float64),
                   "out_of_distribution": np.array(r.trust.out_of_distribution, dtype=bool)}

    def jvp(self, model: str, m: Any, directions: Any, version: int = 0,
            dtype: str | None = None, return_q: bool = False, label: str = "",
            timeout: float | None = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Jacobian-vector products J(m)·v; (jvp, q) with return_q. The shapes of the proto's
        JvpRequest, passed through as given (the server checks them):
        one point m [d_M] or [1, d_M], directions [k, d_M] or [d_M] -> [k, d_Q];
        per point: m [B, d_M], directions [B, d_M] (one each; any B) -> [B, d_Q], row b
        J(m_b)·v_b (e.g. one per MCMC chain);
        B points, k each: directions [B, k, d_M] -> [B, k, d_Q]. q is [d_Q] or [B, d_Q]."""
        pb = self._stubs.pb
        r = self._call("Jvp", pb.JvpRequest(
            model=self._ref(model, version, label), m=to_tensor(m),
            directions=to_tensor(directions), return_q=return_q,
            output_dtype=proto_dtype(dtype)), timeout)
        jvp = from_tensor(r.jvp, "jvp")
        return (jvp, from_tensor(r.q, "q")) if return_q else jvp

    def vjp(self, model: str, m: Any, cotangents: Any, version: int = 0,
            dtype: str | None = None, return_q: bool = False, label: str = "",
            timeout: float | None = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Vector-Jacobian products J(m)ᵀ·w; (vjp, q) with return_q. As jvp: one point with
        cotangents [k, d_Q] or [d_Q] -> [k, d_M]; per point m [B, d_M] with cotangents
        [B, d_Q] -> [B, d_M] (e.g. per-chain log-likelihood gradients), or [B, k, d_Q] ->
        [B, k, d_M]."""
        pb = self._stubs.pb
        r = self._call("Vjp", pb.VjpRequest(
            model=self._ref(model, version, label), m=to_tensor(m),
            cotangents=to_tensor(cotangents), return_q=return_q,
            output_dtype=proto_dtype(dtype)), timeout)
        vjp = from_tensor(r.vjp, "vjp")
        return (vjp, from_tensor(r.q, "q")) if return_q else vjp

    def reduced_jacobian(self, model: str, m: Any, output_basis: Any = None,
                         input_basis: Any = None, version: int = 0, dtype: str | None = None,
                         label: str = "", timeout: float | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
        """(Φᵀ·J(m)·Ψ [B, r_Q, r_M], q [B, d_Q]) for m [B, d_M] (or [d_M]), in the model's
        bases, or in client bases output_basis Φ [d_Q, k_Q] and input_basis Ψ [d_M, k_M]
        (orthonormal columns; give both or neither)."""
        if (output_basis is None) != (input_basis is None):
            raise ValueError("give both output_basis and input_basis, or neither")
        pb = self._stubs.pb
        request = pb.ReducedJacobianRequest(model=self._ref(model, version, label),
                                            m=to_tensor(m), output_dtype=proto_dtype(dtype))
        if output_basis is not None:
            request.output_basis.CopyFrom(to_tensor(output_basis))
            request.input_basis.CopyFrom(to_tensor(input_basis))
        r = self._call("ReducedJacobian", request, timeout)
        return from_tensor(r.reduced_jacobian, "reduced_jacobian"), from_tensor(r.q, "q")

    def jacobian(self, model: str, m: Any, version: int = 0, dtype: str | None = None,
                 return_q: bool = False, label: str = "", timeout: float | None = None
                 ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """The full Jacobian J(m) [d_Q, d_M] at one point m [d_M]; (J, q) with return_q."""
        pb = self._stubs.pb
        r = self._call("Jacobian", pb.JacobianRequest(
            model=self._ref(model, version, label), m=to_tensor(m), return_q=return_q,
            output_dtype=proto_dtype(dtype)), timeout)
        jac = from_tensor(r.jacobian, "jacobian")
        return (jac, from_tensor(r.q, "q")) if return_q else jac

    def hessian_vector_product(self, model: str, m: Any, cotangents: Any, directions: Any,
                               version: int = 0, dtype: str | None = None, label: str = "",
                               timeout: float | None = None) -> np.ndarray:
        """Exact Hessian actions H(m, s)·v, H(m, s) = ∂²⟨s, f⟩/∂m² (double backward, not
        Gauss–Newton), with one cotangent s per point and the directions in jvp's shapes:
        one point m [d_M], s [d_Q], directions [k, d_M] or [d_M] -> [k, d_M]; per point
        m [B, d_M], s [B, d_Q], directions [B, d_M] -> [B, d_M] (row b: H(m_b, s_b)·v_b) or
        [B, k, d_M] -> [B, k, d_M]. With s = (f(m) − d)/σ², H + J(m)ᵀJ(m)/σ² is the Hessian
        of the misfit ½‖(f(m) − d)/σ‖². UnimplementedError for a model without a second-order
        action (the exact PDE models)."""
        pb = self._stubs.pb
        r = self._call("HessianVectorProduct", pb.HessianVectorProductRequest(
            model=self._ref(model, version, label), m=to_tensor(m),
            cotangents=to_tensor(cotangents), directions=to_tensor(directions),
            output_dtype=proto_dtype(dtype)), timeout)
        return from_tensor(r.hvp, "hvp")

    # The prior (dino.v1.Prior, docs/prior.md) --------------------------------------------

    _PRIOR_OPERATORS = ("covariance", "precision", "covariance_sqrt",
                        "covariance_sqrt_transpose", "covariance_sqrt_inverse")

    def _prior_stub(self) -> Any:
        if self._prior is None:
            prior_stubs()  # Raises ImportError saying what is missing.
        return self._prior

    def get_prior(self, model: str, version: int = 0, dtype: str | None = None,
                  label: str = "", timeout: float | None = None) -> dict[str, Any]:
        """The Gaussian prior N(m̄, C) of the model's parameter (GetPrior): {"version",
        "input_dim" (d_M), "mean" (m̄ [d_M]), "problem", "mesh_cells" (n: d_M = (n+1)²),
        "source" (where the model names its prior), "description" (the parsed JSON:
        delta, gamma, ...)}. FailedPreconditionError for a model without a prior."""
        ppb = prior_stubs().ppb
        r = self._call("GetPrior", ppb.GetPriorRequest(model=self._ref(model, version, label),
                                                       output_dtype=proto_dtype(dtype)),
                       timeout, stub=self._prior_stub())
        try:
            description = json.loads(r.description_json) if r.description_json else {}
        except ValueError:
            description = r.description_json
        return {"version": r.version, "input_dim": r.input_dim,
                "mean": from_tensor(r.mean, "mean"), "problem": r.problem,
                "mesh_cells": r.mesh_cells, "source": r.source, "description": description}

    def sample_prior(self, model: str, count: int, seed: int = 0, first_index: int = 0,
                     version: int = 0, dtype: str | None = None, label: str = "",
                     timeout: float | None = None) -> np.ndarray:
        """``count`` prior samples [count, d_M] (SamplePrior): sample i is sample
        ``first_index + i`` of ``dino-train generate --seed seed`` for the model's problem
        and mesh, bit for bit (reproducible anywhere from (seed, index))."""
        ppb = prior_stubs().ppb
        r = self._call("SamplePrior", ppb.SamplePriorRequest(
            model=self._ref(model, version, label), count=int(count), seed=int(seed),
            first_index=int(first_index), output_dtype=proto_dtype(dtype)), timeout,
            stub=self._prior_stub())
        return from_tensor(r.samples, "samples")

    def apply_prior(self, model: str, operator: str, vectors: Any, with_mean: bool = False,
                    version: int = 0, dtype: str | None = None, label: str = "",
                    timeout: float | None = None) -> np.ndarray:
        """One prior operator on k vectors at once (ApplyPrior): ``vectors`` [k, d_M] or
        [d_M] -> the same shape. ``operator``: "covariance" (C), "precision" (C⁻¹),
        "covariance_sqrt" (G, G Gᵀ = C, not symmetric), "covariance_sqrt_transpose" (Gᵀ) or
        "covariance_sqrt_inverse" (G⁻¹). ``with_mean``: the affine maps ξ ↦ m̄ + Gξ
        (covariance_sqrt), m ↦ G⁻¹(m − m̄) (covariance_sqrt_inverse) and m ↦ C⁻¹(m − m̄)
        (precision); InvalidArgumentError for the other operators."""
        ppb = prior_stubs().ppb
        if operator not in self._PRIOR_OPERATORS:
            raise ValueError("operator must be one of %s, got %r"
                             % (", ".join(self._PRIOR_OPERATORS), operator))
        r = self._call("ApplyPrior", ppb.ApplyPriorRequest(
            model=self._ref(model, version, label),
            prior_operator=ppb.PriorOperator.Value(operator.upper()),
            vectors=to_tensor(vectors), with_mean=bool(with_mean),
            output_dtype=proto_dtype(dtype)), timeout, stub=self._prior_stub())
        return from_tensor(r.result, "result")

    # Fine-tuning (dino.v1.Training) --------------------------------------------------------

    def start_finetune(self, model: str, batches: Iterable[Any], version: int = 0,
                       progress: Callable[[dict[str, Any]], None] | None = None,
                       config: Any = None, timeout: float | None = None, **options: Any
                       ) -> tuple[str, dict[str, Any]]:
        """Uploads a fine-tuning job and returns (job_id, status dict) once the upload is
        complete; training then runs on the server (follow it with watch_job). Never
        retried: a failed upload is sent again by the caller.

        ``batches``: an iterable of dicts with the keyword arguments of sample_batch (m, q,
        J | U, sigma, V | reduced_jacobian, jacobian_norm_sq, validation), e.g. from
        iter_batches, or of dino.v1.SampleBatch messages; consumed lazily, one message each.
        ``options``: the arguments of finetune_config (loss="h1", epochs=20, ...), or pass a
        ready ``config``. ``progress``: called after each batch is handed to gRPC with
        {"batches", "samples", "validation_samples", "bytes", "elapsed"} (from gRPC's sending
        thread). ``timeout``: a deadline for the whole upload (default: none).

        An exception raised by ``batches``, or KeyboardInterrupt, cancels the call, so the
        server aborts the job; the exception is re-raised. Server errors raise DinoError."""
        tpb = training_stubs().tpb
        stub = self._training_stub()
        if config is None:
            config = finetune_config(model, version=version, **options)
        elif options:
            raise TypeError("give either config or finetune_config options, not both")
        failure: list[BaseException] = []
        sent = {"batches": 0, "samples": 0, "validation_samples": 0, "bytes": 0, "elapsed": 0.0}
        start = time.monotonic()

        def uploads() -> Iterator[Any]:
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
            raise error_from_rpc_error("StartFineTune", e) from None
        return response.job_id, job_status_dict(response.status)

    def watch_job(self, job_id: str, timeout: float | None = None
                  ) -> Iterator[dict[str, Any]]:
        """Yields the job's status dicts (see job_status_dict): the current one, then one per
        change, until the job ends. Stopping the iteration early stops watching (not the
        job). ``timeout``: a deadline for the whole watch (default: none)."""
        tpb = training_stubs().tpb
        call = self._training_stub().WatchJob(tpb.WatchJobRequest(job_id=job_id),
                                              timeout=timeout, wait_for_ready=self.wait_for_ready,
                                              metadata=self._metadata)
        try:
            for status in call:
                yield job_status_dict(status)
        except grpc.RpcError as e:
            raise error_from_rpc_error("WatchJob", e) from None
        finally:
            call.cancel()

    def get_job(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """The job's status dict now."""
        tpb = training_stubs().tpb
        return job_status_dict(self._call("GetJob", tpb.GetJobRequest(job_id=job_id), timeout,
                                          stub=self._training_stub()))

    def list_jobs(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """Every job's status dict, oldest first."""
        tpb = training_stubs().tpb
        r = self._call("ListJobs", tpb.ListJobsRequest(), timeout, stub=self._training_stub())
        return [job_status_dict(s) for s in r.jobs]

    def cancel_job(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Cancels a job that has not ended (nothing is published); returns its status dict
        (unchanged if it had already ended)."""
        tpb = training_stubs().tpb
        return job_status_dict(self._call("CancelJob", tpb.CancelJobRequest(job_id=job_id),
                                          timeout, stub=self._training_stub(),
                                          idempotent=False))

    # Served versions (dino.v1.ModelAdmin) ---------------------------------------------------

    def set_default_version(self, model: str, version: int, timeout: float | None = None
                            ) -> None:
        """Requests without a version get ``version`` from now on; 0 restores the default
        policy (the highest loaded version)."""
        tpb = training_stubs().tpb
        self._training_stub()
        self._call("SetDefaultVersion", tpb.SetDefaultVersionRequest(name=model, version=version),
                   timeout, stub=self._admin, idempotent=False)

    def set_version_label(self, model: str, label: str, version: int,
                          timeout: float | None = None) -> None:
        """Points ``label`` (e.g. "stable") at ``version``; version 0 removes the label.
        Requests address it with the ``label`` argument of the inference calls."""
        tpb = training_stubs().tpb
        self._training_stub()
        self._call("SetVersionLabel",
                   tpb.SetVersionLabelRequest(name=model, label=label, version=version),
                   timeout, stub=self._admin, idempotent=False)

    def unload_version(self, model: str, version: int, timeout: float | None = None) -> None:
        """Stops serving ``version`` of ``model`` until SetDefaultVersion or SetVersionLabel
        names it again (training.proto); the file in the repository stays."""
        tpb = training_stubs().tpb
        self._training_stub()
        self._call("UnloadVersion", tpb.UnloadVersionRequest(name=model, version=version),
                   timeout, stub=self._admin, idempotent=False)
