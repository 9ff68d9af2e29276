#!/usr/bin/python3
"""dino-server scraped by a real Prometheus, the alerts loaded, every dashboard query run.

Starts dino-server on a scratch repository (the bundled poisson_dipnet plus a tiny DIPNet from
dino-build-model) and Prometheus (Debian's 2.42) with deploy/prometheus/prometheus.yml turned
into a test config: scrape every second, the target the server's free metrics port, alerts.yml
by absolute path. Runs one fine-tune of the tiny model (its gate may accept or reject), then
Evaluate, ReducedJacobian and bad requests from several threads. Then, through Prometheus'
HTTP API only:
  * dino_requests_total by method and code equals what the clients were answered;
  * histogram_quantile over dino_request_latency_seconds_bucket is a plausible latency;
  * the queue and batch series counted the requests; in-flight and queue depth are back to 0;
  * dino_training_jobs has every state (exported at 0 from the start), one final job;
    validation accuracies of the tiny model are there; the process_* series are there;
  * every alert of alerts.yml is loaded and evaluates without error, none is firing;
  * every panel query of deploy/grafana/dino-serve.json (Grafana variables substituted)
    returns status success and data.

usage: prometheus_e2e_test.py <folder with dino-server, dino-build-model> <generated Python
       code> <source root> <prometheus binary>
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse
import urllib.request

import numpy as np
import yaml

BIN, GENERATED, SOURCE, PROMETHEUS = sys.argv[1:5]
sys.path.insert(0, GENERATED)

import grpc  # noqa: E402
from dino.v1 import surrogate_pb2, surrogate_pb2_grpc  # noqa: E402
from dino.v1 import training_pb2, training_pb2_grpc  # noqa: E402

BUNDLED = "poisson_dipnet"
TINY = "tiny"
TINY_DIMS = dict(input_dim=20, output_dim=5, input_rank=4, output_rank=3)
ALERTS = os.path.join(SOURCE, "deploy", "prometheus", "alerts.yml")
# What the panels' Grafana variables stand for here: every replica, and a rate window of
# 5 scrapes (Grafana's $__rate_interval is at least 4 scrape intervals).
RATE_WINDOW = "5s"
GRAFANA_VARIABLES = {"$__rate_interval": RATE_WINDOW, "$__interval": "1s", "$__range": "1m",
                     "$instance": ".*"}
TRAFFIC_SECONDS = 6.0
CLIENT_THREADS = 6  # Against --threads=2: requests queue and batch.


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wire(array):
    array = np.ascontiguousarray(array, dtype="<f8")
    return surrogate_pb2.Tensor(shape=list(array.shape), dtype=surrogate_pb2.FP64,
                                data=array.tobytes())


def http_json(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return json.loads(reply.read().decode())


class PrometheusEndToEndTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.processes = []
        cls.work = tempfile.mkdtemp(prefix="dino_prometheus_")
        try:
            cls.start_everything()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def start_everything(cls):
        repository = os.path.join(cls.work, "repository")
        shutil.copytree(os.path.join(SOURCE, "models", "repository", BUNDLED),
                        os.path.join(repository, BUNDLED))
        subprocess.run(
            [os.path.join(BIN, "dino-build-model"), "--repository=" + repository,
             "--name=" + TINY, "--version=1", "--architecture=dipnet", "--hidden=8,8",
             "--seed=1"] + [f"--{k}={v}" for k, v in TINY_DIMS.items()],
            check=True, stdout=subprocess.DEVNULL)

        metrics_port = free_port()
        cls.server_log = open(os.path.join(cls.work, "server.log"), "w+")
        server = subprocess.Popen(
            [os.path.join(BIN, "dino-server"), "--model_repository=" + repository, "--port=0",
             f"--metrics_port={metrics_port}", "--host=127.0.0.1", "--threads=2",
             "--insecure_open_model_control"],
            stdout=subprocess.PIPE, stderr=cls.server_log, text=True)
        cls.processes.append(server)
        for line in server.stdout:
            match = re.search(r"listening on .*:(\d+)", line)
            if match:
                grpc_port = int(match.group(1))
                break
        else:
            raise RuntimeError("dino-server did not start:\n" + cls.log(cls.server_log))
        # Keep draining stdout so the server never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in server.stdout], daemon=True).start()
        cls.channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        cls.surrogate = surrogate_pb2_grpc.SurrogateStub(cls.channel)
        cls.training = training_pb2_grpc.TrainingStub(cls.channel)

        # The deployed prometheus.yml, pointed at this server and scraping every second.
        with open(os.path.join(SOURCE, "deploy", "prometheus", "prometheus.yml")) as f:
            config = yaml.safe_load(f)
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        config["rule_files"] = [ALERTS]
        config["scrape_configs"][0]["static_configs"] = [
            {"targets": [f"127.0.0.1:{metrics_port}"]}]
        cls.job = config["scrape_configs"][0]["job_name"]
        config_path = os.path.join(cls.work, "prometheus.yml")
        with open(config_path, "w") as f:
            yaml.safe_dump(config, f)
        cls.prometheus_url = f"http://127.0.0.1:{free_port()}"
        cls.prometheus_log = open(os.path.join(cls.work, "prometheus.log"), "w+")
        cls.processes.append(subprocess.Popen(
            [PROMETHEUS, "--config.file=" + config_path,
             "--storage.tsdb.path=" + os.path.join(cls.work, "tsdb"),
             "--web.listen-address=" + cls.prometheus_url[len("http://"):]],
            stdout=cls.prometheus_log, stderr=subprocess.STDOUT))
        deadline = time.time() + 30
        while True:
            try:
                with urllib.request.urlopen(cls.prometheus_url + "/-/ready", timeout=1):
                    break
            except OSError:
                if time.time() > deadline or cls.processes[-1].poll() is not None:
                    raise RuntimeError("prometheus did not start:\n" +
                                       cls.log(cls.prometheus_log))
                time.sleep(0.1)

        # Prometheus applies new targets a few seconds after start (its discovery updates are
        # throttled): wait for the first scrape, so that the traffic is all recorded.
        cls.wait_for_scrape_after(0, timeout=30)

        cls.job_state = cls.fine_tune()
        cls.answered = cls.drive_traffic()
        # Queries for rates are made at a moment inside the traffic; counters are read after
        # it, once Prometheus has scraped the final values.
        cls.during_traffic = time.time() - 1.0
        print(f"fine-tune: {training_pb2.JobState.Name(cls.job_state.state)}; answered: "
              + ", ".join(f"{m} {c} {n}" for (m, c), n in sorted(cls.answered.items())),
              file=sys.stderr)
        cls.wait_for_scrape_after(time.time())

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "channel", None) is not None:
            cls.channel.close()
        for process in reversed(cls.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        for log in ("server_log", "prometheus_log"):
            if getattr(cls, log, None) is not None:
                getattr(cls, log).close()
        shutil.rmtree(cls.work, ignore_errors=True)

    @staticmethod
    def log(file):
        file.flush()
        file.seek(0)
        return file.read()[-4000:]

    # -- driving the server ----------------------------------------------------------------

    @classmethod
    def fine_tune(cls):
        rng = np.random.default_rng(5)
        m = rng.standard_normal((64, TINY_DIMS["input_dim"]))
        q = rng.standard_normal((64, TINY_DIMS["output_dim"]))
        config = training_pb2.FineTuneUpload(config=training_pb2.FineTuneConfig(
            base=surrogate_pb2.ModelRef(name=TINY), loss=training_pb2.L2, epochs=3,
            batch_size=16, seed=3))
        samples = training_pb2.FineTuneUpload(
            samples=training_pb2.SampleBatch(m=wire(m), q=wire(q)))
        started = cls.training.StartFineTune(iter([config, samples]), timeout=60)
        last = None
        for status in cls.training.WatchJob(
                training_pb2.WatchJobRequest(job_id=started.job_id), timeout=60):
            last = status
        return last

    @classmethod
    def drive_traffic(cls):
        """Several client threads for TRAFFIC_SECONDS; returns {(method, code name): count}."""
        answered = {}
        lock = threading.Lock()
        info = cls.surrogate.GetModelInfo(surrogate_pb2.GetModelInfoRequest(
            model=surrogate_pb2.ModelRef(name=BUNDLED)), timeout=30)
        bundled = surrogate_pb2.ModelRef(name=BUNDLED)
        end = time.time() + TRAFFIC_SECONDS

        def client(seed):
            rng = np.random.default_rng(seed)
            calls = [
                ("Evaluate", lambda: cls.surrogate.Evaluate(surrogate_pb2.EvaluateRequest(
                    model=bundled, m=wire(rng.standard_normal((int(rng.integers(1, 9)),
                                                               info.input_dim)))), timeout=30)),
                ("ReducedJacobian", lambda: cls.surrogate.ReducedJacobian(
                    surrogate_pb2.ReducedJacobianRequest(
                        model=bundled, m=wire(rng.standard_normal((2, info.input_dim)))),
                    timeout=30)),
                # INVALID_ARGUMENT: m has the wrong dimension.
                ("Evaluate", lambda: cls.surrogate.Evaluate(surrogate_pb2.EvaluateRequest(
                    model=bundled, m=wire(np.zeros((1, info.input_dim + 1)))), timeout=30)),
                # NOT_FOUND: no such model.
                ("ReducedJacobian", lambda: cls.surrogate.ReducedJacobian(
                    surrogate_pb2.ReducedJacobianRequest(
                        model=surrogate_pb2.ModelRef(name="no_such_model"),
                        m=wire(np.zeros((1, info.input_dim)))), timeout=30)),
            ]
            i = seed
            while time.time() < end:
                # Every tenth call a bad one, alternating between the two kinds.
                method, call = calls[2 + (i // 10) % 2 if i % 10 == 0 else i % 2]
                i += 1
                try:
                    call()
                    code = "OK"
                except grpc.RpcError as error:
                    code = error.code().name
                with lock:
                    answered[(method, code)] = answered.get((method, code), 0) + 1

        threads = [threading.Thread(target=client, args=(s,)) for s in range(CLIENT_THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return answered

    @classmethod
    def wait_for_scrape_after(cls, moment, timeout=15):
        """Waits until Prometheus holds a scrape of the server taken after `moment`."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            result = cls.query(f'timestamp(up{{job="{cls.job}"}})')
            if result and float(result[0]["value"][1]) > moment:
                return
            time.sleep(0.2)
        raise AssertionError(f"no scrape after {moment} within {timeout} s")

    # -- Prometheus' HTTP API ----------------------------------------------------------------

    @classmethod
    def query_reply(cls, expr, at=None):
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        url = cls.prometheus_url + "/api/v1/query?" + urllib.parse.urlencode(params)
        try:
            return http_json(url)
        except urllib.error.HTTPError as error:  # 400 for a query that does not parse.
            return json.loads(error.read().decode())

    @classmethod
    def query(cls, expr, at=None):
        reply = cls.query_reply(expr, at)
        if reply.get("status") != "success":
            raise AssertionError(f"{expr}: {reply}")
        return reply["data"]["result"]

    def values(self, expr, at=None, by=None):
        """{label value of `by` (or ""): float} of an instant vector."""
        return {(sample["metric"].get(by, "") if by else ""): float(sample["value"][1])
                for sample in self.query(expr, at)}

    # -- the checks --------------------------------------------------------------------------

    def test_scrape_target_is_up(self):
        targets = http_json(self.prometheus_url + "/api/v1/targets")["data"]["activeTargets"]
        self.assertEqual([t["health"] for t in targets], ["up"], targets)

    def test_request_counters_equal_what_clients_were_answered(self):
        self.assertGreater(self.answered.get(("Evaluate", "OK"), 0), 20, self.answered)
        self.assertGreater(self.answered.get(("ReducedJacobian", "OK"), 0), 20, self.answered)
        self.assertGreater(self.answered.get(("Evaluate", "INVALID_ARGUMENT"), 0), 0)
        self.assertGreater(self.answered.get(("ReducedJacobian", "NOT_FOUND"), 0), 0)
        served = {}
        for sample in self.query('sum by (method, code) '
                                 '(dino_requests_total{method=~"Evaluate|ReducedJacobian"})'):
            served[(sample["metric"]["method"], sample["metric"]["code"])] = \
                float(sample["value"][1])
        self.assertEqual(served, {k: float(v) for k, v in self.answered.items()})

    def test_latency_quantiles_are_plausible(self):
        for method in ("Evaluate", "ReducedJacobian"):
            for quantile in (0.5, 0.99):
                latency = self.values(
                    f'histogram_quantile({quantile}, sum by (le) (rate('
                    f'dino_request_latency_seconds_bucket{{method="{method}"}}'
                    f'[{RATE_WINDOW}])))', at=self.during_traffic)[""]
                self.assertGreater(latency, 0, (method, quantile))
                self.assertLess(latency, 5.0, (method, quantile))
        p50 = self.values('histogram_quantile(0.5, sum by (le) (rate('
                          f'dino_request_latency_seconds_bucket[{RATE_WINDOW}])))',
                          at=self.during_traffic)[""]
        p99 = self.values('histogram_quantile(0.99, sum by (le) (rate('
                          f'dino_request_latency_seconds_bucket[{RATE_WINDOW}])))',
                          at=self.during_traffic)[""]
        self.assertLessEqual(p50, p99)

    def test_queue_and_batch_series_counted_the_requests(self):
        ok = self.answered[("Evaluate", "OK")] + self.answered[("ReducedJacobian", "OK")]
        # Every request that reached the model waited in its queue (possibly 0 s) once.
        waits = self.values(f'dino_queue_seconds_count{{model="{BUNDLED}"}}')[""]
        self.assertGreaterEqual(waits, ok)
        rows = self.values(f'dino_batch_rows_sum{{model="{BUNDLED}"}}')[""]
        batched_requests = self.values(f'dino_batch_requests_sum{{model="{BUNDLED}"}}')[""]
        self.assertGreaterEqual(batched_requests, ok)
        self.assertGreaterEqual(rows, batched_requests)  # At least one row per request.
        queue_p99 = self.values(
            'histogram_quantile(0.99, sum by (le) (rate(dino_queue_seconds_bucket'
            f'{{model="{BUNDLED}"}}[{RATE_WINDOW}])))', at=self.during_traffic)[""]
        self.assertGreaterEqual(queue_p99, 0)
        self.assertLess(queue_p99, 5.0)
        # Nothing left in a queue or in flight after the traffic.
        self.assertEqual(self.values("dino_queue_depth", by="model")[BUNDLED], 0)
        self.assertEqual(self.values("dino_requests_in_flight", by="model")[BUNDLED], 0)

    def test_training_series(self):
        self.assertIn(self.job_state.state, (training_pb2.SUCCEEDED, training_pb2.REJECTED),
                      self.job_state)
        jobs = self.values("dino_training_jobs", by="state")
        self.assertEqual(set(jobs), {"receiving", "queued", "training", "validating",
                                     "publishing", "succeeded", "rejected", "failed",
                                     "cancelled"})
        final = training_pb2.JobState.Name(self.job_state.state).lower()
        self.assertEqual(jobs[final], 1, jobs)
        self.assertEqual(sum(jobs.values()), 1, jobs)
        accuracies = self.values(f'dino_training_validation_accuracy{{model="{TINY}"}}',
                                 by="metric")
        self.assertIn("l2", accuracies)
        self.assertGreater(self.values(f'dino_training_samples_received_total{{model="{TINY}"}}')
                           [""], 63)
        self.assertGreaterEqual(self.values("dino_training_epoch_seconds_count")[""], 1)

    def test_process_series(self):
        process = {name: self.values(f'{name}{{job="{self.job}"}}')[""] for name in (
            "process_cpu_seconds_total", "process_resident_memory_bytes",
            "process_virtual_memory_bytes", "process_open_fds", "process_max_fds",
            "process_threads", "process_start_time_seconds")}
        self.assertGreater(process["process_cpu_seconds_total"], 0.1)  # Loading and serving.
        self.assertGreater(process["process_resident_memory_bytes"], 20 << 20)
        self.assertGreater(process["process_virtual_memory_bytes"],
                           process["process_resident_memory_bytes"])
        self.assertGreater(process["process_threads"], 2)
        self.assertGreater(process["process_open_fds"], 3)
        self.assertGreater(process["process_max_fds"], process["process_open_fds"])
        self.assertLess(abs(process["process_start_time_seconds"] - time.time()), 120)
        cpu_rate = self.values(
            f'rate(process_cpu_seconds_total{{job="{self.job}"}}[{RATE_WINDOW}])',
            at=self.during_traffic)[""]
        self.assertGreater(cpu_rate, 0.05)  # The server was busy serving.

    def test_every_alert_is_loaded_evaluates_and_none_fires(self):
        with open(ALERTS) as f:
            expected = {rule["alert"] for group in yaml.safe_load(f)["groups"]
                        for rule in group["rules"]}
        deadline = time.time() + 10
        while True:  # Until each rule has been evaluated (never: year 0001).
            groups = http_json(self.prometheus_url + "/api/v1/rules")["data"]["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            evaluated = all(not rule["lastEvaluation"].startswith("0001") for rule in rules)
            if evaluated or time.time() > deadline:
                break
            time.sleep(0.5)
        self.assertTrue(evaluated, rules)
        self.assertEqual({rule["name"] for rule in rules}, expected)
        for rule in rules:
            self.assertEqual(rule["health"], "ok", rule)
            self.assertEqual(rule["state"], "inactive", rule)

    def test_every_dashboard_panel_query_returns_data(self):
        with open(os.path.join(SOURCE, "deploy", "grafana", "dino-serve.json")) as f:
            dashboard = json.load(f)
        checked = 0
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                # Longest names first: $__rate_interval before $__interval.
                for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
                    expr = expr.replace(name, GRAFANA_VARIABLES[name])
                self.assertNotIn("$", expr, f"unsubstituted variable in {target['expr']}")
                with self.subTest(panel=panel["title"], ref=target["refId"]):
                    reply = self.query_reply(expr, at=self.during_traffic)
                    self.assertEqual(reply.get("status"), "success", (expr, reply))
                    self.assertTrue(reply["data"]["result"], f"no data: {expr}")
                checked += 1
        self.assertGreaterEqual(checked, len(dashboard["panels"]))


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1], verbosity=2)
