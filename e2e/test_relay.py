"""The relay on the real cluster, installed by `kubectl apply -k manifests/overlays/dev`:
annotated Jobs run through it (profile `relay: required`, so a broken relay fails instead of
falling back), identity comes from the pod's projected token through a real TokenReview, and
a pod that vanished without cancelling has its HPC job cancelled by the relay.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import subprocess
import time

import pytest
from kubernetes import client

from e2e.kube import WEBHOOK_NS, apply_profile
from e2e.test_offload import job_manifest, job_pods, pod_log, pod_manifest, py, queued, slurm_state, squeue_ids
from e2e.waiting import wait

pytestmark = pytest.mark.e2e

RELAY = "hpc-offload-relay"
RELAY_IP = "10.96.0.20"  # the dev overlay's fixed ClusterIP (the local cluster has no DNS)


@pytest.fixture
def relay_ns(installed, namespace, kubectl, cluster) -> str:
    kubectl("-n", WEBHOOK_NS, "rollout", "status", f"deployment/{RELAY}", "--timeout=180s")
    apply_profile(kubectl, namespace, "slurm-ssh", "testbed", cluster.bridge_gateway, relay="required",
                  orphan_timeout="15s")
    return namespace


def relay_pod(core: client.CoreV1Api) -> str:
    pods = [p for p in core.list_namespaced_pod(WEBHOOK_NS, label_selector=f"app.kubernetes.io/name={RELAY}").items
            if p.status.phase == "Running"]
    assert len(pods) == 1, [p.metadata.name for p in pods]
    return pods[0].metadata.name


def relay_log(core: client.CoreV1Api) -> str:
    return core.read_namespaced_pod_log(relay_pod(core), WEBHOOK_NS)


def relay_metrics(core: client.CoreV1Api) -> dict[str, float]:
    text = core.connect_get_namespaced_pod_proxy_with_path(f"https:{relay_pod(core)}:8443", WEBHOOK_NS, "metrics")
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, value = line.partition(" ")
            values[name] = float(value)
    return values


def test_an_annotated_job_runs_through_the_relay(relay_ns, core, kubectl):
    batch = client.BatchV1Api(core.api_client)
    code = ("import sys, time\nfor i in range(5):\n"
            "    print('tick', i); print('warn', i, file=sys.stderr); time.sleep(0.5)")
    kubectl("apply", "-n", relay_ns, "-f", "-", stdin=job_manifest("relayed", py(code)))
    pod = wait("the job's pod", lambda: job_pods(core, relay_ns, "relayed") and job_pods(core, relay_ns, "relayed")[0])
    ids = wait("the HPC job in squeue", lambda: squeue_ids(f"hpco-{pod.metadata.uid}"))
    wait("the Job to complete", lambda: (batch.read_namespaced_job_status("relayed", relay_ns).status.succeeded or 0)
         >= 1, timeout=240)
    log = core.read_namespaced_pod_log(pod.metadata.name, relay_ns)
    assert [line for line in log.splitlines() if line.startswith("tick")] == [f"tick {i}" for i in range(5)]
    assert "following HPC jobs through the relay" in log
    assert squeue_ids(f"hpco-{pod.metadata.uid}") == ids and slurm_state(ids[0]) == "COMPLETED"
    # the webhook wired the connector to the relay; the relay learned the pod from its token
    container = core.read_namespaced_pod(pod.metadata.name, relay_ns).spec.containers[0]
    env = {e.name: e.value for e in container.env or []}
    assert env["HPC_OFFLOAD_RELAY_URL"] == f"https://{RELAY_IP}:443" and "BEGIN CERTIFICATE" in env[
        "HPC_OFFLOAD_RELAY_CA"]
    assert f"opened for namespace {relay_ns}" in relay_log(core)
    assert relay_metrics(core)["hpc_offload_relay_sessions"] >= 1


def test_a_failing_job_mirrors_its_exit_code_through_the_relay(relay_ns, core):
    core.create_namespaced_pod(relay_ns, pod_manifest("fails", ["bash", "-c", "echo failing; exit 3"]))
    wait("the pod to fail", lambda: core.read_namespaced_pod("fails", relay_ns).status.phase == "Failed",
         timeout=240)
    state = core.read_namespaced_pod("fails", relay_ns).status.container_statuses[0].state.terminated
    assert state.exit_code == 3 and json.loads(state.message)["reason"] == "HPCExitCode"


def test_deleting_a_pod_cancels_its_job_through_the_relay(relay_ns, core):
    core.create_namespaced_pod(relay_ns, pod_manifest("deleted", py("import time; print('up'); time.sleep(600)")))
    pod = core.read_namespaced_pod("deleted", relay_ns)
    job_id = wait("the HPC job", lambda: squeue_ids(f"hpco-{pod.metadata.uid}"))[0]
    wait("the job queued or running", lambda: "up" in pod_log(core, "deleted", relay_ns) or queued(job_id),
         timeout=120)
    # a dry run is only a question: the delete notice is not sent, the job goes on
    core.delete_namespaced_pod("deleted", relay_ns, dry_run="All")
    time.sleep(3)
    assert queued(job_id) and f"cancelling 1 job(s): {job_id}" not in relay_log(core)
    started = time.monotonic()
    core.delete_namespaced_pod("deleted", relay_ns)
    wait("the job to leave the queue", lambda: not queued(job_id), timeout=60)
    assert time.monotonic() - started < 30
    assert slurm_state(job_id) == "CANCELLED"
    # cancelled on the webhook's notice, before the kubelet stopped the connector
    assert f"deleted pods: cancelling 1 job(s): {job_id}" in relay_log(core)


def test_a_killed_connectors_job_is_cancelled_by_the_relay_as_an_orphan(relay_ns, core, local_cluster, kubectl):
    """A connector killed before its cancel (SIGKILL; the pod is not deleted, so no delete
    notice helps): the relay cancels the job once nobody asked for it for orphan_timeout."""
    core.create_namespaced_pod(relay_ns, pod_manifest("vanished", py("import time; print('up'); time.sleep(600)")))
    pod = core.read_namespaced_pod("vanished", relay_ns)
    job_id = wait("the HPC job", lambda: squeue_ids(f"hpco-{pod.metadata.uid}"))[0]
    wait("the connector started", lambda: (core.read_namespaced_pod("vanished", relay_ns).status
                                           .container_statuses or [None])[0].container_id)
    container = core.read_namespaced_pod("vanished", relay_ns).status.container_statuses[0]
    socket = local_cluster.state_dir / "run" / "containerd.sock"
    subprocess.run(["ctr", "--address", str(socket), "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL",
                    container.container_id.split("://", 1)[1]], check=True, capture_output=True)
    killed = time.monotonic()
    wait("the relay to cancel the orphan", lambda: not queued(job_id), timeout=90)
    assert time.monotonic() - killed < 60  # orphan_timeout 15 s, then one tick
    assert f"HPC job {job_id} of pod" in relay_log(core)
    kubectl("-n", relay_ns, "delete", "pod", "vanished", "--grace-period=0", "--force", check=False)


def _relay_post(token: str, ca: str) -> tuple[int, dict]:
    context = ssl.create_default_context(cadata=ca)
    conn = http.client.HTTPSConnection(RELAY_IP, 443, context=context, timeout=20)
    conn.request("POST", "/v1/session", json.dumps({"name": "x", "files": {}}),
                 {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, json.loads(response.read() or b"{}")


@pytest.mark.parametrize("audience", ["another-service", "hpc-offload-relay"])
def test_tokens_for_another_audience_or_no_pod_are_refused(relay_ns, core, kubectl, audience):
    """TokenReview: a token for another audience is not authenticated for the relay; one for the
    relay's audience but bound to no pod names no pod. Both 401, each a log line, no token."""
    token = kubectl("-n", relay_ns, "create", "token", "default", f"--audience={audience}").stdout.strip()
    ca = kubectl("-n", WEBHOOK_NS, "get", "secret", "hpc-offload-tls", "-o", "jsonpath={.data.ca\\.crt}").stdout
    status, body = _relay_post(token, base64.b64decode(ca).decode())
    assert status == 401 and body["error"] == "unauthenticated", body
    why = "audience" if audience != "hpc-offload-relay" else "not bound to a pod"
    assert why in body["message"]
    log = relay_log(core)
    assert "refused POST /v1/session" in log and token not in log
