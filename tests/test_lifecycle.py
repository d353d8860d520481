"""The whole life cycle against the in-memory fake backend: no root, no SLURM, no transport.

Each test runs a real `Connector` in a thread and drives its job by hand, then checks what
the pod would show: the exit code, stdout and stderr byte for byte, the termination message.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from connector import lifecycle
from connector.backends.base import Capability, JobState
from connector.errors import AuthError, TransientError
from connector.lifecycle import Connector, Timing
from connector.spec import JobSpec
from connector.state import StateStore
from tests.fakes.backend import FakeBackend

FAST = Timing(period=0.05, tick=0.01, fast=0.01)
UID = "0f1e2d3c-aaaa-bbbb-cccc-000000000001"


def spec(**extra) -> JobSpec:
    return JobSpec.from_dict({"command": ["app"], "runtime": "none",
                              "pod": {"namespace": "ns", "name": "p", "uid": UID}, **extra})


class Run:
    """A connector running in a thread, with its stdout/stderr captured."""

    def __init__(self, backend: FakeBackend, state_dir: Path, job: JobSpec | None = None,
                 environ: dict | None = None, timing: Timing = FAST) -> None:
        self.out, self.err = io.BytesIO(), io.BytesIO()
        state_dir.mkdir(parents=True, exist_ok=True)
        self.termination = state_dir / "termination-log"
        self.connector = Connector(job or spec(), backend, StateStore(state_dir), timing, self.out,
                                   str(self.termination), environ=environ or {}, err=self.err)
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.code = self.connector.run()

    def wait(self, timeout: float = 20) -> int:
        self.thread.join(timeout)
        assert self.code is not None, "the connector did not end"
        return self.code

    def signal(self, signum: int) -> None:
        self.connector._on_signal(signum, None)

    @property
    def report(self) -> dict:
        return json.loads(self.termination.read_text())


@pytest.fixture
def connector_log(caplog):
    """The connector's log lines (its logger may not propagate once the CLI set it up)."""
    logger = logging.getLogger("hpc-connector")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="hpc-connector")
    yield caplog
    logger.removeHandler(caplog.handler)


def until(predicate, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.01)


def test_submit_stream_and_complete(tmp_path):
    backend = FakeBackend()
    run = Run(backend, tmp_path, environ={"IGNORED": "x"})
    job = backend.job()
    assert job.request.job_dir == f"/hpc/work/hpco-{UID}"
    job.state = JobState.RUNNING
    backend.write(job, b"line 1\npart", b"warn\n")
    until(lambda: run.out.getvalue() == b"line 1\n")  # the partial line waits for its end
    backend.write(job, b"ial\nlast without newline")
    backend.end(job, JobState.COMPLETED, 0)
    assert run.wait() == 0
    assert run.out.getvalue() == b"line 1\npartial\nlast without newline\n"
    job_err = [x for x in run.err.getvalue().splitlines(keepends=True) if not x.startswith(b"hpc-offload-state")]
    assert job_err == [b"warn\n"]  # the job's stderr on the container's stderr
    assert run.report["exitCode"] == 0 and run.report["jobId"] == job.job_id
    assert backend.submits == 1 and backend.closed


@pytest.mark.parametrize(("state", "code", "sig", "expected", "reason"), [
    (JobState.FAILED, 7, 0, 7, "HPCExitCode"),
    (JobState.FAILED, 0, 9, 137, "HPCSignal"),
    (JobState.TIMEOUT, 0, 15, 201, "HPCTimeLimit"),
    (JobState.NODE_FAIL, None, None, 203, "HPCNodeFail"),
    (JobState.CANCELLED, 0, 15, 202, "HPCCancelled"),
])
def test_end_states_map_to_documented_codes(tmp_path, state, code, sig, expected, reason):
    backend = FakeBackend()
    run = Run(backend, tmp_path)
    job = backend.job()
    backend.end(job, state, code, sig, marker=False)
    assert run.wait() == expected
    assert run.report["reason"] == reason


def test_the_end_marker_ends_the_pod_while_the_manager_cleans_up(tmp_path):
    backend = FakeBackend()
    run = Run(backend, tmp_path)
    job = backend.job()
    with backend.lock:
        job.state, job.payload_ended, job.marker = JobState.RUNNING, True, 3
    assert run.wait() == 3


