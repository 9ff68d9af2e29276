#!/usr/bin/python3
"""deploy/kubernetes/: the manifests parse, every object has what Kubernetes requires of its
kind, the objects agree with each other and with dino-server.

Checked without a cluster: every document parses (python3-yaml) and, where kubectl is
installed, through `kubectl kustomize` (kubectl's own reader; `kubectl apply --dry-run=client`
needs an API server for discovery, so it cannot run here). Required fields per kind
(Deployment, Service, PersistentVolumeClaim, PodDisruptionBudget, HorizontalPodAutoscaler,
ConfigMap); names and labels are valid; selectors select the pod template; Service target
ports, probe ports and the prometheus.io/port annotation name container ports, which are the
ports the server's flags open; every volume mount names a volume; files named in flags lie
under a mount of the right volume; the HPA's target is the Deployment and its custom metric is
the name prometheus-adapter's rule produces; the PDB leaves room for evictions.

Asked of the built binaries rather than listed here: every --flag in a container's args is one
`dino-server --helpfull` lists; a dino-server started with the manifest's probe flags answers
grpc.health.v1 on the plaintext --health_port for the probes' services (as the kubelet asks),
and after one Evaluate its /metrics has the series and labels the adapter rule queries.

usage: kubernetes_manifest_test.py <source root> <folder with dino-server and dino>
"""
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import unittest
import urllib.request

import numpy as np
import yaml

SOURCE, BIN = (os.path.abspath(a) for a in sys.argv[1:3])
KUBERNETES = os.path.join(SOURCE, "deploy", "kubernetes")
# The apiVersion of each kind used, as Kubernetes >= 1.25 serves them.
API_VERSIONS = {"Deployment": "apps/v1", "Service": "v1", "PersistentVolumeClaim": "v1",
                "PodDisruptionBudget": "policy/v1", "HorizontalPodAutoscaler": "autoscaling/v2",
                "ConfigMap": "v1"}
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")


def flag_value(args, name):
    values = [a.split("=", 1)[1] for a in args if a.startswith("--" + name + "=")]
    return values[-1] if values else None  # A later flag wins (absl).


def quantity(text):
    """A CPU or memory quantity in base units."""
    text = str(text)
    match = re.match(r"^([0-9.]+)(m|k|Ki|Mi|Gi|Ti|M|G|T)?$", text)
    factor = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10,
              "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[match.group(2)]
    return float(match.group(1)) * factor


def server_flags():
    """The flags dino-server defines, from its own --helpfull."""
    text = subprocess.run([os.path.join(BIN, "dino-server"), "--helpfull"],
                          capture_output=True, text=True, timeout=60).stdout
    flags = set(re.findall(r"^\s+--(\w+) \(", text, re.MULTILINE))
    assert {"port", "model_repository", "tls_cert"} <= flags, text[:2000]
    return flags


class KubernetesManifestTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.files = sorted(glob.glob(os.path.join(KUBERNETES, "*.yaml")))
        cls.objects = []
        for path in cls.files:
            with open(path) as f:
                cls.objects += [(os.path.basename(path), d) for d in yaml.safe_load_all(f) if d]
        cls.by_kind = {}
        for _, o in cls.objects:
            cls.by_kind.setdefault(o["kind"], []).append(o)
        [cls.deployment] = cls.by_kind["Deployment"]
        cls.pod = cls.deployment["spec"]["template"]
        [cls.server] = [c for c in cls.pod["spec"]["containers"] if c["name"] == "dino-server"]
        cls.ports = {p["name"]: p["containerPort"] for p in cls.server["ports"]}

    def test_every_object_has_the_fields_its_kind_requires(self):
        self.assertTrue(self.files)
        names = set()
        for file, o in self.objects:
            with self.subTest(file=file, kind=o.get("kind"), name=o.get("metadata", {}).get(
                    "name")):
                self.assertIn(o.get("kind"), API_VERSIONS)
                self.assertEqual(o.get("apiVersion"), API_VERSIONS[o["kind"]])
                name = o["metadata"]["name"]
                self.assertRegex(name, DNS_1123)
                self.assertLessEqual(len(name), 63 if o["kind"] == "Service" else 253)
                self.assertNotIn((o["kind"], name), names)
                names.add((o["kind"], name))
                for key, value in o["metadata"].get("labels", {}).items():
                    self.assertRegex(str(value), LABEL_VALUE, key)
                if o["kind"] != "ConfigMap":
                    self.assertIn("spec", o)

    def test_deployment_pod_template(self):
        spec = self.deployment["spec"]
        selector = spec["selector"]["matchLabels"]
        self.assertTrue(selector)
        self.assertLessEqual(selector.items(), self.pod["metadata"]["labels"].items())
        self.assertGreaterEqual(spec["replicas"], 2)
        pod = self.pod["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        self.assertEqual(len(volumes), len(pod["volumes"]))
        used = set()
        for container in pod.get("initContainers", []) + pod["containers"]:
            with self.subTest(container=container["name"]):
                self.assertRegex(container["name"], DNS_1123)
                self.assertTrue(container["image"])
                port_names = [p["name"] for p in container.get("ports", [])]
                self.assertEqual(len(port_names), len(set(port_names)))
                for p in container.get("ports", []):
                    self.assertLessEqual(len(p["name"]), 15)
                    self.assertTrue(1 <= p["containerPort"] <= 65535)
                paths = [m["mountPath"] for m in container.get("volumeMounts", [])]
                self.assertEqual(len(paths), len(set(paths)))
                for mount in container.get("volumeMounts", []):
                    self.assertIn(mount["name"], volumes)
                    self.assertTrue(mount["mountPath"].startswith("/"))
                    used.add(mount["name"])
                resources = container["resources"]
                for kind in ("cpu", "memory"):
                    self.assertRegex(str(resources["requests"][kind]), QUANTITY)
                    if kind in resources.get("limits", {}):
                        self.assertLessEqual(quantity(resources["requests"][kind]),
                                             quantity(resources["limits"][kind]))
        self.assertEqual(used, set(volumes))  # No volume defined and never mounted.
        # The seed runs the same image and writes the volume the server reads.
        [seed] = pod["initContainers"]
        self.assertEqual(seed["image"], self.server["image"])
        self.assertEqual({m["name"] for m in seed["volumeMounts"]}, {"models"})
        # The image's ENTRYPOINT is dino-server: the container's args are its flags.
        with open(os.path.join(SOURCE, "Dockerfile")) as f:
            self.assertRegex(f.read(), r'ENTRYPOINT \["dino-server"')
        self.assertNotIn("command", self.server)

    def test_args_are_flags_dino_server_has(self):
        flags = server_flags()
        for arg in self.server["args"]:
            with self.subTest(arg=arg):
                match = re.match(r"^--(\w+)(=.*)?$", arg)
                self.assertTrue(match, "not a --flag[=value]")
                self.assertIn(match.group(1), flags)

    def test_ports_probes_and_files_agree_with_the_flags(self):
        args = self.server["args"]
        self.assertEqual(int(flag_value(args, "port")), self.ports["grpc"])
        self.assertEqual(int(flag_value(args, "metrics_port")), self.ports["metrics"])
        self.assertEqual(int(flag_value(args, "health_port")), self.ports["health"])
        annotations = self.pod["metadata"]["annotations"]
        self.assertEqual(int(annotations["prometheus.io/port"]), self.ports["metrics"])
        self.assertEqual(annotations["prometheus.io/path"], "/metrics")
        # Native gRPC probes on the plaintext health port: with TLS on, the kubelet's gRPC
        # client (plaintext, no client certificate) cannot ask the main port.
        self.assertTrue(flag_value(args, "tls_cert"))
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            with self.subTest(probe=probe):
                self.assertEqual(set(self.server[probe]) & {"grpc", "httpGet", "exec",
                                                            "tcpSocket"}, {"grpc"})
                self.assertEqual(self.server[probe]["grpc"]["port"], self.ports["health"])
        self.assertEqual(self.server["readinessProbe"]["grpc"]["service"], "dino.v1.Surrogate")

        volumes = {v["name"]: v for v in self.pod["spec"]["volumes"]}
        mounts = {m["mountPath"]: m for m in self.server["volumeMounts"]}

        def volume_of(path):
            folders = [p for p in mounts if path == p or path.startswith(p.rstrip("/") + "/")]
            self.assertTrue(folders, f"{path} is under no volume mount")
            return volumes[mounts[max(folders, key=len)]["name"]]
        repository = volume_of(flag_value(args, "model_repository"))
        [claim] = self.by_kind["PersistentVolumeClaim"]
        self.assertEqual(repository["persistentVolumeClaim"]["claimName"],
                         claim["metadata"]["name"])
        self.assertNotIn("readOnly", mounts[flag_value(args, "model_repository")])
        tls = {volume_of(flag_value(args, f))["secret"]["secretName"]
               for f in ("tls_cert", "tls_key", "tls_client_ca")}
        self.assertEqual(len(tls), 1)
        self.assertTrue(volume_of(flag_value(args, "admin_token_file"))["secret"]["secretName"])
        for name in ("tls", "admin-token"):
            self.assertTrue([m for m in self.server["volumeMounts"]
                             if m["name"] == name and m.get("readOnly")])

    def test_shared_repository_claim(self):
        [claim] = self.by_kind["PersistentVolumeClaim"]
        self.assertEqual(claim["spec"]["accessModes"], ["ReadWriteMany"])
        self.assertRegex(str(claim["spec"]["resources"]["requests"]["storage"]), QUANTITY)

    def test_service_selects_the_pods_and_targets_their_ports(self):
        [service] = self.by_kind["Service"]
        self.assertLessEqual(service["spec"]["selector"].items(),
                             self.pod["metadata"]["labels"].items())
        for port in service["spec"]["ports"]:
            with self.subTest(port=port["name"]):
                self.assertIn(port["targetPort"], self.ports)
                self.assertEqual(port["port"], self.ports[port["targetPort"]])
        self.assertEqual({p["targetPort"] for p in service["spec"]["ports"]},
                         {"grpc", "metrics"})

    def test_disruption_budget_and_autoscaler(self):
        [budget] = self.by_kind["PodDisruptionBudget"]
        [hpa] = self.by_kind["HorizontalPodAutoscaler"]
        self.assertEqual(budget["spec"]["selector"]["matchLabels"],
                         self.deployment["spec"]["selector"]["matchLabels"])
        spec = hpa["spec"]
        target = spec["scaleTargetRef"]
        self.assertEqual((target["apiVersion"], target["kind"], target["name"]),
                         (self.deployment["apiVersion"], "Deployment",
                          self.deployment["metadata"]["name"]))
        self.assertLessEqual(spec["minReplicas"], spec["maxReplicas"])
        self.assertLessEqual(spec["minReplicas"], self.deployment["spec"]["replicas"])
        # A drain can always evict one pod.
        self.assertLess(budget["spec"]["minAvailable"], spec["minReplicas"])
        metrics = {m["type"]: m for m in spec["metrics"]}
        self.assertEqual(set(metrics), {"Resource", "Pods"})
        self.assertEqual(metrics["Resource"]["resource"]["name"], "cpu")
        self.assertIn("cpu", self.server["resources"]["requests"])  # Utilization needs it.
        pods = metrics["Pods"]["pods"]
        self.assertEqual(pods["target"]["type"], "AverageValue")
        self.assertGreater(quantity(pods["target"]["averageValue"]), 0)
        [rule] = self.adapter_rules()
        self.assertEqual(pods["metric"]["name"], rule["name"]["as"])

    def adapter_rules(self):
        [config] = [o for o in self.by_kind["ConfigMap"]
                    if o["metadata"]["name"].startswith("prometheus-adapter")]
        return yaml.safe_load(config["data"]["config.yaml"])["rules"]

    def test_adapter_rule(self):
        [rule] = self.adapter_rules()
        self.assertEqual(rule["resources"]["overrides"],
                         {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}})
        series = re.match(r"^(\w+)\{", rule["seriesQuery"]).group(1)
        self.assertRegex(series, rule["name"]["matches"])
        for template in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
            self.assertIn(template, rule["metricsQuery"])

    @unittest.skipUnless(shutil.which("kubectl"), "kubectl is not installed")
    def test_kubectl_reads_the_manifests(self):
        with tempfile.TemporaryDirectory() as folder:
            for path in self.files:
                shutil.copy(path, folder)
            with open(os.path.join(folder, "kustomization.yaml"), "w") as f:
                yaml.safe_dump({"resources": [os.path.basename(p) for p in self.files]}, f)
            result = subprocess.run(["kubectl", "kustomize", folder], capture_output=True,
                                    text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        read = [d for d in yaml.safe_load_all(result.stdout) if d]
        self.assertEqual(sorted((d["kind"], d["metadata"]["name"]) for d in read),
                         sorted((o["kind"], o["metadata"]["name"]) for _, o in self.objects))

    def test_probes_and_adapter_series_against_a_real_server(self):
        """dino-server with the manifest's health port flag (port numbers picked free)."""
        server = subprocess.Popen(
            [os.path.join(BIN, "dino-server"),
             "--model_repository=" + os.path.join(SOURCE, "models", "repository"),
             "--host=127.0.0.1", "--port=0", "--metrics_port=0", "--health_port=0",
             "--repository_poll_seconds=0"], stdout=subprocess.PIPE, text=True)
        work = tempfile.mkdtemp(prefix="dino-k8s-")
        try:
            found = {}
            for line in server.stdout:
                for key, pattern in (("metrics", r"metrics on (http://\S+)"),
                                     ("health", r"health on \S*:(\d+)"),
                                     ("grpc", r"listening on \S*:(\d+)")):
                    match = re.search(pattern, line)
                    if match:
                        found[key] = match.group(1)
                if "grpc" in found:
                    break
            self.assertEqual(set(found), {"metrics", "health", "grpc"}, "server did not start")

            def dino(*args):
                return subprocess.run([os.path.join(BIN, "dino"), *args], capture_output=True,
                                      text=True, timeout=60, cwd=work)
            health = "127.0.0.1:" + found["health"]
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                service = self.server[probe]["grpc"].get("service", "")
                result = dino("health", "--server", health, "--service", service)
                self.assertEqual((result.returncode, result.stdout.strip()), (0, "SERVING"),
                                 f"{probe}: {result.stderr}")
            # The health port serves nothing else.
            result = dino("models", "--server", health)
            self.assertNotEqual(result.returncode, 0)
            self.assertIn("UNIMPLEMENTED", result.stderr)

            np.save(os.path.join(work, "m.npy"), np.zeros((1, 4225)))
            result = dino("eval", "--server", "127.0.0.1:" + found["grpc"], "--model",
                          "poisson_dipnet", "--m", "m.npy")
            self.assertEqual(result.returncode, 0, result.stderr)
            with urllib.request.urlopen(found["metrics"], timeout=10) as reply:
                text = reply.read().decode()
            [rule] = self.adapter_rules()
            series = re.match(r"^(\w+)\{", rule["seriesQuery"]).group(1)
            # The rule keeps answered requests: code="OK" must be how the server labels them.
            for label in re.findall(r'(\w+)="[^"]*"', rule["metricsQuery"]):
                self.assertRegex(text, rf'(?m)^{series}\{{[^}}]*\b{label}="OK"')
        finally:
            server.send_signal(signal.SIGTERM)
            self.assertEqual(server.wait(timeout=60), 0)
            server.stdout.close()
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1], verbosity=2)
