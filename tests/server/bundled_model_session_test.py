#!/usr/bin/python3
"""The README's session, against a real dino-server serving the bundled repository.

Starts dino-server on models/repository (what `make serve` serves), then drives the `dino`
CLI (models, info, bases, eval, jvp, vjp, jac, jacobian, health, an error), a short
`dino-bench` run and the Python client, and checks every number against the same model file
evaluated with torch.autograd in this process.

usage: bundled_model_session_test.py <bin folder> <repository> <generated Python folder>
"""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import torch

BIN, REPOSITORY, GENERATED = (os.path.abspath(a) for a in sys.argv[1:4])
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "client", "python"))
from dino_client import DinoClient, DinoError  # noqa: E402

MODEL = "poisson_dipnet"


class BundledModelSession(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="dino-session-")
        cls.server = subprocess.Popen(
            [os.path.join(BIN, "dino-server"), "--model_repository=" + REPOSITORY, "--port=0",
             "--metrics_port=-1", "--host=127.0.0.1"], stdout=subprocess.PIPE, text=True)
        for line in cls.server.stdout:
            match = re.search(r"listening on \S*:(\d+)", line)
            if match:
                cls.target = "127.0.0.1:" + match.group(1)
                break
        else:
            raise RuntimeError("dino-server did not start")
        # The version the server serves by default: the highest.
        version = max(int(v) for v in os.listdir(os.path.join(REPOSITORY, MODEL)) if v.isdigit())
        cls.model = torch.jit.load(os.path.join(REPOSITORY, MODEL, str(version), "model.pt"))
        cls.rng = np.random.default_rng(0)

    @classmethod
    def tearDownClass(cls):
        cls.server.send_signal(signal.SIGTERM)
        assert cls.server.wait(timeout=60) == 0
        cls.tmp.cleanup()

    def dino(self, *args, expect=0):
        result = subprocess.run([os.path.join(BIN, "dino"), *args, "--server", self.target],
                                capture_output=True, text=True, cwd=self.tmp.name)
        self.assertEqual(result.returncode, expect, result.stderr)
        return result

    def path(self, name):
        return os.path.join(self.tmp.name, name)

    def reference(self, m):
        x = torch.from_numpy(m)
        with torch.no_grad():
            q = self.model(x[None])[0].numpy()
        jac = torch.autograd.functional.jacobian(lambda y: self.model(y[None])[0], x).numpy()
        return q, jac

    def test_cli_session(self):
        self.assertIn(MODEL, self.dino("models").stdout)
        info = self.dino("info", "--model", MODEL, "--json").stdout
        self.assertIn("4225", info)
        self.assertEqual(self.dino("health").stdout.strip(), "SERVING")

        m = self.rng.standard_normal((4, 4225))
        np.save(self.path("m.npy"), m)
        self.dino("eval", "--model", MODEL, "--m", "m.npy", "--out", "q.npy")
        with torch.no_grad():
            q_ref = self.model(torch.from_numpy(m)).numpy()
        np.testing.assert_allclose(np.load(self.path("q.npy")), q_ref, rtol=0, atol=1e-12)

        point = m[0]
        q0, jac = self.reference(point)
        np.save(self.path("p.npy"), point)
        v = self.rng.standard_normal((2, 4225))
        w = self.rng.standard_normal((3, 50))
        np.save(self.path("v.npy"), v)
        np.save(self.path("w.npy"), w)
        self.dino("jvp", "--model", MODEL, "--m", "p.npy", "--v", "v.npy", "--out", "jvp.npy")
        np.testing.assert_allclose(np.load(self.path("jvp.npy")), v @ jac.T, rtol=0, atol=1e-12)
        self.dino("vjp", "--model", MODEL, "--m", "p.npy", "--w", "w.npy", "--out", "vjp.npy")
        np.testing.assert_allclose(np.load(self.path("vjp.npy")), w @ jac, rtol=0, atol=1e-12)
        self.dino("jacobian", "--model", MODEL, "--m", "p.npy", "--out", "J.npy")
        np.testing.assert_allclose(np.load(self.path("J.npy")), jac, rtol=0, atol=1e-12)

        self.dino("bases", "--model", MODEL, "--out", "bases.npz")
        self.dino("jac", "--model", MODEL, "--m", "p.npy", "--out", "reduced.npz")
        with np.load(self.path("bases.npz")) as bases, np.load(self.path("reduced.npz")) as red:
            u, v_basis = bases["output_basis"], bases["input_basis"]
            np.testing.assert_allclose(red["reduced_jacobian"][0], u.T @ jac @ v_basis, rtol=0,
                                       atol=1e-12)
            np.testing.assert_allclose(red["q"][0], q0, rtol=0, atol=1e-12)

        error = self.dino("eval", "--model", MODEL, "--m", "[1, 2, 3]", expect=1)
        self.assertIn("INVALID_ARGUMENT", error.stderr)
        self.assertIn("m must have shape", error.stderr)
        error = self.dino("eval", "--model", "nope", "--m", "[1, 2, 3]", expect=1)
        self.assertIn("NOT_FOUND", error.stderr)

    def test_bench_runs(self):
        result = subprocess.run([os.path.join(BIN, "dino-bench"), "--server", self.target,
                                 "--model", MODEL, "-n", "20", "--warmup", "5", "--json", "-"],
                                capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("ReducedJacobian", result.stdout)

    def test_python_client(self):
        with DinoClient(self.target, gen_dir=GENERATED) as client:
            self.assertEqual(client.health(), "SERVING")
            m = self.rng.standard_normal(4225)
            q, jac = self.reference(m)
            np.testing.assert_allclose(client.evaluate(MODEL, m[None])[0], q, rtol=0, atol=1e-12)
            w = self.rng.standard_normal((1, 50))
            np.testing.assert_allclose(client.vjp(MODEL, m, w), w @ jac, rtol=0, atol=1e-12)
            with self.assertRaises(DinoError):
                client.evaluate("nope", m[None])


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]], verbosity=2)
