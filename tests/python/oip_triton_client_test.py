#!/usr/bin/python3
"""The Open Inference Protocol as Triton's Python client speaks it, against a real dino-server
serving the bundled model. tritonclient is not installable here (no PyPI), so its request and
response handling is replayed with the stubs generated from proto/inference: an InferInput
holds `array.tobytes()` that the request carries in raw_input_contents (one entry per input,
in order), requested outputs are bare names, an optional client timeout travels as the
request parameter "timeout" (int64), and InferResult.as_numpy reads raw_output_contents[i]
with np.frombuffer and the output's shape. Results must equal dino.v1's.

usage: oip_triton_client_test.py <bin folder> <repository> <generated Python folder>
"""
import json
import os
import sys
import unittest
import urllib.error
import urllib.request

import grpc
import numpy as np

from server_process import ServerProcess

BIN, REPOSITORY, GENERATED = (os.path.abspath(a) for a in sys.argv[1:4])
del sys.argv[1:4]
sys.path.insert(0, GENERATED)
from dino.v1 import surrogate_pb2, surrogate_pb2_grpc  # noqa: E402
from inference import grpc_predict_v2_pb2 as service_pb2  # noqa: E402
from inference import grpc_predict_v2_pb2_grpc as service_pb2_grpc  # noqa: E402

