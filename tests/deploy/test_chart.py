"""
The Helm chart ``deploy/helm/kraken``: rendered by Helm, valid for Kubernetes, configs the
daemons accept.

No ``helm`` binary installs here (Debian has none and its download site is unreachable), so
the chart is rendered by Helm's own SDK through the ``helm-python-sdk`` wheel, which bundles
it as a shared library: the same template engine and linter ``helm template`` and ``helm
lint`` run.  Every rendered object is validated strictly (unknown fields are errors) against
the Kubernetes OpenAPI schemas that ``kubernetes-validate`` ships, for the oldest version the
chart supports and the newest the package knows.  Every daemon's configuration is then made
exactly as a pod makes it: the ``config`` init container's own script runs here, against the
rendered ConfigMap, with the pod's addresses in its environment and real certificates where
the TLS Secret would be mounted, and ends with ``kraken config check --files``.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from typing import Any

import yaml
from twisted.trial.unittest import SynchronousTestCase

from kraken.certs import init_ca, issue
from tests.deploy.image import CHECKOUT
from tests.external import missing

CHART = os.path.join(CHECKOUT, "deploy", "helm", "kraken")
RELEASE, NAMESPACE = "kraken", "registry"
#: The chart's kubeVersion floor, and the newest schemas kubernetes-validate ships.
KUBE_VERSIONS = ("1.25.0", None)
DAEMONS = ("origin", "tracker", "build-index", "proxy", "agent")
#: The objects that are not Kubernetes' own: their schemas come with their operators.
CUSTOM_KINDS = {("cert-manager.io/v1", "Certificate")}

#: A production-like set of values: S3, TLS by cert-manager, an existing Redis with a
#: password, mirrors of named registries, and settings merged into two daemons' files.
FULL_VALUES: dict[str, Any] = {
    "image": {"repository": "registry.example.com/infra/kraken", "tag": "0.1.0"},
    "backends": {
        "origin": [
            {
                "namespace": ".*",
                "backend": {
                    "s3": {"bucket": "kraken-blobs", "region": "eu-west-1", "root_directory": "/b"}
                },
            }
        ],
        "buildIndex": [
            {
                "namespace": ".*",
                "backend": {
                    "s3": {"bucket": "kraken-tags", "region": "eu-west-1", "root_directory": "/t"}
                },
            }
        ],
    },
    "s3Credentials": {"secretName": "kraken-s3"},
    "tls": {
        "enabled": True,
        "certManager": {"enabled": True, "issuerRef": {"name": "cluster-ca"}},
    },
    "redis": {
        "address": "redis.infra.svc.cluster.local:6379",
        "passwordSecret": {"name": "kraken-redis", "key": "password"},
        "bundled": {"enabled": False},
    },
    "origin": {"config": {"hashring": {"max_replica": 2}, "cleanup": {"high_watermark": "80%"}}},
    "agent": {
        "config": {"scheduler": {"bandwidth": {"egress": "100MiB/s"}}},
        "containerd": {"registries": ["docker.io", "ghcr.io"]},
    },
}


def _helm() -> Any:
    try:
        import helm_python
    except ImportError:
        missing("helm-python-sdk is not installed (pip install '.[test]')")
    return helm_python


def _validate() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        missing("kubernetes-validate is not installed (pip install '.[test]')")
    return kubernetes_validate


def render(values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every object the chart renders with ``values`` (Helm's engine, install mode)."""
    helm = _helm()
    with helm.Chart.load(CHART) as chart:
        files = chart.render(dict(values), name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects = []
    for name, text in sorted(files.items()):
        if name.endswith(".yaml"):
            objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


def workloads(objects: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The Deployments, StatefulSets and DaemonSets among ``objects``."""
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
            yield obj


def component(obj: Mapping[str, Any]) -> str:
    """The ``app.kubernetes.io/component`` label of an object."""
    return str(obj["metadata"]["labels"]["app.kubernetes.io/component"])


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The object of ``kind`` named ``name``."""
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise AssertionError(f"no {kind} {name}")


class ChartTests(SynchronousTestCase):
    """The chart renders, its objects are valid Kubernetes, and its configs load."""

    def test_lint(self) -> None:
        """``helm lint`` (Helm's SDK) finds no errors with the default and the full values."""
        helm = _helm()
        for values in ({}, FULL_VALUES):
            result = helm.lint(CHART, dict(values), strict=True)
            self.assertEqual(result["errors"], [])
            self.assertEqual(
                [m for m in result["messages"] if m["severity"] > 1 and "icon" not in m["error"]],
                [],
            )

    def test_objects_validate(self) -> None:
        """Every rendered object passes the Kubernetes schemas, strictly, old and new."""
        kv = _validate()
        for values in ({}, FULL_VALUES):
            objects = render(values)
            custom = set()
            for obj in objects:
                if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
                    custom.add((obj["apiVersion"], obj["kind"]))
                    continue
                for version in KUBE_VERSIONS:
                    try:
                        kv.validate(obj, version or kv.latest_version(), strict=True)
                    except kv.ValidationError as e:
                        self.fail(f"{obj['kind']} {obj['metadata']['name']}: {e.message}")
            self.assertEqual(custom, CUSTOM_KINDS if values else set())

    def test_validation_catches_mistakes(self) -> None:
        """The strict validation used above rejects a misspelt field (it is not vacuous)."""
        kv = _validate()
        service = find(render({}), "Service", "kraken-proxy")
        service["spec"]["ports"][0]["targetPorts"] = "http"
        with self.assertRaises(kv.ValidationError):
            kv.validate(service, kv.latest_version(), strict=True)

    def test_components(self) -> None:
        """Agents a host-network DaemonSet, origins a StatefulSet with volumes and a headless
        Service listing unready pods, trackers with Redis, build-index, proxy."""
        objects = render({})
        kinds = {component(w): w["kind"] for w in workloads(objects)}
        self.assertEqual(
            kinds,
            {
                "agent": "DaemonSet",
                "origin": "StatefulSet",
                "build-index": "StatefulSet",
                "tracker": "Deployment",
                "proxy": "Deployment",
                "redis": "Deployment",
            },
        )
        agent = find(objects, "DaemonSet", "kraken-agent")["spec"]["template"]["spec"]
        self.assertTrue(agent["hostNetwork"])
        self.assertEqual(agent["dnsPolicy"], "ClusterFirstWithHostNet")
        origin = find(objects, "StatefulSet", "kraken-origin")
        self.assertEqual(origin["spec"]["serviceName"], "kraken-origin")
        self.assertEqual(origin["spec"]["volumeClaimTemplates"][0]["metadata"]["name"], "data")
        headless = find(objects, "Service", "kraken-origin")["spec"]
        self.assertEqual(headless["clusterIP"], "None")
        self.assertTrue(headless["publishNotReadyAddresses"])
        # An existing Redis replaces the bundled one; cert-manager issues the TLS Secret.
        full = render(FULL_VALUES)
        self.assertNotIn("redis", {component(w) for w in workloads(full)})
        certificate = find(full, "Certificate", "kraken-tls")["spec"]
        self.assertEqual(certificate["secretName"], "kraken-tls")
        self.assertIn("client auth", certificate["usages"])

    def test_probes_metrics_resources(self) -> None:
        """Each daemon container has liveness and readiness probes on its own HTTP port,
        Prometheus annotations naming a port it serves, and resource requests."""
        for values in ({}, FULL_VALUES):
            for workload in workloads(render(values)):
                name = component(workload)
                if name == "redis":
                    continue
                template = workload["spec"]["template"]
                (container,) = template["spec"]["containers"]
                ports = {p["name"]: p["containerPort"] for p in container["ports"]}
                self.assertEqual(container["args"][:1], [f"kraken-{name}"])
                self.assertEqual(container["livenessProbe"]["httpGet"]["path"], "/health")
                self.assertEqual(container["readinessProbe"]["httpGet"]["path"], "/readiness")
                self.assertEqual(container["readinessProbe"]["httpGet"]["port"], "http")
                annotations = template["metadata"]["annotations"]
                self.assertEqual(annotations["prometheus.io/scrape"], "true")
                self.assertEqual(int(annotations["prometheus.io/port"]), ports["http"])
                self.assertTrue(container["resources"]["requests"])

    def run_config_init(
        self, objects: list[dict[str, Any]], env: Mapping[str, str], tls: bool
    ) -> dict[str, tuple[int, str, dict[str, Any] | None]]:
        """
        Run each workload's ``config`` init container script here, as the pod would.

        Paths under ``/etc/kraken`` are moved into a temporary directory; ``kraken`` is this
        checkout's CLI.  Returns daemon -> (exit status, output, the file it wrote).
        """
        root = os.path.abspath(self.mktemp())
        template, etc, bin_dir = (os.path.join(root, d) for d in ("template", "etc", "bin"))
        for d in (template, etc, bin_dir):
            os.makedirs(d)
        configmap = find(objects, "ConfigMap", "kraken-config")
        for name, text in configmap["data"].items():
            with open(os.path.join(template, name), "w") as f:
                f.write(text.replace("/etc/kraken/", f"{etc}/"))  # the TLS files' mount
        if tls:  # what the Secret holds: the CA, and one certificate for server and client
            ca_dir = os.path.join(root, "ca")
            init_ca(ca_dir)
            cert, key = issue(ca_dir, "kraken", ["kraken.registry.svc"])
            os.makedirs(os.path.join(etc, "tls"))
            for source, target in ((os.path.join(ca_dir, "ca.pem"), "ca.crt"), (cert, "tls.crt")):
                os.link(source, os.path.join(etc, "tls", target))
            os.link(key, os.path.join(etc, "tls", "tls.key"))
        kraken = os.path.join(bin_dir, "kraken")
        with open(kraken, "w") as f:
            f.write(f'#!/bin/sh\nexec {sys.executable} -m kraken.cli "$@"\n')
        os.chmod(kraken, os.stat(kraken).st_mode | stat.S_IXUSR)
        results = {}
        for workload in workloads(objects):
            init = {
                c["name"]: c for c in workload["spec"]["template"]["spec"].get("initContainers", [])
            }
            if "config" not in init:
                continue
            name = component(workload)
            script = init["config"]["command"][2]
            script = script.replace("/etc/kraken-template", template).replace("/etc/kraken", etc)
            done = subprocess.run(
                ["sh", "-ec", script],
                env={
                    "PATH": f"{bin_dir}:{os.environ['PATH']}",
                    "PYTHONPATH": CHECKOUT,
                    **env,
                },
                capture_output=True,
                text=True,
                check=False,
            )
            written = os.path.join(etc, f"{name}.yaml")
            config = None
            if os.path.exists(written):
                with open(written) as f:
                    config = yaml.safe_load(f)
            results[name] = (done.returncode, done.stdout + done.stderr, config)
        return results

    def test_configs_pass_the_loader(self) -> None:
        """Each pod's config script fills in its addresses and ``kraken config check --files``
        accepts the result, plain and with TLS (IPv6 pod addresses bracketed)."""
        for values, env, tls in (
            ({}, {"POD_IP": "10.244.1.7", "NODE_IP": "10.0.0.7"}, False),
            (FULL_VALUES, {"POD_IP": "fd00:10:244::7", "NODE_IP": "fd00::7"}, True),
        ):
            results = self.run_config_init(render(values), env, tls)
            self.assertEqual(set(results), set(DAEMONS))
            for name, (code, output, _) in results.items():
                self.assertEqual(code, 0, f"{name}: {output}")
                self.assertIn(f"a valid {name} configuration", output)
            pod = env["POD_IP"] if ":" not in env["POD_IP"] else f"[{env['POD_IP']}]"
            node = env["NODE_IP"] if ":" not in env["NODE_IP"] else f"[{env['NODE_IP']}]"
            origin = results["origin"][2]
            agent = results["agent"][2]
            assert origin is not None and agent is not None
            self.assertEqual(origin["server"]["advertise"], f"{pod}:15002")
            self.assertEqual(agent["peer"]["advertise"], f"{node}:16001")
            self.assertEqual(
                origin["cluster"], {"dns": "kraken-origin.registry.svc.cluster.local:15002"}
            )
            self.assertEqual(agent["registry"]["listen"], "tcp:16000:interface=127.0.0.1")
            if tls:
                self.assertEqual(origin["hashring"]["max_replica"], 2)  # merged from values
                self.assertEqual(origin["tls"]["server_name"], "kraken.registry.svc")
                self.assertNotIn("cert", agent["tls"])  # the agent's own ports stay plain

    def test_bad_config_stops_the_pod(self) -> None:
        """A bad setting in values makes the init container fail, naming the key."""
        values = {"origin": {"config": {"hashring": {"max_replica": 0}}}}
        results = self.run_config_init(render(values), {"POD_IP": "10.1.1.1"}, False)
        code, output, _ = results["origin"]
        self.assertNotEqual(code, 0)
        self.assertIn("origin.hashring.max_replica", output)
        self.assertEqual(results["tracker"][0], 0)

    def test_mirror_init(self) -> None:
        """The agent's node-setup init runs ``kraken mirror containerd`` for the registries
        in values; its hosts.toml files name the agent on the node's loopback."""
        for values, expected in (({}, ["_default"]), (FULL_VALUES, ["docker.io", "ghcr.io"])):
            daemonset = find(render(values), "DaemonSet", "kraken-agent")["spec"]["template"]
            init = {c["name"]: c for c in daemonset["spec"]["initContainers"]}
            (line,) = [
                ln for ln in init["node-setup"]["command"][2].splitlines() if "kraken mirror" in ln
            ]
            mounts = {m["name"]: m["mountPath"] for m in init["node-setup"]["volumeMounts"]}
            hosts = {v["name"]: v for v in daemonset["spec"]["volumes"]}["containerd-hosts"]
            self.assertEqual(hosts["hostPath"]["path"], "/etc/containerd/certs.d")
            certs = os.path.abspath(self.mktemp())
            # "kraken" in the script is this checkout's CLI, run by this interpreter.
            script = line.replace(mounts["containerd-hosts"], certs).replace(
                "kraken mirror", f"{sys.executable} -m kraken.cli mirror", 1
            )
            done = subprocess.run(
                ["sh", "-ec", script],
                env={"PATH": os.environ["PATH"], "PYTHONPATH": CHECKOUT},
                capture_output=True,
                text=True,
                check=False,
            )
            self.assertEqual(done.returncode, 0, done.stderr)
            self.assertEqual(sorted(os.listdir(certs)), expected)
            for name in expected:
                with open(os.path.join(certs, name, "hosts.toml"), "rb") as f:
                    self.assertIn("http://127.0.0.1:16000", tomllib.load(f)["host"])
