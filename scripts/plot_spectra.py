#!/usr/bin/env python3
"""Plots the spectra written by `dino-train bases` (spectra.csv) to a PNG.

Usage (Debian's interpreter, which sees python3-matplotlib):
    /usr/bin/python3 scripts/plot_spectra.py DIR                # DIR/spectra.csv -> DIR/spectra.png
    /usr/bin/python3 scripts/plot_spectra.py DIR/spectra.csv -o spectra.png --absolute

Two panels on a log scale: the input-side spectra (active subspace, prior KLE; r_M values)
and the output-side spectra (output derivative basis, POD; up to d_Q values). By default each
spectrum is divided by its largest eigenvalue, so spectra of different quantities share an
axis and the decay rates are what is compared; --absolute plots the eigenvalues themselves.
Zero and negative eigenvalues (rounding in null spaces) cannot be shown on a log axis and
are left out.
"""

import argparse
import csv
import math
import os
import sys

INPUT_SIDE = [("active_subspace", "active subspace  E[∇qᵀ∇q]"), ("kle", "prior KLE")]
OUTPUT_SIDE = [("output_derivative", "output derivative  E[∇q∇qᵀ]"), ("pod", "output POD")]


def read_spectra(path):
    """Returns {column name: [eigenvalue, ...]} from a spectra CSV (empty cells end a column)."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError(f"{path} is empty")
        if not header or header[0] != "index":
            raise ValueError(f"{path}: the first column must be 'index', found {header[:1]}")
        names = header[1:]
        spectra = {name: [] for name in names}
        for line_number, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise ValueError(
                    f"{path}:{line_number}: {len(row)} fields, the header has {len(header)}")
            for name, cell in zip(names, row[1:]):
                if cell.strip() == "":
                    continue
                try:
                    spectra[name].append(float(cell))
                except ValueError:
                    raise ValueError(f"{path}:{line_number}: column '{name}' holds '{cell}', "
                                     "not a number")
    return spectra


def plot(spectra, output, absolute, title):
    try:
        import matplotlib
    except ImportError:
        sys.exit("plot_spectra.py: matplotlib is missing; install python3-matplotlib "
                 "(apt-get install python3-matplotlib) and run with /usr/bin/python3")
    matplotlib.use("Agg")  # Files only: no display needed.
    import matplotlib.pyplot as plt

    panels = [("input side (parameter m)", INPUT_SIDE), ("output side (observables q)", OUTPUT_SIDE)]
    panels = [(t, [(k, label) for k, label in series if spectra.get(k)]) for t, series in panels]
    panels = [(t, series) for t, series in panels if series]
    if not panels:
        raise ValueError("no known spectra to plot (expected columns: " +
                         ", ".join(k for k, _ in INPUT_SIDE + OUTPUT_SIDE) + ")")

    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 4.5), squeeze=False)
    for ax, (panel_title, series) in zip(axes[0], panels):
        for key, label in series:
            values = spectra[key]
            scale = 1.0 if absolute else max(values)
            if not scale > 0.0:
                continue
            points = [(k + 1, v / scale) for k, v in enumerate(values)
                      if v > 0.0 and math.isfinite(v)]
            if points:
                xs, ys = zip(*points)
                ax.semilogy(xs, ys, marker=".", markersize=4, linewidth=1.2, label=label)
        ax.set_title(panel_title)
        ax.set_xlabel("index k")
        ax.set_ylabel("eigenvalue λ_k" if absolute else "λ_k / λ_1")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    plt.close(fig)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spectra", help="spectra.csv, or the directory that holds it")
    parser.add_argument("-o", "--output", help="PNG to write (default: spectra.png beside the CSV)")
    parser.add_argument("--absolute", action="store_true",
                        help="plot eigenvalues instead of λ_k / λ_1")
    parser.add_argument("--title", default="", help="figure title")
    args = parser.parse_args(argv)

    path = args.spectra
    if os.path.isdir(path):
        path = os.path.join(path, "spectra.csv")
    output = args.output or os.path.join(os.path.dirname(path) or ".", "spectra.png")
    try:
        spectra = read_spectra(path)
        plot(spectra, output, args.absolute, args.title)
    except (OSError, ValueError) as e:
        sys.exit(f"plot_spectra.py: {e}")
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
