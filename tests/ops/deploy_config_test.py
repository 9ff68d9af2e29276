#!/usr/bin/python3
"""The structure of deploy/'s monitoring files, and that they are wired to each other.

Grafana cannot run here (not packaged in Debian 12), so the dashboard is checked by structure
(this test) and by running its queries against a real Prometheus (prometheus_e2e_test.py).
Checked: the dashboard JSON model (schema version, unique panel ids and refIds, grid inside 24
columns, every query on the DS_PROMETHEUS datasource variable, which selects the provisioned
datasource's uid), every series the dashboard must show is queried; compose mounts each file
where the images read it (prom/prometheus: /etc/prometheus/prometheus.yml; grafana/grafana:
/etc/grafana/provisioning/, the dashboard folder the provider names), the datasource URL and
the scrape target name compose services, and the target port is the image's --metrics_port.

usage: deploy_config_test.py <source root>
"""
import json
import os
import posixpath
import re
import sys
import unittest

import yaml

SOURCE = sys.argv[1]
DEPLOY = os.path.join(SOURCE, "deploy")


def load_yaml(*path):
    with open(os.path.join(DEPLOY, *path)) as f:
        return yaml.safe_load(f)


def mounts(service):
    """{source path relative to deploy/: target} of a compose service's bind mounts."""
    result = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            result[posixpath.normpath(source)] = target
    return result


class DeployConfigTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        with open(os.path.join(DEPLOY, "grafana", "dino-serve.json")) as f:
            cls.dashboard = json.load(f)
        cls.compose = load_yaml("compose.yaml")
        cls.datasources = load_yaml("grafana", "provisioning", "datasources", "prometheus.yml")
        cls.providers = load_yaml("grafana", "provisioning", "dashboards", "dino-serve.yml")
        cls.prometheus = load_yaml("prometheus", "prometheus.yml")

    def targets(self):
        return [t for p in self.dashboard["panels"] for t in p["targets"]]

    def test_dashboard_model(self):
        d = self.dashboard
        self.assertTrue(36 <= d["schemaVersion"] <= 39, d["schemaVersion"])
        self.assertTrue(d["uid"] and d["title"])
        ids = [p["id"] for p in d["panels"]]
        self.assertEqual(len(ids), len(set(ids)), ids)
        for panel in d["panels"]:
            with self.subTest(panel=panel["title"]):
                self.assertIn(panel["type"], ("timeseries", "stat"))
                grid = panel["gridPos"]
                self.assertTrue(grid["w"] > 0 and grid["h"] > 0)
                self.assertLessEqual(grid["x"] + grid["w"], 24)
                self.assertEqual(panel["datasource"]["uid"], "${DS_PROMETHEUS}")
                refs = [t["refId"] for t in panel["targets"]]
                self.assertTrue(refs)
                self.assertEqual(len(refs), len(set(refs)))
                for target in panel["targets"]:
                    self.assertEqual(target["datasource"], panel["datasource"])
                    self.assertTrue(target["expr"].strip())
        # No two panels overlap on the grid.
        cells = set()
        for panel in d["panels"]:
            g = panel["gridPos"]
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    self.assertNotIn((x, y), cells, panel["title"])
                    cells.add((x, y))

    def test_variables_select_the_provisioned_datasource(self):
        variables = {v["name"]: v for v in self.dashboard["templating"]["list"]}
        source = variables["DS_PROMETHEUS"]
        self.assertEqual((source["type"], source["query"]), ("datasource", "prometheus"))
        provisioned = self.datasources["datasources"]
        self.assertEqual(len(provisioned), 1)
        self.assertEqual(provisioned[0]["type"], "prometheus")
        self.assertEqual(source["current"]["value"], provisioned[0]["uid"])
        # Every variable a query uses is defined (or one of Grafana's own).
        defined = set(variables) | {"__rate_interval", "__interval", "__range"}
        for target in self.targets():
            for name in re.findall(r"\$\{?(\w+)", target["expr"]):
                self.assertIn(name, defined, target["expr"])
        self.assertIn("$instance", " ".join(t["expr"] for t in self.targets()))

    def test_dashboard_shows_every_required_series(self):
        queries = " ".join(t["expr"] for t in self.targets())
        for series in ("dino_requests_total", "dino_request_latency_seconds_bucket",
                       "dino_requests_in_flight", "dino_queue_depth",
                       "dino_queue_seconds_bucket", "dino_batch_rows", "dino_batch_requests",
                       "dino_models_loaded", "dino_training_jobs",
                       "dino_training_validation_accuracy", "process_cpu_seconds_total",
                       "process_resident_memory_bytes"):
            self.assertRegex(queries, r"\b" + series + r"(_bucket|_sum|_count)?\b")
        for quantile in ("0.5", "0.99"):
            self.assertIn(f"histogram_quantile({quantile}, sum by (method, le) "
                          "(rate(dino_request_latency_seconds_bucket", queries)
            self.assertIn(f"histogram_quantile({quantile}, sum by (model, le) "
                          "(rate(dino_queue_seconds_bucket", queries)

    def test_compose_wires_the_files_the_tests_use(self):
        services = self.compose["services"]
        self.assertEqual(set(services), {"dino-server", "prometheus", "grafana"})
        self.assertEqual(services["dino-server"]["build"]["dockerfile"], "Dockerfile")
        self.assertTrue(os.path.isfile(os.path.join(
            DEPLOY, services["dino-server"]["build"]["context"], "Dockerfile")))

        prometheus = mounts(services["prometheus"])
        self.assertEqual(prometheus["prometheus/prometheus.yml"],
                         "/etc/prometheus/prometheus.yml")
        # rule_files are relative to the config file.
        for rule_file in self.prometheus["rule_files"]:
            self.assertEqual(prometheus[posixpath.join("prometheus", rule_file)],
                             posixpath.join("/etc/prometheus", rule_file))
        targets = [t for c in self.prometheus["scrape_configs"]
                   for s in c["static_configs"] for t in s["targets"]]
        self.assertEqual(targets, ["dino-server:9090"])
        with open(os.path.join(SOURCE, "Dockerfile")) as f:
            dockerfile = f.read()
        self.assertIn('"--metrics_port=9090"', dockerfile)
        # The health check must not depend on the main port's TLS settings: it asks the
        # plaintext health-only port the entrypoint opens.
        [health_server] = re.findall(r'HEALTHCHECK[^\n]*\n?[^\n]*"--server=127\.0\.0\.1:(\d+)"',
                                     dockerfile)
        self.assertIn(f'"--health_port={health_server}"', dockerfile)

        grafana = mounts(services["grafana"])
        self.assertEqual(grafana["grafana/provisioning/datasources"],
                         "/etc/grafana/provisioning/datasources")
        self.assertEqual(grafana["grafana/provisioning/dashboards"],
                         "/etc/grafana/provisioning/dashboards")
        [provider] = self.providers["providers"]
        self.assertEqual(provider["type"], "file")
        self.assertEqual(posixpath.dirname(grafana["grafana/dino-serve.json"]),
                         provider["options"]["path"])
        url = self.datasources["datasources"][0]["url"]
        self.assertEqual(url, "http://prometheus:9090")  # The prometheus service's port.
        for source in list(prometheus) + list(grafana):
            self.assertTrue(os.path.exists(os.path.join(DEPLOY, source)), source)


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1], verbosity=2)
