"""MCMC for Bayesian inverse problems with many chains in parallel: each step of every
kernel makes one batched request for all chains (one Evaluate for pCN, one ReducedJacobian
for DINO-mMALA, plus one Evaluate of the exact model for the chains that pass the first
stage of delayed acceptance).

Kernels work in prior-whitened coordinates x (m = m0 + L x), where the prior is N(0, I):

* :class:`PCN` — preconditioned Crank–Nicolson (Cotter, Roberts, Stuart, White 2013):
  y = √(1−β²) x + β ξ, accepted with probability min(1, exp(Φ(x) − Φ(y))).
* :class:`MMALA` — infinite-dimensional manifold MALA (Beskos, Girolami, Lan, Farrell,
  Stuart 2017) with the low-rank Gauss–Newton metric of a geometry provider
  (geometry.py), as DINO-mMALA in Cao, O'Leary-Roseberry & Ghattas (2024): with
  K(x) = (I + H(x))⁻¹ and g(x) = H(x) x − ∇Φ(x), ρ = (4 − h)/(4 + h),
      y = ρ x + (1 − ρ) K(x) g(x) + √(1 − ρ²) K(x)^{1/2} ξ,
  and the Metropolis–Hastings ratio with the reverse proposal's geometry at y (so one
  geometry call per proposal). The ratio is evaluated in the form where the
  d_M-dimensional Gaussian terms of proposal and prior cancel exactly, leaving only
  inner products with the drift and the k eigenvectors (dimension-robust, no cancellation
  of large numbers). For a linear-Gaussian problem with the exact metric the proposal is
  reversible with respect to the posterior: every proposal is accepted.
  With a ``subspace`` S (orthonormal, fixed; e.g. the leading Gauss–Newton eigenvectors at
  the MAP, a likelihood-informed subspace as in DILI, Cui, Law & Marzouk 2016) the metric
  and gradient are restricted to span(S) and its complement gets its own time step: there
  the proposal is pCN, y⊥ = ρ⊥ x⊥ + √(1 − ρ⊥²) ξ⊥, reversible with respect to the prior, so
  the ratio above is unchanged. A nonlinear map forces a small h on every direction the
  proposal moves; the split keeps the small step where the data say little and lets the
  few data-informed directions take large ones.
  ``conditional``: the complement moves first, and the move in S uses the geometry at the
  intermediate point z = (x_S, y⊥) — for a posterior concentrated along a curved ridge,
  the data-informed coordinates follow the complement's move instead of being proposed
  for where the complement was. The reverse move's S-part uses the geometry at
  w = (y_S, x⊥); the complement's pCN terms cancel with the prior as before, so
      log α = Φ(x) − Φ(y) + log q_S(y_S → x_S; w) − log q_S(x_S → y_S; z)
  with q_S the mMALA density above in S. Per step two geometry calls (at z and w) and
  one Evaluate (at y).
* :class:`DelayedAcceptance` — Christen & Fox (2005): stage 1 is a kernel on a surrogate
  problem; a proposal that passes it is accepted with probability
  min(1, exp(−Φ(y) + Φ̃(y) + Φ(x) − Φ̃(x))) on the exact problem, so the chain targets the
  exact posterior while the exact model only sees stage-1 survivors.
  With ``offset_correction`` the surrogate is corrected at the current point by the error
  the exact model shows there, f̃_x(z) = f̃(z) + f(x) − f̃(x) (Christen & Fox's state-
  dependent approximation, Cui, Fox & O'Sullivan 2011): exact at x, so stage 1 judges only
  how the surrogate's error changes between x and y, and the proposal's drift uses the
  exact residual at x. The stage-2 ratio then carries both stage-1 probabilities,
      α₂ = min(1, π(y) q(y→x) α₁(y→x) / (π(x) q(x→y) α₁(x→y))),
  with α₁(y→x) computed from the surrogate corrected at y — which needs f(y), known once
  stage 2 has evaluated it — so the chain stays exact.

:func:`sample` runs a kernel; seeds (numpy Generators) make runs reproducible.
"""
from __future__ import annotations

import abc
import dataclasses
import math
import time
from typing import Any, Callable

import numpy as np

from .geometry import LocalGeometry
from .problem import BayesianProblem

__all__ = ["ChainState", "Kernel", "PCN", "MMALA", "DelayedAcceptance", "MCMCResult",
           "sample"]


