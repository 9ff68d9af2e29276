#!/usr/bin/python3
"""Example use of the dino_serve package's fine-tuning API: fine-tunes a served model on derivative data
held in NumPy arrays, streaming them to the server in chunks, then follows the job.

    /usr/bin/python3 client/python/finetune_example.py --server localhost:50051 \\
        --model poisson_dipnet --data data/train --loss h1 --epochs 20 \\
        [--token_file admin.token] [--gen_dir build/python]

--data reads the dino / hIPPYflow layout (mq_data.npz, and J_data.npz or Jsvd_data.npz).
Without --data the example builds a small data set in memory from the served model itself
(q = f(m) + noise at random m, and the exact Jacobians from the server): enough to show the
mechanics, not to improve the model. Exits 0 if the job SUCCEEDED (a new version is served),
1 otherwise.
"""

import argparse
import itertools
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dino_serve import (DinoClient, DinoError, LOSSES, iter_batches,  # noqa: E402
                        load_dino_data)


def in_memory_data(client, model, samples, seed):
    """m ~ N(0, I), q = f(m) + 1% noise, J = ∇f(m) from the server (one call per sample)."""
    info = client.model_info(model)
    rng = np.random.default_rng(seed)
    m = rng.standard_normal((samples, info["input_dim"]))
    q = client.evaluate(model, m, dtype="fp64")
    q += 0.01 * np.abs(q).mean() * rng.standard_normal(q.shape)
    jacobians = np.stack([client.jacobian(model, mi, dtype="fp64") for mi in m])
    return {"m": m, "q": q, "J": jacobians}


def describe(status):
    """One line of a job's progress."""
    line = status["state"]
    if status["epochs"] and status["state"] not in ("RECEIVING", "QUEUED"):
        line += " epoch %d/%d" % (status["epoch"], status["epochs"])
    if status["epoch"]:
        line += ", loss train %.4g validation %.4g" % (status["train_loss"],
                                                     status["validation_loss"])
    accuracies = status["validation"] or {}
    shown = ["%s %.4f" % (k, accuracies[k]) for k in ("l2", "h1", "reduced_h1")
             if accuracies.get(k) is not None]
    if shown:
        line += ", accuracy " + " ".join(shown)
    if status["state"] == "TRAINING" and status["eta_seconds"] > 0:
        line += ", %.0f samples/s, ETA %.0f s" % (status["samples_per_second"],
                                                 status["eta_seconds"])
    return line


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="localhost:50051", help="server address")
    parser.add_argument("--model", required=True, help="the served model to fine-tune")
    parser.add_argument("--version", type=int, default=0, help="base version (0: default)")
    parser.add_argument("--data", help="data directory (mq_data.npz, J_data.npz | "
                        "Jsvd_data.npz); default: a small data set made in memory")
    parser.add_argument("--validation_data", help="directory of validation samples")
    parser.add_argument("--jacobian", default="auto", choices=("auto", "full", "svd", "none"))
    parser.add_argument("--samples", type=int, default=64,
                        help="size of the in-memory data set (without --data)")
    parser.add_argument("--loss", choices=LOSSES, help="training loss (default: the server's)")
    parser.add_argument("--epochs", type=int, default=0, help="0: the server's default")
    parser.add_argument("--chunk", type=int, help="samples per message (default: ~4 MiB)")
    parser.add_argument("--token_file", help="file holding the server's admin token")
    parser.add_argument("--gen_dir", help="folder of the generated gRPC Python code "
                        "(default: $DINO_PYTHON_GEN_DIR, else <repo>/build/python)")
    args = parser.parse_args()

    with DinoClient(args.server, gen_dir=args.gen_dir, token_file=args.token_file) as client:
        if args.data:
            data = load_dino_data(args.data, args.jacobian)
        else:
            data = in_memory_data(client, args.model, args.samples, seed=0)
        n = len(data["m"])
        batches = iter_batches(chunk=args.chunk, **data)
        total = n
        if args.validation_data:
            # Validation samples must carry the same Jacobian form as the training samples.
            form = "full" if "J" in data else "svd" if "U" in data else "none"
            validation = load_dino_data(args.validation_data, form)
            total += len(validation["m"])
            batches = itertools.chain(batches, iter_batches(chunk=args.chunk, validation=True,
                                                            **validation))
        print("uploading %d samples (%s) to %s" % (total, ", ".join(sorted(data)), args.model),
              file=sys.stderr)

        def progress(p):
            print("  sent %d/%d samples, %.1f MiB, %.0f samples/s"
                  % (p["samples"], total, p["bytes"] / 2**20,
                     p["samples"] / max(p["elapsed"], 1e-9)), file=sys.stderr)

        job_id, status = client.start_finetune(args.model, batches, version=args.version,
                                               progress=progress, loss=args.loss,
                                               epochs=args.epochs)
        print("job %s: %s" % (job_id, status["state"]), file=sys.stderr)

        last = status
        for last in client.watch_job(job_id):
            print("  " + describe(last), file=sys.stderr)
        print("job %s ended %s%s" % (job_id, last["state"],
                                     ": " + last["message"] if last["message"] else ""))
        if last["state"] == "SUCCEEDED":
            print("%s version %d now serves (and is the default)"
                  % (args.model, last["new_version"]))
        return 0 if last["state"] == "SUCCEEDED" else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DinoError as e:
        print("error:", e, file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted (an unfinished upload is cancelled: the server aborts the job)",
              file=sys.stderr)
        sys.exit(130)
