"""Reads a dino-train data directory with NumPy and checks it (run by generate_test.cc).

Usage: check_npz.py DIR N D_M D_Q RANK
Checks shapes and dtypes of mq_data.npz, Jsvd_data.npz and J_data.npz, that every value is
finite, that the SVD factors are orthonormal with non-increasing singular values, and that
U diag(σ) Vᵀ is the best rank-r approximation of J (its error is the tail of J's singular
values). Exits non-zero with a message on the first failure.
"""

import sys

import numpy as np


def fail(message):
    sys.exit("check_npz.py: " + message)


def expect_shape(name, array, shape):
    if array.shape != shape:
        fail(f"{name} has shape {array.shape}, expected {shape}")
    if array.dtype != np.float64:
        fail(f"{name} has dtype {array.dtype}, expected float64")
    if not np.all(np.isfinite(array)):
        fail(f"{name} has non-finite values")


def main(directory, n, d_m, d_q, r):
    mq = np.load(f"{directory}/mq_data.npz")
    expect_shape("m_data", mq["m_data"], (n, d_m))
    expect_shape("q_data", mq["q_data"], (n, d_q))
    svd = np.load(f"{directory}/Jsvd_data.npz")
    u, sigma, v = svd["U_data"], svd["sigma_data"], svd["V_data"]
    expect_shape("U_data", u, (n, d_q, r))
    expect_shape("sigma_data", sigma, (n, r))
    expect_shape("V_data", v, (n, d_m, r))
    jacobians = np.load(f"{directory}/J_data.npz")["J_data"]
    expect_shape("J_data", jacobians, (n, d_q, d_m))

    eye = np.eye(r)
    for i in range(n):
        if np.abs(u[i].T @ u[i] - eye).max() > 1e-10:
            fail(f"U_data[{i}] is not orthonormal")
        if np.abs(v[i].T @ v[i] - eye).max() > 1e-10:
            fail(f"V_data[{i}] is not orthonormal")
        if np.any(np.diff(sigma[i]) > 0):
            fail(f"sigma_data[{i}] is not non-increasing")
        reference = np.linalg.svd(jacobians[i], compute_uv=False)
        if np.abs(sigma[i] - reference[:r]).max() > 1e-10 * reference[0]:
            fail(f"sigma_data[{i}] differs from the singular values of J_data[{i}]")
        error = np.linalg.norm(jacobians[i] - (u[i] * sigma[i]) @ v[i].T)
        tail = np.sqrt(np.sum(reference[r:] ** 2))
        if abs(error - tail) > 1e-10 * reference[0]:
            fail(f"sample {i}: |J - U diag(sigma) V^T| = {error}, expected the SVD tail {tail}")
    print("ok")


if __name__ == "__main__":
    if len(sys.argv) != 6:
        fail("usage: check_npz.py DIR N D_M D_Q RANK")
    main(sys.argv[1], *(int(a) for a in sys.argv[2:]))
