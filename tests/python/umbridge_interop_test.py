#!/usr/bin/python3
"""UM-Bridge against gRPC on the real dino-server, serving the bundled poisson_dipnet.

The UM-Bridge client here posts exactly the JSON that UM-Bridge's own Python client
(umbridge.HTTPModel, umbridge/um.py) posts, with urllib because the umbridge package is not
installable offline; the token travels as the password of the URL, the way `requests` (which
umbridge uses) sends credentials in a URL: "Authorization: Basic base64(user:token)".
Evaluate, Gradient, ApplyJacobian and ApplyHessian must equal gRPC's Evaluate, Vjp, Jvp and
HessianVectorProduct to 1e-12, and ApplyHessian torch.autograd's double backward on the model
file. Errors come back as
the protocol's objects and the server keeps serving, also under concurrent clients.

usage: umbridge_interop_test.py <bin folder> <model repository> <generated Python folder>
"""
import base64
import concurrent.futures
import json
import os
import sys
import tempfile
import unittest
import urllib.error
import urllib.request

import numpy as np
import torch

from server_process import ServerProcess

BIN, REPOSITORY, GENERATED = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, GENERATED)

import grpc  # noqa: E402
from dino.v1 import surrogate_pb2, surrogate_pb2_grpc  # noqa: E402

MODEL = "poisson_dipnet"
TOKEN = "umbridge-test-token"


