"""The relay against the real testbed: a real `hpc-offload relay` process (static tokens stand
in for TokenReview) and real `hpc-connector run` processes in relay mode, checked in SLURM's
own queue and in the processes on this machine.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from connector.backends.relay import RelayClient, RelayRefused
from connector.errors import BackendError
from relay.local import RelayProcess
from relay.protocol import b64, profile_files
from tests.contract.targets import _slurm_in_queue, _slurm_jobs_tagged

pytestmark = [pytest.mark.slurm]
NAMESPACE = "tests"  # run_connector's pods live here


def bash(script: str, **extra) -> dict:
    return {"command": ["bash", "-c", script], "runtime": "none", **extra}


class Relay(RelayProcess):
    def pod(self, audience: str = "") -> tuple[str, Path]:
        uid = str(uuid.uuid4())
        return uid, self.token_for(NAMESPACE, "t", uid, audience)


@pytest.fixture(scope="module")
def relay(tmp_path_factory, testbed_info):
    server = Relay(tmp_path_factory.mktemp("relay"))
    server.pool = [server.pod() for _ in range(40)]  # tokens exist before the relay reads them
    server.other_audience = server.pod("some-other-service")
    server.start()
    yield server
    server.stop()


def profile_with(base: Path, directory: Path, **settings) -> Path:
    directory.mkdir(parents=True)
    for path in base.iterdir():
        if path.is_file():
            (directory / path.name).write_bytes(path.read_bytes())
    conf = json.loads((directory / "configuration").read_text())
    (directory / "configuration").write_text(json.dumps({**conf, **settings}))
    return directory


@pytest.fixture
def required(profiles, tmp_path) -> Path:
    return profile_with(profiles["slurm-ssh-openssh"], tmp_path / "relay-required", relay="required")


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, command) of every descendant of pid."""
    parents: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
            parents.setdefault(int(rest[1]), []).append(int(entry))
            names[int(entry)] = name
    found, todo = [], list(parents.get(pid, []))
    while todo:
        child = todo.pop()
        found.append((child, names.get(child, "?")))
        todo += parents.get(child, [])
    return found


def ssh_masters(relay: RelayProcess) -> int:
    marker = str(relay.directory / "state").encode()
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if b"ControlMaster=yes" in cmdline and marker in cmdline:
                count += 1
    return count


def start(run_connector, relay, spec, profile, state_dir=None):
    uid, token = relay.pool.pop()
    run = run_connector(spec, profile, state_dir=state_dir, env=relay.env(token), uid=uid)
    run.uid = uid
    return run


def test_connectors_share_one_ssh_session_and_one_status_request_per_period(relay, required, run_connector):
    before, started = relay.metrics(), time.monotonic()
    runs = [start(run_connector, relay,
                  bash(f"for j in $(seq 1 6); do echo job{i} line $j; echo job{i} err $j >&2; sleep 1; done;"
                       f" exit {10 + i}"), required) for i in range(6)]
    for run in runs:
        run.wait_for_stderr("submitted HPC job", timeout=90)
    # in relay mode a connector starts no ssh; the relay holds one connection for all of them
    assert [c for run in runs for c in children(run.proc.pid)] == []
    assert ssh_masters(relay) == 1
    for i, run in enumerate(runs):
        assert run.wait(300) == 10 + i, run.log
        assert run.stdout == "".join(f"job{i} line {j}\n" for j in range(1, 7))
        assert [line for line in run.stderr_lines if line.startswith(f"job{i} err")] == \
            [f"job{i} err {j}\n" for j in range(1, 7)]
        assert "through the relay" in run.log
        assert _slurm_jobs_tagged(f"hpco-{run.uid}") == [run.job_id]
    elapsed, after = time.monotonic() - started, relay.metrics()
    asked = after["hpc_offload_relay_status_requests"] - before.get("hpc_offload_relay_status_requests", 0)
    period = 2.0  # the testbed profile's monitoring_period
    # one request per period for all six, plus a few sooner ones as jobs start and end
    # (coalesced); six connectors on their own would have asked 6 * elapsed / period times
    assert asked <= elapsed / period + 2 * len(runs) + 2, (asked, elapsed)
    assert asked < len(runs) * elapsed / period
    reads = after["hpc_offload_relay_read_commands"] - before.get("hpc_offload_relay_read_commands", 0)
    ticks = after["hpc_offload_relay_ticks"] - before.get("hpc_offload_relay_ticks", 0)
    assert 0 < reads <= ticks  # at most one read command a tick, for every job at once


