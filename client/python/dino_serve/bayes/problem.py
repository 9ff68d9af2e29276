"""The Bayesian inverse problem: prior N(m0, C), data d = f(m) + η with η ~ N(0, Γ_noise),
Γ_noise = diag(σ²), and the posterior ∝ exp(−Φ(m)) · prior with the data misfit
Φ(m) = ½ ‖(f(m) − d) / σ‖². Everything is written in prior-whitened coordinates
x (m = m0 + L x, x ~ N(0, I) under the prior), where the posterior is
∝ exp(−Φ(m0 + L x) − ½‖x‖²)."""
from __future__ import annotations

from typing import Any

import numpy as np

from .models import ForwardModel
from .prior import Prior

__all__ = ["BayesianProblem"]


class BayesianProblem:
    """Prior, forward model, data and noise; batched methods take whitened rows x [B, d_M]."""

    def __init__(self, model: ForwardModel, prior: Prior, data: Any, noise_std: Any) -> None:
        """``data`` d [d_Q]; ``noise_std`` σ, a scalar or [d_Q]."""
        if prior.dim != model.input_dim:
            raise ValueError("prior dimension %d != model input dimension %d"
                             % (prior.dim, model.input_dim))
        self.model = model
        self.prior = prior
        self.data = np.asarray(data, dtype=np.float64).reshape(model.output_dim)
        self.noise_std = np.broadcast_to(np.asarray(noise_std, dtype=np.float64),
                                         (model.output_dim,)).copy()
        self.noise_precision = 1.0 / self.noise_std ** 2
        self.dim = model.input_dim

    # Coordinates -------------------------------------------------------------------------

    def to_parameter(self, x: Any) -> np.ndarray:
        """m = m0 + L x."""
        return self.prior.to_parameter(x)

    def whiten(self, m: Any) -> np.ndarray:
        """x = L⁻¹ (m − m0)."""
        return self.prior.whiten(m)

    # Misfit, cost and derivatives ------------------------------------------------------------

    def misfit_from_q(self, q: Any) -> np.ndarray:
        """Φ = ½ ‖(q − d)/σ‖² per row of q [B, d_Q]."""
        r = (np.asarray(q, dtype=np.float64) - self.data) / self.noise_std
        return 0.5 * np.sum(r * r, axis=-1)

    def weighted_residual(self, q: Any) -> np.ndarray:
        """Γ⁻¹ (q − d), the cotangent of Φ's gradient."""
        return (np.asarray(q, dtype=np.float64) - self.data) * self.noise_precision

    def misfit(self, x: Any) -> tuple[np.ndarray, np.ndarray]:
        """(Φ [B], q [B, d_Q]) at whitened x, with one Evaluate of all rows."""
        q = self.model.evaluate(self.to_parameter(x))
        return self.misfit_from_q(q), q

    def cost(self, x: Any) -> np.ndarray:
        """The negative log posterior (up to a constant) Φ + ½‖x‖² per row."""
        x = np.atleast_2d(x)
        return self.misfit(x)[0] + 0.5 * np.sum(x * x, axis=-1)

    def misfit_gradient(self, x: Any, q: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """(∇ₓΦ = Lᵀ J(m)ᵀ Γ⁻¹ (q − d) [B, d_M], q): one Vjp (with q when not given, the
        Vjp has to know q first, so one Evaluate before it)."""
        x = np.atleast_2d(x)
        m = self.to_parameter(x)
        if q is None:
            q = self.model.evaluate(m)
        g = self.model.vjp(m, self.weighted_residual(q))
        return self.prior.apply_sqrt_cov(g, transpose=True), np.asarray(q)

    def gauss_newton_apply(self, x: Any, v: Any) -> np.ndarray:
        """The misfit's Gauss–Newton Hessian in whitened coordinates applied per row,
        Lᵀ Jᵀ Γ⁻¹ J L v (one Jvp and one Vjp)."""
        x, v = np.atleast_2d(x), np.atleast_2d(v)
        m = self.to_parameter(x)
        jv = self.model.jvp(m, self.prior.apply_sqrt_cov(v))
        g = self.model.vjp(m, jv * self.noise_precision)
        return self.prior.apply_sqrt_cov(g, transpose=True)
