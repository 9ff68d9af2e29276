#!/usr/bin/python3
"""In-process PyTorch baseline: what a user would run instead of calling dino-serve.

Loads the same TorchScript model file the server serves and, on one thread
(torch.set_num_threads(1)), measures

* Evaluate: the per-call time of model(m) for one sample (p50 of many calls, under
  torch.no_grad), and batched samples/s at B = 64, 1000 and 1024;
* the reduced Jacobian J_phi(z) (r_Q x r_M) at one point with torch.func.jacrev (functorch's
  on PyTorch 1.13) of a plain
  PyTorch phi rebuilt from the model's weights (W0, b0, ..., the whitening buffers
  reduced_input_shift / reduced_input_scale, softplus hidden layers, linear last layer),
  including the projection z = V^T m and q = U phi(z) + b that the server's ReducedJacobian
  also returns; and B = 1000 points with vmap(jacrev(phi)).

Before timing, the rebuilt phi is checked against the model's TorchScript reduced_forward
and its jacrev Jacobian against torch.autograd.functional.jacobian of the TorchScript
method; a mismatch aborts, so the baseline cannot time a different function.

  /usr/bin/python3 scripts/bench_inprocess.py --model models/repository/poisson_dipnet/3/model.pt \\
      --json inprocess.json
"""
import argparse
import json
import math
import statistics
import sys
import time

import torch

try:  # PyTorch >= 2.0.
    from torch.func import jacrev, vmap
except ImportError:  # PyTorch 1.13 (Debian 12) ships the same functions as functorch.
    from functorch import jacrev, vmap


def percentile(sorted_values, q):
    """Nearest-rank percentile, as dino-bench computes it."""
    index = max(1, math.ceil(q * len(sorted_values))) - 1
    return sorted_values[min(index, len(sorted_values) - 1)]


