#!/usr/bin/python3
"""End-to-end test of the `dino` CLI, dino-bench and the Python client (client/python)
against the fake surrogate server (tests/client/fake_surrogate.h): affine models whose
answers have closed forms, and scripted Training / ModelAdmin services
(tests/client/fake_training.h). Registered with ctest by tests/client/CMakeLists.txt.
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
    server_args = []  # Extra flags of the fake server.

    @classmethod
    def setUpClass(cls):
        cls.server = subprocess.Popen([ARGS.fake_server, "--port", "0"] + cls.server_args,
                                      stdout=subprocess.PIPE, text=True)
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
                        "health", "finetune", "jobs", "job", "cancel", "set-default", "unload"):
            self.assertIn(command, r.stdout)
            sub = subprocess.run([ARGS.dino, command, "--help"], capture_output=True, text=True)
            self.assertEqual(sub.returncode, 0, command)
            self.assertIn("--server", sub.stdout)
            self.assertIn("--token_file", sub.stdout)
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


    def test_sweep_check_csv_batches_and_open_loop(self):
        csv_path = self.path("bench.csv")
        out, table = self.bench("--methods", "evaluate,reduced_jacobian", "--concurrency", "1,4",
                                "-n", "30", "--warmup", "3", "--check", "--csv", csv_path)
        self.assertEqual(out["concurrency"], [1, 4])
        self.assertEqual([(r["method"], r["concurrency"]) for r in out["results"]],
                         [("Evaluate", 1), ("Evaluate", 4), ("ReducedJacobian", 1),
                          ("ReducedJacobian", 4)])
        for r in out["results"]:
            self.assertEqual((r["requests"], r["calls"], r["errors"]), (30, 30, 0), r)
            # Every successful response, warm-up included, matched its single-point reference.
            self.assertEqual(r["check"], {"checked": 33, "failures": 0, "first_failure": ""})
            self.assertEqual(r["samples_per_s"], r["requests_per_s"])
            self.assertGreater(r["requests_per_s"], 0)
            self.assertTrue(0 < r["client_cpu_s"] and 0 < r["client_cpu_share_of_one_core"] < 64)
        self.assertIn("checked 33 responses, 0 wrong", table)
        with open(csv_path) as f:
            rows = f.read().splitlines()
        self.assertEqual(len(rows), 5)
        header = rows[0].split(",")
        self.assertEqual(dict(zip(header, rows[2].split(",")))["concurrency"], "4")

        out, _ = self.bench("--methods", "evaluate", "--batch", "5", "-n", "10", "--warmup", "1",
                            "--check", "--check_rows", "5")
        r = out["results"][0]
        self.assertEqual((r["batch"], r["calls"], r["check"]["failures"]), (5, 10, 0))
        self.assertAlmostEqual(r["samples_per_s"], 5 * r["requests_per_s"])

        out, table = self.bench("--methods", "evaluate", "--rate", "200", "--arrivals",
                                "poisson", "-n", "40", "--warmup", "5")
        r = out["results"][0]
        self.assertEqual((out["mode"], r["mode"], r["rate"]), ("open", "open", 200))
        self.assertEqual((r["requests"], r["calls"], r["errors"]), (40, 40, 0))
        self.assertEqual(r["send_lag_us"]["count"], 40)
        self.assertGreater(r["wall_s"], 0.05)  # 40 arrivals at 200/s take about 0.2 s.
        self.assertIn("send lag behind schedule", table)

    def test_usage_errors_name_the_flag(self):
        for args, message in ((["--concurrency", "0"], "--concurrency"),
                              (["--concurrency", "1,x"], "--concurrency"),
                              (["--rate", "-5"], "--rate"),
                              (["--methods", "jacobian", "--batch", "2"], "--batch"),
                              (["--expected_codes", "FULL"], "--expected_codes")):
            r = subprocess.run([ARGS.bench, "--server", self.target] + args,
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 2, args)
            self.assertIn(message, r.stderr, args)
        # The fake predates the per-point Jvp form: the probe call's refusal is reported.
        out, _ = self.bench("--methods", "jvp", "--batch", "2", "-n", "5", expect=1)
        self.assertIn("warm-up call failed: INVALID_ARGUMENT: m: expected shape",
                      out["results"][0]["first_error"])


class RefusingServerBenchTest(FakeServerTestCase):
    server_args = ["--refuse_every_evaluate", "5"]

    def bench(self, *args, expect=0):
        r = subprocess.run([ARGS.bench, "--server", self.target, "--json", "-"] + list(args),
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, expect, r.stderr)
        return json.loads(r.stdout)["results"][0]

    def test_refusals_are_counted_apart_by_code(self):
        # One client, so the fake's Evaluate calls arrive in order: the probe call, 5 warm-up
        # calls (the 5th refused) and 50 measured ones, of which calls 10, 15, ..., 55 are
        # refused. The next run continues the count (57, ...) with the same pattern.
        args = ["--methods", "evaluate", "-n", "50", "--warmup", "5"]
        for expected_codes, exit_status in (([], 1), (["--expected_codes",
                                                       "RESOURCE_EXHAUSTED"], 0)):
            r = self.bench(*(args + expected_codes), expect=exit_status)
            self.assertEqual((r["requests"], r["calls"], r["errors"]), (50, 40, 10), r)
            self.assertEqual(r["errors_by_code"], {"RESOURCE_EXHAUSTED": 10})
            self.assertEqual(r["unexpected_errors"], 10 if exit_status else 0)
            self.assertEqual(r["warmup_failures"], 1)
            refused = r["error_latency_us"]["RESOURCE_EXHAUSTED"]
            self.assertEqual(refused["count"], 10)
            self.assertTrue(0 < refused["p50_us"] <= refused["p99_us"] <= refused["max_us"])
            self.assertIn("RESOURCE_EXHAUSTED: queue full", r["first_error"])

    def test_soak_tells_refused_calls_from_runs_that_never_started(self):
        # scripts/soak.py classifies dino-bench's JSON rows; a run whose calls were partly
        # refused also carries a first_error, and once counted as "never started".
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                        "scripts"))
        import soak
        started = soak.bench_window(self.bench("--methods", "evaluate", "-n", "50", "--warmup",
                                               "5", "--expected_codes", "RESOURCE_EXHAUSTED"))
        self.assertNotIn("not_started", started)
        self.assertEqual((started["ok"], started["refused"], started["unexpected"]), (40, 10, 0))
        # The fake refuses the per-point Jvp form in the probe call: the run never starts.
        never = soak.bench_window(self.bench("--methods", "jvp", "--batch", "2", "-n", "5",
                                             expect=1))
        self.assertEqual(never.get("not_started"), 1)
        self.assertEqual(never["ok"], 0)

    def test_refused_clients_back_off_when_asked(self):
        # Same pattern: 10 refusals among 50 measured calls, each followed by a success, so
        # each backoff is uniform in [0, 200 ms]: about 1 s in all, against milliseconds for
        # the whole run without backoff. Refusals still count as before.
        args = ["--methods", "evaluate", "-n", "50", "--warmup", "5", "--expected_codes",
                "RESOURCE_EXHAUSTED"]
        at_once = self.bench(*args)
        backing_off = self.bench(*(args + ["--refusal_backoff_ms", "200"]))
        for r in (at_once, backing_off):
            self.assertEqual((r["requests"], r["calls"], r["errors"]), (50, 40, 10), r)
        self.assertGreater(backing_off["wall_s"], 0.3)
        self.assertGreater(backing_off["wall_s"], at_once["wall_s"] + 0.25)
        # Backoff is a closed-loop notion: open-loop arrivals leave on schedule.
        r = subprocess.run([ARGS.bench, "--server", self.target, "--rate", "10",
                            "--refusal_backoff_ms", "5"], capture_output=True, text=True,
                           timeout=60)
        self.assertEqual(r.returncode, 2)
        self.assertIn("--refusal_backoff_ms", r.stderr)


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


TOKEN = "e2e-admin-token"


def write_dino_data(directory, n, seed, form="full", d_m=3, d_q=2, rank=2):
    """A data directory in the dino / hIPPYflow layout for the fake "linear" model."""
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    np.savez(os.path.join(directory, "mq_data.npz"), m_data=rng.standard_normal((n, d_m)),
             q_data=rng.standard_normal((n, d_q)))
    if form == "full":
        np.savez(os.path.join(directory, "J_data.npz"),
                 J_data=rng.standard_normal((n, d_q, d_m)))
    elif form == "svd":
        np.savez(os.path.join(directory, "Jsvd_data.npz"),
                 U_data=rng.standard_normal((n, d_q, rank)),
                 sigma_data=rng.standard_normal((n, rank)),
                 V_data=rng.standard_normal((n, d_m, rank)))


class TrainingCliTest(FakeServerTestCase):
    server_args = ["--admin_token", TOKEN]

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.token_file = os.path.join(cls.tmp, "admin.token")
        with open(cls.token_file, "w") as f:
            f.write(TOKEN + "\n")
        write_dino_data(os.path.join(cls.tmp, "train"), 40, 1, "full")
        write_dino_data(os.path.join(cls.tmp, "val"), 8, 2, "full")
        write_dino_data(os.path.join(cls.tmp, "svd"), 9, 3, "svd")
        write_dino_data(os.path.join(cls.tmp, "plain"), 5, 4, "none")

    def admin(self, *args, expect=0):
        return self.dino(*(args + ("--token_file", self.token_file)), expect=expect)

    def test_finetune_to_success(self):
        r = self.admin("finetune", "--model", "linear", "--data", self.path("train"),
                       "--validation_data", self.path("val"), "--chunk", "6", "--epochs", "4",
                       "--loss", "h1", "--json")
        status = json.loads(r.stdout)
        self.assertEqual(status["state"], "SUCCEEDED")
        self.assertEqual(status["new_version"], 3)
        self.assertEqual(status["samples_received"], 48)
        self.assertEqual(status["validation_samples"], 8)
        self.assertEqual(status["epoch"], 4)
        self.assertIsNotNone(status["validation"]["h1"])
        self.assertIn("upload 48/48 samples (100%)", r.stderr)
        self.assertIn("6 samples per message", r.stderr)
        self.assertIn("SUCCEEDED", r.stderr)

        job = json.loads(self.admin("job", "--id", status["job_id"], "--json").stdout)
        self.assertEqual(job["revision"], status["revision"])
        r = self.admin("job", "--id", status["job_id"], "--watch")
        self.assertIn("state:              SUCCEEDED", r.stdout)
        jobs = json.loads(self.admin("jobs", "--json").stdout)["jobs"]
        self.assertIn(status["job_id"], [j["job_id"] for j in jobs])
        self.assertIn("SUCCEEDED", self.admin("jobs").stdout)

    def test_finetune_outcomes_and_errors(self):
        r = self.admin("finetune", "--model", "linear", "--data", self.path("svd"),
                       "--loss", "reduced_h1", "--description", "reject", expect=1)
        self.assertIn("state:              REJECTED", r.stdout)
        self.assertIn("ended REJECTED: validation gate", r.stderr)
        r = self.admin("finetune", "--model", "linear", "--data", self.path("plain"),
                       "--loss", "l2", "--description", "fail", expect=1)
        self.assertIn("ended FAILED", r.stderr)
        # No token, wrong model, missing data, a Jacobian loss without Jacobians.
        r = self.dino("finetune", "--model", "linear", "--data", self.path("train"), expect=1)
        self.assertIn("StartFineTune failed: UNAUTHENTICATED", r.stderr)
        r = self.admin("finetune", "--model", "plain", "--data", self.path("train"), expect=1)
        self.assertIn("INVALID_ARGUMENT: m: expected shape", r.stderr)
        r = self.admin("finetune", "--model", "linear", "--data", self.path("nothing"), expect=2)
        self.assertIn("mq_data.npz", r.stderr)
        r = self.admin("finetune", "--model", "linear", "--data", self.path("plain"), expect=2)
        self.assertIn("needs Jacobian data", r.stderr)
        r = self.admin("finetune", "--model", "linear", "--data", self.path("train"),
                       "--loss", "h3", expect=2)
        r = self.admin("finetune", "--model", "linear", "--data", self.path("train"),
                       "--count", "100", expect=2)
        self.assertIn("holds 40 samples; 100 were asked for", r.stderr)

    def test_no_watch_then_cancel(self):
        r = self.admin("finetune", "--model", "linear", "--data", self.path("train"),
                       "--description", "hang", "--no_watch", "--count", "10", "--json")
        status = json.loads(r.stdout)
        self.assertEqual(status["state"], "QUEUED")
        self.assertEqual(status["samples_received"], 10)
        job = json.loads(self.admin("job", "--id", status["job_id"], "--json").stdout)
        self.assertEqual(job["state"], "TRAINING")
        r = self.admin("cancel", "--id", status["job_id"])
        self.assertIn("state:              CANCELLED", r.stdout)
        r = self.admin("job", "--id", status["job_id"], "--watch", expect=1)
        self.assertIn("ended CANCELLED", r.stderr)
        r = self.admin("cancel", "--id", "job-999", expect=1)
        self.assertIn("CancelJob failed: NOT_FOUND", r.stderr)

    def test_interrupt_cancels_the_upload(self):
        # Big enough that the upload is still running when Ctrl-C comes: 100,000 samples
        # finished uploading in 0.5 s on a fast machine, before the signal.
        write_dino_data(self.path("big"), 400000, 5, "none")
        cmd = [ARGS.dino, "finetune", "--server", self.target, "--token_file", self.token_file,
               "--model", "linear", "--data", self.path("big"), "--loss", "l2", "--chunk", "1"]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Wait until the upload is under way, then press Ctrl-C.
        line = p.stderr.readline()
        self.assertIn("uploading 400000 training samples", line)
        import signal
        import time
        time.sleep(0.1)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
        self.assertEqual(p.returncode, 1, err)
        self.assertIn("the upload was cancelled", err)
        # The server sees the stream end asynchronously, which on a loaded machine can take
        # a while: poll up to 30 s.
        deadline = time.time() + 30
        while True:
            jobs = json.loads(self.admin("jobs", "--json").stdout)["jobs"]
            if (jobs and jobs[-1]["state"] == "CANCELLED") or time.time() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual(jobs[-1]["state"], "CANCELLED")

    def test_admin_commands(self):
        r = self.admin("set-default", "--model", "linear", "--version", "1")
        self.assertIn("default version is now 1", r.stdout)
        r = self.admin("set-default", "--model", "linear", "--version", "0")
        self.assertIn("restored", r.stdout)
        r = self.admin("set-default", "--model", "linear", "--version", "5", expect=1)
        self.assertIn("SetDefaultVersion failed: NOT_FOUND", r.stderr)
        r = self.admin("unload", "--model", "linear", "--version", "2")
        self.assertIn("version 2 unloaded", r.stdout)
        self.admin("unload", "--model", "linear", "--version", "0", expect=2)
        r = self.dino("unload", "--model", "linear", "--version", "2", expect=1)
        self.assertIn("UNAUTHENTICATED", r.stderr)

    def test_token_file_errors(self):
        r = self.dino("models", "--token_file", self.path("missing.token"), expect=2)
        self.assertIn("cannot open token file", r.stderr)
        bad = self.path("bad.token")
        with open(bad, "w") as f:
            f.write("two words\n")
        r = self.dino("jobs", "--token_file", bad, expect=2)
        self.assertNotIn("words", r.stderr)
        # Inference calls carry the token too (the fake Surrogate does not require it).
        self.assertIn("linear", self.admin("models").stdout)


class PythonTrainingTest(FakeServerTestCase):
    server_args = ["--admin_token", TOKEN]

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        sys.path.insert(0, ARGS.python_client_dir)
        import dino_client
        cls.dc = dino_client
        cls.client = dino_client.DinoClient(cls.target, timeout=10, gen_dir=ARGS.python_gen_dir,
                                            token=TOKEN)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        super().tearDownClass()

    def test_finetune_watch_and_jobs(self):
        rng = np.random.default_rng(0)
        m, q = rng.standard_normal((23, 3)), rng.standard_normal((23, 2))
        jac = rng.standard_normal((23, 2, 3))
        batches = list(self.dc.iter_batches(m, q, J=jac, chunk=5))
        self.assertEqual([len(b["m"]) for b in batches], [5, 5, 5, 5, 3])
        progress = []
        job_id, status = self.client.start_finetune("linear", batches, loss="h1", epochs=2,
                                                    progress=progress.append)
        self.assertEqual(status["state"], "QUEUED")
        self.assertEqual(status["samples_received"], 23)
        self.assertEqual([p["samples"] for p in progress], [5, 10, 15, 20, 23])
        states = [s["state"] for s in self.client.watch_job(job_id)]
        self.assertEqual(states, ["QUEUED", "TRAINING", "TRAINING", "VALIDATING", "PUBLISHING",
                                  "SUCCEEDED"])
        final = self.client.get_job(job_id)
        self.assertEqual(final["new_version"], 3)
        self.assertIsNone(final["validation"]["reduced_h1"])
        self.assertIn(job_id, [j["job_id"] for j in self.client.list_jobs()])
        # Stopping the iteration early stops watching.
        for s in self.client.watch_job(job_id):
            break
        self.assertEqual(s["state"], "QUEUED")

    def test_data_layout_and_chunking(self):
        d = os.path.join(self.tmp, "py_svd")
        write_dino_data(d, 6, 7, "svd")
        data = self.dc.load_dino_data(d)
        self.assertEqual(sorted(data), ["U", "V", "m", "q", "sigma"])
        self.assertEqual(sorted(self.dc.load_dino_data(d, "none")), ["m", "q"])
        self.assertEqual(len(self.dc.load_dino_data(d, count=4)["sigma"]), 4)
        per_sample = (3 + 2 + 4 + 2 + 6) * 8
        batches = list(self.dc.iter_batches(max_bytes=3 * per_sample, **data))
        self.assertEqual([len(b["m"]) for b in batches], [3, 3])
        job_id, _ = self.client.start_finetune(
            "linear", batches, loss="reduced_h1", gate_metric="reduced_h1", max_regression=0.01)
        self.assertEqual(self.client.get_job(job_id)["state"], "SUCCEEDED")
        with self.assertRaises(ValueError):
            self.dc.finetune_config("linear", loss="h3")
        with self.assertRaises(ValueError):
            list(self.dc.iter_batches(np.ones((3, 3)), np.ones((2, 2))))

    def test_errors_cancel_and_admin(self):
        with self.assertRaises(self.dc.DinoError) as e:
            self.client.start_finetune("nope", [{"m": np.ones((1, 3)), "q": np.ones((1, 2))}],
                                       loss="l2")
        self.assertEqual(e.exception.code.name, "NOT_FOUND")

        def failing():
            yield {"m": np.ones((1, 3)), "q": np.ones((1, 2))}
            raise RuntimeError("data source broke")
        with self.assertRaisesRegex(RuntimeError, "data source broke"):
            self.client.start_finetune("linear", failing(), loss="l2")

        job_id, _ = self.client.start_finetune(
            "linear", [{"m": np.ones((2, 3)), "q": np.ones((2, 2)), "validation": True}],
            loss="l2", description="hang")
        self.assertEqual(self.client.cancel_job(job_id)["state"], "CANCELLED")

        self.client.set_default_version("linear", 1)
        self.client.unload_version("linear", 2)
        with self.assertRaises(self.dc.DinoError) as e:
            self.client.unload_version("linear", 7)
        self.assertEqual(e.exception.code.name, "NOT_FOUND")
        with self.dc.DinoClient(self.target, gen_dir=ARGS.python_gen_dir) as anonymous:
            with self.assertRaises(self.dc.DinoError) as e:
                anonymous.list_jobs()
            self.assertEqual(e.exception.code.name, "UNAUTHENTICATED")
        token_file = os.path.join(self.tmp, "py.token")
        with open(token_file, "w") as f:
            f.write(TOKEN + "\n\n")
        self.assertEqual(self.dc.read_token_file(token_file), TOKEN)
        with self.dc.DinoClient(self.target, gen_dir=ARGS.python_gen_dir,
                                token_file=token_file) as c:
            self.assertIsInstance(c.list_jobs(), list)
            self.assertEqual(c.health(), "SERVING")

    def test_finetune_example_script(self):
        env = dict(os.environ, DINO_PYTHON_GEN_DIR=ARGS.python_gen_dir)
        token_file = os.path.join(self.tmp, "example.token")
        with open(token_file, "w") as f:
            f.write(TOKEN)
        d = os.path.join(self.tmp, "example_data")
        write_dino_data(d, 12, 8, "full")
        script = os.path.join(ARGS.python_client_dir, "finetune_example.py")
        for extra in ([], ["--data", d, "--validation_data", d, "--chunk", "5"]):
            r = subprocess.run([sys.executable, script, "--server", self.target, "--model",
                                "linear", "--token_file", token_file, "--epochs", "2"] + extra,
                               capture_output=True, text=True, env=env, timeout=60)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn("ended SUCCEEDED", r.stdout)
            self.assertIn("TRAINING epoch 2/2", r.stderr)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for flag in ("--dino", "--bench", "--fake_server", "--python_gen_dir", "--python_client_dir"):
        parser.add_argument(flag, required=True)
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