class UmbridgeHttpModel:
    """The requests of umbridge.HTTPModel (protocol 1.0), over urllib."""

    def __init__(self, url, name, token=None):
        self.url, self.name, self.token = url, name, token

    def post(self, route, body):
        return self._send(urllib.request.Request(
            self.url + route, data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json"}))

    def get(self, route):
        return self._send(urllib.request.Request(self.url + route, method="GET"))

    def _send(self, request):
        if self.token is not None:
            credentials = base64.b64encode(f"user:{self.token}".encode()).decode()
            request.add_header("Authorization", "Basic " + credentials)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def __call__(self, parameters, config={}):
        return self.post("/Evaluate", {"name": self.name, "input": parameters, "config": config})

    def gradient(self, out_wrt, in_wrt, parameters, sens, config={}):
        return self.post("/Gradient", {"name": self.name, "outWrt": out_wrt, "inWrt": in_wrt,
                                       "input": parameters, "sens": sens, "config": config})

    def apply_jacobian(self, out_wrt, in_wrt, parameters, vec, config={}):
        return self.post("/ApplyJacobian", {"name": self.name, "outWrt": out_wrt,
                                            "inWrt": in_wrt, "input": parameters, "vec": vec,
                                            "config": config})

    def apply_hessian(self, out_wrt, in_wrt1, in_wrt2, parameters, sens, vec, config={}):
        return self.post("/ApplyHessian", {"name": self.name, "outWrt": out_wrt,
                                           "inWrt1": in_wrt1, "inWrt2": in_wrt2,
                                           "input": parameters, "sens": sens, "vec": vec,
                                           "config": config})


def wire(array):
    array = np.ascontiguousarray(array, dtype=np.float64)
    return surrogate_pb2.Tensor(shape=list(array.shape), dtype=surrogate_pb2.FP64,
                                data=array.tobytes())


def unwire(tensor):
    return np.frombuffer(tensor.data, dtype=np.float64).reshape(list(tensor.shape))


def relative(a, b):
    return np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(b)


class UmbridgeInterop(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="dino-umbridge-")
        token_file = os.path.join(cls.tmp.name, "token")
        with open(token_file, "w") as f:
            f.write(TOKEN + "\n")
        cls.server = ServerProcess(BIN, REPOSITORY, "--umbridge_port=0",
                                   "--admin_token_file=" + token_file,
                                   "--require_token_for_inference")
        cls.target = cls.server.target
        umbridge_url = cls.server.announced(r"UM-Bridge on (http://\S+)")
        cls.umbridge = UmbridgeHttpModel(umbridge_url, MODEL, TOKEN)
        cls.anonymous = UmbridgeHttpModel(umbridge_url, MODEL)
        cls.channel = grpc.insecure_channel(cls.target)
        cls.stub = surrogate_pb2_grpc.SurrogateStub(cls.channel)
        cls.metadata = (("authorization", "Bearer " + TOKEN),)
        version = max(int(v) for v in os.listdir(os.path.join(REPOSITORY, MODEL)) if v.isdigit())
        cls.model = torch.jit.load(os.path.join(REPOSITORY, MODEL, str(version), "model.pt"))
        cls.d_m = cls.model.input_basis.shape[0]
        cls.d_q = cls.model.output_basis.shape[0]
        cls.rng = np.random.default_rng(0)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.server.stop()
        cls.tmp.cleanup()

    def ref(self):
        return surrogate_pb2.ModelRef(name=MODEL)

    def test_discovery(self):
        status, info = self.umbridge.get("/Info")
        self.assertEqual(status, 200)
        self.assertEqual(info["protocolVersion"], 1.0)
        self.assertIn(MODEL, info["models"])
        status, model_info = self.umbridge.post("/ModelInfo", {"name": MODEL})
        self.assertEqual(model_info["support"], {"Evaluate": True, "Gradient": True,
                                                 "ApplyJacobian": True, "ApplyHessian": True})
        self.assertEqual(self.umbridge.post("/InputSizes", {"name": MODEL, "config": {}})[1],
                         {"inputSizes": [self.d_m]})
        self.assertEqual(self.umbridge.post("/OutputSizes", {"name": MODEL, "config": {}})[1],
                         {"outputSizes": [self.d_q]})

    def test_same_numbers_as_grpc(self):
        m = self.rng.standard_normal(self.d_m)
        sens = self.rng.standard_normal(self.d_q)
        vec = self.rng.standard_normal(self.d_m)
        status, evaluate = self.umbridge([m.tolist()])
        self.assertEqual(status, 200, evaluate)
        q = unwire(self.stub.Evaluate(surrogate_pb2.EvaluateRequest(model=self.ref(), m=wire(m)),
                                      metadata=self.metadata).q)
        self.assertEqual(len(evaluate["output"]), 1)
        self.assertLessEqual(relative(evaluate["output"][0], q.reshape(-1)), 1e-12)

        status, gradient = self.umbridge.gradient(0, 0, [m.tolist()], sens.tolist())
        self.assertEqual(status, 200, gradient)
        vjp = unwire(self.stub.Vjp(surrogate_pb2.VjpRequest(model=self.ref(), m=wire(m),
                                                            cotangents=wire(sens)),
                                   metadata=self.metadata).vjp)
        self.assertLessEqual(relative(gradient["output"], vjp.reshape(-1)), 1e-12)

        status, jacobian = self.umbridge.apply_jacobian(0, 0, [m.tolist()], vec.tolist())
        self.assertEqual(status, 200, jacobian)
        jvp = unwire(self.stub.Jvp(surrogate_pb2.JvpRequest(model=self.ref(), m=wire(m),
                                                            directions=wire(vec)),
                                   metadata=self.metadata).jvp)
        self.assertLessEqual(relative(jacobian["output"], jvp.reshape(-1)), 1e-12)

        # ApplyHessian: gRPC's HessianVectorProduct, and torch.autograd's double backward on
        # the model file.
        status, hessian = self.umbridge.apply_hessian(0, 0, 0, [m.tolist()], sens.tolist(),
                                                      vec.tolist())
        self.assertEqual(status, 200, hessian)
        hvp = unwire(self.stub.HessianVectorProduct(
            surrogate_pb2.HessianVectorProductRequest(model=self.ref(), m=wire(m),
                                                      cotangents=wire(sens), directions=wire(vec)),
            metadata=self.metadata).hvp)
        self.assertLessEqual(relative(hessian["output"], hvp.reshape(-1)), 1e-12)
        s = torch.from_numpy(sens)
        _, expected = torch.autograd.functional.vhp(
            lambda x: (self.model(x[None])[0] * s).sum(), torch.from_numpy(m),
            torch.from_numpy(vec))
        self.assertGreater(np.linalg.norm(expected.numpy()), 0)
        self.assertLessEqual(relative(hessian["output"], expected.numpy()), 1e-10)

    def test_errors_are_protocol_objects_and_server_keeps_serving(self):
        m = self.rng.standard_normal(self.d_m).tolist()
        status, body = self.anonymous([m])
        self.assertEqual((status, body["error"]["type"]), (401, "Unauthenticated"))
        status, body = self.umbridge([m[:-1]])
        self.assertEqual((status, body["error"]["type"]), (400, "InvalidInput"))
        self.assertIn("input[0] has length", body["error"]["message"])
        status, body = UmbridgeHttpModel(self.umbridge.url, "nope", TOKEN)([m])
        self.assertEqual((status, body["error"]["type"]), (400, "ModelNotFound"))
        status, body = self.umbridge.gradient(1, 0, [m], [0.0] * self.d_q)
        self.assertEqual((status, body["error"]["type"]), (400, "InvalidInput"))
        self.assertIn("outWrt", body["error"]["message"])
        status, body = self.umbridge.apply_jacobian(0, 3, [m], m)
        self.assertIn("inWrt", body["error"]["message"])
        request = urllib.request.Request(self.umbridge.url + "/Evaluate", data=b"{not json",
                                         method="POST")
        request.add_header("Authorization", "Bearer " + TOKEN)
        with self.assertRaises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(request, timeout=30)
        self.assertEqual(raised.exception.code, 400)
        self.assertEqual(json.loads(raised.exception.read())["error"]["type"], "InvalidInput")
        status, body = self.umbridge([m])
        self.assertEqual(status, 200, body)

    def test_concurrent_clients(self):
        points = [self.rng.standard_normal(self.d_m) for _ in range(24)]
        with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
            answers = list(pool.map(lambda p: self.umbridge([p.tolist()]), points))
        with torch.no_grad():
            expected = self.model(torch.from_numpy(np.stack(points))).numpy()
        for (status, body), q in zip(answers, expected):
            self.assertEqual(status, 200, body)
            self.assertLessEqual(relative(body["output"][0], q), 1e-10)


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1], verbosity=2)
