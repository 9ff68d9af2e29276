#!/usr/bin/python3
"""dino_serve.bayes against closed forms: the samplers leave a linear-Gaussian posterior
invariant, the diagnostics recover the known ESS and R-hat of AR(1) processes, the MAP
solvers find the closed-form MAP. Pure NumPy, in process (no server).

Invariance tests start every chain at an exact posterior draw and check, after the run,
the mean and every covariance entry against the closed form within 5 Monte Carlo standard
errors (standard errors from the ESS of each estimated quantity), and that those standard
errors are small (so the check has power).

usage: bayes_test.py [<client/python folder>] [unittest arguments]
"""
import os
import sys
import unittest

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if len(sys.argv) > 1 and os.path.isdir(sys.argv[1]):
    sys.path.insert(0, sys.argv.pop(1))
else:
    sys.path.insert(0, os.path.join(HERE, "..", "..", "client", "python"))
from dino_serve import bayes  # noqa: E402

D_M, D_Q, R_M, R_Q = 12, 8, 4, 3


def log_posterior(problem, x):
    """log π(x) up to a constant in whitened coordinates (prior N(0, I))."""
    return -problem.misfit(x)[0] - 0.5 * np.sum(x * x, axis=1)


class LinearGaussian:
    """A reduced-basis-shaped linear model f(m) = U A Vᵀ m + b, a dense correlated prior, and
    the closed-form posterior N(mean, cov)."""

    def __init__(self, sigma=0.2, seed=1, perturbation=0.0):
        rng = np.random.default_rng(seed)
        self.V, _ = np.linalg.qr(rng.standard_normal((D_M, R_M)))
        self.U, _ = np.linalg.qr(rng.standard_normal((D_Q, R_Q)))
        self.A = 2.0 * rng.standard_normal((R_Q, R_M))
        self.b = rng.standard_normal(D_Q)
        self.model = bayes.ReducedBasisModel.linear(self.V, self.U, self.A, self.b)
        i = np.arange(D_M)
        cov = 0.5 * np.exp(-np.abs(i[:, None] - i[None]) / 3.0) + 0.1 * np.eye(D_M)
        self.prior = bayes.DenseGaussianPrior(0.3 * np.ones(D_M), cov)
        m_true = self.prior.sample(1, rng)[0]
        self.data = self.model.evaluate(m_true)[0] + sigma * rng.standard_normal(D_Q)
        self.problem = bayes.BayesianProblem(self.model, self.prior, self.data, sigma)
        J = self.U @ self.A @ self.V.T
        self.J = J
        self.cov = np.linalg.inv(np.linalg.inv(cov) + J.T @ J / sigma ** 2)
        self.mean = self.cov @ (np.linalg.solve(cov, self.prior.mean)
                                + J.T @ (self.data - self.b) / sigma ** 2)
        self.sigma = sigma

    def surrogate(self, perturbation, seed=5):
        """The same problem with a perturbed model (a stand-in for an imperfect DINO)."""
        rng = np.random.default_rng(seed)
        model = bayes.ReducedBasisModel.linear(
            self.V, self.U, self.A + perturbation * rng.standard_normal(self.A.shape),
            self.b + perturbation)
        return bayes.BayesianProblem(model, self.prior, self.data, self.sigma)

    def tanh_problem(self, sigma=0.5):
        """A nonlinear reduced-basis model on the same bases: f(m) = U tanh(A Vᵀm) + b."""
        model = bayes.ReducedBasisModel(
            self.V, self.U, self.b, lambda z: np.tanh(z @ self.A.T),
            lambda z: (1 - np.tanh(z @ self.A.T) ** 2)[:, :, None] * self.A[None])
        return bayes.BayesianProblem(model, self.prior, self.data, sigma)

    def posterior_starts(self, n, seed):
        """Whitened coordinates of n exact posterior draws."""
        rng = np.random.default_rng(seed)
        m = self.mean + rng.standard_normal((n, D_M)) @ np.linalg.cholesky(self.cov).T
        return self.prior.whiten(m)


class InvarianceTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.lg = LinearGaussian()

    def assert_posterior(self, result, lg=None, min_ess=300):
        """Mean and covariance within 5 standard errors of the closed form."""
        lg = lg or self.lg
        samples = result.samples                                  # [C, N, d]
        centered = samples - lg.mean
        ess_mean = bayes.ess(samples)
        self.assertGreater(ess_mean.min(), min_ess, "too few effective samples for a test")
        se_mean = np.sqrt(np.diag(lg.cov) / ess_mean)
        z = np.abs(samples.mean(axis=(0, 1)) - lg.mean) / se_mean
        self.assertLess(z.max(), 5.0, "posterior mean off by %s standard errors" % z.round(1))
        np.testing.assert_allclose(result.mean, samples.reshape(-1, D_M).mean(axis=0),
                                   rtol=1e-10, atol=1e-12)
        iu = np.triu_indices(D_M)
        products = centered[..., iu[0]] * centered[..., iu[1]]   # [C, N, 78]
        ess_cov = bayes.ess(products)
        self.assertGreater(ess_cov.min(), min_ess / 2)
        estimate = products.mean(axis=(0, 1))
        se_cov = products.reshape(-1, len(iu[0])).std(axis=0) / np.sqrt(ess_cov)
        z = np.abs(estimate - lg.cov[iu]) / se_cov
        self.assertLess(z.max(), 5.0, "posterior covariance off by %.1f standard errors"
                        % z.max())

    def run_kernel(self, kernel, chains=64, steps=1000, seed=3, lg=None):
        lg = lg or self.lg
        return bayes.sample(kernel, lg.posterior_starts(chains, 100 + seed), steps,
                            np.random.default_rng(seed))

    def test_pcn(self):
        lg = LinearGaussian(sigma=1.0)  # Weakly informative data: pCN mixes in reach.
        result = self.run_kernel(bayes.PCN(lg.problem, beta=0.3), chains=64, steps=2000,
                                 lg=lg)
        self.assertTrue(0.2 < result.acceptance_rate < 0.9, result.acceptance_rate)
        self.assert_posterior(result, lg)
        # One Evaluate call per step for all chains (and one for the starting points).
        self.assertEqual(result.counts["evaluate_calls"], 2001)
        self.assertEqual(result.counts["evaluate_points"], 2001 * 64)

    def test_dino_mmala_exact_metric_accepts_everything(self):
        # For a linear-Gaussian posterior with the exact Gauss–Newton metric, the mMALA
        # proposal is reversible with respect to the posterior: the MH ratio is 1.
        kernel = bayes.MMALA(bayes.ReducedGaussNewton(self.lg.problem), h=1.0)
        state = kernel.init(self.lg.posterior_starts(16, 0))
        _, log_ratio = kernel.propose(state, np.random.default_rng(0))
        np.testing.assert_allclose(log_ratio, 0.0, atol=1e-8)
        result = self.run_kernel(kernel)
        self.assertEqual(result.acceptance_rate, 1.0)
        self.assert_posterior(result)
        # One ReducedJacobian call per proposal for all chains, nothing else.
        self.assertEqual(result.counts, {"reduced_jacobian_calls": 1001,
                                         "reduced_jacobian_points": 1001 * 64})

    def test_mmala_ratio_equals_dense_gaussian_densities(self):
        # A nonlinear reduced-basis model, a truncated metric: the kernel's log MH ratio
        # (computed in the dimension-robust low-rank form) equals the ratio written with
        # full d_M-dimensional Gaussian proposal densities N(μ(x), (1−ρ²) K(x)).
        lg = self.lg
        problem = lg.tanh_problem()
        # With a subspace S that cuts the metric's range (the whitened span of V plus a
        # random direction, then only 3 of those 5 directions) and its own complement step:
        # N(μ(x), Σ(x)) with Σ = (1−ρ²) P K_S P + (1−ρ⊥²)(I − P), P = S Sᵀ, K_S from the
        # metric restricted to span(S), and μ = ρ P x + ρ⊥ (I − P) x + the drift in span(S).
        whitened_v = np.linalg.qr(lg.prior.L.T @ lg.V)[0]
        extra = np.random.default_rng(6).standard_normal((D_M, 1))
        subspace = np.linalg.qr(np.hstack([whitened_v, extra]))[0]
        cases = [(None, None, None), (2, None, None), (None, subspace, 0.05),
                 (None, subspace[:, :3], 2.5)]
        for rank, s_basis, complement_h in cases:
            kernel = bayes.MMALA(bayes.ReducedGaussNewton(problem, rank=rank), h=0.7,
                                 subspace=s_basis, complement_h=complement_h)
            state = kernel.init(np.random.default_rng(1).standard_normal((5, D_M)))
            proposal, log_ratio = kernel.propose(state, np.random.default_rng(2))
            P = np.eye(D_M) if s_basis is None else s_basis @ s_basis.T

            def log_q(origin, target):
                out = []
                for b in range(len(target)):
                    g = origin.geometry
                    W = g.basis @ g.coeffs[b]
                    K = P - W @ np.diag(g.eigenvalues[b] / (1 + g.eigenvalues[b])) @ W.T
                    grad_term = W @ (g.eigenvalues[b] * (W.T @ origin.x[b])) - P @ g.gradient[b]
                    x = origin.x[b]
                    mu = (kernel.rho * P @ x + kernel.rho_c * (x - P @ x)
                          + (1 - kernel.rho) * K @ grad_term)
                    cov = (1 - kernel.rho ** 2) * K + (1 - kernel.rho_c ** 2) * (np.eye(D_M) - P)
                    r = target[b] - mu
                    out.append(-0.5 * r @ np.linalg.solve(cov, r)
                               - 0.5 * np.linalg.slogdet(cov)[1])
                return np.array(out)

            dense = (log_posterior(problem, proposal.x) - log_posterior(problem, state.x)
                     + log_q(proposal, state.x) - log_q(state, proposal.x))
            np.testing.assert_allclose(log_ratio, dense, rtol=1e-9, atol=1e-9)

    def test_conditional_mmala_ratio_equals_dense_densities(self):
        # The conditional split (complement first, then mMALA in S from z = (x_S, y⊥)):
        # its log MH ratio equals the one written with the two conditional Gaussian
        # densities, N(y⊥; ρ⊥ x⊥, (1−ρ⊥²) I) on the complement and N(y_S; μ(z), (1−ρ²) K(z))
        # on S, and the proposal carries the states at z and w = (y_S, x⊥).
        lg = self.lg
        problem = lg.tanh_problem()
        extra = np.random.default_rng(6).standard_normal((D_M, 1))
        S = np.linalg.qr(np.hstack([lg.prior.L.T @ lg.V, extra]))[0][:, :3]
        C = np.linalg.svd(np.eye(D_M) - S @ S.T)[0][:, :D_M - 3]      # complement basis
        for geometry in (bayes.ReducedGaussNewton(problem), bayes.AdjointGaussNewton(problem)):
            kernel = bayes.MMALA(geometry, h=0.7, subspace=S, complement_h=0.05,
                                 conditional=True)
            state = kernel.init(np.random.default_rng(1).standard_normal((5, D_M)))
            proposal, log_ratio = kernel.propose(state, np.random.default_rng(2))
            x, y = state.x, proposal.x
            at_z, at_w = proposal.via
            P = S @ S.T
            np.testing.assert_allclose(at_z.x, x @ P + y - y @ P, atol=1e-12)
            np.testing.assert_allclose(at_w.x, y @ P + x - x @ P, atol=1e-12)

            def log_q(origin, target, at):
                out = []
                for b in range(len(origin)):
                    g = at.geometry
                    W = g.vectors[b] if g.vectors is not None else g.basis @ g.coeffs[b]
                    lam = g.eigenvalues[b]
                    K = P - W @ np.diag(lam / (1 + lam)) @ W.T
                    grad_term = W @ (lam * (W.T @ at.x[b])) - P @ g.gradient[b]
                    mu = S.T @ (kernel.rho * at.x[b] + (1 - kernel.rho) * K @ grad_term)
                    cov_s = (1 - kernel.rho ** 2) * S.T @ K @ S
                    r_s = S.T @ target[b] - mu
                    r_c = C.T @ (target[b] - kernel.rho_c * origin[b])
                    out.append(-0.5 * r_s @ np.linalg.solve(cov_s, r_s)
                               - 0.5 * np.linalg.slogdet(cov_s)[1]
                               - 0.5 * r_c @ r_c / (1 - kernel.rho_c ** 2)
                               - 0.5 * (D_M - 3) * np.log(1 - kernel.rho_c ** 2))
                return np.array(out)

            dense = (log_posterior(problem, y) - log_posterior(problem, x)
                     + log_q(y, x, at_w) - log_q(x, y, at_z))
            np.testing.assert_allclose(log_ratio, dense, rtol=1e-9, atol=1e-9)
        with self.assertRaisesRegex(ValueError, "conditional need a subspace"):
            bayes.MMALA(bayes.ReducedGaussNewton(problem), h=1.0, conditional=True)

    def test_laplace_draws(self):
        # With ξ = the identity rows, the draws minus the center are the rows of the
        # symmetric K^{1/2}, whose square is K = (I + W diag(λ) Wᵀ)⁻¹.
        W = np.linalg.qr(np.random.default_rng(2).standard_normal((D_M, 3)))[0]
        lam = np.array([1e4, 10.0, 0.5])
        center = np.arange(D_M, dtype=float)
        root = bayes.laplace_draws(center, W, lam, np.eye(D_M)) - center
        np.testing.assert_allclose(root, root.T, atol=1e-12)
        np.testing.assert_allclose(root @ root, np.linalg.inv(np.eye(D_M) + (W * lam) @ W.T),
                                   atol=1e-12)

    def test_mmala_split_step_subspace(self):
        # A subspace containing the data-informed directions (the whitened span of V) plus
        # one more: within it the exact metric, outside it pCN on the prior, so for the
        # linear-Gaussian problem every proposal is accepted whatever the two steps.
        lg = self.lg
        subspace = np.linalg.qr(np.hstack([lg.prior.L.T @ lg.V, np.eye(D_M)[:, :1]]))[0]
        for geometry in (bayes.ReducedGaussNewton(lg.problem),
                         bayes.AdjointGaussNewton(bayes.BayesianProblem(
                             bayes.LinearModel(lg.J, lg.b), lg.prior, lg.data, lg.sigma))):
            for conditional in (False, True):
                kernel = bayes.MMALA(geometry, h=2.0, subspace=subspace, complement_h=0.3,
                                     conditional=conditional)
                result = self.run_kernel(kernel, chains=64, steps=1000)
                self.assertEqual(result.acceptance_rate, 1.0)
                self.assert_posterior(result)
        # A subspace that misses data-informed directions: they move with the complement's
        # pCN step, which the data reject at times, and the chain stays exact.
        for conditional in (False, True):
            kernel = bayes.MMALA(bayes.ReducedGaussNewton(lg.problem), h=1.0,
                                 subspace=subspace[:, 1:3], complement_h=0.05,
                                 conditional=conditional)
            result = self.run_kernel(kernel, chains=64, steps=3000)
            self.assertTrue(0.1 < result.acceptance_rate < 0.9, result.acceptance_rate)
            self.assert_posterior(result, min_ess=150)
        with self.assertRaisesRegex(ValueError, "complement_h and conditional need a subspace"):
            bayes.MMALA(bayes.ReducedGaussNewton(lg.problem), h=1.0, complement_h=0.1)
        with self.assertRaisesRegex(ValueError, "orthonormal"):
            bayes.MMALA(bayes.ReducedGaussNewton(lg.problem), h=1.0, subspace=2 * subspace)

    def test_dino_mmala_truncated_metric(self):
        # Rank 2 of 3: proposals that are wrong in one direction are rejected often.
        kernel = bayes.MMALA(bayes.ReducedGaussNewton(self.lg.problem, rank=2), h=0.1)
        result = self.run_kernel(kernel, chains=64, steps=3000)
        self.assertTrue(0.1 < result.acceptance_rate < 0.9, result.acceptance_rate)
        self.assert_posterior(result)

    def test_mmala_with_surrogate_metric_targets_exact_posterior(self):
        kernel = bayes.MMALA(bayes.ReducedGaussNewton(self.lg.surrogate(0.1)), h=1.0,
                             problem=self.lg.problem)
        result = self.run_kernel(kernel)
        self.assertTrue(0.2 < result.acceptance_rate < 0.95, result.acceptance_rate)
        self.assert_posterior(result)

    def test_delayed_acceptance(self):
        surrogate = self.lg.surrogate(0.1)
        stage1 = bayes.MMALA(bayes.ReducedGaussNewton(surrogate), h=1.0)
        result = self.run_kernel(bayes.DelayedAcceptance(stage1, self.lg.problem))
        self.assertTrue(0.2 < result.stage2_acceptance_rate < 0.95,
                        result.stage2_acceptance_rate)
        self.assertGreater(result.stage1_acceptance_rate, 0.99)
        self.assert_posterior(result)
        # The exact model saw the starting points and the stage-1 survivors only; the
        # surrogate one ReducedJacobian call per step.
        exact = self.lg.model.counts
        self.assertEqual(result.counts["evaluate_points"],
                         64 + int(result.stage1_accepted.sum()))
        self.assertEqual(result.counts["reduced_jacobian_calls"], 1001)
        self.assertGreater(exact["evaluate_points"], 0)

    def test_delayed_acceptance_rejects_in_stage_two(self):
        # A poorer surrogate with pCN in stage 1: both stages reject.
        surrogate = self.lg.surrogate(0.05)
        lg = self.lg
        result = bayes.sample(bayes.DelayedAcceptance(bayes.MMALA(
            bayes.ReducedGaussNewton(surrogate, rank=2), h=0.1), lg.problem),
            lg.posterior_starts(64, 9), 3000, np.random.default_rng(9))
        self.assertLess(result.stage1_acceptance_rate, 0.9)
        self.assertLess(result.stage2_acceptance_rate, 0.99)
        self.assert_posterior(result, min_ess=200)

    def test_offset_corrected_delayed_acceptance(self):
        # The surrogate corrected by the exact model's error at the current point: the chain
        # stays exact, with the split proposal too (the gradient map restricted to S), and
        # the exact stage accepts more than without the correction (same seeds).
        lg = self.lg
        surrogate = lg.surrogate(0.1)
        subspace = np.linalg.qr(np.hstack([lg.prior.L.T @ lg.V, np.eye(D_M)[:, :1]]))[0]
        rates = {}
        splits = ({}, {"subspace": subspace, "complement_h": 0.3},
                  {"subspace": subspace, "complement_h": 0.3, "conditional": True})
        for split in splits:
            for correct in (False, True):
                kernel = bayes.DelayedAcceptance(
                    bayes.MMALA(bayes.ReducedGaussNewton(surrogate), h=1.0, **split),
                    lg.problem, offset_correction=correct)
                result = self.run_kernel(kernel)
                rates[len(split), correct] = result.stage2_acceptance_rate
                if correct:
                    self.assert_posterior(result)
                    # The exact model at the starts and the stage-1 survivors; the
                    # conditional split's surrogate has two geometry calls per step and an
                    # Evaluate of the proposals (and of the starts).
                    conditional = split.get("conditional", False)
                    self.assertEqual(result.counts["evaluate_points"],
                                     64 + int(result.stage1_accepted.sum())
                                     + conditional * 64 * 1001)
                    self.assertEqual(result.counts["reduced_jacobian_calls"],
                                     2000 if conditional else 1001)
        for split in splits:
            self.assertGreater(rates[len(split), True], rates[len(split), False] + 0.1, rates)

    def test_offset_correction_of_a_constant_error_is_exact(self):
        # A surrogate off by a constant: corrected at any point it is the exact model, so
        # the exact stage accepts every stage-1 survivor (mMALA and pCN); uncorrected not.
        lg = self.lg
        shifted = bayes.BayesianProblem(
            bayes.ReducedBasisModel.linear(lg.V, lg.U, lg.A, lg.b + 0.3), lg.prior, lg.data,
            lg.sigma)
        subspace = np.linalg.qr(lg.prior.L.T @ lg.V)[0]
        for stage1 in (bayes.MMALA(bayes.ReducedGaussNewton(shifted), h=1.0),
                       bayes.MMALA(bayes.ReducedGaussNewton(shifted), h=1.0, subspace=subspace,
                                   complement_h=0.2, conditional=True),
                       bayes.PCN(shifted, beta=0.5)):
            for correct in (False, True):
                result = self.run_kernel(
                    bayes.DelayedAcceptance(stage1, lg.problem, offset_correction=correct),
                    steps=200)
                if correct:
                    self.assertEqual(result.stage2_acceptance_rate, 1.0)
                else:
                    self.assertLess(result.stage2_acceptance_rate, 0.9)
        # A geometry that cannot move its gradient to another residual is refused.
        geo = bayes.AdjointGaussNewton(lg.problem)(lg.posterior_starts(2, 1))
        with self.assertRaisesRegex(ValueError, "no gradient_map"):
            geo.gradient_for(np.zeros((2, D_Q)))

    def test_pde_mmala_adjoint_metric(self):
        # A dense model without reduced bases: the geometry from d_Q adjoint products.
        lg = self.lg
        dense = bayes.LinearModel(lg.J, lg.b)
        problem = bayes.BayesianProblem(dense, lg.prior, lg.data, lg.sigma)
        geometry = bayes.AdjointGaussNewton(problem)
        x = lg.posterior_starts(3, 1)
        geo = geometry(x)
        L = lg.prior.L
        H = L.T @ lg.J.T @ lg.J @ L / lg.sigma ** 2
        for b in range(3):
            W = geo.vectors[b]
            np.testing.assert_allclose(W @ np.diag(geo.eigenvalues[b]) @ W.T, H, atol=1e-9)
            m = lg.prior.to_parameter(x[b])[0]
            grad = L.T @ lg.J.T @ (dense.evaluate(m)[0] - lg.data) / lg.sigma ** 2
            np.testing.assert_allclose(geo.gradient[b], grad, rtol=1e-10, atol=1e-10)
        kernel = bayes.MMALA(geometry, h=1.0)
        result = self.run_kernel(kernel, chains=32, steps=500)
        self.assertEqual(result.acceptance_rate, 1.0)
        self.assertEqual(result.counts["vjp_calls"], 501)
        self.assert_posterior(result)

    def test_client_bases_geometry(self):
        lg = self.lg
        x = lg.posterior_starts(4, 2)
        own = bayes.ReducedGaussNewton(lg.problem)(x)
        client = bayes.ReducedGaussNewton(lg.problem, input_basis=lg.V,
                                          output_basis=lg.U)(x)
        np.testing.assert_allclose(client.eigenvalues, own.eigenvalues, rtol=1e-10)
        np.testing.assert_allclose(client.gradient, own.gradient, atol=1e-10)
        # Client bases that miss an output direction of the model: an approximate metric;
        # with the exact gradient (one more Vjp) the chain is still exact.
        rng = np.random.default_rng(4)
        vc, _ = np.linalg.qr(np.hstack([lg.V, rng.standard_normal((D_M, 2))]))
        uc, _ = np.linalg.qr(np.hstack([lg.U[:, :2], rng.standard_normal((D_Q, 2))]))
        geometry = bayes.ReducedGaussNewton(lg.problem, input_basis=vc, output_basis=uc,
                                            exact_gradient=True)
        g = geometry(x)
        exact, _ = lg.problem.misfit_gradient(x)
        np.testing.assert_allclose(g.gradient, exact, atol=1e-10)
        result = self.run_kernel(bayes.MMALA(geometry, h=0.3), chains=32, steps=1500)
        self.assertTrue(0.1 < result.acceptance_rate < 0.9, result.acceptance_rate)
        self.assertEqual(result.counts["vjp_calls"], 1501)
        self.assert_posterior(result)

    def test_seeds_make_runs_reproducible(self):
        def run(seed):
            kernel = bayes.MMALA(bayes.ReducedGaussNewton(self.lg.problem, rank=2), h=0.3)
            return bayes.sample(kernel, 4, 50, np.random.default_rng(seed)).samples
        np.testing.assert_array_equal(run(7), run(7))
        self.assertFalse(np.array_equal(run(7), run(8)))

    def test_burn_in_thin_and_directions(self):
        kernel = bayes.PCN(self.lg.problem, beta=0.2)
        directions = np.eye(D_M)[:2]
        r = bayes.sample(kernel, 3, 50, np.random.default_rng(0), burn_in=5, thin=3,
                         directions=directions)
        self.assertEqual(r.samples.shape, (3, 15, D_M))
        np.testing.assert_allclose(r.observables, r.samples[..., :2])
        s = bayes.summary(r)
        self.assertIn("ess_directions", s)
        self.assertEqual(s["chains"], 3)


