"""MAP estimation: minimize the negative log posterior Φ(m0 + L x) + ½‖x‖² over whitened x
(the prior-preconditioned form: the prior part of the Hessian is the identity).

* :func:`gauss_newton_cg` — inexact Gauss–Newton–CG: each Newton system
  (I + H_GN) p = −g is solved by conjugate gradients to the relative tolerance η_k
  (Eisenstat–Walker: η_k = min(η_max, √(‖g_k‖/‖g_0‖)), or a fixed forcing term), with
  H_GN v = Lᵀ Jᵀ Γ⁻¹ J L v from one Jvp and one Vjp; Armijo backtracking on the cost.
* :func:`lbfgs` — L-BFGS with gradients from Vjp (one Evaluate and one Vjp per iteration,
  plus an Evaluate per backtracking step).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from .problem import BayesianProblem

__all__ = ["MapResult", "gauss_newton_cg", "lbfgs"]


@dataclasses.dataclass
class MapResult:
    """The MAP point and how the solver got there."""
    m: np.ndarray                # the MAP parameter [d_M]
    x: np.ndarray                # its whitened coordinates [d_M]
    cost: float                  # Φ + ½‖x‖² at the MAP
    misfit: float                # Φ at the MAP
    gradient_norm: float         # ‖∇ cost‖ in whitened coordinates
    iterations: int
    cg_iterations: int           # total (Gauss–Newton–CG only)
    converged: bool
    reason: str
    history: list[dict[str, float]]
    counts: dict[str, int]


def _state(problem: BayesianProblem, x: np.ndarray) -> tuple[float, float, np.ndarray]:
    misfit, q = problem.misfit(x[None])
    return float(misfit[0] + 0.5 * x @ x), float(misfit[0]), q


def _gradient(problem: BayesianProblem, x: np.ndarray, q: np.ndarray) -> np.ndarray:
    g, _ = problem.misfit_gradient(x[None], q)
    return x + g[0]


def _armijo(problem: BayesianProblem, x: np.ndarray, cost: float, g: np.ndarray,
            p: np.ndarray, c1: float, max_backtracks: int
            ) -> tuple[np.ndarray, float, float, np.ndarray, float] | None:
    slope = float(g @ p)
    alpha = 1.0
    for _ in range(max_backtracks + 1):
        x_new = x + alpha * p
        cost_new, misfit_new, q_new = _state(problem, x_new)
        # The sufficient decrease, allowing for rounding in the cost near the optimum.
        if cost_new <= cost + c1 * alpha * slope + 8 * np.finfo(float).eps * abs(cost):
            return x_new, cost_new, misfit_new, q_new, alpha
        alpha *= 0.5
    return None


def _counts(problem: BayesianProblem, before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in problem.model.counts.items()
            if v != before.get(k, 0)}


def gauss_newton_cg(problem: BayesianProblem, x0: Any = None, *, max_iter: int = 50,
                    gtol_rel: float = 1e-8, gtol_abs: float = 1e-12,
                    forcing: str | float = "eisenstat_walker", eta_max: float = 0.5,
                    max_cg: int | None = None, c1: float = 1e-4, max_backtracks: int = 20,
                    callback: Callable[[dict[str, float]], None] | None = None) -> MapResult:
    """Inexact Gauss–Newton–CG (module doc) from whitened ``x0`` (default 0: the prior
    mean). Stops when ‖g‖ <= max(gtol_abs, gtol_rel ‖g_0‖), after ``max_iter``
    iterations, or when the line search fails. ``forcing``: "eisenstat_walker" or a fixed
    relative CG tolerance. ``callback`` gets each iteration's history entry."""
    d = problem.dim
    before = dict(problem.model.counts)
    x = np.zeros(d) if x0 is None else np.asarray(x0, dtype=np.float64).reshape(d).copy()
    max_cg = max_cg or d
    cost, misfit, q = _state(problem, x)
    g = _gradient(problem, x, q)
    g0 = float(np.linalg.norm(g))
    tol = max(gtol_abs, gtol_rel * g0)
    history: list[dict[str, float]] = []
    total_cg = 0
    reason = "max_iter"
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        gnorm = float(np.linalg.norm(g))
        if gnorm <= tol:
            converged, reason, it = True, "gradient", it - 1
            break
        eta = (min(eta_max, np.sqrt(gnorm / g0)) if forcing == "eisenstat_walker"
               else float(forcing))
        # CG on (I + H_GN) p = −g, to ‖r‖ <= η ‖g‖.
        p = np.zeros(d)
        r = -g.copy()
        z = r.copy()
        rr = float(r @ r)
        cg = 0
        while cg < max_cg and np.sqrt(rr) > eta * gnorm:
            hz = z + problem.gauss_newton_apply(x[None], z[None])[0]
            curvature = float(z @ hz)
            if curvature <= 0:
                break
            alpha = rr / curvature
            p += alpha * z
            r -= alpha * hz
            rr_new = float(r @ r)
            z = r + (rr_new / rr) * z
            rr = rr_new
            cg += 1
        total_cg += cg
        if not p.any():
            p = -g
        step = _armijo(problem, x, cost, g, p, c1, max_backtracks)
        if step is None:
            reason = "line_search"
            break
        x, cost, misfit, q, alpha = step
        g = _gradient(problem, x, q)
        entry = {"iteration": it, "cost": cost, "misfit": misfit,
                 "gradient_norm": float(np.linalg.norm(g)), "cg_iterations": cg,
                 "forcing": eta, "step": alpha}
        history.append(entry)
        if callback is not None:
            callback(entry)
    else:
        if float(np.linalg.norm(g)) <= tol:
            converged, reason = True, "gradient"
    return MapResult(problem.to_parameter(x[None])[0], x, cost, misfit,
                     float(np.linalg.norm(g)), it, total_cg, converged, reason, history,
                     _counts(problem, before))


