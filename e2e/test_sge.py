"""Annotated Jobs and pods on the real cluster through the `sge-ssh` backend: the testbed's Grid
Engine, reached over the testbed's sshd from the pod (profile applied as users apply it). What
happened is checked in Grid Engine's own view: `qstat` while queued, `qacct` once ended."""

from __future__ import annotations

import json
import time

import pytest
from kubernetes import client

from e2e.kube import apply_profile
from e2e.test_offload import job_manifest, job_pods, pod_log, pod_manifest, py, record_timing, terminated
from e2e.waiting import wait

pytestmark = pytest.mark.e2e


@pytest.fixture
def sge_ns(installed, namespace: str, kubectl, cluster) -> str:
    """A namespace whose `testbed` profile is `hpc-offload testbed profile sge-ssh`."""
    apply_profile(kubectl, namespace, "sge-ssh", "testbed", cluster.bridge_gateway)
    return namespace


def sge_ids(name: str) -> list[str]:
    from testbed import sge

    return sge.jobs_named(name)


def in_qstat(job_id: str) -> bool:
    from testbed import sge

    return int(job_id) in sge.job_ids()


def accounting(job_id: str) -> dict[str, str]:
    from testbed import sge

    record = sge.accounting(int(job_id))
    assert record is not None, f"no qacct record for job {job_id}"
    return record


def test_an_annotated_job_runs_on_grid_engine_with_its_output_in_the_log(sge_ns, core, kubectl):
    batch = client.BatchV1Api(core.api_client)
    code = "import time\nfor i in range(5):\n    print('tick', i, flush=True); time.sleep(0.5)"
    created = time.monotonic()
    kubectl("apply", "-n", sge_ns, "-f", "-", stdin=job_manifest("sge-ticks", py(code)))
    pod = wait("the job's pod", lambda: job_pods(core, sge_ns, "sge-ticks") and
               job_pods(core, sge_ns, "sge-ticks")[0])
    ids = wait("the HPC job in qstat", lambda: sge_ids(f"hpco-{pod.metadata.uid}"), every=0.05)
    record_timing("sge-ssh: pod created -> qsub accepted (s)", time.monotonic() - created)
    assert len(ids) == 1
    wait("the Job to complete",
         lambda: (batch.read_namespaced_job_status("sge-ticks", sge_ns).status.succeeded or 0) >= 1,
         timeout=180)
    pod = core.read_namespaced_pod(pod.metadata.name, sge_ns)
    assert terminated(pod).exit_code == 0
    assert json.loads(terminated(pod).message)["state"] == "COMPLETED"
    log = pod_log(core, pod.metadata.name, sge_ns)
    assert [line for line in log.splitlines() if line.startswith("tick")] == [f"tick {i}" for i in range(5)]
    record = accounting(ids[0])
    assert record["exit_status"] == "0" and record["failed"] == "0"


def test_a_failing_job_mirrors_its_exit_code(sge_ns, core, kubectl):
    kubectl("apply", "-n", sge_ns, "-f", "-",
            stdin=job_manifest("sge-fails", ["bash", "-c", "echo failing; exit 3"]))
    batch = client.BatchV1Api(core.api_client)
    wait("the Job to fail", lambda: any(
        c.type == "Failed" and c.status == "True"
        for c in (batch.read_namespaced_job_status("sge-fails", sge_ns).status.conditions or [])),
        timeout=180)
    [pod] = job_pods(core, sge_ns, "sge-fails")
    assert pod.status.phase == "Failed" and terminated(pod).exit_code == 3
    [job_id] = sge_ids(f"hpco-{pod.metadata.uid}")
    assert accounting(job_id)["exit_status"] == "3"


def test_deleting_a_pod_deletes_its_grid_engine_job(sge_ns, core):
    core.create_namespaced_pod(sge_ns, pod_manifest("sge-sleeper", ["sleep", "600"]))
    pod = core.read_namespaced_pod("sge-sleeper", sge_ns)
    job_id = wait("the HPC job", lambda: sge_ids(f"hpco-{pod.metadata.uid}"))[0]
    wait("the HPC job to run", lambda: running(job_id))
    deleted = time.monotonic()
    core.delete_namespaced_pod("sge-sleeper", sge_ns)
    wait("the HPC job to leave qstat", lambda: not in_qstat(job_id),
         timeout=pod.spec.termination_grace_period_seconds, every=0.05)
    record_timing("sge-ssh: kubectl delete -> job gone from qstat (s)", time.monotonic() - deleted)


def running(job_id: str) -> bool:
    from testbed import sge

    out = sge.qcmd("qstat", "-u", "*", "-s", "r", "-xml").stdout
    return f"<JB_job_number>{job_id}</JB_job_number>" in out
