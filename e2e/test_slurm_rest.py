"""Annotated Jobs and pods on the real cluster through the `slurm-rest` backend: the testbed's
slurmrestd (JWT from the profile Secret) reached by the pod at the bridge address, the job's
output over the testbed's sshd. What happened is checked in SLURM's own view (squeue)."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from kubernetes import client

from e2e.kube import apply_profile
from e2e.test_offload import job_manifest, job_pods, pod_log, pod_manifest, py, record_timing, terminated
from e2e.waiting import wait

pytestmark = pytest.mark.e2e


@pytest.fixture
def rest_ns(installed, namespace: str, kubectl, cluster) -> str:
    """A namespace whose `testbed` profile is `hpc-offload testbed profile slurm-rest`."""
    apply_profile(kubectl, namespace, "slurm-rest", "testbed", cluster.bridge_gateway)
    return namespace


def tagged(tag: str) -> list[str]:
    from tests.contract.targets import _slurm_jobs_tagged

    return _slurm_jobs_tagged(tag)


def slurm(job_id: str, fields: str = "State:|,exit_code:|") -> list[str]:
    out = subprocess.run(["squeue", "-h", "--states=all", "-j", job_id, "-O", fields],
                         capture_output=True, text=True, check=True).stdout
    return [x.strip() for x in out.split("|")]


def in_queue(job_id: str) -> bool:
    from testbed import api

    return int(job_id) in api.queued_job_ids()


def test_an_annotated_job_runs_through_slurmrestd_with_its_output_in_the_log(rest_ns, core, kubectl):
    batch = client.BatchV1Api(core.api_client)
    code = "import sys, time\nfor i in range(5):\n    print('tick', i, flush=True); time.sleep(0.5)\n" \
           "print('a warning', file=sys.stderr)"
    created = time.monotonic()
    kubectl("apply", "-n", rest_ns, "-f", "-", stdin=job_manifest("rest-ticks", py(code)))
    pod = wait("the job's pod", lambda: job_pods(core, rest_ns, "rest-ticks") and
               job_pods(core, rest_ns, "rest-ticks")[0])
    ids = wait("the HPC job in squeue", lambda: tagged(f"hpco-{pod.metadata.uid}"), every=0.05)
    record_timing("slurm-rest: pod created -> POST /job/submit answered (s)", time.monotonic() - created)
    assert len(ids) == 1
    wait("the Job to complete",
         lambda: (batch.read_namespaced_job_status("rest-ticks", rest_ns).status.succeeded or 0) >= 1,
         timeout=300)
    pod = core.read_namespaced_pod(pod.metadata.name, rest_ns)
    assert terminated(pod).exit_code == 0
    assert json.loads(terminated(pod).message)["state"] == "COMPLETED"
    log = pod_log(core, pod.metadata.name, rest_ns)
    assert [line for line in log.splitlines() if line.startswith("tick")] == [f"tick {i}" for i in range(5)], log
    assert slurm(ids[0], "State:|,Comment:|")[:2] == ["COMPLETED", f"hpco-{pod.metadata.uid}"]


def test_a_failing_job_mirrors_its_exit_code(rest_ns, core, kubectl):
    kubectl("apply", "-n", rest_ns, "-f", "-",
            stdin=job_manifest("rest-fails", ["bash", "-c", "echo failing; exit 3"]))
    batch = client.BatchV1Api(core.api_client)
    wait("the Job to fail", lambda: any(
        c.type == "Failed" and c.status == "True"
        for c in (batch.read_namespaced_job_status("rest-fails", rest_ns).status.conditions or [])),
        timeout=300)
    [pod] = job_pods(core, rest_ns, "rest-fails")
    assert pod.status.phase == "Failed" and terminated(pod).exit_code == 3
    [job_id] = tagged(f"hpco-{pod.metadata.uid}")
    assert slurm(job_id)[:2] == ["FAILED", "768"]  # the raw wait status of exit 3


def test_deleting_a_pod_cancels_its_job_through_slurmrestd(rest_ns, core):
    core.create_namespaced_pod(rest_ns, pod_manifest("rest-sleeper", ["sleep", "600"]))
    pod = core.read_namespaced_pod("rest-sleeper", rest_ns)
    job_id = wait("the HPC job", lambda: tagged(f"hpco-{pod.metadata.uid}"), timeout=120)[0]
    wait("the HPC job to run", lambda: slurm(job_id)[0] == "RUNNING", timeout=300)
    deleted = time.monotonic()
    core.delete_namespaced_pod("rest-sleeper", rest_ns)
    wait("the HPC job to leave the queue", lambda: not in_queue(job_id),
         timeout=pod.spec.termination_grace_period_seconds, every=0.05)
    record_timing("slurm-rest: kubectl delete -> job gone from squeue (s)", time.monotonic() - deleted)
    assert slurm(job_id)[0] == "CANCELLED"
