"""MCMC diagnostics for C chains of N draws, arrays [C, N] or [C, N, k] (k quantities,
e.g. parameters along given directions, or the data misfit):

* :func:`ess` — effective sample size from the multi-chain autocorrelation estimate of
  Vehtari, Gelman, Simpson, Carpenter & Bürkner (2021) truncated by Geyer's initial
  monotone sequence; :func:`ess_batch_means` — the batch-means estimate;
  :func:`ess_bulk` / :func:`ess_tail` — rank-normalized variants (Vehtari et al. 2021).
* :func:`split_rhat` — split R-hat; :func:`rank_normalized_rhat` — the rank-normalized,
  folded split R-hat of Vehtari et al. (2021).
* :func:`integrated_autocorrelation_time`, :func:`autocorrelation`, :func:`project`,
  :func:`acceptance_rate` and :func:`summary`.
"""
from __future__ import annotations

from statistics import NormalDist
from typing import Any

import numpy as np

__all__ = ["autocorrelation", "ess", "ess_batch_means", "ess_bulk", "ess_tail",
           "integrated_autocorrelation_time", "split_rhat", "rank_normalized_rhat",
           "project", "acceptance_rate", "summary"]


def _chains(x: Any) -> tuple[np.ndarray, tuple[int, ...]]:
    """[C, N, ...] -> ([C, N, K], trailing shape)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[None]
    if x.ndim < 2:
        raise ValueError("chains must be [C, N] or [C, N, ...]")
    trailing = x.shape[2:]
    return x.reshape(x.shape[0], x.shape[1], -1), trailing


def _autocovariance(x: np.ndarray) -> np.ndarray:
    """Biased autocovariance (divided by N) along axis 1 of [C, N, K], by FFT."""
    n = x.shape[1]
    centered = x - x.mean(axis=1, keepdims=True)
    size = 1 << (2 * n - 1).bit_length()
    f = np.fft.rfft(centered, n=size, axis=1)
    return np.fft.irfft(f * np.conj(f), n=size, axis=1)[:, :n] / n


def autocorrelation(x: Any) -> np.ndarray:
    """Per-chain autocorrelation [C, N, ...] of chains [C, N, ...]."""
    arr, trailing = _chains(x)
    acov = _autocovariance(arr)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = acov / acov[:, :1]
    return rho.reshape(arr.shape[:2] + trailing)


def _multichain_rho(x: np.ndarray) -> np.ndarray:
    """The combined autocorrelation estimate ρ̂_t [N, K] of Vehtari et al. (2021) eq. (10)."""
    c, n, _ = x.shape
    acov = _autocovariance(x)                              # [C, N, K]
    chain_var = acov[:, 0] * n / (n - 1.0)                 # s_m²
    within = chain_var.mean(axis=0)                        # W
    var_plus = within * (n - 1.0) / n
    if c > 1:
        var_plus = var_plus + x.mean(axis=1).var(axis=0, ddof=1)  # + B/N
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = 1.0 - (within - acov.mean(axis=0)) / var_plus
    rho[0] = 1.0
    return rho


def _geyer_tau(rho: np.ndarray) -> float:
    """τ = −1 + 2 Σ_k P_k with Geyer's pair sums P_k = ρ_{2k} + ρ_{2k+1}, truncated at the
    first negative pair and made monotone (the initial monotone sequence estimator)."""
    n = len(rho) - (len(rho) % 2)
    if not np.all(np.isfinite(rho[:2])):
        return float("nan")
    pairs = rho[:n].reshape(-1, 2).sum(axis=1)
    negative = np.flatnonzero(pairs < 0)
    pairs = pairs[:negative[0]] if negative.size else pairs
    pairs = np.minimum.accumulate(pairs)
    return float(-1.0 + 2.0 * pairs.sum())


def ess(x: Any) -> np.ndarray | float:
    """Effective sample size of chains [C, N] (-> float) or [C, N, ...] (-> [...]): the
    total draws C·N divided by the integrated autocorrelation time estimated from all
    chains at once (so chains stuck in different places lower it), truncated by Geyer's
    initial monotone sequence. Capped at C·N·log10(C·N) as in Stan; nan for a constant
    quantity."""
    arr, trailing = _chains(x)
    c, n, k = arr.shape
    if n < 4:
        raise ValueError("need at least 4 draws per chain")
    rho = _multichain_rho(arr)
    out = np.empty(k)
    for j in range(k):
        tau = _geyer_tau(rho[:, j])
        out[j] = c * n / tau if tau > 0 else float("nan")
    out = np.minimum(out, c * n * np.log10(c * n))
    return float(out[0]) if not trailing else out.reshape(trailing)


def integrated_autocorrelation_time(x: Any) -> np.ndarray | float:
    """τ = C·N / ESS (1 for independent draws)."""
    arr, trailing = _chains(x)
    return arr.shape[0] * arr.shape[1] / ess(x)


def ess_batch_means(x: Any, batch_size: int | None = None) -> np.ndarray | float:
    """ESS by batch means: C·N·s² / (b · s_b²) with s² the pooled variance of the draws and
    s_b² the variance of the means of batches of b (default ⌊√N⌋) draws within each chain
    (around each chain's own mean)."""
    arr, trailing = _chains(x)
    c, n, k = arr.shape
    b = int(batch_size or max(1, int(np.sqrt(n))))
    nb = n // b
    if nb < 2:
        raise ValueError("need at least 2 batches per chain")
    batches = arr[:, :nb * b].reshape(c, nb, b, k).mean(axis=2)
    batch_var = batches.var(axis=1, ddof=1).mean(axis=0)
    pooled = arr.var(axis=1, ddof=1).mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = c * n * pooled / (b * batch_var)
    return float(out[0]) if not trailing else out.reshape(trailing)


_NORMAL = NormalDist()
_inv_cdf = np.vectorize(_NORMAL.inv_cdf, otypes=[np.float64])


def _rank_normalize(x: np.ndarray) -> np.ndarray:
    """Φ⁻¹((r − 3/8)/(S + 1/4)) of the pooled average ranks r of [C, N, K], per K."""
    c, n, k = x.shape
    out = np.empty_like(x)
    s = c * n
    for j in range(k):
        values, inverse, counts = np.unique(x[:, :, j].ravel(), return_inverse=True,
                                            return_counts=True)
        start = np.cumsum(counts) - counts
        ranks = (start + (counts + 1) / 2.0)[inverse]
        out[:, :, j] = _inv_cdf((ranks - 0.375) / (s + 0.25)).reshape(c, n)
    return out


def _split(x: np.ndarray) -> np.ndarray:
    """[C, N, K] -> [2C, N//2, K]: each chain's first and second halves."""
    half = x.shape[1] // 2
    return np.concatenate([x[:, :half], x[:, x.shape[1] - half:]], axis=0)


def _rhat(x: np.ndarray) -> np.ndarray:
    """Classic R-hat of [C, N, K] (no splitting)."""
    c, n, _ = x.shape
    within = x.var(axis=1, ddof=1).mean(axis=0)
    between_over_n = x.mean(axis=1).var(axis=0, ddof=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(((n - 1.0) / n * within + between_over_n) / within)


def split_rhat(x: Any) -> np.ndarray | float:
    """Split R-hat (Gelman et al. 2013): R-hat of the 2C half-chains. Close to 1 for chains
    that agree; above 1.01 is the usual warning."""
    arr, trailing = _chains(x)
    out = _rhat(_split(arr))
    return float(out[0]) if not trailing else out.reshape(trailing)


def rank_normalized_rhat(x: Any) -> np.ndarray | float:
    """Vehtari et al. (2021): the larger of the split R-hats of the rank-normalized draws
    and of the rank-normalized folded draws |x − median|."""
    arr, trailing = _chains(x)
    split = _split(arr)
    bulk = _rhat(_rank_normalize(split))
    folded = np.abs(split - np.median(split.reshape(-1, split.shape[2]), axis=0))
    tail = _rhat(_rank_normalize(folded))
    out = np.maximum(bulk, tail)
    return float(out[0]) if not trailing else out.reshape(trailing)



def ess_bulk(x: Any) -> np.ndarray | float:
    """Bulk ESS (Vehtari et al. 2021): the ESS of the rank-normalized split chains."""
    arr, trailing = _chains(x)
    out = np.atleast_1d(ess(_rank_normalize(_split(arr))))
    return float(out[0]) if not trailing else out.reshape(trailing)


def ess_tail(x: Any) -> np.ndarray | float:
    """Tail ESS (Vehtari et al. 2021): the smaller ESS of the indicators of the 5% and 95%
    quantiles, on split chains."""
    arr, trailing = _chains(x)
    split = _split(arr)
    lo, hi = np.quantile(split.reshape(-1, split.shape[2]), [0.05, 0.95], axis=0)
    out = np.minimum(np.atleast_1d(ess((split <= lo).astype(np.float64))),
                     np.atleast_1d(ess((split <= hi).astype(np.float64))))
    return float(out[0]) if not trailing else out.reshape(trailing)


def project(samples: Any, directions: Any) -> np.ndarray:
    """Samples [C, N, d] along directions [k, d] (rows) -> [C, N, k]."""
    return np.asarray(samples) @ np.atleast_2d(directions).T


def acceptance_rate(accepted: Any) -> float:
    """Fraction of accepted steps."""
    return float(np.mean(accepted))


def summary(result: Any, directions: Any = None) -> dict[str, Any]:
    """A dict of diagnostics of an MCMCResult: acceptance rate(s), ESS and rank-normalized
    R-hat of the data misfit and of m · directions (``directions`` [k, d_M], or the
    result's recorded observables), with ESS per second of wall time."""
    out: dict[str, Any] = {"chains": result.misfit.shape[0], "draws": result.misfit.shape[1],
                           "acceptance_rate": result.acceptance_rate,
                           "wall_time": result.wall_time}
    if result.stage1_accepted is not None:
        out["stage1_acceptance_rate"] = result.stage1_acceptance_rate
        out["stage2_acceptance_rate"] = result.stage2_acceptance_rate
    out["ess_misfit"] = ess(result.misfit)
    out["rhat_misfit"] = rank_normalized_rhat(result.misfit)
    observed = None
    if directions is not None:
        observed = project(result.samples, directions)
    elif result.observables is not None:
        observed = result.observables
    if observed is not None:
        out["ess_directions"] = ess(observed)
        out["ess_bulk_directions"] = ess_bulk(observed)
        out["rhat_directions"] = rank_normalized_rhat(observed)
        out["min_ess_per_second"] = float(np.min(out["ess_directions"])
                                          / max(result.wall_time, 1e-12))
    out["counts"] = dict(result.counts)
    return out
