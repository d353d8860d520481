"""SLURM accounting on the testbed, for real: slurmdbd over its own MariaDB, so `sacct`
answers for finished jobs (what a connector falls back to once a job left `scontrol`).

Needs root (it starts daemons); `pytest -m slurm`.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import stat
import subprocess
import time
import uuid
from pathlib import Path

import paramiko
import pytest

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(os.geteuid() != 0, reason="the testbed needs root"),
]

ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "RESIZING", "SUSPENDED", "COMPLETING"}
BUSY = 180  # s: the 2-core node is shared with every other test running meanwhile


@pytest.fixture(scope="module")
def tb():
    from testbed import api

    return api.ensure_up()


def _as_user(tb, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a SLURM command as the test user, in its work dir, with a plain environment."""
    home = pwd.getpwnam(tb.ssh_user).pw_dir
    env = {"PATH": "/usr/bin:/bin", "HOME": home, "USER": tb.ssh_user, "LANG": "C.UTF-8"}
    return subprocess.run(argv, user=tb.ssh_user, cwd=tb.workdir, env=env,
                          capture_output=True, text=True, timeout=30, check=False)


def _sbatch(tb, wrap: str, *options: str) -> int:
    proc = _as_user(tb, ["sbatch", "--parsable", "-o", "/dev/null", *options, "--wrap", wrap])
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.strip().split(";")[0])


def _sacct_final(job_id: int, timeout: float = BUSY) -> dict[str, str]:
    """The job's accounting record once slurmdbd has its end (it lags scontrol a little)."""
    from testbed import slurmdbd

    deadline = time.monotonic() + timeout
    record = None
    while time.monotonic() < deadline:
        record = slurmdbd.job_record(job_id)
        if record is not None and record["State"].split()[0] not in ACTIVE and \
                record["End"] != "Unknown":
            return record
        time.sleep(0.2)
    raise AssertionError(f"sacct has no final state for job {job_id} after {timeout} s: {record}")


def _scontrol_final(job_id: int, timeout: float = BUSY) -> dict[str, str]:
    from testbed import api

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = api.job_info(job_id)
        assert info is not None, f"job {job_id} unknown to scontrol"
        if info["JobState"] not in ACTIVE:
            return info
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not finished after {timeout} s")


def test_accounting_daemons_run_and_slurm_uses_them(tb):
    from testbed import api

    rows = {s.name: s for s in api.status()}
    assert rows["mariadbd"].running and rows["slurmdbd"].running, rows
    names = [s.name for s in api.status()]
    assert names.index("mariadbd") < names.index("slurmdbd") < names.index("slurmctld")
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                            check=True).stdout
    assert re.search(r"^AccountingStorageType\s*=\s*accounting_storage/slurmdbd$", config, re.M)
    # not enforced: a job never waits on accounting
    assert re.search(r"^AccountingStorageEnforce\s*=\s*none$", config, re.M)


@pytest.mark.parametrize(("wrap", "state", "exit_code"), [
    ("echo hi", "COMPLETED", "0:0"),
    ("echo hi; exit 7", "FAILED", "7:0"),
    ("kill -9 $$", "FAILED", "0:9"),
])
def test_sacct_reports_end_state_and_exit_code(tb, wrap, state, exit_code):
    job_id = _sbatch(tb, wrap)
    info = _scontrol_final(job_id)
    record = _sacct_final(job_id)
    assert (record["State"], record["ExitCode"]) == (state, exit_code)
    # accounting and the controller agree
    assert (info["JobState"], info["ExitCode"]) == (state, exit_code)
    # the exact query a connector makes, as the job's own user: the job line plus its steps
    proc = _as_user(tb, ["sacct", "-j", str(job_id), "-n", "-P", "-o", "JobID,State,ExitCode"])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"{job_id}|{state}|{exit_code}"
    assert any(line.startswith(f"{job_id}.batch|") for line in lines[1:]), lines
    # the job is recorded under the test user's registered account
    account = _as_user(tb, ["sacct", "-j", str(job_id), "-n", "-P", "-X", "-o", "User,Account"])
    assert account.stdout.strip() == f"{tb.ssh_user}|testbed"