def ar1(phi, chains, n, seed, offsets=None):
    """Stationary AR(1) chains x_t = φ x_{t−1} + √(1−φ²) ε_t (unit variance), shifted by
    ``offsets`` per chain; their integrated autocorrelation time is (1+φ)/(1−φ)."""
    rng = np.random.default_rng(seed)
    eps = rng.standard_normal((chains, n))
    x = np.empty((chains, n))
    x[:, 0] = eps[:, 0]
    s = np.sqrt(1.0 - phi * phi)
    for t in range(1, n):
        x[:, t] = phi * x[:, t - 1] + s * eps[:, t]
    if offsets is not None:
        x += np.asarray(offsets)[:, None]
    return x


class DiagnosticsTest(unittest.TestCase):
    CHAINS, N = 4, 50000

    def test_ess_of_ar1(self):
        total = self.CHAINS * self.N
        for phi in (0.0, 0.5, 0.9, -0.3):
            x = ar1(phi, self.CHAINS, self.N, seed=int(10 * abs(phi)) + 1)
            tau = (1 + phi) / (1 - phi)
            # Sokal's estimate of the relative sd of τ̂ with a window of ~5τ lags, x5.
            tol = 5 * np.sqrt(2 * (2 * 5 * max(tau, 1) + 1) / total)
            for name, f in (("geyer", bayes.ess), ("bulk", bayes.ess_bulk)):
                self.assertAlmostEqual(f(x) / (total / tau), 1.0, delta=tol,
                                       msg="%s ESS, phi %g" % (name, phi))
            bm = bayes.ess_batch_means(x)
            self.assertAlmostEqual(bm / (total / tau), 1.0, delta=max(tol, 0.25),
                                   msg="batch means ESS, phi %g" % phi)
            self.assertAlmostEqual(bayes.integrated_autocorrelation_time(x) / tau, 1.0,
                                   delta=tol)
        # Several quantities at once, and a constant one.
        both = np.stack([ar1(0.5, 4, 2000, 3), np.ones((4, 2000))], axis=-1)
        out = bayes.ess(both)
        self.assertEqual(out.shape, (2,))
        self.assertTrue(np.isnan(out[1]))

    def test_rhat_of_ar1(self):
        n = 20000
        x = ar1(0.5, 4, n, seed=5)
        self.assertLess(abs(bayes.split_rhat(x) - 1.0), 0.003)
        self.assertLess(bayes.rank_normalized_rhat(x), 1.005)
        # One chain shifted by one stationary sd: split into 8 half chains, two of them
        # shifted, so B/N ≈ var([0]*6 + [1]*2) + τ/(N/2) with W ≈ 1.
        shifted = ar1(0.5, 4, n, seed=6, offsets=[0, 0, 0, 1.0])
        half = n // 2
        expected = np.sqrt((half - 1) / half + np.var([0] * 6 + [1] * 2, ddof=1) + 3.0 / half)
        self.assertAlmostEqual(bayes.split_rhat(shifted), expected, delta=0.01 * expected)
        self.assertGreater(bayes.rank_normalized_rhat(shifted), 1.05)
        # A chain whose spread differs (same mean) shows in the folded R-hat only.
        wide = ar1(0.5, 4, n, seed=7)
        wide[3] *= 3.0
        self.assertLess(bayes.split_rhat(wide), 1.01)
        self.assertGreater(bayes.rank_normalized_rhat(wide), 1.05)

    def test_autocorrelation(self):
        x = ar1(0.8, 2, 40000, seed=8)
        rho = bayes.autocorrelation(x).mean(axis=0)
        np.testing.assert_allclose(rho[:4], 0.8 ** np.arange(4), atol=0.03)


