#!/usr/bin/python3
"""Factor study of DIPNet training (docs/experiments.md, "Beyond the paper"): a PNG and a
Markdown table from the results file that the study's runs append to.

Each line of --results is one finished run (JSON; "reference": true marks a number quoted from
elsewhere, drawn hatched): name, problem, factor, budget (Adam steps,
L-BFGS iterations, wall-clock seconds) and the test-set accuracies from `dino-train evaluate
--json` (l2_accuracy, h1_accuracy, reduced_h1_accuracy, basis_h1_accuracy):

    /usr/bin/python3 scripts/plot_factor_study.py --results results.jsonl \
        --out docs/factor_study.png --table docs/factor_study_table.md
"""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(path):
    runs = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                runs[row["name"]] = row  # A rerun replaces its earlier line.
    return list(runs.values())


def fmt(x, digits=3):
    return "—" if x is None else f"{x:.{digits}f}"


def table(runs):
    lines = ["| problem | run | factor | hidden | N | Adam steps | L-BFGS iter. | wall-clock | "
             "test L2 | test H1 | test reduced H1 | train H1 | basis H1 ceiling |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in runs:
        t, tr = r["test"], r.get("train") or {}
        hidden = r.get("hidden") or []
        shape = f"{len(hidden)}×{hidden[0]}" if hidden and len(set(hidden)) == 1 else str(hidden)
        lines.append(
            f"| {r['problem']} | {r['name']} | {r['factor']} | {shape} | {r['samples']} | "
            f"{r.get('adam_steps') or 0:,} | {r.get('lbfgs_iterations') or 0} | "
            f"{r['wall_s'] / 60:.1f} min | {fmt(t.get('l2_accuracy'))} | "
            f"{fmt(t.get('h1_accuracy'))} | {fmt(t.get('reduced_h1_accuracy'))} | "
            f"{fmt(tr.get('h1_accuracy'))} | {fmt(t.get('basis_h1_accuracy'))} |")
    return "\n".join(lines) + "\n"


def plot(runs, out):
    problems = sorted({r["problem"] for r in runs})
    fig, axes = plt.subplots(1, len(problems), figsize=(6.5 * len(problems), 4.2), squeeze=False)
    for ax, problem in zip(axes[0], problems):
        rows = [r for r in runs if r["problem"] == problem]
        names = [r["name"] for r in rows]
        x = range(len(rows))
        l2 = [r["test"].get("l2_accuracy") for r in rows]
        h1 = [r["test"].get("h1_accuracy") for r in rows]
        # Runs quoted from elsewhere (reference: true) are hatched.
        hatch = ["//" if r.get("reference") else "" for r in rows]
        ax.bar([i - 0.2 for i in x], l2, width=0.4, label="test L2 accuracy", color="tab:blue",
               hatch=hatch)
        ax.bar([i + 0.2 for i in x], h1, width=0.4, label="test H1 semi-norm accuracy",
               color="tab:orange", hatch=hatch)
        ceilings = [r["test"].get("basis_h1_accuracy") for r in rows
                    if r["test"].get("basis_h1_accuracy") is not None]
        if ceilings:
            ax.axhline(max(ceilings), color="k", ls="--", lw=1,
                       label=f"H1 ceiling of the bases ({max(ceilings):.3f})")
        ax.axhline(0.85, color="tab:red", ls=":", lw=1, label="target H1 0.85")
        for i, v in zip(x, h1):
            if v is not None:
                ax.text(i + 0.2, v + 0.01, f"{v:.3f}", ha="center", fontsize=7)
        ax.set_xticks(list(x))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=7)
        ax.set_ylim(0.4, 1.2)  # Room above the bars for the legend.
        ax.set_yticks([0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
        ax.set_title(problem.replace("_", "–"))
        ax.legend(fontsize=7, loc="upper center", ncol=2)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", required=True)
    parser.add_argument("--out", required=True, help="PNG")
    parser.add_argument("--table", help="Markdown table")
    args = parser.parse_args()
    runs = load(args.results)
    plot(runs, args.out)
    if args.table:
        with open(args.table, "w") as f:
            f.write(table(runs))


if __name__ == "__main__":
    main()
