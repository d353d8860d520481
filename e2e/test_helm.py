"""hpc-offload installed with Helm on the real local cluster (issue 14 item 5).

A real `helm` (built from helm.sh/helm/v3, cached: e2e/cluster/helm.py) installs
charts/hpc-offload beside the kustomize install the other e2e tests use, without a fight:
another namespace and release name (so other cluster-scoped names), another fixed relay
address, and a webhook that only sees this test's namespace. Its configuration is named so it
sorts before `hpc-offload`: the API server calls mutating webhooks in the order of their
configurations' names, so this release's webhook mutates the test's pod and the kustomize one,
called next, admits the injected pod unchanged. An annotated Job runs on the SLURM testbed
through it; `helm uninstall` then leaves nothing of the release behind.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from e2e.cluster import ClusterInfo
from e2e.kube import REPO, Kubectl
from e2e.waiting import wait

pytestmark = pytest.mark.e2e

RELEASE = "hpc-e2e-helm"  # < "hpc-offload": called first
NAMESPACE = RELEASE
RELAY_IP = "10.96.0.21"  # the dev overlay's relay has 10.96.0.20
CHART = REPO / "charts" / "hpc-offload"
DEV_VALUES = REPO / "charts" / "hpc-offload-dev.values.yaml"
# left in a namespace by Kubernetes itself, not by the release
NAMESPACE_DEFAULTS = {"configmap/kube-root-ca.crt", "serviceaccount/default"}
LEFTOVER_KINDS = ("pods,replicasets,deployments,services,endpointslices.discovery.k8s.io,configmaps,secrets,"
                  "serviceaccounts,roles,rolebindings,jobs,cronjobs,networkpolicies,poddisruptionbudgets")


class Helm:
    """The cached helm binary, pointed at the cluster."""

    def __init__(self, cluster: ClusterInfo) -> None:
        from e2e.cluster.helm import ensure_helm

        self.argv = [str(ensure_helm(progress=print)), f"--kubeconfig={cluster.kubeconfig}"]

    def __call__(self, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
        proc = subprocess.run([*self.argv, *args], capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed: {proc.stderr}{proc.stdout}")
        return proc


@pytest.fixture(scope="module")
def helm(cluster: ClusterInfo) -> Helm:
    return Helm(cluster)


def _names(kubectl: Kubectl, kinds: str, *where: str) -> set[str]:
    out = kubectl("get", kinds, *where, "-o", "name", "--ignore-not-found", check=False).stdout
    return set(out.split())


def _clean(helm: Helm, kubectl: Kubectl) -> None:
    """What an earlier, interrupted run left."""
    helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--ignore-not-found", check=False)
    kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true", "--timeout=180s", check=False)


def plugin(cluster: ClusterInfo, *args: str, out: Callable[[str], Any] = str) -> Any:
    """`kubectl hpc ARGS` (the plugin's console script), with the cluster's kubectl."""
    command, *rest = args
    argv = [sys.executable, "-m", "hpc_cli.kubectl", command, f"--kubeconfig={cluster.kubeconfig}", *rest]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HPC_OFFLOAD_KUBECTL": str(cluster.kubectl)})
    assert proc.returncode == 0, f"kubectl hpc {' '.join(args)}: {proc.stderr}"
    return out(proc.stdout)


def job(name: str, command: list[str]) -> str:
    return json.dumps({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {
            "metadata": {"annotations": {"hpc.offload/backend": "testbed"}},
            "spec": {"restartPolicy": "Never",
                     "containers": [{"name": "main", "image": "python:3.11-slim", "command": command}]}}}})


@pytest.mark.timeout(1800)  # install, a job, an upgrade and an uninstall on a loaded 2-core machine
def test_helm_install_runs_a_job_and_uninstall_leaves_nothing(
    helm: Helm, kubectl: Kubectl, hpc_ns: str, core: client.CoreV1Api, cluster: ClusterInfo, project_image: str
) -> None:
    _clean(helm, kubectl)
    # the release namespace, as docs/install.md creates it: with the base's Pod Security label
    kubectl("create", "namespace", NAMESPACE)
    kubectl("label", "namespace", NAMESPACE, "pod-security.kubernetes.io/enforce=restricted")
    started = time.monotonic()
    try:
        helm("install", RELEASE, str(CHART), "-n", NAMESPACE, "-f", str(DEV_VALUES),
             "--set", f"relay.clusterIP={RELAY_IP}", "--set", f"certificateIPs={{{RELAY_IP}}}",
             "--set", f"config.relay_url=https://{RELAY_IP}:443",
             # no relay pod: its own suite (e2e/test_relay.py) tests it; connectors prefer it and go
             # direct when it does not answer (relay: preferred), so this test does not wait on it
             "--set", "relay.replicas=0",
             # this release's webhook sees the test's namespace only: the other suites' pods stay the
             # kustomize install's
             "--set-json", "webhook.namespaceSelector=" + json.dumps(
                 {"matchLabels": {"kubernetes.io/metadata.name": hpc_ns}}),
             "--wait", "--timeout", "10m")
        installed_in = time.monotonic() - started
        print(f"helm install --wait: {installed_in:.1f}s")
        wait("the release's caBundle", lambda: kubectl(
            "get", "mutatingwebhookconfiguration", RELEASE, "-o", "jsonpath={.webhooks[0].clientConfig.caBundle}",
        ).stdout.strip(), timeout=120)

        # the job holds until the test has seen it RUNNING in `kubectl hpc jobs` and opened a shell in it
        flag = f"/tmp/hpco-e2e-helm-{uuid.uuid4().hex}"
        hold = f"echo hello from helm; for i in $(seq 600); do [ -e {flag} ] && exit 0; sleep 0.5; done; exit 1"
        kubectl("apply", "-n", hpc_ns, "-f", "-", stdin=job("via-helm", ["bash", "-c", hold]))
        try:
            row = wait("kubectl hpc jobs: RUNNING", lambda: next(
                (r for r in plugin(cluster, "jobs", "-n", hpc_ns, "-o", "json", out=json.loads)
                 if r["state"] == "RUNNING"), None), timeout=300, every=2)
            assert row["profile"] == "testbed" and row["jobId"] and row["source"] == "record", row
            # kubectl hpc shell: a command inside the running HPC job, through the connector
            inside = plugin(cluster, "shell", row["pod"], "-n", hpc_ns, "--", "sh", "-c",
                            'echo "$SLURM_JOB_ID $(hostname)"')
            assert inside.split() == [row["jobId"], socket.gethostname()], inside
        finally:
            Path(flag).touch()
        batch = client.BatchV1Api(core.api_client)
        wait("the Job to complete", lambda: (batch.read_namespaced_job_status("via-helm", hpc_ns).status.succeeded
                                             or 0) >= 1, timeout=300)
        Path(flag).unlink(missing_ok=True)
        pod = core.list_namespaced_pod(hpc_ns, label_selector="job-name=via-helm").items[0]
        main = next(c for c in pod.spec.containers if c.name == "main")
        env = {e.name: e.value for e in main.env or []}
        assert env.get("HPC_OFFLOAD_RELAY_URL") == f"https://{RELAY_IP}:443", "the release's webhook mutated it"
        log = core.read_namespaced_pod_log(pod.metadata.name, hpc_ns, container="main")
        assert "hello from helm" in log
        message = json.loads(pod.status.container_statuses[0].state.terminated.message)
        assert message["state"] == "COMPLETED" and message["exitCode"] == 0

        # an upgrade that changes the certificate Job's template makes a new Job (a Job's template
        # is immutable: patching the old one would fail) and rolls the webhook (its config changed)
        jobs_before = _names(kubectl, "jobs", "-n", NAMESPACE)
        helm("upgrade", RELEASE, str(CHART), "-n", NAMESPACE, "--reuse-values", "--set", "image.pullPolicy=Never",
             "--wait", "--timeout", "10m")
        jobs_after = _names(kubectl, "jobs", "-n", NAMESPACE)
        assert jobs_after and not jobs_after & jobs_before, (jobs_before, jobs_after)
        kubectl("-n", NAMESPACE, "rollout", "status", "deployment/hpc-offload-webhook", "--timeout=300s")
        manifest = [doc for doc in yaml.safe_load_all(helm("get", "manifest", RELEASE, "-n", NAMESPACE).stdout) if doc]
    except BaseException:
        _clean(helm, kubectl)
        raise

    helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "5m")
    # every object of the release, kind by kind, and whatever ran in the namespace, is gone
    kinds = sorted({(obj["kind"], obj["metadata"].get("namespace", "")) for obj in manifest})
    print("release kinds:", ", ".join(f"{kind}" for kind, _ in kinds))
    for obj in manifest:
        name, kind = obj["metadata"]["name"], obj["kind"]
        where = ["-n", obj["metadata"]["namespace"]] if obj["metadata"].get("namespace") else []
        assert not _names(kubectl, f"{kind}/{name}", *where), f"{kind}/{name} outlived helm uninstall"
    for kind, _ in kinds:
        labelled = _names(kubectl, kind, "-A", "-l", f"app.kubernetes.io/instance={RELEASE}")
        assert not labelled, f"left by the release: {labelled}"

    def leftovers() -> set[str]:
        return _names(kubectl, LEFTOVER_KINDS, "-n", NAMESPACE) - NAMESPACE_DEFAULTS

    try:
        wait("the namespace to empty (pods, the certificate Secret via its owner)", lambda: not leftovers(),
             timeout=180, every=1)
    finally:
        left = leftovers()
        kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=false", check=False)
    assert not left