def lbfgs(problem: BayesianProblem, x0: Any = None, *, memory: int = 10,
          max_iter: int = 500, gtol_rel: float = 1e-8, gtol_abs: float = 1e-12,
          c1: float = 1e-4, max_backtracks: int = 30,
          callback: Callable[[dict[str, float]], None] | None = None) -> MapResult:
    """L-BFGS (two-loop recursion, initial Hessian γ I with γ = sᵀy/yᵀy, pairs with
    sᵀy <= 0 skipped) with Armijo backtracking, from whitened ``x0`` (default 0)."""
    d = problem.dim
    before = dict(problem.model.counts)
    x = np.zeros(d) if x0 is None else np.asarray(x0, dtype=np.float64).reshape(d).copy()
    cost, misfit, q = _state(problem, x)
    g = _gradient(problem, x, q)
    tol = max(gtol_abs, gtol_rel * float(np.linalg.norm(g)))
    pairs: list[tuple[np.ndarray, np.ndarray, float]] = []
    history: list[dict[str, float]] = []
    reason, converged, it = "max_iter", False, 0
    for it in range(1, max_iter + 1):
        if float(np.linalg.norm(g)) <= tol:
            converged, reason, it = True, "gradient", it - 1
            break
        # Two-loop recursion: p = −H g.
        v = g.copy()
        alphas = []
        for s, y, rho in reversed(pairs):
            a = rho * float(s @ v)
            alphas.append(a)
            v -= a * y
        gamma = float(pairs[-1][0] @ pairs[-1][1] / (pairs[-1][1] @ pairs[-1][1])) \
            if pairs else 1.0
        v *= gamma
        for (s, y, rho), a in zip(pairs, reversed(alphas)):
            v += (a - rho * float(y @ v)) * s
        p = -v
        if float(g @ p) >= 0:  # Not a descent direction: restart from steepest descent.
            pairs.clear()
            p = -g
        step = _armijo(problem, x, cost, g, p, c1, max_backtracks)
        if step is None:
            reason = "line_search"
            break
        x_new, cost, misfit, q, alpha = step
        g_new = _gradient(problem, x_new, q)
        s, y = x_new - x, g_new - g
        sy = float(s @ y)
        if sy > 1e-12 * float(np.linalg.norm(s) * np.linalg.norm(y)):
            pairs.append((s, y, 1.0 / sy))
            if len(pairs) > memory:
                pairs.pop(0)
        x, g = x_new, g_new
        entry = {"iteration": it, "cost": cost, "misfit": misfit,
                 "gradient_norm": float(np.linalg.norm(g)), "step": alpha}
        history.append(entry)
        if callback is not None:
            callback(entry)
    else:
        if float(np.linalg.norm(g)) <= tol:
            converged, reason = True, "gradient"
    return MapResult(problem.to_parameter(x[None])[0], x, cost, misfit,
                     float(np.linalg.norm(g)), it, 0, converged, reason, history,
                     _counts(problem, before))
