#!/usr/bin/python3
"""Inference latency while a fine-tune job trains, against the same server idle.

Starts dino-server on a scratch copy of a model repository, measures p50/p99 of every
inference method with dino-bench while the server is idle, then starts a fine-tune job of the
same model (dino finetune --no_watch) with many epochs, measures again while it trains, and
cancels the job. Both measurements come from the same server process in one run, so the
ratio is meaningful on a shared machine. Prints a Markdown table and writes --json.

  /usr/bin/python3 scripts/bench_training_latency.py --bin build/bin \\
      --repository models/repository --model poisson_dipnet --data <dino-train generate dir>

--data defaults to a fresh Poisson set (dino-train generate, 256 samples, 64x64 mesh).
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time


def bench(args, port, label):
    out = subprocess.run(
        [os.path.join(args.bin, "dino-bench"), "--server", f"127.0.0.1:{port}", "--model",
         args.model, "-n", str(args.calls), "--warmup", str(args.warmup), "--json", "-"],
        capture_output=True, text=True, check=True)
    results = json.loads(out.stdout)
    print(f"[{label}] done", file=sys.stderr)
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bin", default="build/bin")
    p.add_argument("--repository", default="models/repository")
    p.add_argument("--model", default="poisson_dipnet")
    p.add_argument("--data", help="data folder to fine-tune on (default: generated)")
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--server-flags", default="", help="extra dino-server flags")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args()

    work = tempfile.mkdtemp(prefix="dino_train_latency_")
    try:
        repository = os.path.join(work, "repository")
        shutil.copytree(a.repository, repository)
        data = a.data
        if not data:
            data = os.path.join(work, "data")
            subprocess.run([os.path.join(a.bin, "dino-train"), "generate", "--problem", "poisson",
                            "--samples", str(a.samples), "--seed", "11", "--out", data,
                            "--rank", "50", "--progress", "none"], check=True,
                           stdout=subprocess.DEVNULL)
        server = subprocess.Popen(
            [os.path.join(a.bin, "dino-server"), "--model_repository=" + repository, "--port=0",
             "--metrics_port=-1"] + a.server_flags.split(),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        port = None
        for line in server.stdout:
            match = re.search(r"listening on .*:(\d+)", line)
            if match:
                port = int(match.group(1))
                break
        if port is None:
            sys.exit("dino-server did not start")
        try:
            idle = bench(a, port, "idle")
            started = subprocess.run(
                [os.path.join(a.bin, "dino"), "finetune", "--server", f"127.0.0.1:{port}",
                 "--model", a.model, "--data", data, "--loss", "h1", "--epochs", "100000",
                 "--no_watch", "--json"], capture_output=True, text=True, check=True)
            job = json.loads(started.stdout)["job_id"]
            # Measure once the job is past its set-up, in its training epochs.
            while True:
                status = json.loads(subprocess.run(
                    [os.path.join(a.bin, "dino"), "job", "--server", f"127.0.0.1:{port}",
                     "--id", job, "--json"], capture_output=True, text=True, check=True).stdout)
                if status["state"] != "TRAINING" or status["epoch"] >= 1:
                    break
                time.sleep(0.2)
            if status["state"] != "TRAINING":
                sys.exit(f"the job is {status['state']}: {status['message']}")
            training = bench(a, port, "training")
            status = json.loads(subprocess.run(
                [os.path.join(a.bin, "dino"), "job", "--server", f"127.0.0.1:{port}", "--id", job,
                 "--json"], capture_output=True, text=True, check=True).stdout)
            still_training = status["state"] == "TRAINING"
            epochs_during = status["epoch"]
            subprocess.run([os.path.join(a.bin, "dino"), "cancel", "--server",
                            f"127.0.0.1:{port}", "--id", job], check=True,
                           stdout=subprocess.DEVNULL)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=120)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = []
    print(f"| method | idle p50 | training p50 | ratio | idle p99 | training p99 | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    by_method = {r["method"]: r for r in training["results"]}
    for i in idle["results"]:
        method = i["method"]
        t = by_method[method]
        if "p50_us" not in i or "p50_us" not in t:
            continue
        rows.append(dict(method=method, idle=i, training=t))
        print(f"| {method} | {i['p50_us'] / 1000:.2f} ms | {t['p50_us'] / 1000:.2f} ms | "
              f"{t['p50_us'] / i['p50_us']:.2f} | {i['p99_us'] / 1000:.2f} ms | "
              f"{t['p99_us'] / 1000:.2f} ms | {t['p99_us'] / i['p99_us']:.2f} |")
    print(f"\nthe job was training throughout: {still_training} (epoch {epochs_during} when the "
          f"second measurement ended)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(rows=rows, job_training_throughout=still_training), f, indent=2)


if __name__ == "__main__":
    main()
