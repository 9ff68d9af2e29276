#!/usr/bin/python3
"""scripts/soak.py's reading of the server's own /metrics against a real dino-server: the
soak tells calls the server answered (by gRPC code, with its receipt-to-answer latency) from
calls whose deadline passed before the server saw them, so its counts must match what the
server was actually sent; and its traffic checker must pass right answers and catch wrong ones.

usage: soak_accounting_test.py <bin folder> <model repository> <generated Python folder>
"""
import math
import os
import shutil
import sys
import tempfile
import threading
import unittest

import numpy as np

from server_process import ServerProcess

BIN, REPOSITORY, GENERATED = sys.argv[1], sys.argv[2], sys.argv[3]
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "client", "python"))
sys.path.insert(0, os.path.join(HERE, "..", "..", "scripts"))

import dino_serve  # noqa: E402
import soak  # noqa: E402

MODEL = "poisson_dipnet"


class SoakAccounting(unittest.TestCase):
    def test_server_side_counts_follow_the_calls_made_between_two_scrapes(self):
        server = ServerProcess(BIN, REPOSITORY, "--metrics_port=0")
        try:
            url = server.announced(r"metrics on (http://\S+)")
            with dino_serve.DinoClient(server.target, gen_dir=GENERATED) as client:
                d_m = client.model_info(MODEL)["input_dim"]
                client.evaluate(MODEL, np.zeros((1, d_m)))  # Before: not counted.
                before = soak.scrape(url)
                for batch in (1, 3, 2):
                    client.evaluate(MODEL, np.zeros((batch, d_m)))
                with self.assertRaises(dino_serve.InvalidArgumentError):
                    client.evaluate(MODEL, np.zeros((1, d_m + 1)))
                after = soak.scrape(url)
        finally:
            server.stop()
        for scraped in (before, after):  # What the server's malloc holds, in MiB.
            self.assertGreater(scraped["heap"]["in_use_mib"], 1.0, scraped["heap"])
            self.assertGreaterEqual(scraped["heap"]["free_mib"], 0.0, scraped["heap"])
        side = soak.server_side(before, after)
        self.assertEqual(side["codes"], {"OK": 3, "INVALID_ARGUMENT": 1})
        # Four calls answered in well under a second on any machine: the bucket holding the
        # 99th percentile is a finite bound.
        self.assertTrue(math.isfinite(side["latency_p99_s_at_most"]), side)
        self.assertLess(side["latency_p99_s_at_most"], 30.0)

    def test_traffic_checks_every_method_against_autograd_and_flags_a_wrong_answer(self):
        # The soak's claim "0 wrong" rests on this checker: right answers of every method,
        # batch size and wire dtype pass it, and answers 1 % off do not.
        server = ServerProcess(BIN, REPOSITORY)
        try:
            with dino_serve.DinoClient(server.target, gen_dir=GENERATED) as client:
                d_m = client.model_info(MODEL)["input_dim"]
            traffic = soak.Traffic(server.target, GENERATED, REPOSITORY,
                                   soak.make_pool(d_m, 8, seed=2), seed=3, models=(MODEL,))

            def run(calls):
                finished = threading.Semaphore(0)
                for _ in range(calls):
                    traffic.issue(finished.release)
                    finished.acquire()
                return traffic.reset()
            right = run(120)
            for reference in traffic.reference.cache.values():
                for key in ("q", "J", "reduced"):
                    reference[key] *= 1.01
            wrong = run(40)
            traffic.channel.close()
        finally:
            server.stop()
        self.assertEqual((right["ok"], right["wrong"], right["unexpected"]), (120, 0, 0),
                         right["samples"])
        self.assertEqual(set(right["by_method"]), set(soak.METHODS))
        self.assertEqual((wrong["ok"], wrong["wrong"]), (0, 40), wrong["samples"])

    def test_snapshots_are_taken_in_one_served_state_whatever_the_swapper_did(self):
        # The RSS comparison is only fair between snapshots that serve the same versions.
        with tempfile.TemporaryDirectory() as tmp:
            repository = os.path.join(tmp, "repository")
            for version in (1, 2, 3, 4):
                shutil.copytree(os.path.join(REPOSITORY, MODEL, "4"),
                                os.path.join(repository, soak.MODEL, str(version)))
            token = os.path.join(tmp, "token")
            with open(token, "w") as f:
                f.write(soak.TOKEN)
            server = ServerProcess(BIN, repository, "--admin_token_file=" + token)
            control = None
            try:
                control = soak.Control(server.target, GENERATED)
                control.label(1, soak.BENCH_LABEL)
                control.label(2)   # What the swapper may leave behind: the label moved,
                control.pin(3)     # the default pinned, and the latest version loaded too.
                self.assertEqual(control.listing()[0], [1, 2, 3, 4])
                self.assertEqual(soak.serve_canonical_versions(control), [1, 4])
                self.assertEqual(control.listing(), ([1, 4], [4]))
            finally:
                if control is not None:
                    control.close()
                server.stop()

    def test_an_empty_interval_has_no_codes_and_no_percentile(self):
        empty = {"codes": {"OK": 5.0}, "latency_buckets": {"0.001": 5.0, "+Inf": 5.0}}
        self.assertEqual(soak.server_side(empty, empty),
                         {"codes": {}, "latency_p99_s_at_most": None})


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1])
