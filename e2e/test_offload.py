"""The user's story on a real cluster against the real SLURM testbed.

hpc-offload is installed as users install it (`kubectl apply -k manifests/overlays/dev`), a
testbed profile is applied with `kubectl apply -f -`, and annotated Jobs and pods run on SLURM.
Timings (pod created → sbatch accepted, delete → job gone) are written to
/var/cache/hpc-offload/e2e-timings.json for the issue note.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from e2e.kube import REPO, RESTRICTED_PREFIX, WEBHOOK_DEPLOYMENT, WEBHOOK_NS
from e2e.waiting import wait

pytestmark = pytest.mark.e2e


TIMINGS = Path(os.environ.get("HPC_OFFLOAD_CACHE", "/var/cache/hpc-offload")) / "e2e-timings.json"


def record_timing(name: str, seconds: float) -> None:
    data = json.loads(TIMINGS.read_text()) if TIMINGS.exists() else {}
    data.setdefault(name, []).append(round(seconds, 3))
    TIMINGS.parent.mkdir(parents=True, exist_ok=True)
    TIMINGS.write_text(json.dumps(data, indent=1))


def squeue_ids(name: str) -> list[str]:
    out = subprocess.run(
        ["squeue", "-h", "--states=all", f"--name={name}", "-o", "%i"], capture_output=True, text=True, check=True
    ).stdout
    return sorted(out.split(), key=int)


def queued(job_id: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    return out.stdout.strip() not in ("", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")


def slurm_state(job_id: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    match = re.search(r"JobState=(\S+)", out)
    return match.group(1) if match else "UNKNOWN"


def job_manifest(
    name: str, command: list[str], *, backoff: int = 0, annotations: dict | None = None, restart: str = "Never"
) -> str:
    ann = {"hpc.offload/backend": "testbed", **(annotations or {})}
    return json.dumps(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name},
            "spec": {
                "backoffLimit": backoff,
                "template": {
                    "metadata": {"annotations": ann},
                    "spec": {
                        "restartPolicy": restart,
                        "containers": [{"name": "main", "image": "python:3.11-slim", "command": command}],
                    },
                },
            },
        }
    )


def pod_manifest(name: str, command: list[str], *, restart: str = "Never", annotations: dict | None = None) -> dict:
    ann = {"hpc.offload/backend": "testbed", **(annotations or {})}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": ann},
        "spec": {
            "restartPolicy": restart,
            "containers": [{"name": "main", "image": "python:3.11-slim", "command": command}],
        },
    }


def pod_log(core: client.CoreV1Api, name: str, ns: str) -> str:
    """The pod's log so far; empty while its container is still being created."""
    try:
        return core.read_namespaced_pod_log(name, ns)
    except ApiException as exc:
        if exc.status == 400:
            return ""
        raise


def job_pods(core: client.CoreV1Api, ns: str, job: str) -> list[client.V1Pod]:
    return core.list_namespaced_pod(ns, label_selector=f"job-name={job}").items


def terminated(pod: client.V1Pod) -> Any:
    statuses = pod.status.container_statuses or []
    return statuses[0].state.terminated if statuses and statuses[0].state else None


def py(code: str) -> list[str]:
    return ["python3", "-u", "-c", code]


# --- the tests ----------------------------------------------------------------------------------


