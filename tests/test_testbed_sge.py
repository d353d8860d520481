"""Grid Engine in the testbed, for real: qsub/qstat/qdel/qacct as hpcuser over the testbed's sshd.

What these pin down is what the sge backends build on: exit codes and signals as `qacct`
reports them, the h_rt limit's `failed 37`, qdel of a running and of a pending job, finding a
job by its name, a parallel environment, and daemons that come back after a crash.
Needs root (it installs packages and starts daemons); `pytest -m slurm`.
"""

from __future__ import annotations

import json
import os
import shlex
import time

import paramiko
import pytest
from click.testing import CliRunner

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(os.geteuid() != 0, reason="the testbed needs root"),
]


@pytest.fixture(scope="module")
def tb():
    from testbed import api

    return api.ensure_up()


@pytest.fixture(scope="module")
def ssh(tb):
    client = paramiko.SSHClient()
    client.load_host_keys(str(tb.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(tb.ssh_host, port=tb.ssh_port, username=tb.ssh_user,
                   pkey=paramiko.Ed25519Key.from_private_key_file(str(tb.key_path)),
                   allow_agent=False, look_for_keys=False, timeout=10)
    yield client
    client.close()


def _exec(client: paramiko.SSHClient, command: str) -> tuple[int, str, str]:
    _, out, err = client.exec_command(command, timeout=60)
    rc = out.channel.recv_exit_status()
    return rc, out.read().decode(), err.read().decode()


def _qsub(client: paramiko.SSHClient, tmp: str, body: str, *opts: str) -> int:
    """Write a script in the test user's dir and qsub it; return the job id."""
    cmd = (f"mkdir -p {shlex.quote(tmp)} && cd {shlex.quote(tmp)} && "
           f"printf '%s\\n' {shlex.quote(body)} > job.sh && qsub -terse -cwd -S /bin/sh "
           f"{' '.join(shlex.quote(o) for o in opts)} job.sh")
    rc, out, err = _exec(client, cmd)
    assert rc == 0, err
    return int(out.strip())


def _in_qstat(client: paramiko.SSHClient, job_id: int) -> bool:
    rc, _, _ = _exec(client, f"qstat -j {job_id}")
    return rc == 0


def _qacct(client: paramiko.SSHClient, job: int | str, timeout: float = 60) -> dict[str, str]:
    """Wait until the job left qstat, then return its `qacct -j` record."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rc, out, _ = _exec(client, f"qstat -j {shlex.quote(str(job))} >/dev/null 2>&1 || "
                                   f"qacct -j {shlex.quote(str(job))}")
        if rc == 0 and out.strip():
            record: dict[str, str] = {}
            for line in out.splitlines():
                key, _, value = line.partition(" ")
                if key and not key.startswith("="):
                    record[key] = value.strip()
            return record
        time.sleep(0.2)
    raise AssertionError(f"job {job} has no accounting record after {timeout} s")


@pytest.fixture
def tmp(ssh, request):
    """A fresh directory under the test user's work dir for one test's scripts and output."""
    from testbed import layout

    path = f"{layout.WORKDIR}/sge-test-{request.node.name[:40]}-{os.getpid()}-{time.monotonic_ns()}"
    yield path
    _exec(ssh, f"rm -rf {shlex.quote(path)}")


def test_up_is_idempotent_with_grid_engine(tb):
    from testbed import api

    before = {s.name: s.pid for s in api.status()}
    assert before.get("sge_qmaster") and before.get("sge_execd"), before
    again = api.ensure_up()
    assert again == tb
    after = {s.name: (s.pid, s.running) for s in api.status()}
    assert after["sge_qmaster"] == (before["sge_qmaster"], True)
    assert after["sge_execd"] == (before["sge_execd"], True)


def test_status_json_lists_the_grid_engine_daemons(tb):
    from testbed.cli import testbed

    result = CliRunner().invoke(testbed, ["-q", "status", "--json"])
    rows = {d["name"]: d for d in json.loads(result.output)["daemons"]}
    assert rows["sge_qmaster"]["running"] and rows["sge_execd"]["running"], rows


def test_exit_code_output_and_accounting(ssh, tmp):
    started = time.monotonic()
    job = _qsub(ssh, tmp, "echo out-line; echo err-line >&2; exit 7",
                "-N", "sge-exit7", "-o", "out.txt", "-e", "err.txt")
    record = _qacct(ssh, job)
    took = time.monotonic() - started
    assert record["exit_status"] == "7" and record["failed"] == "0", record
    assert record["jobname"] == "sge-exit7" and record["owner"] == "hpcuser"
    assert took < 10, f"qsub → accounting record took {took:.1f} s"
    rc, out, _ = _exec(ssh, f"cat {tmp}/out.txt {tmp}/err.txt")
    assert out.splitlines() == ["out-line", "err-line"]


@pytest.mark.parametrize(("signal_name", "code"), [("KILL", 137), ("TERM", 143)])
def test_a_job_killed_by_a_signal(ssh, tmp, signal_name, code):
    job = _qsub(ssh, tmp, f"echo start; kill -{signal_name} $$; sleep 30", "-j", "y",
                "-o", "out.txt")
    record = _qacct(ssh, job)
    # 128+N, with failed 100 ("assumedly after job"): the shepherd saw the signal
    assert record["exit_status"].split()[0] == str(code), record
    assert record["failed"].startswith("100"), record


def test_h_rt_exceeded_is_failed_37(ssh, tmp):
    started = time.monotonic()
    job = _qsub(ssh, tmp, "echo start; sleep 60", "-l", "h_rt=0:0:2", "-j", "y", "-o", "out.txt")
    record = _qacct(ssh, job)
    took = time.monotonic() - started
    assert record["failed"].startswith("37"), record  # "qmaster enforced h_rt, h_cpu, or h_vmem"
    assert record["exit_status"].split()[0] == "137", record
    assert took < 20, f"a 2 s h_rt limit ended the job only after {took:.1f} s"


def test_qdel_a_running_job(ssh, tmp):
    job = _qsub(ssh, tmp, "echo started > started.txt; sleep 60", "-j", "y", "-o", "out.txt")
    deadline = time.monotonic() + 30
    while _exec(ssh, f"test -s {tmp}/started.txt")[0] != 0:
        assert time.monotonic() < deadline, "job did not start in 30 s"
        time.sleep(0.2)
    started = time.monotonic()
    rc, out, err = _exec(ssh, f"qdel {job}")
    assert rc == 0, err
    while _in_qstat(ssh, job):
        assert time.monotonic() - started < 15, "job still in qstat 15 s after qdel"
        time.sleep(0.1)
    record = _qacct(ssh, job)
    # accounting cannot tell a qdel from a SIGKILL: the backend has to know it cancelled
    assert record["exit_status"].split()[0] == "137" and record["failed"].startswith("100")


def test_qdel_a_pending_job_leaves_no_accounting(ssh, tmp):
    job = _qsub(ssh, tmp, "echo never", "-h", "-N", "sge-held", "-j", "y", "-o", "out.txt")
    rc, out, _ = _exec(ssh, f"qstat -xml -j {job}")
    assert rc == 0 and "<JB_job_number>" in out
    assert _exec(ssh, f"qdel {job}")[0] == 0
    deadline = time.monotonic() + 15
    while _in_qstat(ssh, job):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    rc, _, err = _exec(ssh, f"qacct -j {job}")
    assert rc != 0 and f"job id {job} not found" in err


def test_find_a_job_by_its_name(ssh, tmp):
    """What reattach uses: `qstat -j NAME` while queued, `qacct -j NAME` once finished."""
    name = f"pod-{os.getpid()}-{time.monotonic_ns()}"
    job = _qsub(ssh, tmp, "sleep 2; exit 3", "-N", name, "-j", "y", "-o", "out.txt")
    rc, out, _ = _exec(ssh, f"qstat -xml -j {name}")
    assert rc == 0 and f"<JB_job_number>{job}</JB_job_number>" in out
    record = _qacct(ssh, name)
    assert record["jobnumber"] == str(job) and record["exit_status"] == "3"
    rc, _, _ = _exec(ssh, "qstat -j no-such-job-name")
    assert rc != 0


def test_parallel_environment_grants_slots(ssh, tmp):
    from testbed import layout

    job = _qsub(ssh, tmp, 'echo "slots=$NSLOTS"', "-pe", layout.SGE_PE, "2", "-j", "y",
                "-o", "out.txt")
    record = _qacct(ssh, job)
    assert record["exit_status"] == "0" and record["granted_pe"] == layout.SGE_PE, record
    assert record["slots"] == "2"
    assert _exec(ssh, f"cat {tmp}/out.txt")[1].strip() == "slots=2"


@pytest.mark.exclusive
def test_daemons_come_back_after_a_crash(tb, ssh, tmp):
    """SIGKILL both daemons: `up` finds stale pid files, starts them again, the queue works
    and jobs finished before the crash keep their accounting."""
    import signal

    from testbed import api, daemons

    before = _qsub(ssh, tmp, "exit 5", "-j", "y", "-o", "out.txt")
    assert _qacct(ssh, before)["exit_status"] == "5"
    specs = {s.name: s for s in api.status()}
    for name in ("sge_execd", "sge_qmaster"):
        pid = specs[name].pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
    while any(daemons.running_pid(s) for s in api._current_specs() if s.name.startswith("sge_")):
        time.sleep(0.05)
    api.ensure_up()
    after = {s.name: s for s in api.status()}
    assert after["sge_qmaster"].running and after["sge_execd"].running
    assert _qacct(ssh, before)["exit_status"] == "5"
    job = _qsub(ssh, tmp, "exit 0", "-j", "y", "-o", "out.txt")
    assert _qacct(ssh, job)["exit_status"] == "0"
