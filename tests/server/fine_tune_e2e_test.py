#!/usr/bin/python3
"""The training endpoint end to end (dino.v1.Training and dino.v1.ModelAdmin).

Real Poisson data (dino-train generate on a 16x16 mesh) trains an L2-only DIPNet that
becomes version 1 of a scratch repository; dino-server then fine-tunes it from samples
streamed over gRPC. Checked here:
  * fine-tuning with H1 data raises the validation H1 accuracy; the new version is
    published, loaded, becomes the default as the highest version (the default policy
    "latest 1" unloads the one before it), and records its lineage in its metadata;
  * a pinned default survives a publish and a restart; the new version serves by number;
  * dino_models_loaded (the /metrics endpoint) equals what ListModels lists after every
    publish, pin and unload;
  * the gate rejects a poisoned upload (q scaled by 10, clean validation samples) and the
    old version keeps serving;
  * zero failed inference requests while versions are published under load;
  * cancel, client disconnect, NaN samples, wrong dimensions, the concurrent-job cap;
  * kill -9 while training, just before and just after the rename of a published file:
    the restarted server loads the repository and serves the last published version;
  * auth on (admin token, and also for inference) and off; with neither a token nor
    --insecure_open_model_control, model control is refused naming the flags;
  * a trusted validation set (dino-train trusted-set) rejects an upload whose training and
    validation samples are both poisoned, which the client-sample gate alone accepts.

usage: fine_tune_e2e_test.py <folder with dino-server, dino-train> <generated Python code>
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.request

import numpy as np

BIN, GENERATED = sys.argv[1], sys.argv[2]
sys.path.insert(0, GENERATED)

import grpc  # noqa: E402
from dino.v1 import surrogate_pb2, surrogate_pb2_grpc  # noqa: E402
from dino.v1 import training_pb2, training_pb2_grpc  # noqa: E402

MESH = 16
MODEL = "poisson"
TOKEN = "s3cret-token-for-tests"
FINAL = {training_pb2.SUCCEEDED, training_pb2.REJECTED, training_pb2.FAILED,
         training_pb2.CANCELLED}


def run(*args):
    subprocess.run([os.path.join(BIN, args[0])] + list(args[1:]), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wire(array):
    array = np.ascontiguousarray(array, dtype="<f8")
    return surrogate_pb2.Tensor(shape=list(array.shape), dtype=surrogate_pb2.FP64,
                                data=array.tobytes())


def load_data(directory):
    with np.load(os.path.join(directory, "mq_data.npz")) as f:
        m, q = f["m_data"], f["q_data"]
    with np.load(os.path.join(directory, "Jsvd_data.npz")) as f:
        return dict(m=m, q=q, U=f["U_data"], sigma=f["sigma_data"], V=f["V_data"])


def batches(data, chunk=32, validation=False, first=0, count=None):
    end = len(data["m"]) if count is None else first + count
    for i in range(first, end, chunk):
        s = slice(i, min(i + chunk, end))
        yield training_pb2.FineTuneUpload(samples=training_pb2.SampleBatch(
            m=wire(data["m"][s]), q=wire(data["q"][s]),
            svd=training_pb2.TruncatedSvd(u=wire(data["U"][s]), sigma=wire(data["sigma"][s]),
                                          v=wire(data["V"][s])),
            validation=validation))


def config(loss=training_pb2.H1, epochs=30, **kwargs):
    acceptance = training_pb2.AcceptanceRule(
        metric=kwargs.pop("metric", training_pb2.GATE_METRIC_UNSPECIFIED),
        max_regression=kwargs.pop("max_regression", 0.0))
    return training_pb2.FineTuneUpload(config=training_pb2.FineTuneConfig(
        base=surrogate_pb2.ModelRef(name=MODEL), loss=loss, epochs=epochs,
        learning_rate=kwargs.pop("learning_rate", 1e-3), batch_size=16, seed=7,
        acceptance=acceptance, **kwargs))


class Server:
    """dino-server on a repository; stderr goes to a file so failpoints can be seen."""

    def __init__(self, repository, *flags, env=None, secure_defaults=False):
        # Model control is off unless a token is configured; the tests without one open it
        # explicitly, as a developer would.
        if not secure_defaults and not any(f.startswith("--admin_token_file") for f in flags):
            flags = flags + ("--insecure_open_model_control",)
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            [os.path.join(BIN, "dino-server"), "--model_repository=" + repository, "--port=0",
             "--repository_poll_seconds=0.3", "--threads=2"] +
            ([] if any(f.startswith("--metrics_port") for f in flags) else ["--metrics_port=-1"]) +
            list(flags),
            stdout=subprocess.PIPE, stderr=self.log, text=True,
            env=dict(os.environ, **(env or {})))
        self.metrics_url = None
        for line in self.process.stdout:
            metrics = re.search(r"metrics on (http://\S+)", line)
            if metrics:
                self.metrics_url = metrics.group(1)
            match = re.search(r"listening on .*:(\d+)", line)
            if match:
                self.port = int(match.group(1))
                break
        else:
            raise RuntimeError("dino-server did not start: " + self.stderr())
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}", options=[
            ("grpc.max_send_message_length", 1 << 28),
            ("grpc.max_receive_message_length", 1 << 28)])
        self.surrogate = surrogate_pb2_grpc.SurrogateStub(self.channel)
        self.training = training_pb2_grpc.TrainingStub(self.channel)
        self.admin = training_pb2_grpc.ModelAdminStub(self.channel)

    def stderr(self):
        with open(self.log.name) as f:
            return f.read()

    def wait_for_stderr(self, text, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if text in self.stderr():
                return
            time.sleep(0.05)
        raise AssertionError(f"'{text}' not seen on stderr:\n{self.stderr()}")

    def close(self):
        self.channel.close()
        self.process.stdout.close()
        self.log.close()
        os.unlink(self.log.name)

    def kill9(self):
        self.process.kill()
        self.process.wait()
        self.close()

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            code = self.process.wait(timeout=120)
            assert code == 0, self.stderr()
        self.close()


def versions(server, metadata=None):
    listing = server.surrogate.ListModels(surrogate_pb2.ListModelsRequest(), metadata=metadata)
    for model in listing.models:
        if model.name == MODEL:
            return ([v.version for v in model.versions],
                    [v.version for v in model.versions if v.is_default][0])
    return [], 0


def models_loaded_gauge(server):
    with urllib.request.urlopen(server.metrics_url, timeout=10) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith("dino_models_loaded "):
                return float(line.split()[1])
    raise AssertionError("dino_models_loaded is not on /metrics")


def watch(server, job_id, metadata=None):
    last = None
    for status in server.training.WatchJob(training_pb2.WatchJobRequest(job_id=job_id),
                                           metadata=metadata, timeout=600):
        last = status
    return last


def evaluate(server, m, version=0, metadata=None):
    reply = server.surrogate.Evaluate(surrogate_pb2.EvaluateRequest(
        model=surrogate_pb2.ModelRef(name=MODEL, version=version), m=wire(m)),
        metadata=metadata, timeout=30)
    return reply


class FineTuneTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.work = tempfile.mkdtemp(prefix="dino_finetune_")
        base_data, tune_data = os.path.join(cls.work, "base"), os.path.join(cls.work, "tune")
        common = ["--problem", "poisson", "--mesh", str(MESH), "--jacobian", "svd", "--rank",
                  "20", "--threads", "2", "--progress", "none"]
        run("dino-train", "generate", "--samples", "256", "--seed", "1", "--out", base_data,
            *common)
        run("dino-train", "generate", "--samples", "240", "--seed", "3", "--out", tune_data,
            *common)
        run("dino-train", "bases", "--data", base_data, "--input-rank", "16", "--output-rank",
            "16", "--threads", "2")
        # The base: trained on outputs only (L2), as a model fitted without derivative data.
        cls.base_model = os.path.join(cls.work, "base_model.pt")
        run("dino-train", "fit", "--data", base_data, "--architecture", "dipnet", "--loss", "l2",
            "--hidden", "32,32", "--dtype", "fp64", "--epochs", "60", "--batch-size", "16",
            "--threads", "1", "--progress", "none", "--out", cls.base_model)
        cls.data = load_data(tune_data)
        cls.token_file = os.path.join(cls.work, "token")
        with open(cls.token_file, "w") as f:
            f.write(TOKEN + "\n")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.work, ignore_errors=True)

    def fresh_repository(self):
        repository = tempfile.mkdtemp(prefix="repo_", dir=self.work)
        os.makedirs(os.path.join(repository, MODEL, "1"))
        shutil.copy(self.base_model, os.path.join(repository, MODEL, "1", "model.pt"))
        return repository

    def start(self, server, *uploads, metadata=None):
        def stream():
            for upload in uploads:
                yield from upload
        return server.training.StartFineTune(stream(), metadata=metadata, timeout=600)

    # -- the fine-tune itself, the gate, lineage, swap under load ---------------------------

    def test_h1_fine_tune_raises_h1_accuracy_publishes_and_gate_rejects_poison(self):
        repository = self.fresh_repository()
        server = Server(repository, "--metrics_port=0")
        try:
            self.assertEqual(versions(server), ([1], 1))
            m_probe = self.data["m"][:4]
            # Inference under load throughout: every request must succeed.
            failures, calls, stop = [], [0], threading.Event()

            def load():
                while not stop.is_set():
                    try:
                        evaluate(server, m_probe)
                        calls[0] += 1
                    except grpc.RpcError as e:  # pragma: no cover - reported below
                        failures.append(f"{e.code()}: {e.details()}")
            workers = [threading.Thread(target=load) for _ in range(3)]
            for w in workers:
                w.start()

            reply = self.start(server, [config(epochs=40, validation_fraction=0.25)],
                               batches(self.data, count=200))
            self.assertTrue(reply.job_id)
            status = watch(server, reply.job_id)
            self.assertEqual(status.state, training_pb2.SUCCEEDED, status.message)
            self.assertEqual(status.new_version, 2)
            self.assertEqual(status.train_samples, 150)
            self.assertEqual(status.validation_samples, 50)
            base_h1, new_h1 = status.base_validation.h1, status.validation.h1
            print(f"\nfine-tune H1: validation H1 accuracy {base_h1:.4f} -> {new_h1:.4f}, "
                  f"L2 {status.base_validation.l2:.4f} -> {status.validation.l2:.4f}",
                  file=sys.stderr)
            self.assertGreater(new_h1, base_h1 + 0.1)
            # Under the default policy (latest 1) version 1 made way for version 2, while the
            # requests kept running (none failed, checked below).
            self.assertEqual(versions(server), ([2], 2))
            self.assertEqual(models_loaded_gauge(server), 1)
            info = server.surrogate.GetModelInfo(surrogate_pb2.GetModelInfoRequest(
                model=surrogate_pb2.ModelRef(name=MODEL)))
            self.assertEqual(info.version, 2)
            metadata = json.loads(info.metadata_json)
            self.assertEqual(metadata["parent"], {"model": MODEL, "version": 1})
            self.assertEqual(metadata["fine_tune"]["job_id"], reply.job_id)
            self.assertEqual(metadata["fine_tune"]["loss"], "h1")
            self.assertAlmostEqual(metadata["fine_tune"]["gate"]["new"], new_h1)
            self.assertIn("validation", metadata["metrics"])
            self.assertIn("finished_unix_seconds", metadata["fine_tune"])
            # dino-train fit recorded the data's problem, which the published version keeps:
            # the server serves that problem's prior for it.
            self.assertEqual(metadata["problem"], {"name": "poisson", "mesh_cells": MESH})
            self.assertTrue(info.has_prior)
            # The default answers with the new weights.
            self.assertEqual(evaluate(server, m_probe).version, 2)

            # Poisoned training data (q x 10) with clean validation samples: rejected. (The
            # gate can only be as trustworthy as the validation samples it is given.)
            poisoned = dict(self.data, q=self.data["q"] * 10.0)
            reply = self.start(server, [config(epochs=20, learning_rate=3e-3,
                                               metric=training_pb2.L2_ACCURACY)],
                               batches(poisoned, count=160),
                               batches(self.data, first=160, count=80, validation=True))
            status = watch(server, reply.job_id)
            self.assertEqual(status.state, training_pb2.REJECTED, status.message)
            self.assertIn("validation gate", status.message)
            self.assertLess(status.validation.l2, status.base_validation.l2 - 0.1)
            self.assertEqual(status.new_version, 0)
            self.assertEqual(versions(server), ([2], 2))
            self.assertFalse(os.path.exists(os.path.join(repository, MODEL, "3")))

            # A second accepted fine-tune (gate on L2 with a tolerance) while under load.
            reply = self.start(server, [config(loss=training_pb2.L2, epochs=5,
                                               metric=training_pb2.L2_ACCURACY,
                                               max_regression=0.05)],
                               batches(self.data, count=120))
            status = watch(server, reply.job_id)
            self.assertEqual(status.state, training_pb2.SUCCEEDED, status.message)
            self.assertEqual(versions(server), ([3], 3))
            self.assertEqual(models_loaded_gauge(server), 1)
            time.sleep(0.5)
            stop.set()
            for w in workers:
                w.join()
            self.assertEqual(failures, [])
            self.assertGreater(calls[0], 10)
            jobs = server.training.ListJobs(training_pb2.ListJobsRequest()).jobs
            self.assertEqual([j.state for j in jobs],
                             [training_pb2.SUCCEEDED, training_pb2.REJECTED,
                              training_pb2.SUCCEEDED])
            # The training metrics.
            with urllib.request.urlopen(server.metrics_url, timeout=10) as reply:
                text = reply.read().decode()
            samples = {}
            for line in text.splitlines():
                if line and not line.startswith("#"):
                    name, value = line.rsplit(" ", 1)
                    samples[name] = float(value)
            self.assertEqual(samples['dino_training_jobs{state="succeeded"}'], 2)
            self.assertEqual(samples['dino_training_jobs{state="rejected"}'], 1)
            self.assertEqual(samples['dino_training_jobs{state="training"}'], 0)
            self.assertEqual(samples[f'dino_training_samples_received_total{{model="{MODEL}"}}'],
                             200 + 240 + 120)
            self.assertEqual(samples["dino_training_epoch_seconds_count"], 40 + 20 + 5)
            self.assertIn(f'dino_training_validation_accuracy{{metric="h1",model="{MODEL}"}}',
                          samples)
        finally:
            server.stop()

    # -- bad input, cancel, disconnect, caps -------------------------------------------------

    def test_bad_input_cancel_disconnect_and_job_cap(self):
        repository = self.fresh_repository()
        server = Server(repository, "--max_training_jobs=1", "--max_samples_per_job=500")
        try:
            # A NaN in the second batch names its job-wide sample index.
            bad = dict(self.data, m=self.data["m"].copy())
            bad["m"][37, 5] = np.nan
            with self.assertRaises(grpc.RpcError) as e:
                self.start(server, [config()], batches(bad, count=64))
            self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
            self.assertIn("sample 37", e.exception.details())
            self.assertIn("samples.m", e.exception.details())
            # Wrong d_M names the field and the expected shape.
            wrong = dict(self.data, m=self.data["m"][:, :-1])
            with self.assertRaises(grpc.RpcError) as e:
                self.start(server, [config()], batches(wrong, count=8))
            self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
            self.assertIn("samples.m must have shape [b, d_M]", e.exception.details())
            # The config must come first; unknown models are NOT_FOUND.
            with self.assertRaises(grpc.RpcError) as e:
                self.start(server, batches(self.data, count=8))
            self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
            unknown = config()
            unknown.config.base.name = "nope"
            with self.assertRaises(grpc.RpcError) as e:
                self.start(server, [unknown])
            self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
            # H1 without Jacobians is refused when the upload completes.
            no_jacobian = [training_pb2.FineTuneUpload(samples=training_pb2.SampleBatch(
                m=wire(self.data["m"][:20]), q=wire(self.data["q"][:20])))]
            with self.assertRaises(grpc.RpcError) as e:
                self.start(server, [config()], no_jacobian)
            self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
            self.assertIn("needs Jacobian data", e.exception.details())
            # The per-job sample cap.
            with self.assertRaises(grpc.RpcError) as e:
                self.start(server, [config()], batches(self.data, count=240),
                           batches(self.data, count=240), batches(self.data, count=240))
            self.assertEqual(e.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)

            # Disconnect: an upload that never completes, then the client goes away.
            release = threading.Event()

            def stalled():
                yield config()
                yield from batches(self.data, count=64)
                release.wait(60)
            future = server.training.StartFineTune.future(stalled(), timeout=120)
            deadline = time.time() + 30
            while time.time() < deadline:
                jobs = server.training.ListJobs(training_pb2.ListJobsRequest()).jobs
                if jobs and jobs[-1].state == training_pb2.RECEIVING and \
                        jobs[-1].samples_received == 64:
                    break
                time.sleep(0.05)
            stalled_id = jobs[-1].job_id
            # Meanwhile the one job slot is taken.
            with self.assertRaises(grpc.RpcError) as e:
                self.start(server, [config()], batches(self.data, count=8))
            self.assertEqual(e.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
            future.cancel()
            release.set()
            status = watch(server, stalled_id)
            self.assertEqual(status.state, training_pb2.CANCELLED)
            self.assertIn("went away", status.message)

            # Cancel while training: nothing is published.
            reply = self.start(server, [config(epochs=5000)], batches(self.data, count=200))
            deadline = time.time() + 60
            while server.training.GetJob(training_pb2.GetJobRequest(
                    job_id=reply.job_id)).epoch < 1 and time.time() < deadline:
                time.sleep(0.05)
            cancelled = server.training.CancelJob(training_pb2.CancelJobRequest(
                job_id=reply.job_id))
            self.assertNotIn(cancelled.state, {training_pb2.SUCCEEDED, training_pb2.REJECTED})
            status = watch(server, reply.job_id)
            self.assertEqual(status.state, training_pb2.CANCELLED)
            self.assertEqual(versions(server), ([1], 1))
            with self.assertRaises(grpc.RpcError) as e:
                server.training.GetJob(training_pb2.GetJobRequest(job_id="ft-unknown"))
            self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
            self.assertEqual(sorted(os.listdir(os.path.join(repository, MODEL))), ["1"])
        finally:
            server.stop()

    # -- management RPCs and auth ------------------------------------------------------------

    def test_auth_and_model_admin(self):
        repository = self.fresh_repository()
        shutil.copytree(os.path.join(repository, MODEL, "1"), os.path.join(repository, MODEL, "2"))
        good = [("authorization", "Bearer " + TOKEN)]
        server = Server(repository, "--admin_token_file=" + self.token_file)
        try:
            for metadata, fragment in ((None, "needs the metadata"),
                                       ([("authorization", "Bearer nope")], "not valid"),
                                       ([("authorization", TOKEN)], "Bearer <token>")):
                for call in (lambda: server.training.ListJobs(training_pb2.ListJobsRequest(),
                                                              metadata=metadata),
                             lambda: server.admin.SetDefaultVersion(
                                 training_pb2.SetDefaultVersionRequest(name=MODEL, version=1),
                                 metadata=metadata),
                             lambda: self.start(server, [config()], metadata=metadata)):
                    with self.assertRaises(grpc.RpcError) as e:
                        call()
                    self.assertEqual(e.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
                    self.assertIn(fragment, e.exception.details())
            # Inference stays open. The default policy keeps only the latest version.
            self.assertEqual(versions(server), ([2], 2))
            self.assertEqual(evaluate(server, self.data["m"][:2]).version, 2)
            # With the token: pin version 1 (loaded for the pin), unload 2 (persisted), pin 2
            # again (which brings it back).
            server.admin.SetDefaultVersion(
                training_pb2.SetDefaultVersionRequest(name=MODEL, version=1), metadata=good)
            self.assertEqual(versions(server), ([1, 2], 1))
            self.assertEqual(evaluate(server, self.data["m"][:2]).version, 1)
            with self.assertRaises(grpc.RpcError) as e:
                server.admin.UnloadVersion(
                    training_pb2.UnloadVersionRequest(name=MODEL, version=1), metadata=good)
            self.assertEqual(e.exception.code(), grpc.StatusCode.FAILED_PRECONDITION)
            self.assertIn("pinned default version", e.exception.details())
            server.admin.UnloadVersion(training_pb2.UnloadVersionRequest(name=MODEL, version=2),
                                       metadata=good)
            self.assertEqual(versions(server), ([1], 1))
            with open(os.path.join(repository, MODEL, "config.json")) as f:
                on_disk = json.load(f)
            self.assertEqual((on_disk["default_version"], on_disk["unloaded_versions"]), (1, [2]))
            with self.assertRaises(grpc.RpcError) as e:
                server.admin.UnloadVersion(
                    training_pb2.UnloadVersionRequest(name=MODEL, version=7), metadata=good)
            self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
            with self.assertRaises(grpc.RpcError) as e:
                server.admin.SetDefaultVersion(
                    training_pb2.SetDefaultVersionRequest(name=MODEL, version=7), metadata=good)
            self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
            self.assertIn("has no version 7 in the repository", e.exception.details())
            # A label keeps its version loaded; version 0 removes it.
            server.admin.SetVersionLabel(
                training_pb2.SetVersionLabelRequest(name=MODEL, label="stable", version=2),
                metadata=good)
            self.assertEqual(versions(server), ([1, 2], 1))
            with self.assertRaises(grpc.RpcError) as e:
                server.admin.SetVersionLabel(
                    training_pb2.SetVersionLabelRequest(name=MODEL, label="2nd", version=2),
                    metadata=good)
            self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
            # Labelling version 2 took it off the unloaded list, so once the label is gone it
            # stays loaded as the latest version.
            server.admin.SetVersionLabel(
                training_pb2.SetVersionLabelRequest(name=MODEL, label="stable", version=0),
                metadata=good)
            self.assertEqual(versions(server), ([1, 2], 1))
            server.admin.UnloadVersion(training_pb2.UnloadVersionRequest(name=MODEL, version=2),
                                       metadata=good)
            self.assertEqual(versions(server), ([1], 1))
            self.assertEqual(len(server.training.ListJobs(training_pb2.ListJobsRequest(),
                                                          metadata=good).jobs), 0)
        finally:
            server.stop()
        # Inference can require the token too.
        server = Server(repository, "--admin_token_file=" + self.token_file,
                        "--require_token_for_inference")
        try:
            with self.assertRaises(grpc.RpcError) as e:
                evaluate(server, self.data["m"][:2])
            self.assertEqual(e.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
            with self.assertRaises(grpc.RpcError) as e:
                versions(server)
            self.assertEqual(e.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
            # The pin survived the restart.
            self.assertEqual(versions(server, metadata=good), ([1], 1))
            self.assertEqual(evaluate(server, self.data["m"][:2], metadata=good).version, 1)
        finally:
            server.stop()

    # -- secure defaults and the trusted validation set --------------------------------------

    def test_model_control_is_off_by_default_and_the_trusted_set_stops_full_poisoning(self):
        repository = self.fresh_repository()
        server = Server(repository, secure_defaults=True)
        try:
            refused = [
                lambda: self.start(server, [config(epochs=1)], batches(self.data, count=32)),
                lambda: server.admin.SetDefaultVersion(
                    training_pb2.SetDefaultVersionRequest(name=MODEL, version=1)),
                lambda: server.admin.UnloadVersion(
                    training_pb2.UnloadVersionRequest(name=MODEL, version=1))]
            for call in refused:
                with self.assertRaises(grpc.RpcError) as e:
                    call()
                self.assertEqual(e.exception.code(), grpc.StatusCode.PERMISSION_DENIED)
                self.assertIn("--admin_token_file", e.exception.details())
            self.assertEqual(versions(server), ([1], 1))  # Inference stays open.
        finally:
            server.stop()

        # The operator's trusted validation set: samples no client upload below contains.
        run("dino-train", "trusted-set", "--data", os.path.join(self.work, "tune"), "--first",
            "200", "--count", "40", "--repository", repository, "--name", MODEL)
        self.assertTrue(os.path.exists(
            os.path.join(repository, MODEL, "trusted_validation", "mq_data.npz")))
        good = (("authorization", "Bearer " + TOKEN),)
        server = Server(repository, "--admin_token_file=" + self.token_file)
        try:
            # Training *and* validation samples poisoned (q x 10): the client's own gate is
            # fooled (the new weights fit its validation samples better), the trusted set is not.
            poisoned = dict(self.data, q=self.data["q"] * 10.0)
            reply = self.start(server, [config(loss=training_pb2.L2, epochs=20,
                                               learning_rate=3e-3,
                                               metric=training_pb2.L2_ACCURACY)],
                               batches(poisoned, count=160),
                               batches(poisoned, first=160, count=40, validation=True),
                               metadata=good)
            status = watch(server, reply.job_id, metadata=good)
            self.assertEqual(status.state, training_pb2.REJECTED, status.message)
            self.assertIn("rejected by the trusted validation set", status.message)
            self.assertGreater(status.validation.l2, status.base_validation.l2)
            self.assertEqual(status.new_version, 0)
            self.assertEqual(versions(server), ([1], 1))
            self.assertFalse(os.path.exists(os.path.join(repository, MODEL, "2")))
            self.assertEqual(evaluate(server, self.data["m"][:2]).version, 1)

            # Honest samples pass both gates; the trusted comparison is in the lineage.
            reply = self.start(server, [config(loss=training_pb2.L2, epochs=5,
                                               metric=training_pb2.L2_ACCURACY,
                                               max_regression=0.05)],
                               batches(self.data, count=120), metadata=good)
            status = watch(server, reply.job_id, metadata=good)
            self.assertEqual(status.state, training_pb2.SUCCEEDED, status.message)
            self.assertIn("trusted validation set (40 samples)", status.message)
            info = server.surrogate.GetModelInfo(surrogate_pb2.GetModelInfoRequest(
                model=surrogate_pb2.ModelRef(name=MODEL)))
            trusted = json.loads(info.metadata_json)["fine_tune"]["gate"]["trusted"]
            self.assertEqual(trusted["samples"], 40)
            self.assertGreaterEqual(trusted["new"], trusted["base"] - 0.05)
        finally:
            server.stop()

    # -- the publish rule: a fine-tune never moves an operator's pin -------------------------

    def test_pin_survives_a_publish_and_a_restart_and_the_gauge_follows(self):
        repository = self.fresh_repository()
        server = Server(repository, "--metrics_port=0")
        try:
            server.admin.SetDefaultVersion(
                training_pb2.SetDefaultVersionRequest(name=MODEL, version=1))
            self.assertEqual(versions(server), ([1], 1))
            self.assertEqual(models_loaded_gauge(server), 1)
            reply = self.start(server, [config(loss=training_pb2.L2, epochs=3,
                                               metric=training_pb2.L2_ACCURACY,
                                               max_regression=0.05)],
                               batches(self.data, count=120))
            status = watch(server, reply.job_id)
            self.assertEqual(status.state, training_pb2.SUCCEEDED, status.message)
            self.assertEqual(status.new_version, 2)
            self.assertIn("the default stays the pinned version 1", status.message)
            # The pin stays; the new version is loaded as the newest and serves by number.
            self.assertEqual(versions(server), ([1, 2], 1))
            self.assertEqual(models_loaded_gauge(server), 2)
            self.assertEqual(evaluate(server, self.data["m"][:2]).version, 1)
            self.assertEqual(evaluate(server, self.data["m"][:2], version=2).version, 2)
        finally:
            server.stop()
        server = Server(repository, "--metrics_port=0")  # A restart.
        try:
            self.assertEqual(versions(server), ([1, 2], 1))
            self.assertEqual(models_loaded_gauge(server), 2)
            server.admin.SetDefaultVersion(
                training_pb2.SetDefaultVersionRequest(name=MODEL, version=0))
            self.assertEqual(versions(server), ([2], 2))
            self.assertEqual(models_loaded_gauge(server), 1)
        finally:
            server.stop()

    # -- the clients: `dino finetune` and the Python example -----------------------------------

    def test_cli_and_python_example_fine_tune_a_real_server(self):
        repository = self.fresh_repository()
        server = Server(repository, "--admin_token_file=" + self.token_file)
        try:
            target = f"127.0.0.1:{server.port}"
            cli = subprocess.run(
                [os.path.join(BIN, "dino"), "finetune", "--server", target, "--model", MODEL,
                 "--data", os.path.join(self.work, "tune"), "--count", "160", "--loss", "h1",
                 "--epochs", "10", "--batch_size", "16", "--chunk", "40", "--json",
                 "--token_file", self.token_file], capture_output=True, text=True, timeout=600)
            self.assertEqual(cli.returncode, 0, cli.stderr)
            final = json.loads(cli.stdout)
            self.assertEqual(final["state"], "SUCCEEDED")
            self.assertEqual(final["new_version"], 2)
            self.assertIn("TRAINING", cli.stderr.upper())
            # Without the token the CLI fails with the server's message.
            cli = subprocess.run(
                [os.path.join(BIN, "dino"), "jobs", "--server", target], capture_output=True,
                text=True, timeout=60)
            self.assertEqual(cli.returncode, 1)
            self.assertIn("UNAUTHENTICATED", cli.stderr)
            example = subprocess.run(
                [sys.executable,
                 os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "client",
                              "python", "finetune_example.py"),
                 "--server", target, "--model", MODEL, "--data", os.path.join(self.work, "tune"),
                 "--loss", "h1", "--epochs", "5", "--token_file", self.token_file,
                 "--gen_dir", GENERATED], capture_output=True, text=True, timeout=600)
            self.assertEqual(example.returncode, 0, example.stdout + example.stderr)
            self.assertEqual(versions(server), ([3], 3))
        finally:
            server.stop()

    # -- kill -9 -----------------------------------------------------------------------------

    def kill_and_restart(self, failpoint=None, during_training=False):
        repository = self.fresh_repository()
        env = {"DINO_FAILPOINT": failpoint} if failpoint else None
        server = Server(repository, env=env)
        try:
            reply = self.start(server, [config(epochs=5000 if during_training else 3)],
                               batches(self.data, count=120))
            if during_training:
                deadline = time.time() + 60
                while server.training.GetJob(training_pb2.GetJobRequest(
                        job_id=reply.job_id)).epoch < 2 and time.time() < deadline:
                    time.sleep(0.05)
            else:
                server.wait_for_stderr(f"failpoint {failpoint} reached")
        finally:
            server.kill9()  # Also when the test failed: no server outlives it.
        restarted = Server(repository)
        try:
            listed = versions(restarted)
            reply = evaluate(restarted, self.data["m"][:3])
            self.assertEqual(reply.version, listed[1])
            return repository, listed
        finally:
            restarted.stop()

    def test_kill9_during_training_keeps_the_last_version(self):
        _, listed = self.kill_and_restart(during_training=True)
        self.assertEqual(listed, ([1], 1))

    def test_kill9_before_the_rename_keeps_the_last_version(self):
        repository, listed = self.kill_and_restart("publish.before_rename")
        self.assertEqual(listed, ([1], 1))
        # The half-published version is a folder without model.pt: ignored.
        leftovers = os.listdir(os.path.join(repository, MODEL, "2"))
        self.assertNotIn("model.pt", leftovers)

    def test_kill9_after_the_rename_serves_the_published_version(self):
        _, listed = self.kill_and_restart("publish.after_rename")
        self.assertEqual(listed, ([2], 2))


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1], verbosity=2)