def test_a_restart_reattaches_from_the_state_file_and_prints_no_line_twice(tmp_path):
    backend = FakeBackend()
    first = Run(backend, tmp_path / "first")
    job = backend.job()
    job.state = JobState.RUNNING
    backend.write(job, b"one\ntwo\n")
    until(lambda: first.out.getvalue() == b"one\ntwo\n")
    # the container is killed here: a restart finds the state dir as it was at that moment
    (tmp_path / "restarted").mkdir()
    shutil.copy(tmp_path / "first" / "job.json", tmp_path / "restarted" / "job.json")
    backend.write(job, b"three\n")
    second = Run(backend, tmp_path / "restarted")
    until(lambda: second.out.getvalue() == b"three\n")
    backend.end(job, JobState.COMPLETED, 0)
    assert second.wait() == 0
    assert second.out.getvalue() == b"three\n"
    assert backend.submits == 1


def test_without_a_state_file_the_job_is_found_by_its_tag(tmp_path):
    backend = FakeBackend()
    first = Run(backend, tmp_path / "a")
    job = backend.job()
    second = Run(backend, tmp_path / "b")  # state lost: find() by the pod UID
    backend.end(job, JobState.COMPLETED, 0)
    assert first.wait() == 0 and second.wait() == 0
    assert backend.submits == 1


def test_transient_faults_back_off_and_recover(tmp_path):
    backend = FakeBackend()
    backend.faults = 2
    run = Run(backend, tmp_path)
    job = backend.job()
    backend.end(job, JobState.FAILED, 5, marker=False)
    assert run.wait(timeout=30) == 5
    assert backend.status_requests >= 3


def test_sigint_cancels_and_waits_until_the_manager_says_so(tmp_path):
    backend = FakeBackend()
    backend.cancel_takes = 3  # three status answers still RUNNING after the cancel
    run = Run(backend, tmp_path)
    job = backend.job()
    job.state = JobState.RUNNING
    until(lambda: backend.status_requests >= 1)
    run.signal(signal.SIGINT)
    assert run.wait() == 130
    assert job.state is JobState.CANCELLED and backend.cancel_requests == 1
    assert run.report["reason"] == "PodStopped"


def test_a_cancel_that_never_lands_times_out(tmp_path, monkeypatch):
    monkeypatch.setattr(lifecycle, "CANCEL_TIMEOUT", 0.5)
    backend = FakeBackend()
    backend.cancel_takes = -1
    run = Run(backend, tmp_path)
    backend.job()
    until(lambda: backend.status_requests >= 1)
    run.signal(signal.SIGTERM)
    assert run.wait() == 143
    assert run.report["reason"] == "CancelTimeout"


def test_a_requeued_job_is_followed_to_its_real_end_without_repeating_output(tmp_path):
    backend = FakeBackend()
    run = Run(backend, tmp_path)
    job = backend.job()
    job.state = JobState.RUNNING
    backend.write(job, b"first run\n")
    until(lambda: run.out.getvalue() == b"first run\n")
    with backend.lock:
        job.state, job.requeued, job.reason = JobState.PENDING, True, "BeginTime"
    until(lambda: backend.status_requests >= 3)
    with backend.lock:
        job.state = JobState.RUNNING
    backend.write(job, b"second run\n")
    backend.end(job, JobState.COMPLETED, 0)
    assert run.wait() == 0
    assert run.out.getvalue() == b"first run\nsecond run\n"


def test_a_backend_with_output_only_at_the_end(tmp_path, connector_log):
    caplog = connector_log
    backend = FakeBackend(Capability.FINAL_OUTPUT)
    run = Run(backend, tmp_path)
    job = backend.job()
    backend.write(job, b"result\n")
    backend.end(job, JobState.COMPLETED, 0)
    assert run.wait() == 0
    assert run.out.getvalue() == b"result\n"
    assert "gives a job's output only at its end" in caplog.text


def test_a_backend_without_output_says_where_it_is(tmp_path, connector_log):
    caplog = connector_log
    backend = FakeBackend(Capability.NONE)
    run = Run(backend, tmp_path)
    job = backend.job()
    backend.write(job, b"unseen\n")
    backend.end(job, JobState.COMPLETED, 0)
    assert run.wait() == 0
    assert run.out.getvalue() == b""
    assert f"it is at /hpc/work/hpco-{UID}/output.log on the HPC side" in caplog.text


def test_staging_without_file_access_fails_before_submitting(tmp_path):
    backend = FakeBackend(Capability.STREAM_OUTPUT)
    run = Run(backend, tmp_path, job=spec(stage_in="/data:in"))
    assert run.wait() == 64
    assert backend.submits == 0
    assert "cannot copy files" in run.report["message"]


