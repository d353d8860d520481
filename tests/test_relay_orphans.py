"""No orphan burns allocation, in both modes: a rendered job carries a dead man's switch (its
heartbeat file, refreshed by the connector or by the relay while its pod follows it) and ends
itself with exit 208 when nobody refreshed it for the profile's `orphan_timeout`. Real
connectors, the real relay and SLURM's own view of the job.
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid

import pytest

from tests.contract.targets import _slurm_in_queue
from tests.test_relay import Relay, bash, profile_with

pytestmark = [pytest.mark.slurm]
TIMEOUT = "8s"  # the switch checks every quarter of it


def slurm_end(job_id: str) -> tuple[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    state = re.search(r"JobState=(\S+)", out)
    code = re.search(r"ExitCode=(\S+)", out)
    return (state.group(1) if state else "?", code.group(1) if code else "?")


@pytest.fixture(scope="module")
def relay(tmp_path_factory, testbed_info):
    server = Relay(tmp_path_factory.mktemp("relay-orphans"))
    server.pool = [server.pod() for _ in range(6)]
    server.start()
    yield server
    server.stop()


def test_direct_a_killed_connectors_job_ends_itself_after_the_orphan_timeout(profiles, run_connector, tmp_path):
    direct = profile_with(profiles["slurm-ssh-openssh"], tmp_path / "direct", relay="off", orphan_timeout=TIMEOUT)
    run = run_connector(bash("echo started; sleep 300"), direct, uid=str(uuid.uuid4()))
    run.wait_for_stderr("running", timeout=240)
    job = run.job_id
    run.proc.kill()  # SIGKILL: no cancel, and nobody refreshes the heartbeat any more
    killed = time.monotonic()
    while _slurm_in_queue(job):
        assert time.monotonic() - killed < 60, slurm_end(job)
        time.sleep(0.5)
    assert slurm_end(job) == ("FAILED", "208:0")


def test_direct_a_followed_job_outlives_the_orphan_timeout(profiles, run_connector, tmp_path):
    direct = profile_with(profiles["slurm-ssh-openssh"], tmp_path / "direct", relay="off", orphan_timeout=TIMEOUT)
    run = run_connector(bash("for i in $(seq 1 20); do echo beat $i; sleep 1; done"), direct,
                        uid=str(uuid.uuid4()))
    assert run.wait(300) == 0, run.log
    assert run.stdout.count("beat") == 20


def test_relay_a_followed_job_outlives_the_orphan_timeout(relay, profiles, run_connector, tmp_path):
    """The relay refreshes every job's heartbeat in its one read command per period."""
    relayed = profile_with(profiles["slurm-ssh-openssh"], tmp_path / "relayed", relay="required",
                           orphan_timeout=TIMEOUT)
    uid, token = relay.pool.pop()
    run = run_connector(bash("for i in $(seq 1 20); do echo beat $i; sleep 1; done"), relayed,
                        env=relay.env(token), uid=uid)
    assert run.wait(300) == 0, run.log
    assert run.stdout.count("beat") == 20 and "through the relay" in run.log
