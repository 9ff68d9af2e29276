"""dino_serve: the Python client of dino-serve.

A NumPy-friendly gRPC client for the dino.v1.Surrogate (evaluation and derivatives),
dino.v1.Training (fine-tuning) and dino.v1.ModelAdmin (served versions) services, and, in
:mod:`dino_serve.bayes`, Bayesian inversion on served models: pCN, DINO-mMALA and
delayed-acceptance MCMC with many chains per batched request, MCMC diagnostics and MAP
estimation.

Setup, from the repository root after building (the gRPC stubs are generated into
build/python)::

    export PYTHONPATH=$PWD/client/python

    from dino_serve import DinoClient
    with DinoClient("localhost:50051") as client:
        q = client.evaluate("poisson_dipnet", m)               # [B, d_M] -> [B, d_Q]
        jr, q = client.reduced_jacobian("poisson_dipnet", m)   # [B, r_Q, r_M], [B, d_Q]

The stubs are found through DinoClient's ``gen_dir`` argument, then ``$DINO_PYTHON_GEN_DIR``,
then ``<repository>/build/python``. Dependencies: numpy, grpcio and protobuf (Debian's
python3-numpy, python3-grpcio, python3-protobuf).
"""
from ._stubs import load_stubs
from .client import NO_RETRY, DinoClient, RetryPolicy
from .credentials import channel_credentials, read_token_file
from .errors import (CancelledError, DeadlineExceededError, DinoError,
                     FailedPreconditionError, InternalError, InvalidArgumentError,
                     NotFoundError, PermissionDeniedError, ResourceExhaustedError,
                     UnauthenticatedError, UnavailableError, UnimplementedError,
                     error_from_code)
from .tensors import from_tensor, to_tensor
from .training import (DEFAULT_CHUNK_BYTES, GATE_METRICS, LOSSES, TERMINAL_STATES,
                       finetune_config, iter_batches, job_status_dict, load_dino_data,
                       sample_batch)

__all__ = [
    "DinoClient", "RetryPolicy", "NO_RETRY", "load_stubs", "to_tensor", "from_tensor",
    "read_token_file", "channel_credentials",
    "DinoError", "InvalidArgumentError", "NotFoundError", "FailedPreconditionError",
    "ResourceExhaustedError", "UnavailableError", "DeadlineExceededError", "CancelledError",
    "UnauthenticatedError", "PermissionDeniedError", "InternalError", "UnimplementedError",
    "error_from_code",
    "finetune_config", "sample_batch", "iter_batches", "load_dino_data", "job_status_dict",
    "LOSSES", "GATE_METRICS", "TERMINAL_STATES", "DEFAULT_CHUNK_BYTES",
]
