"""`kubectl hpc jobs`: the connector's termination message and the versioned state records in
its log (connector/record.py), and formatting, on plain pod dicts; the records are written by
the connector's own code, and in the last test by a real connector against the SLURM testbed."""

from __future__ import annotations

import datetime as dt
import io
import json
import signal
import time
from typing import Any

import pytest

from connector import record
from hpc_cli.jobs import (
    JobRow,
    format_json,
    format_table,
    human_age,
    last_record,
    offloaded_container,
    parse_termination,
    row_for,
    rows_for,
)

NOW = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.UTC)
T = "2024-05-01T11:00:00Z hpc-connector INFO "


def rec(**values: Any) -> str:
    """A record line exactly as the connector writes it (connector.record.write), no newline."""
    sink = io.BytesIO()
    record.write(sink, **values)
    return sink.getvalue().decode().rstrip("\n")


def pod(name: str = "train-abc", namespace: str = "research", state: dict[str, Any] | None = None,
        phase: str = "Running", containers: tuple[str, ...] = ("train",),
        annotations: dict[str, str] | None = None, injected: bool = True) -> dict[str, Any]:
    ann = {"hpc.offload/backend": "mysite", **(annotations or {})}
    if injected:
        ann["hpc.offload/status"] = "injected"
        ann["hpc.offload/job-spec"] = json.dumps({"container": containers[0], "image": "x"})
    return {
        "metadata": {"name": name, "namespace": namespace, "annotations": ann,
                     "creationTimestamp": "2024-05-01T11:55:00Z"},
        "spec": {"containers": [{"name": c} for c in containers]},
        "status": {"phase": phase, "containerStatuses": [
            {"name": containers[0], "state": state or {"running": {}}}]},
    }


class Logs:
    """A fake log reader recording its calls."""

    def __init__(self, tail: str, head: str = "") -> None:
        self.tail, self.head, self.calls = tail, head, []  # type: ignore[var-annotated]

    def __call__(self, namespace: str, pod: str, container: str, head: bool) -> str:
        self.calls.append((namespace, pod, container, head))
        return self.head if head else self.tail


def test_last_record_is_the_newest_of_the_connectors_records() -> None:
    text = "\n".join([
        T + "submitted HPC job 4711 (slurm-ssh, 0.52s) in /scratch/x/hpco-uid",
        rec(job="4711", state="SUBMITTED"),
        rec(job="4711", state="PENDING", reason="Priority", position=3, start="2024-05-01T13:00"),
        "job output: HPC job 9999 running on fake",  # human words are not records
        rec(job="4711", state="RUNNING", node="node17"),
        "more output",
    ])
    found = last_record(text)
    assert found is not None and (found["job"], found["state"], found["node"]) == ("4711", "RUNNING", "node17")
    assert found["v"] == record.VERSION and "time" in found


def test_records_behind_kubectl_timestamps_and_noise() -> None:
    # `kubectl logs --timestamps` and the CRI log format put a time before the line
    line = "2024-05-01T11:00:01.123456789Z " + rec(job="12", state="PENDING", reason="Resources", position=1)
    assert last_record("noise\n" + line + "\n")["position"] == 1  # type: ignore[index]
    assert last_record("") is None
    assert last_record(T + "submitted HPC job 3\nHPC job 3 running") is None  # old log lines: no record
    assert last_record(record.PREFIX + "{not json") is None
    newer = record.PREFIX + json.dumps({"v": record.VERSION + 1, "job": "1", "state": "RUNNING"})
    assert last_record(newer) is None  # a newer major version is not guessed at
    assert last_record(rec(job="1", state="RUNNING") + "\n" + newer)["state"] == "RUNNING"  # type: ignore[index]


def test_record_fields_are_declared() -> None:
    with pytest.raises(ValueError, match="unknown record field"):
        record.line(job="1", state="RUNNING", colour="red")
    body = json.loads(rec(job="7", state="PENDING", position=2, reason=None).removeprefix(record.PREFIX))
    assert set(body) == {"v", "job", "state", "position", "time"}  # None fields left out


def test_parse_termination() -> None:
    msg = json.dumps({"jobId": "42", "state": "TIMEOUT", "exitCode": 201,
                      "reason": "HPCTimeLimit", "message": "HPC job 42 ended TIMEOUT"})
    assert parse_termination(msg)["jobId"] == "42"  # type: ignore[index]
    assert parse_termination("Traceback (most recent call last): …") is None
    assert parse_termination('{"x": 1}') is None
    assert parse_termination("") is None and parse_termination(None) is None


def test_terminated_row_uses_message_not_logs() -> None:
    msg = json.dumps({"jobId": "42", "state": "COMPLETED", "exitCode": 0,
                      "reason": "Completed", "message": "ok"})
    logs = Logs(tail=T + "submitted HPC job 1")
    row = row_for(pod(state={"terminated": {"exitCode": 0, "message": msg}},
                      phase="Succeeded"), logs, NOW)
    assert (row.job_id, row.state, row.exit_code, row.source) == (
        "42", "COMPLETED", 0, "termination-message")
    assert logs.calls == []