@dataclasses.dataclass
class ChainState:
    """The chains' current points and what the kernel knows there."""
    x: np.ndarray                          # whitened points [C, d]
    misfit: np.ndarray                     # the kernel's target misfit Φ(x) [C]
    geometry: LocalGeometry | None = None  # mMALA: the metric at x
    drift: np.ndarray | None = None        # mMALA: (1 − ρ) K(x) g(x)
    exact_misfit: np.ndarray | None = None  # delayed acceptance: the exact Φ(x)
    q: np.ndarray | None = None            # the kernel's model output f(x) [C, d_Q]
    exact_q: np.ndarray | None = None      # delayed acceptance: the exact f(x)
    via: tuple | None = None               # a conditional mMALA proposal y: the states at
    #                                        z = (x_S, y⊥) and w = (y_S, x⊥) (MMALA)

    def select(self, mask: np.ndarray, other: "ChainState") -> "ChainState":
        """Rows of self where mask, else of other (a proposal's ``via`` is dropped)."""
        def pick(a, b):
            if a is None:
                return None
            return np.where(mask.reshape((-1,) + (1,) * (np.ndim(a) - 1)), a, b)
        geometry = None if self.geometry is None else self.geometry.select(mask, other.geometry)
        return ChainState(pick(self.x, other.x), pick(self.misfit, other.misfit), geometry,
                          pick(self.drift, other.drift),
                          pick(self.exact_misfit, other.exact_misfit),
                          pick(self.q, other.q), pick(self.exact_q, other.exact_q))


class Kernel(abc.ABC):
    """A Markov kernel for all chains at once: ``init`` computes the state at points,
    ``step`` moves every chain once and says which moved."""

    problem: BayesianProblem

    @abc.abstractmethod
    def init(self, x: np.ndarray) -> ChainState: ...

    @abc.abstractmethod
    def step(self, state: ChainState, rng: np.random.Generator
             ) -> tuple[ChainState, dict[str, np.ndarray]]:
        """(next state, {"accepted": [C] bool, ...})."""


class MetropolisKernel(Kernel):
    """A kernel defined by a proposal and its log acceptance ratio."""

    @abc.abstractmethod
    def move(self, state: ChainState, rng: np.random.Generator,
             output_offset: np.ndarray | None = None) -> ChainState:
        """The proposed state (its target misfit evaluated). ``output_offset`` [C, d_Q]:
        the target is the model corrected by this much at the states' points (delayed
        acceptance's offset correction; ``state`` is already corrected): a move that
        evaluates the model at other points on its way applies it there too."""

    @abc.abstractmethod
    def log_transition(self, origin: ChainState, target: ChainState) -> np.ndarray:
        """log q(origin → target) [C] up to the terms that cancel with the prior's in the
        Metropolis–Hastings ratio, from what the two states carry about the move (the
        origin's drift; a conditional mMALA's intermediate states on the proposal)."""

    def log_ratio(self, origin: ChainState, target: ChainState) -> np.ndarray:
        """The log Metropolis–Hastings ratio of the move origin → target [C] for the target
        misfits the two states carry."""
        return (origin.misfit - target.misfit + self.log_transition(target, origin)
                - self.log_transition(origin, target))

    def propose(self, state: ChainState, rng: np.random.Generator
                ) -> tuple[ChainState, np.ndarray]:
        """(proposed state, log Metropolis–Hastings ratio [C])."""
        proposal = self.move(state, rng)
        return proposal, self.log_ratio(state, proposal)

    @abc.abstractmethod
    def with_output(self, state: ChainState, q: np.ndarray) -> ChainState:
        """The state at the same points for the target whose model output there is ``q``
        [C, d_Q] instead of ``state.q`` (misfit, and for mMALA gradient and drift, from q;
        no model call): the error-corrected surrogate of delayed acceptance."""

    def step(self, state, rng):
        proposal, log_ratio = self.propose(state, rng)
        log_u = np.log(rng.random(len(state.x)))
        accepted = log_u < log_ratio
        return proposal.select(accepted, state), {"accepted": accepted,
                                                  "log_ratio": log_ratio}


class PCN(MetropolisKernel):
    """pCN with step size ``beta`` in (0, 1] (one Evaluate per step for all chains)."""

    def __init__(self, problem: BayesianProblem, beta: float) -> None:
        if not 0 < beta <= 1:
            raise ValueError("beta must be in (0, 1]")
        self.problem = problem
        self.beta = float(beta)

    def init(self, x):
        x = np.array(x, dtype=np.float64, ndmin=2)
        misfit, q = self.problem.misfit(x)
        return ChainState(x, misfit, q=q)

    def move(self, state, rng, output_offset=None):
        xi = rng.standard_normal(state.x.shape)
        y = math.sqrt(1.0 - self.beta ** 2) * state.x + self.beta * xi
        misfit, q = self.problem.misfit(y)
        return ChainState(y, misfit, q=q)

    def log_transition(self, origin, target):
        return np.zeros(len(origin.x))   # pCN is reversible with respect to the prior

    def with_output(self, state, q):
        return dataclasses.replace(state, misfit=self.problem.misfit_from_q(q))


