#!/usr/bin/python3
"""Smoke test of scripts/bench_serving.py --quick: every stage runs against a real dino-server
on the bundled model and the outputs have every target with a measured number.

  bench_serving_smoke_test.py BIN_DIR SOURCE_DIR

The quick run's numbers mean nothing (points of a fraction of a second, small batches); what
is tested is that the driver, dino-bench, bench_inprocess.py, the PDE benchmark and the plot
work together and report honestly: no failed or wrongly answered call in any stage.
"""
import json
import os
import subprocess
import sys
import tempfile
import time
import unittest

BIN, SOURCE = sys.argv[1], sys.argv[2]


class BenchServingSmokeTest(unittest.TestCase):
    def test_quick_run_writes_every_output(self):
        with tempfile.TemporaryDirectory(prefix="bench_serving_smoke_") as out:
            start = time.monotonic()
            r = subprocess.run(
                [sys.executable, os.path.join(SOURCE, "scripts", "bench_serving.py"), "--quick",
                 "--bin", BIN, "--repository", os.path.join(SOURCE, "models", "repository"),
                 "--out", out, "--threads", "2"],
                capture_output=True, text=True, timeout=55)
            self.assertEqual(r.returncode, 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}")
            for name in ("serving.json", "serving.csv", "serving.md", "serving_sweep.png"):
                self.assertGreater(os.path.getsize(os.path.join(out, name)), 0, name)
            self.assertFalse(os.path.exists(os.path.join(out, "serving.partial.json")))
            with open(os.path.join(out, "serving.json")) as f:
                results = json.load(f)
            self.assertTrue(results["meta"]["quick"])
            self.assertIn("--threads=2", results["meta"]["server_flags"])
            sweep = {(row["method"], row["concurrency"]): row
                     for row in results["sweep"]["results"]}
            for method in ("Evaluate", "ReducedJacobian"):
                for clients in (1, 64):
                    row = sweep[(method, clients)]
                    self.assertGreater(row["calls"], 0, row)
                    self.assertEqual(row["errors"], 0, row)
                    self.assertGreater(row["samples_per_s"], 0)
            for row in results["large_batch"]["results"]:  # Timed, unchecked.
                self.assertEqual(row["batch"], 100)
                self.assertGreater(row["samples_per_s"], 0, row)
            for row in results["large_batch"]["check_run"]["results"]:  # Untimed, checked.
                self.assertEqual(row["batch"], 100)
                self.assertEqual(row["check"]["failures"], 0, row)
                self.assertEqual(row["check"]["checked"], row["calls"] + 2)  # + warm-up.
            overload = results["overload"]["bench"]["results"][0]
            self.assertEqual(overload["concurrency"], 32)
            self.assertEqual(overload["check"]["failures"], 0)
            self.assertTrue(results["overload"]["healthy_after"])
            backoff = results["overload"]["backoff_bench"]["results"][0]
            self.assertEqual(backoff["check"]["failures"], 0)
            self.assertEqual(results["overload"]["backoff_ms"], 100)
            floor = results["sweep"]["transport_floor"]  # The fake server is in the same bin/.
            self.assertGreater(floor["calls"], 0)
            self.assertGreater(floor["p50_us"], 0)
            self.assertGreater(results["pde"]["seconds_per_sample"], 0)
            self.assertGreater(results["inprocess"]["evaluate"]["batch1"]["p50_us"], 0)
            targets = results["targets"]
            self.assertEqual(len(targets), 13)
            for t in targets:
                if t["pass"] is not None:  # n/a only where the server lacks a feature.
                    self.assertNotIn("n/a", t["measured"], t)
            with open(os.path.join(out, "serving.md")) as f:
                table = f.read()
            self.assertIn("Quick smoke run", table)
            for t in targets:
                self.assertIn(f"| {t['target']} | {t['measured']}", table)
            with open(os.path.join(out, "serving.csv")) as f:
                rows = f.read().splitlines()
            self.assertEqual(len(rows), 1 + 4 + 2 + 1 + 1)  # + the overload run with backoff.
            print(f"quick run took {time.monotonic() - start:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]], verbosity=2)
