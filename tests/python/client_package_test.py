#!/usr/bin/python3
"""Unit tests of the dino_serve client package against a gRPC server running in this
process (Python grpcio): retries with backoff on UNAVAILABLE for idempotent calls only,
deadlines (covering retries), bearer-token metadata, TLS and mutual-TLS channels (with
certificates made by openssl), error mapping, and the NumPy shapes of ServedModel.

usage: client_package_test.py <folder of generated Python code> [unittest arguments]
"""
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from concurrent import futures

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
GENERATED = os.path.abspath(sys.argv.pop(1)) if len(sys.argv) > 1 else None
sys.path.insert(0, os.path.join(HERE, "..", "..", "client", "python"))

import grpc  # noqa: E402
import dino_serve  # noqa: E402
from dino_serve import bayes  # noqa: E402

stubs = dino_serve.load_stubs(GENERATED)
pb, pb_grpc, tpb, tpb_grpc = stubs.pb, stubs.pb_grpc, stubs.tpb, stubs.tpb_grpc
D_M, D_Q = 3, 2
J = np.array([[1.0, 2.0, 3.0], [0.0, -1.0, 0.5]])  # The fake model: q = J m + 1.


def wire(a):
    a = np.ascontiguousarray(a, dtype="<f8")
    return pb.Tensor(shape=list(a.shape), dtype=pb.FP64, data=a.tobytes())


def unwire(t):
    return np.frombuffer(t.data, dtype="<f8").reshape(tuple(t.shape))


class Script:
    """What the fake server does: fail the next `failures` calls of a method with `code`,
    sleep `delay` seconds, and record each call's method and metadata."""

    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        self.failures, self.code, self.message, self.delay = 0, None, "", 0.0
        self.calls = []

    def enter(self, method, context):
        with self.lock:
            self.calls.append((method, dict(context.invocation_metadata()), time.monotonic()))
            fail = self.failures > 0
            if fail:
                self.failures -= 1
        if self.delay:
            time.sleep(self.delay)
        if fail:
            context.abort(self.code, self.message)

    def count(self, method):
        return sum(1 for m, _, _ in self.calls if m == method)


SCRIPT = Script()


class Surrogate(pb_grpc.SurrogateServicer):
    def GetModelInfo(self, request, context):
        SCRIPT.enter("GetModelInfo", context)
        return pb.GetModelInfoResponse(name=request.model.name, version=1, versions=[1],
                                       input_dim=D_M, output_dim=D_Q, dtype=pb.FP64,
                                       architecture="linear")

    def Evaluate(self, request, context):
        SCRIPT.enter("Evaluate", context)
        m = unwire(request.m).reshape(-1, D_M)
        return pb.EvaluateResponse(version=1, q=wire(m @ J.T + 1.0))

    def Jvp(self, request, context):
        SCRIPT.enter("Jvp", context)
        m = unwire(request.m).reshape(-1, D_M)
        v = unwire(request.directions)
        r = pb.JvpResponse(version=1, jvp=wire(v @ J.T))
        if request.return_q:
            r.q.CopyFrom(wire(m @ J.T + 1.0))
        return r

    def Vjp(self, request, context):
        SCRIPT.enter("Vjp", context)
        m = unwire(request.m).reshape(-1, D_M)
        w = unwire(request.cotangents)
        r = pb.VjpResponse(version=1, vjp=wire(w @ J))
        if request.return_q:
            r.q.CopyFrom(wire(m @ J.T + 1.0))
        return r


class Training(tpb_grpc.TrainingServicer):
    def StartFineTune(self, request_iterator, context):
        SCRIPT.enter("StartFineTune", context)
        for _ in request_iterator:
            pass
        return tpb.StartFineTuneResponse(job_id="job-1")


class Admin(tpb_grpc.ModelAdminServicer):
    def SetDefaultVersion(self, request, context):
        SCRIPT.enter("SetDefaultVersion", context)
        return tpb.SetDefaultVersionResponse()


