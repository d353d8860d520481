"""The lean follower (follower/, `hpc-offload-follow`) with a real relay process and real
connectors against the testbed's SLURM: in relay mode the connector's own process becomes the
follower while its job runs (no Python left in it), and hands the job back for the end and for
a signal, which it turns into a cancel at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from connector import record
from connector.follower import PROGRAM
from connector.outcome import interrupted
from tests import test_relay
from tests.contract.targets import _slurm_in_queue
from tests.test_relay import bash, profile_with, start

relay = test_relay.relay  # the same fixtures: a real relay process, a relay: required profile
required = test_relay.required

pytestmark = [pytest.mark.slurm]
REPO = Path(__file__).resolve().parent.parent
FOLLOWER = Path(sys.executable).parent / PROGRAM
GO = Path(os.environ.get("HPC_OFFLOAD_GO", "/usr/local/go/bin/go"))


@pytest.fixture(scope="session")
def follower() -> Path:
    """The follower beside this python, as scripts/lib.sh builds it (here too, when missing)."""
    if not FOLLOWER.exists():
        if not GO.exists():
            pytest.fail(f"no {FOLLOWER} and no Go at {GO} to build it (scripts/lib.sh builds it)")
        subprocess.run([str(GO), "build", "-trimpath", "-o", str(FOLLOWER), "."], cwd=REPO / "follower",
                       env={**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOPROXY": "off"},
                       check=True)
    return FOLLOWER


def program(pid: int) -> str:
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return ""


def becomes(pid: int, name: str, timeout: float = 60) -> None:
    """Returns within ~2 ms of the exec: a signal sent then lands while the new program starts."""
    deadline = time.monotonic() + timeout
    while program(pid) != name:
        assert time.monotonic() < deadline, f"process {pid} is still {program(pid)!r}, not {name!r}"
        time.sleep(0.002)


def test_go_unit_tests(follower):
    """The follower's own tests (offsets saved before output, partial lines, stderr tail)."""
    proc = subprocess.run([str(GO), "test", "./..."], cwd=REPO / "follower", capture_output=True, text=True,
                          env={**os.environ, "GOTOOLCHAIN": "local", "GOPROXY": "off"})
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_follower_takes_over_a_running_job_and_hands_its_end_back(relay, required, run_connector, follower):
    run = start(run_connector, relay, bash(
        "for i in $(seq 1 14); do echo out $i; echo err $i >&2; sleep 1; done; printf 'no newline'; exit 3"),
        required)
    run.wait_for_stderr("running", timeout=240)
    becomes(run.proc.pid, PROGRAM)
    maps = Path(f"/proc/{run.proc.pid}/maps").read_text()
    assert "python" not in maps and "libssl" not in maps  # the connector's process holds neither now
    assert run.wait(240) == 3, run.log
    assert run.stdout == "".join(f"out {i}\n" for i in range(1, 15)) + "no newline\n"
    assert [line for line in run.stderr_lines if line.startswith("err ")] == [f"err {i}\n" for i in range(1, 15)]
    assert "err 14" in run.termination["stderrTail"]  # lines the follower printed reach the end report
    assert run.termination["exitCode"] == 3
    job = run.job_id
    assert [line for line in run.stderr_lines if f"HPC job {job} running" in line] != []
    assert len([line for line in run.stderr_lines if "running" in line and "hpc-connector" in line]) == 1
    assert '"state": "RUNNING"' in run.log or '"state":"RUNNING"' in run.log  # its record
    # 14 s: the follower checked the mounted profile (same fingerprint as the connector's) and
    # never handed the job back before its end
    assert "handing HPC job" not in run.log, run.log


def test_a_signal_to_the_follower_cancels_the_job_and_the_pod_ends_stopped(relay, required, run_connector,
                                                                           follower):
    run = start(run_connector, relay, bash("echo started; printf partial; sleep 300"), required)
    run.wait_for_stderr("running", timeout=240)
    job = run.job_id
    becomes(run.proc.pid, PROGRAM)
    # A signal within the Go runtime's first milliseconds, before its handler exists, still ends
    # the process (docs/relay.md, known gap); this test signals the running follower.
    time.sleep(1.0)
    run.proc.send_signal(signal.SIGTERM)
    seen = set()
    while run.proc.poll() is None:  # what the pod's process is until it ends
        seen.add(program(run.proc.pid))
        time.sleep(0.02)
    assert run.wait(120) == 128 + signal.SIGTERM, run.log
    assert not _slurm_in_queue(job)
    assert not [name for name in seen if name.startswith("python")], seen  # no interpreter started again
    assert "handing HPC job" not in run.log
    # the end report the connector itself would have written
    ended = dict(run.termination)
    assert "CANCELLED" in ended.pop("stderrTail")  # the job's last stderr line (slurmstepd's)
    assert ended == json.loads(interrupted(signal.SIGTERM, job, cancelled=True).termination_message())
    assert f"exit 143 (PodStopped): SIGTERM received: HPC job {job} cancelled" in run.log
    assert record.last(run.log)["state"] == "CANCELLED" and record.last(run.log)["exit"] == 143
    assert run.stdout == "started\npartial\n"  # its last, unterminated line too


def test_lean_follower_false_keeps_the_connector_following(relay, profiles, run_connector, tmp_path, follower):
    python = profile_with(profiles["slurm-ssh-openssh"], tmp_path / "python", relay="required",
                          lean_follower="false")
    run = start(run_connector, relay, bash("echo a; sleep 4; echo b"), python)
    run.wait_for_stderr("running", timeout=240)
    time.sleep(1)
    assert program(run.proc.pid).startswith("python")
    assert run.wait(240) == 0, run.log
    assert run.stdout == "a\nb\n"