def test_annotated_job_runs_on_slurm_with_live_logs(hpc_ns, core, kubectl):
    batch = client.BatchV1Api(core.api_client)
    # The job holds after its third line until the test has seen that line in `kubectl logs`
    # (a flag file in /tmp, which ch-run shares with the node): "visible while the job still
    # runs" is then a fact, not a race against a loaded machine.
    release = Path("/tmp") / f"hpco-e2e-release-{uuid.uuid4().hex}"
    code = textwrap.dedent(f"""\
        import os, time
        for i in range(8):
            print('tick', i); time.sleep(0.5)
            deadline = time.time() + 120
            while i == 2 and not os.path.exists({str(release)!r}) and time.time() < deadline:
                time.sleep(0.05)
        print('END', time.time())""")
    created = time.monotonic()
    kubectl("apply", "-n", hpc_ns, "-f", "-", stdin=job_manifest("ticks", py(code)))
    pod = wait("the job's pod", lambda: job_pods(core, hpc_ns, "ticks") and job_pods(core, hpc_ns, "ticks")[0])
    name = f"hpco-{pod.metadata.uid}"
    ids = wait("the HPC job in squeue", lambda: squeue_ids(name), every=0.02)
    record_timing("pod created -> sbatch accepted (s)", time.monotonic() - created)
    assert len(ids) == 1
    # output reaches `kubectl logs` while the HPC job still runs
    try:
        wait("a live line", lambda: "tick 2" in pod_log(core, pod.metadata.name, hpc_ns))
        assert queued(ids[0]), "the job should still be running when its output is visible"
    finally:
        release.touch()
    wait("the pod to succeed", lambda: core.read_namespaced_pod(pod.metadata.name, hpc_ns).status.phase
         == "Succeeded", every=0.05)
    succeeded = time.time()
    release.unlink()
    end_line = next(line for line in pod_log(core, pod.metadata.name, hpc_ns).splitlines() if line.startswith("END"))
    record_timing("HPC job ended -> pod Succeeded (s)", succeeded - float(end_line.split()[1]))
    wait(
        "the Job to complete",
        lambda: (batch.read_namespaced_job_status("ticks", hpc_ns).status.succeeded or 0) >= 1,
        timeout=120,
    )
    pod = core.read_namespaced_pod(pod.metadata.name, hpc_ns)
    assert pod.status.phase == "Succeeded"
    assert terminated(pod).exit_code == 0
    assert json.loads(terminated(pod).message)["state"] == "COMPLETED"
    assert slurm_state(ids[0]) == "COMPLETED"
    log = core.read_namespaced_pod_log(pod.metadata.name, hpc_ns, container="main")
    assert [line for line in log.splitlines() if line.startswith("tick")] == [f"tick {i}" for i in range(8)]


def test_failing_job_mirrors_exit_code_and_retries_once(hpc_ns, core, kubectl):
    kubectl(
        "apply", "-n", hpc_ns, "-f", "-", stdin=job_manifest("fails", ["bash", "-c", "echo failing; exit 3"], backoff=1)
    )
    batch = client.BatchV1Api(core.api_client)
    wait(
        "the Job to fail",
        lambda: any(
            c.type == "Failed" and c.status == "True"
            for c in (batch.read_namespaced_job_status("fails", hpc_ns).status.conditions or [])
        ),
        timeout=180,
    )
    pods = job_pods(core, hpc_ns, "fails")
    assert len(pods) == 2
    for pod in pods:
        assert pod.status.phase == "Failed"
        assert terminated(pod).exit_code == 3
        ids = squeue_ids(f"hpco-{pod.metadata.uid}")
        assert len(ids) == 1, "exactly one HPC job per pod"
        assert slurm_state(ids[0]) == "FAILED"


def test_deleting_a_pod_cancels_its_hpc_job(hpc_ns, core):
    core.create_namespaced_pod(hpc_ns, pod_manifest("sleeper", ["sleep", "600"]))
    pod = core.read_namespaced_pod("sleeper", hpc_ns)
    name = f"hpco-{pod.metadata.uid}"
    job_id = wait("the HPC job", lambda: squeue_ids(name))[0]
    wait("the HPC job to run", lambda: slurm_state(job_id) == "RUNNING")
    grace = pod.spec.termination_grace_period_seconds
    deleted = time.monotonic()
    core.delete_namespaced_pod("sleeper", hpc_ns)
    wait("the HPC job to leave the queue", lambda: not queued(job_id), timeout=grace, every=0.02)
    record_timing("kubectl delete -> job gone from the queue (s)", time.monotonic() - deleted)
    assert slurm_state(job_id) == "CANCELLED"


