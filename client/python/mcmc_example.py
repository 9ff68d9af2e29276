#!/usr/bin/python3
"""Example use of dino_serve.bayes: Bayesian inversion with a served DINO. Synthetic data
from the served model at a parameter drawn from the prior (1% noise), the MAP point by
Gauss–Newton–CG, then DINO-mMALA chains started at the MAP point, with diagnostics.

    export PYTHONPATH=$PWD/client/python
    /usr/bin/python3 client/python/mcmc_example.py --server localhost:50051 \\
        [--model poisson_dipnet] [--chains 8] [--steps 500] [--h 0.1] [--seed 0]

The prior here is N(0, I) on the model's coefficient vector, a stand-in until the server
exposes its PDE priors (issue 9); swap in any dino_serve.bayes.Prior.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dino_serve import DinoClient, DinoError, bayes  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="localhost:50051")
    parser.add_argument("--model", default="poisson_dipnet")
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--h", type=float, default=0.1, help="mMALA time step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gen_dir", help="folder of the generated gRPC Python code")
    args = parser.parse_args()
    bayes.set_blas_threads(1)  # small batched SVDs: faster on one thread (bayes/threads.py)
    rng = np.random.default_rng(args.seed)

    with DinoClient(args.server, gen_dir=args.gen_dir) as client:
        model = bayes.ServedModel(client, args.model)
        prior = bayes.DiagonalGaussianPrior(np.zeros(model.input_dim), 1.0)
        q = model.evaluate(prior.sample(1, rng))[0]
        noise = 0.01 * np.abs(q).max()
        problem = bayes.BayesianProblem(model, prior, q + noise * rng.standard_normal(q.shape),
                                        noise)

        result = bayes.gauss_newton_cg(problem, max_iter=20)
        print("MAP: %d Gauss-Newton iterations, %d CG, misfit %.3g, |g| %.2e (%s)"
              % (result.iterations, result.cg_iterations, result.misfit,
                 result.gradient_norm, result.reason))

        kernel = bayes.MMALA(bayes.ReducedGaussNewton(problem), h=args.h)
        x0 = result.x + 0.01 * rng.standard_normal((args.chains, problem.dim))
        directions = bayes.ReducedGaussNewton(problem).Q.T[:5]  # Data-informed directions.
        run = bayes.sample(kernel, x0, args.steps, rng, burn_in=args.steps // 5,
                           keep_samples=False, directions=directions)
        s = bayes.summary(run)
        print("DINO-mMALA: %d chains x %d kept steps in %.1f s, acceptance %.2f"
              % (s["chains"], s["draws"], s["wall_time"], s["acceptance_rate"]))
        print("ESS of the misfit %.0f; along 5 informed directions %s; R-hat %s"
              % (s["ess_misfit"], np.round(s["ess_directions"]).astype(int),
                 np.round(s["rhat_directions"], 3)))
        print("requests: %s" % s["counts"])
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DinoError as e:
        print("error:", e, file=sys.stderr)
        sys.exit(1)
