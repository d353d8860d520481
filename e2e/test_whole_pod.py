"""Whole pods on the real cluster (issue 15): pods shaped like interLink's 030-simple-shared-volume
and 040-config-volumes, an init container whose output the app reads, a failing second
container — applied with `kubectl`, run as one HPC job each on the testbed (SLURM over SSH,
through the relay the dev overlay installs), every container's log read with `kubectl logs -c`
and its own exit code in the pod's status. The logs of the two-container pod are written to
/var/cache/hpc-offload/e2e-whole-pod-logs.txt for the issue note."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from e2e.kube import Kubectl
from e2e.test_offload import queued, slurm_state, squeue_ids
from e2e.test_pod_view import cri_lines, finished
from e2e.waiting import wait

pytestmark = pytest.mark.e2e

LOGS = Path(os.environ.get("HPC_OFFLOAD_CACHE", "/var/cache/hpc-offload")) / "e2e-whole-pod-logs.txt"


def whole_pod(name: str, containers: list[dict], volumes: list[dict] | None = None,
              init: list[dict] | None = None, annotations: dict | None = None) -> str:
    """A pod manifest as a user writes it: one annotation more than a plain pod."""
    spec: dict = {"restartPolicy": "Never", "containers": containers}
    if init:
        spec["initContainers"] = init
    if volumes:
        spec["volumes"] = volumes
    return yaml.safe_dump({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "annotations": {
        "hpc.offload/backend": "testbed", "hpc.offload/container": "*", **(annotations or {})}},
        "spec": spec})


def container(name: str, script: str, mounts: list[dict] | None = None, **extra) -> dict:
    return {"name": name, "image": "python:3.11-slim", "command": ["sh", "-c", script],
            "volumeMounts": mounts or [], **extra}


def logs(kubectl: Kubectl, ns: str, pod: str, name: str) -> str:
    """`kubectl logs POD -c NAME`: the container's stdout and stderr as Kubernetes shows them."""
    return kubectl("logs", "-n", ns, pod, "-c", name).stdout


def stdout_of(pod: client.V1Pod, name: str) -> list[str]:
    return [text for stream, text in cri_lines(pod, name) if stream == "stdout"]


def exit_codes(pod: client.V1Pod) -> dict[str, int]:
    statuses = [*(pod.status.init_container_statuses or []), *(pod.status.container_statuses or [])]
    return {s.name: s.state.terminated.exit_code for s in statuses if s.state and s.state.terminated}


def test_two_containers_share_an_empty_dir(hpc_ns, core, kubectl):
    """030-simple-shared-volume: one writes, the other reads, through emptyDirs bound at /mnt."""
    manifest = whole_pod("shared", [
        container("writer", "for i in 1 2 3; do echo line $i >> /mnt/out.tmp; echo wrote line $i; sleep 1; done; "
                            "mv /mnt/out.tmp /mnt/out; echo writer done >&2",
                  [{"name": "shared", "mountPath": "/mnt"}]),
        container("reader", "while [ ! -e /mnt/out ]; do sleep 0.2; done; echo reader got:; cat /mnt/out",
                  [{"name": "shared", "mountPath": "/mnt"}]),
    ], volumes=[{"name": "shared", "emptyDir": {}}])
    kubectl("apply", "-n", hpc_ns, "-f", "-", stdin=manifest)
    pod = finished(core, hpc_ns, "shared")
    assert pod.status.phase == "Succeeded", exit_codes(pod)
    assert exit_codes(pod) == {"writer": 0, "reader": 0}
    assert stdout_of(pod, "writer") == ["wrote line 1", "wrote line 2", "wrote line 3"]
    assert stdout_of(pod, "reader") == ["reader got:", "line 1", "line 2", "line 3"]
    shown = {name: logs(kubectl, hpc_ns, "shared", name) for name in ("writer", "reader")}
    assert "writer done" in shown["writer"] and "line 3" in shown["reader"]
    assert [c.image for c in pod.spec.containers] == [pod.spec.containers[0].image] * 2  # both connectors
    jobs = squeue_ids(f"hpco-{pod.metadata.uid}")
    assert len(jobs) == 1 and slurm_state(jobs[0]) == "COMPLETED"  # one HPC job for the pod
    LOGS.parent.mkdir(parents=True, exist_ok=True)
    LOGS.write_text("".join(f"$ kubectl logs shared -c {name}\n{text}\n" for name, text in shown.items()))


