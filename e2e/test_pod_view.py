"""What a pod shows of its HPC job on the real cluster (issue 13 items 3 and 4): the job's
stdout and stderr on the container's own streams (read from the node's CRI log file, whose
lines are tagged), the stderr tail in the termination message, and an unreachable site ending
the pod instead of retrying for ever."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from kubernetes import client

from e2e.kube import Kubectl, apply_profile
from e2e.test_offload import pod_manifest, terminated
from e2e.waiting import wait


def cri_lines(pod: client.V1Pod, container: str = "main") -> list[tuple[str, str]]:
    """(stream, text) of each line the kubelet logged for the container."""
    meta = pod.metadata
    path = Path("/var/log/pods") / f"{meta.namespace}_{meta.name}_{meta.uid}" / container / "0.log"
    lines = []
    for raw in path.read_text().splitlines():
        _stamp, stream, _tag, text = raw.split(" ", 3)
        lines.append((stream, text))
    return lines


def finished(core: client.CoreV1Api, ns: str, name: str) -> client.V1Pod:
    return wait(f"pod {name} to end", lambda: (pod := core.read_namespaced_pod(name, ns)).status.phase
                in ("Succeeded", "Failed") and pod, timeout=180)


def test_the_containers_stdout_is_the_jobs_stdout_only(hpc_ns, core):
    script = "echo result-line; echo progress-line >&2; echo second-result"
    core.create_namespaced_pod(hpc_ns, pod_manifest("streams", ["bash", "-c", script],
                                                    annotations={"hpc.offload/runtime": "none"}))
    core.create_namespaced_pod(hpc_ns, pod_manifest("quiet", ["bash", "-c", script], annotations={
        "hpc.offload/runtime": "none", "hpc.offload/logs": "job-only"}))
    for name in ("streams", "quiet"):
        pod = finished(core, hpc_ns, name)
        assert pod.status.phase == "Succeeded"
        lines = cri_lines(pod)
        assert [text for stream, text in lines if stream == "stdout"] == ["result-line", "second-result"]
        errors = [text for stream, text in lines if stream == "stderr"]
        assert "progress-line" in errors
        connector_lines = [text for text in errors if "hpc-connector" in text]
        if name == "quiet":
            assert connector_lines == [] and errors == ["progress-line"]
        else:
            assert any("submitted HPC job" in text for text in connector_lines)


def test_a_failure_says_why_in_the_termination_message(hpc_ns, core):
    script = "for i in $(seq 1 50); do echo step $i >&2; done; echo 'Error: input.csv not found' >&2; exit 2"
    core.create_namespaced_pod(hpc_ns, pod_manifest("fails-loudly", ["bash", "-c", script],
                                                    annotations={"hpc.offload/runtime": "none"}))
    pod = finished(core, hpc_ns, "fails-loudly")
    assert pod.status.phase == "Failed" and terminated(pod).exit_code == 2
    report = json.loads(terminated(pod).message)
    assert report["stderrTail"].endswith("Error: input.csv not found\n")
    assert "step 50" in report["stderrTail"] and "step 1\n" not in report["stderrTail"]


def test_an_unreachable_site_ends_the_pod_with_the_last_error(hpc_ns, core, kubectl: Kubectl, cluster):
    """A profile whose login node nobody answers for: the pod fails "unreachable" after the
    profile's submit_timeout instead of sitting Running with "retrying" for ever."""
    apply_profile(kubectl, hpc_ns, "slurm-ssh", "nowhere", cluster.bridge_gateway, port=1, submit_timeout="8s")
    core.create_namespaced_pod(hpc_ns, pod_manifest("lost", ["true"], annotations={
        "hpc.offload/backend": "nowhere", "hpc.offload/runtime": "none"}))
    pod = finished(core, hpc_ns, "lost")
    assert pod.status.phase == "Failed" and terminated(pod).exit_code == 69
    report = json.loads(terminated(pod).message)
    assert report["reason"] == "HPCUnreachable"
    assert "submit_timeout" in report["message"] and "refused" in report["message"].lower()


def test_a_restart_after_the_end_runs_the_command_again(hpc_ns, core):
    """Issue 13 item 6: with restartPolicy OnFailure a failed run is retried as a new HPC job
    (its own tag and directory), not reported again."""
    flag = f"/tmp/hpco-e2e-retry-{hpc_ns}"
    script = f"if [ -e {flag} ]; then echo second run; rm -f {flag}; exit 0; fi; touch {flag}; echo first run; exit 3"
    core.create_namespaced_pod(hpc_ns, pod_manifest("retry", ["bash", "-c", script], restart="OnFailure",
                                                    annotations={"hpc.offload/runtime": "none"}))
    pod = finished(core, hpc_ns, "retry")
    assert pod.status.phase == "Succeeded"
    assert pod.status.container_statuses[0].restart_count == 1
    tags = subprocess.run(["squeue", "-h", "--states=all", "-O", "Comment:|,State:|"], capture_output=True,
                          text=True, check=True).stdout.splitlines()
    uid = pod.metadata.uid
    mine = sorted(line.split("|")[:2] for line in tags if line.startswith(f"hpco-{uid}"))
    assert mine == [[f"hpco-{uid}", "FAILED"], [f"hpco-{uid}-r1", "COMPLETED"]]
