#!/usr/bin/python3
"""The dino_serve package's TLS options and the `dino` CLI's --tls_* flags against a real
dino-server run with --tls_cert, --tls_key, --tls_client_ca and --admin_token_file
(--require_token_for_inference) and a plaintext --health_port, serving the bundled model. Certificates are made by openssl
in a temporary folder: a CA with a server (localhost, 127.0.0.1) and a client certificate,
and an unrelated CA with its own client certificate.

usage: tls_server_test.py <bin folder> <repository> <generated Python folder>
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

BIN, REPOSITORY, GENERATED = (os.path.abspath(a) for a in sys.argv[1:4])
del sys.argv[1:4]
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "client", "python"))
import dino_serve  # noqa: E402

MODEL = "poisson_dipnet"
TOKEN = "python-tls-token-0123456789"


def make_certificates(folder):
    def run(*args):
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    def ca(name):
        run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", name + ".key", "-out", name + ".pem", "-days", "2", "-subj",
            "/CN=dino test " + name)

    def certificate(ca_name, name, extensions):
        with open(os.path.join(folder, name + ".ext"), "w") as f:
            f.write(extensions)
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=" + name)
        run("x509", "-req", "-in", name + ".csr", "-CA", ca_name + ".pem", "-CAkey",
            ca_name + ".key", "-CAcreateserial", "-out", name + ".pem", "-days", "2",
            "-extfile", name + ".ext")

    ca("ca")
    certificate("ca", "server", "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    certificate("ca", "client", "extendedKeyUsage=clientAuth\n")
    ca("other_ca")
    certificate("other_ca", "other_client", "extendedKeyUsage=clientAuth\n")


class TlsServerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="dino-py-tls-")
        make_certificates(cls.tmp.name)
        cls.path = staticmethod(lambda name: os.path.join(cls.tmp.name, name))
        with open(cls.path("admin.token"), "w") as f:
            f.write(TOKEN + "\n")
        cls.server = subprocess.Popen(
            [os.path.join(BIN, "dino-server"), "--model_repository=" + REPOSITORY, "--port=0",
             "--metrics_port=-1", "--host=127.0.0.1", "--repository_poll_seconds=0",
             "--tls_cert=" + cls.path("server.pem"), "--tls_key=" + cls.path("server.key"),
             "--tls_client_ca=" + cls.path("ca.pem"),
             "--admin_token_file=" + cls.path("admin.token"), "--require_token_for_inference",
             "--health_port=0"],
            stdout=subprocess.PIPE, text=True)
        for line in cls.server.stdout:
            health = re.search(r"health on \S*:(\d+)", line)
            if health:
                cls.health_target = "127.0.0.1:" + health.group(1)
            match = re.search(r"listening on \S*:(\d+)", line)
            if match:
                cls.port = int(match.group(1))
                break
        else:
            raise RuntimeError("dino-server did not start")
        cls.target = "127.0.0.1:%d" % cls.port

    @classmethod
    def tearDownClass(cls):
        cls.server.send_signal(signal.SIGTERM)
        assert cls.server.wait(timeout=60) == 0
        cls.tmp.cleanup()

    def client(self, client_name="client", ca="ca.pem", **kwargs):
        options = dict(root_certificates=self.path(ca), timeout=20,
                       retry=dino_serve.NO_RETRY, gen_dir=GENERATED)
        if client_name:
            options.update(certificate_chain=self.path(client_name + ".pem"),
                           private_key=self.path(client_name + ".key"))
        options.update(kwargs)
        return dino_serve.DinoClient(self.target, **options)

    def test_evaluate_over_mutual_tls_with_the_token(self):
        with self.client(token=TOKEN) as c:
            d_m = c.model_info(MODEL)["input_dim"]
            q = c.evaluate(MODEL, np.zeros(d_m))
            self.assertEqual(q.shape[0], 1)
            self.assertTrue(np.all(np.isfinite(q)))
        # The certificate's DNS name, checked instead of the IP.
        with self.client(token=TOKEN, server_name_override="localhost") as c:
            self.assertEqual(c.model_info(MODEL)["input_dim"], d_m)
        # The key as PEM text and the CA as bytes work like paths.
        with open(self.path("client.key")) as f:
            key = f.read()
        with open(self.path("ca.pem"), "rb") as f:
            ca = f.read()
        with self.client(token=TOKEN, private_key=key, root_certificates=ca) as c:
            self.assertEqual(c.model_info(MODEL)["input_dim"], d_m)

    def test_token_still_applies(self):
        with self.client() as c:
            with self.assertRaises(dino_serve.UnauthenticatedError):
                c.model_info(MODEL)

    def test_refusals(self):
        with self.client(client_name=None, token=TOKEN) as c:  # No client certificate.
            with self.assertRaises(dino_serve.UnavailableError):
                c.model_info(MODEL)
        with self.client(client_name="other_client", token=TOKEN) as c:
            with self.assertRaises(dino_serve.UnavailableError):
                c.model_info(MODEL)
        with self.client(ca="other_ca.pem", token=TOKEN) as c:  # Server not trusted.
            with self.assertRaises(dino_serve.UnavailableError):
                c.model_info(MODEL)
        with dino_serve.DinoClient(self.target, token=TOKEN, timeout=10,
                                   retry=dino_serve.NO_RETRY, gen_dir=GENERATED) as c:
            with self.assertRaises(dino_serve.UnavailableError):  # Plaintext.
                c.model_info(MODEL)

    def test_plaintext_health_port_serves_health_only(self):
        # What Kubernetes' native gRPC probes need: no TLS, no client certificate, no token.
        with dino_serve.DinoClient(self.health_target, timeout=10, retry=dino_serve.NO_RETRY,
                                   gen_dir=GENERATED) as c:
            self.assertEqual(c.health(), "SERVING")
            self.assertEqual(c.health("dino.v1.Surrogate"), "SERVING")
            with self.assertRaises(dino_serve.DinoError) as refused:
                c.model_info(MODEL)
            self.assertEqual(refused.exception.code.name, "UNIMPLEMENTED")

    def dino(self, *flags):
        return subprocess.run([os.path.join(BIN, "dino"), "info", "--model", MODEL, "--json",
                               "--server", self.target, "--timeout", "20", *flags],
                              capture_output=True, text=True, timeout=60)

    def test_cli_tls_flags(self):
        ok = self.dino("--tls_ca", self.path("ca.pem"), "--tls_cert", self.path("client.pem"),
                       "--tls_key", self.path("client.key"), "--tls_server_name", "localhost",
                       "--token_file", self.path("admin.token"))
        self.assertEqual(ok.returncode, 0, ok.stderr)
        self.assertEqual(json.loads(ok.stdout)["name"], MODEL)
        refused = self.dino("--tls_ca", self.path("ca.pem"), "--token_file",
                            self.path("admin.token"))
        self.assertEqual(refused.returncode, 1, refused.stderr)
        self.assertIn("UNAVAILABLE", refused.stderr)
        half = self.dino("--tls_ca", self.path("ca.pem"), "--tls_cert", self.path("client.pem"))
        self.assertNotEqual(half.returncode, 0)
        self.assertIn("--tls_cert needs --tls_key", half.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