class BlasThreadsTest(unittest.TestCase):
    def test_set_blas_threads(self):
        # make test installs libopenblas0-pthread: numpy's BLAS is OpenBLAS, whose own
        # getter must then report the count set, and the count it had once restored.
        import ctypes
        get = ctypes.CDLL("libblas.so.3").openblas_get_num_threads
        before = get()
        try:
            self.assertTrue(bayes.set_blas_threads(1))
            self.assertEqual(get(), 1)
        finally:
            self.assertTrue(bayes.set_blas_threads(before))
        self.assertEqual(get(), before)
        with self.assertRaisesRegex(ValueError, "threads must be >= 1"):
            bayes.set_blas_threads(0)


class MapTest(unittest.TestCase):
    def test_linear_gaussian_map(self):
        lg = LinearGaussian()
        exact = bayes.gauss_newton_cg(lg.problem, forcing=1e-12)
        self.assertTrue(exact.converged)
        self.assertEqual(exact.iterations, 1)   # One exact Newton step on a quadratic.
        np.testing.assert_allclose(exact.m, lg.mean, rtol=1e-9, atol=1e-10)
        ew = bayes.gauss_newton_cg(lg.problem, gtol_rel=1e-10)  # Eisenstat–Walker.
        self.assertTrue(ew.converged)
        np.testing.assert_allclose(ew.m, lg.mean, rtol=1e-8, atol=1e-9)
        lb = bayes.lbfgs(lg.problem, gtol_rel=1e-9)
        self.assertTrue(lb.converged)
        np.testing.assert_allclose(lb.m, lg.mean, rtol=1e-7, atol=1e-8)
        # The Gauss–Newton solver used Jvp/Vjp products, L-BFGS Vjp gradients only.
        self.assertGreater(ew.counts["jvp_calls"], 0)
        self.assertNotIn("jvp_calls", lb.counts)

    def test_nonlinear_map(self):
        lg = LinearGaussian()
        W = lg.A

        def phi(z):
            return np.tanh(z @ W.T)

        def phi_jac(z):
            t = np.tanh(z @ W.T)
            return (1 - t * t)[:, :, None] * W[None]

        model = bayes.ReducedBasisModel(lg.V, lg.U, lg.b, phi, phi_jac)
        data = model.evaluate(lg.prior.sample(1, np.random.default_rng(3)))[0]
        problem = bayes.BayesianProblem(model, lg.prior, data, 0.1)
        # The whitened gradient against central differences of the cost.
        x = np.random.default_rng(4).standard_normal(D_M)
        g = x + problem.misfit_gradient(x[None])[0][0]
        h = 1e-6
        fd = np.array([(problem.cost((x + h * e)[None])[0] - problem.cost((x - h * e)[None])[0])
                       / (2 * h) for e in np.eye(D_M)])
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-6)
        gn = bayes.gauss_newton_cg(problem, gtol_rel=1e-9)
        lb = bayes.lbfgs(problem, gtol_rel=1e-9)
        self.assertTrue(gn.converged and lb.converged, (gn.reason, lb.reason))
        np.testing.assert_allclose(gn.x, lb.x, atol=1e-5)
        self.assertLess(gn.gradient_norm, 1e-6)


if __name__ == "__main__":
    unittest.main(verbosity=2)