def test_terminated_before_submission_shows_reason() -> None:
    msg = json.dumps({"jobId": None, "state": None, "exitCode": 77,
                      "reason": "HostKeyRefused", "message": "host key"})
    row = row_for(pod(state={"terminated": {"exitCode": 77, "message": msg}}, phase="Failed"),
                  None, NOW)
    assert (row.job_id, row.state, row.exit_code) == (None, "HostKeyRefused", 77)


def test_terminated_without_message_falls_back_to_the_record() -> None:
    logs = Logs(tail=rec(job="8", state="SUBMITTED") + "\n" + rec(job="8", state="RUNNING"))
    row = row_for(pod(state={"terminated": {"exitCode": 137, "reason": "OOMKilled",
                                            "message": "last log lines"}}, phase="Failed"),
                  logs, NOW)
    assert row.job_id == "8" and row.state == "unknown (connector OOMKilled 137)"
    assert row.source == "record"


def test_pending_row_shows_reason_and_queue_position() -> None:
    logs = Logs(tail=rec(job="31", state="SUBMITTED") + "\n"
                + rec(job="31", state="PENDING", reason="Priority", position=4))
    row = row_for(pod(), logs, NOW)
    assert (row.job_id, row.state, row.reason, row.position, row.source) == ("31", "PENDING", "Priority", 4, "record")
    table = format_table([row]).splitlines()
    assert table[0].split()[3:7] == ["HPC-JOB", "HPC-STATE", "REASON", "QUEUE"]
    assert table[1].split()[3:7] == ["31", "PENDING", "Priority", "4"]
    running = row_for(pod(), Logs(tail=rec(job="31", state="RUNNING", node="n1", position=4)), NOW)
    assert (running.state, running.position) == ("RUNNING", None)  # a position only while queued


def test_running_row_reads_tail_then_head() -> None:
    logs = Logs(tail="output\n" * 200, head=T + "submitted HPC job 31\n" + rec(job="31", state="RUNNING") + "\n")
    row = row_for(pod(), logs, NOW)
    assert (row.job_id, row.state, row.source) == ("31", "RUNNING", "record")
    assert logs.calls == [("research", "train-abc", "train", False),
                          ("research", "train-abc", "train", True)]
    logs = Logs(tail=rec(job="31", state="RUNNING", node="n1") + "\n")
    assert row_for(pod(), logs, NOW).state == "RUNNING" and len(logs.calls) == 1
    nothing = row_for(pod(), Logs(tail="starting\n", head="starting\n"), NOW)
    assert (nothing.job_id, nothing.state, nothing.source) == (None, None, None)


def test_log_error_does_not_break_listing() -> None:
    def forbidden(*_: Any) -> str:
        raise RuntimeError("403")

    row = row_for(pod(), forbidden, NOW)
    assert (row.job_id, row.state) == (None, "?")


def test_waiting_pod_reads_no_log() -> None:
    logs = Logs(tail="x")
    row = row_for(pod(state={"waiting": {"reason": "ContainerCreating"}}, phase="Pending"),
                  logs, NOW)
    assert (row.job_id, row.state, row.phase) == (None, None, "Pending")
    assert logs.calls == []


def test_offloaded_container_choice() -> None:
    assert offloaded_container(pod(containers=("main", "sidecar"))) == "main"
    p = pod(containers=("a", "b"), annotations={"hpc.offload/container": "b"})
    del p["metadata"]["annotations"]["hpc.offload/job-spec"]
    assert offloaded_container(p) == "b"
    p = pod(containers=("only",))
    p["metadata"]["annotations"]["hpc.offload/job-spec"] = "not json"
    assert offloaded_container(p) == "only"
    p = pod(containers=("a", "b"))
    del p["metadata"]["annotations"]["hpc.offload/job-spec"]
    assert offloaded_container(p) is None


def test_rows_only_offloaded_sorted() -> None:
    pods = [pod("b"), pod("a", namespace="zeta"), pod("plain", injected=False),
            pod("a"), {"metadata": {"name": "bare"}}]
    rows = rows_for(pods, Logs(tail=rec(job="1", state="RUNNING")), NOW)
    assert [(r.namespace, r.pod) for r in rows] == [
        ("research", "a"), ("research", "b"), ("zeta", "a")]
    assert all(r.profile == "mysite" and r.age == "5m" for r in rows)


def test_terminating_phase() -> None:
    p = pod()
    p["metadata"]["deletionTimestamp"] = "2024-05-01T11:59:00Z"
    assert row_for(p, Logs(tail=""), NOW).phase == "Terminating"


