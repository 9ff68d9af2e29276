#!/usr/bin/python3
"""Bayesian inversion on served models, end to end (issue 9 item 4), resumably.

The Poisson problem of paper §3.1.1 (64 × 64 mesh, d_M = 4225, 50 observations): synthetic
data from the exact PDE servable `poisson_pde` at a true parameter drawn from the served prior
(SamplePrior, seed TRUE_SEED, which no sampler uses), 1 % noise; the MAP by Gauss–Newton–CG on
the PDE; a long PDE-based reference chain (PDE mMALA, exact adjoint Gauss–Newton geometry);
then, each with the same number of chains and the same wall-clock budget after the same
step-size pilot:

  pde_pcn        pCN on poisson_pde (one Evaluate of all chains per step)
  pde_mmala      mMALA, AdjointGaussNewton on poisson_pde (one Vjp with 50 cotangents per
                 chain per step: 1 forward + 50 adjoint solves)
  dino_pcn       pCN on poisson_dipnet (the surrogate posterior)
  dino_mmala     DINO-mMALA: ReducedGaussNewton from one ReducedJacobian call per step
                 (the surrogate posterior)
  da_dino_mmala  DINO-mMALA as stage 1 of delayed acceptance, stage 2 on poisson_pde for the
                 stage-1 survivors only (the exact posterior)
  dac_dino_mmala the same with stage 1 on the DINO corrected by the PDE's error at the
                 current point (offset_correction: no solve more per step)

and, with --methods, pde_mmala_conditional: PDE mMALA with the conditional split proposal
(--conditional gives it to the three DINO mMALA methods).

Writes <out>/<stage>.npz / .json (a stage that has its file is skipped, so an interrupted run
continues; a stage cut short continues from <out>/<stage>.partial.*, its checkpoint every
--checkpoint_seconds), then the table docs/bayesian_inversion_table.md (with --docs) and the
plots docs/bayesian_inversion_*.png.

usage:
  scripts/bayesian_inversion.py [--bin build/bin] [--repository models/repository]
      [--out build/bayesian_inversion] [--docs docs] [--server HOST:PORT] [--threads N]
      [--chains 16] [--budget_seconds 180] [--reference_seconds 600] [--pilot_seconds 30]
      [--smoke]

--smoke: a seconds-long run (4 chains, 2 s budgets, 8 × 8-sample pilot) into a temporary
folder, for the tests. Without --server the script starts build/bin/dino-server on a free
port with the repository and stops it at the end.
"""
import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(ROOT, "client", "python"))

TRUE_SEED = 9          # SamplePrior seed of the true parameter (training data: 1, test: 2).
NOISE_SEED = 11        # the observation noise
EXACT, DINO = "poisson_pde", "poisson_dipnet"
METHODS = ["pde_pcn", "pde_mmala", "dino_pcn", "dino_mmala", "da_dino_mmala", "dac_dino_mmala"]
# Not run by default: PDE mMALA with the conditional split proposal (two adjoint geometries
# per step), the PDE's answer to the proposal the DINO methods use with --conditional.
EXTRA_METHODS = ["pde_mmala_conditional"]
LABELS = {"reference": "PDE mMALA (reference)", "pde_pcn": "PDE pCN",
          "pde_mmala": "PDE mMALA", "dino_pcn": "DINO pCN", "dino_mmala": "DINO-mMALA",
          "da_dino_mmala": "DA-DINO-mMALA", "dac_dino_mmala": "DA-DINO-mMALA, corrected",
          "pde_mmala_conditional": "PDE mMALA, conditional"}
TARGET_ACCEPTANCE = {"pcn": 0.25, "mmala": 0.6}
SUBSPACE_STEPS = [0.25, 0.5, 1.0, 2.0, 4.0]   # split mMALA's candidate h in the subspace
PARTIAL = ".partial"   # <stage>.partial.npz/.json: the last checkpoint of an unfinished stage


def log(*args):
    print("[%s]" % time.strftime("%H:%M:%S"), *args, flush=True)


# Server ----------------------------------------------------------------------------------------

def start_server(bin_dir, repository, threads):
    cmd = [os.path.join(bin_dir, "dino-server"), "--model_repository=" + repository,
           "--port=0", "--metrics_port=-1", "--host=127.0.0.1"]
    if threads:
        cmd.append("--threads=%d" % threads)
    log("+", " ".join(cmd))
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in server.stdout:
        match = re.search(r"listening on \S*:(\d+)", line)
        if match:
            return server, "127.0.0.1:" + match.group(1)
    raise RuntimeError("dino-server did not start")


def stop_server(server):
    if server is not None and server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


# Stage files -----------------------------------------------------------------------------------

def save(out, name, arrays=None, info=None):
    if arrays is not None:
        np.savez(os.path.join(out, name + ".tmp.npz"), **arrays)
        os.replace(os.path.join(out, name + ".tmp.npz"), os.path.join(out, name + ".npz"))
    with open(os.path.join(out, name + ".json.tmp"), "w") as f:
        json.dump(info or {}, f, indent=1, sort_keys=True)
    os.replace(os.path.join(out, name + ".json.tmp"), os.path.join(out, name + ".json"))


