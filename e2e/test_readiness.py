"""Issue 14 item 2 on the real cluster: `kubectl get pods` tells a queued HPC job from a running
one, with no privilege added. The connector opens a TCP port only while its job runs and the
webhook gives its container a tcpSocket readiness probe on it (the kubelet dials in its own
process: no fork per probe on the node), so the pod reads `0/1 Running` while the job waits
and `1/1 Running` while it runs.

The job is kept waiting for real: a job that takes the testbed's whole node (`--exclusive`) is
running first, and is released once the pod has been seen `0/1`.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from e2e.kube import Kubectl
from e2e.test_offload import pod_manifest, slurm_state
from e2e.waiting import wait

pytestmark = pytest.mark.e2e


def log_so_far(core: client.CoreV1Api, namespace: str, name: str) -> str:
    """The pod's log, empty while the API server has none yet (just created, or creating)."""
    try:
        return core.read_namespaced_pod_log(name, namespace) or ""  # None while empty
    except ApiException as exc:
        if exc.status in (400, 404):
            return ""
        raise


def ready_and_status(kubectl: Kubectl, namespace: str, name: str) -> tuple[str, str, str]:
    """(READY, STATUS, the whole line) as `kubectl get pod` prints them."""
    line = kubectl("get", "pod", name, "-n", namespace, "--no-headers").stdout.strip()
    fields = line.split()
    return fields[1], fields[2], line


# the exclusive blocker waits for the node to empty: in CI the other lanes' jobs share it
@pytest.mark.timeout(900)
def test_kubectl_get_pods_reads_0_of_1_while_queued_and_1_of_1_while_running(
    hpc_ns: str, core: client.CoreV1Api, kubectl: Kubectl
) -> None:
    tag = uuid.uuid4().hex
    block, finish = Path(f"/tmp/hpco-e2e-block-{tag}"), Path(f"/tmp/hpco-e2e-finish-{tag}")
    blocker = subprocess.run(
        ["sbatch", "--parsable", "--exclusive", "--uid=hpcuser", "--chdir=/tmp", "-o", "/dev/null",
         f"--job-name=blocker-{tag[:8]}", "--wrap", f"while [ ! -e {block} ]; do sleep 0.5; done"],
        capture_output=True, text=True, check=True).stdout.strip().split(";")[0]
    seen: list[str] = []
    try:
        wait("the blocker to hold the node", lambda: slurm_state(blocker) == "RUNNING", timeout=300)
        manifest = pod_manifest("queued", ["bash", "-c", f"echo started; while [ ! -e {finish} ]; do sleep 0.5; done"])
        core.create_namespaced_pod(hpc_ns, manifest)
        wait("the connector to say the job is pending",
             lambda: "pending" in log_so_far(core, hpc_ns, "queued"), timeout=180)
        # several probe periods (5 s) while the job waits: never Ready
        for _ in range(3):
            time.sleep(5)
            ready, status, line = ready_and_status(kubectl, hpc_ns, "queued")
            seen.append(line)
            assert (ready, status) == ("0/1", "Running"), line
        block.touch()
        wait("the pod to read 1/1 once its job runs",
             lambda: ready_and_status(kubectl, hpc_ns, "queued")[0] == "1/1", timeout=120)
        ready, status, line = ready_and_status(kubectl, hpc_ns, "queued")
        seen.append(line)
        assert status == "Running"
        assert "started" in core.read_namespaced_pod_log("queued", hpc_ns)
        finish.touch()
        wait("the pod to succeed",
             lambda: core.read_namespaced_pod("queued", hpc_ns).status.phase == "Succeeded", timeout=120)
        seen.append(ready_and_status(kubectl, hpc_ns, "queued")[2])
        print("kubectl get pod queued:", *seen, sep="\n  ")
    finally:
        block.touch()
        finish.touch()
        subprocess.run(["scancel", blocker], check=False)
        block.unlink(missing_ok=True)
        finish.unlink(missing_ok=True)
