#!/usr/bin/python3
"""Soak and crash loop of dino-server: long mixed overload with publishes and version swaps,
then kill -9 at random moments and restarts.

Stages (each writes its result into --out and is skipped when it is already there, so an
interrupted run resumes; delete a stage's file to redo it):

  models      dino-train generates Poisson data (--mesh) and fits version 1 of "poisson"
              (DIPNet, fp64: fine-tuned, published and swapped during the soak) and
              "poisson32" (the same in fp32, static).
  saturation  closed-loop mixed traffic for --saturation_seconds: the throughput at which
              the server is saturated (successful requests/s).
  soak        --duration seconds of open-loop traffic offered at --overload x saturation, from
              --clients processes: Evaluate, Jvp, Vjp, ReducedJacobian; batch sizes 1-64;
              fp32 and fp64 inputs and outputs; the default version, the "stable" label.
              Meanwhile fine-tune jobs (Training service) publish new versions one after
              another, and a swapper pins versions (SetDefaultVersion), unpins and moves the
              label (SetVersionLabel). Every answer is checked against torch on the answering
              version's model.pt (autograd Jacobians, cached per version). Overload refusals
              (RESOURCE_EXHAUSTED) are counted apart from unexpected errors. RSS, open fds,
              threads and CPU of the server (from /proc) and the p99 latency per window are
              recorded and plotted.
  crash       --crash_loops x: start the server on the crash repository, check that it serves
              the last fully published version (and the label the config names), then put it
              under load, start a fine-tune and kill -9 at a random moment of the job (from
              upload to after the publish). No version folder without a complete model.pt may
              be listed, and every model.pt on disk must load.
  report      soak.png, summary.json and summary.md (the results table) in --out; the exit
              code is 0 only if every target holds: no wrong answer, no unexpected error, RSS
              growth < 5 % and no fd or thread growth between two quiescent snapshots (after
              the warm-up and at the end), every crash recovered.

Full run (niced; the machine is shared, so "2x saturation" is relative to what the server
got while measuring):
  nice -n 10 /usr/bin/python3 scripts/soak.py --bin build/bin --gen_dir build/python \\
      --out /tmp/soak
Smoke (about a minute): add --short.
"""
import argparse
import collections
import json
import multiprocessing
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL, MODEL32 = "poisson", "poisson32"
LABEL = "stable"
TOKEN = "soak-admin-token"
METHODS = ("Evaluate", "Jvp", "Vjp", "ReducedJacobian")
BATCH_SIZES = (1, 4, 16, 64)
BATCH_WEIGHTS = (0.4, 0.3, 0.2, 0.1)
# Largest |got - expected| / max|expected| accepted: float64 end to end differs from torch's
# autograd only by summation order; any float32 step (input, output or the model) rounds.
TOLERANCE = {"fp64": 1e-9, "fp32": 2e-5, "model32": 2e-4}
# The bulk of the load: dino-bench processes (C++, cheap per call, so that the server and not
# the client saturates), one per stream, on the versions the swaps never move: poisson/1 (kept
# loaded by the label BENCH_LABEL) and poisson32/1. dino-bench --check compares rows of every
# answer with single-point answers it fetched before the load (a reference computation cached
# per input). The Python traffic (class Traffic) covers the other combinations and the default
# version and label that publishes and swaps move, checked against torch.
BENCH_LABEL = "bench"
STREAMS = (
    {"name": "Evaluate B=64 fp64", "model": MODEL, "method": "evaluate", "batch": 64,
     "k": 1, "dtype": "fp64"},
    {"name": "Jvp B=16 fp32", "model": MODEL, "method": "jvp", "batch": 16, "k": 1,
     "dtype": "fp32"},
    {"name": "Vjp B=1 k=4 fp64", "model": MODEL, "method": "vjp", "batch": 1, "k": 4,
     "dtype": "fp64"},
    {"name": "ReducedJacobian B=4 fp32 (fp32 model)", "model": MODEL32,
     "method": "reduced_jacobian", "batch": 4, "k": 1, "dtype": "fp32"},
)
# The server's refusal of a full queue: the overload answer the soak expects at 2x.
OVERLOAD = re.compile(r"requests queued, its limit \(batching\.max_queue_size")


def stubs(gen_dir):
    sys.path.insert(0, gen_dir)
    sys.path.insert(0, os.path.join(HERE, "..", "client", "python"))
    from dino.v1 import surrogate_pb2, surrogate_pb2_grpc, training_pb2, training_pb2_grpc
    return surrogate_pb2, surrogate_pb2_grpc, training_pb2, training_pb2_grpc


# -- processes: the server and /proc ---------------------------------------------------------

class Server:
    """dino-server on a repository with model control behind a token; stderr to a log."""

    def __init__(self, bin_dir, repository, log_path, extra_flags=()):
        self.log = open(log_path, "a")
        token_file = os.path.join(os.path.dirname(log_path), "admin_token")
        with open(token_file, "w") as f:
            f.write(TOKEN + "\n")
        self.process = subprocess.Popen(
            [os.path.join(bin_dir, "dino-server"), "--model_repository=" + repository,
             "--port=0", "--host=127.0.0.1", "--metrics_port=0",
             "--repository_poll_seconds=1", "--admin_token_file=" + token_file,
             *extra_flags], stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.started = time.time()
        self.metrics_url = None
        for line in self.process.stdout:
            if match := re.search(r"metrics on (http://\S+)", line):
                self.metrics_url = match.group(1)
            match = re.search(r"listening on .*:(\d+)", line)
            if match:
                self.target = "127.0.0.1:" + match.group(1)
                break
        else:
            raise RuntimeError("dino-server did not start, see " + log_path)
        # Keep reading stdout so that the server never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in self.process.stdout], daemon=True).start()
        self.pid = self.process.pid

    def kill9(self):
        self.process.kill()
        self.process.wait()
        self.log.close()

    def stop(self):
        """SIGTERM; the exit code (0: a clean shutdown)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        return self.process.returncode


METRIC_LINE = re.compile(r'^(dino_requests_total|dino_request_latency_seconds_bucket)'
                         r'\{([^}]*)\} (\S+)$')
HEAP_LINE = re.compile(r'^dino_process_heap_(in_use|free)_bytes (\S+)$')


def scrape(url):
    """The server's own count of calls by gRPC code and its latency histogram (time from
    receiving a request to answering it), summed over models, and what its malloc holds (in
    use and free, MiB), from its /metrics."""
    import urllib.request
    codes, buckets, heap = {}, {}, {}
    with urllib.request.urlopen(url, timeout=30) as response:
        for line in response.read().decode().splitlines():
            if match := HEAP_LINE.match(line):
                heap[match.group(1) + "_mib"] = float(match.group(2)) / 2**20
                continue
            match = METRIC_LINE.match(line)
            if not match:
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
            value = float(match.group(3))
            if match.group(1) == "dino_requests_total":
                codes[labels["code"]] = codes.get(labels["code"], 0) + value
            else:
                buckets[labels["le"]] = buckets.get(labels["le"], 0) + value
    return {"codes": codes, "latency_buckets": buckets, "heap": heap}


def server_side(before, after):
    """What the server itself answered between two scrapes: calls by code and the upper
    bound of the latency bucket holding the 99th percentile."""
    codes = {c: after["codes"][c] - before["codes"].get(c, 0) for c in after["codes"]}
    codes = {c: int(n) for c, n in codes.items() if n > 0}
    bounds = sorted(after["latency_buckets"], key=lambda b: float(b))
    counts = [after["latency_buckets"][b] - before["latency_buckets"].get(b, 0) for b in bounds]
    p99 = None
    if counts and counts[-1] > 0:
        p99 = next(float(b) for b, n in zip(bounds, counts) if n >= 0.99 * counts[-1])
    return {"codes": codes, "latency_p99_s_at_most": p99}


def proc_sample(pid):
    """RSS (MiB; with its anonymous and file-backed parts), open fds, threads and CPU seconds
    of a process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return {"rss_mib": int(status["VmRSS"].split()[0]) / 1024.0,
            # Library pages count in RSS once touched (LibTorch's code paths a new batch
            # size or a first fine-tune runs): shared and reclaimable, unlike anonymous memory.
            "rss_anon_mib": int(status["RssAnon"].split()[0]) / 1024.0,
            "rss_file_mib": int(status["RssFile"].split()[0]) / 1024.0,
            "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": int(status["Threads"]),
            "cpu_s": (int(fields[11]) + int(fields[12])) / ticks}


