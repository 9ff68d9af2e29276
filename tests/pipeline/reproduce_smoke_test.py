#!/usr/bin/python3
"""Smoke run of scripts/reproduce_paper.py: the whole experiment pipeline (generate, bases,
fit for both architectures and two losses, evaluate, table and plots) on an 8x8 mesh.

usage: reproduce_smoke_test.py <bin folder>
"""
import json
import math
import os
import subprocess
import sys
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def main():
    bin_dir = os.path.abspath(sys.argv[1])
    with tempfile.TemporaryDirectory(prefix="dino-reproduce-") as tmp:
        cmd = [sys.executable, os.path.join(ROOT, "scripts", "reproduce_paper.py"), "--smoke",
               "--bin", bin_dir, "--out", os.path.join(tmp, "work"), "--docs",
               os.path.join(tmp, "docs"), "--problems", "poisson",
               "--architectures", "dipnet,generic", "--losses", "l2,h1", "--threads", "1"]
        subprocess.run(cmd, check=True)
        results = os.path.join(tmp, "work", "poisson", "results")
        names = sorted(os.listdir(results))
        assert len(names) == 8, names  # 2 architectures x 2 losses x N in {8, 16}
        for name in names:
            with open(os.path.join(results, name)) as f:
                r = json.load(f)
            for key in ("l2_accuracy", "h1_accuracy", "reduced_h1_accuracy"):
                assert math.isfinite(r[key]), (name, key, r[key])
        with open(os.path.join(tmp, "docs", "experiments_table.md")) as f:
            table = f.read()
        assert table.count("| Poisson |") == 8, table
        for metric in ("l2_accuracy", "h1_accuracy", "reduced_h1_accuracy"):
            png = os.path.join(tmp, "docs", f"experiments_poisson_{metric}.png")
            assert os.path.getsize(png) > 1000, png
        # Resumable: a second run finds every result and trains nothing.
        rerun = subprocess.run(cmd, check=True, capture_output=True, text=True)
        assert "dino-train fit" not in rerun.stdout, rerun.stdout
    print("1 passed, 0 failed")


if __name__ == "__main__":
    main()