def load(out, name):
    path = os.path.join(out, name + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        info = json.load(f)
    npz = os.path.join(out, name + ".npz")
    arrays = dict(np.load(npz)) if os.path.exists(npz) else {}
    return arrays, info


# Chains ----------------------------------------------------------------------------------------

def inner_kernel(kernel):
    from dino_serve import bayes
    return kernel.kernel if isinstance(kernel, bayes.DelayedAcceptance) else kernel


def set_step(kernel, state, value, complement=None):
    """Sets pCN's β or mMALA's h (and the complement's step of a split mMALA; inside
    delayed acceptance too), recomputing the drift at the current states (no model call)."""
    from dino_serve import bayes
    inner = inner_kernel(kernel)
    if isinstance(inner, bayes.PCN):
        inner.beta = float(min(value, 1.0))
    else:
        inner.set_step(value, complement, state)


def step_label(kernel):
    """"β = …", "h = …" or, for a split mMALA, "h = … / h⊥ = …"."""
    from dino_serve import bayes
    inner = inner_kernel(kernel)
    if isinstance(inner, bayes.PCN):
        return "β = %.3g" % inner.beta
    if inner.subspace is None:
        return "h = %.3g" % inner.h
    return "h = %.3g / h⊥ = %.3g%s" % (inner.h, inner.complement_h,
                                      ", conditional" if inner.conditional else "")


def pde_solves(counts):
    """Forward solves (points of every PDE call) + linearized/adjoint solves (products)."""
    forward = sum(v for k, v in counts.items() if k.endswith("_points"))
    linear = sum(v for k, v in counts.items() if k.endswith("_products"))
    return forward, linear


def run_chains(kernel, state, rng, seconds, directions, thin, max_records, max_steps=None,
               min_steps=4, resume=None, checkpoint=None, checkpoint_seconds=60.0):
    """Steps all chains until ``seconds`` pass, and at least ``min_steps`` times (the
    diagnostics need a few states per chain even when a loaded machine slows the solves
    down). Records every step the projections
    z = x·W of the whitened states on ``directions`` W [d, K], the target's misfit and the
    acceptance, and every ``thin``-th step x (float32, for the mean and variance of m).
    ``resume``: (records, steps, wall) of an interrupted run of the same chains, continued;
    ``checkpoint(state, records, wall, steps)`` is called every ``checkpoint_seconds``."""
    from dino_serve import bayes
    delayed = isinstance(kernel, bayes.DelayedAcceptance)
    names = ["z", "misfit", "accepted", "kept_x"] + (["stage1"] if delayed else [])
    lists = {k: [] for k in names}
    done, steps, wall0 = ({k: None for k in names}, 0, 0.0) if resume is None else resume

    def records():
        out = {}
        for k in names:
            parts = [p for p in ([done[k]] if done[k] is not None else []) if p.size] + (
                [np.stack(lists[k], axis=1)] if lists[k] else [])
            out[k] = (np.concatenate(parts, axis=1) if parts else
                      np.zeros((len(state.x), 0, 0), np.float32))
        return out

    start = last = time.perf_counter()
    while ((wall0 + time.perf_counter() - start < seconds or steps < min_steps)
           and (max_steps is None or steps < max_steps)):
        state, info = kernel.step(state, rng)
        steps += 1
        lists["z"].append(state.x @ directions)
        lists["misfit"].append(np.array(state.exact_misfit if delayed else state.misfit))
        lists["accepted"].append(info["accepted"])
        if delayed:
            lists["stage1"].append(info["stage1_accepted"])
        kept = len(lists["kept_x"]) + (0 if done["kept_x"] is None else done["kept_x"].shape[1])
        if steps % thin == 0 and kept < max_records:
            lists["kept_x"].append(state.x.astype(np.float32))
        if checkpoint is not None and time.perf_counter() - last >= checkpoint_seconds:
            checkpoint(state, records(), wall0 + time.perf_counter() - start, steps)
            last = time.perf_counter()
    return state, records(), wall0 + time.perf_counter() - start, steps


def pilot(kernel, state, rng, kind, step0, seconds, min_steps, subspace_eigenvalues=None):
    """Tunes the step size for the target acceptance rate of ``kind`` (pCN 0.25, mMALA 0.6;
    stage 1 for delayed acceptance) by stochastic approximation on log(step):
    log s ← log s + (ā − target)/√(k+1), ā the mean acceptance over chains at step k; the
    result is exp of the mean log s over the second half. The pilot is also the burn-in.
    A split mMALA (a subspace S) tunes this common step in the first half of the pilot and
    keeps it as the complement's h⊥; in the second half it tries the subspace steps
    SUBSPACE_STEPS in turn and keeps the one with the largest expected squared jump in S
    (jumps measured in the Laplace standard deviations of S's directions,
    Σᵢ (1 + λᵢ)(sᵢᵀΔx)² with ``subspace_eigenvalues`` λ, so that every data-informed
    direction counts alike). A conditional split mMALA tunes the common step for pCN's
    acceptance rate instead: its acceptance is the complement's pCN move's (the move in S
    follows it), and a random-walk move is most efficient near 0.25 (Roberts, Gelman &
    Gilks 1997; the throw-away probe of docs/bayesian_inversion.md, ninth round, agrees).
    Its pilot has three parts: the common step, then h by ESJD, then h⊥ once more for 0.25
    at that h — the move in S, drawn for where the complement went, rejects some of the
    proposals the common step's acceptance counted (h = 4: 0.46 at the common step's h⊥),
    so the complement can take a larger step (tenth round)."""
    split = kind == "mmala" and inner_kernel(kernel).subspace is not None
    conditional = split and inner_kernel(kernel).conditional
    parts = 3 if conditional else 2 if split else 1
    state, best, wall, k, history = _acceptance_pilot(
        kernel, state, rng, "pcn" if conditional else kind, step0,
        seconds / parts, max(min_steps // parts, 4) if split else min_steps)
    if not split:
        return state, best, wall, k, history
    inner = inner_kernel(kernel)
    S, weights = inner.subspace, np.sqrt(1.0 + np.asarray(subspace_eigenvalues))
    slice_seconds = seconds / parts / len(SUBSPACE_STEPS)
    esjd = []
    for h_s in SUBSPACE_STEPS:
        set_step(kernel, state, h_s, best)
        jumps, start, n = [], time.perf_counter(), 0
        while time.perf_counter() - start < slice_seconds or n < 3:
            x_old = state.x
            state, info = kernel.step(state, rng)
            jumps.append(np.sum(((state.x - x_old) @ S * weights) ** 2, axis=1).mean())
            history.append((h_s, float(info["accepted"].mean())))
            n += 1
        k += n
        wall += time.perf_counter() - start
        esjd.append(float(np.mean(jumps)))
    h_s = SUBSPACE_STEPS[int(np.argmax(esjd))]
    log("pilot: subspace steps %s, ESJD %s -> h = %g, h⊥ = %.3g"
        % (SUBSPACE_STEPS, np.array2string(np.array(esjd), precision=3), h_s, best))
    set_step(kernel, state, h_s, best)
    if conditional:
        state, best, wall_c, k_c, history_c = _acceptance_pilot(
            kernel, state, rng, "pcn", best, seconds / parts, max(min_steps // parts, 4),
            subspace_step=h_s)
        log("pilot: at h = %g, h⊥ = %.3g" % (h_s, best))
        wall, k, history = wall + wall_c, k + k_c, history + history_c
    return state, h_s, wall, k, history


def _acceptance_pilot(kernel, state, rng, kind, step0, seconds, min_steps, subspace_step=None):
    """The stochastic approximation of pilot() on the common step or, with ``subspace_step``
    h (a split mMALA), on the complement's h⊥ at that fixed h. Returns the state, the
    tuned step, the wall time, the steps and the (step, acceptance) history."""
    from dino_serve import bayes
    target = TARGET_ACCEPTANCE[kind]
    log_s = math.log(step0)
    history = []
    start = time.perf_counter()
    k = 0

    def use(s, state):
        if subspace_step is None:
            set_step(kernel, state, s)
        else:
            set_step(kernel, state, subspace_step, s)
    while time.perf_counter() - start < seconds or k < min_steps:
        use(math.exp(log_s), state)
        state, info = kernel.step(state, rng)
        a = info["stage1_accepted" if isinstance(kernel, bayes.DelayedAcceptance)
                 else "accepted"].mean()
        log_s += (a - target) / math.sqrt(k + 1.0)
        if isinstance(inner_kernel(kernel), bayes.PCN):
            log_s = min(log_s, 0.0)   # β <= 1
        history.append((math.exp(log_s), float(a)))
        k += 1
    wall = time.perf_counter() - start
    steps = np.array([h[0] for h in history])
    best = float(np.exp(np.mean(np.log(steps[len(steps) // 2:]))))
    use(best, state)
    return state, best, wall, k, history


def burn_in(kernel, state, rng, step, seconds):
    """pilot()'s counterpart at a fixed step size ("h" or, for a split mMALA, "h:h⊥"):
    steps for ``seconds`` (at least 2)."""
    from dino_serve import bayes
    step, _, complement = str(step).partition(":")
    step = float(step)
    set_step(kernel, state, step, float(complement) if complement else None)
    history, start, k = [], time.perf_counter(), 0
    while time.perf_counter() - start < seconds or k < 2:
        state, info = kernel.step(state, rng)
        a = info["stage1_accepted" if isinstance(kernel, bayes.DelayedAcceptance)
                 else "accepted"].mean()
        history.append((step, float(a)))
        k += 1
    return state, step, time.perf_counter() - start, k, history


def chain_moments(prior, kept_x, chunk=512):
    """Per-chain mean and variance of m = m0 + L x over the kept states [C, N, d]."""
    c, n, d = kept_x.shape
    means, variances = np.zeros((c, d)), np.zeros((c, d))
    for i in range(c):
        s1, s2 = np.zeros(d), np.zeros(d)
        for j in range(0, n, chunk):
            m = prior.to_parameter(kept_x[i, j:j + chunk].astype(np.float64))
            s1 += m.sum(axis=0)
            s2 += (m * m).sum(axis=0)
        means[i] = s1 / n
        variances[i] = np.maximum(s2 / n - means[i] ** 2, 0.0) * n / max(n - 1, 1)
    return means, variances


# The experiment ---------------------------------------------------------------------------------

def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin", default=os.path.join(ROOT, "build", "bin"))
    p.add_argument("--repository", default=os.path.join(ROOT, "models", "repository"))
    p.add_argument("--gen_dir", default=None, help="generated Python stubs (build/python)")
    p.add_argument("--out", default=None, help="stage files (default build/bayesian_inversion)")
    p.add_argument("--docs", default=None, help="write the table and the plots here")
    p.add_argument("--server", default=None, help="use this server instead of starting one")
    p.add_argument("--threads", type=int, default=0, help="the started server's --threads")
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--budget_seconds", type=float, default=180.0, help="per method")
    p.add_argument("--reference_seconds", type=float, default=600.0,
                   help="the long PDE reference chain; 0: none in this invocation (the "
                        "table's errors against it wait for one run or copied in later)")
    p.add_argument("--pilot_seconds", type=float, default=30.0, help="per method, also burn-in")
    p.add_argument("--directions", type=int, default=10,
                   help="leading GN eigenvectors at the MAP whose projections ESS is taken of")
    p.add_argument("--records", type=int, default=400, help="kept states per chain (moments)")
    p.add_argument("--subspace_rank", type=int, default=10,
                   help="mMALA methods: split proposal with the leading GN eigenvectors at "
                        "the MAP as the subspace (0: one h for every direction)")
    p.add_argument("--conditional", action="store_true",
                   help="the DINO mMALA methods' split proposal moves S after the complement, "
                        "with the geometry at the intermediate point (MMALA conditional)")
    p.add_argument("--prior_directions", type=int, default=5,
                   help="leading prior (KL) directions whose projections ESS is also taken of")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--fixed_steps", default="",
                   help="extra runs at a given step size, no pilot (a burn-in of "
                        "--pilot_seconds instead), e.g. pde_pcn=0.01,da_dino_mmala=1:0.003 "
                        "(a split mMALA's h:h⊥): "
                        "stages <method>@<step>, a step-size sensitivity check")
    p.add_argument("--fixed_budget_seconds", type=float, default=None,
                   help="budget of the --fixed_steps runs (default --budget_seconds)")
    p.add_argument("--checkpoint_seconds", type=float, default=60.0,
                   help="save an unfinished stage's chains this often (resumed on restart)")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run for the tests")
    args = p.parse_args()
    if args.smoke:
        args.chains, args.budget_seconds, args.reference_seconds = 4, 1.5, 2.0
        args.pilot_seconds, args.directions, args.records = 0.5, 4, 50
        args.subspace_rank, args.prior_directions = 3, 2
    tmp = None
    if args.out is None:
        if args.smoke:
            tmp = args.out = tempfile.mkdtemp(prefix="bayesian_inversion_smoke_")
        else:
            args.out = os.path.join(ROOT, "build", "bayesian_inversion")
    os.makedirs(args.out, exist_ok=True)
    if args.smoke and args.docs is None:
        args.docs = os.path.join(args.out, "docs")  # the table and plots, thrown away
    server = None
    try:
        if args.server:
            target = args.server
        else:
            server, target = start_server(args.bin, args.repository, args.threads)
        run(args, target)
    finally:
        stop_server(server)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def run(args, target):
    import dino_serve
    from dino_serve import bayes
    bayes.set_blas_threads(1)   # the client's small batched SVDs (bayes/threads.py says why)
    client = dino_serve.DinoClient(target, timeout=600, gen_dir=args.gen_dir)
    log("server", target, "out", args.out)
    exact_model = bayes.ServedModel(client, EXACT)
    dino_model = bayes.ServedModel(client, DINO)
    prior = bayes.ServedPrior(client, EXACT)
    dino_prior = bayes.ServedPrior(client, DINO)
    assert np.array_equal(prior.mean, dino_prior.mean), "the DINO's prior is not the PDE's"
    n_cells = int(prior.info["mesh_cells"])
    chains = args.chains

    # Data -------------------------------------------------------------------------------------
    stage = load(args.out, "data")
    if stage is None:
        m_true = prior.served_samples(1, seed=TRUE_SEED)[0]
        q_true = exact_model.evaluate(m_true[None])[0]
        noise_std = 0.01 * np.abs(q_true).max()
        data = q_true + noise_std * np.random.default_rng(NOISE_SEED).standard_normal(q_true.shape)
        save(args.out, "data", {"m_true": m_true, "q_true": q_true, "data": data},
             {"noise_std": float(noise_std), "true_seed": TRUE_SEED, "noise_seed": NOISE_SEED,
              "noise_model": "sigma = 0.01 * max_i |q_true,i| for all 50 observations",
              "q_dino_rel_error": float(np.linalg.norm(dino_model.evaluate(m_true[None])[0]
                                                       - q_true) / np.linalg.norm(q_true))})
        stage = load(args.out, "data")
    arrays, info = stage
    m_true, data, noise_std = arrays["m_true"], arrays["data"], info["noise_std"]
    exact = bayes.BayesianProblem(exact_model, prior, data, noise_std)
    surrogate = bayes.BayesianProblem(dino_model, prior, data, noise_std)
    log("data: sigma %.3g, DINO rel. error at m_true %.3g" % (noise_std, info["q_dino_rel_error"]))

    # MAP and the directions of the ESS --------------------------------------------------------
    stage = load(args.out, "map")
    if stage is None:
        t = time.perf_counter()
        result = bayes.gauss_newton_cg(exact, max_iter=3 if args.smoke else 25,
                                       max_cg=10 if args.smoke else 100, gtol_rel=1e-6)
        wall = time.perf_counter() - t
        geo = bayes.AdjointGaussNewton(exact)(result.x[None])
        save(args.out, "map", {"x_map": result.x, "m_map": result.m,
                               "eigenvalues": geo.eigenvalues[0], "W": geo.vectors[0]},
             {"iterations": result.iterations, "cg_iterations": result.cg_iterations,
              "misfit": result.misfit, "cost": result.cost, "reason": result.reason,
              "seconds": wall, "converged": bool(result.converged)})
        stage = load(args.out, "map")
    arrays, info = stage
    x_map, W_all, lam_map = arrays["x_map"], arrays["W"], arrays["eigenvalues"]
    W = W_all[:, :args.directions]
    log("MAP: misfit %.3g after %d GN iterations; GN eigenvalues %s" % (
        info["misfit"], info["iterations"], np.array2string(arrays["eigenvalues"][:6],
                                                            precision=3)))

    # Leading prior directions: the top eigenvectors v of C (randomized, two power
    # iterations); in whitened coordinates v·(m − m0) = √μ uᵀx with u = Lᵀv/√μ, unit norm.
    stage = load(args.out, "prior_directions")
    if stage is None:
        k = args.prior_directions
        omega = np.random.default_rng(3).standard_normal((k + 10, prior.dim))
        y = prior.apply_cov(omega)
        for _ in range(2):
            y = prior.apply_cov(np.linalg.qr(y.T)[0].T)
        q = np.linalg.qr(y.T)[0]                                     # [d, k + 10]
        mu, e = np.linalg.eigh(q.T @ prior.apply_cov(q.T).T)
        order = np.argsort(-mu)[:k]
        v = (q @ e[:, order]).T                                      # [k, d]
        u = prior.apply_sqrt_cov(v, transpose=True) / np.sqrt(mu[order])[:, None]
        save(args.out, "prior_directions", {"U": u.T, "eigenvalues": mu[order]},
             {"note": "whitened directions of the leading prior eigenvectors"})
        stage = load(args.out, "prior_directions")
    U_prior = stage[0]["U"]
    log("prior directions: eigenvalues %s, |u| %s" % (
        np.array2string(stage[0]["eigenvalues"], precision=3),
        np.array2string(np.linalg.norm(U_prior, axis=0), precision=3)))

    # Training cost of the DINO ----------------------------------------------------------------
    if load(args.out, "training_cost") is None:
        training_cost(args, client)

    # Chains -----------------------------------------------------------------------------------
    # Split mMALA: the leading GN eigenvectors at the MAP as the subspace (the same for the
    # PDE and the DINO methods), one more step size for its complement.
    k_s = args.subspace_rank
    split = {"subspace": W_all[:, :k_s], "complement_h": 0.1} if k_s else {}

    def kernel_for(name):
        if name in ("reference", "pde_mmala"):
            return bayes.MMALA(bayes.AdjointGaussNewton(exact), h=0.1, **split), "mmala", 0.1
        if name == "pde_mmala_conditional":
            if not split:
                raise ValueError("pde_mmala_conditional needs --subspace_rank > 0")
            return (bayes.MMALA(bayes.AdjointGaussNewton(exact), h=0.1,
                                **dict(split, conditional=True)), "mmala", 0.1)
        if name == "pde_pcn":
            return bayes.PCN(exact, 0.02), "pcn", 0.02
        if name == "dino_pcn":
            return bayes.PCN(surrogate, 0.02), "pcn", 0.02
        dino_split = dict(split, conditional=True) if split and args.conditional else split
        if name == "dino_mmala":
            return (bayes.MMALA(bayes.ReducedGaussNewton(surrogate), h=0.1, **dino_split),
                    "mmala", 0.1)
        if name in ("da_dino_mmala", "dac_dino_mmala"):
            return (bayes.DelayedAcceptance(
                bayes.MMALA(bayes.ReducedGaussNewton(surrogate), h=0.1, **dino_split), exact,
                offset_correction=name == "dac_dino_mmala"), "mmala", 0.1)
        raise ValueError(name)

    # --reference_seconds 0: the methods alone; a reference run later (or elsewhere and
    # copied in) enters the table when the report is made again.
    names = (["reference"] if args.reference_seconds > 0 else []) + [
        m for m in args.methods.split(",") if m]
    fixed = [f.split("=") for f in args.fixed_steps.split(",") if f]
    names += ["%s@%s" % (m, v) for m, v in fixed]
    for i, name in enumerate(names):
        if load(args.out, name) is not None:
            log(name, "done already")
            continue
        base, _, fixed_step = name.partition("@")
        seconds = args.reference_seconds if name == "reference" else args.budget_seconds
        if fixed_step and args.fixed_budget_seconds:
            seconds = args.fixed_budget_seconds
        rng = np.random.default_rng(1000 + i)
        kernel, kind, step0 = kernel_for(base)
        models = [exact_model, dino_model]
        diff = lambda a, b: {k: a[k] - b.get(k, 0) for k in a if a[k] != b.get(k, 0)}  # noqa
        add = lambda a, b: {k: a.get(k, 0) + b.get(k, 0) for k in set(a) | set(b)}  # noqa
        partial = load(args.out, name + PARTIAL)
        if partial is not None:
            # An interrupted run: its chains continue from their last checkpoint (the
            # states, the step sizes and the random generator), and its records grow.
            arrays, info = partial
            state = kernel.init(arrays["x"])
            set_step(kernel, state, info["step"], info["complement_h"])
            rng.bit_generator.state = info["rng"]
            step, thin, history = info["step"], info["thin"], arrays["pilot_history"].tolist()
            pilot_wall, pilot_steps, init_wall = (info["pilot_wall"], info["pilot_steps"],
                                                  info["init_wall"])
            done = {k: arrays[k] for k in ("z", "misfit", "accepted", "kept_x", "stage1")
                    if k in arrays}
            resume, counts_before = (done, info["steps"], info["wall"]), info["counts"]
            log(name, "resuming at step %d (%.0f s of %g s run)" % (info["steps"], info["wall"],
                                                                   seconds))
        else:
            before = [dict(m.counts) for m in models]
            # Every method starts from the same kind of points: draws from the Laplace
            # approximation N(x_map, (I + H_GN(x_map))⁻¹) (the exact GN Hessian at the MAP,
            # whitened), so the pilot (also the burn-in) starts near stationarity.
            x0 = bayes.laplace_draws(x_map, W_all, lam_map,
                                     rng.standard_normal((chains, x_map.size)))
            t = time.perf_counter()
            state = kernel.init(x0)
            init_wall = time.perf_counter() - t
            if fixed_step:
                log(name, "burn-in at the fixed step %s for %g s"
                    % (fixed_step, args.pilot_seconds))
                state, step, pilot_wall, pilot_steps, history = burn_in(
                    kernel, state, rng, fixed_step, args.pilot_seconds)
            else:
                log(name, "pilot: %s from %g for %g s" % (kind, step0, args.pilot_seconds))
                state, step, pilot_wall, pilot_steps, history = pilot(
                    kernel, state, rng, kind, step0, args.pilot_seconds,
                    8 if args.smoke else 20, lam_map[:k_s])
            log(name, "%s after %d pilot steps (%.1f s); running %g s"
                % (step_label(kernel), pilot_steps, pilot_wall, seconds))
            thin = max(1, int(math.ceil(seconds / (pilot_wall / pilot_steps) / args.records)))
            now = [dict(m.counts) for m in models]
            resume, counts_before = None, {"exact": {}, "dino": {},
                                           "exact_pilot": diff(now[0], before[0]),
                                           "dino_pilot": diff(now[1], before[1])}
        mid = [dict(m.counts) for m in models]   # after the pilot, or after a resume's init

        def run_info(wall, steps):
            now = [dict(m.counts) for m in models]
            counts = dict(counts_before, exact=add(counts_before["exact"], diff(now[0], mid[0])),
                          dino=add(counts_before["dino"], diff(now[1], mid[1])))
            inner = inner_kernel(kernel)
            split = getattr(inner, "subspace", None) is not None
            return {"step": step, "step_label": step_label(kernel), "kind": kind,
                    "steps": steps, "wall": wall, "thin": thin, "pilot_wall": pilot_wall,
                    "pilot_steps": pilot_steps, "init_wall": init_wall, "counts": counts,
                    "chains": chains, "complement_h": inner.complement_h if split else None}

        def checkpoint(state, records, wall, steps):
            info = dict(run_info(wall, steps), rng=rng.bit_generator.state)
            save(args.out, name + PARTIAL,
                 dict(records, x=state.x, pilot_history=np.array(history)), info)

        state, rec, wall, steps = run_chains(
            kernel, state, rng, seconds, np.hstack([W, U_prior]), thin, args.records,
            resume=resume, checkpoint=checkpoint, checkpoint_seconds=args.checkpoint_seconds)
        rec["z_prior"] = rec["z"][..., W.shape[1]:]
        rec["z"] = rec["z"][..., :W.shape[1]]
        t = time.perf_counter()
        means, variances = chain_moments(prior, rec.pop("kept_x"))
        log(name, "%d steps in %.1f s, acceptance %.3f; moments in %.1f s"
            % (steps, wall, rec["accepted"].mean(), time.perf_counter() - t))
        save(args.out, name, dict(rec, chain_means=means, chain_variances=variances,
                                  pilot_history=np.array(history)), run_info(wall, steps))
        for ext in (".json", ".npz"):
            if os.path.exists(os.path.join(args.out, name + PARTIAL + ext)):
                os.remove(os.path.join(args.out, name + PARTIAL + ext))
    client.close()
    report(args, n_cells)


# Training cost -----------------------------------------------------------------------------------

def training_cost(args, client):
    """Data generation measured (a few samples of the DINO's generate command, timed), fit
    time from the model's metadata (its per-epoch seconds, measured when it was trained)."""
    meta = client.model_info(DINO)["metadata"]
    train = meta["data"]["train"]
    history = meta.get("training", {}).get("history", [])
    fit_seconds = float(sum(h.get("seconds", 0.0) for h in history))
    epochs = len(history)
    # A model trained on from other model files (fit --init-model, stage after stage) also
    # cost their training: each stage's record nests the one before under "initial_model".
    stage = meta.get("initial_model")
    while stage:
        fit_seconds += float(stage.get("training", {}).get("seconds", 0.0))
        epochs += int(stage.get("training", {}).get("epochs", 0))
        stage = stage.get("initial_model")
    generated_by = train.get("generated_by")
    if generated_by is None:
        # Models written by `dino-train fit` name the problem and the data's form, not the
        # command; the cost of generate does not depend on the seed.
        problem = meta["problem"]
        generated_by = (f"dino-train generate --problem {problem['name']} "
                        f"--samples {train['samples']} --seed 1 --jacobian svd "
                        f"--rank {train.get('svd_rank', 50)} --mesh {problem['mesh_cells']}")
    cmd = generated_by.split()
    n_total = int(cmd[cmd.index("--samples") + 1])
    n_timed = 2 if args.smoke else 8
    cmd[cmd.index("--samples") + 1] = str(n_timed)
    cmd[0] = os.path.join(args.bin, "dino-train")
    gen_seconds = None
    with tempfile.TemporaryDirectory() as tmp:
        cmd[cmd.index("--seed") + 1] = "77"
        full = cmd + ["--out", os.path.join(tmp, "data")]
        if args.smoke:
            full[full.index("--mesh") + 1] = "8"
        t = time.perf_counter()
        r = subprocess.run(full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        gen_seconds = time.perf_counter() - t
        if r.returncode != 0:
            log("dino-train generate failed:", r.stderr[-500:])
            gen_seconds = None
    per_sample = gen_seconds / n_timed if gen_seconds else None
    info = {"generated_by": generated_by, "samples": n_total,
            "timed_samples": n_timed, "timed_command": " ".join(full),
            "generate_seconds_timed": gen_seconds, "generate_seconds_per_sample": per_sample,
            "generate_seconds_estimated": per_sample * n_total if per_sample else None,
            "fit_seconds_metadata": fit_seconds, "epochs": epochs,
            "bases_note": "the bases computation (dino-train bases) is not counted"}
    info["total_seconds"] = (info["generate_seconds_estimated"] or 0.0) + fit_seconds
    save(args.out, "training_cost", None, info)
    log("training cost: generate %.3g s/sample x %d + fit %.0f s = %.0f s"
        % (per_sample or float("nan"), n_total, fit_seconds, info["total_seconds"]))


# Report ------------------------------------------------------------------------------------------

def report(args, n_cells):
    from dino_serve import bayes
    data_a, data_i = load(args.out, "data")
    map_a, map_i = load(args.out, "map")
    cost = load(args.out, "training_cost")[1]
    ref = load(args.out, "reference")
    results = {}
    if ref is not None:
        ref_mean = ref[0]["chain_means"].mean(axis=0)
        ref_var = ref[0]["chain_variances"].mean(axis=0)
        c_ref = len(ref[0]["chain_means"])
        se_ref_mean = ref[0]["chain_means"].std(axis=0, ddof=1) / math.sqrt(c_ref)
        se_ref_var = ref[0]["chain_variances"].std(axis=0, ddof=1) / math.sqrt(c_ref)
        norm_mean, norm_var = np.linalg.norm(ref_mean), np.linalg.norm(ref_var)
    for name in ["reference"] + METHODS + EXTRA_METHODS + fixed_stages(args.out):
        stage = load(args.out, name)
        if stage is None:
            continue
        a, i = stage
        z, misfit = a["z"], a["misfit"]
        ess_dir = np.atleast_1d(bayes.ess(z))
        ess_misfit = float(bayes.ess(misfit))
        all_ess = finite_ess(ess_dir, ess_misfit)
        # How much the min ESS moves with the draw of chains: each half of them on its own
        # (doubled, so that it estimates the whole run's), for the speed-ups' spread.
        half = len(z) // 2
        ess_min_halves = [2.0 * finite_ess(bayes.ess(z[h]), bayes.ess(misfit[h])).min()
                          for h in (slice(0, half), slice(half, None))] if half >= 2 else []
        wall = i["wall"]
        fwd, lin = pde_solves(i["counts"]["exact"])
        cm, cv = a["chain_means"], a["chain_variances"]
        c = len(cm)
        mean, var = cm.mean(axis=0), cv.mean(axis=0)
        se_mean = cm.std(axis=0, ddof=1) / math.sqrt(c)
        se_var = cv.std(axis=0, ddof=1) / math.sqrt(c)
        if "z_prior" in a and a["z_prior"].shape[-1]:
            ess_prior = np.atleast_1d(bayes.ess(a["z_prior"]))
            ess_prior_min = float(np.nanmin(ess_prior))
        else:
            ess_prior, ess_prior_min = np.zeros(0), float("nan")
        step_text = i.get("step_label") or "%s = %s" % ("β" if i["kind"] == "pcn" else "h",
                                                       fmt(i["step"]))
        r = {"label": label(name), "step": i["step"], "step_label": step_text,
             "kind": i["kind"], "steps": i["steps"],
             "ess_prior": ess_prior.tolist(), "ess_prior_min": ess_prior_min,
             "wall": wall, "chains": c, "acceptance": float(a["accepted"].mean()),
             "ess_min": float(all_ess.min()), "ess_median": float(np.median(all_ess)),
             "ess_min_halves": [float(e) for e in ess_min_halves],
             "ess_directions": ess_dir.tolist(), "ess_misfit": ess_misfit,
             "ess_prior_per_s_min": ess_prior_min / wall,
             "rhat_max": float(np.nanmax(np.append(np.atleast_1d(bayes.split_rhat(z)),
                                                   bayes.split_rhat(misfit)))),
             "forward_solves": fwd, "adjoint_solves": lin, "pde_solves": fwd + lin,
             "counts": i["counts"], "mean": mean, "std": np.sqrt(var)}
        if "stage1" in a:
            s1 = a["stage1"]
            r["stage1_acceptance"] = float(s1.mean())
            r["stage2_acceptance"] = float(a["accepted"].sum() / max(s1.sum(), 1))
        r["ess_per_s_min"] = r["ess_min"] / wall
        r["ess_per_s_median"] = r["ess_median"] / wall
        r["ess_per_solve_min"] = r["ess_min"] / r["pde_solves"] if r["pde_solves"] else None
        r["seconds_to_100"] = 100.0 / r["ess_per_s_min"] if r["ess_min"] > 0 else float("inf")
        if name != "reference" and ref is not None:
            r["mean_rel_error"] = float(np.linalg.norm(mean - ref_mean) / norm_mean)
            r["mean_mc_error"] = float(np.sqrt(np.sum(se_mean ** 2 + se_ref_mean ** 2))
                                       / norm_mean)
            r["var_rel_error"] = float(np.linalg.norm(var - ref_var) / norm_var)
            r["var_mc_error"] = float(np.sqrt(np.sum(se_var ** 2 + se_ref_var ** 2)) / norm_var)
        results[name] = r
    # Speed-ups and break-even against the PDE methods.
    train = cost["total_seconds"]
    for name, r in results.items():
        for base in ("pde_mmala", "pde_pcn"):
            if base in results:
                b = results[base]
                r["speedup_vs_" + base] = r["ess_per_s_min"] / b["ess_per_s_min"]
                if r["ess_min_halves"] and b["ess_min_halves"]:
                    # Half against half (first with first, second with second).
                    r["speedup_halves_vs_" + base] = [
                        (e / r["wall"]) / (f / b["wall"])
                        for e, f in zip(r["ess_min_halves"], b["ess_min_halves"])]
                if "dino" in name:
                    gain = 1.0 / b["ess_per_s_min"] - 1.0 / r["ess_per_s_min"]
                    r["break_even_ess_vs_" + base] = train / gain if gain > 0 else float("inf")
    summary = {k: {kk: vv for kk, vv in v.items() if kk not in ("mean", "std")}
               for k, v in results.items()}
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump({"results": summary, "training_cost": cost, "data": data_i, "map": map_i},
                  f, indent=1, sort_keys=True)
    table = make_table(results, cost, data_i, map_i)
    print(table)
    if args.docs:
        os.makedirs(args.docs, exist_ok=True)
        with open(os.path.join(args.docs, "bayesian_inversion_table.md"), "w") as f:
            f.write(table)
        plots(args, results, data_a["m_true"], n_cells)


def finite_ess(ess_directions, ess_misfit):
    """The ESS of the directions and of the misfit, without those of constant quantities."""
    all_ess = np.append(np.atleast_1d(ess_directions), ess_misfit)
    return all_ess[np.isfinite(all_ess)]


def fixed_stages(out):
    return sorted(f[:-5] for f in os.listdir(out)
                  if f.endswith(".json") and "@" in f and not f.endswith(PARTIAL + ".json"))


def label(name):
    base, _, step = name.partition("@")
    return LABELS[base] + (" (fixed %s = %s)" % ("β" if "pcn" in base else "h",
                                                 step.replace(":", " / h⊥ = "))
                           if step else "")


def fmt(v, digits=3):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if abs(v) >= 1000:
        return "%.0f" % v
    return "%.*g" % (digits, v)


def make_table(results, cost, data_i, map_i):
    lines = ["| method | step | chains × steps | acceptance | ESS min / median | "
             "ESS/s min / median | ESS min, prior directions (per s) | "
             "PDE solves (fwd + adj) | ESS per 1000 PDE solves | "
             "s to 100 ESS | speed-up vs PDE mMALA / pCN [each half of the chains] | "
             "rel. error mean (MC) | "
             "rel. error variance (MC) | max split-R̂ |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
             "| ---: | ---: |"]
    for name, r in results.items():
        acc = fmt(r["acceptance"], 2)
        if "stage1_acceptance" in r:
            acc += " (stage 1 %s, stage 2 %s)" % (fmt(r["stage1_acceptance"], 2),
                                                  fmt(r["stage2_acceptance"], 2))
        sp = " / ".join(
            fmt(r.get("speedup_vs_" + b)) + (" [%s]" % ", ".join(
                fmt(x, 2) for x in r["speedup_halves_vs_" + b])
                if "speedup_halves_vs_" + b in r else "") for b in ("pde_mmala", "pde_pcn"))
        per_solve = (fmt(1000 * r["ess_per_solve_min"]) if r["ess_per_solve_min"] is not None
                     else "no PDE solve")
        err_m = ("%s (%s)" % (fmt(r["mean_rel_error"], 2), fmt(r["mean_mc_error"], 2))
                 if "mean_rel_error" in r else "–")
        err_v = ("%s (%s)" % (fmt(r["var_rel_error"], 2), fmt(r["var_mc_error"], 2))
                 if "var_rel_error" in r else "–")
        lines.append("| %s | %s | %d × %d | %s | %s / %s | %s / %s | %s (%s) | %d + %d | %s | "
                     "%s | %s | %s | %s | %s |" % (
                         r["label"], r["step_label"],
                         r["chains"], r["steps"], acc, fmt(r["ess_min"]), fmt(r["ess_median"]),
                         fmt(r["ess_per_s_min"]), fmt(r["ess_per_s_median"]),
                         fmt(r["ess_prior_min"]), fmt(r["ess_prior_per_s_min"]),
                         r["forward_solves"], r["adjoint_solves"], per_solve,
                         fmt(r["seconds_to_100"]), sp, err_m, err_v, fmt(r["rhat_max"])))
    lines.append("")
    lines.append("Training cost of poisson_dipnet: %s s = data generation %s s (%d samples × "
                 "%s s/sample, timed on %d samples now) + fit %s s (%d epochs, from its "
                 "metadata)." % (fmt(cost["total_seconds"]),
                                 fmt(cost["generate_seconds_estimated"]), cost["samples"],
                                 fmt(cost["generate_seconds_per_sample"]),
                                 cost["timed_samples"], fmt(cost["fit_seconds_metadata"]),
                                 cost["epochs"]))
    lines.append("")
    be = ["| DINO method | break-even vs PDE mMALA (effective samples) | vs PDE pCN |",
          "| --- | ---: | ---: |"]
    for name, r in results.items():
        if "break_even_ess_vs_pde_mmala" in r or "break_even_ess_vs_pde_pcn" in r:
            be.append("| %s | %s | %s |" % (r["label"], fmt(r.get("break_even_ess_vs_pde_mmala")),
                                            fmt(r.get("break_even_ess_vs_pde_pcn"))))
    lines += be + [""]
    lines.append("Noise: %s = %s. MAP misfit %s (%d Gauss–Newton iterations)." % (
        data_i["noise_model"], fmt(data_i["noise_std"]), fmt(map_i["misfit"]),
        map_i["iterations"]))
    return "\n".join(lines) + "\n"


def plots(args, results, m_true, n_cells):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from dino_serve import bayes
    n = n_cells + 1

    def field(v):
        return np.asarray(v).reshape(n, n)  # node (i, j) has index n·j + i: rows are y

    show = [k for k in ("reference", "dino_mmala", "da_dino_mmala", "dac_dino_mmala")
            if k in results]
    fig, axes = plt.subplots(len(show), 3, figsize=(9, 2.8 * len(show)), squeeze=False)
    for row, k in enumerate(show):
        r = results[k]
        panels = [(m_true if row == 0 else None, "true parameter"),
                  (r["mean"], label(k) + "\nposterior mean"),
                  (r["std"], label(k) + "\nposterior std")]
        for col, (v, title) in enumerate(panels):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if v is None:
                ax.axis("off")
                continue
            im = ax.imshow(field(v), origin="lower", extent=(0, 1, 0, 1), cmap="viridis")
            ax.set_title(title, fontsize=8)
            fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(os.path.join(args.docs, "bayesian_inversion_fields.png"), dpi=70)
    plt.close(fig)

    names = [k for k in results]
    fig, axes = plt.subplots(2, 2, figsize=(10, 6))
    for k in names:
        a, i = load(args.out, k)
        t = np.arange(a["z"].shape[1]) * i["wall"] / max(i["steps"], 1)
        if k != "reference":
            axes[0, 0].plot(t, a["z"][0, :, 0], lw=0.6, label=label(k))
            axes[0, 1].plot(t, a["misfit"][0], lw=0.6, label=label(k))
        rho = bayes.autocorrelation(a["z"][:, :, 0]).mean(axis=0)
        lags = np.arange(len(rho)) * i["wall"] / max(i["steps"], 1)
        keep = lags <= 30
        axes[1, 0].plot(lags[keep], rho[keep], label=label(k))
    axes[0, 0].set(title="trace, chain 0: leading GN direction", xlabel="seconds")
    axes[0, 1].set(title="trace, chain 0: data misfit Φ", xlabel="seconds", yscale="log")
    axes[1, 0].set(title="autocorrelation, leading GN direction", xlabel="lag (seconds)")
    axes[1, 0].axhline(0, color="k", lw=0.5)
    axes[0, 0].legend(fontsize=6)
    axes[1, 0].legend(fontsize=6)
    labels = [label(k).replace(" (fixed", "\n(fixed") for k in names if k != "reference"]
    vals = [results[k]["ess_per_s_min"] for k in names if k != "reference"]
    med = [results[k]["ess_per_s_median"] for k in names if k != "reference"]
    pos = np.arange(len(labels))
    axes[1, 1].bar(pos - 0.2, vals, 0.4, label="min")
    axes[1, 1].bar(pos + 0.2, med, 0.4, label="median")
    axes[1, 1].set_xticks(pos)
    axes[1, 1].set_xticklabels(labels, rotation=20, fontsize=7)
    axes[1, 1].set(title="ESS per second (equal budgets)", yscale="log")
    axes[1, 1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(args.docs, "bayesian_inversion_chains.png"), dpi=70)
    plt.close(fig)


if __name__ == "__main__":
    main()
