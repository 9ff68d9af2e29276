#!/usr/bin/python3
"""End-to-end test of the `dino` CLI, dino-bench and the Python client (client/python)
against the fake surrogate server (tests/client/fake_surrogate.h): affine models whose
answers have closed forms. Registered with ctest by tests/client/CMakeLists.txt.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import numpy as np

ARGS = None


def linear_jacobian(version):
    """The fake "linear" model: J = v·A with A[i][j] = 1 + i + 0.5·j, [2, 3]; b[i] = 0.1·i."""
    return version * np.array([[1 + i + 0.5 * j for j in range(3)] for i in range(2)])


def linear_q(version, m):
    return np.atleast_2d(m) @ linear_jacobian(version).T + np.array([0.0, 0.1])


class FakeServerTestCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = subprocess.Popen([ARGS.fake_server, "--port", "0"], stdout=subprocess.PIPE,
                                      text=True)
        line = cls.server.stdout.readline()
        if not line.startswith("PORT "):
            cls.server.kill()
            raise RuntimeError("fake server did not start: %r" % line)
        cls.target = "127.0.0.1:" + line.split()[1]
        cls.tmp = tempfile.mkdtemp(prefix="dino_cli_e2e_")

    @classmethod
    def tearDownClass(cls):
        cls.server.terminate()
        cls.server.wait(timeout=10)
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def path(self, name):
        return os.path.join(self.tmp, name)

    def dino(self, *args, expect=0, server=None):
        cmd = [ARGS.dino, args[0], "--server", server or self.target, "--timeout", "10"]
        cmd += list(args[1:])
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, expect,
                         "%s\nstdout: %s\nstderr: %s" % (" ".join(cmd), r.stdout, r.stderr))
        return r

    def dino_json(self, *args):
        return json.loads(self.dino(*args).stdout)


class CliTest(FakeServerTestCase):
    def test_help(self):
        r = subprocess.run([ARGS.dino, "--help"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0)
        for command in ("models", "info", "bases", "eval", "jvp", "vjp", "jac", "jacobian",
                        "health"):
            self.assertIn(command, r.stdout)
            sub = subprocess.run([ARGS.dino, command, "--help"], capture_output=True, text=True)
            self.assertEqual(sub.returncode, 0, command)
            self.assertIn("--server", sub.stdout)
        r = subprocess.run([ARGS.dino], capture_output=True, text=True)
        self.assertEqual(r.returncode, 2)

    def test_models_and_info(self):
        out = self.dino_json("models", "--json")
        self.assertEqual([m["name"] for m in out["models"]],
                         ["linear", "malformed", "plain", "slow"])
        self.assertEqual(out["models"][0]["versions"], [1, 2])
        self.assertEqual(out["models"][0]["default_version"], 2)
        self.assertIn("linear", self.dino("models").stdout)

        info = self.dino_json("info", "--model", "linear", "--json")
        self.assertEqual(info["input_dim"], 3)
        self.assertEqual(info["output_dim"], 2)
        self.assertEqual(info["dtype"], "fp64")
        self.assertEqual(info["metadata"], {"note": "fake linear"})
        self.assertEqual(self.dino_json("info", "--model", "linear", "--version", "1",
                                        "--json")["version"], 1)
        self.assertIn("d_M", self.dino("info", "--model", "plain").stdout)

    def test_eval_inline_and_files(self):
        out = self.dino_json("eval", "--model", "linear", "--m", "[1, 2, 3]")
        self.assertEqual(out["model"], "linear")
        self.assertEqual(out["version"], 2)
        self.assertEqual(out["q"]["shape"], [1, 2])
        self.assertEqual(out["q"]["dtype"], "fp64")
        np.testing.assert_allclose(out["q"]["data"], linear_q(2, [1, 2, 3]))

        m = np.arange(12.0).reshape(4, 3)
        np.savez(self.path("mq_data.npz"), m_data=m, q_data=np.zeros((4, 2)))
        out = self.dino_json("eval", "--model", "linear", "--version", "1", "--dtype", "fp32",
                             "--m", self.path("mq_data.npz") + ":m_data",
                             "--out", self.path("q.npy"))
        self.assertEqual(out["q"]["file"], self.path("q.npy"))
        self.assertNotIn("data", out["q"])
        q = np.load(self.path("q.npy"))
        self.assertEqual(q.dtype, np.float32)
        np.testing.assert_allclose(q, linear_q(1, m), rtol=1e-6)

        np.save(self.path("m.npy"), m.astype(np.float32))
        out = self.dino_json("eval", "--model", "linear", "--m", self.path("m.npy"),
                             "--max_print", "3")
        self.assertIn("summary", out["q"])
        self.assertAlmostEqual(out["q"]["summary"]["max"], linear_q(2, m).max(), places=4)

    def test_jvp_vjp(self):
        j = linear_jacobian(2)
        out = self.dino_json("jvp", "--model", "linear", "--m", "[1, 2, 3]",
                             "--v", "[[1, 0, 0], [0, 1, 1]]", "--return_q")
        np.testing.assert_allclose(out["jvp"]["data"], (j @ np.array([[1, 0, 0], [0, 1, 1]]).T).T)
        np.testing.assert_allclose(out["q"]["data"], linear_q(2, [1, 2, 3])[0])

        self.dino("vjp", "--model", "linear", "--m", "[1, 2, 3]", "--w", "[1, -1]",
                  "--return_q", "--out", self.path("vjp.npz"))
        with np.load(self.path("vjp.npz")) as f:
            np.testing.assert_allclose(f["vjp"], [j.T @ [1, -1]])
            np.testing.assert_allclose(f["q"], linear_q(2, [1, 2, 3])[0])

    def test_reduced_jacobian_and_jacobian(self):
        j = linear_jacobian(2)
        out = self.dino_json("jac", "--model", "linear", "--m", "[[1, 2, 3], [4, 5, 6]]")
        self.assertEqual(out["reduced_jacobian"]["shape"], [2, 1, 2])
        np.testing.assert_allclose(out["reduced_jacobian"]["data"], [j[:1, :2]] * 2)

        u = np.array([[0.0], [1.0]])
        v = np.array([[0.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
        np.save(self.path("U.npy"), u)
        np.save(self.path("V.npy"), v)
        out = self.dino_json("jac", "--model", "linear", "--m", "[1, 2, 3]",
                             "--output_basis", self.path("U.npy"),
                             "--input_basis", self.path("V.npy"))
        np.testing.assert_allclose(out["reduced_jacobian"]["data"], [u.T @ j @ v])

        self.dino("jacobian", "--model", "linear", "--m", "[1, 2, 3]", "--out",
                  self.path("J.npy"))
        np.testing.assert_allclose(np.load(self.path("J.npy")), j)

        self.dino("bases", "--model", "linear", "--out", self.path("bases.npz"))
        with np.load(self.path("bases.npz")) as f:
            self.assertEqual(f["input_basis"].shape, (3, 2))
            self.assertEqual(f["output_basis"].shape, (2, 1))
            self.assertEqual(f["output_shift"].shape, (2,))

    def test_errors(self):
        r = self.dino("eval", "--model", "nope", "--m", "[1, 2, 3]", expect=1)
        self.assertIn("Evaluate failed: NOT_FOUND: unknown model 'nope'", r.stderr)
        r = self.dino("eval", "--model", "linear", "--m", "[1, 2]", expect=1)
        self.assertIn("INVALID_ARGUMENT: m: expected shape [3]", r.stderr)
        r = self.dino("jac", "--model", "plain", "--m", "[1, 2, 3, 4]", expect=1)
        self.assertIn("FAILED_PRECONDITION", r.stderr)
        r = self.dino("eval", "--model", "slow", "--m", "[1, 2, 3, 4]", "--timeout", "0.2",
                      expect=1)
        self.assertIn("DEADLINE_EXCEEDED", r.stderr)
        r = self.dino("eval", "--model", "malformed", "--m", "[1, 2, 3]", expect=1)
        self.assertIn("INTERNAL: malformed Evaluate response", r.stderr)
        r = self.dino("eval", "--model", "linear", "--m", "[1, 2", expect=2)
        self.assertIn("--m: invalid JSON array", r.stderr)
        r = self.dino("eval", "--model", "linear", "--m", self.path("none.npy"), expect=2)
        self.assertIn("cannot open", r.stderr)
        r = self.dino("eval", "--model", "linear", "--m", "[1, 2, 3]", "--dtype", "fp16",
                      expect=2)
        r = self.dino("jac", "--model", "linear", "--m", "[1, 2, 3]", "--output_basis",
                      self.path("U.npy"), expect=2)
        self.assertIn("requires --input_basis", r.stderr)
        r = self.dino("eval", "--model", "linear", "--m", "[1, 2, 3]", "--out",
                      self.path("q.csv"), expect=2)
        self.assertIn("must end in .npy", r.stderr)
        r = self.dino("models", expect=1, server="127.0.0.1:1")
        self.assertIn("ListModels failed: UNAVAILABLE", r.stderr)

    def test_health(self):
        r = self.dino("health")
        self.assertEqual(r.stdout.strip(), "SERVING")
        self.assertEqual(json.loads(self.dino("health", "--json").stdout),
                         {"status": "SERVING"})
        r = self.dino("health", "--service", "no.such.Service", expect=1)
        self.assertIn("NOT_FOUND", r.stderr)
        self.dino("health", expect=1, server="127.0.0.1:1")


class BenchTest(FakeServerTestCase):
    def bench(self, *args, expect=0):
        cmd = [ARGS.bench, "--server", self.target, "--json", "-"] + list(args)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, expect,
                         "%s\nstdout: %s\nstderr: %s" % (" ".join(cmd), r.stdout, r.stderr))
        return json.loads(r.stdout), r.stderr

    def test_default_model_all_methods(self):
        out, table = self.bench("-n", "50", "--warmup", "5", "--concurrency", "3")
        self.assertEqual(out["model"], "linear")
        self.assertEqual([r["method"] for r in out["results"]],
                         ["Evaluate", "Jvp", "Vjp", "ReducedJacobian"])
        for r in out["results"]:
            self.assertEqual(r["calls"], 50)
            self.assertEqual(r["errors"], 0)
            self.assertTrue(0 < r["p50_us"] <= r["p90_us"] <= r["p99_us"] <= r["max_us"])
        self.assertIn("p99_us", table)

    def test_model_without_bases_and_failures(self):
        out, table = self.bench("--model", "plain", "-n", "10", "--warmup", "1")
        self.assertEqual(out["results"][3]["skipped"], "the model has no reduced bases")
        self.assertIn("skipped", table)
        out, table = self.bench("--model", "malformed", "-n", "5", "--methods", "evaluate",
                                expect=1)
        self.assertIn("INTERNAL", out["results"][0]["first_error"])
        r = subprocess.run([ARGS.bench, "--methods", "bogus"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 2)
        self.assertIn("unknown method 'bogus'", r.stderr)


class PythonClientTest(FakeServerTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        sys.path.insert(0, ARGS.python_client_dir)
        import dino_client
        cls.dc = dino_client
        cls.client = dino_client.DinoClient(cls.target, timeout=10, gen_dir=ARGS.python_gen_dir)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        super().tearDownClass()

    def test_tensor_codec(self):
        for a in (np.arange(6.0).reshape(2, 3), np.arange(4, dtype=np.float32), np.float64(2)):
            t = self.dc.to_tensor(a)
            self.assertEqual(len(t.data), a.size * np.asarray(a).itemsize)
            b = self.dc.from_tensor(t)
            self.assertEqual(b.dtype, np.asarray(a).dtype)
            np.testing.assert_array_equal(b, a)
            b[...] = 0  # Writable.
        self.assertEqual(self.dc.to_tensor([1, 2]).dtype, self.dc.load_stubs().pb.FP64)
        t = self.dc.to_tensor(np.ones(3), dtype="fp32")
        t.data = t.data[:-1]
        with self.assertRaisesRegex(ValueError, "holds 11 bytes"):
            self.dc.from_tensor(t)

    def test_calls(self):
        c = self.client
        j = linear_jacobian(2)
        self.assertEqual(c.health(), "SERVING")
        self.assertEqual(c.list_models()[0]["name"], "linear")
        self.assertEqual(c.model_info("linear")["metadata"], {"note": "fake linear"})
        np.testing.assert_allclose(c.evaluate("linear", [1, 2, 3]), linear_q(2, [1, 2, 3]))
        q1 = c.evaluate("linear", np.ones((2, 3), np.float32), version=1)
        self.assertEqual(q1.dtype, np.float64)  # The model's dtype.
        self.assertEqual(c.evaluate("linear", [1, 2, 3], dtype="fp32").dtype, np.float32)
        jv, q = c.jvp("linear", [1, 2, 3], np.eye(3), return_q=True)
        np.testing.assert_allclose(jv, j.T)
        np.testing.assert_allclose(c.vjp("linear", [1, 2, 3], np.eye(2)), j)
        jr, q = c.reduced_jacobian("linear", [[1, 2, 3]])
        np.testing.assert_allclose(jr, [j[:1, :2]])
        jr, _ = c.reduced_jacobian("linear", [1, 2, 3], np.eye(2), np.eye(3))
        np.testing.assert_allclose(jr, [j])
        np.testing.assert_allclose(c.jacobian("linear", [1, 2, 3]), j)
        self.assertEqual(c.bases("linear")["input_basis"].shape, (3, 2))
        with self.assertRaises(self.dc.DinoError) as e:
            c.evaluate("nope", [1.0])
        self.assertEqual(e.exception.code.name, "NOT_FOUND")
        self.assertIn("unknown model 'nope'", str(e.exception))

    def test_example_script(self):
        env = dict(os.environ, DINO_PYTHON_GEN_DIR=ARGS.python_gen_dir)
        for model in ("linear", "plain"):
            r = subprocess.run([sys.executable, os.path.join(ARGS.python_client_dir, "example.py"),
                                "--server", self.target, "--model", model],
                               capture_output=True, text=True, env=env, timeout=60)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn("checks: passed", r.stdout)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for flag in ("--dino", "--bench", "--fake_server", "--python_gen_dir", "--python_client_dir"):
        parser.add_argument(flag, required=True)
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