# -- the repository and the reference computation --------------------------------------------

def complete_versions(repository, name):
    """Version numbers whose folder holds model.pt (a publish renames it there last)."""
    folder = os.path.join(repository, name)
    return sorted(int(v) for v in os.listdir(folder)
                  if v.isdigit() and os.path.exists(os.path.join(folder, v, "model.pt")))


def read_config(repository, name):
    path = os.path.join(repository, name, "config.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


class Reference:
    """q and the full Jacobian of every pool point under one model version, by torch autograd
    on that version's model.pt; cached per (model, version)."""

    def __init__(self, repository, pool):
        import torch
        torch.set_num_threads(1)
        self.torch = torch
        self.repository, self.pool = repository, pool
        self.cache, self.lock = collections.OrderedDict(), threading.Lock()

    # Every publish is a new version and each reference holds the pool's full Jacobians
    # (~14 MB at d_M = 1089): keep the versions in use, recompute one that comes back.
    KEEP = 8

    def get(self, name, version):
        key = (name, version)
        with self.lock:
            if key not in self.cache:
                self.cache[key] = self.compute(name, version)
                while len(self.cache) > self.KEEP:
                    self.cache.popitem(last=False)
            self.cache.move_to_end(key)
            return self.cache[key]

    def compute(self, name, version):
        torch = self.torch
        module = torch.jit.load(os.path.join(self.repository, name, str(version), "model.pt"))
        module = module.double()  # The fp32 model's reference in float64.
        m = torch.from_numpy(self.pool).requires_grad_(True)
        q = module(m)
        # Row b of q depends on row b of m only: one backward pass per output component
        # gives that component's gradient at every pool point.
        jac = torch.stack([torch.autograd.grad(q[:, j].sum(), m, retain_graph=True)[0]
                           for j in range(q.shape[1])], dim=1)
        U = module.output_basis.detach()
        V = module.input_basis.detach()
        # Uᵀ J V once per version here, not per checked reply: numpy's batched product of a
        # [B, d_Q, d_M] stack takes ~0.7 s at B = 64, which made the checking callback, and
        # with it every answer on the client's channel, fall seconds behind.
        reduced = torch.einsum("qa,nqd,db->nab", U, jac, V)
        return {"q": q.detach().numpy(), "J": jac.numpy(), "reduced": reduced.numpy()}


def make_pool(d_m, count, seed):
    # float32-representable values: a point sent as fp32 is the same point as in fp64.
    return np.random.default_rng(seed).standard_normal((count, d_m)).astype(np.float32) \
        .astype(np.float64)


# -- traffic ---------------------------------------------------------------------------------

class Traffic:
    """Builds random mixed requests and checks their answers; thread-safe counters."""

    def __init__(self, target, gen_dir, repository, pool, seed, models=(MODEL, MODEL32)):
        import grpc
        self.grpc = grpc
        self.pb, pb_grpc, _, _ = stubs(gen_dir)
        from dino_serve import from_tensor, to_tensor
        self.from_tensor, self.to_tensor = from_tensor, to_tensor
        self.channel = grpc.insecure_channel(target, options=[
            ("grpc.max_send_message_length", 1 << 26),
            ("grpc.max_receive_message_length", 1 << 26)])
        self.stub = pb_grpc.SurrogateStub(self.channel)
        self.reference = Reference(repository, pool)
        self.pool, self.models = pool, models
        self.rng = random.Random(seed)
        self.nprng = np.random.default_rng(seed)
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        """Starts a new reporting window; returns the one that ends."""
        with getattr(self, "lock", threading.Lock()):
            old = getattr(self, "window", None)
            self.window = {"ok": 0, "refused": 0, "wrong": 0, "unexpected": 0, "latency_ms": [],
                           "by_method": {}, "versions": {}, "samples": []}
            return old

    def request(self):
        """(method, request, checker) of one random request."""
        pb, rng = self.pb, self.rng
        method = rng.choice(METHODS)
        name = self.models[0] if len(self.models) == 1 or rng.random() < 0.75 else self.models[1]
        ref = pb.ModelRef(name=name, label=LABEL if name == MODEL and rng.random() < 0.3 else "")
        batch = rng.choices(BATCH_SIZES, BATCH_WEIGHTS)[0]
        in_dtype, out_dtype = rng.choice(("fp32", "fp64")), rng.choice(("fp32", "fp64"))
        index = self.nprng.integers(0, len(self.pool), batch)
        m = self.pool[index]
        wire_out = pb.FP32 if out_dtype == "fp32" else pb.FP64
        tolerance = TOLERANCE["model32" if name == MODEL32 else
                              "fp32" if "fp32" in (in_dtype, out_dtype) else "fp64"]

        def direction(*shape):
            return self.nprng.standard_normal(shape).astype(np.float32).astype(np.float64)

        if method == "Evaluate":
            request = pb.EvaluateRequest(model=ref, m=self.to_tensor(m, in_dtype),
                                         output_dtype=wire_out)

            def expected(r):
                return {"q": r["q"][index]}
        elif method in ("Jvp", "Vjp"):
            return_q = rng.random() < 0.5
            width = self.pool.shape[1] if method == "Jvp" else self.output_dim(name)
            if batch == 1:  # One point, k directions.
                k = rng.choice((1, 3))
                dirs, m_sent = direction(k, width), m[0]
            elif rng.random() < 0.5:  # B points, one each.
                k, dirs, m_sent = None, direction(batch, width), m
            else:  # B points, 2 each.
                k, dirs, m_sent = 2, direction(batch, 2, width), m
            if method == "Jvp":
                request = pb.JvpRequest(model=ref, m=self.to_tensor(m_sent, in_dtype),
                                        directions=self.to_tensor(dirs, in_dtype),
                                        return_q=return_q, output_dtype=wire_out)
            else:
                request = pb.VjpRequest(model=ref, m=self.to_tensor(m_sent, in_dtype),
                                        cotangents=self.to_tensor(dirs, in_dtype),
                                        return_q=return_q, output_dtype=wire_out)
            key = method.lower()

            def expected(r):
                jac = r["J"][index]  # [B, d_Q, d_M]
                if method == "Vjp":
                    jac = jac.transpose(0, 2, 1)
                if batch == 1:
                    out = {key: dirs @ jac[0].T}
                elif dirs.ndim == 2:
                    out = {key: np.matmul(jac, dirs[:, :, None])[:, :, 0]}
                else:
                    out = {key: np.matmul(dirs, jac.transpose(0, 2, 1))}
                if return_q:
                    out["q"] = r["q"][index][0] if batch == 1 else r["q"][index]
                return out
        else:
            request = pb.ReducedJacobianRequest(model=ref, m=self.to_tensor(m, in_dtype),
                                                output_dtype=wire_out)

            def expected(r):
                return {"q": r["q"][index], "reduced_jacobian": r["reduced"][index]}
        return method, name, request, expected, tolerance, out_dtype

    def output_dim(self, name):
        return self.reference.get(name, complete_versions(self.reference.repository, name)[0])[
            "q"].shape[1]

    def issue(self, on_done=None, timeout=30.0):
        method, name, request, expected, tolerance, out_dtype = self.request()
        start = time.perf_counter()
        future = getattr(self.stub, method).future(request, timeout=timeout)

        def done(f):
            latency = (time.perf_counter() - start) * 1e3
            try:
                self.check(f, method, name, expected, tolerance, out_dtype, latency)
            finally:
                if on_done:
                    on_done()
        future.add_done_callback(done)

    def record(self, kind, method, text=None, latency=None, version=None):
        with self.lock:
            w = self.window
            w[kind] += 1
            per = w["by_method"].setdefault(method, {"ok": 0, "refused": 0, "wrong": 0,
                                                     "unexpected": 0})
            per[kind] += 1
            if latency is not None:
                w["latency_ms"].append(latency)
            if version is not None:
                w["versions"][version] = w["versions"].get(version, 0) + 1
            if text and len(w["samples"]) < 5:
                w["samples"].append(f"{method}: {text}")

    def check(self, future, method, name, expected, tolerance, out_dtype, latency):
        grpc = self.grpc
        error = future.exception()
        if error is not None:
            code = error.code() if hasattr(error, "code") else None
            details = error.details() if hasattr(error, "details") else str(error)
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED and OVERLOAD.search(details or ""):
                self.record("refused", method)
            else:
                self.record("unexpected", method, f"{code}: {details}")
            return
        reply = future.result()
        try:
            want = expected(self.reference.get(name, reply.version))
            worst = 0.0
            for field, value in want.items():
                tensor = getattr(reply, field)
                wire_dtype = "fp32" if tensor.dtype == self.pb.FP32 else "fp64"
                if wire_dtype != out_dtype:
                    raise AssertionError(f"{field} came as {wire_dtype}, asked {out_dtype}")
                got = self.from_tensor(tensor, field)
                if got.shape != value.shape:
                    raise AssertionError(f"{field} shape {got.shape}, expected {value.shape}")
                scale = max(float(np.max(np.abs(value))), 1e-30)
                worst = max(worst, float(np.max(np.abs(got - value))) / scale)
            if worst > tolerance:
                raise AssertionError(f"{name}/{reply.version}: relative error {worst:.3g} > "
                                     f"{tolerance:g}")
        except AssertionError as e:
            self.record("wrong", method, str(e))
            return
        except Exception as e:  # noqa: BLE001 - a reference that cannot be computed
            self.record("unexpected", method, f"checking: {type(e).__name__}: {e}")
            return
        self.record("ok", method, latency=latency, version=f"{name}/{reply.version}")


def drive(traffic, stop, rate=None, concurrency=None, max_outstanding=1024):
    """Open loop at `rate` requests/s, or closed loop with `concurrency` in flight, until
    `stop` is set; then waits for the answers. Returns requests the client could not send
    because max_outstanding were in flight (the client fell behind)."""
    outstanding = [0]
    lock, wake = threading.Lock(), threading.Event()
    skipped = 0

    def finished():
        with lock:
            outstanding[0] -= 1
        wake.set()

    def send():
        with lock:
            outstanding[0] += 1
        traffic.issue(finished)

    start, issued = time.perf_counter(), 0
    while not stop.is_set():
        if rate is not None:
            due = int((time.perf_counter() - start) * rate) - issued
            for _ in range(min(due, 200)):
                issued += 1
                if outstanding[0] >= max_outstanding:
                    skipped += 1
                else:
                    send()
            time.sleep(0.002)
        else:
            while outstanding[0] < concurrency:
                send()
            wake.wait(0.05)
            wake.clear()
    deadline = time.time() + 60
    while outstanding[0] > 0 and time.time() < deadline:
        time.sleep(0.01)
    return skipped


def client_process(target, gen_dir, repository, pool, seed, rate, concurrency, report, stop):
    """One load process: reports its window every second into `report`."""
    traffic = Traffic(target, gen_dir, repository, pool, seed)
    result = {}

    def run():
        result["skipped"] = drive(traffic, stop, rate=rate, concurrency=concurrency)
    thread = threading.Thread(target=run)
    thread.start()
    while thread.is_alive():
        thread.join(1.0)
        window = traffic.reset()
        window["t"] = time.time()
        report.put(window)
    report.put({"done": True, "skipped": result.get("skipped", 0)})


class Load:
    """--clients load processes against a server; windows gathered in the parent."""

    def __init__(self, args, target, repository, pool, rate=None, concurrency=None):
        context = multiprocessing.get_context("spawn")
        self.report, self.stop_event = context.Queue(), context.Event()
        self.processes = [
            context.Process(target=client_process, args=(
                target, args.gen_dir, repository, pool, 1000 + i,
                None if rate is None else rate / args.clients,
                None if concurrency is None else max(1, concurrency // args.clients),
                self.report, self.stop_event), daemon=True)
            for i in range(args.clients)]
        for p in self.processes:
            p.start()
        self.windows, self.skipped, self.done = [], 0, 0

    def poll(self, timeout=0.0):
        try:
            while True:
                item = self.report.get(timeout=timeout)
                if item.get("done"):
                    self.done += 1
                    self.skipped += item["skipped"]
                else:
                    self.windows.append(item)
                timeout = 0.0
        except queue.Empty:
            pass

    def stop(self):
        self.stop_event.set()
        deadline = time.time() + 120
        while self.done < len(self.processes) and time.time() < deadline:
            self.poll(0.5)
        for p in self.processes:
            p.join(10)
        return self.windows


def merge(windows):
    total = {"ok": 0, "refused": 0, "wrong": 0, "unexpected": 0, "by_method": {},
             "versions": {}, "samples": []}
    for w in windows:
        for k in ("ok", "refused", "wrong", "unexpected"):
            total[k] += w[k]
        for method, counts in w["by_method"].items():
            per = total["by_method"].setdefault(method, dict.fromkeys(counts, 0))
            for k, v in counts.items():
                per[k] += v
        for version, n in w["versions"].items():
            total["versions"][version] = total["versions"].get(version, 0) + n
        total["samples"] += w["samples"][:5 - len(total["samples"])] if len(
            total["samples"]) < 5 else []
    return total


# -- model control ---------------------------------------------------------------------------

class Control:
    """The Training and ModelAdmin services with the admin token."""

    def __init__(self, target, gen_dir):
        import grpc
        self.grpc = grpc
        self.pb, pb_grpc, self.tpb, tpb_grpc = stubs(gen_dir)
        from dino_serve import to_tensor
        self.to_tensor = to_tensor
        self.channel = grpc.insecure_channel(target, options=[
            ("grpc.max_send_message_length", 1 << 28)])
        self.surrogate = pb_grpc.SurrogateStub(self.channel)
        self.training = tpb_grpc.TrainingStub(self.channel)
        self.admin = tpb_grpc.ModelAdminStub(self.channel)
        self.auth = (("authorization", "Bearer " + TOKEN),)

    def start_finetune(self, data, count, epochs, seed):
        tpb, pb = self.tpb, self.pb
        first = seed * 17 % max(1, len(data["m"]) - count)

        def uploads():
            yield tpb.FineTuneUpload(config=tpb.FineTuneConfig(
                base=pb.ModelRef(name=MODEL), loss=tpb.L2, epochs=epochs, learning_rate=1e-3,
                batch_size=16, seed=seed,
                # Publish whatever the short job learned: the soak is about serving swaps.
                acceptance=tpb.AcceptanceRule(metric=tpb.L2_ACCURACY, max_regression=1.0)))
            for i in range(first, first + count, 32):
                s = slice(i, min(i + 32, first + count))
                yield tpb.FineTuneUpload(samples=tpb.SampleBatch(
                    m=self.to_tensor(data["m"][s]), q=self.to_tensor(data["q"][s])))
        return self.training.StartFineTune(uploads(), metadata=self.auth, timeout=120).job_id

    def job(self, job_id):
        return self.training.GetJob(self.tpb.GetJobRequest(job_id=job_id), metadata=self.auth,
                                    timeout=10)

    def state_name(self, status):
        return self.tpb.JobState.Name(status.state)

    def pin(self, version):
        self.admin.SetDefaultVersion(self.tpb.SetDefaultVersionRequest(name=MODEL,
                                                                       version=version),
                                     metadata=self.auth, timeout=60)

    def label(self, version, label=LABEL):
        self.admin.SetVersionLabel(self.tpb.SetVersionLabelRequest(name=MODEL, label=label,
                                                                   version=version),
                                   metadata=self.auth, timeout=60)

    def listing(self, name=MODEL):
        for model in self.surrogate.ListModels(self.pb.ListModelsRequest(), timeout=10).models:
            if model.name == name:
                return ([v.version for v in model.versions],
                        [v.version for v in model.versions if v.is_default])
        return [], []

    def close(self):
        self.channel.close()


TERMINAL = ("SUCCEEDED", "REJECTED", "FAILED", "CANCELLED")


def publisher(control, data, args, stop, events, errors):
    """Fine-tune jobs one after another until `stop`; each job's outcome into `events`."""
    seed = 1
    while not stop.is_set():
        started = time.time()
        try:
            job_id = control.start_finetune(data, args.finetune_samples, args.finetune_epochs,
                                            seed)
            while True:
                status = control.job(job_id)
                if control.state_name(status) in TERMINAL:
                    break
                time.sleep(0.2)
            state = control.state_name(status)
            events.append({"t": time.time(), "kind": "publish", "state": state,
                           "version": status.new_version,
                           "seconds": round(time.time() - started, 2)})
            if state not in ("SUCCEEDED", "REJECTED"):
                errors.append(f"fine-tune job {job_id}: {state}: {status.message}")
        except control.grpc.RpcError as e:
            errors.append(f"fine-tune: {e.code()}: {e.details()}")
        seed += 1
        stop.wait(args.publish_pause)


def swapper(control, repository, args, stop, events, errors, rng):
    """Pins a random recent version, unpins, or moves the label, every --swap_seconds."""
    while not stop.wait(args.swap_seconds):
        versions = complete_versions(repository, MODEL)[-4:]
        action = rng.choice(("pin", "unpin", "label"))
        version = rng.choice(versions)
        try:
            if action == "pin":
                control.pin(version)
            elif action == "unpin":
                control.pin(0)
                version = 0
            else:
                control.label(version)
            events.append({"t": time.time(), "kind": action, "version": version})
        except control.grpc.RpcError as e:
            errors.append(f"{action} {version}: {e.code()}: {e.details()}")


def serve_canonical_versions(control, timeout=60.0):
    """Unpins the default and puts LABEL back on version 1 (where BENCH_LABEL stays), then
    waits until the server serves exactly version 1 and the latest: the state the soak starts
    from, whatever the swapper did. Raises if it does not get there (the snapshots would then
    compare different sets of loaded versions)."""
    control.pin(0)
    control.label(1)
    deadline = time.time() + timeout
    while True:
        versions = control.listing(MODEL)[0]
        if versions == sorted({1, max(versions)}):
            return versions
        if time.time() > deadline:
            raise RuntimeError("%s still serves versions %s %g s after unpinning and moving "
                               "the label" % (MODEL, versions, timeout))
        time.sleep(0.5)


# -- stages ----------------------------------------------------------------------------------

def run_tool(args, *command):
    subprocess.run([os.path.join(args.bin, command[0]), *command[1:]], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stage_models(args):
    """Training data and version 1 of both models in --out/models (skipped when there)."""
    folder = os.path.join(args.out, "models")
    done = os.path.join(folder, "done.json")
    if not os.path.exists(done):
        os.makedirs(folder, exist_ok=True)
        common = ["--problem", "poisson", "--mesh", str(args.mesh), "--jacobian", "svd",
                  "--rank", "20", "--threads", "2", "--progress", "none"]
        base, tune = os.path.join(folder, "base"), os.path.join(folder, "tune")
        run_tool(args, "dino-train", "generate", "--samples", "256", "--seed", "1", "--out",
                 base, *common)
        run_tool(args, "dino-train", "generate", "--samples", "256", "--seed", "3", "--out",
                 tune, *common)
        run_tool(args, "dino-train", "bases", "--data", base, "--input-rank",
                 str(args.input_rank), "--output-rank", "16", "--threads", "2")
        for name, dtype in ((MODEL, "fp64"), (MODEL32, "fp32")):
            run_tool(args, "dino-train", "fit", "--data", base, "--architecture", "dipnet",
                     "--loss", "h1", "--hidden", args.hidden, "--dtype", dtype, "--epochs", "30",
                     "--batch-size", "16", "--threads", "1", "--progress", "none", "--out",
                     os.path.join(folder, name + ".pt"))
        with open(done, "w") as f:
            json.dump({"mesh": args.mesh, "hidden": args.hidden, "input_rank": args.input_rank},
                      f)
    with open(done) as f:
        made = json.load(f)
    wanted = {"mesh": args.mesh, "hidden": args.hidden, "input_rank": args.input_rank}
    if any(made.get(k) != v for k, v in wanted.items()):
        raise SystemExit(f"{folder} holds models made with {made}, not {wanted}: use another "
                         "--out or delete it")
    with np.load(os.path.join(folder, "tune", "mq_data.npz")) as f:
        data = {"m": f["m_data"], "q": f["q_data"]}
    return folder, data


def fresh_repository(models, path):
    shutil.rmtree(path, ignore_errors=True)
    for name in (MODEL, MODEL32):
        os.makedirs(os.path.join(path, name, "1"))
        shutil.copy(os.path.join(models, name + ".pt"), os.path.join(path, name, "1", "model.pt"))
    return path


def stored(args, stage):
    """A finished stage's result (--out/<stage>.json), or None."""
    path = os.path.join(args.out, stage + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def store(args, stage, result):
    with open(os.path.join(args.out, stage + ".json"), "w") as f:
        json.dump(result, f)
    return result


def stage_folder(args, stage, models):
    """--out/<stage>/ and a fresh repository in it."""
    work = os.path.join(args.out, stage)
    os.makedirs(work, exist_ok=True)
    return work, fresh_repository(models, os.path.join(work, "repository"))


def wait_serving(control, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if control.listing(MODEL)[0] and control.listing(MODEL32)[0]:
                return
        except control.grpc.RpcError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the models did not load within %d s" % timeout)


def bench(args, target, stream, seconds, rate=None, concurrency=None, version=1, check=True,
          out=None):
    """One dino-bench run of a stream: its JSON result row, or {"failed": its stderr}."""
    if out is None:
        with tempfile.NamedTemporaryFile(suffix=".json", dir=args.out, delete=False) as f:
            out = f.name
    command = [os.path.join(args.bin, "dino-bench"), "--server", target,
               "--model", stream["model"], "--version", str(version),
               "--methods", stream["method"], "--batch", str(stream["batch"]),
               "--k", str(stream["k"]), "--dtype", stream["dtype"], "--duration", str(seconds),
               "--warmup", "20", "--timeout", "60", "--expected_codes", "RESOURCE_EXHAUSTED",
               "--json", out]
    command += ["--rate", str(rate)] if rate else ["--concurrency", str(concurrency)]
    if check:
        command.append("--check")
    result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        with open(out) as f:
            row = json.load(f)["results"][0]
    except (OSError, ValueError, IndexError, KeyError):
        return {"failed": result.stderr[-2000:], "exit": result.returncode}
    finally:
        if os.path.exists(out):
            os.unlink(out)
    row["exit"] = result.returncode
    return row


def bench_window(row):
    """ok / refused / wrong / unexpected of a dino-bench row; failure texts."""
    if "failed" in row:
        return {"ok": 0, "refused": 0, "wrong": 0, "unexpected": 1, "warmup_failed": 0,
                "samples": ["dino-bench: " + row["failed"]]}
    if "requests" not in row:
        # The run never started: its warm-up probe or reference calls failed. Under overload
        # the other streams' calls fill the model's queue and these get refused. (A run that
        # did start also has a first_error when any of its calls failed, e.g. refused.)
        refused = bool(OVERLOAD.search(row["first_error"]))
        return {"ok": 0, "refused": 0, "wrong": 0, "unexpected": 0 if refused else 1,
                "warmup_failed": 0, "not_started": 1, "samples": [row["first_error"]]}
    codes = dict(row.get("errors_by_code", {}))
    refused = codes.pop("RESOURCE_EXHAUSTED", 0)
    wrong = row.get("check", {}).get("failures", 0)
    samples = [f"{c}: {n} calls" for c, n in codes.items()]
    if wrong:
        samples.append(row["check"]["first_failure"])
    # Failed warm-up calls (dino-bench does not say with which code; under overload, queue
    # refusals) are neither checked answers nor counted errors: reported apart.
    return {"ok": row["calls"], "refused": refused, "wrong": wrong,
            "unexpected": sum(codes.values()), "warmup_failed": row.get("warmup_failures", 0),
            "samples": samples}


def stage_saturation(args, models, pool):
    """The streams together in closed loop: each stream's share of the saturated server."""
    if (done := stored(args, "saturation")) is not None:
        return done
    work, repository = stage_folder(args, "saturation", models)
    server = Server(args.bin, repository, os.path.join(work, "server.log"), args.server_flags)
    rows = [None] * len(STREAMS)
    try:
        control = Control(server.target, args.gen_dir)
        wait_serving(control)
        control.close()
        cpu0, t0 = proc_sample(server.pid)["cpu_s"], time.time()

        def one(i):
            rows[i] = bench(args, server.target, STREAMS[i], args.saturation_seconds,
                            concurrency=args.concurrency)
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(STREAMS))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        cpu1, t1 = proc_sample(server.pid)["cpu_s"], time.time()
    finally:
        code = server.stop()
    windows = [bench_window(r) for r in rows]
    result = {"streams": [{"name": s["name"], "requests_per_s": r.get("requests_per_s", 0.0),
                           "p99_us": r.get("p99_us")} for s, r in zip(STREAMS, rows)],
              "concurrency_per_stream": args.concurrency,
              "server_cpu_cores": (cpu1 - cpu0) / (t1 - t0),
              "wrong": sum(w["wrong"] for w in windows),
              "unexpected": sum(w["unexpected"] for w in windows),
              "samples": [x for w in windows for x in w["samples"]], "shutdown_code": code}
    result["requests_per_s"] = sum(s["requests_per_s"] for s in result["streams"])
    return store(args, "saturation", result)


def quiescent_snapshot(pid, seconds):
    """After load and jobs stopped: the lowest RSS, fds and threads over `seconds` (gRPC's
    thread pools shrink a while after a burst; a leaked thread or fd stays)."""
    samples = []
    end = time.time() + seconds
    while time.time() < end:
        samples.append(proc_sample(pid))
        time.sleep(1.0)
    result = {key: min(s[key] for s in samples) for key in samples[0]}
    # Which threads there are at the end (by name), to tell a leaked thread from a pool.
    names = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue
        names[name] = names.get(name, 0) + 1
    result["thread_names"] = dict(sorted(names.items()))
    return result


def stage_soak(args, models, data, pool, saturation):
    if (done := stored(args, "soak")) is not None:
        return done
    work, repository = stage_folder(args, "soak", models)
    rates = [args.overload * s["requests_per_s"] for s in saturation["streams"]]
    context = {"started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "loadavg_before": " ".join(f"{x:.1f}" for x in os.getloadavg()),
               "git": subprocess.run(["git", "-C", HERE, "rev-parse", "--short", "HEAD"],
                                     capture_output=True, text=True).stdout.strip()}
    server = Server(args.bin, repository, os.path.join(work, "server.log"), args.server_flags)
    errors, events, samples, stream_windows = [], [], [], []
    started = time.time()
    try:
        control = Control(server.target, args.gen_dir)
        wait_serving(control)
        control.label(1)
        control.label(1, BENCH_LABEL)
        rng = random.Random(7)

        def run_phase(seconds, phase):
            """Offered load, publishes and swaps for `seconds`; /proc sampled each second."""
            stop = threading.Event()
            end = time.time() + seconds

            def stream(i):
                while time.time() < end - 1.0:
                    length = min(args.window, end - time.time())
                    row = bench(args, server.target, STREAMS[i], length, rate=rates[i])
                    window = bench_window(row)
                    window.update({"t": time.time() - started, "stream": i, "phase": phase,
                                   "p50_ms": row.get("p50_us", 0) / 1e3,
                                   "p99_ms": row.get("p99_us", 0) / 1e3,
                                   "send_lag_p99_ms":
                                       row.get("send_lag_us", {}).get("p99_us", 0) / 1e3,
                                   "sent": row.get("requests", 0),
                                   "seconds": row.get("wall_s", length)})
                    stream_windows.append(window)
            threads = [threading.Thread(target=stream, args=(i,)) for i in range(len(STREAMS))]
            threads += [threading.Thread(target=publisher, args=(
                            control, data, args, stop, events, errors)),
                        threading.Thread(target=swapper, args=(
                            control, repository, args, stop, events, errors, rng))]
            load = Load(args, server.target, repository, pool, rate=args.python_rate)
            for t in threads:
                t.start()
            while time.time() < end:
                load.poll(1.0)
                sample = proc_sample(server.pid)
                sample["t"] = time.time() - started
                samples.append(sample)
            stop.set()
            for t in threads:
                t.join()  # The running fine-tune finishes first.
            windows = load.stop()
            for w in windows:
                w["t"] -= started
            return windows, load.skipped

        # Warm-up: the same traffic, publishes and swaps, so that lazily made threads, caches
        # and allocator arenas exist before the first snapshot.
        def settled():
            """The quiescent snapshot, what malloc holds and the versions loaded (each holds
            its weights twice: the module and the fast path's copies), and the server's
            metrics at that moment (no load in flight: its counts are final). Both snapshots
            are taken in the same served state — default unpinned (the latest version), the
            label back on version 1 — so that they compare the same set of loaded versions
            (two of `poisson`, one of `poisson32`): a version the swapper happened to keep
            loaded is memory the operator asked for, not growth."""
            serve_canonical_versions(control)
            snapshot = quiescent_snapshot(server.pid, args.quiescent_seconds)
            scraped = scrape(server.metrics_url)
            snapshot["heap"] = scraped["heap"]
            snapshot["loaded"] = {name: control.listing(name)[0] for name in (MODEL, MODEL32)}
            return snapshot, scraped
        warm_windows, warm_skipped = run_phase(args.warmup, "warmup")
        before, scraped_before = settled()
        soak_started = time.time() - started
        windows, skipped = run_phase(args.duration, "soak")
        soak_ended = time.time() - started
        after, scraped_after = settled()
        listing = control.listing(MODEL)
        control.close()
    finally:
        shutdown = server.stop()
    context["loadavg_after"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    for e in events:
        e["t"] -= started
    python = merge(windows)
    python_warm = merge(warm_windows)
    soak_streams = [w for w in stream_windows if w["phase"] == "soak"]
    seconds = soak_ended - soak_started
    cpu = [s for s in samples if soak_started <= s["t"] <= soak_ended]

    def total(key, streams, py):
        return sum(w[key] for w in streams) + py[key]
    per_stream = []
    for i, s in enumerate(STREAMS):
        mine = [w for w in soak_streams if w["stream"] == i and not w.get("not_started")]
        per_stream.append({
            "name": s["name"], "offered_per_s": rates[i],
            # Each window's own length: a stream's windows need not cover the whole
            # phase (start-up, a retried window), so dividing by the phase would undercount.
            "sent_per_s": sum(w["sent"] for w in mine) / max(sum(w["seconds"] for w in mine),
                                                              1e-9),
            "ok": sum(w["ok"] for w in mine), "refused": sum(w["refused"] for w in mine),
            "p99_ms_worst_window": max((w["p99_ms"] for w in mine), default=None),
            "p99_ms_median_window": float(np.median([w["p99_ms"] for w in mine]))
            if mine else None,
            "send_lag_p99_ms_worst_window": max((w["send_lag_p99_ms"] for w in mine),
                                                default=None)})
    python_latency = sorted(x for w in windows for x in w["latency_ms"])
    result = {
        "context": context,
        "duration_s": round(seconds, 1), "warmup_s": args.warmup, "window_s": args.window,
        "soak_started_s": soak_started,
        "saturation_requests_per_s": saturation["requests_per_s"],
        "offered_per_s": sum(rates) + args.python_rate,
        "server_side": server_side(scraped_before, scraped_after),
        # Whether the generators kept their schedule: an open-loop sender that falls behind
        # offers less than it claims, and then the soak did not test the overload.
        "sent_per_s": sum(s["sent_per_s"] for s in per_stream) + sum(
            python[k] for k in ("ok", "refused", "wrong", "unexpected")) / seconds,
        "ok": total("ok", soak_streams, python), "refused": total("refused", soak_streams, python),
        "wrong": total("wrong", stream_windows, python) + python_warm["wrong"],
        "unexpected": total("unexpected", stream_windows, python) + python_warm["unexpected"]
        + len(errors),
        "streams": per_stream,
        "python": {"offered_per_s": args.python_rate, "ok": python["ok"],
                   "refused": python["refused"], "by_method": python["by_method"],
                   "versions_answering": python["versions"],
                   "client_skipped": skipped + warm_skipped,
                   "p99_ms": python_latency[int(0.99 * (len(python_latency) - 1))]
                   if python_latency else None},
        "samples": [x for w in stream_windows for x in w["samples"]][:10] + python["samples"]
        + python_warm["samples"],
        "control_errors": errors,
        "publishes": [e for e in events if e["kind"] == "publish"],
        "swaps": [e for e in events if e["kind"] != "publish"],
        "before": before, "after": after,
        "rss_growth": (after["rss_mib"] - before["rss_mib"]) / before["rss_mib"],
        "peak_rss_mib": max(s["rss_mib"] for s in samples),
        "server_cpu_cores": (cpu[-1]["cpu_s"] - cpu[0]["cpu_s"]) / (cpu[-1]["t"] - cpu[0]["t"])
        if len(cpu) > 1 else None,
        "final_listing": listing, "shutdown_code": shutdown,
        "stream_windows": stream_windows, "process": samples,
        "python_windows": [{"t": w["t"], "ok": w["ok"], "refused": w["refused"]}
                           for w in warm_windows + windows]}
    return store(args, "soak", result)


def check_restart(control, repository, reference, pool):
    """What a restarted server must serve: the last complete version (or the pin), the label
    config.json names, nothing incomplete. Returns a list of problems (empty: recovered)."""
    problems = []
    folder = os.path.join(repository, MODEL)
    complete = complete_versions(repository, MODEL)
    for v in sorted(int(x) for x in os.listdir(folder) if x.isdigit()):
        if v in complete:
            try:
                reference.get(MODEL, v)  # Loads with torch: not truncated.
            except Exception as e:  # noqa: BLE001
                problems.append(f"version {v}: model.pt does not load: {e}")
    config = read_config(repository, MODEL)
    unloaded = set(config.get("unloaded_versions", []))
    expected = config.get("default_version") or max(v for v in complete if v not in unloaded)
    listed, default = control.listing(MODEL)
    incomplete = [v for v in listed if v not in complete]
    if incomplete:
        problems.append(f"versions without a complete model.pt are listed: {incomplete}")
    if default != [expected]:
        problems.append(f"default {default}, expected {expected} (complete {complete}, "
                        f"config {config})")
    pb = control.pb
    from dino_serve import from_tensor, to_tensor
    reply = control.surrogate.Evaluate(pb.EvaluateRequest(
        model=pb.ModelRef(name=MODEL), m=to_tensor(pool[:4])), timeout=30)
    want = reference.get(MODEL, expected)["q"][:4]
    if reply.version != expected:
        problems.append(f"Evaluate answered version {reply.version}, expected {expected}")
    elif np.max(np.abs(from_tensor(reply.q) - want)) > TOLERANCE["fp64"] * np.max(np.abs(want)):
        problems.append(f"Evaluate on version {expected} differs from its model.pt")
    label = config.get("labels", {}).get(LABEL)
    if label:
        reply = control.surrogate.Evaluate(pb.EvaluateRequest(
            model=pb.ModelRef(name=MODEL, label=LABEL), m=to_tensor(pool[:1])), timeout=30)
        if reply.version != label:
            problems.append(f"label {LABEL} answered {reply.version}, config names {label}")
    return expected, problems


PHASES = ("RECEIVING", "QUEUED", "TRAINING", "VALIDATING", "PUBLISHING", "SUCCEEDED")


def watch_until(control, job_id, phase):
    """Follows the job's states until it reaches `phase` (or ends); the state seen last."""
    state = "RECEIVING"
    try:
        for status in control.training.WatchJob(control.tpb.WatchJobRequest(job_id=job_id),
                                                metadata=control.auth, timeout=120):
            state = control.state_name(status)
            if state in TERMINAL or PHASES.index(state) >= PHASES.index(phase):
                break
    except control.grpc.RpcError as e:
        state = f"unknown ({e.code()})"
    return state


def stage_crash(args, models, data, pool, rate):
    """--crash_loops kill -9 / restart cycles; resumable per iteration."""
    work = os.path.join(args.out, "crash")
    os.makedirs(work, exist_ok=True)
    log = os.path.join(work, "iterations.jsonl")
    repository = os.path.join(work, "repository")
    done = []
    if os.path.exists(log):
        with open(log) as f:
            done = [json.loads(line) for line in f if line.strip()]
    if not done or not os.path.exists(repository):
        fresh_repository(models, repository)
        done = []
        open(log, "w").close()
    reference = Reference(repository, pool)
    rng = random.Random(len(done) + 11)
    for i in range(len(done), args.crash_loops + 1):
        started = time.time()
        server = Server(args.bin, repository, os.path.join(work, "server.log"),
                        args.server_flags)
        control = Control(server.target, args.gen_dir)
        record = {"iteration": i}
        try:
            wait_serving(control)
            record["serving_after_s"] = round(time.time() - started, 2)
            record["expected_version"], record["problems"] = check_restart(
                control, repository, reference, pool)
            if i == args.crash_loops:  # The last start only checks the last kill.
                record["shutdown_code"] = server.stop()
                server = None
            else:
                # Load and a fine-tune, then kill -9 at a random moment of the job: from the
                # upload to a little after the typical publish.
                load = Traffic(server.target, args.gen_dir, repository, pool, seed=i)
                stop = threading.Event()
                driver = threading.Thread(target=drive, args=(load, stop),
                                          kwargs={"concurrency": 8})
                driver.start()
                # And the server's saturation rate of one dino-bench stream (unchecked: the
                # kill ends it with errors).
                stream = STREAMS[0]
                overload = subprocess.Popen(
                    [os.path.join(args.bin, "dino-bench"), "--server", server.target,
                     "--model", stream["model"], "--methods", stream["method"], "--batch",
                     str(stream["batch"]), "--rate", str(rate), "--duration", "600"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                if rng.random() < 0.5:
                    control.label(rng.choice(complete_versions(repository, MODEL)))
                job_id = control.start_finetune(data, args.finetune_samples,
                                                args.finetune_epochs, seed=100 + i)
                # A random phase of the job, then a random moment in it: the publish (file
                # written, fsync, rename, load) lasts milliseconds, so the job's own state
                # stream says when it begins.
                target = rng.choice(PHASES[2:])
                state = watch_until(control, job_id, target)
                delay = rng.uniform(0.0, 0.3 if target in ("TRAINING", "SUCCEEDED") else 0.01)
                time.sleep(delay)
                record.update({"kill_phase": target, "job_state_seen": state,
                               "kill_after_s": round(time.time() - started, 2)})
                server.kill9()
                server = None
                overload.kill()
                overload.wait()
                stop.set()
                driver.join()
                window = load.reset()
                # Calls cut by the kill fail with UNAVAILABLE/CANCELLED: expected, not counted.
                record["answers_before_kill"] = window["ok"]
                record["wrong"] = window["wrong"]
                load.channel.close()
        finally:
            control.close()
            if server is not None:
                server.kill9()
        leftovers = [v for v in os.listdir(os.path.join(repository, MODEL))
                     if v.isdigit() and int(v) not in complete_versions(repository, MODEL)]
        record["incomplete_folders_on_disk"] = len(leftovers)
        record["recovered"] = not record["problems"] and not record.get("wrong")
        print(f"crash loop {i}: {json.dumps(record)}", flush=True)
        with open(log, "a") as f:
            f.write(json.dumps(record) + "\n")
        done.append(record)
    return done


# -- report ----------------------------------------------------------------------------------

def plot(soak, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(4, 1, figsize=(10, 11), sharex=True)
    windows = soak["stream_windows"]
    for i, stream in enumerate(STREAMS):
        mine = sorted((w for w in windows if w["stream"] == i and not w.get("not_started")),
                      key=lambda w: w["t"])
        t = [w["t"] for w in mine]
        line, = axes[0].plot(t, [w["ok"] / w["seconds"] for w in mine], label=stream["name"])
        axes[0].plot(t, [w["refused"] / w["seconds"] for w in mine], ls=":",
                     color=line.get_color())
        axes[1].plot(t, [w["p99_ms"] for w in mine], color=line.get_color(),
                     label=stream["name"])
    python = soak["python_windows"]
    axes[0].plot([w["t"] for w in python], [w["ok"] for w in python], color="black", lw=0.8,
                 label="Python traffic (torch-checked)")
    axes[0].set_ylabel("answered /s (solid)\nrefused /s (dotted)")
    axes[0].set_yscale("symlog", linthresh=10)
    axes[1].set_ylabel("p99 latency (ms)\nper window")
    axes[1].set_yscale("log")
    ps = soak["process"]
    pt = [s["t"] for s in ps]
    axes[2].plot(pt, [s["rss_mib"] for s in ps], label="RSS")
    axes[2].set_ylabel("RSS (MiB)")
    axes[3].plot(pt, [s["fds"] for s in ps], label="open fds")
    axes[3].plot(pt, [s["threads"] for s in ps], label="threads")
    axes[3].set_ylabel("count")
    axes[3].set_xlabel("seconds since start (warm-up before the dashed line)")
    for ax in axes:
        for e in soak["publishes"]:
            if e["state"] == "SUCCEEDED":
                ax.axvline(e["t"], color="green", alpha=0.2, lw=0.8)
        for e in soak["swaps"]:
            ax.axvline(e["t"], color="orange", alpha=0.3, lw=0.8)
        ax.axvline(soak["soak_started_s"], color="black", ls="--", lw=0.8)
        ax.legend(loc="upper right", fontsize=7)
        ax.grid(alpha=0.3)
    axes[0].set_title("dino-server soak at %.1fx the measured saturation; green: publishes, "
                      "orange: pins/labels" % (soak["offered_per_s"]
                                               / soak["saturation_requests_per_s"]),
                      fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def report(args, saturation, soak, crashes):
    """summary.json, summary.md (the results table, ready for docs/benchmarks/soak.md) and
    soak.png in --out; True when every target holds."""
    rows, checks = [], {}

    def row(target, measured, required, ok=None):
        if ok is not None:
            checks[target] = ok
        rows.append(f"| {target} | {measured} | {required} | "
                    f"{'' if ok is None else 'pass' if ok else '**FAIL**'} |")
    if soak:
        b, a = soak["before"], soak["after"]
        bench_ok = sum(s["ok"] for s in soak["streams"])
        python = soak["python"]
        row("wrong answers", f"0 of {bench_ok:,} checked by dino-bench (versions 1), "
            f"{python['ok']:,} by torch ({len(python['versions_answering'])} versions)"
            if soak["wrong"] == 0 else f"{soak['wrong']:,}", "0", soak["wrong"] == 0)
        row("unexpected errors", f"{soak['unexpected']:,}" + (
            f" ({'; '.join(soak['samples'][:3])})" if soak["unexpected"] else ""), "0",
            soak["unexpected"] == 0)
        row("overload refusals (RESOURCE_EXHAUSTED, counted apart)",
            f"{soak['refused']:,} of {soak['ok'] + soak['refused']:,}", "")
        row("failed dino-bench warm-up calls (code not reported; not checked, not counted)",
            f"{sum(w.get('warmup_failed', 0) for w in soak['stream_windows']):,}", "")
        row("dino-bench runs that could not start (reference calls refused: queue full)",
            f"{sum(w.get('not_started', 0) for w in soak['stream_windows'])} of "
            f"{len(soak['stream_windows'])} (then retried at once)", "")
        row("offered load", f"{soak['offered_per_s']:,.0f} requests/s = "
            f"{soak['offered_per_s'] / soak['saturation_requests_per_s']:.1f} x saturation "
            f"({soak['saturation_requests_per_s']:,.0f}/s)", f"{args.overload:g} x")
        if "sent_per_s" in soak:
            sent = soak["sent_per_s"]
            ratio = sent / soak["saturation_requests_per_s"]
            row("load the generators actually sent", f"{sent:,.0f} requests/s = "
                f"{ratio:.2f} x saturation", f">= {0.9 * args.overload:.1f} x",
                ratio >= 0.9 * args.overload)
            server = soak["server_side"]
            row("the server's own answers (its /metrics, soak phase)", ", ".join(
                f"{c} {n:,}" for c, n in sorted(server["codes"].items())) +
                (f"; latency p99 <= {server['latency_p99_s_at_most']:g} s (receipt to answer)"
                 if server["latency_p99_s_at_most"] is not None else ""), "")
        row("RSS growth after warm-up (quiescent)",
            f"{b['rss_mib']:.0f} -> {a['rss_mib']:.0f} MiB ({100 * soak['rss_growth']:+.1f} %)",
            "< 5 %", soak["rss_growth"] < 0.05)
        def mib(before, after, key):
            return f"{before[key]:.0f} -> {after[key]:.0f} MiB ({after[key] - before[key]:+.1f})"
        if "rss_anon_mib" in b:
            row("RSS (quiescent): anonymous; file-backed (libraries)",
                f"{mib(b, a, 'rss_anon_mib')}; {mib(b, a, 'rss_file_mib')}", "")
        if "heap" in b:
            # Where the resident growth is: memory still allocated (a leak, or more versions
            # loaded) or freed memory the heap cannot return (fragmentation).
            loaded = ""
            if "loaded" in b:  # Recorded since the sixth round.
                count = [sum(len(v) for v in x["loaded"].values()) for x in (b, a)]
                loaded = f"; versions loaded {count[0]} -> {count[1]}"
            row("malloc's heap (quiescent): in use; free but kept",
                f"{mib(b['heap'], a['heap'], 'in_use_mib')}; "
                f"{mib(b['heap'], a['heap'], 'free_mib')}" + loaded, "")
        row("open fds (quiescent)", f"{b['fds']} -> {a['fds']}", "no growth",
            a["fds"] <= b["fds"])
        row("threads (quiescent)", f"{b['threads']} -> {a['threads']}", "no growth",
            a["threads"] <= b["threads"])
        published = sum(p["state"] == "SUCCEEDED" for p in soak["publishes"])
        row("fine-tune publishes, pins/labels during the soak",
            f"{published} published of {len(soak['publishes'])} jobs; "
            f"{len(soak['swaps'])} swaps", ">= 1 publish", published >= 1)
        row("clean shutdown (SIGTERM, exit 0)", str(soak["shutdown_code"]), "0",
            soak["shutdown_code"] == 0)
        for s in soak["streams"]:
            if s["p99_ms_median_window"] is None:
                # A stream that never got going (its reference calls refused, every window)
                # offered no load: the soak did not test what it claims.
                row(f"{s['name']}: calls answered", f"none ({s['refused']:,} refused)", "> 0",
                    False)
                continue
            row(f"{s['name']}: p99 per {soak['window_s']:.0f} s window (median / worst)",
                f"{s['p99_ms_median_window']:,.0f} / {s['p99_ms_worst_window']:,.0f} ms "
                f"({s['ok']:,} answered, {s['refused']:,} refused)", "")
        row("server CPU during the soak; peak RSS",
            f"{soak['server_cpu_cores']:.2f} cores; {soak['peak_rss_mib']:.0f} MiB", "")
        plot(soak, os.path.join(args.out, "soak.png"))
    if crashes is not None:
        kills = [c for c in crashes if c["iteration"] > 0]  # Start i checks kill i - 1.
        recovered = sum(c["recovered"] for c in kills)
        phases = {}
        for c in crashes:
            if "kill_phase" in c:
                phases[c["kill_phase"]] = phases.get(c["kill_phase"], 0) + 1
        row("crash loop: restarts serving the last complete version (and the label)",
            f"{recovered}/{len(kills)}", f"{args.crash_loops}/{args.crash_loops}",
            recovered == len(kills) == args.crash_loops)
        row("kill -9 moments (job phase targeted)",
            ", ".join(f"{k} {v}" for k, v in sorted(phases.items())), "")
        row("incomplete version folders listed after a restart",
            str(sum(1 for c in kills for p in c["problems"] if "listed" in p)), "0")
        row("incomplete version folders left on disk (ignored by the server)",
            str(crashes[-1]["incomplete_folders_on_disk"]), "")
        row("restart to serving (max)",
            f"{max(c['serving_after_s'] for c in crashes):.1f} s", "")
    context = soak.get("context", {}) if soak else {}
    lines = [f"Measured {context.get('started_utc', '?')} on {os.cpu_count()} CPUs shared with "
             f"other work (load average {context.get('loadavg_before', '?')} before, "
             f"{context.get('loadavg_after', '?')} after), git {context.get('git', '?')}.", "",
             "| target | measured | required | result |", "| --- | --- | --- | --- |"] + rows
    summary = {"checks": checks, "saturation": saturation}
    if soak:
        summary["soak"] = {k: v for k, v in soak.items()
                           if k not in ("stream_windows", "process", "python_windows")}
    if crashes is not None:
        summary["crash"] = crashes
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return all(checks.values())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--bin", default="build/bin", help="folder with dino-server and dino-train")
    p.add_argument("--gen_dir", default="build/python", help="generated Python gRPC code")
    p.add_argument("--out", required=True, help="output folder (resumable)")
    p.add_argument("--short", action="store_true", help="a smoke run of about a minute")
    p.add_argument("--duration", type=float, default=600.0, help="soak seconds after warm-up")
    p.add_argument("--warmup", type=float, default=60.0)
    p.add_argument("--saturation_seconds", type=float, default=15.0)
    p.add_argument("--overload", type=float, default=2.0, help="offered load / saturation")
    p.add_argument("--concurrency", type=int, default=8,
                   help="calls in flight per stream while saturating")
    p.add_argument("--clients", type=int, default=1, help="processes of Python traffic")
    p.add_argument("--python_rate", type=float, default=60.0,
                   help="requests/s of the torch-checked Python traffic")
    p.add_argument("--window", type=float, default=30.0,
                   help="seconds per dino-bench run (one p99 point per stream)")
    p.add_argument("--mesh", type=int, default=32, help="Poisson mesh cells per side")
    p.add_argument("--hidden", default="256,256,256",
                   help="hidden widths of the soak's DIPNets (their compute per call, against "
                        "the bytes a call carries, decides whether the server or the "
                        "generators saturate first)")
    p.add_argument("--input_rank", type=int, default=64, help="r_M of the soak's DIPNets")
    p.add_argument("--finetune_samples", type=int, default=64)
    p.add_argument("--finetune_epochs", type=int, default=2)
    p.add_argument("--publish_pause", type=float, default=5.0, help="seconds between jobs")
    p.add_argument("--swap_seconds", type=float, default=15.0)
    p.add_argument("--quiescent_seconds", type=float, default=20.0,
                   help="idle seconds sampled for the snapshots after warm-up and at the end")
    p.add_argument("--crash_loops", type=int, default=20)
    p.add_argument("--training_nice", type=int, default=5,
                   help="the server's --training_nice (19, the default, starves jobs at 2x)")
    p.add_argument("--stages", default="soak,crash", help="soak, crash or both")
    p.add_argument("--server-flag", dest="extra_server_flags", action="append", default=[],
                   help="extra dino-server flag, e.g. --server-flag=--max_concurrent_streams=32 "
                        "(repeatable)")
    args = p.parse_args()
    if args.short:
        args.duration, args.warmup, args.saturation_seconds = 12.0, 6.0, 3.0
        args.mesh, args.crash_loops, args.swap_seconds, args.window = 16, 3, 2.0, 4.0
        args.hidden, args.input_rank = "32,32", 16
        # The server trims its heap after 2 s without requests, polled every 2 s: a quiescent
        # window shorter than ~5 s would compare an untrimmed heap with a trimmed one.
        args.publish_pause, args.python_rate, args.quiescent_seconds = 0.5, 30.0, 6.0
    args.server_flags = [f"--training_nice={args.training_nice}"] + args.extra_server_flags
    os.makedirs(args.out, exist_ok=True)
    stubs(args.gen_dir)

    models, data = stage_models(args)
    with np.load(os.path.join(models, "tune", "mq_data.npz")) as f:
        d_m = f["m_data"].shape[1]
    pool = make_pool(d_m, 32, seed=5)
    stages = args.stages.split(",")
    saturation = soak = crashes = None
    if "soak" in stages:
        saturation = stage_saturation(args, models, pool)
        print(f"saturation: {saturation['requests_per_s']:.0f} requests/s", flush=True)
        soak = stage_soak(args, models, data, pool, saturation)
        print(f"soak: {soak['ok']} answers checked, {soak['refused']} refused (overload), "
              f"{soak['wrong']} wrong, {soak['unexpected']} unexpected", flush=True)
    if "crash" in stages:
        saturation_file = os.path.join(args.out, "saturation.json")
        rate = 200.0
        if os.path.exists(saturation_file):
            with open(saturation_file) as f:
                rate = json.load(f)["streams"][0]["requests_per_s"]
        crashes = stage_crash(args, models, data, pool, rate)
    return 0 if report(args, saturation, soak, crashes) else 1


if __name__ == "__main__":
    sys.exit(main())
