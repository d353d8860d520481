"""The `slurm-rest` backend. Unit tests first (no server: rendering, the submit fields, the
token checks, profile errors), then against the testbed's slurmrestd (SLURM 22.05, v0.0.38;
`pytest -m slurm`, root): a token rotated mid-run, tokens minted over SSH and renewed, a profile
without SSH (the pod log says where the output is), a verbatim script's #SBATCH lines, one
request for many statuses, and bad profiles that end before anything is submitted. The contract
suite (tests/contract, target `slurm-rest`) runs the rest."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from connector.backends import backend_class
from connector.backends.base import Capability, JobRequest, JobState
from connector.backends.slurm_rest import SlurmRestBackend, status_of
from connector.backends.slurm_rest_api import RestJob, parse_jobs
from connector.backends.slurm_rest_options import directive_fields, directive_options, parse_time
from connector.errors import AuthError, ProfileError, SpecError
from connector.profile import Profile
from connector.spec import JobSpec, PodRef, Resources

FIXTURES = Path(__file__).parent / "fixtures" / "slurmrestd"
# parameters are made at collection, maybe an hour before the test runs: a fixed 2100-01-01
FAR_FUTURE = 4_102_444_800


def jwt(claims: dict) -> str:
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


def backend(tmp_path: Path, token: str | None = None, **conf) -> SlurmRestBackend:
    if token is not None:
        (tmp_path / "token").write_text(token)
    settings = {"endpoint": "http://127.0.0.1:6820", "user": "hpcuser", "workdir": "/scratch/hpcuser", **conf}
    return SlurmRestBackend(Profile("slurm-rest", settings, secret_dir=tmp_path, name="site"))


def request(spec: JobSpec | None = None, job_dir: str = "/scratch/hpcuser/hpco-uid") -> JobRequest:
    spec = spec or JobSpec(command=("bash", "-c", "echo hi"), runtime="none",
                           pod=PodRef(namespace="ns", name="p", uid="uid"))
    return JobRequest(spec, job_dir, {"SECRET_VALUE": "s3cret"})


# --- unit: profile, capabilities, rendering ------------------------------------------------------


def test_registered_and_capabilities_follow_the_profile(tmp_path):
    assert backend_class("slurm-rest") is SlurmRestBackend
    assert backend(tmp_path).capabilities == Capability.NONE
    with_ssh = backend(tmp_path, host="login", port=22)
    assert Capability.STREAM_OUTPUT in with_ssh.capabilities and Capability.FILES in with_ssh.capabilities
    assert SlurmRestBackend.capabilities == Capability.NONE  # the class itself promises nothing
    # what the relay's connector side asks before it has an instance
    assert SlurmRestBackend.capabilities_for(Profile("slurm-rest", {"host": "login"})) == with_ssh.capabilities
    assert SlurmRestBackend.capabilities_for(Profile("slurm-rest", {})) == Capability.NONE


def test_a_rendered_script_has_no_sbatch_lines_and_makes_its_dir_without_ssh(tmp_path):
    script = backend(tmp_path).render(request())
    assert "#SBATCH" not in script
    assert "mkdir -p -m 700 -- /scratch/hpcuser/hpco-uid && cd -- /scratch/hpcuser/hpco-uid || exit 1" in script
    assert "s3cret" not in script
    assert "mkdir" not in backend(tmp_path, host="login").render(request())  # SSH made it


def test_rendering_needs_no_connection_nor_endpoint():
    """`hpc-offload render --scripts` builds the backend from an empty profile."""
    SlurmRestBackend(Profile("slurm-rest")).render(request())


def test_submit_fields_of_a_rendered_job(tmp_path):
    spec = JobSpec(command=("true",), runtime="none", pod=PodRef(namespace="ns", name="p", uid="uid"),
                   resources=Resources(queue="debug", account="proj", time_limit=90, nodes=1, tasks=2,
                                       cpus_per_task=2, memory_mb=1500, gpus=1, gpu_type="a100",
                                       extra_args=("--constraint=intel", "--no-requeue", "--nice=10")))
    fields = backend(tmp_path).submit_request(request(spec))
    assert (fields.partition, fields.account, fields.time_limit_minutes, fields.tasks, fields.cpus_per_task,
            fields.memory_per_node_mb, fields.gpus, fields.gpu_type) == ("debug", "proj", 2, 2, 2, 1500, 1, "a100")
    assert (fields.constraints, fields.requeue, fields.nice) == ("intel", False, 10)
    assert fields.name == fields.comment == "hpco-uid"  # the tag: find() reattaches by it
    assert fields.workdir == "/scratch/hpcuser"  # without SSH the job dir does not exist yet
    assert (fields.stdout, fields.stderr) == ("/scratch/hpcuser/hpco-uid.out", "/scratch/hpcuser/hpco-uid.err")
    assert fields.environment["SECRET_VALUE"] == "s3cret"  # in the request body only
    assert fields.environment["USER"] == "hpcuser" and fields.environment["PATH"]
    assert fields.append_output


def test_an_extra_flag_without_a_rest_field_is_refused(tmp_path):
    spec = JobSpec(command=("true",), runtime="none", resources=Resources(extra_args=("--mail-type=END",)))
    with pytest.raises(SpecError, match="'--mail-type' has no slurmrestd field; slurm-rest takes --constraint"):
        backend(tmp_path).submit_request(request(spec))
    spec = JobSpec(command=("true",), runtime="none", resources=Resources(extra_args=("--nice=high",)))
    with pytest.raises(SpecError, match="not a whole number"):
        backend(tmp_path).submit_request(request(spec))


def test_no_time_limit_is_infinite(tmp_path):
    spec = JobSpec(command=("true",), runtime="none", resources=Resources(time_limit=0))
    assert backend(tmp_path).submit_request(request(spec)).time_limit_minutes == 0


# --- unit: a verbatim script's #SBATCH lines ---------------------------------------------------

FIG2 = """#!/bin/bash
#SBATCH -J gibi230
#SBATCH -N 1
#SBATCH --ntasks-per-node=1
#SBATCH --time=00:05:00
#SBATCH -p debug
#SBATCH --output="gibi230_segmentation.out"
#SBATCH --error=gibi230_segmentation.err
#SBATCH --mem 4G --gres=gpu:v100:2 -c4
#SBATCH --comment=mine
# a comment between directives
echo "segmenting"
#SBATCH --time=99
"""


def test_directives_are_read_as_sbatch_reads_them():
    assert directive_options(FIG2)[:3] == [("--job-name", "gibi230"), ("--nodes", "1"), ("--ntasks-per-node", "1")]
    fields, ignored = directive_fields(FIG2)
    assert fields == {"name": "gibi230", "nodes": 1, "time_limit_minutes": 5, "partition": "debug",
                      "stdout": "gibi230_segmentation.out", "stderr": "gibi230_segmentation.err",
                      "memory_per_node_mb": 4096, "gpu_type": "v100", "gpus": 2, "cpus_per_task": 4}
    assert ignored == ["--ntasks-per-node=1"]  # named in the pod log; --comment is the connector's


@pytest.mark.parametrize(("text", "minutes"), [
    ("5", 5), ("5:30", 6), ("1:00:00", 60), ("2-0", 2880), ("1-02:03", 1563), ("1-00:00:01", 1441),
    ("UNLIMITED", 0), ("infinite", 0), ("soon", None), ("1:2:3:4", None),
])
def test_time_forms(text, minutes):
    assert parse_time(text) == minutes


def test_verbatim_submit_fields_put_outputs_in_the_job_dir(tmp_path, caplog):
    spec = JobSpec(script=FIG2, pod=PodRef(namespace="ns", name="p", uid="uid"))
    rest = backend(tmp_path, host="login")
    rest._home = "/home/hpcuser"  # what SSH would say
    fields = rest.submit_request(request(spec))
    assert fields.environment["HOME"] == "/home/hpcuser"
    assert fields.workdir == "/scratch/hpcuser/hpco-uid"
    assert fields.stdout == "/scratch/hpcuser/hpco-uid/gibi230_segmentation.out"
    assert fields.name == "gibi230" and fields.comment == "hpco-uid"
    assert fields.script == FIG2  # as written
    assert "--ntasks-per-node=1" in caplog.text
    bare = rest.submit_request(request(JobSpec(script="#!/bin/sh\necho\n", pod=spec.pod)))
    assert bare.stdout == "/scratch/hpcuser/hpco-uid/slurm-%j.out" and bare.name == "hpco-uid"


# --- unit: the status mapping ----------------------------------------------------------------


def fixture_job(version: str, name: str) -> RestJob:
    return parse_jobs(json.loads((FIXTURES / version / f"{name}.json").read_text())["response"])[0]


@pytest.mark.parametrize("version", ["v0.0.38", "v0.0.41"])
def test_status_mapping(version):
    failed = status_of(fixture_job(version, "job-failed-exit7"))
    assert (failed.state, failed.exit_code, failed.signal, failed.reason) == (JobState.FAILED, 7, 0, "NonZeroExitCode")
    killed = status_of(fixture_job(version, "job-failed-sigkill"))
    assert (killed.state, killed.exit_code, killed.signal) == (JobState.FAILED, 0, 9)
    timeout = status_of(fixture_job(version, "job-timeout"))
    assert (timeout.state, timeout.signal) == (JobState.TIMEOUT, 15)
    pending = status_of(fixture_job(version, "job-pending-held"), position=3)
    assert (pending.state, pending.queue_position, pending.exit_code, pending.reason) == \
        (JobState.PENDING, 3, None, "JobHeldUser")
    running = status_of(fixture_job(version, "job-running"), position=3)
    assert (running.state, running.queue_position, running.node) == (JobState.RUNNING, None, "vm")
    assert running.start_estimate and running.start_estimate.startswith("2026-")


def test_completing_and_requeued():
    completing = status_of(fixture_job("v0.0.41", "job-completing"))
    assert (completing.state, completing.payload_ended, completing.raw_state) == (JobState.RUNNING, True, "COMPLETING")
    requeued = status_of(fixture_job("v0.0.41", "job-requeued"))
    assert (requeued.state, requeued.requeued) == (JobState.PENDING, True)


# --- unit: the token and the profile ---------------------------------------------------------


def test_the_secrets_token_is_read_for_every_request(tmp_path):
    one, two = jwt({"exp": time.time() + 600, "sun": "hpcuser"}), jwt({"exp": time.time() + 900, "sun": "hpcuser"})
    rest = backend(tmp_path, token=one)
    assert rest._token() == one
    (tmp_path / "token").write_text(f"SLURM_JWT={two}\n")  # as scontrol prints it: accepted
    assert rest._token() == two
    assert backend(tmp_path, token=jwt({"exp": time.time() + 60, "sun": "root"}))._token()  # root acts for all


@pytest.mark.parametrize(("token", "error", "says"), [
    ("not-a-token-at-all", ProfileError, "`token` in its Secret is not a JWT"),
    ("", ProfileError, "`token` in its Secret is not a JWT"),
    (jwt({"exp": 1_700_000_000, "sun": "hpcuser"}), AuthError, "expired at 2023-11-14 22:13:20 UTC"),
    (jwt({"exp": FAR_FUTURE, "sun": "nobody"}), AuthError, "minted for user 'nobody', not for `user` 'hpcuser'"),
])
def test_a_bad_token_is_named_without_its_value(tmp_path, token, error, says):
    with pytest.raises(error) as caught:
        backend(tmp_path, token=token)._token()
    assert says in caught.value.message and "profile 'site'" in caught.value.message
    if token:
        assert token not in caught.value.message and token[-20:] not in caught.value.message


def test_without_a_token_and_without_ssh_the_profile_says_what_it_needs(tmp_path):
    with pytest.raises(ProfileError, match="needs `token` in its Secret .* or SSH access"):
        backend(tmp_path)._token()


@pytest.mark.parametrize(("conf", "says"), [
    ({"endpoint": "127.0.0.1:6820"}, "needs `endpoint`, slurmrestd's URL"),
    ({"endpoint": None}, "needs `endpoint`"),
    ({"user": ""}, "needs `user`"),
    ({"user": "-oProxyCommand=x"}, "needs `user`"),
    ({"workdir": "relative/dir"}, "without SSH access needs `workdir`, an absolute directory"),
    ({"token_lifespan": "soon", "host": "login"}, "`token_lifespan` 'soon' is not a number of seconds"),
    ({"api_version": "0.0.38"}, "'0.0.38' is not an API version like v0.0.38"),
    ({"api_version": "v0.0.39"}, "api_version v0.0.39 is not supported by this connector"),
])
def test_profile_errors_name_the_key(tmp_path, conf, says):
    rest = backend(tmp_path, token=jwt({"exp": time.time() + 600, "sun": "hpcuser"}), **conf)
    with pytest.raises(ProfileError, match=says.replace("(", r"\(")):
        if "workdir" in conf:
            rest.workdir()
        elif "token_lifespan" in conf:
            (tmp_path / "token").unlink()
            rest._lifespan()
        elif "api_version" in conf:
            rest._ensure_version(first=True)
        else:
            rest._send("GET", "/openapi/v3", "test", first=True)


# --- against the testbed's slurmrestd ----------------------------------------------------------

def live(test):
    """Against the testbed (root; `-m slurm`)."""
    return pytest.mark.slurm(pytest.mark.skipif(os.geteuid() != 0, reason="the testbed needs root")(test))


@pytest.fixture(scope="module")
def rest_profile(testbed_info, tmp_path_factory) -> Path:
    from testbed import profile

    directory = tmp_path_factory.mktemp("slurm-rest-profile")
    profile.write_dir(directory, "slurm-rest", "127.0.0.1")
    return directory


def variant(source: Path, target: Path, drop: tuple[str, ...] = (), token: str | None = None, **conf) -> Path:
    """A copy of the profile: keys dropped from configuration/Secret, settings changed."""
    shutil.copytree(source, target)
    settings = json.loads((target / "configuration").read_text())
    for key in drop:
        settings.pop(key, None)
        (target / key).unlink(missing_ok=True)
    settings.update(conf)
    (target / "configuration").write_text(json.dumps(settings))
    if token is not None:
        (target / "token").write_text(token)
    return target


@pytest.fixture
def connector(run_connector):
    """run_connector, and no job left behind: the shared testbed has two CPUs."""
    started = []

    def launch(*args, **kwargs):
        run = run_connector(*args, **kwargs)
        started.append(run)
        return run

    yield launch
    for run in started:
        if (run.state_dir / "job.json").exists():
            subprocess.run(["scancel", run.job_id], capture_output=True)


def tagged(tag: str) -> list[str]:
    from tests.contract.targets import _slurm_jobs_tagged

    return _slurm_jobs_tagged(tag)


def bash(script: str, **extra) -> dict:
    return {"command": ["bash", "-c", script], "runtime": "none", "poll_interval": 1, **extra}


def wait_for_log(run, text: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while text not in run.log:
        assert time.monotonic() < deadline and run.proc.poll() is None, run.log
        time.sleep(0.1)


@live
@pytest.mark.parametrize("ssh", [True, False], ids=["output-over-ssh", "rest-only"])
def test_a_token_rotated_mid_run_is_used_without_a_restart(rest_profile, connector, tmp_path, ssh):
    """The job outlives its first token: the connector reports the expiry, keeps following,
    and picks up the rotated Secret at its next request."""
    from testbed import api as testbed

    drop = () if ssh else ("host", "port", "ssh-privatekey", "known_hosts")
    profile = variant(rest_profile, tmp_path / "profile", drop=drop, token=testbed.rest_token(lifespan=8))
    run = connector(bash("echo started; sleep 20; echo finished; exit 4"), profile)
    wait_for_log(run, "expired at")  # the old token, reported; nothing ends
    assert run.proc.poll() is None
    fresh = testbed.rest_token(lifespan=600)
    (profile / "token").write_text(fresh)  # as the kubelet updates a mounted Secret
    assert run.wait(timeout=300) == 4, run.log  # a shared testbed may queue it a while
    assert "contact with the HPC side restored" in run.log
    if ssh:
        assert "finished\n" in run.stdout
    for secret in (fresh, (tmp_path / "profile" / "token").read_text()):
        assert secret[-24:] not in run.log


@live
def test_tokens_minted_over_ssh_are_renewed_before_they_expire(rest_profile, tmp_path):
    """No `token` in the Secret: `scontrol token lifespan=N` over SSH, again when it nears its end."""
    from connector.profile import load_profile_dir

    profile_dir = variant(rest_profile, tmp_path / "profile", drop=("token",), token_lifespan=60)
    rest = backend_class("slurm-rest")(load_profile_dir(profile_dir), runtime_dir=str(tmp_path))
    handle = None
    try:
        pod = PodRef(namespace="t", name="m", uid=str(uuid.uuid4()))
        spec = JobSpec(command=("sleep", "30"), runtime="none", pod=pod)
        req = JobRequest(spec, f"{rest.workdir()}/hpco-{spec.pod.uid}")
        handle = rest.submit(req)
        assert rest.tokens_minted == 1
        assert rest.status(handle.job_id).state in (JobState.PENDING, JobState.RUNNING)
        assert rest.tokens_minted == 1  # still fresh: reused
        token, _ = rest._minted
        rest._minted = (token, time.time() + 10)  # as if 50 s had passed: a fifth of its life left
        assert rest.status(handle.job_id).state in (JobState.PENDING, JobState.RUNNING)
        assert rest.tokens_minted == 2  # renewed (no token value in an assertion: it would be printed)
        assert rest._minted[1] > time.time() + 40
        rest.cancel(handle.job_id)
        deadline = time.monotonic() + 60
        while not rest.status(handle.job_id).state.ended:
            assert time.monotonic() < deadline
            time.sleep(0.3)
        assert rest.status(handle.job_id).state is JobState.CANCELLED
    finally:
        rest.close()
        if handle is not None:
            subprocess.run(["scancel", handle.job_id], capture_output=True)


@live
def test_without_ssh_the_pod_log_says_once_where_the_output_is(rest_profile, connector, tmp_path):
    profile = variant(rest_profile, tmp_path / "profile", drop=("host", "port", "ssh-privatekey", "known_hosts"))
    uid = str(uuid.uuid4())
    run = connector(bash("echo hello from rest; exit 3"), profile, uid=uid)
    assert run.wait(timeout=300) == 3, run.log
    where = f"/home/hpcuser/hpc-offload/hpco-{uid}.out"
    assert run.log.count("cannot read a job's output from here") == 1
    assert f"it is at {where} (stderr: /home/hpcuser/hpc-offload/hpco-{uid}.err) on the HPC side" in run.log
    assert run.stdout == ""
    assert Path(where).read_text() == "hello from rest\n"  # the job made its dir and wrote there
    assert Path(f"/home/hpcuser/hpc-offload/hpco-{uid}/exit-status").read_text().strip() == "3"


@live
def test_a_verbatim_scripts_sbatch_lines_reach_slurm(rest_profile, connector):
    uid = str(uuid.uuid4())
    script = ("#!/bin/bash\n#SBATCH --time=00:03:00\n#SBATCH --output=custom-%j.log\n#SBATCH -J rest-verbatim\n"
              "echo from the verbatim script\necho to stderr >&2\n")
    run = connector({"script": script, "poll_interval": 1}, rest_profile, uid=uid)
    assert run.wait(timeout=300) == 0, run.log
    assert "from the verbatim script\n" in run.stdout and "to stderr\n" in run.stdout  # one file for both
    fields = subprocess.run(["scontrol", "show", "job", "-o", run.job_id], capture_output=True, text=True).stdout
    assert "TimeLimit=00:03:00" in fields and "JobName=rest-verbatim" in fields
    assert f"StdOut=/home/hpcuser/hpc-offload/hpco-{uid}/custom-{run.job_id}.log" in fields


@live
def test_many_statuses_in_one_request_and_cancel(rest_profile, tmp_path):
    from connector.profile import load_profile_dir

    rest = backend_class("slurm-rest")(load_profile_dir(rest_profile), runtime_dir=str(tmp_path))
    ids: list[str] = []
    try:
        for _ in range(3):
            uid = str(uuid.uuid4())
            spec = JobSpec(command=("sleep", "60"), runtime="none", pod=PodRef(namespace="t", name="b", uid=uid),
                           resources=Resources(extra_args=("--nice=100",)))
            ids.append(rest.submit(JobRequest(spec, f"{rest.workdir()}/hpco-{uid}")).job_id)
        before = rest.http_requests
        statuses = rest.statuses(ids)
        assert rest.http_requests - before == 1  # one GET /jobs answers for all three
        assert {s.state for s in statuses.values()} <= {JobState.PENDING, JobState.RUNNING}
        rest.cancel_many(ids)  # v0.0.38: one DELETE a job (v0.0.40+: one for all)
        deadline = time.monotonic() + 60
        while not all(s.state.ended for s in rest.statuses(ids).values()):
            assert time.monotonic() < deadline
            time.sleep(0.3)
        assert {s.state for s in rest.statuses(ids).values()} == {JobState.CANCELLED}
        assert rest.statuses(["4000000"])["4000000"].state is JobState.UNKNOWN
    finally:
        rest.close()
        if ids:
            subprocess.run(["scancel", *ids], capture_output=True)


BAD = {
    "malformed-token": ({"token": "SLURM_JWT=this.is-not.a-jwt"}, 78, "`token` in its Secret is not a JWT"),
    "expired-token": ({"token_lifespan_s": 1}, 77, "expired at"),
    "other-users-token": ({"token_user": "nobody"}, 77, "minted for user 'nobody'"),
    "no-token-no-ssh": ({"drop": ("token", "host", "port", "ssh-privatekey", "known_hosts")}, 78,
                        "needs `token` in its Secret"),
    "unreachable-endpoint": ({"conf": {"endpoint": "http://127.0.0.1:6899"}}, 78,
                             "`endpoint` http://127.0.0.1:6899 does not answer (Connection refused)"),
    "not-a-url": ({"conf": {"endpoint": "slurmrestd:6820"}}, 78, "needs `endpoint`, slurmrestd's URL"),
    "unserved-api-version": ({"conf": {"api_version": "v0.0.41"}}, 78,
                             "api_version v0.0.41 is not served by this slurmrestd "
                             "(it serves: v0.0.38, v0.0.37, v0.0.36)"),
    "relative-workdir-rest-only": ({"drop": ("host", "port", "ssh-privatekey", "known_hosts"),
                                    "conf": {"workdir": "hpc-offload"}}, 78,
                                   "without SSH access needs `workdir`, an absolute directory"),
}


@live
@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_profile_ends_before_anything_is_submitted(rest_profile, connector, tmp_path, case):
    from testbed import api as testbed

    how, code, says = BAD[case]
    token = how.get("token")
    if "token_lifespan_s" in how:
        token = testbed.rest_token(lifespan=how["token_lifespan_s"])
        time.sleep(1.5)
    if "token_user" in how:
        token = testbed.rest_token(user=how["token_user"], lifespan=600)
    profile = variant(rest_profile, tmp_path / "profile", drop=how.get("drop", ()), token=token,
                      **how.get("conf", {}))
    uid = str(uuid.uuid4())
    run = connector(bash("echo never"), profile, uid=uid)
    assert run.wait(timeout=60) == code, run.log
    assert says in run.log, run.log
    assert run.termination["reason"] == ("InvalidProfile" if code == 78 else "AuthenticationRefused")
    assert tagged(f"hpco-{uid}") == []
    secret = (profile / "token").read_text().strip() if (profile / "token").exists() else ""
    assert not secret or secret[-20:] not in run.log

