"""The SLURM testbed, for real: daemons, SSH with strict host keys, slurmrestd, ch-run.

Needs root (it installs packages and starts daemons); `pytest -m slurm`.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import stat
import subprocess
import time

import paramiko
import pytest
import requests
import yaml
from click.testing import CliRunner

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(os.geteuid() != 0, reason="the testbed needs root"),
]

FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
         "PREEMPTED", "BOOT_FAIL", "DEADLINE"}


@pytest.fixture(scope="module")
def tb():
    from testbed import api

    return api.ensure_up()


def _ssh(tb, key: paramiko.PKey | None = None) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.load_host_keys(str(tb.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(tb.ssh_host, port=tb.ssh_port, username=tb.ssh_user,
                   pkey=key or paramiko.Ed25519Key.from_private_key_file(str(tb.key_path)),
                   allow_agent=False, look_for_keys=False, timeout=10)
    return client


def _exec(client: paramiko.SSHClient, command: str) -> tuple[int, str, str]:
    _, out, err = client.exec_command(command, timeout=30)
    rc = out.channel.recv_exit_status()
    return rc, out.read().decode(), err.read().decode()


def _wait_final(job_id: int, timeout: float = 60) -> dict[str, str]:
    from testbed import api

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = api.job_info(job_id)
        assert info is not None, f"job {job_id} unknown to SLURM"
        if info["JobState"] in FINAL:
            return info
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not finished after {timeout} s: {info['JobState']}")


def test_up_is_idempotent(tb):
    from testbed import api

    before = {s.name: s.pid for s in api.status()}
    again = api.ensure_up()
    assert again == tb
    after = api.status()
    assert all(s.running for s in after), after
    # nothing was restarted (munged may be someone else's: pid None on both sides)
    assert {s.name: s.pid for s in after} == before


def test_status_cli_reports_all_running(tb):
    from testbed.cli import testbed

    result = CliRunner().invoke(testbed, ["status", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["up"] is True
    names = {d["name"] for d in data["daemons"]}
    assert {"munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd", "slurmrestd",
            "sshd"} <= names


def test_sbatch_over_ssh_exit_code(tb):
    from testbed import api

    with _ssh(tb) as client:
        rc, out, err = _exec(client, f"cd {shlex.quote(str(tb.workdir))} && "
                                     "sbatch --parsable --wrap 'echo hi; exit 7'")
    assert rc == 0, err
    job_id = int(out.strip().split(";")[0])
    info = _wait_final(job_id)
    assert info["JobState"] == "FAILED"
    assert info["ExitCode"] == "7:0"
    assert info["UserId"].startswith("hpcuser(")
    assert job_id not in api.queued_job_ids()
    assert (tb.workdir / f"slurm-{job_id}.out").read_text() == "hi\n"


def test_queued_job_ids_and_unknown_job(tb):
    from testbed import api

    proc = subprocess.run(["sbatch", "--parsable", "-p", tb.partition,
                           f"--chdir={tb.workdir}", "--uid=hpcuser", "--wrap", "sleep 30"],
                          capture_output=True, text=True, check=True)
    job_id = int(proc.stdout.strip().split(";")[0])
    try:
        assert job_id in api.queued_job_ids()
    finally:
        subprocess.run(["scancel", str(job_id)], check=True)
    info = _wait_final(job_id, timeout=20)
    assert info["JobState"] == "CANCELLED"
    assert job_id not in api.queued_job_ids()
    assert api.job_info(987654321) is None


def test_ch_run_inside_a_job(tb):
    out_name = f"chrun-{os.getpid()}-{time.time_ns()}.out"
    wrap = f"ch-run {shlex.quote(str(tb.image_dir))} -- python3 -c 'print(6*7)'"
    with _ssh(tb) as client:
        rc, out, err = _exec(client, f"cd {shlex.quote(str(tb.workdir))} && sbatch "
                                     f"--parsable -o {out_name} --wrap {shlex.quote(wrap)}")
        assert rc == 0, err
        info = _wait_final(int(out.strip().split(";")[0]))
        with client.open_sftp() as sftp, sftp.open(f"{tb.workdir}/{out_name}") as f:
            output = f.read().decode()
    assert info["JobState"] == "COMPLETED", output
    assert output.strip() == "42"


def test_rest_diag_with_token(tb):
    from testbed import api

    token = api.rest_token(lifespan=600)
    url = f"{tb.rest_url}/slurm/{tb.rest_api_version}/diag"
    ok = requests.get(url, headers={"X-SLURM-USER-NAME": tb.ssh_user,
                                    "X-SLURM-USER-TOKEN": token}, timeout=10)
    assert ok.status_code == 200, ok.text
    assert "statistics" in ok.json()
    bad = requests.get(url, headers={"X-SLURM-USER-NAME": tb.ssh_user,
                                     "X-SLURM-USER-TOKEN": token[:-4] + "AAAA"}, timeout=10)
    assert bad.status_code != 200


def test_authorize_and_revoke_key(tb, tmp_path):
    from testbed import api

    key_file = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key_file)],
                   check=True)
    pub = (tmp_path / "k.pub").read_text().strip()
    key = paramiko.Ed25519Key.from_private_key_file(str(key_file))
    assert api.authorize_key(pub) is True
    assert api.authorize_key(pub) is False  # already there
    with _ssh(tb, key) as client:
        assert _exec(client, "whoami")[1].strip() == "hpcuser"
    assert api.revoke_key(pub) is True
    with pytest.raises(paramiko.AuthenticationException):
        _ssh(tb, key)


def test_profile_slurm_ssh_is_configmap_and_secret_that_work(tb):
    from testbed.cli import testbed
    from testbed.listen import default_host

    result = CliRunner().invoke(testbed, ["-q", "profile", "slurm-ssh", "--name", "hpc"])
    assert result.exit_code == 0, result.output
    host = default_host()[0]  # the local cluster's bridge when it exists (issue 14 item 1)
    assert f"profile host {host}" in result.stderr
    cm, secret = list(yaml.safe_load_all(result.stdout))
    assert (cm["kind"], cm["metadata"]["name"]) == ("ConfigMap", "hpc")
    assert (secret["kind"], secret["type"], secret["metadata"]["name"]) == \
        ("Secret", "Opaque", "hpc")
    assert cm["data"]["name"] == "slurm-ssh"
    assert cm["data"]["monitoring_period"] == "2"
    conf = json.loads(cm["data"]["configuration"])
    assert conf == {"host": host, "port": 2222, "user": "hpcuser",
                    "workdir": str(tb.workdir), "partition": "debug",
                    "runtime": "charliecloud", "image": str(tb.image_dir)}
    # the credentials are enough to log in with strict host key checking
    key = paramiko.Ed25519Key.from_private_key(io.StringIO(secret["stringData"]["ssh-privatekey"]))
    hosts = paramiko.HostKeys()
    for line in secret["stringData"]["known_hosts"].splitlines():
        entry = paramiko.hostkeys.HostKeyEntry.from_line(line)
        hosts.add(entry.hostnames[0], entry.key.get_name(), entry.key)
    client = paramiko.SSHClient()
    client._host_keys = hosts
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(conf["host"], port=conf["port"], username=conf["user"], pkey=key,
                   allow_agent=False, look_for_keys=False, timeout=10)
    with client:
        assert _exec(client, "test -d " + conf["workdir"] + " && echo ok")[1].strip() == "ok"


def test_profile_slurm_rest_token_works(tb):
    from testbed.cli import testbed

    result = CliRunner().invoke(testbed, ["-q", "profile", "slurm-rest"])
    assert result.exit_code == 0, result.output
    cm, secret = list(yaml.safe_load_all(result.stdout))
    conf = json.loads(cm["data"]["configuration"])
    assert conf["api_version"] == "v0.0.38"
    reply = requests.get(f"{conf['endpoint']}/slurm/v0.0.38/ping",
                         headers={"X-SLURM-USER-NAME": conf["user"],
                                  "X-SLURM-USER-TOKEN": secret["stringData"]["token"]},
                         timeout=10)
    assert reply.status_code == 200, reply.text


def test_profile_dir_writes_files_with_modes(tb, tmp_path):
    from testbed.cli import testbed

    out = tmp_path / "profile"
    result = CliRunner().invoke(testbed, ["-q", "profile", "slurm-ssh", "--dir", str(out)])
    assert result.exit_code == 0, result.output
    assert "PRIVATE KEY" not in result.output  # secrets go to the files only
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes == {"name": 0o644, "configuration": 0o644, "monitoring_period": 0o644,
                     "ssh-privatekey": 0o600, "known_hosts": 0o600}
    assert (out / "name").read_text() == "slurm-ssh"
    assert json.loads((out / "configuration").read_text())["port"] == 2222
    assert (out / "ssh-privatekey").read_text() == tb.key_path.read_text()


def test_profile_refuses_an_address_not_served(tb):
    from testbed.cli import testbed

    result = CliRunner().invoke(testbed, ["-q", "profile", "slurm-ssh", "--host", "192.0.2.1"])
    assert result.exit_code != 0
    assert "does not listen on 192.0.2.1" in result.output
    assert "PRIVATE KEY" not in result.output


@pytest.mark.exclusive
def test_clear_cancels_leftover_jobs_of_both_managers(tb, tmp_path):
    """`testbed clear` (the test command's first step) leaves no job of the test user queued:
    leftovers from a killed run held the node's two CPUs and kept every test job pending."""
    from testbed import api, sge
    from testbed.cli import testbed as cli

    slurm_job = subprocess.run(["sbatch", "--parsable", "-p", tb.partition, f"--chdir={tb.workdir}",
                                "--uid=hpcuser", "--wrap", "sleep 300"],
                               capture_output=True, text=True, check=True).stdout.strip().split(";")[0]
    sge_job = subprocess.run(["runuser", "-u", "hpcuser", "--", str(sge.BIN / "qsub"), "-terse",
                              "-o", "/dev/null", "-j", "y", "-b", "y", "sleep", "300"],
                             cwd="/tmp", env=sge._env(), capture_output=True, text=True, check=True)
    assert int(slurm_job) in api.queued_job_ids() and int(sge_job.stdout.strip()) in sge.job_ids()
    result = CliRunner().invoke(cli, ["clear"])
    assert result.exit_code == 0, result.output
    said = re.fullmatch(r"cancelled (\d+) job\(s\)", result.output.strip().splitlines()[-1])
    assert said and int(said.group(1)) >= 2, result.output  # and whatever else the user had
    assert not api.queued_job_ids() and not sge.job_ids()
    assert CliRunner().invoke(cli, ["clear"]).output.strip() == "queues empty"


def test_clear_says_which_manager_did_not_answer(monkeypatch):
    """A controller that does not answer is one clear line from `testbed clear`, not a traceback."""
    from testbed import api
    from testbed.cli import testbed as cli
    from testbed.daemons import DaemonError

    def down() -> int:
        raise DaemonError("'squeue -a -h' failed (exit 1): Unable to contact slurm controller")

    monkeypatch.setattr(api, "clear_queues", down)
    result = CliRunner().invoke(cli, ["clear"])
    assert result.exit_code == 1
    assert "Error: 'squeue -a -h' failed (exit 1): Unable to contact slurm controller" in result.output
    assert "Traceback" not in result.output
