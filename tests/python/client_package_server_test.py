#!/usr/bin/python3
"""The dino_serve package against a real dino-server: the calls the in-process fake of
client_package_test.py cannot vouch for. The server serves a scratch copy of the bundled
poisson_dipnet and poisson_pde (model control changes the repository's config.json and
publishes versions into it) with an admin token, and UM-Bridge on.

  * HessianVectorProduct in its three shapes: equal to central differences of the served
    gradient (Vjp), symmetric, per-point rows equal to each point alone, equal to UM-Bridge's
    ApplyHessian to 1e-12; UNIMPLEMENTED for the exact PDE model; errors name the field;
  * the prior: GetPrior, SamplePrior (reproducible), ApplyPrior (C⁻¹ inverts C);
  * fine-tuning: StartFineTune streaming exact PDE data (q and the Jacobian in the DINO's
    bases from poisson_pde) with progress, WatchJob to SUCCEEDED, GetJob, ListJobs, the new
    version served; CancelJob of a running job (nothing published);
  * ModelAdmin: SetDefaultVersion, SetVersionLabel, UnloadVersion and their refusals;
  * without the token, model control is UNAUTHENTICATED.

usage: client_package_server_test.py <bin folder> <model repository> <generated Python folder>
"""
import json
import os
import shutil
import sys
import tempfile
import unittest
import urllib.request

import numpy as np

from server_process import ServerProcess

BIN, REPOSITORY, GENERATED = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "client", "python"))

import dino_serve  # noqa: E402

DINO, PDE = "poisson_dipnet", "poisson_pde"
TOKEN = "package-test-token"


def relative(actual, expected):
    actual, expected = np.asarray(actual), np.asarray(expected)
    return np.linalg.norm(actual - expected) / np.linalg.norm(expected)


