#!/usr/bin/python3
"""The trust signal of the bundled poisson_dipnet, served by a real dino-server, against a
NumPy computation of the documented score (docs/model-contract.md, "Trust score") from the
model file's training_inputs.json and the served input basis: the residual here is
‖m − VVᵀm‖ computed as written, not through ‖m‖² − ‖z‖² as the server does. Also: q with and
without return_trust agree, and a Jvp request carries the same scores.

usage: trust_score_test.py <bin folder> <repository> <generated Python folder>
"""
import json
import os
import sys
import unittest
import zipfile

import numpy as np

BIN, REPOSITORY, GENERATED = (os.path.abspath(a) for a in sys.argv[1:4])
del sys.argv[1:4]
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "client", "python"))
import dino_serve  # noqa: E402
from server_process import ServerProcess  # noqa: E402

MODEL = "poisson_dipnet"
# The version the server serves by default (the highest): the others are not loaded.
VERSION = max(int(v) for v in os.listdir(os.path.join(REPOSITORY, MODEL)) if v.isdigit())


def training_inputs(path):
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith("extra/training_inputs.json"))
        return json.loads(archive.read(name))


def reference_scores(summary, basis, m):
    z = m @ basis
    w = np.array(summary["whitening"])
    distance = np.linalg.norm((z - np.array(summary["mean"])) @ w.T, axis=1)
    residual = np.linalg.norm(m - z @ basis.T, axis=1) / np.linalg.norm(m, axis=1)
    return np.maximum(distance / summary["distance_scale"],
                      (residual - summary["residual_mean"]) / summary["residual_scale"]) / \
        summary["threshold"]


class TrustScoreTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = ServerProcess(BIN, REPOSITORY)
        try:
            cls.client = dino_serve.DinoClient(cls.server.target, timeout=60, gen_dir=GENERATED)
        except Exception:
            cls.server.process.kill()  # tearDownClass does not run when setUpClass fails.
            raise

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.server.stop()

    def test_scores_equal_the_numpy_reference(self):
        summary = training_inputs(os.path.join(REPOSITORY, MODEL, str(VERSION), "model.pt"))
        basis = self.client.bases(MODEL, version=VERSION)["input_basis"]
        d = basis.shape[0]
        rng = np.random.default_rng(0)
        # Smooth fields like the prior's (few scores above 1), rough noise and a scaled copy
        # (all far out).
        x = np.linspace(0, 1, int(round(np.sqrt(d))))
        smooth = np.stack([np.outer(np.sin(np.pi * k * x), np.cos(np.pi * k * x)).ravel()
                           for k in range(1, 5)])
        m = np.concatenate([0.3 * smooth, rng.standard_normal((3, d)), 10 * smooth[:1]])
        q, trust = self.client.evaluate(MODEL, m, version=VERSION, return_trust=True)
        np.testing.assert_allclose(trust["score"], reference_scores(summary, basis, m),
                                   rtol=1e-9)
        np.testing.assert_array_equal(trust["out_of_distribution"], trust["score"] > 1)
        self.assertTrue(trust["out_of_distribution"][4:].all())
        np.testing.assert_allclose(q, self.client.evaluate(MODEL, m, version=VERSION),
                                   rtol=1e-12, atol=1e-12)

        pb = self.client._stubs.pb
        tensor = dino_serve.to_tensor(m)
        response = self.client._call("Jvp", pb.JvpRequest(
            model=pb.ModelRef(name=MODEL, version=VERSION), m=tensor,
            directions=dino_serve.to_tensor(rng.standard_normal(m.shape)),
            return_trust=True), None)
        np.testing.assert_allclose(response.trust.score, trust["score"], rtol=1e-12)
        info = self.client._call("GetModelInfo", pb.GetModelInfoRequest(
            model=pb.ModelRef(name=MODEL, version=VERSION)), None)
        self.assertTrue(info.has_trust_score)


if __name__ == "__main__":
    unittest.main()
