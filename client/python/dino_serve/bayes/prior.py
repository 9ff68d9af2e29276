"""Gaussian priors N(m0, C) on R^{d_M}, batched: every method takes and returns rows
[B, d_M]. The samplers work in prior-whitened coordinates x, m = m0 + L x with L Lᵀ = C, so a
prior needs L (apply_sqrt_cov), Lᵀ (transpose=True) and C⁻¹. :class:`ServedPrior` is the
served BiLaplacian prior of a model (dino.v1.Prior, docs/prior.md) behind this interface."""
from __future__ import annotations

import abc
from typing import Any

import numpy as np

__all__ = ["Prior", "DenseGaussianPrior", "DiagonalGaussianPrior", "ServedPrior"]


def _rows(x: Any, dim: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError("expected rows [B, %d], got shape %s" % (dim, x.shape))
    return x


class Prior(abc.ABC):
    """A Gaussian prior N(mean, C) with a square root L (L Lᵀ = C)."""

    dim: int

    @property
    @abc.abstractmethod
    def mean(self) -> np.ndarray:
        """m0 [d_M]."""

    @abc.abstractmethod
    def apply_sqrt_cov(self, x: Any, transpose: bool = False) -> np.ndarray:
        """L x (or Lᵀ x) for rows x [B, d_M]."""

    @abc.abstractmethod
    def apply_cov(self, x: Any) -> np.ndarray:
        """C x for rows x [B, d_M]."""

    @abc.abstractmethod
    def apply_precision(self, x: Any) -> np.ndarray:
        """C⁻¹ x for rows x [B, d_M]."""

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n draws m0 + L ξ, ξ ~ N(0, I): [n, d_M]."""
        return self.to_parameter(rng.standard_normal((n, self.dim)))

    def to_parameter(self, x: Any) -> np.ndarray:
        """m = m0 + L x for whitened rows x."""
        return self.mean + self.apply_sqrt_cov(_rows(x, self.dim))

    def whiten(self, m: Any) -> np.ndarray:
        """x = L⁻¹ (m − m0) = Lᵀ C⁻¹ (m − m0) for rows m."""
        return self.apply_sqrt_cov(self.apply_precision(_rows(m, self.dim) - self.mean),
                                   transpose=True)


class DenseGaussianPrior(Prior):
    """N(mean, cov) with a dense covariance matrix and its Cholesky factor as L."""

    def __init__(self, mean: Any, cov: Any) -> None:
        self._mean = np.asarray(mean, dtype=np.float64)
        self.cov = np.asarray(cov, dtype=np.float64)
        self.dim = self._mean.shape[0]
        if self.cov.shape != (self.dim, self.dim):
            raise ValueError("cov must be [%d, %d]" % (self.dim, self.dim))
        self.L = np.linalg.cholesky(self.cov)

    @property
    def mean(self) -> np.ndarray:
        return self._mean

    def apply_sqrt_cov(self, x, transpose=False):
        x = _rows(x, self.dim)
        return x @ self.L if transpose else x @ self.L.T

    def apply_cov(self, x):
        return _rows(x, self.dim) @ self.cov

    def apply_precision(self, x):
        x = _rows(x, self.dim)
        y = np.linalg.solve(self.L, x.T)
        return np.linalg.solve(self.L.T, y).T


class DiagonalGaussianPrior(Prior):
    """N(mean, diag(variance)); a scalar variance means variance · I."""

    def __init__(self, mean: Any, variance: Any = 1.0) -> None:
        self._mean = np.asarray(mean, dtype=np.float64)
        self.dim = self._mean.shape[0]
        self.variance = np.broadcast_to(np.asarray(variance, dtype=np.float64),
                                        (self.dim,)).copy()
        self._std = np.sqrt(self.variance)

    @property
    def mean(self) -> np.ndarray:
        return self._mean

    def apply_sqrt_cov(self, x, transpose=False):
        return _rows(x, self.dim) * self._std

    def apply_cov(self, x):
        return _rows(x, self.dim) * self.variance

    def apply_precision(self, x):
        return _rows(x, self.dim) / self.variance


class ServedPrior(Prior):
    """The prior a dino-serve model was given, through dino.v1.Prior (docs/prior.md), with
    the sparse square root L = G = A⁻¹F (G Gᵀ = C exactly, G ≠ Gᵀ): ``apply_sqrt_cov`` is
    ApplyPrior(COVARIANCE_SQRT), its ``transpose`` COVARIANCE_SQRT_TRANSPOSE, ``apply_cov``
    COVARIANCE, ``apply_precision`` PRECISION; ``to_parameter`` (m̄ + Gx) and ``whiten``
    (G⁻¹(m − m̄), exact for this non-symmetric L) are one affine ApplyPrior each, and
    ``sample`` draws white noise locally (so seeds stay the client's). All rows go in one
    RPC, split only when a request would pass ``max_rows`` or ``max_bytes`` (the server's
    --max_batch_size and --max_message_bytes).

    ``client``: a :class:`dino_serve.DinoClient`; ``model``: the model whose prior this is
    (a PDE model and the DINOs trained on its problem share one); ``counts`` tallies RPCs
    and rows per operator. ``cache``: ``to_parameter`` remembers its last batch and
    computes only rows it has not seen (delayed acceptance maps the stage-1 survivors of a
    proposal again for the exact model: no second RPC)."""

    def __init__(self, client: Any, model: str, version: int = 0, label: str = "",
                 timeout: float | None = None, max_rows: int = 4096,
                 max_bytes: int = 32 << 20, cache: bool = True) -> None:
        self.client = client
        self.model = model
        self._ref = {"version": version, "label": label, "timeout": timeout}
        info = client.get_prior(model, dtype="fp64", **self._ref)
        self.info = info
        self.dim = int(info["input_dim"])
        self._mean = np.asarray(info["mean"], dtype=np.float64).reshape(self.dim)
        self.max_rows = max(1, min(int(max_rows), int(max_bytes) // (8 * self.dim)))
        self.counts: dict[str, int] = {}
        self.cache = cache
        self._last: dict[bytes, np.ndarray] = {}

    @property
    def mean(self) -> np.ndarray:
        return self._mean

    def _apply(self, operator: str, x: Any, with_mean: bool = False) -> np.ndarray:
        x = _rows(x, self.dim)
        self.counts[operator + "_calls"] = self.counts.get(operator + "_calls", 0) + 1
        self.counts[operator + "_rows"] = self.counts.get(operator + "_rows", 0) + len(x)
        if len(x) == 0:
            return np.zeros((0, self.dim))
        parts = [self.client.apply_prior(self.model, operator, x[i:i + self.max_rows],
                                         with_mean=with_mean, dtype="fp64", **self._ref)
                 for i in range(0, len(x), self.max_rows)]
        out = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return np.asarray(out, dtype=np.float64).reshape(len(x), self.dim)

    def apply_sqrt_cov(self, x, transpose=False):
        return self._apply("covariance_sqrt_transpose" if transpose else "covariance_sqrt", x)

    def apply_cov(self, x):
        return self._apply("covariance", x)

    def apply_precision(self, x):
        return self._apply("precision", x)

    def apply_sqrt_cov_inverse(self, x: Any) -> np.ndarray:
        """G⁻¹ x for rows x."""
        return self._apply("covariance_sqrt_inverse", x)

    def to_parameter(self, x: Any) -> np.ndarray:
        """m = m̄ + G x in one ApplyPrior(COVARIANCE_SQRT, with_mean) (rows of the last
        batch from the cache)."""
        x = _rows(x, self.dim)
        if not self.cache:
            return self._apply("covariance_sqrt", x, with_mean=True)
        keys = [row.tobytes() for row in x]
        missing = [i for i, k in enumerate(keys) if k not in self._last]
        out = np.empty_like(x)
        if missing:
            out[missing] = self._apply("covariance_sqrt", x[missing], with_mean=True)
        for i, k in enumerate(keys):
            if k in self._last:
                out[i] = self._last[k]
        self._last = {k: out[i] for i, k in enumerate(keys)}
        return out

    def whiten(self, m: Any) -> np.ndarray:
        """x = G⁻¹ (m − m̄) in one ApplyPrior(COVARIANCE_SQRT_INVERSE, with_mean); equal to
        the base class's Gᵀ C⁻¹ (m − m̄) since G Gᵀ = C."""
        return self._apply("covariance_sqrt_inverse", m, with_mean=True)

    def served_samples(self, count: int, seed: int, first_index: int = 0) -> np.ndarray:
        """SamplePrior: sample first_index + i of ``dino-train generate --seed seed``."""
        return np.asarray(self.client.sample_prior(self.model, count, seed=seed,
                                                   first_index=first_index, dtype="fp64",
                                                   **self._ref), dtype=np.float64)
