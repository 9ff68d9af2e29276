#!/usr/bin/python3
"""Resident memory of dino-server over repeated publishes of a large model version.

Under the default version policy (latest 1) every publish loads the new version and then
unloads the one before it, so the server's RSS must stay near "one model", with at most one
extra model while a swap is in progress, however many versions are published. This script
builds a DIPNet whose input basis is large (--input_dim x --input_rank float64; 80 MB by
default) with dino-build-model, starts dino-server on a scratch repository, publishes it
again as version 2, 3, ... (atomically: temporary file, rename, as a publisher does), waits
for each swap to finish (the server logs "model big/<v-1>: unloaded") and records VmRSS of
the server process after each one. Prints one line per publish and a summary; --json writes
the numbers. --policy_all keeps every version instead (config.json {"version_policy":
{"all": {}}}): the control run, whose RSS must grow by about one model per publish.

  /usr/bin/python3 scripts/measure_publish_rss.py --bin build/bin --publishes 20
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS for pid %d" % pid)


def wait_for(log_path, text, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        with open(log_path) as f:
            if text in f.read():
                return
        time.sleep(0.02)
    with open(log_path) as f:
        raise RuntimeError(f"'{text}' not logged within {timeout} s:\n{f.read()[-3000:]}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bin", default="build/bin")
    p.add_argument("--publishes", type=int, default=20)
    p.add_argument("--input_dim", type=int, default=100000)
    p.add_argument("--input_rank", type=int, default=100)
    p.add_argument("--policy_all", action="store_true",
                   help="keep every version loaded (the control run)")
    p.add_argument("--json", help="write the measurements here")
    args = p.parse_args()

    work = tempfile.mkdtemp(prefix="dino_rss_")
    repository = os.path.join(work, "repository")
    server = None
    try:
        subprocess.run(
            [os.path.join(args.bin, "dino-build-model"), "--repository=" + repository,
             "--name=big", "--version=1", "--architecture=dipnet",
             f"--input_dim={args.input_dim}", "--output_dim=50",
             f"--input_rank={args.input_rank}", "--output_rank=50", "--seed=1"],
            check=True, stdout=subprocess.DEVNULL)
        model_file = os.path.join(repository, "big", "1", "model.pt")
        if args.policy_all:
            with open(os.path.join(repository, "big", "config.json"), "w") as f:
                json.dump({"version_policy": {"all": {}}}, f)
        model_mib = os.path.getsize(model_file) / 2**20
        log_path = os.path.join(work, "server.log")
        log = open(log_path, "w")
        server = subprocess.Popen(
            [os.path.join(args.bin, "dino-server"), "--model_repository=" + repository,
             "--port=0", "--metrics_port=-1", "--repository_poll_seconds=0.1", "--threads=1"],
            stdout=subprocess.PIPE, stderr=log, text=True)
        for line in server.stdout:
            if "listening on" in line:
                break
        wait_for(log_path, "model big/1: available", 120)
        time.sleep(0.5)
        baseline = rss_mib(server.pid)
        print(f"model file {model_mib:.1f} MiB; RSS with version 1 loaded: {baseline:.1f} MiB")
        samples = []
        for version in range(2, args.publishes + 2):
            folder = os.path.join(repository, "big", str(version))
            os.makedirs(folder)
            temporary = os.path.join(folder, ".model.pt.tmp")
            shutil.copyfile(model_file, temporary)
            os.rename(temporary, os.path.join(folder, "model.pt"))
            wait_for(log_path, f"model big/{version}: available", 120)
            if not args.policy_all:
                wait_for(log_path, f"model big/{version - 1}: unloaded", 120)
            rss = rss_mib(server.pid)
            samples.append({"version": version, "rss_mib": rss})
            print(f"published {version:3d}: RSS {rss:7.1f} MiB ({rss - baseline:+.1f})")
        growth = max(s["rss_mib"] for s in samples) - baseline
        final = samples[-1]["rss_mib"] - baseline
        print(f"after {args.publishes} publishes: max growth {growth:+.1f} MiB, final "
              f"{final:+.1f} MiB, one model file is {model_mib:.1f} MiB")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"model_mib": model_mib, "baseline_rss_mib": baseline,
                           "samples": samples}, f, indent=2)
        if args.policy_all:
            return 0
        # The claim this measures: never more than one extra model resident after a swap.
        return 0 if growth <= model_mib * 1.5 else 1
    finally:
        if server is not None and server.poll() is None:
            server.terminate()
            server.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