@pytest.mark.parametrize(("seconds", "age"), [
    (0, "0s"), (45, "45s"), (119, "119s"), (150, "2m30s"), (300, "5m"), (3000, "50m"),
    (4 * 3600 + 120, "4h2m"), (20 * 3600, "20h"), (3 * 86400 + 3600, "3d1h"),
    (40 * 86400, "40d"), (800 * 86400, "2y"),
])
def test_human_age(seconds: int, age: str) -> None:
    created = (NOW - dt.timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")
    assert human_age(created, NOW) == age


def test_human_age_missing() -> None:
    assert human_age(None, NOW) == "-" and human_age("garbage", NOW) == "-"


def test_format_table_and_json() -> None:
    rows = [JobRow("research", "train-abc", "mysite", "4711", "RUNNING", "Running", "5m"),
            JobRow("lab", "p", "site-with-long-name", None, None, "Pending", "10s")]
    table = format_table(rows).splitlines()
    assert table[0].split() == ["NAMESPACE", "POD", "PROFILE", "HPC-JOB", "HPC-STATE", "REASON",
                                "QUEUE", "PHASE", "AGE"]
    assert table[1].split() == ["research", "train-abc", "mysite", "4711", "RUNNING", "-", "-",
                                "Running", "5m"]
    assert table[2].split() == ["lab", "p", "site-with-long-name", "-", "-", "-", "-", "Pending", "10s"]
    assert table[0].index("POD") == table[1].index("train-abc")  # aligned columns
    assert all(line == line.rstrip() for line in table)
    data = json.loads(format_json(rows))
    assert data[0] == {"namespace": "research", "pod": "train-abc", "profile": "mysite",
                       "jobId": "4711", "state": "RUNNING", "phase": "Running", "age": "5m",
                       "container": None, "exitCode": None, "reason": None, "position": None,
                       "source": None}
    assert json.loads(format_json([])) == []


def test_registered_as_subcommand() -> None:
    from click.testing import CliRunner

    from hpc_cli.main import cli

    result = CliRunner().invoke(cli, ["jobs", "--help"])
    assert result.exit_code == 0 and "--all-namespaces" in result.output
    result = CliRunner().invoke(cli, ["jobs", "-n", "x", "-A"])
    assert result.exit_code != 0


def test_item5_tenant_strings_are_printed_with_control_characters_escaped() -> None:
    """Issue 12 item 5: `kubectl hpc jobs -A` printed tenant-controlled strings (profile
    annotation, job id and state from the job's log or termination message) raw, so a tenant
    could drive the admin's terminal (clear the screen, retitle it, hide rows, spoof lines)."""
    esc = "\x1b]0;pwned\x07\x1b[2J\x1b[1A"
    hostile = pod(annotations={"hpc.offload/backend": f"site{esc}"}, state={"terminated": {
        "exitCode": 1, "message": json.dumps({"jobId": f"42{esc}", "state": "FAILED\r\nfake",
                                              "exitCode": 1, "reason": "x\u202eevil"})}})
    running = pod(name="run-1")
    logs = Logs(rec(job="7\x1b[31m\x9b2J", state="SUBMITTED") + "\n")
    rows = rows_for([hostile, running], logs, NOW, parallel=1)
    table = format_table(rows)
    assert "\x1b" not in table and "\x07" not in table and "\r" not in table
    assert "\x9b" not in table and "\u202e" not in table
    assert "site\\x1b]0;pwned\\x07" in table and "42\\x1b" in table
    assert "FAILED\\x0d\\x0afake" in table and "7\\x1b[31m\\x9b2J" in table
    assert len(table.splitlines()) == 3  # a tenant cannot add lines either
    assert all(ch == "\n" or ch.isprintable() for ch in format_json(rows))


@pytest.mark.slurm
def test_rows_from_a_real_connectors_log(profiles, run_connector) -> None:
    """The records a real `hpc-connector run` writes against the testbed's SLURM give the row:
    a held job is PENDING with SLURM's reason, a running one RUNNING even when its output has
    pushed the records out of the tail, a cancelled one CANCELLED."""

    def as_kubectl_logs(run) -> Logs:  # both streams, as the pod log holds them
        text = run.log + run.stdout
        return Logs(tail="\n".join(text.splitlines()[-200:]), head=text[:16384])

    held = run_connector({"command": ["bash", "-c", "sleep 300"], "runtime": "none",
                          "resources": {"extra_args": ["--begin=now+3600"]}}, profiles["slurm-local"])
    held.wait_for_stderr('"state": "PENDING"')
    row = row_for(pod(), as_kubectl_logs(held), NOW)
    assert (row.job_id, row.state, row.reason, row.source) == (held.job_id, "PENDING", "BeginTime", "record"), held.log
    held.proc.send_signal(signal.SIGTERM)
    held.wait(timeout=60)
    assert last_record(held.log)["state"] == "CANCELLED", held.log  # type: ignore[index]

    run = run_connector({"command": ["bash", "-c", "seq 300; sleep 300"], "runtime": "none"},
                        profiles["slurm-local"])
    run.wait_for_stderr('"state": "RUNNING"')
    deadline = time.monotonic() + 60
    while len(run.stdout.splitlines()) < 300 and time.monotonic() < deadline:
        time.sleep(0.2)
    logs = as_kubectl_logs(run)
    assert last_record(logs.tail) is None  # the output has pushed the records out of the tail
    row = row_for(pod(), logs, NOW)
    assert (row.job_id, row.state, row.source) == (run.job_id, "RUNNING", "record"), run.log
    assert [call[3] for call in logs.calls] == [False, True]  # tail, then head
    run.proc.send_signal(signal.SIGTERM)
    assert run.wait(timeout=60) == 143