class MMALA(MetropolisKernel):
    """Manifold MALA with time step ``h`` > 0 (module doc) and the metric of ``geometry``
    (a ReducedGaussNewton or AdjointGaussNewton, or any callable x -> LocalGeometry). The
    chain targets ``problem`` (default: the geometry's); when that differs from the
    geometry's problem, each step also evaluates the target's misfit (one more call).
    ``subspace`` S [d, s] (orthonormal columns) and ``complement_h``: the split proposal of
    the module doc (mMALA with h in span(S), pCN with complement_h outside it);
    ``conditional``: its S-move after the complement's (module doc)."""

    def __init__(self, geometry: Callable[[np.ndarray], LocalGeometry], h: float,
                 problem: BayesianProblem | None = None, subspace: Any = None,
                 complement_h: float | None = None, conditional: bool = False) -> None:
        self.geometry = geometry
        self.problem = problem if problem is not None else geometry.problem
        self._same = self.problem is getattr(geometry, "problem", None)
        self.conditional = bool(conditional)
        if subspace is None:
            if complement_h is not None or conditional:
                raise ValueError("complement_h and conditional need a subspace")
            self.subspace = None
        else:
            self.subspace = np.asarray(subspace, dtype=np.float64)
            if (self.subspace.ndim != 2 or self.subspace.shape[0] != self.problem.dim
                    or not np.allclose(self.subspace.T @ self.subspace,
                                       np.eye(self.subspace.shape[1]), atol=1e-8)):
                raise ValueError("subspace must be [%d, s] with orthonormal columns"
                                 % self.problem.dim)
        self.set_step(h, complement_h)

    def set_step(self, h: float, complement_h: float | None = None,
                 state: ChainState | None = None) -> None:
        """Sets h (and the complement's step; default h). The drift at ``state``'s points
        depends on h: it is recomputed (no model call)."""
        if not h > 0:
            raise ValueError("h must be > 0")
        complement_h = h if complement_h is None else complement_h
        if not complement_h > 0:
            raise ValueError("complement_h must be > 0")
        self.h, self.complement_h = float(h), float(complement_h)
        self.rho = (4.0 - h) / (4.0 + h)
        self.scale = math.sqrt(1.0 - self.rho ** 2)   # √(1 − ρ²)
        self.rho_c = (4.0 - complement_h) / (4.0 + complement_h)
        self.scale_c = math.sqrt(1.0 - self.rho_c ** 2)
        if state is not None and state.geometry is not None:
            state.drift = self._drift(state.x, state.geometry)

    def _geometry(self, x: np.ndarray) -> LocalGeometry:
        geo = self.geometry(x)
        return geo if self.subspace is None else geo.restrict(self.subspace)

    def _state(self, x: np.ndarray, geo: LocalGeometry) -> ChainState:
        misfit, q = (geo.misfit, geo.q) if self._same else self.problem.misfit(x)
        return ChainState(x, misfit, geo, self._drift(x, geo), q=q)

    def init(self, x):
        x = np.array(x, dtype=np.float64, ndmin=2)
        if self.conditional:   # its moves use the geometry at intermediate points only
            misfit, q = self.problem.misfit(x)
            return ChainState(x, misfit, q=q)
        return self._state(x, self._geometry(x))

    def _drift(self, x: np.ndarray, geo: LocalGeometry) -> np.ndarray:
        """(1 − ρ) K g with g = H x − ∇Φ and K = (I + H)⁻¹ = I − W diag(λ/(1+λ)) Wᵀ."""
        g = geo.hessian_apply(x) - geo.gradient
        lam = geo.eigenvalues
        kg = g - geo.lift(lam / (1.0 + lam) * geo.project(g))
        return (1.0 - self.rho) * kg

    def _log_transition(self, origin: ChainState, target: np.ndarray) -> np.ndarray:
        """log q(origin → target) up to terms that cancel with the prior in the ratio:
        ½ Σ log(1+λ) − (|a|² − 2 aᵀ(t − ρo) + Σ λ_i (w_iᵀ(t − μ))²) / (2 (1 − ρ²))
        with a the drift and μ = ρ o + a."""
        geo, a = origin.geometry, origin.drift
        lam = geo.eigenvalues
        step = target - self.rho * origin.x
        c = geo.project(step - a)
        quad = (np.sum(a * a, axis=1) - 2.0 * np.sum(a * step, axis=1)
                + np.sum(lam * c * c, axis=1))
        return 0.5 * np.sum(np.log1p(lam), axis=1) - quad / (2.0 * self.scale ** 2)

    def _noise(self, geo: LocalGeometry, xi: np.ndarray) -> np.ndarray:
        """K^{1/2} ξ per row, K = (I + H)⁻¹."""
        lam = geo.eigenvalues
        return xi + geo.lift((1.0 / np.sqrt(1.0 + lam) - 1.0) * geo.project(xi))

    def _in_subspace(self, v: np.ndarray) -> np.ndarray:
        return (v @ self.subspace) @ self.subspace.T

    def move(self, state, rng, output_offset=None):
        if self.conditional:
            return self._conditional_move(state, rng, output_offset)
        xi = rng.standard_normal(state.x.shape)
        k_sqrt_xi = self._noise(state.geometry, xi)
        y = self.rho * state.x + state.drift + self.scale * k_sqrt_xi
        if self.subspace is not None and self.complement_h != self.h:
            # Outside span(S), K^{1/2} ξ = ξ: swap the mMALA step for the complement's.
            v = (self.rho_c - self.rho) * state.x + (self.scale_c - self.scale) * xi
            y += v - self._in_subspace(v)
        return self._state(y, self._geometry(y))

    def _conditional_move(self, state: ChainState, rng: np.random.Generator,
                          output_offset: np.ndarray | None) -> ChainState:
        """The complement's pCN move, then mMALA in S from z = (x_S, y⊥) (module doc), with
        the model corrected by ``output_offset`` at z when there is one."""
        xi = rng.standard_normal(state.x.shape)
        x_s, xi_s = self._in_subspace(state.x), self._in_subspace(xi)
        y_c = self.rho_c * (state.x - x_s) + self.scale_c * (xi - xi_s)
        z = x_s + y_c
        at_z = self._intermediate(z, output_offset)
        y_s = self._in_subspace(self.rho * z + at_z.drift
                                + self.scale * self._noise(at_z.geometry, xi_s))
        y, w = y_s + y_c, y_s + state.x - x_s
        # At y only the target's misfit: an Evaluate costs a fraction of a geometry call.
        misfit, q = self.problem.misfit(y)
        return ChainState(y, misfit, q=q, via=(at_z, self._intermediate(w)))

    def _intermediate(self, points: np.ndarray,
                      output_offset: np.ndarray | None = None) -> ChainState:
        """The state at intermediate points of a conditional move (geometry and drift)."""
        geo = self._geometry(points)
        state = ChainState(points, geo.misfit, geo, q=geo.q)
        if output_offset is not None:
            return self.with_output(state, geo.q + output_offset)
        state.drift = self._drift(points, geo)
        return state

    def log_transition(self, origin, target):
        if not self.conditional:
            return self._log_transition(origin, target.x)
        # The S-move's density from the geometry at the move's intermediate point: the
        # proposal carries both, (x_S, y⊥) for x → y and (y_S, x⊥) for y → x.
        if target.via is not None:
            return self._log_transition(target.via[0], target.x)
        return self._log_transition(origin.via[1], target.x)

    def with_output(self, state, q):
        if not self._same:
            raise ValueError("with_output needs the geometry's problem as the target")
        problem = self.geometry.problem
        misfit = problem.misfit_from_q(q)
        via = state.via
        if via is not None:   # the intermediate states get the same output correction
            via = tuple(self.with_output(v, v.q + q - state.q) for v in via)
        new = dataclasses.replace(state, misfit=misfit, via=via)
        if state.geometry is not None:
            # A restricted geometry's gradient map is restricted too: the gradient stays
            # in S.
            gradient = state.geometry.gradient_for(problem.weighted_residual(q))
            new.geometry = dataclasses.replace(state.geometry, misfit=misfit,
                                               gradient=gradient)
            new.drift = self._drift(state.x, new.geometry)
        return new


