#!/usr/bin/python3
"""UM-Bridge Evaluate against gRPC Evaluate on one dino-server, in one run.

Starts build/bin/dino-server on the bundled repository with --umbridge_port=0 and measures,
for one point m of the model (4225 values for poisson_dipnet):
  * UM-Bridge POST /Evaluate on a keep-alive connection (what UM-Bridge's C++ client does),
  * UM-Bridge POST /Evaluate on a new connection per call (what its Python client does:
    requests.post without a session),
  * gRPC Evaluate (Python stub),
one client at a time (latency percentiles) and `--clients` threads at once (throughput). The
request bodies are encoded once, so the numbers are the round trip (transport, server, JSON
decoding of the answer), not the client's encoding of 4225 floats.

usage: scripts/bench_umbridge.py [--bin build/bin] [--repository models/repository]
                                 [--generated build/python] [--seconds 5] [--clients 4]
"""
import argparse
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np


def percentiles(seconds):
    ms = np.array(seconds) * 1e3
    return {p: float(np.percentile(ms, p)) for p in (50, 90, 99)}


def run_for(duration, call):
    times = []
    end = time.perf_counter() + duration
    while time.perf_counter() < end:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def throughput(duration, clients, make_call):
    counts = [0] * clients

    def worker(i):
        call = make_call()
        end = time.perf_counter() + duration
        while time.perf_counter() < end:
            call()
            counts[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / duration


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bin", default=os.path.join(root, "build", "bin"))
    parser.add_argument("--repository", default=os.path.join(root, "models", "repository"))
    parser.add_argument("--generated", default=os.path.join(root, "build", "python"))
    parser.add_argument("--model", default="poisson_dipnet")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    sys.path.insert(0, args.generated)
    import grpc
    from dino.v1 import surrogate_pb2, surrogate_pb2_grpc

    server = subprocess.Popen(
        [os.path.join(args.bin, "dino-server"), "--model_repository=" + args.repository,
         "--port=0", "--umbridge_port=0", "--metrics_port=-1", "--host=127.0.0.1"],
        stdout=subprocess.PIPE, text=True)
    try:
        http_port = grpc_target = None
        for line in server.stdout:
            if m := re.search(r"UM-Bridge on http://\S+:(\d+)", line):
                http_port = int(m.group(1))
            if m := re.search(r"listening on \S*:(\d+)", line):
                grpc_target = "127.0.0.1:" + m.group(1)
                break
        assert http_port and grpc_target, "dino-server did not report its ports"

        connection = http.client.HTTPConnection("127.0.0.1", http_port)
        connection.request("POST", "/InputSizes", json.dumps({"name": args.model}),
                           {"Content-Type": "application/json"})
        d_m = json.loads(connection.getresponse().read())["inputSizes"][0]
        m = np.random.default_rng(0).standard_normal(d_m)
        body = json.dumps({"name": args.model, "input": [m.tolist()], "config": {}}).encode()
        headers = {"Content-Type": "application/json"}

        def umbridge_call(conn):
            conn.request("POST", "/Evaluate", body, headers)
            response = conn.getresponse()
            answer = json.loads(response.read())
            assert response.status == 200, answer
            return answer

        def new_connection_call():
            conn = http.client.HTTPConnection("127.0.0.1", http_port)
            umbridge_call(conn)
            conn.close()

        channel = grpc.insecure_channel(grpc_target)
        stub = surrogate_pb2_grpc.SurrogateStub(channel)
        request = surrogate_pb2.EvaluateRequest(
            model=surrogate_pb2.ModelRef(name=args.model),
            m=surrogate_pb2.Tensor(shape=[d_m], dtype=surrogate_pb2.FP64,
                                   data=m.astype(np.float64).tobytes()))

        # The same numbers first.
        q_http = np.array(umbridge_call(connection)["output"][0])
        q_grpc = np.frombuffer(stub.Evaluate(request).q.data, dtype=np.float64)
        assert np.array_equal(q_http, q_grpc), "UM-Bridge and gRPC disagree"

        for _ in range(50):  # Warm-up.
            umbridge_call(connection)
            stub.Evaluate(request)
        rows = [
            ("UM-Bridge Evaluate, keep-alive", lambda: umbridge_call(connection),
             lambda: (lambda c: (lambda: umbridge_call(c)))(
                 http.client.HTTPConnection("127.0.0.1", http_port))),
            ("UM-Bridge Evaluate, new connection per call", new_connection_call,
             lambda: new_connection_call),
            ("gRPC Evaluate", lambda: stub.Evaluate(request), lambda: (lambda: stub.Evaluate(request))),
        ]
        print(f"{args.model}: d_M = {d_m}, request body {len(body)} bytes; "
              f"{args.seconds:g} s per measurement")
        for name, call, make_call in rows:
            p = percentiles(run_for(args.seconds, call))
            rate = throughput(args.seconds, args.clients, make_call)
            print(f"{name:46s} p50 {p[50]:.3f} ms  p90 {p[90]:.3f} ms  p99 {p[99]:.3f} ms  "
                  f"{args.clients} clients: {rate:.0f}/s")
        channel.close()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