def test_staging_goes_through_the_backend_file_store(tmp_path):
    source = tmp_path / "in.txt"
    source.write_bytes(b"input")
    target = tmp_path / "out" / "result.txt"
    backend = FakeBackend()
    run = Run(backend, tmp_path / "state", job=spec(stage_in=f"{source}:in.txt",
                                                  stage_out=f"{target}:result.txt"))
    job = backend.job()
    assert backend.fs.data[f"{job.request.job_dir}/in.txt"] == b"input"
    backend.fs.data[f"{job.request.job_dir}/result.txt"] = b"output"
    backend.end(job, JobState.COMPLETED, 0)
    assert run.wait() == 0
    assert target.read_bytes() == b"output"


def test_only_shell_variable_names_are_forwarded_and_values_never_logged(tmp_path, connector_log):
    """Security issue item 1: `envFrom` may bring names like `db-password`; bash would print
    `export: db-password=<value>: not a valid identifier` into the job's output (the pod log)."""
    caplog = connector_log
    backend = FakeBackend()
    environ = {"db-password": "s3cret-value", "A;touch${IFS}/tmp/x;B": "v", "GOOD_NAME": "ok"}
    run = Run(backend, tmp_path, job=spec(env_from=True), environ=environ)
    job = backend.job()
    assert dict(job.request.env) == {"GOOD_NAME": "ok"}
    backend.end(job, JobState.COMPLETED, 0)
    assert run.wait() == 0
    assert "'db-password'" in caplog.text and "s3cret-value" not in caplog.text


def test_an_unreachable_site_ends_the_pod_after_submit_timeout(tmp_path):
    """Issue 13 item 4: no more "retrying in 30s" for ever; the last error is in the message."""
    backend = FakeBackend()
    backend.submit_error = TransientError("Connection refused")
    timing = Timing(period=0.05, tick=0.01, fast=0.01, submit_timeout=1.5)
    run = Run(backend, tmp_path, timing=timing)
    assert run.wait(timeout=30) == 69
    assert run.report["reason"] == "HPCUnreachable"
    assert "submit_timeout" in run.report["message"] and "Connection refused" in run.report["message"]


def test_a_refused_credential_ends_the_submission_at_once(tmp_path):
    backend = FakeBackend()
    backend.submit_error = AuthError("SSH authentication as u@h:22 failed (key not accepted)")
    run = Run(backend, tmp_path)
    assert run.wait(timeout=5) == 77
    assert run.report["reason"] == "AuthenticationRefused"


def test_the_termination_message_carries_the_tail_of_the_jobs_stderr(tmp_path):
    backend = FakeBackend()
    run = Run(backend, tmp_path)
    job = backend.job()
    job.state = JobState.RUNNING
    noise = b"".join(b"progress %d\n" % i for i in range(100))
    backend.write(job, stderr=noise + b"Traceback: FileNotFoundError: input.csv\n")
    backend.end(job, JobState.FAILED, 1)
    assert run.wait() == 1
    tail = run.report["stderrTail"]
    assert tail.endswith("FileNotFoundError: input.csv\n") and "progress 99" in tail
    assert "progress 0\n" not in tail
    assert len(run.termination.read_bytes()) < 4096


def test_a_restart_after_the_end_runs_the_command_again_as_a_new_job(tmp_path):
    """Issue 13 item 6: restartPolicy OnFailure means a new run, not the old result again."""
    backend = FakeBackend()
    first = Run(backend, tmp_path)
    job = backend.job()
    backend.end(job, JobState.FAILED, 3)
    assert first.wait() == 3
    second = Run(backend, tmp_path)
    until(lambda: len(backend.jobs) == 2)
    new = [j for j in backend.jobs.values() if j is not job][0]
    assert new.request.job_dir == f"/hpc/work/hpco-{UID}-r1" and new.request.tag == f"hpco-{UID}-r1"
    backend.end(new, JobState.COMPLETED, 0)
    assert second.wait() == 0
    assert backend.submits == 2


def test_a_job_the_manager_forgot_is_resolved_from_its_end_marker(tmp_path):
    """Issue 13 item 5: a job aged out of the scheduler during an outage is not "lost" when
    its script left its exit status."""
    backend = FakeBackend()
    run = Run(backend, tmp_path)
    job = backend.job()
    with backend.lock:
        job.state, job.marker = JobState.UNKNOWN, 4
    assert run.wait() == 4


def test_a_job_lost_without_a_marker_says_so(tmp_path):
    backend = FakeBackend()
    run = Run(backend, tmp_path)
    job = backend.job()
    with backend.lock:
        job.state = JobState.UNKNOWN
    assert run.wait() == 207
    assert run.report["reason"] == "HPCJobLost"