def test_a_killed_connector_is_restarted_and_reattaches(hpc_ns, core, local_cluster):
    cluster = local_cluster  # the container is killed through the local node's containerd
    code = "import time\nfor i in range(20):\n    print('beat', i); time.sleep(1)"
    core.create_namespaced_pod(hpc_ns, pod_manifest("phoenix", py(code), restart="OnFailure"))
    pod = core.read_namespaced_pod("phoenix", hpc_ns)
    name = f"hpco-{pod.metadata.uid}"
    job_id = wait("the HPC job", lambda: squeue_ids(name))[0]
    wait("a beat in the log", lambda: "beat 2" in pod_log(core, "phoenix", hpc_ns))
    container_id = core.read_namespaced_pod("phoenix", hpc_ns).status.container_statuses[0].container_id
    socket = cluster.state_dir / "run" / "containerd.sock"
    subprocess.run(
        [
            "ctr",
            "--address",
            str(socket),
            "-n",
            "k8s.io",
            "tasks",
            "kill",
            "-s",
            "SIGKILL",
            container_id.split("://", 1)[1],
        ],
        check=True,
        capture_output=True,
    )
    wait(
        "a restart", lambda: core.read_namespaced_pod("phoenix", hpc_ns).status.container_statuses[0].restart_count >= 1
    )
    wait(
        "the pod to succeed",
        lambda: core.read_namespaced_pod("phoenix", hpc_ns).status.phase == "Succeeded",
        timeout=120,
    )
    assert "reattaching to HPC job " + job_id in core.read_namespaced_pod_log("phoenix", hpc_ns)
    assert squeue_ids(name) == [job_id], "still exactly one HPC job"
    assert slurm_state(job_id) == "COMPLETED"


def webhook_admissions(core: client.CoreV1Api) -> float:
    """Admissions counted by every webhook pod (/metrics through the API server's pod proxy)."""
    total = 0.0
    for pod in core.list_namespaced_pod(WEBHOOK_NS, label_selector="app.kubernetes.io/name=hpc-offload-webhook").items:
        if pod.status.phase != "Running" or not pod.metadata.name.startswith(WEBHOOK_DEPLOYMENT):
            continue
        text = core.connect_get_namespaced_pod_proxy_with_path(f"https:{pod.metadata.name}:8443", WEBHOOK_NS, "metrics")
        for line in text.splitlines():
            if line.startswith("hpc_offload_admissions_total{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_unannotated_pods_never_reach_the_webhook_and_survive_its_outage(hpc_ns, core, kubectl):
    before = webhook_admissions(core)
    core.create_namespaced_pod(
        hpc_ns,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "plain"},
            "spec": {
                "containers": [{"name": "c", "image": "hpc-offload:dev", "command": ["true"]}],
                "restartPolicy": "Never",
            },
        },
    )
    assert webhook_admissions(core) == before, "an unannotated pod reached the webhook"
    core.create_namespaced_pod(hpc_ns, pod_manifest("counted", ["true"], restart="Never"))
    assert webhook_admissions(core) == before + 1
    replicas = kubectl(
        "-n", WEBHOOK_NS, "get", f"deployment/{WEBHOOK_DEPLOYMENT}", "-o", "jsonpath={.spec.replicas}"
    ).stdout
    kubectl("-n", WEBHOOK_NS, "scale", f"deployment/{WEBHOOK_DEPLOYMENT}", "--replicas=0")
    try:
        wait(
            "the webhook pods to go",
            lambda: (
                not [
                    p
                    for p in core.list_namespaced_pod(WEBHOOK_NS).items
                    if p.metadata.name.startswith(WEBHOOK_DEPLOYMENT)
                ]
            ),
            timeout=120,
        )
        core.create_namespaced_pod(
            hpc_ns,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "plain2"},
                "spec": {
                    "containers": [{"name": "c", "image": "hpc-offload:dev", "command": ["true"]}],
                    "restartPolicy": "Never",
                },
            },
        )
        with pytest.raises(ApiException) as refused:
            core.create_namespaced_pod(hpc_ns, pod_manifest("refused", ["true"]))
        assert "hpc-offload" in refused.value.body and "failed calling webhook" in refused.value.body
    finally:
        kubectl("-n", WEBHOOK_NS, "scale", f"deployment/{WEBHOOK_DEPLOYMENT}", f"--replicas={replicas}")
        kubectl("-n", WEBHOOK_NS, "rollout", "status", f"deployment/{WEBHOOK_DEPLOYMENT}", "--timeout=180s")


@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        ({"hpc.offload/runtime": "docker"}, 'hpc.offload/runtime: "docker" is not allowed'),
        ({"hpc.offload/time": "forever"}, "hpc.offload/time"),
        ({"hpc.offload/colour": "blue"}, "hpc.offload/colour"),
    ],
)
def test_bad_annotations_are_denied_with_the_webhooks_message(hpc_ns, core, annotations, message):
    with pytest.raises(ApiException) as denied:
        core.create_namespaced_pod(hpc_ns, pod_manifest("bad", ["true"], annotations=annotations))
    assert denied.value.status in (400, 403)
    assert message in json.loads(denied.value.body)["message"]