def test_sacct_reports_a_cancelled_job(tb):
    from testbed import api

    # exec: the batch process itself gets the SIGTERM (with a shell waiting on a child the
    # shell may instead exit 143, in scontrol 143:0 and in sacct's batch step FAILED 15:0)
    job_id = _sbatch(tb, "exec sleep 300")
    try:
        deadline = time.monotonic() + BUSY
        while (api.job_info(job_id) or {}).get("JobState") != "RUNNING":
            assert time.monotonic() < deadline, f"job {job_id} never ran"
            time.sleep(0.1)
    finally:
        subprocess.run(["scancel", str(job_id)], check=True)
    record = _sacct_final(job_id)
    assert record["State"] == "CANCELLED by 0"  # root cancelled it
    # SLURM 22.05 records the job line's exit code when the cancel is asked for (0:0); the
    # signal that ended it is on the batch step, and in scontrol
    assert record["ExitCode"] == "0:0"
    assert _scontrol_final(job_id)["ExitCode"] == "0:15"
    deadline = time.monotonic() + 30
    while True:
        proc = _as_user(tb, ["sacct", "-j", str(job_id), "-n", "-P", "-o", "JobID,State,ExitCode"])
        if f"{job_id}.batch|CANCELLED|0:15" in proc.stdout.splitlines():
            break
        assert time.monotonic() < deadline, proc.stdout
        time.sleep(0.2)


def test_sacct_over_ssh_finds_the_job_by_its_comment(tb):
    """What a connector does after an outage: ask accounting, over SSH, for a job it tagged."""
    tag = f"hpco-test-{uuid.uuid4()}"
    client = paramiko.SSHClient()
    client.load_host_keys(str(tb.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(tb.ssh_host, port=tb.ssh_port, username=tb.ssh_user,
                   pkey=paramiko.Ed25519Key.from_private_key_file(str(tb.key_path)),
                   allow_agent=False, look_for_keys=False, timeout=10)
    with client:
        def run(command: str) -> str:
            _, out, err = client.exec_command(command, timeout=30)
            assert out.channel.recv_exit_status() == 0, err.read().decode()
            return out.read().decode()

        job_id = int(run(f"cd {shlex.quote(str(tb.workdir))} && sbatch --parsable -o /dev/null "
                         f"--comment={shlex.quote(tag)} --wrap 'exit 3'").split(";")[0])
        record = _sacct_final(job_id)
        assert (record["State"], record["ExitCode"], record["Comment"]) == ("FAILED", "3:0", tag)
        # listed by its tag among the last hour's jobs (a window ending "now" leaves out a job
        # that started within the current second, so look again for a moment)
        deadline = time.monotonic() + 10
        while f"{job_id}|{tag}" not in (listing := run(
                "sacct -n -P -X -S now-1hours -o JobID,Comment").splitlines()):
            assert time.monotonic() < deadline, listing[-5:]
            time.sleep(0.5)


def test_database_password_stays_secret(tb):
    from testbed import layout, slurmdbd

    password = slurmdbd.PASSWORD_FILE.read_text().strip()
    assert len(password) >= 24
    for path in (slurmdbd.PASSWORD_FILE, layout.SLURMDBD_CONF):
        st = path.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, 0), path
    assert f"StoragePass={password}\n" in layout.SLURMDBD_CONF.read_text()
    # on no command line and in no log of the testbed
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                assert password.encode() not in (proc / "cmdline").read_bytes(), proc
            except OSError:
                continue
    for log_file in tb.log_dir.glob("*.log"):
        assert password not in log_file.read_text(errors="replace"), log_file
    # the test user can read neither file
    for path in (slurmdbd.PASSWORD_FILE, layout.SLURMDBD_CONF):
        assert _as_user(tb, ["cat", str(path)]).returncode != 0
