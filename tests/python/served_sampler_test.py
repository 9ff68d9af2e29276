#!/usr/bin/python3
"""dino_serve.bayes against the bundled model served by a real dino-server: a few steps of
pCN, DINO-mMALA, delayed acceptance and Gauss–Newton–CG on poisson_dipnet (a smoke test of
the served path at the real size: d_M in the thousands, batched requests for all chains).

usage: served_sampler_test.py <bin folder> <repository> <generated Python folder>
"""
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np

from server_process import ServerProcess

BIN, REPOSITORY, GENERATED = (os.path.abspath(a) for a in sys.argv[1:4])
del sys.argv[1:4]
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "client", "python"))
import dino_serve  # noqa: E402
from dino_serve import bayes  # noqa: E402

MODEL, CHAINS, STEPS = "poisson_dipnet", 8, 10


class ServedSamplerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = ServerProcess(BIN, REPOSITORY)
        cls.client = dino_serve.DinoClient(cls.server.target, timeout=60, gen_dir=GENERATED)
        cls.model = bayes.ServedModel(cls.client, MODEL)
        d = cls.model.input_dim
        cls.prior = bayes.DiagonalGaussianPrior(np.zeros(d), 1.0)
        rng = np.random.default_rng(0)
        q = cls.model.evaluate(cls.prior.sample(1, rng))[0]
        noise = 0.01 * np.abs(q).max()
        cls.problem = bayes.BayesianProblem(cls.model, cls.prior,
                                            q + noise * rng.standard_normal(q.shape), noise)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.server.stop()

    def test_samplers(self):
        x0 = self.problem.whiten(np.zeros((CHAINS, self.problem.dim)))
        x0 += 0.1 * np.random.default_rng(1).standard_normal(x0.shape)
        kernels = {"pcn": bayes.PCN(self.problem, 0.05),
                   "mmala": bayes.MMALA(bayes.ReducedGaussNewton(self.problem), h=0.05),
                   "da": bayes.DelayedAcceptance(
                       bayes.MMALA(bayes.ReducedGaussNewton(self.problem), h=0.05),
                       self.problem)}
        for name, kernel in kernels.items():
            r = bayes.sample(kernel, x0, STEPS, np.random.default_rng(2), keep_samples=False,
                             directions=np.eye(self.problem.dim)[:3])
            self.assertEqual(r.misfit.shape, (CHAINS, STEPS))
            self.assertTrue(np.all(np.isfinite(r.misfit)), name)
            self.assertTrue(np.all(np.isfinite(r.mean)) and np.all(r.variance >= 0), name)
            s = bayes.summary(r)
            self.assertEqual(s["ess_directions"].shape, (3,))
            if name == "mmala":
                # One ReducedJacobian request per step for all chains.
                self.assertEqual(r.counts, {"reduced_jacobian_calls": STEPS + 1,
                                            "reduced_jacobian_points": (STEPS + 1) * CHAINS})
                self.assertGreater(r.acceptance_rate, 0.0)
            if name == "da":
                # The "exact" model is the surrogate itself here: stage 2 accepts everything.
                self.assertEqual(r.stage2_acceptance_rate, 1.0)

    def test_served_prior(self):
        """ServedPrior (dino.v1.Prior through the Prior interface): G Gᵀ = C, whiten inverts
        to_parameter, C⁻¹ inverts C, and the DINO and the PDE model share one prior."""
        prior = bayes.ServedPrior(self.client, MODEL)
        pde = bayes.ServedPrior(self.client, "poisson_pde")
        d = prior.dim
        self.assertEqual(d, self.model.input_dim)
        np.testing.assert_array_equal(prior.mean, pde.mean)
        rng = np.random.default_rng(3)
        v = rng.standard_normal((4, d))
        cv = prior.apply_cov(v)
        scale = np.abs(cv).max()
        # G (Gᵀ v) = C v on random vectors, the non-symmetric square root in its places.
        ggt = prior.apply_sqrt_cov(prior.apply_sqrt_cov(v, transpose=True))
        np.testing.assert_allclose(ggt, cv, atol=1e-10 * scale)
        # ⟨G x, y⟩ = ⟨x, Gᵀ y⟩, and G is not symmetric.
        x, y = v[:2], v[2:]
        np.testing.assert_allclose(np.sum(prior.apply_sqrt_cov(x) * y, axis=1),
                                   np.sum(x * prior.apply_sqrt_cov(y, transpose=True), axis=1),
                                   rtol=1e-10)
        self.assertGreater(np.abs(prior.apply_sqrt_cov(x) - prior.apply_sqrt_cov(x, True)).max(),
                           1e-3 * np.abs(prior.apply_sqrt_cov(x)).max())
        # C⁻¹ C v = v; whiten(to_parameter(x)) = x (the RPC's G⁻¹ and the base class's
        # Gᵀ C⁻¹, which holds for any square root, agree).
        np.testing.assert_allclose(prior.apply_precision(cv), v, atol=1e-8 * np.abs(v).max())
        m = prior.to_parameter(x)
        np.testing.assert_allclose(m, prior.mean + prior.apply_sqrt_cov(x), atol=1e-12 * scale)
        np.testing.assert_allclose(prior.whiten(m), x, atol=1e-8)
        np.testing.assert_allclose(bayes.Prior.whiten(prior, m), x, atol=1e-8)
        # Served samples are reproducible by (seed, index) and a single row works.
        s = prior.served_samples(3, seed=7)
        np.testing.assert_array_equal(prior.served_samples(1, seed=7, first_index=2)[0], s[2])
        self.assertEqual(prior.to_parameter(x[0]).shape, (1, d))
        self.assertEqual(prior.sample(2, rng).shape, (2, d))
        # The last batch of to_parameter is remembered: its rows cost no second RPC.
        prior.counts.clear()
        m1 = prior.to_parameter(v[:3])
        np.testing.assert_array_equal(prior.to_parameter(v[1:3]), m1[1:3])
        self.assertEqual(prior.counts["covariance_sqrt_calls"], 1)
        # Splitting a large batch into several RPCs gives the same rows.
        small = bayes.ServedPrior(self.client, MODEL, max_rows=3)
        np.testing.assert_allclose(small.apply_cov(v), cv, rtol=1e-12, atol=1e-14 * scale)
        self.assertEqual(small.counts["covariance_calls"], 1)
        self.assertEqual(small.counts["covariance_rows"], 4)

    def test_map(self):
        result = bayes.gauss_newton_cg(self.problem, max_iter=3, max_cg=20)
        start = self.problem.cost(np.zeros((1, self.problem.dim)))[0]
        self.assertLess(result.cost, start)
        self.assertEqual(len(result.history), result.iterations)

    def test_posterior_example(self):
        # README's command 3 at toy size: it runs against the served models and writes its
        # posterior and plot.
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                              "client", "python", "posterior_example.py")
        with tempfile.TemporaryDirectory(prefix="posterior-example-") as out:
            env = dict(os.environ, PYTHONPATH=os.path.dirname(script),
                       DINO_PYTHON_GEN_DIR=GENERATED)
            run = subprocess.run([sys.executable, script, "--server", self.server.target,
                                  "--out", out, "--seconds", "2", "--chains", "4"],
                                 env=env, capture_output=True, text=True, timeout=300)
            self.assertEqual(run.returncode, 0, run.stderr[-2000:])
            self.assertRegex(run.stdout, r"steps x 4 chains in \d+ s; acceptance")
            posterior = np.load(os.path.join(out, "posterior.npz"))
            self.assertEqual(posterior["mean"].shape, (self.problem.dim,))
            self.assertTrue(np.all(np.isfinite(posterior["variance"])))
            self.assertGreater(os.path.getsize(os.path.join(out, "posterior.png")), 10000)


if __name__ == "__main__":
    unittest.main(verbosity=2)
