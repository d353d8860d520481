"""Annotated Jobs and pods on the real cluster through the `rimrock` backend: the testbed's
Rimrock-compatible server (reached by the pod at the bridge address), SLURM behind it. What
happened is checked in SLURM's own view (squeue) and in Rimrock's job table."""

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
def rimrock_ns(installed, namespace: str, kubectl, cluster) -> str:
    """A namespace whose `testbed` profile is `hpc-offload testbed profile rimrock`."""
    apply_profile(kubectl, namespace, "rimrock", "testbed", cluster.bridge_gateway)
    return namespace


def rimrock_ids(tag: str) -> list[str]:
    from tests.contract.targets import _rimrock_jobs_tagged

    return _rimrock_jobs_tagged(tag)


def slurm(job_id: str, fields: str = "State:|,exit_code:|") -> list[str]:
    out = subprocess.run(["squeue", "-h", "--states=all", "-j", job_id.split(".")[0], "-O", fields],
                         capture_output=True, text=True, check=True).stdout
    return [x.strip() for x in out.split("|")]


def in_queue(job_id: str) -> bool:
    from testbed import api

    return int(job_id.split(".")[0]) in api.queued_job_ids()


def test_an_annotated_job_runs_through_rimrock_with_its_output_in_the_log(rimrock_ns, core, kubectl):
    batch = client.BatchV1Api(core.api_client)
    code = "import sys, time\nfor i in range(5):\n    print('tick', i, flush=True); time.sleep(0.5)\n" \
           "print('a warning', file=sys.stderr)"
    created = time.monotonic()
    kubectl("apply", "-n", rimrock_ns, "-f", "-", stdin=job_manifest("rimrock-ticks", py(code)))
    pod = wait("the job's pod", lambda: job_pods(core, rimrock_ns, "rimrock-ticks") and
               job_pods(core, rimrock_ns, "rimrock-ticks")[0])
    ids = wait("the job in Rimrock", lambda: rimrock_ids(f"hpco-{pod.metadata.uid}"), every=0.05)
    record_timing("rimrock: pod created -> POST /api/jobs answered (s)", time.monotonic() - created)
    assert len(ids) == 1
    wait("the Job to complete",
         lambda: (batch.read_namespaced_job_status("rimrock-ticks", rimrock_ns).status.succeeded or 0) >= 1,
         timeout=180)
    pod = core.read_namespaced_pod(pod.metadata.name, rimrock_ns)
    assert terminated(pod).exit_code == 0
    assert json.loads(terminated(pod).message)["jobId"] == ids[0]
    log = pod_log(core, pod.metadata.name, rimrock_ns)
    assert [line for line in log.splitlines() if line.startswith("tick")] == [f"tick {i}" for i in range(5)]
    assert "a warning" in log
    assert slurm(ids[0])[0] == "COMPLETED"


def test_a_failing_job_mirrors_its_exit_code(rimrock_ns, core, kubectl):
    kubectl("apply", "-n", rimrock_ns, "-f", "-",
            stdin=job_manifest("rimrock-fails", ["bash", "-c", "echo failing; exit 3"]))
    batch = client.BatchV1Api(core.api_client)
    wait("the Job to fail", lambda: any(
        c.type == "Failed" and c.status == "True"
        for c in (batch.read_namespaced_job_status("rimrock-fails", rimrock_ns).status.conditions or [])),
        timeout=180)
    [pod] = job_pods(core, rimrock_ns, "rimrock-fails")
    assert pod.status.phase == "Failed" and terminated(pod).exit_code == 3
    [job_id] = rimrock_ids(f"hpco-{pod.metadata.uid}")
    assert slurm(job_id)[0] == "FAILED"


def test_deleting_a_pod_cancels_its_job_through_rimrock(rimrock_ns, core):
    core.create_namespaced_pod(rimrock_ns, pod_manifest("rimrock-sleeper", ["sleep", "600"]))
    pod = core.read_namespaced_pod("rimrock-sleeper", rimrock_ns)
    job_id = wait("the job in Rimrock", lambda: rimrock_ids(f"hpco-{pod.metadata.uid}"))[0]
    wait("the job to run", lambda: slurm(job_id)[0] == "RUNNING")
    deleted = time.monotonic()
    core.delete_namespaced_pod("rimrock-sleeper", rimrock_ns)
    wait("the job to leave the queue", lambda: not in_queue(job_id),
         timeout=pod.spec.termination_grace_period_seconds, every=0.05)
    record_timing("rimrock: kubectl delete -> job gone from squeue (s)", time.monotonic() - deleted)
    assert slurm(job_id)[0] == "CANCELLED"