def test_config_map_and_secret_volumes_are_read_by_two_containers(hpc_ns, core, kubectl):
    """040-config-volumes: a ConfigMap and a Secret, mounted in two containers (one by subPath)."""
    kubectl("create", "configmap", "-n", hpc_ns, "app-config", "--from-literal=settings.ini=mode = fast")
    kubectl("create", "secret", "generic", "-n", hpc_ns, "app-secret", "--from-literal=token=s3cr3t-e2e")
    manifest = whole_pod("config", [
        container("first", "cat /srv/settings.ini; echo; cat /opt/token; echo",
                  [{"name": "config", "mountPath": "/srv"}, {"name": "secret", "mountPath": "/opt"}]),
        container("second", "cat /media/settings.ini; echo; cat /mnt/token; echo",
                  [{"name": "config", "mountPath": "/media"},
                   {"name": "secret", "mountPath": "/mnt", "readOnly": True}]),
    ], volumes=[{"name": "config", "configMap": {"name": "app-config"}},
                {"name": "secret", "secret": {"secretName": "app-secret"}}])
    kubectl("apply", "-n", hpc_ns, "-f", "-", stdin=manifest)
    pod = finished(core, hpc_ns, "config")
    assert pod.status.phase == "Succeeded", exit_codes(pod)
    for name in ("first", "second"):
        assert stdout_of(pod, name) == ["mode = fast", "s3cr3t-e2e"]
        assert "s3cr3t-e2e" not in "\n".join(t for s, t in cri_lines(pod, name) if s == "stderr")
    from testbed import layout

    job_dir = Path(layout.WORKDIR) / f"hpco-{pod.metadata.uid}"
    assert (job_dir / "part-first.exit").exists() and not (job_dir / "volumes").exists()  # copies gone


def test_an_init_container_prepares_what_the_app_reads(hpc_ns, core, kubectl):
    manifest = whole_pod("init", [
        container("app", "echo app read: $(cat /srv/input)"),
    ], init=[container("prepare", "echo prepared-by-init > /srv/input; echo init done")],
        volumes=[{"name": "work", "emptyDir": {}}])
    doc = yaml.safe_load(manifest)
    for item in (*doc["spec"]["initContainers"], *doc["spec"]["containers"]):
        item["volumeMounts"] = [{"name": "work", "mountPath": "/srv"}]
    kubectl("apply", "-n", hpc_ns, "-f", "-", stdin=yaml.safe_dump(doc))
    pod = finished(core, hpc_ns, "init")
    assert pod.status.phase == "Succeeded", exit_codes(pod)
    assert exit_codes(pod) == {"prepare": 0, "app": 0}
    assert stdout_of(pod, "prepare") == ["init done"]
    assert stdout_of(pod, "app") == ["app read: prepared-by-init"]
    assert "submitted HPC job" in logs(kubectl, hpc_ns, "init", "prepare")  # the init container leads


def test_a_failing_second_container_fails_the_pod_with_its_own_code(hpc_ns, core, kubectl):
    manifest = whole_pod("failing", [
        container("fine", "echo fine; sleep 2"),
        container("broken", "echo about to fail; echo 'Error: no input' >&2; exit 3"),
    ], annotations={"hpc.offload/runtime": "none"})
    kubectl("apply", "-n", hpc_ns, "-f", "-", stdin=manifest)
    pod = finished(core, hpc_ns, "failing")
    assert pod.status.phase == "Failed"
    assert exit_codes(pod) == {"fine": 0, "broken": 3}
    broken = next(s for s in pod.status.container_statuses if s.name == "broken")
    report = json.loads(broken.state.terminated.message)
    assert report["stderrTail"] == "Error: no input\n" and "container broken (app) exited 3" in report["message"]
    assert "about to fail" in logs(kubectl, hpc_ns, "failing", "broken")
    assert stdout_of(pod, "fine") == ["fine"]


def test_deleting_a_whole_pod_cancels_its_job(hpc_ns, core, kubectl):
    manifest = whole_pod("sleepers", [container("a", "echo a; sleep 600"), container("b", "echo b; sleep 600")],
                         annotations={"hpc.offload/runtime": "none"})
    kubectl("apply", "-n", hpc_ns, "-f", "-", stdin=manifest)
    uid = wait("the pod", lambda: core.read_namespaced_pod("sleepers", hpc_ns).metadata.uid)
    job = wait("the HPC job", lambda: squeue_ids(f"hpco-{uid}"), timeout=180)[0]
    wait("the HPC job to run", lambda: slurm_state(job) == "RUNNING", timeout=180)
    core.delete_namespaced_pod("sleepers", hpc_ns)
    wait("the HPC job to be cancelled", lambda: not queued(job), timeout=120)
    assert slurm_state(job) == "CANCELLED"


def test_what_cannot_follow_a_pod_to_hpc_is_denied_naming_the_field(hpc_ns, kubectl):
    manifest = yaml.safe_load(whole_pod("server", [container("web", "sleep 1")]))
    manifest["spec"]["containers"][0]["ports"] = [{"containerPort": 8080}]
    denied = kubectl("apply", "-n", hpc_ns, "-f", "-", stdin=yaml.safe_dump(manifest), check=False)
    assert denied.returncode != 0
    assert "spec.containers[0].ports: containerPort 8080" in denied.stderr
    claim = yaml.safe_load(whole_pod("claimed", [container("app", "true")], volumes=[
        {"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]))
    denied = kubectl("apply", "-n", hpc_ns, "-f", "-", stdin=yaml.safe_dump(claim), check=False)
    assert denied.returncode != 0 and "hpc.offload/stage-in" in denied.stderr