@pytest.mark.parametrize("key", ["claims-valid", "relay-key-changed"])
def test_a_relay_killed_and_restarted_mid_run_loses_nothing_and_submits_nothing_twice(
        relay, required, run_connector, key):
    runs = [start(run_connector, relay,
                  bash(f"for j in $(seq 1 12); do echo r{i} line $j; sleep 1; done; exit {20 + i}"), required)
            for i in range(5)]
    deadline = time.monotonic() + 120
    # killed while one runs and the others run or wait (the testbed is shared: how many run
    # at once varies)
    while not any(any(" line 3" in t for _, t in run.lines) for run in runs):
        assert time.monotonic() < deadline, [run.log for run in runs]
        time.sleep(0.1)
    relay.kill()
    alive = [run.proc.poll() is None for run in runs]
    if key == "relay-key-changed":
        relay.new_claim_key()  # the jobs are then checked by their tag instead
    time.sleep(2)
    relay.start()
    for i, run in enumerate(runs):
        assert run.wait(300) == 20 + i, run.log
        assert run.stdout == "".join(f"r{i} line {j}\n" for j in range(1, 13)), run.log
        assert run.log.count("submitted HPC job") == 1, run.log
        assert _slurm_jobs_tagged(f"hpco-{run.uid}") == [run.job_id]
        if alive[i]:
            assert "registering HPC job" in run.log, (run.log, relay.log[-3000:])
    assert sum(alive) >= 4


def test_a_connector_restarted_while_the_relay_was_gone_reattaches_through_it(relay, required, run_connector,
                                                                             tmp_path):
    state = tmp_path / "state"
    first = start(run_connector, relay, bash("for j in $(seq 1 10); do echo line $j; sleep 1; done"), required,
                  state_dir=state)
    first.wait_for_stderr("running", timeout=240)
    first.proc.kill()
    first.wait()
    uid, token = first.uid, relay.directory / "tokens" / first.uid
    second = run_connector(first.spec, required, state_dir=state, env=relay.env(token), uid=uid)
    assert second.wait(120) == 0, second.log
    assert "reattaching" in second.log and "submitted" not in second.log
    printed = [t for t in (first.stdout + second.stdout).splitlines() if t.startswith("line")]
    assert printed == [f"line {j}" for j in range(1, 11)]


def test_a_pod_without_a_valid_token_is_refused_and_nothing_is_submitted(relay, required, run_connector, tmp_path):
    bad = tmp_path / "token"
    bad.write_text("not-a-token\n")
    uid = str(uuid.uuid4())
    run = run_connector(bash("echo never"), required, env=relay.env(bad), uid=uid)
    run.wait_for_stderr("relay refused", timeout=60)
    run.proc.send_signal(signal.SIGTERM)
    run.wait(60)
    assert _slurm_jobs_tagged(f"hpco-{uid}") == []
    assert "not-a-token" not in relay.log and "refused POST" in relay.log


def test_a_token_for_another_audience_is_refused(relay, required):
    _, token = relay.other_audience
    client = RelayClient(relay.url, None, str(relay.ca_file), str(token))
    with pytest.raises(RelayRefused, match="audience"):
        client.post("/v1/session", {"name": "p", "files": {}})
    assert token.read_text().strip() not in relay.log


def test_a_pod_claiming_another_pods_job_is_refused(relay, required, run_connector):
    owner = start(run_connector, relay, bash("echo owned; sleep 120"), required)
    owner.wait_for_stderr("submitted HPC job", timeout=90)
    uid, token = relay.pool.pop()
    client = RelayClient(relay.url, None, str(relay.ca_file), str(token))
    files = {name: b64(data) for name, data in profile_files(required).items()}
    sid = client.post("/v1/session", {"name": required.name, "files": files})["session"]
    job = owner.job_id
    with pytest.raises(BackendError, match="belongs to another pod"):
        client.post(f"/v1/session/{sid}/job/{job}/wait", {"stdout_offset": 0})
    with pytest.raises(BackendError, match="belongs to another pod"):
        client.post(f"/v1/session/{sid}/job/{job}/cancel", {})
    handle = {"job_id": job, "job_dir": f"/home/hpcuser/hpc-offload/hpco-{owner.uid}",
              "stdout": f"/home/hpcuser/hpc-offload/hpco-{owner.uid}/output.log"}
    with pytest.raises(BackendError, match="not this pod's"):
        client.post(f"/v1/session/{sid}/attach", {"handle": handle, "claim": "0" * 64})
    foreign = {"spec": {"command": ["true"], "runtime": "none",
                        "pod": {"namespace": NAMESPACE, "name": "t", "uid": owner.uid}},
               "job_dir": f"/home/hpcuser/hpc-offload/hpco-{owner.uid}", "env": {}, "run": 0}
    with pytest.raises(BackendError, match="another pod"):
        client.post(f"/v1/session/{sid}/submit", {"request": foreign})
    assert _slurm_in_queue(job)  # untouched
    assert f"for pod {NAMESPACE}/t ({uid})" in relay.log
    owner.proc.send_signal(signal.SIGTERM)
    assert owner.wait(60) == 128 + signal.SIGTERM
    assert not _slurm_in_queue(job)


