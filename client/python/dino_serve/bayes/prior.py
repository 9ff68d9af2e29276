"""Gaussian priors N(m0, C) on R^{d_M}, batched: every method takes and returns rows
[B, d_M]. The samplers work in prior-whitened coordinates x, m = m0 + L x with L Lᵀ = C, so a
prior needs L (apply_sqrt_cov), Lᵀ (transpose=True) and C⁻¹; the server will expose its PDE
priors through the same interface (issue 9 item 2)."""
from __future__ import annotations

import abc
from typing import Any

import numpy as np

__all__ = ["Prior", "DenseGaussianPrior", "DiagonalGaussianPrior"]


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
