"""Exceptions of the dino_serve client: one class per gRPC status code a server returns, all
subclasses of :class:`DinoError`, which carries the code and the server's message."""
from __future__ import annotations

import grpc

__all__ = ["DinoError", "InvalidArgumentError", "NotFoundError", "FailedPreconditionError",
           "ResourceExhaustedError", "UnavailableError", "DeadlineExceededError",
           "CancelledError", "UnauthenticatedError", "PermissionDeniedError", "InternalError",
           "UnimplementedError", "error_from_code", "error_from_rpc_error"]


class DinoError(Exception):
    """A failed call. ``method`` is the RPC's name ("Evaluate", ...), ``code`` the
    grpc.StatusCode, ``details`` the server's message (which names the offending field) and
    ``attempts`` how many times the call was sent (more than 1 after retries).

    str(e) reads "Evaluate failed: INVALID_ARGUMENT: m must have shape ..."."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str | None,
                 attempts: int = 1):
        details = details or ""
        super().__init__("%s failed: %s: %s" % (method, code.name, details))
        self.method = method
        self.code = code
        self.details = details
        self.attempts = attempts


class InvalidArgumentError(DinoError, ValueError):
    """INVALID_ARGUMENT: a wrong shape, dtype, byte count, non-finite value, bad basis."""


class NotFoundError(DinoError, LookupError):
    """NOT_FOUND: an unknown model, version, label or job."""


class FailedPreconditionError(DinoError):
    """FAILED_PRECONDITION: the model lacks what the call needs (e.g. reduced bases)."""


class ResourceExhaustedError(DinoError):
    """RESOURCE_EXHAUSTED: a size limit or a full queue; retrying later may succeed."""


class UnavailableError(DinoError, ConnectionError):
    """UNAVAILABLE: the server cannot be reached (after the client's retries)."""


class DeadlineExceededError(DinoError, TimeoutError):
    """DEADLINE_EXCEEDED: the call's deadline passed."""


class CancelledError(DinoError):
    """CANCELLED: the call was cancelled."""


class UnauthenticatedError(DinoError, PermissionError):
    """UNAUTHENTICATED: a missing or wrong bearer token."""


class PermissionDeniedError(DinoError, PermissionError):
    """PERMISSION_DENIED."""


class InternalError(DinoError):
    """INTERNAL: a server-side failure."""


class UnimplementedError(DinoError, NotImplementedError):
    """UNIMPLEMENTED: the model cannot answer this method (e.g. the Hessian action of an exact
    PDE model), or the server is older than the method."""


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: CancelledError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
}


def error_from_code(method: str, code: grpc.StatusCode, details: str | None,
                    attempts: int = 1) -> DinoError:
    """The DinoError subclass for ``code`` (DinoError itself for the other codes)."""
    return _BY_CODE.get(code, DinoError)(method, code, details, attempts)


def error_from_rpc_error(method: str, error: grpc.RpcError, attempts: int = 1) -> DinoError:
    """Maps a grpc.RpcError raised by a stub call."""
    return error_from_code(method, error.code(), error.details(), attempts)