def test_a_profile_the_relay_cannot_use_is_a_bad_profile(relay, required, run_connector):
    (required / "ssh-privatekey").unlink()
    run = start(run_connector, relay, bash("echo never"), required)
    assert run.wait(60) == 78, run.log
    assert run.termination["reason"] == "InvalidProfile"
    assert "ssh-privatekey" in run.termination["message"]


def test_preferred_falls_back_to_the_direct_path_when_the_relay_is_down(relay, profiles, run_connector, tmp_path):
    preferred = profile_with(profiles["slurm-ssh-openssh"], tmp_path / "preferred", relay="preferred")
    uid, token = relay.pool.pop()
    env = {**relay.env(token), "HPC_OFFLOAD_RELAY_URL": "https://127.0.0.1:1"}  # nothing listens there
    run = run_connector(bash("echo direct; exit 4"), preferred, env=env, uid=uid)
    assert run.wait(120) == 4, run.log
    assert "directly until the relay answers" in run.log and run.stdout == "direct\n"


def test_an_orphaned_job_is_cancelled_after_the_orphan_timeout(relay, profiles, run_connector, tmp_path):
    short = profile_with(profiles["slurm-ssh-openssh"], tmp_path / "orphans", relay="required",
                         orphan_timeout="5s")
    run = start(run_connector, relay, bash("echo started; sleep 300"), short)
    run.wait_for_stderr("submitted HPC job", timeout=90)
    time.sleep(1)
    job = run.job_id
    run.proc.kill()  # SIGKILL: no cancel from the connector
    killed = time.monotonic()
    while _slurm_in_queue(job):
        assert time.monotonic() - killed < 30, relay.log
        time.sleep(0.5)
    assert time.monotonic() - killed >= 4  # not before the timeout
    assert f"HPC job {job}" in relay.log and "orphan_timeout" in relay.log


def _new_key(directory: Path, name: str) -> tuple[str, str]:
    import subprocess

    path = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)], check=True)
    return path.read_text(), Path(f"{path}.pub").read_text().strip()


@pytest.mark.exclusive
def test_a_rotated_secret_moves_the_job_to_a_session_with_the_new_key(relay, required, run_connector, tmp_path):
    """The old key is revoked and every SSH connection broken while the job runs: the job was
    moved to a session opened with the new key, and is followed to its end."""
    from testbed import api as testbed

    old_private, old_public = _new_key(tmp_path, "key-old")
    new_private, new_public = _new_key(tmp_path, "key-new")
    testbed.authorize_key(old_public)
    try:
        (required / "ssh-privatekey").write_text(old_private)
        run = start(run_connector, relay, bash("for i in $(seq 1 40); do echo long $i; sleep 1; done"), required)
        run.wait_for_stderr("running", timeout=240)
        testbed.authorize_key(new_public)
        (required / "ssh-privatekey").write_text(new_private)  # as the kubelet updates a mounted Secret
        run.wait_for_stderr("the profile changed", timeout=60)
        testbed.revoke_key(old_public)
        testbed.break_ssh()  # only the new key works now
        assert run.wait(240) == 0, (run.log, relay.log[-3000:])
        assert [t for t in run.stdout.splitlines() if t.startswith("long")] == [f"long {i}" for i in range(1, 41)]
        assert "reconnected to " in run.log
        assert _slurm_jobs_tagged(f"hpco-{run.uid}") == [run.job_id]
    finally:
        testbed.revoke_key(old_public)
        testbed.revoke_key(new_public)


@pytest.mark.exclusive
def test_sshd_restarted_under_the_relay_loses_nothing_and_submits_nothing_twice(relay, required, run_connector):
    """sshd and every SSH session of the testbed are killed while three jobs run, then sshd
    comes back: the relay reconnects and each connector follows its own job to its end."""
    from testbed import api as testbed

    runs = [start(run_connector, relay,
                  bash(f"for j in $(seq 1 20); do echo s{i} line $j; sleep 1; done; exit {30 + i}"), required)
            for i in range(3)]
    deadline = time.monotonic() + 120
    while not all(any(" line 2" in t for _, t in run.lines) for run in runs):  # all three run
        assert time.monotonic() < deadline, [run.log for run in runs]
        time.sleep(0.1)
    seen = len(relay.log)
    try:
        assert testbed.break_ssh(listener_too=True) >= 2  # the listener and the relay's session
        time.sleep(3)
    finally:
        testbed.ensure_up()  # sshd again, whatever happened
    for i, run in enumerate(runs):
        assert run.wait(240) == 30 + i, (run.log, relay.log[seen:][-3000:])
        assert run.stdout == "".join(f"s{i} line {j}\n" for j in range(1, 21)), run.log
        assert run.log.count("submitted HPC job") == 1, run.log
        assert _slurm_jobs_tagged(f"hpco-{run.uid}") == [run.job_id]
    assert "contact with the HPC side restored" in relay.log[seen:], relay.log[seen:][-3000:]
