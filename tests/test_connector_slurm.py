"""The connector against the real SLURM testbed, over SSH and locally. No fake sbatch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import paramiko
import pytest

pytestmark = [pytest.mark.slurm]

BACKENDS = ["slurm-ssh", "slurm-ssh-openssh", "slurm-local"]  # paramiko, OpenSSH client, local
SSH_BACKENDS = ["slurm-ssh", "slurm-ssh-openssh"]
PY = "python3"


def ch_spec(code: str, **extra) -> dict:
    """Run python code in the testbed's charliecloud image (the profile names it)."""
    return {"command": [PY, "-u", "-c", code], "image": "python:3.11-slim", **extra}


def bash_spec(script: str, **extra) -> dict:
    return {"command": ["bash", "-c", script], "runtime": "none", **extra}


def job_state(job_id: str) -> str | None:
    from testbed import api

    info = api.job_info(int(job_id))
    return info["JobState"] if info else None


def queued(job_id: str) -> bool:
    from testbed import api

    return int(job_id) in api.queued_job_ids()


def jobs_named(name: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "--states=all", f"--name={name}", "-o", "%i"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


@pytest.mark.parametrize("backend", BACKENDS)
def test_output_streams_while_the_job_runs(backend, profiles, run_connector):
    run = run_connector(ch_spec("import time\nfor i in range(10):\n    print('tick', i); time.sleep(1)"),
                        profiles[backend])
    assert run.wait() == 0, run.log
    ended = time.monotonic()
    ticks = [(at, text) for at, text in run.lines if text.startswith("tick")]
    assert [text for _, text in ticks] == [f"tick {i}\n" for i in range(10)]
    # the first line reached stdout long before the job ended: streamed, not dumped at the end
    assert ended - ticks[0][0] > 5, run.log
    assert run.termination["exitCode"] == 0
    assert job_state(run.job_id) == "COMPLETED"


@pytest.mark.parametrize("backend", BACKENDS)
def test_exit_code_is_mirrored(backend, profiles, run_connector):
    run = run_connector(bash_spec("echo failing; exit 7"), profiles[backend])
    assert run.wait() == 7, run.log
    assert run.termination["exitCode"] == 7
    assert run.termination["state"] == "FAILED"
    assert "exit code 7" in run.termination["message"]
    assert "failing" in run.stdout


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_job_killed_by_a_signal_gives_128_plus_n(backend, profiles, run_connector):
    # a verbatim script (the paper's mode) killed by SIGKILL: SLURM records ExitCode=0:9
    run = run_connector({"script": "#!/bin/bash\necho before\nkill -9 $$\n"}, profiles[backend])
    assert run.wait() == 128 + 9, run.log
    assert run.termination["reason"] == "HPCSignal"
    assert "signal 9" in run.termination["message"]


def test_time_limit_exceeded_gives_the_timeout_code(profiles, run_connector):
    """Both backends at once: SLURM notices a time limit only every ~30 s."""
    runs = [run_connector(bash_spec("sleep 600", slurm={"time": "1"}, poll_interval=2), profiles[b])
            for b in ("slurm-ssh", "slurm-local")]  # two jobs fit the testbed's two CPUs
    for run in runs:
        assert run.wait(timeout=240) == 201, run.log
        assert run.termination["state"] == "TIMEOUT"
        assert run.termination["reason"] == "HPCTimeLimit"
        assert job_state(run.job_id) == "TIMEOUT"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("when", ["pending", "running"])
def test_sigint_cancels_the_job(backend, when, profiles, run_connector):
    extra = {"slurm": {"extra_args": ["--begin=now+3600"]}} if when == "pending" else {}
    run = run_connector(bash_spec("echo started; sleep 300", **extra), profiles[backend])
    run.wait_for_stderr("pending" if when == "pending" else "running")
    job_id = run.job_id
    assert queued(job_id)
    run.proc.send_signal(signal.SIGINT)
    assert run.wait(timeout=60) == 130, run.log
    assert not queued(job_id)
    assert job_state(job_id) == "CANCELLED"
    assert run.termination["reason"] == "PodStopped"


@pytest.mark.parametrize("backend", SSH_BACKENDS)
def test_sigterm_cancels_and_exits_143(backend, profiles, run_connector):
    run = run_connector(bash_spec("sleep 300"), profiles[backend])
    run.wait_for_stderr("running")
    run.proc.send_signal(signal.SIGTERM)
    assert run.wait(timeout=60) == 143, run.log
    assert not queued(run.job_id)
    assert job_state(run.job_id) == "CANCELLED"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_killed_connector_reattaches_without_duplicates(backend, profiles, run_connector, tmp_path):
    uid = str(uuid.uuid4())
    state = tmp_path / "state"
    spec = bash_spec("for i in $(seq 1 12); do echo line $i; sleep 0.5; done")
    first = run_connector(spec, profiles[backend], state_dir=state, uid=uid)
    deadline = time.monotonic() + 60
    while not any(text.startswith("line 3") for _, text in first.lines):
        assert time.monotonic() < deadline, first.log
        time.sleep(0.05)
    first.proc.kill()
    first.wait()
    second = run_connector(spec, profiles[backend], state_dir=state, uid=uid)
    assert second.wait() == 0, second.log
    assert "reattaching" in second.log
    assert "submitted" not in second.log
    printed = [text for text in (first.stdout + second.stdout).splitlines() if text.startswith("line")]
    assert printed == [f"line {i}" for i in range(1, 13)]
    assert jobs_named(f"hpco-{uid}") == [first.job_id]


def test_reattach_by_name_when_the_state_is_lost(profiles, run_connector, tmp_path):
    uid = str(uuid.uuid4())
    spec = bash_spec("sleep 3; echo done")
    first = run_connector(spec, profiles["slurm-ssh"], state_dir=tmp_path / "a", uid=uid)
    first.wait_for_stderr("submitted")
    first.proc.kill()
    second = run_connector(spec, profiles["slurm-ssh"], state_dir=tmp_path / "b", uid=uid)
    assert second.wait() == 0, second.log
    assert "found by name" in second.log
    assert jobs_named(f"hpco-{uid}") == [first.job_id]


@pytest.mark.parametrize("backend", SSH_BACKENDS)
def test_survives_sshd_down_for_20_seconds(backend, testbed_info, profiles, run_connector):
    from testbed import api

    run = run_connector(bash_spec("for i in $(seq 1 40); do echo beat $i; sleep 1; done"),
                        profiles[backend])
    run.wait_for_stderr("running")
    assert api.break_ssh(listener_too=True) >= 2  # the listener and the connector's session
    time.sleep(20)
    api.ensure_up()
    assert run.wait(timeout=120) == 0, run.log
    assert "lost contact" in run.log and "restored" in run.log and "reconnected to " in run.log
    beats = [text for text in run.stdout.splitlines() if text.startswith("beat")]
    assert beats == [f"beat {i}" for i in range(1, 41)]


@pytest.mark.parametrize("backend", SSH_BACKENDS)
def test_a_wrong_host_key_is_refused_before_anything_is_submitted(backend, profiles, run_connector, tmp_path):
    profile = tmp_path / "profile"
    profile.mkdir()
    for item in profiles[backend].iterdir():
        (profile / item.name).write_bytes(item.read_bytes())
    impostor = paramiko.Ed25519Key.from_private_key_file(str(profile / "ssh-privatekey"))
    (profile / "known_hosts").write_text(f"[127.0.0.1]:2222 ssh-ed25519 {impostor.get_base64()}\n")
    uid = str(uuid.uuid4())
    run = run_connector(bash_spec("echo should never run"), profile, uid=uid)
    assert run.wait() == 77, run.log
    assert "does not match known_hosts" in run.log
    assert run.termination["reason"] == "HostKeyRejected"
    assert jobs_named(f"hpco-{uid}") == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_env_values_arrive_byte_identical_and_secrets_stay_out(backend, profiles, run_connector):
    tricky = "quote' double\" $(touch /tmp/pwned) `id` $HOME\nnew line\ttab ünïcødé ✓ \\ end"
    secret = "s3cr3t-" + uuid.uuid4().hex
    code = ("import os,sys\n"
            "sys.stdout.write(os.environ['TRICKY'].encode().hex() + '\\n')\n"
            "sys.stdout.write(str(os.environ['API_TOKEN'] == os.environ['EXPECTED_TOKEN']) + '\\n')")
    spec = ch_spec(code, env={"TRICKY": tricky}, env_passthrough=["API_TOKEN", "EXPECTED_TOKEN"])
    run = run_connector(spec, profiles[backend], env={"API_TOKEN": secret, "EXPECTED_TOKEN": secret})
    assert run.wait() == 0, run.log
    lines = run.stdout.splitlines()
    assert bytes.fromhex(lines[0]).decode() == tricky
    assert lines[1] == "True"
    job_dir = Path(subprocess.run(["scontrol", "show", "job", run.job_id], capture_output=True,
                                  text=True).stdout.split("WorkDir=")[1].split()[0])
    script = (job_dir / "job.sh").read_text()
    assert secret not in script and "new line" not in script and tricky not in script
    assert secret not in run.log and secret not in run.termination_log.read_text()
    assert not (job_dir / "job.env").exists(), "the env file is removed when the job ends"
    assert not Path("/tmp/pwned").exists()


def test_charliecloud_runs_inside_the_testbed_image(profiles, run_connector):
    # the marker file exists only inside the image, not on the host
    run = run_connector(ch_spec("import os; print(os.path.exists('/.hpc-offload-rootfs-complete'))"),
                        profiles["slurm-ssh"])
    assert run.wait() == 0, run.log
    assert run.stdout.strip() == "True"
    assert not Path("/.hpc-offload-rootfs-complete").exists()


def test_paper_compatible_simulate_with_slurm_local(testbed_info, tmp_path):
    script = "#!/bin/bash\necho paper-mode-output\nexit 3\n"
    proc = subprocess.run(
        ["python3", "-m", "connector.cli", "--backend", "slurm-local", "--backend-conf",
         json.dumps({"workdir": str(tmp_path)}), "simulate", "--job-config",
         json.dumps({"script": script}), "--monitoring-period", "1",
         "--print-logs"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "HPC_OFFLOAD_TERMINATION_LOG": str(tmp_path / "term")},
    )
    assert proc.returncode == 3, proc.stderr
    assert "paper-mode-output" in proc.stdout


@pytest.mark.parametrize("backend", SSH_BACKENDS)
def test_stage_in_and_out(backend, profiles, run_connector, tmp_path):
    """Pod files reach the job directory before submission; results come back after the end."""
    data = tmp_path / "in"
    (data / "sub").mkdir(parents=True)
    (data / "numbers.txt").write_text("1\n2\n3\n")
    (data / "sub" / "more.txt").write_text("4\n")
    results = tmp_path / "out"
    spec = bash_spec("mkdir -p results && awk '{s+=$1} END {print s}' input/numbers.txt input/sub/more.txt"
                     " > results/sum.txt",
                     stage_in=[{"src": str(data), "dst": "input"}],
                     stage_out=[{"src": str(results), "dst": "results"}])
    run = run_connector(spec, profiles[backend])
    assert run.wait() == 0, run.log
    assert (results / "sum.txt").read_text().strip() == "10"
    assert "staged in" in run.log and "staged out" in run.log