def test_pending_reason_and_position_changes_are_logged(tmp_path, connector_log):
    backend = FakeBackend()
    run = Run(backend, tmp_path)
    job = backend.job()
    with backend.lock:
        job.reason = "Priority"
    until(lambda: "(Priority)" in connector_log.text)
    with backend.lock:
        job.reason, job.requeued = "JobHeldUser", True
    until(lambda: "(JobHeldUser)" in connector_log.text)
    assert "pending again (requeued)" in connector_log.text
    backend.end(job, JobState.COMPLETED, 0)
    assert run.wait() == 0


def test_job_only_streams_the_job_and_nothing_else(tmp_path):
    """Issue 13 item 3: with `logs: job-only` the container's stdout is exactly the job's."""
    backend = FakeBackend()
    run = Run(backend, tmp_path, job=spec(logs="job-only"))
    job = backend.job()
    backend.write(job, b"42\n", b"note\n")
    backend.end(job, JobState.COMPLETED, 0)
    assert run.wait() == 0
    assert run.out.getvalue() == b"42\n" and run.err.getvalue() == b"note\n"


def test_state_records_and_readiness_follow_the_job(tmp_path):
    """Issue 14 item 2: one versioned record per state change (what `kubectl hpc jobs` reads),
    and the readiness port open only while the job runs (`0/1` queued, `1/1` running)."""
    import socket

    from connector import record
    from connector.readiness import ReadyPort

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def ready() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    backend = FakeBackend()
    run = Run(backend, tmp_path)
    run.connector.ready = ReadyPort(port, "127.0.0.1")
    job = backend.job()
    with backend.lock:
        job.reason = "Priority"
    until(lambda: b'"reason": "Priority"' in run.err.getvalue())
    assert not ready()
    with backend.lock:
        job.state, job.reason = JobState.RUNNING, ""
    until(ready)
    with backend.lock:
        job.state, job.requeued, job.reason = JobState.PENDING, True, "BeginTime"
    until(lambda: not ready())
    backend.end(job, JobState.FAILED, 3)
    assert run.wait() == 3
    assert not ready()
    found = [record.parse(x) for x in run.err.getvalue().decode().splitlines()]
    states = [(r["state"], r.get("reason"), r.get("position")) for r in found if r]
    expected = [("SUBMITTED", None, None), ("PENDING", "Priority", 1), ("RUNNING", None, None),
                ("PENDING", "BeginTime", 1), ("FAILED", "HPCExitCode", None)]
    assert [s for s in states if s in expected] == expected  # (a first PENDING may come before the reason)
    assert record.last(run.err.getvalue().decode())["exit"] == 3


def test_records_refuse_unknown_fields_and_other_versions():
    from connector import record

    with pytest.raises(ValueError):
        record.line(colour="red")
    text = record.line(job="7", state="RUNNING")
    assert record.parse("2026-11-30T10:00:00Z stderr F " + text)["job"] == "7"
    assert record.parse(text.replace('"v": 1', '"v": 2')) is None
    assert record.parse("hpc-offload-state: {not json") is None


def test_the_job_gets_the_containers_variables_under_their_own_names(tmp_path):
    """With the webhook's prefix only the container's own variables reach the job (the
    kubelet's service variables and the connector's settings do not), unprefixed."""
    backend = FakeBackend()
    environ = {"HPCO_ENV_RUN_ID": "42", "HPCO_ENV_DB_PASSWORD": "pw", "KUBERNETES_SERVICE_HOST": "10.96.0.1",
               "HPC_OFFLOAD_RELAY_URL": "https://relay", "HPCO_ENV_LD_PRELOAD": "/x.so", "OTHER": "no"}
    run = Run(backend, tmp_path, job=spec(env_from=True, env_prefix="HPCO_ENV_"), environ=environ)
    job = backend.job()
    assert dict(job.request.env) == {"RUN_ID": "42", "DB_PASSWORD": "pw"}
    backend.end(job, JobState.COMPLETED, 0)
    assert run.wait() == 0


def test_a_hand_written_spec_cannot_claim_another_pods_identity(tmp_path):
    """Issue 12 item 7 (connector half): `pod` names the HPC job to reattach to; in a pod only
    the downward API may give it, so a spec carrying it is refused before anything runs."""
    import subprocess
    import sys

    (tmp_path / "pod-uid").write_text("11111111-2222-3333-4444-555555555555")
    (tmp_path / "job-spec.json").write_text(json.dumps({
        "command": ["true"], "runtime": "none", "pod": {"namespace": "victims", "name": "x", "uid": UID}}))
    proc = subprocess.run([sys.executable, "-m", "connector.cli", "run", "--spec", str(tmp_path / "job-spec.json"),
                           "--profile", str(tmp_path / "no-profile"), "--termination-log", str(tmp_path / "t")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 64
    assert "may not carry `pod`" in proc.stderr
