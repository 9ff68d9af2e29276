#!/usr/bin/python3
"""Plots a dino-bench concurrency sweep: throughput and p99 latency against clients.

Reads one or more JSON files written by `dino-bench --json` (closed loop) or by
scripts/bench_serving.py (its "sweep" entries), and draws two panels, samples/s and p99
latency (ms) against concurrent clients, one line per method (and batch size, when several
appear). Points whose calls all failed are left out; a point with refusals or errors is
drawn hollow.

  /usr/bin/python3 scripts/plot_bench.py results.json --out sweep.png
"""
import argparse
import json
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402


def closed_loop_rows(document):
    """The closed-loop result rows of a dino-bench JSON or of bench_serving.py's JSON."""
    runs = document.get("sweep", document)
    runs = runs if isinstance(runs, list) else [runs]
    for run in runs:
        for row in run.get("results", []):
            if row.get("mode", "closed") == "closed" and "concurrency" in row and \
                    row.get("calls", 0) > 0:
                yield row


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("json", nargs="+", help="dino-bench or bench_serving.py JSON files")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--title", default="dino-serve: closed-loop concurrency sweep")
    a = p.parse_args()

    series = defaultdict(list)
    for path in a.json:
        with open(path) as f:
            for row in closed_loop_rows(json.load(f)):
                series[(row["method"], row.get("batch", 1))].append(row)
    if not series:
        sys.exit(f"plot_bench: no closed-loop points with successful calls in {a.json}")
    batches = {batch for _, batch in series}

    fig, (throughput, p99) = plt.subplots(1, 2, figsize=(11, 4.2))
    for (method, batch), rows in sorted(series.items()):
        rows.sort(key=lambda r: r["concurrency"])
        label = method if len(batches) == 1 else f"{method} (B = {batch})"
        x = [r["concurrency"] for r in rows]
        line, = throughput.plot(x, [r["samples_per_s"] for r in rows], marker="o", label=label)
        p99.plot(x, [r["p99_us"] / 1000 for r in rows], marker="o", color=line.get_color(),
                 label=label)
        failed = [r for r in rows if r.get("errors", 0) > 0]
        for axis, key, scale in ((throughput, "samples_per_s", 1), (p99, "p99_us", 1000)):
            axis.scatter([r["concurrency"] for r in failed], [r[key] / scale for r in failed],
                         s=90, facecolors="none", edgecolors="red", zorder=3)
    ticks = sorted({r["concurrency"] for rows in series.values() for r in rows})
    for axis in (throughput, p99):
        axis.set_xscale("log", base=2)
        axis.set_xticks(ticks)
        axis.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axis.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        axis.set_xlabel("concurrent clients")
        axis.grid(True, which="both", alpha=0.3)
    throughput.set_ylabel("samples/s (rows of m answered)")
    throughput.set_ylim(bottom=0)
    p99.set_ylabel("p99 latency of successes (ms)")
    p99.set_yscale("log")
    throughput.legend()
    fig.suptitle(a.title + "  (red ring: point with failed calls)")
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
