#!/usr/bin/python3
"""Reproduces the paper's experiment (§3, Figs. 5-13) with dino-train, resumably.

For each problem (Poisson, reaction-diffusion) it generates a training set and an independent
test set (exact adjoint Jacobians, stored as their SVD), computes the DIPNet bases from the
training set, trains every (architecture, loss, N) of the grid, evaluates L2, H1 semi-norm and
reduced H1 accuracy (3.6a-c) on the test set, and writes:

  <out>/<problem>/results/<arch>_<loss>_N<n>.json   one per run (a run that has one is skipped)
  docs/experiments.md                                  the table (with --docs)
  docs/experiments_<problem>_<metric>.png              accuracy vs N, like Figs. 5-13

usage:
  scripts/reproduce_paper.py --bin build/bin --out experiments [--docs docs]
      [--problems poisson,reaction_diffusion] [--train-samples 16,64,256,1024]
      [--test-samples 1024] [--epochs 100] [--architectures dipnet,generic]
      [--losses l2,h1,reduced_h1,reduced_h1_ms] [--smoke]

--smoke runs a minutes-long version (8x8 mesh, few samples, 3 epochs) used by the tests.
Interrupting it loses at most the run in progress; rerunning continues.
"""
import argparse
import json
import os
import subprocess
import sys
import time

LOSS_LABELS = {"l2": "L2", "h1": "H1", "reduced_h1": "reduced H1",
               "reduced_h1_ms": "reduced H1 MS", "sketched_h1": "sketched H1"}
ARCH_LABELS = {"dipnet": "DIPNet 100-50", "generic": "Generic"}
PROBLEM_LABELS = {"poisson": "Poisson", "reaction_diffusion": "Reaction-diffusion"}


