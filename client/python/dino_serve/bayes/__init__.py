"""Bayesian inversion on served models, in pure NumPy: priors, the posterior's misfit,
Gauss–Newton geometry, pCN / DINO-mMALA / delayed-acceptance MCMC with many chains per
batched request, diagnostics (ESS, R-hat, acceptance) and MAP (Gauss–Newton–CG, L-BFGS).

Every algorithm is written against :class:`ForwardModel`, so the same code runs against a
served model (:class:`ServedModel`, through a DinoClient) or an in-process NumPy model::

    from dino_serve import DinoClient
    from dino_serve import bayes
    client = DinoClient("localhost:50051")
    surrogate = bayes.ServedModel(client, "poisson_dipnet")
    prior = bayes.ServedPrior(client, "poisson_dipnet")  # the prior it was trained under
    problem = bayes.BayesianProblem(surrogate, prior, data, noise_std)
    kernel = bayes.MMALA(bayes.ReducedGaussNewton(problem), h=0.5)
    result = bayes.sample(kernel, 16, 1000, np.random.default_rng(0))  # 16 chains
    print(bayes.summary(result))
"""
from .diagnostics import (acceptance_rate, autocorrelation, ess, ess_batch_means, ess_bulk,
                          ess_tail, integrated_autocorrelation_time, project,
                          rank_normalized_rhat, split_rhat, summary)
from .geometry import AdjointGaussNewton, LocalGeometry, ReducedGaussNewton, laplace_draws
from .map import MapResult, gauss_newton_cg, lbfgs
from .mcmc import (MMALA, PCN, ChainState, DelayedAcceptance, Kernel, MCMCResult,
                   MetropolisKernel, sample)
from .models import (ForwardModel, FunctionModel, LinearModel, ReducedBases,
                     ReducedBasisModel, ServedModel)
from .prior import DenseGaussianPrior, DiagonalGaussianPrior, Prior, ServedPrior
from .problem import BayesianProblem
from .threads import set_blas_threads

__all__ = [
    "ForwardModel", "FunctionModel", "LinearModel", "ReducedBasisModel", "ReducedBases",
    "ServedModel", "Prior", "DenseGaussianPrior", "DiagonalGaussianPrior",
    "ServedPrior", "BayesianProblem",
    "LocalGeometry", "ReducedGaussNewton", "AdjointGaussNewton", "laplace_draws", "Kernel",
    "MetropolisKernel", "ChainState", "PCN", "MMALA", "DelayedAcceptance", "MCMCResult",
    "sample", "ess", "ess_batch_means", "ess_bulk", "ess_tail",
    "integrated_autocorrelation_time", "autocorrelation", "split_rhat",
    "rank_normalized_rhat", "project", "acceptance_rate", "summary", "MapResult",
    "gauss_newton_cg", "lbfgs", "set_blas_threads",
]
