#!/usr/bin/python3
"""A posterior from a running dino-server in one script (README, "From `make serve` to a
posterior plot in five commands"): synthetic data from the exact PDE model `poisson_pde` at a
true parameter drawn from the served prior, 1 % noise, the MAP by Gauss–Newton–CG on the PDE,
then delayed-acceptance DINO-mMALA (stage 1: `poisson_dipnet`'s reduced Gauss–Newton geometry
from one ReducedJacobian call per step, the DINO corrected by the PDE's error at the current
point; stage 2: `poisson_pde`, so the chains target the exact posterior), many chains in one
batched request per step. The proposal is split and conditional: a small pCN step in the
complement of the 10 leading Gauss–Newton directions at the MAP, then a large mMALA step h
in those directions (where the data inform the parameter) from the geometry at the point
the complement moved to (docs/bayesian_inversion.md says why and how the steps were tuned).
Writes <out>/posterior.npz (mean, variance, true parameter, misfit trace) and
<out>/posterior.png (true parameter, posterior mean and standard deviation on the 65 × 65
nodes).

usage: posterior_example.py [--server localhost:50051] [--out posterior] [--seconds 60]
           [--chains 16] [--h 4] [--complement_h 0.085]
"""
import argparse
import os
import time

import numpy as np

from dino_serve import DinoClient, bayes


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", default="localhost:50051")
    p.add_argument("--out", default="posterior")
    p.add_argument("--seconds", type=float, default=60.0, help="sampling wall-clock time")
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--h", type=float, default=4.0,
                   help="mMALA step in the data-informed subspace (docs/bayesian_inversion.md)")
    p.add_argument("--complement_h", type=float, default=0.085,
                   help="pCN step outside it (both: the experiment's pilot for DA-DINO-mMALA, "
                        "tenth round: 0.084, 0.088 and 0.090 in three runs)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    bayes.set_blas_threads(1)  # small batched SVDs: faster on one thread (bayes/threads.py)
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)

    client = DinoClient(args.server, timeout=120)
    prior = bayes.ServedPrior(client, "poisson_pde")  # the BiLaplacian prior, served
    pde = bayes.ServedModel(client, "poisson_pde")     # the exact adjoint PDE map
    dino = bayes.ServedModel(client, "poisson_dipnet")  # the DINO trained on it

    m_true = prior.served_samples(1, seed=9)[0]         # a prior draw no sampler uses
    q_true = pde.evaluate(m_true[None])[0]
    sigma = 0.01 * np.abs(q_true).max()                  # 1 % noise
    data = q_true + sigma * rng.standard_normal(q_true.shape)
    exact = bayes.BayesianProblem(pde, prior, data, sigma)
    surrogate = bayes.BayesianProblem(dino, prior, data, sigma)

    x_map = bayes.gauss_newton_cg(exact, max_iter=15).x
    # The exact Gauss–Newton Hessian at the MAP (50 adjoint solves): its leading eigenvectors
    # are the subspace of the split proposal, and the chains start at draws from the Laplace
    # approximation N(x_map, (I + H)⁻¹).
    at_map = bayes.AdjointGaussNewton(exact)(x_map[None])
    W, lam = at_map.vectors[0], at_map.eigenvalues[0]
    kernel = bayes.DelayedAcceptance(
        bayes.MMALA(bayes.ReducedGaussNewton(surrogate), h=args.h, subspace=W[:, :10],
                    complement_h=args.complement_h, conditional=True), exact,
        offset_correction=True)
    x0 = bayes.laplace_draws(x_map, W, lam, rng.standard_normal((args.chains, x_map.size)))
    # Steps in blocks until the time is up (bayes.sample takes a step count).
    start, runs, state = time.perf_counter(), [], x0
    while time.perf_counter() - start < args.seconds:
        run = bayes.sample(kernel, state, 25, rng, keep_samples=False)
        runs.append(run)
        state = run.final_state.x
    burn = len(runs) // 4                                 # the first quarter is burn-in
    kept = runs[burn:] or runs[-1:]
    mean = np.mean([r.mean for r in kept], axis=0)
    variance = np.mean([r.variance for r in kept], axis=0)
    misfit = np.concatenate([r.misfit for r in runs], axis=1)
    print("%d steps x %d chains in %.0f s; acceptance %.2f (stage 1 %.2f); ESS of the misfit %.0f"
          % (misfit.shape[1], args.chains, time.perf_counter() - start,
             np.mean([r.acceptance_rate for r in kept]),
             np.mean([r.stage1_acceptance_rate for r in kept]),
             bayes.ess(np.concatenate([r.misfit for r in kept], axis=1))))
    np.savez(os.path.join(args.out, "posterior.npz"), mean=mean, variance=variance,
             m_true=m_true, misfit=misfit, data=data, noise_std=sigma)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = int(round(np.sqrt(m_true.size)))                # (n_cells + 1)² nodes, x fastest
    fig, axes = plt.subplots(1, 3, figsize=(10, 3))
    for ax, v, title in zip(axes, (m_true, mean, np.sqrt(variance)),
                            ("true parameter", "posterior mean", "posterior std")):
        im = ax.imshow(v.reshape(n, n), origin="lower", extent=(0, 1, 0, 1))
        ax.set_title(title)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "posterior.png"), dpi=80)
    print("wrote", os.path.join(args.out, "posterior.png"))


if __name__ == "__main__":
    main()