def run(cmd, log):
    print("+", " ".join(cmd), flush=True)
    with open(log, "a") as f:
        f.write("+ " + " ".join(cmd) + "\n")
        f.flush()
        result = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        sys.exit(f"command failed ({result.returncode}); see {log}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin", required=True, help="folder with dino-train")
    p.add_argument("--out", required=True, help="work folder (data, models, results)")
    p.add_argument("--docs", help="write the table and plots here")
    p.add_argument("--problems", default="poisson,reaction_diffusion")
    p.add_argument("--architectures", default="dipnet,generic")
    p.add_argument("--losses", default="l2,h1,reduced_h1,reduced_h1_ms")
    p.add_argument("--train-samples", default="16,64,256,1024")
    p.add_argument("--test-samples", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--generic-epochs", type=int, help="epochs of generic runs (default --epochs)")
    p.add_argument("--generic-max-samples", type=int, default=1 << 30,
                   help="skip generic runs with more training samples (they are the costly ones)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--equal-steps", type=int, default=0,
                   help="train every run for this many Adam steps (batch 32) instead of "
                        "--epochs, with the learning rate decaying by 0.98 per 128 steps (the "
                        "schedule of N=4096 at 100 epochs); results go to results_steps<S>/ "
                        "and the docs to experiments_steps<S>_*")
    p.add_argument("--mesh", type=int, default=64)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--report-only", action="store_true",
                   help="only collect the results already in --out and write --docs")
    a = p.parse_args()
    if a.smoke:
        a.mesh, a.train_samples, a.test_samples, a.epochs = 8, "8,16", 8, 3

    train_sizes = [int(x) for x in a.train_samples.split(",")]
    suffix = f"_steps{a.equal_steps}" if a.equal_steps else ""
    if a.report_only:
        rows = []
        for problem in a.problems.split(","):
            folder = os.path.join(a.out, problem, "results" + suffix)
            for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
                if name.endswith(".json"):
                    with open(os.path.join(folder, name)) as f:
                        rows.append(json.load(f))
        write_docs(rows, a)
        return
    dino_train = os.path.join(a.bin, "dino-train")
    rows = []
    for problem in a.problems.split(","):
        root = os.path.join(a.out, problem)
        os.makedirs(os.path.join(root, "results" + suffix), exist_ok=True)
        log = os.path.join(root, "log.txt")
        common = ["--problem", problem, "--mesh", str(a.mesh), "--jacobian", "svd",
                  "--rank", "50" if not a.smoke else "9", "--threads", str(a.threads)]
        # Training and test sets from different seeds: independent samples of the prior.
        for name, n, seed in (("train", max(train_sizes), 1), ("test", a.test_samples, 2)):
            folder = os.path.join(root, name)
            manifest = os.path.join(folder, "generate.json")
            have = 0
            if os.path.exists(manifest):
                with open(manifest) as f:
                    have = json.load(f)["samples"]
            # Sample i depends only on (seed, i): a larger set extends a smaller one, so runs
            # already made on its first samples stay valid (and so do its bases).
            if have < n:
                run([dino_train, "generate", "--samples", str(n), "--out", folder, "--seed",
                     str(seed), "--progress", "lines"] + common, log)
        train, test = os.path.join(root, "train"), os.path.join(root, "test")
        if not os.path.exists(os.path.join(train, "bases.npz")):
            run([dino_train, "bases", "--data", train, "--input-rank",
                 "100" if not a.smoke else "20", "--output-rank", "50" if not a.smoke else "9",
                 "--problem", problem, "--mesh", str(a.mesh)], log)
        for arch in a.architectures.split(","):
            for loss in a.losses.split(","):
                for n in train_sizes:
                    if arch == "generic" and n > a.generic_max_samples:
                        continue
                    tag = f"{arch}_{loss}_N{n}"
                    result = os.path.join(root, "results" + suffix, tag + ".json")
                    if not os.path.exists(result):
                        model = os.path.join(root, "models" + suffix, tag + ".pt")
                        epochs = a.generic_epochs if arch == "generic" and a.generic_epochs else a.epochs
                        decay = 0.98
                        if a.equal_steps:
                            batches = -(-n // 32)
                            epochs = -(-a.equal_steps // batches)
                            decay = 0.98 ** (batches / 128)
                        start = time.time()
                        run([dino_train, "fit", "--data", train, "--count", str(n),
                             "--architecture", arch, "--loss", loss, "--epochs", str(epochs),
                             "--dtype", "fp32", "--threads", str(a.threads), "--out", model,
                             "--evaluation-interval", "0", "--progress", "lines",
                             "--schedule", "exponential", "--decay-rate", f"{decay:.8f}",
                             "--metrics-json", os.path.join(root, "models" + suffix, tag + ".json")]
                            + (["--input-rank", "20", "--output-rank", "9"] if a.smoke else []), log)
                        fit_seconds = time.time() - start
                        run([dino_train, "evaluate", "--data", test, "--model", model,
                             "--threads", str(a.threads), "--json", result + ".tmp"], log)
                        with open(result + ".tmp") as f:
                            accuracies = json.load(f)
                        accuracies.update(problem=problem, architecture=arch, loss=loss,
                                          train_samples=n, epochs=epochs,
                                          fit_seconds=round(fit_seconds, 1))
                        with open(result + ".tmp", "w") as f:
                            json.dump(accuracies, f, indent=2)
                        os.replace(result + ".tmp", result)
                    with open(result) as f:
                        rows.append(json.load(f))
    if a.docs:
        write_docs(rows, a)


def write_docs(rows, a):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(a.docs, exist_ok=True)
    prefix = f"experiments_steps{a.equal_steps}" if a.equal_steps else "experiments"
    budget = (f"{a.equal_steps} Adam steps per run" if a.equal_steps else f"epochs {a.epochs}"
              + (f", generic epochs {a.generic_epochs}" if a.generic_epochs else ""))
    lines = ["# Reproducing the paper's experiment", "",
             "Generated by `scripts/reproduce_paper.py` "
             f"(mesh {a.mesh}x{a.mesh}, test samples {a.test_samples}, {budget}).",
             "Accuracies on the test set: L2 (3.6a), H1 semi-norm (3.6b), reduced H1 (3.6c).",
             "", "| problem | network | loss | N | L2 acc. | H1 acc. | reduced H1 acc. | fit s |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    fmt = lambda v: "—" if v is None else f"{v:.3f}"
    for r in sorted(rows, key=lambda r: (r["problem"], r["architecture"], r["loss"],
                                         r["train_samples"])):
        lines.append(f"| {PROBLEM_LABELS.get(r['problem'], r['problem'])} | "
                     f"{ARCH_LABELS.get(r['architecture'], r['architecture'])} | "
                     f"{LOSS_LABELS.get(r['loss'], r['loss'])} | {r['train_samples']} | "
                     f"{fmt(r.get('l2_accuracy'))} | {fmt(r.get('h1_accuracy'))} | "
                     f"{fmt(r.get('reduced_h1_accuracy'))} | {r.get('fit_seconds', '')} |")
    with open(os.path.join(a.docs, prefix + "_table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    for problem in sorted({r["problem"] for r in rows}):
        for metric, label in (("l2_accuracy", "L2 accuracy"), ("h1_accuracy", "H1 semi-norm accuracy"),
                              ("reduced_h1_accuracy", "reduced H1 accuracy")):
            fig, ax = plt.subplots(figsize=(6, 4))
            for arch in sorted({r["architecture"] for r in rows}):
                for loss in sorted({r["loss"] for r in rows}):
                    pts = sorted((r["train_samples"], r.get(metric)) for r in rows
                                 if r["problem"] == problem and r["architecture"] == arch
                                 and r["loss"] == loss and r.get(metric) is not None)
                    if pts:
                        ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o",
                                linestyle="-" if arch == "dipnet" else "--",
                                label=f"{ARCH_LABELS.get(arch, arch)}, {LOSS_LABELS.get(loss, loss)}")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("training samples N")
            ax.set_ylabel(label)
            ax.set_title(f"{PROBLEM_LABELS.get(problem, problem)}: {label}"
                         + (f" ({a.equal_steps} Adam steps per run)" if a.equal_steps else ""))
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(os.path.join(a.docs, f"{prefix}_{problem}_{metric}.png"), dpi=110)
            plt.close(fig)


if __name__ == "__main__":
    main()
