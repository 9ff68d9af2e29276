"""The forward-model interface the samplers and the MAP solver are written against, with
in-process NumPy implementations (for tests and small problems) and the served one.

A forward model is a batched parameter-to-observable map f: R^{d_M} -> R^{d_Q} with
derivatives. Every method takes B points at once (one request for all chains):

* ``evaluate(m [B, d_M]) -> q [B, d_Q]``
* ``jvp(m [B, d_M], directions [B, k, d_M]) -> [B, k, d_Q]``   (J(m_b) v_{b,i})
* ``vjp(m [B, d_M], cotangents [B, k, d_Q]) -> [B, k, d_M]``   (J(m_b)ᵀ w_{b,i})
* ``reduced_jacobian(m, output_basis=None, input_basis=None) -> (Φᵀ J Ψ [B, k_Q, k_M], q)``
* ``bases() -> ReducedBases | None``: V, U, b of a reduced-basis model f = U φ(Vᵀm) + b.

``counts`` tallies what was asked: calls per method and points (rows of m) and products
(points × directions) per method, e.g. to report the PDE solves a sampler spent.
"""
from __future__ import annotations

import abc
import collections
import dataclasses
from typing import Any, Callable

import numpy as np

__all__ = ["ForwardModel", "ReducedBases", "LinearModel", "ReducedBasisModel",
           "FunctionModel", "ServedModel"]


@dataclasses.dataclass(frozen=True)
class ReducedBases:
    """The bases of a reduced-basis model f(m) = U φ(Vᵀ m) + b."""
    input_basis: np.ndarray   # V [d_M, r_M], orthonormal columns.
    output_basis: np.ndarray  # U [d_Q, r_Q], orthonormal columns.
    output_shift: np.ndarray  # b [d_Q].


def _points(m: Any, dim: int) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if m.ndim == 1:
        m = m[None]
    if m.ndim != 2 or m.shape[1] != dim:
        raise ValueError("m must be [B, %d], got shape %s" % (dim, m.shape))
    return m


def _vectors(v: Any, b: int, dim: int, name: str) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    if v.ndim == 2:
        v = v[:, None, :]
    if v.ndim != 3 or v.shape[0] != b or v.shape[2] != dim:
        raise ValueError("%s must be [%d, k, %d] (or [%d, %d]), got shape %s"
                         % (name, b, dim, b, dim, v.shape))
    return v


