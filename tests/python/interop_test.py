#!/usr/bin/python3
"""Python interoperability, end to end.

A model written in Python and scripted with torch.jit.script (Debian's python3-torch) is
saved into a model repository following the model contract; dino-server loads and serves it;
a Python client generated from the proto with grpc_python_plugin calls every RPC; the answers
are compared with torch.autograd evaluated on the same Python model in this process. Then the
same through the dino_serve package (client/python): every Surrogate RPC with NumPy in and
out, and its samplers and MAP solver driven by the served model, step for step equal to the
same algorithms on an in-process NumPy copy of the model.

usage: interop_test.py <dino-server binary> <folder of generated Python code>
"""
import json
import os
import sys
import tempfile
import unittest

import numpy as np
import torch

from server_process import ServerProcess

SERVER, GENERATED = sys.argv[1], sys.argv[2]
sys.path.insert(0, GENERATED)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "client", "python"))

import grpc  # noqa: E402
from dino.v1 import surrogate_pb2, surrogate_pb2_grpc  # noqa: E402

# The generated grpc/health/v1 package would be shadowed by grpcio's own `grpc` package, so
# the health messages are loaded from their file and called through a generic stub.
def _load_health_messages():
    import importlib.util
    path = os.path.join(GENERATED, "grpc", "health", "v1", "health_pb2.py")
    spec = importlib.util.spec_from_file_location("dino_health_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


health_pb2 = _load_health_messages()

D_M, D_Q, R_M, R_Q = 30, 8, 6, 5


class PythonDipnet(torch.nn.Module):
    """A reduced-basis model written directly in PyTorch, following the model contract."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        v, _ = torch.linalg.qr(torch.randn(D_M, R_M, generator=g, dtype=torch.float64))
        u, _ = torch.linalg.qr(torch.randn(D_Q, R_Q, generator=g, dtype=torch.float64))
        self.register_buffer("input_basis", v)
        self.register_buffer("output_basis", u)
        self.register_buffer("output_shift", torch.linspace(-1, 1, D_Q, dtype=torch.float64))
        torch.manual_seed(0)  # The layers' initial weights: the same model on every run.
        self.hidden = torch.nn.Linear(R_M, 20).double()
        self.out = torch.nn.Linear(20, R_Q).double()

    @torch.jit.export
    def reduced_forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(torch.nn.functional.softplus(self.hidden(z)))

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        z = m @ self.input_basis
        return self.reduced_forward(z) @ self.output_basis.T + self.output_shift


class PythonGeneric(torch.nn.Module):
    """A generic model: forward only; its input dimension is declared in the metadata."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.net = torch.nn.Sequential(torch.nn.Linear(D_M, 16), torch.nn.Tanh(),
                                       torch.nn.Linear(16, D_Q)).double()

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        return self.net(m)


def wire(array, dtype=surrogate_pb2.FP64):
    array = np.ascontiguousarray(array, dtype="<f8" if dtype == surrogate_pb2.FP64 else "<f4")
    return surrogate_pb2.Tensor(shape=list(array.shape), dtype=dtype, data=array.tobytes())


def unwire(tensor):
    dtype = "<f8" if tensor.dtype == surrogate_pb2.FP64 else "<f4"
    return np.frombuffer(tensor.data, dtype=dtype).reshape(tuple(tensor.shape))


class InteropTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="dino-python-")
        cls.models = {"pydipnet": PythonDipnet(), "pygeneric": PythonGeneric()}
        for name, module in cls.models.items():
            folder = os.path.join(cls.tmp.name, name, "1")
            os.makedirs(folder)
            metadata = {"architecture": "python-" + name, "input_dim": D_M,
                        "provenance": {"created_by": "tests/python/interop_test.py"}}
            torch.jit.save(torch.jit.script(module), os.path.join(folder, "model.pt"),
                           _extra_files={"metadata.json": json.dumps(metadata)})
        cls.server = ServerProcess(os.path.dirname(SERVER), cls.tmp.name)
        cls.target = cls.server.target
        cls.channel = grpc.insecure_channel(cls.target)
        cls.stub = surrogate_pb2_grpc.SurrogateStub(cls.channel)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.server.stop()
        cls.tmp.cleanup()

    def reference(self, name, m):
        module = self.models[name]
        with torch.no_grad():
            q = module(torch.from_numpy(m)[None])[0].numpy()
        jac = torch.autograd.functional.jacobian(lambda x: module(x[None])[0],
                                                 torch.from_numpy(m)).detach().numpy()
        return q, jac

    def test_both_models_are_served(self):
        listing = self.stub.ListModels(surrogate_pb2.ListModelsRequest())
        self.assertEqual([m.name for m in listing.models], ["pydipnet", "pygeneric"])
        info = self.stub.GetModelInfo(surrogate_pb2.GetModelInfoRequest(
            model=surrogate_pb2.ModelRef(name="pydipnet")))
        self.assertTrue(info.has_reduced_bases)
        self.assertEqual((info.input_dim, info.output_dim, info.input_rank, info.output_rank),
                         (D_M, D_Q, R_M, R_Q))
        self.assertEqual(json.loads(info.metadata_json)["architecture"], "python-pydipnet")

    def test_every_rpc_matches_torch_autograd(self):
        rng = np.random.default_rng(0)
        for name in self.models:
            ref = surrogate_pb2.ModelRef(name=name)
            m = rng.standard_normal(D_M)
            v = rng.standard_normal((3, D_M))
            w = rng.standard_normal((2, D_Q))
            q, jac = self.reference(name, m)

            out = self.stub.Evaluate(surrogate_pb2.EvaluateRequest(model=ref, m=wire(m[None])))
            np.testing.assert_allclose(unwire(out.q)[0], q, rtol=0, atol=1e-12)

            out = self.stub.Jvp(surrogate_pb2.JvpRequest(model=ref, m=wire(m), directions=wire(v),
                                                         return_q=True))
            np.testing.assert_allclose(unwire(out.jvp), v @ jac.T, rtol=0, atol=1e-12)
            np.testing.assert_allclose(unwire(out.q), q, rtol=0, atol=1e-12)

            out = self.stub.Vjp(surrogate_pb2.VjpRequest(model=ref, m=wire(m), cotangents=wire(w)))
            np.testing.assert_allclose(unwire(out.vjp), w @ jac, rtol=0, atol=1e-12)

            out = self.stub.Jacobian(surrogate_pb2.JacobianRequest(model=ref, m=wire(m)))
            np.testing.assert_allclose(unwire(out.jacobian), jac, rtol=0, atol=1e-12)

            u_c, _ = np.linalg.qr(rng.standard_normal((D_Q, 3)))
            v_c, _ = np.linalg.qr(rng.standard_normal((D_M, 4)))
            out = self.stub.ReducedJacobian(surrogate_pb2.ReducedJacobianRequest(
                model=ref, m=wire(m), output_basis=wire(u_c), input_basis=wire(v_c),
                output_dtype=surrogate_pb2.FP32))
            self.assertEqual(out.reduced_jacobian.dtype, surrogate_pb2.FP32)
            np.testing.assert_allclose(unwire(out.reduced_jacobian)[0], u_c.T @ jac @ v_c,
                                       rtol=0, atol=1e-5)

        module = self.models["pydipnet"]
        m = rng.standard_normal(D_M)
        out = self.stub.ReducedJacobian(surrogate_pb2.ReducedJacobianRequest(
            model=surrogate_pb2.ModelRef(name="pydipnet"), m=wire(m)))
        _, jac = self.reference("pydipnet", m)
        u = module.output_basis.numpy()
        v = module.input_basis.numpy()
        np.testing.assert_allclose(unwire(out.reduced_jacobian)[0], u.T @ jac @ v, rtol=0,
                                   atol=1e-12)

    def test_errors_carry_code_and_field(self):
        with self.assertRaises(grpc.RpcError) as caught:
            self.stub.Evaluate(surrogate_pb2.EvaluateRequest(
                model=surrogate_pb2.ModelRef(name="pydipnet"), m=wire(np.zeros((1, D_M + 1)))))
        self.assertEqual(caught.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("m must have shape", caught.exception.details())
        with self.assertRaises(grpc.RpcError) as caught:
            self.stub.ReducedJacobian(surrogate_pb2.ReducedJacobianRequest(
                model=surrogate_pb2.ModelRef(name="pygeneric"), m=wire(np.zeros(D_M))))
        self.assertEqual(caught.exception.code(), grpc.StatusCode.FAILED_PRECONDITION)

    def test_package_every_rpc(self):
        import dino_serve
        rng = np.random.default_rng(1)
        with dino_serve.DinoClient(self.target, timeout=30, gen_dir=GENERATED) as client:
            self.assertEqual(client.health(), "SERVING")
            self.assertEqual([m["name"] for m in client.list_models()],
                             ["pydipnet", "pygeneric"])
            info = client.model_info("pydipnet")
            self.assertEqual((info["input_dim"], info["output_dim"], info["input_rank"],
                              info["output_rank"], info["dtype"]), (D_M, D_Q, R_M, R_Q, "fp64"))
            self.assertEqual(info["metadata"]["architecture"], "python-pydipnet")
            bases = client.bases("pydipnet")
            module = self.models["pydipnet"]
            np.testing.assert_array_equal(bases["input_basis"], module.input_basis.numpy())
            np.testing.assert_array_equal(bases["output_shift"], module.output_shift.numpy())
            for name in self.models:
                ms = rng.standard_normal((3, D_M))
                refs = [self.reference(name, m) for m in ms]
                q = client.evaluate(name, ms)
                np.testing.assert_allclose(q, [r[0] for r in refs], rtol=0, atol=1e-12)
                # Per-point batched products: row b is J(m_b) v_b.
                v = rng.standard_normal((3, D_M))
                jv, q2 = client.jvp(name, ms, v, return_q=True)
                np.testing.assert_allclose(jv, [r[1] @ vb for r, vb in zip(refs, v)],
                                           rtol=0, atol=1e-12)
                np.testing.assert_allclose(q2, q, rtol=0, atol=1e-12)
                w = rng.standard_normal((3, D_Q))
                np.testing.assert_allclose(client.vjp(name, ms, w),
                                           [wb @ r[1] for r, wb in zip(refs, w)],
                                           rtol=0, atol=1e-12)
                np.testing.assert_allclose(client.jacobian(name, ms[0]), refs[0][1], rtol=0,
                                           atol=1e-12)
                u_c, _ = np.linalg.qr(rng.standard_normal((D_Q, 3)))
                v_c, _ = np.linalg.qr(rng.standard_normal((D_M, 4)))
                jr, _ = client.reduced_jacobian(name, ms, u_c, v_c)
                np.testing.assert_allclose(jr, [u_c.T @ r[1] @ v_c for r in refs], rtol=0,
                                           atol=1e-12)
            jr32, _ = client.reduced_jacobian("pydipnet", ms, dtype="fp32")
            self.assertEqual(jr32.dtype, np.float32)
            with self.assertRaises(dino_serve.InvalidArgumentError) as caught:
                client.evaluate("pydipnet", np.zeros((1, D_M + 1)))
            self.assertIn("INVALID_ARGUMENT: m must have shape", str(caught.exception))
            with self.assertRaises(dino_serve.FailedPreconditionError):
                client.reduced_jacobian("pygeneric", np.zeros(D_M))
            with self.assertRaises(dino_serve.NotFoundError):
                client.model_info("nope")

    def numpy_twin(self):
        """The pydipnet model as a dino_serve.bayes.ReducedBasisModel in NumPy."""
        from dino_serve import bayes
        module = self.models["pydipnet"]
        w1, b1 = module.hidden.weight.detach().numpy(), module.hidden.bias.detach().numpy()
        w2, b2 = module.out.weight.detach().numpy(), module.out.bias.detach().numpy()

        def phi(z):
            return np.logaddexp(0.0, z @ w1.T + b1) @ w2.T + b2

        def phi_jacobian(z):
            sig = 1.0 / (1.0 + np.exp(-(z @ w1.T + b1)))
            return np.einsum("oh,bh,hi->boi", w2, sig, w1)

        return bayes.ReducedBasisModel(module.input_basis.numpy(), module.output_basis.numpy(),
                                       module.output_shift.numpy(), phi, phi_jacobian)

    def test_package_samplers_on_the_served_model(self):
        import dino_serve
        from dino_serve import bayes
        twin = self.numpy_twin()
        with dino_serve.DinoClient(self.target, timeout=30, gen_dir=GENERATED) as client:
            served = bayes.ServedModel(client, "pydipnet")
            prior = bayes.DiagonalGaussianPrior(np.zeros(D_M), 0.5)
            m_true = prior.sample(1, np.random.default_rng(0))
            data = twin.evaluate(m_true)[0]
            data = data + 0.01 * np.abs(data).mean() * np.random.default_rng(1).standard_normal(D_Q)
            noise = 0.01 * np.abs(data).mean()
            problems = {name: bayes.BayesianProblem(model, prior, data, noise)
                        for name, model in (("served", served), ("numpy", twin))}
            x0 = np.random.default_rng(2).standard_normal((6, D_M))
            runs = {}
            for name, problem in problems.items():
                kernels = {
                    "pcn": bayes.PCN(problem, 0.1),
                    "mmala": bayes.MMALA(bayes.ReducedGaussNewton(problem), h=0.1),
                    "pde_mmala": bayes.MMALA(bayes.AdjointGaussNewton(problem), h=0.1),
                    "da": bayes.DelayedAcceptance(
                        bayes.MMALA(bayes.ReducedGaussNewton(problem), h=0.1),
                        problems["numpy"]),
                }
                runs[name] = {k: bayes.sample(kernel, x0, 8, np.random.default_rng(3))
                              for k, kernel in kernels.items()}
                runs[name]["map"] = bayes.gauss_newton_cg(problem, max_iter=5)
            for kind in ("pcn", "mmala", "pde_mmala", "da"):
                served_run, numpy_run = runs["served"][kind], runs["numpy"][kind]
                np.testing.assert_array_equal(served_run.accepted, numpy_run.accepted, kind)
                np.testing.assert_allclose(served_run.samples, numpy_run.samples, rtol=1e-9,
                                           atol=1e-9, err_msg=kind)
            # One ReducedJacobian request per DINO-mMALA step for all 6 chains.
            self.assertEqual(runs["served"]["mmala"].counts,
                             {"reduced_jacobian_calls": 9, "reduced_jacobian_points": 54})
            self.assertGreater(runs["served"]["mmala"].acceptance_rate, 0)
            np.testing.assert_allclose(runs["served"]["map"].m, runs["numpy"]["map"].m,
                                       rtol=1e-8, atol=1e-10)
            self.assertLess(runs["served"]["map"].cost, problems["served"].cost(
                np.zeros((1, D_M)))[0])

    def test_health(self):
        check = self.channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString)
        reply = check(health_pb2.HealthCheckRequest(service="dino.v1.Surrogate"))
        self.assertEqual(reply.status, health_pb2.HealthCheckResponse.SERVING)


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]], verbosity=2)