def test_a_pod_outside_the_cluster_policy_is_denied(installed, core):
    ns = f"{RESTRICTED_PREFIX}{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    try:
        wait("the default service account", lambda: core.list_namespaced_service_account(ns).items)
        with pytest.raises(ApiException) as denied:
            core.create_namespaced_pod(ns, pod_manifest("long", ["true"], annotations={"hpc.offload/time": "02:00:00"}))
        assert denied.value.status == 403
        assert "restricted-short-jobs" in json.loads(denied.value.body)["message"]
    finally:
        core.delete_namespace(ns)


def _new_key(directory: Path, name: str) -> tuple[str, str]:
    path = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)], check=True)
    return path.read_text(), Path(f"{path}.pub").read_text().strip()


def _set_profile_key(core: client.CoreV1Api, ns: str, private: str) -> None:
    secret = core.read_namespaced_secret("testbed", ns)
    secret.data["ssh-privatekey"] = base64.b64encode(private.encode()).decode()
    core.replace_namespaced_secret("testbed", ns, secret)


def test_rotated_profile_secret_is_used_while_a_job_runs(hpc_ns, core, kubectl, tmp_path):
    from testbed import api as testbed

    old_private, old_public = _new_key(tmp_path, "key-old")
    new_private, new_public = _new_key(tmp_path, "key-new")
    testbed.authorize_key(old_public)
    try:
        _set_profile_key(core, hpc_ns, old_private)
        code = "import time\nfor i in range(45):\n    print('long', i); time.sleep(1)"
        core.create_namespaced_pod(hpc_ns, pod_manifest("rotating", py(code)))
        pod = core.read_namespaced_pod("rotating", hpc_ns)
        job_id = wait("the HPC job", lambda: squeue_ids(f"hpco-{pod.metadata.uid}"))[0]
        wait("the job running", lambda: slurm_state(job_id) == "RUNNING")
        # rotate: authorise the new key, put it in the Secret, revoke the old one
        testbed.authorize_key(new_public)
        _set_profile_key(core, hpc_ns, new_private)
        wait(
            "the new key inside the pod",
            lambda: (
                kubectl(
                    "exec",
                    "-n",
                    hpc_ns,
                    "rotating",
                    "-c",
                    "main",
                    "--",
                    "cat",
                    "/var/run/hpc-offload/profile/ssh-privatekey",
                    check=False,
                ).stdout.strip()
                == new_private.strip()
            ),
            timeout=150,
            every=2,
        )
        testbed.revoke_key(old_public)
        testbed.break_ssh()  # the connector must reconnect, and only the new key works now
        wait(
            "the pod to end",
            lambda: core.read_namespaced_pod("rotating", hpc_ns).status.phase in ("Succeeded", "Failed"),
            timeout=150,
        )
        pod = core.read_namespaced_pod("rotating", hpc_ns)
        log = core.read_namespaced_pod_log("rotating", hpc_ns)
        assert pod.status.phase == "Succeeded", log
        assert "reconnected to " in log, "the connector reconnected (with the new key) during the run"
        assert [line for line in log.splitlines() if line.startswith("long")] == [f"long {i}" for i in range(45)]
        assert squeue_ids(f"hpco-{pod.metadata.uid}") == [job_id]
    finally:
        testbed.revoke_key(old_public)
        testbed.revoke_key(new_public)


def test_kubectl_hpc_jobs_lists_offloaded_pods(hpc_ns, core, cluster):
    core.create_namespaced_pod(hpc_ns, pod_manifest("listed", ["bash", "-c", "echo hi; exit 0"]))
    wait("the pod to end", lambda: core.read_namespaced_pod("listed", hpc_ns).status.phase == "Succeeded")
    out = subprocess.run(
        [
            "python3",
            "-m",
            "hpc_cli.main",
            "jobs",
            "-n",
            hpc_ns,
            "--kubeconfig",
            str(cluster.kubeconfig),
            "-o",
            "json",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = json.loads(out)
    row = next(r for r in rows if r["pod"] == "listed")
    pod = core.read_namespaced_pod("listed", hpc_ns)
    assert row["profile"] == "testbed"
    assert squeue_ids(f"hpco-{pod.metadata.uid}") == [str(row["jobId"])]
    assert row["state"] == "COMPLETED"