def start_server(credentials=None):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_SurrogateServicer_to_server(Surrogate(), server)
    tpb_grpc.add_TrainingServicer_to_server(Training(), server)
    tpb_grpc.add_ModelAdminServicer_to_server(Admin(), server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server, port


FAST = dino_serve.RetryPolicy(max_attempts=5, initial_backoff=0.05, multiplier=2.0,
                              jitter=0.0)


class ClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server, port = start_server()
        cls.target = "127.0.0.1:%d" % port

    @classmethod
    def tearDownClass(cls):
        cls.server.stop(None)

    def setUp(self):
        SCRIPT.reset()

    def client(self, **kwargs):
        kwargs.setdefault("retry", FAST)
        kwargs.setdefault("timeout", 10)
        return dino_serve.DinoClient(self.target, **kwargs)

    def test_retries_unavailable_with_backoff(self):
        SCRIPT.failures, SCRIPT.code = 2, grpc.StatusCode.UNAVAILABLE
        with self.client() as c:
            q = c.evaluate("linear", np.ones((2, D_M)))
        np.testing.assert_allclose(q, np.ones((2, D_M)) @ J.T + 1.0)
        times = [t for m, _, t in SCRIPT.calls if m == "Evaluate"]
        self.assertEqual(len(times), 3)
        # Backoffs of 0.05 s, then 0.1 s (no jitter).
        self.assertGreaterEqual(times[1] - times[0], 0.045)
        self.assertGreaterEqual(times[2] - times[1], 0.095)

    def test_gives_up_after_max_attempts(self):
        SCRIPT.failures, SCRIPT.code, SCRIPT.message = 10, grpc.StatusCode.UNAVAILABLE, "down"
        with self.client(retry=dino_serve.RetryPolicy(max_attempts=3, initial_backoff=0.01,
                                                      jitter=0.0)) as c:
            with self.assertRaises(dino_serve.UnavailableError) as caught:
                c.model_info("linear")
        self.assertEqual(caught.exception.attempts, 3)
        self.assertEqual(SCRIPT.count("GetModelInfo"), 3)
        self.assertIn("GetModelInfo failed: UNAVAILABLE: down", str(caught.exception))

    def test_no_retry_policy_and_other_codes(self):
        SCRIPT.failures, SCRIPT.code = 1, grpc.StatusCode.UNAVAILABLE
        with self.client(retry=dino_serve.NO_RETRY) as c:
            with self.assertRaises(dino_serve.UnavailableError):
                c.evaluate("linear", np.ones(D_M))
        self.assertEqual(SCRIPT.count("Evaluate"), 1)
        SCRIPT.reset()
        SCRIPT.failures, SCRIPT.code = 1, grpc.StatusCode.RESOURCE_EXHAUSTED
        with self.client() as c:
            with self.assertRaises(dino_serve.ResourceExhaustedError):
                c.evaluate("linear", np.ones(D_M))
        self.assertEqual(SCRIPT.count("Evaluate"), 1)

    def test_writes_and_uploads_are_never_retried(self):
        with self.client() as c:
            SCRIPT.failures, SCRIPT.code = 1, grpc.StatusCode.UNAVAILABLE
            with self.assertRaises(dino_serve.UnavailableError):
                c.set_default_version("linear", 2)
            self.assertEqual(SCRIPT.count("SetDefaultVersion"), 1)
            SCRIPT.failures = 1
            batches = [{"m": np.ones((2, D_M)), "q": np.ones((2, D_Q))}]
            with self.assertRaises(dino_serve.UnavailableError):
                c.start_finetune("linear", batches, loss="l2")
            self.assertEqual(SCRIPT.count("StartFineTune"), 1)
            self.assertEqual(c.start_finetune("linear", batches, loss="l2")[0], "job-1")

    def test_deadline(self):
        SCRIPT.delay = 1.0
        with self.client(timeout=0.2) as c:
            start = time.monotonic()
            with self.assertRaises(dino_serve.DeadlineExceededError) as caught:
                c.evaluate("linear", np.ones(D_M))
            self.assertLess(time.monotonic() - start, 0.9)
            self.assertIn("Evaluate failed: DEADLINE_EXCEEDED", str(caught.exception))
            # A per-call timeout overrides the client's.
            q = c.evaluate("linear", np.ones(D_M), timeout=5)
            self.assertEqual(q.shape, (1, D_Q))

    def test_deadline_covers_retries(self):
        SCRIPT.failures, SCRIPT.code = 100, grpc.StatusCode.UNAVAILABLE
        policy = dino_serve.RetryPolicy(max_attempts=100, initial_backoff=0.1, jitter=0.0)
        with self.client(retry=policy, timeout=0.5) as c:
            start = time.monotonic()
            with self.assertRaises(dino_serve.UnavailableError) as caught:
                c.evaluate("linear", np.ones(D_M))
            elapsed = time.monotonic() - start
        self.assertLess(elapsed, 0.55)
        # Sleeps of 0.1 and 0.2 s fit in 0.5 s, the next (0.4 s) would not.
        self.assertEqual(caught.exception.attempts, 3)

    def test_token_metadata(self):
        with self.client(token="s3cret-token") as c:
            c.evaluate("linear", np.ones(D_M))
            c.set_default_version("linear", 1)
        for method, metadata, _ in SCRIPT.calls:
            self.assertEqual(metadata.get("authorization"), "Bearer s3cret-token", method)
        with tempfile.NamedTemporaryFile("w", suffix=".token", delete=False) as f:
            f.write("  file-token\n")
        try:
            SCRIPT.reset()
            with self.client(token_file=f.name) as c:
                c.model_info("linear")
            self.assertEqual(SCRIPT.calls[0][1]["authorization"], "Bearer file-token")
            with self.assertRaises(ValueError):
                self.client(token="a", token_file=f.name)
        finally:
            os.unlink(f.name)
        with self.assertRaisesRegex(ValueError, "whitespace") as caught:
            self.client(token="two words")
        self.assertNotIn("two words", str(caught.exception))
        SCRIPT.reset()
        with self.client() as c:
            c.model_info("linear")
        self.assertNotIn("authorization", SCRIPT.calls[0][1])

    def test_error_mapping(self):
        cases = [(grpc.StatusCode.INVALID_ARGUMENT, dino_serve.InvalidArgumentError, ValueError),
                 (grpc.StatusCode.NOT_FOUND, dino_serve.NotFoundError, LookupError),
                 (grpc.StatusCode.FAILED_PRECONDITION, dino_serve.FailedPreconditionError,
                  dino_serve.DinoError),
                 (grpc.StatusCode.UNAUTHENTICATED, dino_serve.UnauthenticatedError,
                  PermissionError),
                 (grpc.StatusCode.DATA_LOSS, dino_serve.DinoError, Exception)]
        with self.client() as c:
            for code, cls, base in cases:
                SCRIPT.failures, SCRIPT.code = 1, code
                SCRIPT.message = "m must have shape [B, 3]"
                with self.assertRaises(cls) as caught:
                    c.evaluate("linear", np.ones(D_M))
                e = caught.exception
                self.assertIsInstance(e, dino_serve.DinoError)
                self.assertIsInstance(e, base)
                self.assertEqual((e.method, e.code, e.details),
                                 ("Evaluate", code, "m must have shape [B, 3]"))
                self.assertEqual(str(e), "Evaluate failed: %s: m must have shape [B, 3]"
                                 % code.name)

    def test_compatibility_module(self):
        import dino_client
        self.assertIs(dino_client.DinoClient, dino_serve.DinoClient)
        self.assertIs(dino_client.DinoError, dino_serve.DinoError)
        for name in dino_client.__all__:
            self.assertTrue(hasattr(dino_client, name), name)

    def test_served_model_shapes(self):
        # The samplers' per-point batched forms through the client.
        with self.client() as c:
            model = bayes.ServedModel(c, "linear")
            m = np.arange(12.0).reshape(4, D_M)
            np.testing.assert_allclose(model.evaluate(m), m @ J.T + 1.0)
            v = np.ones((4, 2, D_M))
            np.testing.assert_allclose(model.jvp(m, v), v @ J.T)
            w, q = model.vjp(m, np.ones((4, D_Q)), return_q=True)
            np.testing.assert_allclose(w, np.ones((4, D_Q)) @ J)
            np.testing.assert_allclose(q, m @ J.T + 1.0)
            np.testing.assert_allclose(model.jacobian(m[:1])[0], J)
            self.assertIsNone(model.bases())
            self.assertEqual(model.counts["vjp_calls"], 2)


def make_certificates(folder):
    """A CA, a server certificate for localhost / 127.0.0.1 and a client certificate."""
    def run(*args):
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=dino test CA")
    with open(os.path.join(folder, "san.ext"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", name + ".key", "-out",
            name + ".csr", "-subj", "/CN=" + ("localhost" if name == "server" else "client"))
        run("x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", name + ".pem", "-days", "2", "-extfile", "san.ext")


@unittest.skipIf(shutil.which("openssl") is None, "openssl is not installed")
class TlsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="dino-tls-")
        make_certificates(cls.tmp.name)

        def read(name):
            with open(os.path.join(cls.tmp.name, name), "rb") as f:
                return f.read()
        cls.read = staticmethod(read)
        cls.path = staticmethod(lambda name: os.path.join(cls.tmp.name, name))
        cls.tls_server, port = start_server(grpc.ssl_server_credentials(
            [(read("server.key"), read("server.pem"))]))
        cls.tls_target = "127.0.0.1:%d" % port
        cls.mtls_server, port = start_server(grpc.ssl_server_credentials(
            [(read("server.key"), read("server.pem"))], root_certificates=read("ca.pem"),
            require_client_auth=True))
        cls.mtls_target = "127.0.0.1:%d" % port

    @classmethod
    def tearDownClass(cls):
        cls.tls_server.stop(None)
        cls.mtls_server.stop(None)
        cls.tmp.cleanup()

    def test_credentials_are_built(self):
        creds = dino_serve.channel_credentials(self.path("ca.pem"), self.path("client.pem"),
                                               self.read("client.key"))
        self.assertIsInstance(creds, grpc.ChannelCredentials)
        with self.assertRaisesRegex(ValueError, "both"):
            dino_serve.channel_credentials(self.path("ca.pem"), self.path("client.pem"))
        with dino_serve.DinoClient("localhost:1", root_certificates=self.read("ca.pem")) as c:
            self.assertTrue(c.tls)
            self.assertIsInstance(c.credentials, grpc.ChannelCredentials)
        with self.assertRaises(ValueError):
            dino_serve.DinoClient("localhost:1", server_name_override="x")

    def test_tls(self):
        with dino_serve.DinoClient(self.tls_target, root_certificates=self.path("ca.pem"),
                                   server_name_override="localhost", timeout=10) as c:
            self.assertEqual(c.model_info("linear")["input_dim"], D_M)
        # A client that does not trust the CA fails the handshake (UNAVAILABLE).
        with dino_serve.DinoClient(self.tls_target, tls=True, retry=dino_serve.NO_RETRY,
                                   timeout=5) as c:
            with self.assertRaises(dino_serve.UnavailableError):
                c.model_info("linear")

    def test_mutual_tls(self):
        pem = self.read("ca.pem").decode()
        with dino_serve.DinoClient(self.mtls_target, root_certificates=pem,
                                   certificate_chain=self.path("client.pem"),
                                   private_key=self.path("client.key"),
                                   server_name_override="localhost", token="t",
                                   timeout=10) as c:
            q = c.evaluate("linear", np.zeros(D_M))
            np.testing.assert_allclose(q, [[1.0, 1.0]])
        with dino_serve.DinoClient(self.mtls_target, root_certificates=pem,
                                   server_name_override="localhost",
                                   retry=dino_serve.NO_RETRY, timeout=5) as c:
            with self.assertRaises(dino_serve.DinoError):  # No client certificate.
                c.evaluate("linear", np.zeros(D_M))


if __name__ == "__main__":
    unittest.main(verbosity=2)
