"""The Grid Engine backends (sge-ssh, sge-local).

First what needs no cluster: the directives for the neutral options, the allow-list of extra
qsub options, and the reading of `qstat -xml` and `qacct -j` as recorded from Grid Engine 8.1.9
in the testbed. Then, against the testbed's real Grid Engine, what the contract suite does not
cover: directives qsub really accepts, a refused queue, a verbatim script's own output files,
and a qdel from outside the pod.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid

import pytest

from connector.backends import backend_class
from connector.backends.base import JobRequest, JobState
from connector.backends.sge import (
    SgeBackend,
    parse_qacct,
    parse_qstat,
    status_from_accounting,
    status_from_queue,
)
from connector.backends.sge_local import SgeLocalBackend
from connector.backends.sge_options import SiteOptions, format_h_rt, parse_qsub_args, qsub_options
from connector.backends.sge_ssh import SgeSSHBackend
from connector.errors import BackendError, ProfileError, SpecError
from connector.profile import profile_from_values
from connector.spec import JobSpec, PodRef, Resources

# qstat -xml as hpcuser: one job running, one waiting for 2 slots, one held
QSTAT_XML = """<?xml version='1.0'?>
<job_info  xmlns:xsd="http://arc.liv.ac.uk/repos/darcs/sge/source/dist/util/resources/schemas/qstat/qstat.xsd">
  <queue_info>
    <job_list state="running">
      <JB_job_number>50</JB_job_number>
      <JAT_prio>0.25000</JAT_prio>
      <JB_name>run-a</JB_name>
      <JB_owner>hpcuser</JB_owner>
      <state>r</state>
      <JAT_start_time>2026-11-30T09:23:04</JAT_start_time>
      <queue_name>all.q@vm</queue_name>
      <slots>1</slots>
    </job_list>
  </queue_info>
  <job_info>
    <job_list state="pending">
      <JB_job_number>52</JB_job_number>
      <JAT_prio>0.75000</JAT_prio>
      <JB_name>pend-c</JB_name>
      <JB_owner>hpcuser</JB_owner>
      <state>qw</state>
      <JB_submission_time>2026-11-30T09:23:04</JB_submission_time>
      <queue_name></queue_name>
      <slots>2</slots>
    </job_list>
    <job_list state="pending">
      <JB_job_number>51</JB_job_number>
      <JAT_prio>0.00000</JAT_prio>
      <JB_name>hold-b</JB_name>
      <JB_owner>hpcuser</JB_owner>
      <state>hqw</state>
      <JB_submission_time>2026-11-30T09:23:04</JB_submission_time>
      <queue_name></queue_name>
      <slots>1</slots>
    </job_list>
  </job_info>