class DelayedAcceptance(Kernel):
    """Two-stage delayed acceptance (module doc): ``kernel`` targets a surrogate problem;
    ``exact`` is the problem with the exact model (same prior and data), evaluated in one
    batched call per step for the chains that pass stage 1 only. ``offset_correction``:
    stage 1 uses the surrogate corrected by the exact model's error at the current point
    (module doc); it costs no model call more (f(x) is known from the step that accepted x)."""

    def __init__(self, kernel: MetropolisKernel, exact: BayesianProblem,
                 offset_correction: bool = False) -> None:
        self.kernel = kernel
        self.problem = exact
        self.offset_correction = bool(offset_correction)

    def init(self, x):
        state = self.kernel.init(x)
        state.exact_misfit, state.exact_q = self.problem.misfit(state.x)
        if self.offset_correction:
            return self.kernel.with_output(state, state.exact_q)
        return state

    def step(self, state, rng):
        kernel = self.kernel
        if self.offset_correction:
            # α₁(x→y) on the surrogate corrected at x (state is, so state.misfit = Φ(x)).
            offset = state.exact_q - state.q
            proposal = kernel.move(state, rng, offset)
            at_x = kernel.with_output(proposal, proposal.q + offset)
            log_ratio = np.minimum(0.0, kernel.log_ratio(state, at_x))
        else:
            proposal, log_ratio = kernel.propose(state, rng)
        c = len(state.x)
        log_u1, log_u2 = np.log(rng.random(c)), np.log(rng.random(c))
        stage1 = log_u1 < log_ratio
        accepted = np.zeros(c, dtype=bool)
        exact_misfit, exact_q = np.array(state.exact_misfit), np.array(state.exact_q)
        if stage1.any():
            idx = np.flatnonzero(stage1)
            exact_y, q_y = self.problem.misfit(proposal.x[idx])
            if self.offset_correction:
                q_y_all = np.array(proposal.q)   # rows outside idx are not used
                q_y_all[idx] = q_y
                # The proposal as a state (corrected at y), and x seen from y: the reverse
                # move's stage-1 probability α₁(y→x) uses the surrogate corrected at y.
                proposal = kernel.with_output(proposal, q_y_all)
                from_y = kernel.with_output(state, state.q + q_y_all - proposal.q)
                log_reverse = np.minimum(0.0, kernel.log_ratio(proposal, from_y))
                # q(x→y) as proposed, from the surrogate corrected at x; q(y→x) as y would
                # propose it, corrected at y.
                log_ratio2 = (state.misfit - proposal.misfit
                              + kernel.log_transition(proposal, from_y)
                              - kernel.log_transition(state, at_x) + log_reverse
                              - log_ratio)[idx]
            else:
                log_ratio2 = (-exact_y + proposal.misfit[idx]
                              + state.exact_misfit[idx] - state.misfit[idx])
            ok = log_u2[idx] < log_ratio2
            accepted[idx[ok]] = True
            exact_misfit[idx[ok]] = exact_y[ok]
            exact_q[idx[ok]] = q_y[ok]
        new = proposal.select(accepted, state)
        new.exact_misfit, new.exact_q = exact_misfit, exact_q
        return new, {"accepted": accepted, "stage1_accepted": stage1}