def time_calls(fn, calls, warmup):
    """Per-call wall times in microseconds of `calls` calls after `warmup` unmeasured ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - start) / 1e3)
    times.sort()
    return {"calls": calls, "p50_us": percentile(times, 0.5), "p90_us": percentile(times, 0.9),
            "p99_us": percentile(times, 0.99), "mean_us": statistics.fmean(times),
            "min_us": times[0]}


def time_batched(fn, batch, seconds, min_calls):
    """Samples/s of fn() over about `seconds` (at least `min_calls` calls), after one warm-up."""
    fn()
    calls = 0
    start = time.perf_counter()
    per_call = []
    while calls < min_calls or time.perf_counter() - start < seconds:
        t0 = time.perf_counter_ns()
        fn()
        per_call.append((time.perf_counter_ns() - t0) / 1e3)
        calls += 1
    elapsed = time.perf_counter() - start
    per_call.sort()
    return {"batch": batch, "calls": calls, "samples_per_s": calls * batch / elapsed,
            "median_call_us": percentile(per_call, 0.5),
            "samples_per_s_at_median": batch / (percentile(per_call, 0.5) / 1e6)}


class Phi:
    """phi of a DIPNet rebuilt from the TorchScript model's weights, in plain PyTorch."""

    def __init__(self, model):
        params = dict(model.named_parameters())
        buffers = dict(model.named_buffers())
        layers = 0
        while f"W{layers}" in params:
            layers += 1
        if layers == 0 or "reduced_input_shift" not in buffers:
            sys.exit("bench_inprocess: the model is not a DIPNet with W0, b0, ... and "
                     "reduced_input_shift / reduced_input_scale")
        self.weights = [(params[f"W{i}"].detach(), params[f"b{i}"].detach())
                        for i in range(layers)]
        self.shift = buffers["reduced_input_shift"]
        self.scale = buffers["reduced_input_scale"]
        self.input_basis = buffers["input_basis"]      # V [d_M, r_M]
        self.output_basis = buffers["output_basis"]    # U [d_Q, r_Q]
        self.output_shift = buffers["output_shift"]    # b [d_Q]

    def __call__(self, z):
        h = (z - self.shift) * self.scale
        for i, (w, b) in enumerate(self.weights):
            h = h @ w + b
            if i + 1 < len(self.weights):
                h = torch.nn.functional.softplus(h)  # beta 1, threshold 20, as the model.
        return h


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="models/repository/poisson_dipnet/3/model.pt")
    p.add_argument("--calls", type=int, default=2000, help="timed batch-1 calls per measurement")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--seconds", type=float, default=2.0,
                   help="time per batched measurement (at least 3 calls)")
    p.add_argument("--batches", default="64,1000,1024", help="Evaluate batch sizes")
    p.add_argument("--jacobian_batch", type=int, default=1000,
                   help="points of the vmap(jacrev) measurement")
    p.add_argument("--quick", action="store_true", help="few calls: a smoke run, not a result")
    p.add_argument("--json", help="write the results here ('-' = stdout)")
    a = p.parse_args()
    if a.quick:
        a.calls, a.warmup, a.seconds = 100, 10, 0.2
    torch.set_num_threads(1)
    torch.manual_seed(0)

    model = torch.jit.load(a.model)
    model.eval()
    phi = Phi(model)
    dtype = phi.input_basis.dtype
    d_m, r_m = phi.input_basis.shape
    d_q = phi.output_basis.shape[0]

    # The rebuilt phi must be the model's reduced_forward, and its jacrev the autograd Jacobian.
    z_check = torch.randn(8, r_m, dtype=dtype)
    with torch.no_grad():
        phi_diff = (phi(z_check) - model.reduced_forward(z_check)).abs().max().item()
    jac_rev = jacrev(phi)(z_check[0])
    jac_ref = torch.autograd.functional.jacobian(
        lambda z: model.reduced_forward(z[None])[0], z_check[0])
    jac_diff = (jac_rev - jac_ref).abs().max().item()
    tolerance = 1e-10 if dtype == torch.float64 else 1e-4
    if phi_diff > tolerance or jac_diff > tolerance:
        sys.exit(f"bench_inprocess: rebuilt phi differs from reduced_forward (max |diff| "
                 f"{phi_diff:.3g}, Jacobian {jac_diff:.3g})")

    m1 = torch.randn(1, d_m, dtype=dtype)
    with torch.no_grad():
        evaluate_batch1 = time_calls(lambda: model(m1), a.calls, a.warmup)
        batched = {}
        for b in [int(x) for x in a.batches.split(",")]:
            mb = torch.randn(b, d_m, dtype=dtype)
            batched[str(b)] = time_batched(lambda: model(mb), b, a.seconds, 3)

    # One point as a user would compute it: project, jacrev with phi's value as auxiliary
    # output, then q. The same results as one ReducedJacobian call of the server.
    def phi_and_value(z):
        y = phi(z)
        return y, y

    jac_and_value = jacrev(phi_and_value, has_aux=True)

    def reduced_jacobian_one(m):
        z = m @ phi.input_basis
        jac, y = jac_and_value(z[0])
        q = y @ phi.output_basis.T + phi.output_shift
        return jac, q

    reduced_batch1 = time_calls(lambda: reduced_jacobian_one(m1), a.calls, a.warmup)
    vmapped = vmap(jac_and_value)

    def reduced_jacobian_batch(m):
        z = m @ phi.input_basis
        jac, y = vmapped(z)
        q = y @ phi.output_basis.T + phi.output_shift
        return jac, q

    mj = torch.randn(a.jacobian_batch, d_m, dtype=dtype)
    jac_batch, _ = reduced_jacobian_batch(mj[:4])
    vmap_diff = (jac_batch[0] - jacrev(phi)(mj[0] @ phi.input_basis)).abs().max()
    if vmap_diff.item() > tolerance:
        sys.exit(f"bench_inprocess: vmap(jacrev) differs from jacrev by {vmap_diff.item():.3g}")
    reduced_batched = time_batched(lambda: reduced_jacobian_batch(mj), a.jacobian_batch,
                                   a.seconds, 3)

    result = {
        "model": a.model, "torch_version": torch.__version__, "torch_threads": 1,
        "dtype": str(dtype).replace("torch.", ""), "input_dim": d_m, "output_dim": d_q,
        "input_rank": r_m, "output_rank": phi.output_basis.shape[1], "quick": a.quick,
        "check": {"phi_max_abs_diff": phi_diff, "jacobian_max_abs_diff": jac_diff},
        "evaluate": {"batch1": evaluate_batch1, "batched": batched},
        "reduced_jacobian": {"method": f"{jacrev.__module__}.jacrev of the rebuilt phi "
                                       "(with z = V^T m and q = U phi + b)",
                             "batch1": reduced_batch1,
                             "batched": {str(a.jacobian_batch): reduced_batched}},
    }
    print(f"in-process PyTorch {torch.__version__}, 1 thread, {a.model}", file=sys.stderr)
    print(f"  Evaluate B=1: p50 {evaluate_batch1['p50_us']:.1f} us", file=sys.stderr)
    for b, r in batched.items():
        print(f"  Evaluate B={b}: {r['samples_per_s']:.0f} samples/s", file=sys.stderr)
    print(f"  reduced Jacobian B=1 (jacrev): p50 {reduced_batch1['p50_us']:.1f} us",
          file=sys.stderr)
    print(f"  reduced Jacobian B={a.jacobian_batch} (vmap(jacrev)): "
          f"{reduced_batched['samples_per_s']:.0f} points/s", file=sys.stderr)
    text = json.dumps(result, indent=2)
    if a.json == "-":
        print(text)
    elif a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