MODEL = "poisson_dipnet"
NUMPY_OF = {"FP32": np.float32, "FP64": np.float64}
DATATYPE_OF = {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64"}


def triton_request(model, inputs, outputs=(), model_version="", request_id="", timeout=None):
    """What tritonclient.grpc's _get_inference_request builds from InferInput objects that
    were filled with set_data_from_numpy."""
    request = service_pb2.ModelInferRequest()
    request.model_name = model
    request.model_version = model_version
    if request_id != "":
        request.id = request_id
    for name, array in inputs:
        tensor = service_pb2.ModelInferRequest().InferInputTensor()
        tensor.name = name
        tensor.shape.extend(array.shape)
        tensor.datatype = DATATYPE_OF[array.dtype]
        request.inputs.extend([tensor])
        request.raw_input_contents.extend([array.tobytes()])
    for name in outputs:
        output = service_pb2.ModelInferRequest().InferRequestedOutputTensor()
        output.name = name
        request.outputs.extend([output])
    if timeout is not None:
        request.parameters["timeout"].int64_param = timeout
    return request


def as_numpy(response, name):
    """tritonclient.grpc.InferResult.as_numpy: raw contents only."""
    for index, output in enumerate(response.outputs):
        if output.name == name:
            assert index < len(response.raw_output_contents), "no raw contents for " + name
            return np.frombuffer(response.raw_output_contents[index],
                                 dtype=NUMPY_OF[output.datatype]).reshape(list(output.shape))
    return None


def wire(array):
    array = np.ascontiguousarray(array, dtype="<f8")
    return surrogate_pb2.Tensor(shape=list(array.shape), dtype=surrogate_pb2.FP64,
                                data=array.tobytes())


def unwire(tensor):
    dtype = "<f8" if tensor.dtype == surrogate_pb2.FP64 else "<f4"
    return np.frombuffer(tensor.data, dtype=dtype).reshape(tuple(tensor.shape))


class TritonStyleClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = ServerProcess(BIN, REPOSITORY, "--http_port=0")
        target = cls.server.target
        cls.rest_url = cls.server.announced(r"Open Inference Protocol REST on (http://\S+)/v2")
        cls.channel = grpc.insecure_channel(target)
        cls.oip = service_pb2_grpc.GRPCInferenceServiceStub(cls.channel)
        cls.dino = surrogate_pb2_grpc.SurrogateStub(cls.channel)
        info = cls.dino.GetModelInfo(surrogate_pb2.GetModelInfoRequest(
            model=surrogate_pb2.ModelRef(name=MODEL)), timeout=30)
        cls.d_m, cls.d_q = info.input_dim, info.output_dim

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.server.stop()

    def test_health_and_metadata(self):
        self.assertTrue(self.oip.ServerLive(service_pb2.ServerLiveRequest(), timeout=30).live)
        self.assertTrue(self.oip.ServerReady(service_pb2.ServerReadyRequest(), timeout=30).ready)
        self.assertTrue(self.oip.ModelReady(
            service_pb2.ModelReadyRequest(name=MODEL, version=""), timeout=30).ready)
        metadata = self.oip.ModelMetadata(service_pb2.ModelMetadataRequest(name=MODEL),
                                          timeout=30)
        inputs = {t.name: (t.datatype, list(t.shape)) for t in metadata.inputs}
        self.assertEqual(inputs["m"], ("FP64", [-1, self.d_m]))
        self.assertIn("reduced_jacobian", [t.name for t in metadata.outputs])

    def test_infer_equals_evaluate_in_fp64_and_fp32(self):
        m = np.random.default_rng(0).standard_normal((3, self.d_m))
        expected = unwire(self.dino.Evaluate(surrogate_pb2.EvaluateRequest(
            model=surrogate_pb2.ModelRef(name=MODEL), m=wire(m)), timeout=30).q)
        for array in (m, m.astype(np.float32)):
            response = self.oip.ModelInfer(
                triton_request(MODEL, [("m", array)], ["q"], request_id="7", timeout=30_000_000),
                timeout=30)
            self.assertEqual(response.id, "7")
            q = as_numpy(response, "q")
            self.assertEqual(q.shape, (3, self.d_q))
            if array.dtype == np.float64:
                np.testing.assert_allclose(q, expected, rtol=0, atol=1e-12)
            else:
                reference = unwire(self.dino.Evaluate(surrogate_pb2.EvaluateRequest(
                    model=surrogate_pb2.ModelRef(name=MODEL),
                    m=wire(array.astype(np.float64))), timeout=30).q)
                np.testing.assert_allclose(q, reference, rtol=0, atol=1e-12)

    def test_gradient_of_a_misfit_with_vjp(self):
        rng = np.random.default_rng(1)
        m = rng.standard_normal((4, self.d_m))
        w = rng.standard_normal((4, self.d_q))
        response = self.oip.ModelInfer(
            triton_request(MODEL, [("m", m), ("cotangents", w)], ["q", "vjp"]), timeout=30)
        expected = self.dino.Vjp(surrogate_pb2.VjpRequest(
            model=surrogate_pb2.ModelRef(name=MODEL), m=wire(m), cotangents=wire(w),
            return_q=True), timeout=30)
        np.testing.assert_allclose(as_numpy(response, "vjp"), unwire(expected.vjp), rtol=0,
                                   atol=1e-12)
        np.testing.assert_allclose(as_numpy(response, "q"), unwire(expected.q), rtol=0,
                                   atol=1e-12)

    def rest(self, path, body=None):
        request = urllib.request.Request(
            self.rest_url + path, data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"}, method="GET" if body is None else "POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def test_rest_port_answers_as_grpc(self):
        """The REST API on --http_port: the same mapping as ModelInfer, over real HTTP."""
        status, ready = self.rest("/v2/health/ready")
        self.assertEqual(status, 200, ready)
        status, metadata = self.rest(f"/v2/models/{MODEL}")
        self.assertEqual(status, 200, metadata)
        self.assertEqual(metadata["name"], MODEL)
        m = np.random.default_rng(5).standard_normal((2, self.d_m))
        status, reply = self.rest(f"/v2/models/{MODEL}/infer", {
            "inputs": [{"name": "m", "shape": [2, self.d_m], "datatype": "FP64",
                        "data": m.ravel().tolist()}],
            "outputs": [{"name": "q"}]})
        self.assertEqual(status, 200, reply)
        q = np.array(reply["outputs"][0]["data"]).reshape(reply["outputs"][0]["shape"])
        want = unwire(self.dino.Evaluate(surrogate_pb2.EvaluateRequest(
            model=surrogate_pb2.ModelRef(name=MODEL), m=wire(m)), timeout=30).q)
        np.testing.assert_allclose(q, want, rtol=1e-12, atol=0)
        status, error = self.rest(f"/v2/models/{MODEL}/infer", {
            "inputs": [{"name": "m", "shape": [2, 3], "datatype": "FP64", "data": [0.0] * 6}]})
        self.assertEqual(status, 400, error)
        self.assertIn("m", error["error"])
        status, error = self.rest("/v2/models/no_such_model/infer", {"inputs": []})
        self.assertEqual(status, 404, error)

    def test_errors_are_grpc_statuses_naming_the_input(self):
        with self.assertRaises(grpc.RpcError) as raised:
            self.oip.ModelInfer(triton_request("no_such_model", [("m", np.zeros((1, 3)))]),
                                timeout=30)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.NOT_FOUND)
        with self.assertRaises(grpc.RpcError) as raised:
            self.oip.ModelInfer(triton_request(MODEL, [("m", np.zeros((1, 3)))]), timeout=30)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("m must have shape", raised.exception.details())


if __name__ == "__main__":
    unittest.main()