@dataclasses.dataclass
class MCMCResult:
    """What :func:`sample` recorded after burn-in, chain-major ([C, N, ...])."""
    samples: np.ndarray | None       # parameters m [C, N, d_M] (keep_samples)
    whitened: np.ndarray | None      # x [C, N, d_M] (keep_samples)
    misfit: np.ndarray               # the target's Φ at every kept state [C, N]
    accepted: np.ndarray             # [C, N] bool: the step into this state accepted
    stage1_accepted: np.ndarray | None  # delayed acceptance: passed stage 1 [C, N]
    observables: np.ndarray | None   # m · directions [C, N, k] (directions)
    mean: np.ndarray                 # posterior mean of m over all kept states [d_M]
    variance: np.ndarray             # pointwise posterior variance of m [d_M]
    final_state: ChainState
    counts: dict[str, int]           # model calls and points during the run
    wall_time: float                 # seconds

    @property
    def acceptance_rate(self) -> float:
        """Fraction of accepted proposals over all chains and kept steps."""
        return float(self.accepted.mean())

    @property
    def chain_acceptance_rates(self) -> np.ndarray:
        return self.accepted.mean(axis=1)

    @property
    def stage1_acceptance_rate(self) -> float | None:
        """Delayed acceptance: the surrogate stage's rate (None otherwise)."""
        return None if self.stage1_accepted is None else float(self.stage1_accepted.mean())

    @property
    def stage2_acceptance_rate(self) -> float | None:
        """Delayed acceptance: the fraction of stage-1 survivors the exact stage accepted."""
        if self.stage1_accepted is None:
            return None
        passed = self.stage1_accepted.sum()
        return float(self.accepted.sum() / passed) if passed else float("nan")


