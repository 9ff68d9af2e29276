#!/usr/bin/python3
"""Epoch time per sample of DIPNet training, L2 against full H1 loss, at two meshes.

Reads the --metrics-json reports of `dino-train fit` runs named <run>.json in --runs, each
run being one (mesh, loss, N) timing with a few epochs, and writes a PNG and a Markdown table:

    /usr/bin/python3 scripts/plot_epoch_times.py --runs /tmp/trust --out docs/training_epoch_time.png

Runs are matched by name: t_p<mesh>_<loss>_<tag>.json with mesh 64 (d_M = 4225) or 128
(d_M = 16,641), loss l2 or h1, tag r<k> (repetition, N = 256) or n<N>. The first epoch is
left out (it includes one-time allocation); the time of a run is the shortest of the others
(the least disturbed by other load on a shared machine).
"""
import argparse
import glob
import json
import os
import re
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

D_M = {"64": 4225, "128": 16641}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", required=True, help="folder with the t_*.json reports")
    parser.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args()

    rows = {}  # (d_M, loss, N) -> [µs per sample per epoch, one per repetition]
    for path in sorted(glob.glob(os.path.join(args.runs, "t_p*_*.json"))):
        match = re.match(r"t_p(\d+)m?_(l2|h1)_(r\d+|n\d+)\.json", os.path.basename(path))
        if not match:
            continue
        report = json.load(open(path))
        n = report["data"]["train"]["samples"]
        epochs = [e["seconds"] for e in report["history"]][1:]
        rows.setdefault((D_M[match.group(1)], match.group(2), n), []).append(
            min(epochs) / n * 1e6)

    print("| d_M | N | L2 µs/sample/epoch | full H1 µs/sample/epoch | H1 / L2 |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for d_m, n in sorted({(d, n) for d, _, n in rows}):
        l2 = statistics.median(rows.get((d_m, "l2", n), [float("nan")]))
        h1 = statistics.median(rows.get((d_m, "h1", n), [float("nan")]))
        print(f"| {d_m:,} | {n} | {l2:.1f} | {h1:.1f} | {h1 / l2:.1f} |")

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    labels, l2s, h1s = [], [], []
    for d_m, n in sorted({(d, n) for d, _, n in rows}):
        labels.append(f"d_M = {d_m:,}\nN = {n}")
        l2s.append(statistics.median(rows.get((d_m, "l2", n), [0])))
        h1s.append(statistics.median(rows.get((d_m, "h1", n), [0])))
    x = range(len(labels))
    ax.bar([i - 0.2 for i in x], l2s, 0.4, label="L2 loss")
    ax.bar([i + 0.2 for i in x], h1s, 0.4, label="full H1 loss (Prop. 2.4)")
    ax.set_xticks(list(x))
    ax.set_xticklabels(labels)
    ax.set_ylabel("epoch time per sample [µs]")
    ax.set_title("DIPNet 100-50 training cost: independent of d_M")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)


if __name__ == "__main__":
    main()
