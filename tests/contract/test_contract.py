"""The backend contract, run by every built-in backend against its real server (and by a site
against its own: docs/backends.md). Each test runs the real `hpc-connector run` process and
checks the outcome in the manager's own queue, not in what the connector says."""

from __future__ import annotations

import signal
import time
import uuid

import pytest

from tests.contract.targets import ONE_PER_MANAGER, Target, copy_profile

pytestmark = [pytest.mark.slurm]


def bash(script: str, **extra) -> dict:
    return {"command": ["bash", "-c", script], "runtime": "none", **extra}


def test_output_is_streamed_while_the_job_runs(target: Target, run_connector):
    run = run_connector(bash("for i in $(seq 0 7); do echo tick $i; echo oops $i >&2; sleep 1; done"),
                        target.profile_dir)
    assert run.wait() == 0, run.log
    ended = time.monotonic()
    ticks = [(at, text) for at, text in run.lines if text.startswith("tick")]
    assert [text for _, text in ticks] == [f"tick {i}\n" for i in range(8)]
    assert ended - ticks[0][0] > 3, run.log  # the first line came long before the end
    assert [line for line in run.stderr_lines if line.startswith("oops")] == [f"oops {i}\n" for i in range(8)]
    assert run.termination["exitCode"] == 0


def test_an_exit_code_is_mirrored(target: Target, run_connector):
    run = run_connector(bash("echo failing; exit 7"), target.profile_dir)
    assert run.wait() == 7, run.log
    assert run.termination["exitCode"] == 7 and "exit code 7" in run.termination["message"]
    assert "failing\n" in run.stdout


def test_a_signal_gives_128_plus_n(target: Target, run_connector):
    run = run_connector({"script": "#!/bin/bash\necho before\nkill -9 $$\n"}, target.profile_dir)
    assert run.wait() == 128 + 9, run.log
    assert run.termination["reason"] == "HPCSignal"


@pytest.mark.parametrize("name", ONE_PER_MANAGER)
def test_the_time_limit_gives_the_timeout_code(name: str, targets, run_connector):
    """Once per manager (a limit is the manager's, not the transport's; SLURM's takes ~70 s)."""
    target = targets[name]
    run = run_connector(bash("sleep 600", **target.time_limit), target.profile_dir)
    assert run.wait(timeout=240) == 201, run.log
    assert run.termination["reason"] == "HPCTimeLimit"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_connector_cancels_the_job_and_waits_for_the_manager(target: Target, run_connector,
                                                                            signum):
    run = run_connector(bash("echo started; sleep 300"), target.profile_dir)
    run.wait_for_stderr("running")
    job_id = run.job_id
    assert target.in_queue(job_id)
    run.proc.send_signal(signum)
    assert run.wait(timeout=90) == 128 + signum, run.log
    assert not target.in_queue(job_id)  # the manager, not the connector, says it is gone
    assert run.termination["reason"] == "PodStopped"


def test_sigkill_then_restart_reattaches_to_the_one_job_and_prints_no_line_twice(target: Target,
                                                                               run_connector, tmp_path):
    uid = str(uuid.uuid4())
    state = tmp_path / "state"
    spec = bash("for i in $(seq 1 12); do echo line $i; sleep 0.5; done")
    first = run_connector(spec, target.profile_dir, state_dir=state, uid=uid)
    deadline = time.monotonic() + 90
    while not any(text.startswith("line 3") for _, text in first.lines):
        assert time.monotonic() < deadline, first.log
        time.sleep(0.05)
    first.proc.kill()
    first.wait()
    second = run_connector(spec, target.profile_dir, state_dir=state, uid=uid)
    assert second.wait() == 0, second.log
    assert "reattaching" in second.log and "submitted" not in second.log
    printed = [text for text in (first.stdout + second.stdout).splitlines() if text.startswith("line")]
    assert printed == [f"line {i}" for i in range(1, 13)]
    assert target.jobs_tagged(f"hpco-{uid}") == [first.job_id]


def test_a_lost_state_file_still_finds_the_job_by_its_tag(target: Target, run_connector, tmp_path):
    uid = str(uuid.uuid4())
    spec = bash("sleep 3; echo done")
    first = run_connector(spec, target.profile_dir, state_dir=tmp_path / "a", uid=uid)
    first.wait_for_stderr("submitted")
    first.proc.kill()
    second = run_connector(spec, target.profile_dir, state_dir=tmp_path / "b", uid=uid)
    assert second.wait() == 0, second.log
    assert "found by its tag" in second.log
    assert target.jobs_tagged(f"hpco-{uid}") == [first.job_id]


def test_a_wrong_credential_is_refused_clearly_and_nothing_is_submitted(target: Target, run_connector,
                                                                       tmp_path):
    profile = copy_profile(target.profile_dir, tmp_path / "profile")
    target.break_credential(profile)
    uid = str(uuid.uuid4())
    run = run_connector(bash("echo never"), profile, uid=uid)
    deadline = time.monotonic() + 60
    while run.proc.poll() is None and time.monotonic() < deadline:
        if any(w in run.log for w in ("failed", "refused", "denied", "cannot", "not accepted")):
            break
        time.sleep(0.2)
    run.proc.send_signal(signal.SIGTERM)
    run.wait(timeout=60)
    assert target.jobs_tagged(f"hpco-{uid}") == []
    said = run.log.lower()
    assert any(w in said for w in ("authentication", "refused", "denied", "permission", "cannot")), run.log
    secrets = [p.read_text() for p in profile.iterdir() if p.name in ("ssh-privatekey", "token", "proxy")]
    assert not any(secret.strip() and secret.strip()[:40] in run.log for secret in secrets)