</job_info>
"""

# qacct -j of a job that ran twice (rescheduled): the last record is its end
QACCT_TWO_RUNS = """==============================================================
qname        all.q
hostname     vm
jobname      hrt
jobnumber    4
failed       25  : rescheduling
exit_status  0
==============================================================
qname        all.q
hostname     vm
owner        hpcuser
jobname      hrt
jobnumber    4
failed       37  : qmaster enforced h_rt, h_cpu, or h_vmem limit
exit_status  137                  (Killed)
ru_wallclock 4s
"""


def _record(failed: str, exit_status: str) -> dict[str, str]:
    return {"failed": failed, "exit_status": exit_status, "jobnumber": "9"}


# --- directives -------------------------------------------------------------------------------

def test_neutral_options_become_qsub_directives():
    res = Resources(queue="all.q", account="proj42", time_limit=3725, tasks=2, cpus_per_task=2,
                    memory_mb=1000, gpus=1, extra_args=("--l=arch=lx-amd64", "--m=ea", "--notify"))
    options, notes = qsub_options(res, SiteOptions(pe="smp"))
    assert options == [["-q", "all.q"], ["-P", "proj42"], ["-l", "h_rt=1:02:05"],
                       ["-pe", "smp", "4"], ["-l", "h_vmem=250M"], ["-l", "gpu=1"],
                       ["-l", "arch=lx-amd64"], ["-m", "ea"], ["-notify"]]
    assert notes == []


def test_what_grid_engine_cannot_give_is_said_not_hidden():
    res = Resources(qos="high", nodes=2, cpus_per_task=4, memory_mb=512, gpus=1, gpu_type="a100")
    options, notes = qsub_options(res, SiteOptions(pe=None, memory_resource=None))
    assert options == [["-l", "gpu=1"]]  # no PE: one slot; no memory complex: none asked
    text = " ".join(notes)
    assert "no QOS" in text and "slots, not nodes" in text and "no parallel environment" in text
    assert "a100" in text


def test_time_formats():
    assert format_h_rt(5) == "0:00:05"
    assert format_h_rt(100 * 3600 + 61) == "100:01:01"
    assert qsub_options(Resources(time_limit=0), SiteOptions())[0] == []  # 0 = unlimited


@pytest.mark.parametrize(("args", "message"), [
    (["--o=/tmp/x"], "not an allowed Grid Engine option"),
    (["--N=other"], "not an allowed Grid Engine option"),
    (["--v=SECRET=1"], "not an allowed Grid Engine option"),
    (["--l"], "needs a value"),
    (["--notify=yes"], "takes no value"),
    (["-l=x"], "not an option of the form"),
])
def test_extra_args_outside_the_allow_list_are_refused(args, message):
    with pytest.raises(SpecError, match=message):
        parse_qsub_args(args)


def _backend(**conf) -> SgeBackend:
    return SgeLocalBackend(profile_from_values("sge-local", {"workdir": "/tmp/w", **conf}))


def test_rendered_script_has_directives_and_no_env_value():
    spec = JobSpec(command=("bash", "-c", "echo hi"), runtime="none",
                   resources=Resources(queue="all.q", time_limit=60, qos="x"),
                   pod=PodRef("ns", "p", "0123-abcd"))
    request = JobRequest(spec, "/tmp/w/hpco-0123-abcd", {"TOKEN": "s3cr3t-value"})
    script = _backend(pe="smp").render(request)
    lines = script.splitlines()
    assert lines[:4] == ["#!/bin/bash", "#$ -S /bin/bash", "#$ -q all.q", "#$ -l h_rt=0:01:00"]
    assert "# hpc-offload: qos 'x': Grid Engine has no QOS; ignored" in lines
    assert "s3cr3t-value" not in script and "/tmp/w/hpco-0123-abcd/job.env" in script
    identity = _backend().identity_args(request)
    assert identity == ["-terse", "-N", "hpco-0123-abcd", "-wd", "/tmp/w/hpco-0123-abcd",
                        "-o", "/tmp/w/hpco-0123-abcd/output.log", "-e", "/tmp/w/hpco-0123-abcd/error.log"]


def test_a_verbatim_script_is_submitted_as_written_and_keeps_its_output():
    script = "#!/bin/bash\n#$ -N mine\n#$ -o custom.out\necho hi\n"
    request = JobRequest(JobSpec(script=script, pod=PodRef(uid="u1")), "/tmp/w/hpco-u1")
    backend = _backend()
    assert backend.render(request) == script
    assert backend.identity_args(request) == ["-terse", "-N", "hpco-u1", "-wd", "/tmp/w/hpco-u1"]


@pytest.mark.parametrize(("conf", "key"), [
    ({"pe": "smp pe"}, "pe"),
    ({"memory_resource": "h vmem"}, "memory_resource"),
    ({"shell": "bash"}, "shell"),
    ({"shell": "/bin/bash; rm -rf ~"}, "shell"),
    ({"accounting_wait": "soon"}, "accounting_wait"),
])
def test_a_bad_profile_key_is_named(conf, key):
    with pytest.raises(ProfileError, match=key):
        _backend(**conf)


def test_the_backends_are_built_in():
    assert backend_class("sge-ssh") is SgeSSHBackend
    assert backend_class("SGE-Local") is SgeLocalBackend


# --- reading qstat and qacct ------------------------------------------------------------------

def test_qstat_xml_is_read_in_listed_order():
    jobs = parse_qstat(QSTAT_XML)
    assert [(j.job_id, j.name, j.state, j.queue) for j in jobs] == [
        ("50", "run-a", "r", "all.q@vm"), ("52", "pend-c", "qw", ""), ("51", "hold-b", "hqw", "")]
    running = status_from_queue(jobs[0])
    assert running.state is JobState.RUNNING and running.node == "vm"
    waiting = status_from_queue(jobs[1], position=1)
    assert waiting.state is JobState.PENDING and waiting.queue_position == 1 and not waiting.reason
    assert status_from_queue(jobs[2]).reason == "on hold"


@pytest.mark.parametrize(("letters", "state", "reason"), [
    ("Eqw", JobState.PENDING, "error state"),
    ("dr", JobState.RUNNING, "being deleted"),
    ("t", JobState.RUNNING, ""),
    ("s", JobState.RUNNING, "suspended"),
    ("Rq", JobState.PENDING, ""),
])
def test_qstat_state_letters(letters, state, reason):
    from connector.backends.sge import QueuedJob

    status = status_from_queue(QueuedJob("7", "n", letters, "all.q@vm" if "r" in letters else ""))
    assert status.state is state and reason in status.reason and status.raw_state == letters
    assert status.requeued == (letters == "Rq")


def test_qacct_last_record_wins():
    record = parse_qacct(QACCT_TWO_RUNS)
    assert record is not None and record["failed"].startswith("37")
    assert parse_qacct("") is None


@pytest.mark.parametrize(("failed", "exit_status", "cancelled", "state", "code", "signal"), [
    ("0", "0", False, JobState.COMPLETED, 0, 0),
    ("0", "7", False, JobState.FAILED, 7, 0),
    ("100 : assumedly after job", "137                  (Killed)", False, JobState.FAILED, 0, 9),
    ("100 : assumedly after job", "143                  (Terminated)", False, JobState.FAILED, 0, 15),
    ("37  : qmaster enforced h_rt, h_cpu, or h_vmem limit", "137", False, JobState.TIMEOUT, 137, None),
    ("100 : assumedly after job", "137", True, JobState.CANCELLED, 137, None),  # our qdel
    ("0", "3", True, JobState.FAILED, 3, 0),  # ended on its own before the qdel
    ("26  : opening input/output file", "0", False, JobState.FAILED, 0, 0),
])
def test_accounting_becomes_an_end(failed, exit_status, cancelled, state, code, signal):
    status = status_from_accounting("9", _record(failed, exit_status), cancelled)
    assert (status.state, status.exit_code, status.signal) == (state, code, signal)
    if failed.startswith("26"):
        assert status.reason == "failed 26: opening input/output file"


# --- against the testbed's Grid Engine --------------------------------------------------------

@pytest.fixture(scope="module")
def sge_profile(tmp_path_factory):
    """The testbed's sge-ssh profile (the real Grid Engine, over the testbed's sshd)."""
    if os.geteuid() != 0:
        pytest.skip("the testbed needs root")
    from testbed import api, profile

    api.ensure_up()
    directory = tmp_path_factory.mktemp("sge-ssh")
    profile.write_dir(directory, "sge-ssh", "127.0.0.1")
    return directory


def _ssh_backend(profile_dir) -> SgeBackend:
    from connector.profile import load_profile_dir

    return SgeSSHBackend(load_profile_dir(profile_dir))


def _request(backend: SgeBackend, spec: JobSpec) -> JobRequest:
    return JobRequest(spec, f"{backend.workdir()}/hpco-{spec.pod.uid}", dict(spec.env))


def _wait_end(backend: SgeBackend, job_id: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = backend.status(job_id)
        if status.state.ended:
            return status
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not end in {timeout} s: {status}")


@pytest.mark.slurm
def test_directives_are_accepted_by_the_real_qsub(sge_profile):
    backend = _ssh_backend(sge_profile)
    spec = JobSpec(command=("bash", "-c", 'echo "slots=$NSLOTS vmem=$(ulimit -v) ${GREETING}"'),
                   runtime="none", env={"GREETING": "hello from env"},
                   resources=Resources(queue="all.q", time_limit=120, cpus_per_task=2,
                                       memory_mb=1024, extra_args=("--l=arch=lx-amd64", "--p=-5")),
                   pod=PodRef("t", "p", str(uuid.uuid4())))
    request = _request(backend, spec)
    handle = backend.submit(request)
    try:
        status = _wait_end(backend, handle.job_id)
        assert status.state is JobState.COMPLETED, status
        out = backend.read_output(handle, "stdout", 0).decode()
        # 2 slots through the PE; h_vmem asked per slot (512M), the limit is the job's whole
        # 1024M (1048576 KiB) as Grid Engine multiplies by the slots; env from the 0600 file
        assert out.strip() == "slots=2 vmem=1048576 hello from env", out
        assert not backend.files().exists(f"{handle.job_dir}/job.env")
    finally:
        backend.close()


@pytest.mark.slurm
def test_a_refused_queue_is_a_clear_error_and_nothing_is_left(sge_profile):
    from testbed import sge

    backend = _ssh_backend(sge_profile)
    uid = str(uuid.uuid4())
    spec = JobSpec(command=("true",), runtime="none", env={"SECRET_VALUE": "do-not-leak"},
                   resources=Resources(queue="no-such.q"), pod=PodRef("t", "p", uid))
    request = _request(backend, spec)
    with pytest.raises(BackendError) as raised:
        backend.submit(request)
    assert "no-such.q" in raised.value.message and "do-not-leak" not in raised.value.message
    assert not backend.files().exists(f"{request.job_dir}/job.env")
    assert sge.jobs_named(f"hpco-{uid}") == []
    backend.close()


@pytest.mark.slurm
def test_a_verbatim_script_output_goes_where_it_says(sge_profile):
    backend = _ssh_backend(sge_profile)
    script = "#!/bin/bash\n#$ -S /bin/bash\n#$ -o results/$JOB_ID.txt\n#$ -j y\necho verbatim; echo err >&2\n"
    uid = str(uuid.uuid4())
    request = _request(backend, JobSpec(script=script, pod=PodRef("t", "p", uid)))
    backend.files().mkdir(f"{request.job_dir}/results", 0o700)
    handle = backend.submit(request)
    try:
        assert handle.stdout == f"{request.job_dir}/results/{handle.job_id}.txt"
        assert handle.stderr is None  # -j y: one file
        assert _wait_end(backend, handle.job_id).state is JobState.COMPLETED
        assert backend.read_output(handle, "stdout", 0) == b"verbatim\nerr\n"
        found = backend.find(request)  # after the end: from qacct, by the tag
        assert found is not None and found.job_id == handle.job_id and found.stdout == handle.stdout
    finally:
        backend.close()


@pytest.mark.slurm
def test_a_qdel_from_outside_while_it_runs(sge_profile):
    """A qdel the pod did not ask for: CANCELLED when a poll sees the deletion, else the
    accounting's SIGKILL (Grid Engine records a qdel as signal 9, failed 100)."""
    from testbed import layout

    backend = _ssh_backend(sge_profile)
    spec = JobSpec(command=("bash", "-c", "trap '' TERM; echo up; sleep 120"), runtime="none",
                   pod=PodRef("t", "p", str(uuid.uuid4())))
    handle = backend.submit(_request(backend, spec))
    try:
        deadline = time.monotonic() + 30
        while backend.status(handle.job_id).state is not JobState.RUNNING:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        subprocess.run(["su", "-", layout.TEST_USER, "-c", f"qdel {handle.job_id}"], check=True,
                       capture_output=True)
        seen = backend.status(handle.job_id)  # qdel → gone takes about a second
        status = _wait_end(backend, handle.job_id)
        if seen.state is JobState.RUNNING and "d" in seen.raw_state:  # qstat's dr
            assert status.state is JobState.CANCELLED, status
        else:
            assert (status.state, status.signal) == (JobState.FAILED, 9), status
    finally:
        backend.close()


@pytest.mark.slurm
def test_status_and_cancel_take_many_jobs_in_one_request(sge_profile):
    backend = _ssh_backend(sge_profile)
    handles = [backend.submit(_request(backend, JobSpec(
        command=("sleep", "60"), runtime="none", pod=PodRef("t", "p", str(uuid.uuid4())))))
        for _ in range(3)]
    ids = [h.job_id for h in handles]
    try:
        before = backend.scheduler_calls
        statuses = backend.statuses(ids)
        assert set(statuses) == set(ids)
        assert backend.scheduler_calls - before <= 2  # qstat, plus the pending order if one waits
        before = backend.scheduler_calls
        backend.cancel_many(ids)
        assert backend.scheduler_calls - before == 1
        deadline = time.monotonic() + 30
        while not all(s.state is JobState.CANCELLED for s in backend.statuses(ids).values()):
            assert time.monotonic() < deadline
            time.sleep(0.3)
        backend.cancel_many(ids)  # again: already gone is not an error
    finally:
        backend.close()
