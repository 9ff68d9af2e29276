#!/usr/bin/python3
"""Example use of the dino_serve package: queries a running dino-serve server and checks the derivatives
it returns against each other.

    /usr/bin/python3 client/python/example.py --server localhost:50051 [--model NAME]
        [--gen_dir build/python]

Without --model the first listed model is used. Exits nonzero if a call fails or a check
does not hold.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dino_serve import DinoClient, DinoError  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="localhost:50051", help="server address")
    parser.add_argument("--model", help="model name (default: the first listed)")
    parser.add_argument("--gen_dir", help="folder of the generated gRPC Python code "
                        "(default: $DINO_PYTHON_GEN_DIR, else <repo>/build/python)")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-call deadline, s")
    args = parser.parse_args()

    with DinoClient(args.server, timeout=args.timeout, gen_dir=args.gen_dir) as client:
        print("health:", client.health())
        models = client.list_models()
        for m in models:
            print("model %-20s versions %s (default %d)"
                  % (m["name"], m["versions"], m["default_version"]))
        if not models:
            print("no models loaded")
            return 1
        name = args.model or models[0]["name"]
        info = client.model_info(name)
        d_m, d_q = info["input_dim"], info["output_dim"]
        print("%s v%d: %s, d_M = %d, d_Q = %d, dtype %s"
              % (name, info["version"], info["architecture"], d_m, d_q, info["dtype"]))

        rng = np.random.default_rng(0)
        m = rng.standard_normal((4, d_m))
        # Ask for float64 results so that the checks below are not limited by fp32 rounding.
        q = client.evaluate(name, m, dtype="fp64")
        print("evaluate: m %s -> q %s" % (m.shape, q.shape))

        # <w, J v> must equal <Jᵀ w, v>: Jvp and Vjp are each other's adjoints.
        v = rng.standard_normal(d_m)
        w = rng.standard_normal(d_q)
        jv, q0 = client.jvp(name, m[0], v, dtype="fp64", return_q=True)
        jtw = client.vjp(name, m[0], w, dtype="fp64")
        lhs, rhs = float(w @ jv[0]), float(jtw[0] @ v)
        scale = max(1.0, abs(lhs), abs(rhs))
        print("adjoint check: <w, Jv> = %.6g, <J^T w, v> = %.6g" % (lhs, rhs))
        ok = abs(lhs - rhs) <= 1e-4 * scale and np.allclose(q0, q[0], rtol=1e-6, atol=1e-9)

        if info["has_reduced_bases"]:
            jr, _ = client.reduced_jacobian(name, m, dtype="fp64")
            print("reduced_jacobian: %s (r_Q = %d, r_M = %d)"
                  % (jr.shape, info["output_rank"], info["input_rank"]))
            # U^T J V from the bases and Jvp must agree with the reduced Jacobian.
            bases = client.bases(name, dtype="fp64")
            u, vb = bases["output_basis"], bases["input_basis"]
            jv_basis = client.jvp(name, m[0], vb.T, dtype="fp64")  # [r_M, d_Q]
            ok = ok and np.allclose(u.T @ jv_basis.T, jr[0], rtol=1e-4, atol=1e-6)

        if d_q * d_m <= 1_000_000:
            jac = client.jacobian(name, m[0], dtype="fp64")
            print("jacobian: %s, |J|_F = %.6g" % (jac.shape, np.linalg.norm(jac)))
            ok = ok and np.allclose(jac @ v, jv[0], rtol=1e-4, atol=1e-6)

        print("checks:", "passed" if ok else "FAILED")
        return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DinoError as e:
        print("error:", e, file=sys.stderr)
        sys.exit(1)