def _count_snapshot(problems: list[BayesianProblem]) -> dict[str, int]:
    out: dict[str, int] = {}
    seen = set()
    for p in problems:
        if id(p.model) in seen:
            continue
        seen.add(id(p.model))
        for k, v in p.model.counts.items():
            out[k] = out.get(k, 0) + v
    return out


def _problems(kernel: Kernel) -> list[BayesianProblem]:
    out = [kernel.problem]
    inner = getattr(kernel, "kernel", None)
    if inner is not None:
        out += _problems(inner)
    geometry = getattr(kernel, "geometry", None)
    if geometry is not None and getattr(geometry, "problem", None) is not None:
        out.append(geometry.problem)
    return out


def sample(kernel: Kernel, x0: Any, n_steps: int, rng: np.random.Generator, *,
           burn_in: int = 0, thin: int = 1, keep_samples: bool = True,
           directions: Any = None,
           callback: Callable[[int, ChainState, dict[str, np.ndarray]], None] | None = None
           ) -> MCMCResult:
    """Runs ``n_steps`` steps of ``kernel`` for every chain.

    ``x0``: the chains' whitened starting points [C, d_M] (e.g. rng.standard_normal((C, d))
    for prior draws, or problem.whiten(m_map) repeated), or an int C to start C chains at
    prior draws from ``rng``. The first ``burn_in`` steps are not recorded; then every
    ``thin``-th state is. ``keep_samples``: record m and x ([C, N, d_M] each; off for large
    d_M, where ``mean``/``variance`` and ``directions`` [k, d_M] (recording m · directions,
    e.g. leading prior or posterior eigenvectors) still summarize the chains).
    ``callback(step, state, info)`` after each step. ``rng``: np.random.Generator; the same
    seed, x0 and model answers give the same chains."""
    problem = kernel.problem
    if isinstance(x0, (int, np.integer)):
        x0 = rng.standard_normal((int(x0), problem.dim))
    problems = _problems(kernel)
    before = _count_snapshot(problems)
    start = time.perf_counter()
    state = kernel.init(x0)
    c, d = state.x.shape
    if directions is not None:
        directions = np.atleast_2d(np.asarray(directions, dtype=np.float64))
    kept_x, misfits, accepted, stage1, observed = [], [], [], [], []
    mean = np.zeros(d)      # Running pooled mean and sum of squared deviations (Chan et al.).
    m2 = np.zeros(d)
    n_kept = 0
    delayed = isinstance(kernel, DelayedAcceptance)
    for step in range(n_steps):
        state, info = kernel.step(state, rng)
        if callback is not None:
            callback(step, state, info)
        if step < burn_in or (step - burn_in) % thin:
            continue
        m = problem.to_parameter(state.x)
        batch_mean = m.mean(axis=0)
        batch_m2 = ((m - batch_mean) ** 2).sum(axis=0)
        n_old, n_kept = n_kept * c, n_kept + 1
        delta = batch_mean - mean
        mean = mean + delta * (c / (n_old + c))
        m2 = m2 + batch_m2 + delta * delta * (n_old * c / (n_old + c))
        misfits.append(state.exact_misfit if delayed else state.misfit)
        accepted.append(info["accepted"])
        if delayed:
            stage1.append(info["stage1_accepted"])
        if keep_samples:
            kept_x.append(state.x.copy())
        if directions is not None:
            observed.append(m @ directions.T)
    wall = time.perf_counter() - start
    after = _count_snapshot(problems)
    counts = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}

    def stack(items, shape):
        return np.stack(items, axis=1) if items else np.zeros(shape)

    whitened = stack(kept_x, (c, 0, d)) if keep_samples else None
    samples = None
    if keep_samples:
        samples = problem.to_parameter(whitened.reshape(-1, d)).reshape(whitened.shape)
    variance = m2 / max(n_kept * c - 1, 1)
    return MCMCResult(
        samples=samples, whitened=whitened, misfit=stack(misfits, (c, 0)),
        accepted=stack(accepted, (c, 0)).astype(bool),
        stage1_accepted=stack(stage1, (c, 0)).astype(bool) if delayed else None,
        observables=stack(observed, (c, 0, 0)) if directions is not None else None,
        mean=mean, variance=variance, final_state=state, counts=counts, wall_time=wall)