class PackageAgainstServer(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="dino-package-")
        repository = os.path.join(cls.tmp.name, "repository")
        for name in (DINO, PDE):
            shutil.copytree(os.path.join(REPOSITORY, name), os.path.join(repository, name))
        cls.base_version = max(int(v) for v in os.listdir(os.path.join(repository, DINO))
                               if v.isdigit())
        token_file = os.path.join(cls.tmp.name, "token")
        with open(token_file, "w") as f:
            f.write(TOKEN + "\n")
        cls.server = ServerProcess(BIN, repository, "--umbridge_port=0",
                                   "--admin_token_file=" + token_file)
        cls.target = cls.server.target
        cls.umbridge_url = cls.server.announced(r"UM-Bridge on (http://\S+)")
        cls.client = dino_serve.DinoClient(cls.target, timeout=120, gen_dir=GENERATED,
                                           token_file=token_file)
        cls.rng = np.random.default_rng(0)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.server.stop()
        cls.tmp.cleanup()

    def umbridge_apply_hessian(self, m, sens, vec):
        body = {"name": DINO, "inWrt1": 0, "inWrt2": 0, "outWrt": 0, "input": [m.tolist()],
                "sens": sens.tolist(), "vec": vec.tolist(), "config": {}}
        request = urllib.request.Request(self.umbridge_url + "/ApplyHessian",
                                         data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return np.array(json.loads(response.read())["output"])

    def test_hessian_vector_product(self):
        c = self.client
        m = c.sample_prior(DINO, 3, seed=11)
        s = self.rng.standard_normal((3, 50))
        v = self.rng.standard_normal((3, m.shape[1]))

        # One point, one direction: H(m, s)·v = d/dt J(m + t v)ᵀ s at t = 0.
        hv = c.hessian_vector_product(DINO, m[0], s[0], v[0])
        self.assertEqual(hv.shape, (1, m.shape[1]))
        h = 1e-5
        fd = (c.vjp(DINO, m[0] + h * v[0], s[0]) - c.vjp(DINO, m[0] - h * v[0], s[0])) / (2 * h)
        self.assertGreater(np.linalg.norm(fd), 1e-6)
        self.assertLessEqual(relative(hv, fd), 1e-5)
        # The same action through UM-Bridge.
        self.assertLessEqual(relative(self.umbridge_apply_hessian(m[0], s[0], v[0]), hv[0]),
                             1e-12)

        # One point, k directions; symmetry ⟨v_1, H v_0⟩ = ⟨v_0, H v_1⟩.
        hk = c.hessian_vector_product(DINO, m[0], s[0], v[:2])
        self.assertEqual(hk.shape, (2, m.shape[1]))
        np.testing.assert_allclose(hk[0], hv[0], rtol=0, atol=1e-12 * np.abs(hv).max())
        self.assertAlmostEqual(hk[0] @ v[1], hk[1] @ v[0],
                               delta=1e-10 * abs(hk[0] @ v[1]) + 1e-14)

        # B points, one direction each, and B points with k each: every row as if alone.
        per_point = c.hessian_vector_product(DINO, m, s, v)
        self.assertEqual(per_point.shape, m.shape)
        directions = np.stack([v, v[::-1]], axis=1)  # [3, 2, d_M]
        per_point_k = c.hessian_vector_product(DINO, m, s, directions)
        self.assertEqual(per_point_k.shape, directions.shape)
        for b in range(3):
            alone = c.hessian_vector_product(DINO, m[b], s[b], directions[b])
            np.testing.assert_allclose(per_point[b], alone[0], rtol=0,
                                       atol=1e-12 * np.abs(alone).max())
            np.testing.assert_allclose(per_point_k[b], alone, rtol=0,
                                       atol=1e-12 * np.abs(alone).max())
        hv32 = c.hessian_vector_product(DINO, m[0], s[0], v[0], dtype="fp32")
        self.assertEqual(hv32.dtype, np.float32)

        with self.assertRaises(dino_serve.InvalidArgumentError) as caught:
            c.hessian_vector_product(DINO, m, s[0], v)
        self.assertIn("cotangents must have one row per point", str(caught.exception))
        with self.assertRaises(dino_serve.InvalidArgumentError) as caught:
            c.hessian_vector_product(DINO, m[0], s[0], v[0, :10])
        self.assertIn("directions", caught.exception.details)
        with self.assertRaises(dino_serve.UnimplementedError) as caught:
            c.hessian_vector_product(PDE, m[0], s[0], v[0])
        self.assertIn("second-order", caught.exception.details)

    def test_prior(self):
        c = self.client
        prior = c.get_prior(DINO)
        self.assertEqual((prior["problem"], prior["input_dim"]), ("poisson", 4225))
        self.assertEqual(prior["mean"].shape, (4225,))
        samples = c.sample_prior(DINO, 2, seed=3)
        np.testing.assert_array_equal(c.sample_prior(DINO, 1, seed=3, first_index=1)[0],
                                      samples[1])
        v = self.rng.standard_normal((2, 4225))
        cv = c.apply_prior(DINO, "covariance", v)
        np.testing.assert_allclose(c.apply_prior(DINO, "precision", cv), v,
                                   atol=1e-8 * np.abs(v).max())
        with self.assertRaises(dino_serve.InvalidArgumentError):
            c.apply_prior(DINO, "covariance", v, with_mean=True)

    def exact_data(self, count, seed):
        """count samples of the exact map (poisson_pde) with their Jacobians in the DINO's
        bases and ‖J‖²_F: what fine-tuning the DINO on new PDE solves would send."""
        c = self.client
        bases = c.bases(DINO)
        u, v = bases["output_basis"], bases["input_basis"]
        m = c.sample_prior(DINO, count, seed=seed)
        q = c.evaluate(PDE, m)
        jacobians = [c.jacobian(PDE, point) for point in m]
        return dict(m=m, q=q, reduced_jacobian=np.stack([u.T @ j @ v for j in jacobians]),
                    jacobian_norm_sq=np.array([np.sum(j * j) for j in jacobians]))

    def test_finetune_jobs_and_model_admin(self):
        c = self.client
        data = self.exact_data(20, seed=21)
        progress = []
        job_id, status = c.start_finetune(
            DINO, dino_serve.iter_batches(chunk=8, **data), progress=progress.append,
            loss="h1", epochs=2, learning_rate=1e-5, seed=1, max_regression=1.0,
            description="client_package_server_test")
        self.assertEqual([p["samples"] for p in progress], [8, 16, 20])
        self.assertEqual(status["job_id"], job_id)
        self.assertEqual(status["samples_received"], 20)
        watched = list(c.watch_job(job_id, timeout=300))
        final = watched[-1]
        self.assertEqual(final["state"], "SUCCEEDED", final["message"])
        self.assertEqual([w["revision"] for w in watched], sorted(w["revision"] for w in watched))
        new_version = final["new_version"]
        self.assertEqual(new_version, self.base_version + 1)
        self.assertIsNotNone(final["validation"]["h1"])
        self.assertEqual(c.get_job(job_id), final)
        self.assertIn(job_id, [j["job_id"] for j in c.list_jobs()])
        # The published version serves and is the default as the highest.
        info = c.model_info(DINO)
        self.assertEqual(info["version"], new_version)
        self.assertEqual(info["metadata"]["fine_tune"]["job_id"], job_id)
        self.assertEqual(info["metadata"]["fine_tune"]["description"],
                         "client_package_server_test")
        self.assertEqual(info["metadata"]["parent"], {"model": DINO, "version": self.base_version})

        # A job cancelled while it trains publishes nothing.
        long_job, _ = c.start_finetune(DINO, dino_serve.iter_batches(chunk=8, **data),
                                       loss="h1", epochs=1000000, seed=2)
        cancelled = c.cancel_job(long_job)
        # Queued: cancelled at once; training: the job thread ends it at its next batch.
        self.assertTrue(cancelled["state"] == "CANCELLED" or cancelled["message"] == "cancelling",
                        cancelled)
        self.assertEqual(list(c.watch_job(long_job, timeout=60))[-1]["state"], "CANCELLED")
        self.assertEqual(c.list_models()[0]["versions"], [new_version])
        with self.assertRaises(dino_serve.NotFoundError):
            c.cancel_job("no-such-job")

        # ModelAdmin: pin the old version, label the new one, refusals, unload.
        old = self.base_version
        c.set_default_version(DINO, old)
        self.assertEqual(c.model_info(DINO)["version"], old)
        self.assertEqual(c.model_info(DINO, version=new_version)["version"], new_version)
        c.set_version_label(DINO, "candidate", new_version)
        self.assertEqual(c.model_info(DINO, label="candidate")["version"], new_version)
        m = data["m"][:2]
        np.testing.assert_array_equal(c.evaluate(DINO, m, label="candidate"),
                                      c.evaluate(DINO, m, version=new_version))
        self.assertGreater(np.abs(c.evaluate(DINO, m) - c.evaluate(DINO, m, version=new_version))
                           .max(), 0)
        with self.assertRaises(dino_serve.FailedPreconditionError) as caught:
            c.unload_version(DINO, old)
        self.assertIn("default", caught.exception.details)
        with self.assertRaises(dino_serve.FailedPreconditionError):
            c.unload_version(DINO, new_version)  # Labelled.
        c.set_version_label(DINO, "candidate", 0)
        with self.assertRaises(dino_serve.NotFoundError):
            c.model_info(DINO, label="candidate")
        c.unload_version(DINO, new_version)
        with self.assertRaises(dino_serve.NotFoundError):
            c.model_info(DINO, version=new_version)
        c.set_default_version(DINO, 0)
        self.assertEqual(c.list_models()[0],
                         {"name": DINO, "versions": [old], "default_version": old})
        with self.assertRaises(dino_serve.NotFoundError):
            c.set_default_version(DINO, 99)

    def test_model_control_needs_the_token(self):
        with dino_serve.DinoClient(self.target, timeout=30, gen_dir=GENERATED) as anonymous:
            with self.assertRaises(dino_serve.UnauthenticatedError):
                anonymous.set_default_version(DINO, 0)
            with self.assertRaises(dino_serve.UnauthenticatedError):
                anonymous.list_jobs()
            # Inference stays open: the server runs without --require_token_for_inference.
            self.assertEqual(anonymous.health(), "SERVING")


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1], verbosity=2)
