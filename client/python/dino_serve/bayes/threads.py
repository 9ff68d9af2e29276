"""The BLAS threads of the client process.

The samplers' own arithmetic is many small batched LAPACK calls (per step an SVD of
[chains, r_Q, r_M] for DINO-mMALA, of [chains, d_Q, d_M] for PDE mMALA) made while the server
waits for the next request. OpenBLAS's thread pool slows exactly these: measured on the
2-core development machine (16 chains, numpy 1.24, OpenBLAS 0.3.21), an SVD of [16, 50, 200]
took 12–13 ms with one thread against 15–21 ms with its default two on an idle machine and
50–67 ms while another process used a core; [16, 50, 4225] 180–205 ms against 250–710 ms.
Numpy has no setting for it, so this calls OpenBLAS's own ``openblas_set_num_threads``
(the library numpy's BLAS resolves to on Debian with libopenblas0-pthread).
"""
from __future__ import annotations

import ctypes

__all__ = ["set_blas_threads"]

# Debian's libblas.so.3 and liblapack.so.3 (the names numpy links) are thin fronts of one
# libopenblas.so.0 with one thread pool: setting it through any of them sets it for all.
_LIBRARIES = ("libblas.so.3", "libopenblas.so.0")


def set_blas_threads(threads: int) -> bool:
    """Sets the OpenBLAS thread count of this process; False (nothing changed) when numpy's
    BLAS is not OpenBLAS. Call it once at the start of a sampling script; it does not
    affect the server, which sets its own (``dino-server --blas_threads``)."""
    if threads < 1:
        raise ValueError("threads must be >= 1, got %d" % threads)
    for name in _LIBRARIES:
        try:
            setter = getattr(ctypes.CDLL(name), "openblas_set_num_threads")
        except (OSError, AttributeError):
            continue
        setter(ctypes.c_int(threads))
        return True
    return False
