"""A whole pod's connector against the in-memory fake: the decisions that are slow or rare on
a real manager — a part killed by the job's time limit gets the time limit's code, a stopped
sidecar waits for its own end instead of cancelling, a part that never ran fails clearly, a
backend without PARTS is refused — and the handle each connector follows."""

from __future__ import annotations

import io
import json
import signal
import threading
from pathlib import Path

from connector import pod_job
from connector.backends.base import Capability, JobHandle, JobRequest, JobState, Progress
from connector.lifecycle import Timing
from connector.pod_job import PartConnector
from connector.spec import JobSpec
from connector.state import StateStore
from tests.fakes.backend import FakeBackend

FAST = Timing(period=0.05, tick=0.01, fast=0.01)
UID = "0f1e2d3c-aaaa-bbbb-cccc-000000000002"
SPEC = JobSpec.from_dict({
    "container": "*", "runtime": "none", "pod": {"namespace": "ns", "name": "p", "uid": UID},
    "parts": [{"name": "side", "kind": "sidecar", "command": ["sleep", "inf"]},
              {"name": "app", "command": ["train"]}]})


class PartFake(FakeBackend):
    """The fake with a whole pod's per-part exit markers."""

    capabilities = FakeBackend.capabilities | Capability.PARTS

    def __init__(self) -> None:
        super().__init__()
        self.markers: dict[str, int] = {}

    def progress(self, handle: JobHandle, stdout_offset: int | None, stderr_offset: int | None,
                 marker: bool) -> Progress:
        got = super().progress(handle, stdout_offset, stderr_offset, False)
        with self.lock:
            return Progress(got.stdout, got.stderr, self.markers.get(handle.part) if marker else None)


class Run:
    def __init__(self, backend: FakeBackend, tmp: Path, part: str, leader: bool) -> None:
        self.termination = tmp / f"termination-{part}"
        self.connector = PartConnector(SPEC, backend, StateStore(tmp / part), FAST, io.BytesIO(),
                                       str(self.termination), environ={}, err=io.BytesIO(), part=part,
                                       leader=leader, shared_dir=str(tmp))
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.code = self.connector.run()

    def wait(self, timeout: float = 30) -> int:
        self.thread.join(timeout)
        assert self.code is not None, "the connector did not end"
        return self.code

    @property
    def report(self) -> dict:
        return json.loads(self.termination.read_text())


def test_the_leader_submits_once_and_the_follower_follows_its_own_part(tmp_path):
    backend = PartFake()
    leader = Run(backend, tmp_path, "side", leader=True)
    job = backend.job()
    follower = Run(backend, tmp_path, "app", leader=False)
    job.state = JobState.RUNNING
    backend.markers["app"] = 0
    assert follower.wait() == 0
    assert backend.submits == 1
    record = json.loads((tmp_path / "app" / "job.json").read_text())
    assert record["part"] == "app" and record["stdout"].endswith("/part-app.out")
    assert "container app (app) exited 0" in follower.report["message"]
    backend.markers["side"] = 143
    backend.end(job, JobState.COMPLETED, 0)
    assert leader.wait() == 143


def test_a_part_killed_when_the_job_hit_its_time_limit_gets_the_time_limits_code(tmp_path):
    backend = PartFake()
    run = Run(backend, tmp_path, "app", leader=False)  # the sidecar leads; this one only follows
    backend.submit(JobRequest(SPEC, f"/hpc/work/hpco-{UID}", {}))
    job = backend.job()
    job.state = JobState.RUNNING
    backend.markers["app"] = 143  # SIGTERM from the manager, a moment before it says why
    threading.Timer(0.3, lambda: backend.end(job, JobState.TIMEOUT, 0, 15, marker=False)).start()
    assert run.wait() == 201
    assert run.report["reason"] == "HPCTimeLimit"


def test_a_stopped_sidecar_waits_for_its_own_end_instead_of_cancelling(tmp_path):
    backend = PartFake()
    backend.submit(JobRequest(SPEC, f"/hpc/work/hpco-{UID}", {}))
    job = backend.job()
    job.state = JobState.RUNNING
    run = Run(backend, tmp_path, "side", leader=True)  # found by its tag: no second submission
    backend.markers["app"] = 0
    threading.Timer(0.3, lambda: run.connector._on_signal(signal.SIGTERM, None)).start()
    threading.Timer(0.6, lambda: backend.markers.update(side=0)).start()
    assert run.wait() == 0
    assert backend.cancel_requests == 0 and backend.submits == 1


def test_a_part_that_never_ran_fails_clearly(tmp_path):
    backend = PartFake()
    backend.submit(JobRequest(SPEC, f"/hpc/work/hpco-{UID}", {}))
    job = backend.job()
    run = Run(backend, tmp_path, "app", leader=False)
    backend.end(job, JobState.FAILED, 4, 0, marker=False)
    assert run.wait() == 4
    assert "left no exit status" in run.report["message"]


def test_a_backend_without_parts_is_refused_before_anything_is_submitted(tmp_path):
    backend = FakeBackend()
    run = Run(backend, tmp_path, "side", leader=True)
    assert run.wait() == 64
    assert "cannot run a whole pod" in run.report["message"] and backend.submits == 0
    assert json.loads((tmp_path / pod_job.LEADER_FAILED).read_text())["exit_code"] == 64