class ForwardModel(abc.ABC):
    """A batched map f: R^{d_M} -> R^{d_Q} with Jacobian actions (see the module doc).
    Subclasses implement _evaluate, _jvp and _vjp on validated float64 arrays; the
    reduced Jacobian defaults to Jvp products with the input basis."""

    def __init__(self, input_dim: int, output_dim: int) -> None:
        self.input_dim = int(input_dim)
        self.output_dim = int(output_dim)
        self.counts: collections.Counter[str] = collections.Counter()

    def _count(self, method: str, points: int, products: int = 0) -> None:
        self.counts[method + "_calls"] += 1
        self.counts[method + "_points"] += points
        if products:
            self.counts[method + "_products"] += products

    # Public, validated ----------------------------------------------------------------------

    def evaluate(self, m: Any) -> np.ndarray:
        """q = f(m): [B, d_M] -> [B, d_Q]."""
        m = _points(m, self.input_dim)
        self._count("evaluate", len(m))
        return self._evaluate(m)

    def jvp(self, m: Any, directions: Any, return_q: bool = False
            ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """J(m_b) v_{b,i}: m [B, d_M], directions [B, k, d_M] -> [B, k, d_Q] (directions
        [B, d_M] -> [B, d_Q]); (jvp, q) with return_q."""
        m = _points(m, self.input_dim)
        flat = np.ndim(directions) == 2
        v = _vectors(directions, len(m), self.input_dim, "directions")
        self._count("jvp", len(m), v.shape[0] * v.shape[1])
        out, q = self._jvp(m, v, return_q)
        out = out[:, 0] if flat else out
        return (out, q) if return_q else out

    def vjp(self, m: Any, cotangents: Any, return_q: bool = False
            ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """J(m_b)ᵀ w_{b,i}: m [B, d_M], cotangents [B, k, d_Q] -> [B, k, d_M] (cotangents
        [B, d_Q] -> [B, d_M]); (vjp, q) with return_q."""
        m = _points(m, self.input_dim)
        flat = np.ndim(cotangents) == 2
        w = _vectors(cotangents, len(m), self.output_dim, "cotangents")
        self._count("vjp", len(m), w.shape[0] * w.shape[1])
        out, q = self._vjp(m, w, return_q)
        out = out[:, 0] if flat else out
        return (out, q) if return_q else out

    def reduced_jacobian(self, m: Any, output_basis: Any = None, input_basis: Any = None
                         ) -> tuple[np.ndarray, np.ndarray]:
        """(Φᵀ J(m) Ψ [B, k_Q, k_M], q [B, d_Q]) in the model's bases (output_basis and
        input_basis None) or in the given ones."""
        m = _points(m, self.input_dim)
        if (output_basis is None) != (input_basis is None):
            raise ValueError("give both output_basis and input_basis, or neither")
        if output_basis is None:
            bases = self.bases()
            if bases is None:
                raise ValueError("the model has no reduced bases: pass client bases")
            output_basis, input_basis = bases.output_basis, bases.input_basis
        self._count("reduced_jacobian", len(m))
        return self._reduced_jacobian(m, np.asarray(output_basis, dtype=np.float64),
                                      np.asarray(input_basis, dtype=np.float64))

    def jacobian(self, m: Any) -> np.ndarray:
        """The full Jacobians J(m_b) [B, d_Q, d_M], as d_Q Vjp products per point."""
        m = _points(m, self.input_dim)
        eye = np.broadcast_to(np.eye(self.output_dim), (len(m), self.output_dim,
                                                        self.output_dim))
        return self.vjp(m, eye)

    def bases(self) -> ReducedBases | None:
        """The reduced bases, or None for a model without."""
        return None

    # To implement ----------------------------------------------------------------------------

    @abc.abstractmethod
    def _evaluate(self, m: np.ndarray) -> np.ndarray: ...

    @abc.abstractmethod
    def _jvp(self, m: np.ndarray, v: np.ndarray, return_q: bool
             ) -> tuple[np.ndarray, np.ndarray | None]: ...

    @abc.abstractmethod
    def _vjp(self, m: np.ndarray, w: np.ndarray, return_q: bool
             ) -> tuple[np.ndarray, np.ndarray | None]: ...

    def _reduced_jacobian(self, m: np.ndarray, output_basis: np.ndarray,
                          input_basis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        directions = np.broadcast_to(input_basis.T, (len(m),) + input_basis.T.shape)
        jv, q = self._jvp(m, np.ascontiguousarray(directions), True)  # [B, k_M, d_Q]
        return np.einsum("qr,bkq->brk", output_basis, jv), q


class FunctionModel(ForwardModel):
    """f and its Jacobian as NumPy callables: ``f(m [B, d_M]) -> [B, d_Q]`` and
    ``jacobian(m [B, d_M]) -> [B, d_Q, d_M]`` (small problems and tests)."""

    def __init__(self, f: Callable[[np.ndarray], np.ndarray],
                 jacobian: Callable[[np.ndarray], np.ndarray], input_dim: int,
                 output_dim: int) -> None:
        super().__init__(input_dim, output_dim)
        self._f = f
        self._jac = jacobian

    def _evaluate(self, m: np.ndarray) -> np.ndarray:
        return np.asarray(self._f(m), dtype=np.float64)

    def _jvp(self, m, v, return_q):
        out = np.einsum("bqm,bkm->bkq", self._jac(m), v)
        return out, (self._evaluate(m) if return_q else None)

    def _vjp(self, m, w, return_q):
        out = np.einsum("bqm,bkq->bkm", self._jac(m), w)
        return out, (self._evaluate(m) if return_q else None)


class LinearModel(FunctionModel):
    """The affine model f(m) = J m + shift."""

    def __init__(self, J: Any, shift: Any = None) -> None:
        J = np.asarray(J, dtype=np.float64)
        self.J = J
        self.shift = np.zeros(J.shape[0]) if shift is None else np.asarray(shift, np.float64)
        super().__init__(lambda m: m @ J.T + self.shift,
                         lambda m: np.broadcast_to(J, (len(m),) + J.shape), J.shape[1],
                         J.shape[0])


class ReducedBasisModel(ForwardModel):
    """A reduced-basis (DIPNet-shaped) model f(m) = U φ(Vᵀ m) + b with NumPy callables
    ``phi(z [B, r_M]) -> [B, r_Q]`` and ``phi_jacobian(z [B, r_M]) -> [B, r_Q, r_M]``; its
    reduced Jacobian in its own bases is exactly J_φ(Vᵀm)."""

    def __init__(self, input_basis: Any, output_basis: Any, output_shift: Any,
                 phi: Callable[[np.ndarray], np.ndarray],
                 phi_jacobian: Callable[[np.ndarray], np.ndarray]) -> None:
        V = np.asarray(input_basis, dtype=np.float64)
        U = np.asarray(output_basis, dtype=np.float64)
        super().__init__(V.shape[0], U.shape[0])
        self._bases = ReducedBases(V, U, np.asarray(output_shift, dtype=np.float64))
        self._phi = phi
        self._phi_jac = phi_jacobian

    @classmethod
    def linear(cls, input_basis: Any, output_basis: Any, A: Any, output_shift: Any
               ) -> "ReducedBasisModel":
        """f(m) = U A Vᵀ m + b."""
        A = np.asarray(A, dtype=np.float64)
        return cls(input_basis, output_basis, output_shift, lambda z: z @ A.T,
                   lambda z: np.broadcast_to(A, (len(z),) + A.shape))

    def bases(self) -> ReducedBases:
        return self._bases

    def _evaluate(self, m):
        b = self._bases
        return self._phi(m @ b.input_basis) @ b.output_basis.T + b.output_shift

    def _jvp(self, m, v, return_q):
        b = self._bases
        z = m @ b.input_basis
        jphi = self._phi_jac(z)
        out = np.einsum("qr,brs,bks->bkq", b.output_basis, jphi, v @ b.input_basis,
                        optimize=True)
        return out, (self._evaluate(m) if return_q else None)

    def _vjp(self, m, w, return_q):
        b = self._bases
        z = m @ b.input_basis
        jphi = self._phi_jac(z)
        out = np.einsum("ms,brs,bkr->bkm", b.input_basis, jphi, w @ b.output_basis,
                        optimize=True)
        return out, (self._evaluate(m) if return_q else None)

    def _reduced_jacobian(self, m, output_basis, input_basis):
        b = self._bases
        if output_basis is b.output_basis and input_basis is b.input_basis:
            z = m @ b.input_basis
            return np.array(self._phi_jac(z)), self._evaluate(m)
        return super()._reduced_jacobian(m, output_basis, input_basis)


class ServedModel(ForwardModel):
    """A model served by dino-serve, through a :class:`dino_serve.DinoClient`: each batched
    method is one RPC (Evaluate, Jvp / Vjp in the per-point [B, k, ...] form,
    ReducedJacobian), computed in ``dtype`` ("fp64" by default)."""

    def __init__(self, client: Any, name: str, version: int = 0, label: str = "",
                 dtype: str | None = "fp64", timeout: float | None = None) -> None:
        info = client.model_info(name, version=version, label=label, timeout=timeout)
        super().__init__(info["input_dim"], info["output_dim"])
        self.client = client
        self.name = name
        self.info = info
        self._ref = {"version": version, "label": label, "dtype": dtype, "timeout": timeout}
        self._bases: ReducedBases | None = None

    def bases(self) -> ReducedBases | None:
        if not self.info["has_reduced_bases"]:
            return None
        if self._bases is None:
            b = self.client.bases(self.name, **self._ref)
            self._bases = ReducedBases(b["input_basis"].astype(np.float64),
                                       b["output_basis"].astype(np.float64),
                                       b["output_shift"].astype(np.float64))
        return self._bases

    def _evaluate(self, m):
        return self.client.evaluate(self.name, m, **self._ref).astype(np.float64)

    def _jvp(self, m, v, return_q):
        r = self.client.jvp(self.name, m, v, return_q=return_q, **self._ref)
        if return_q:
            return r[0].astype(np.float64), r[1].reshape(len(m), -1).astype(np.float64)
        return r.astype(np.float64), None

    def _vjp(self, m, w, return_q):
        r = self.client.vjp(self.name, m, w, return_q=return_q, **self._ref)
        if return_q:
            return r[0].astype(np.float64), r[1].reshape(len(m), -1).astype(np.float64)
        return r.astype(np.float64), None

    def _reduced_jacobian(self, m, output_basis, input_basis):
        own = self._bases is not None and output_basis is self._bases.output_basis \
            and input_basis is self._bases.input_basis
        if own:
            jr, q = self.client.reduced_jacobian(self.name, m, **self._ref)
        else:
            jr, q = self.client.reduced_jacobian(self.name, m, output_basis, input_basis,
                                                 **self._ref)
        return jr.astype(np.float64), q.astype(np.float64)
