"""The `rimrock` backend against the testbed's Rimrock-compatible server (real SLURM behind
it): the paper's own CLI form with its Fig. 2 script, bad profiles, a rotated proxy, the
environment, and what a status of many jobs costs. The contract suite (tests/contract) runs
the rest (streaming, exit codes, signals, cancel, reattach, a refused proxy).

Needs root (the testbed); `pytest -m slurm`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(os.geteuid() != 0, reason="the testbed needs root"),
]

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def rimrock_profile(testbed_info, tmp_path_factory) -> Path:
    from testbed import profile

    directory = tmp_path_factory.mktemp("rimrock-profile")
    profile.write_dir(directory, "rimrock", "127.0.0.1")
    return directory


def _conf(profile_dir: Path) -> dict:
    return json.loads((profile_dir / "configuration").read_text())


def _tagged(tag: str) -> list[str]:
    from tests.contract.targets import _rimrock_jobs_tagged

    return _rimrock_jobs_tagged(tag)


def _squeue(job_id: str, fields: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "--states=all", "-j", job_id.split(".")[0], "-O", fields],
                         capture_output=True, text=True, check=True).stdout
    return [x.strip() for x in out.split("|")]


def fig2_script(tag: str, code: int = 0) -> str:
    """The paper's Fig. 2 job (gibi230 segmentation), its payload adapted to the testbed."""
    return ("#!/bin/bash\n"
            f"#SBATCH -J gibi230-{tag}\n"
            "#SBATCH -N 1\n"
            "#SBATCH --ntasks-per-node=1\n"
            "#SBATCH --time=00:05:00\n"
            "#SBATCH -p debug\n"
            f'#SBATCH --output="gibi230_segmentation-{tag}.out"\n'
            f'#SBATCH --error="gibi230_segmentation-{tag}.err"\n'
            'echo "segmenting gibi230 on $(hostname)"\n'
            "echo 'a warning' >&2\n"
            f"exit {code}\n")


def simulate(profile_dir: Path, job: dict, tmp_path: Path, period: str = "2") -> subprocess.CompletedProcess:
    """The paper's command line, as its Fig. 3 Job runs it (credentials: a mounted dir)."""
    conf = {k: v for k, v in _conf(profile_dir).items() if k != "host"}
    termination = tmp_path / "termination"
    return subprocess.run(
        [sys.executable, "-m", "connector.cli", "--backend", "rimrock", "--backend-conf", json.dumps(conf),
         "simulate", "--job-config", json.dumps(job), "--monitoring-period", period, "--print-logs",
         "--credentials", str(profile_dir), "--state-dir", str(tmp_path / "state")],
        cwd=REPO, capture_output=True, text=True, timeout=180,
        env={**os.environ, "HPC_OFFLOAD_TERMINATION_LOG": str(termination)},
    )


def fig2_job_config() -> dict:
    """The job config of the paper's Fig. 2 as examples/paper/ rebuilds it (one source)."""
    import yaml

    docs = yaml.safe_load_all((REPO / "examples" / "paper" / "fig2-configmaps.yaml").read_text())
    job = next(d for d in docs if d["metadata"]["name"] == "gibi230-job")
    return json.loads(job["data"]["job_config"])


def test_the_papers_fig2_job_config_runs_through_simulate(rimrock_profile, tmp_path):
    from testbed.rimrock import service

    job = {**fig2_job_config(), "host": service.login_host()}
    done = simulate(rimrock_profile, job, tmp_path)
    assert done.returncode == 0, done.stderr
    job_id = json.loads((tmp_path / "state" / "job.json").read_text())["job_id"]
    assert job_id.endswith(f".{service.login_host()}")  # Rimrock's id
    number = job_id.split(".")[0]
    # --print-logs: the job's output at the end, stdout and stderr apart
    assert f"gibi230: segmenting case NB-0042 as job {number} on " in done.stdout
    assert "gibi230: segmentation done\n" in done.stdout
    assert "gibi230: a diagnostic line on stderr" in done.stderr
    name, stdout = _squeue(job_id, "Name:|,STDOUT:|")[:2]
    assert name == "gibi230"  # the script's own directives, kept
    assert stdout.endswith("/gibi230_segmentation.out")
    assert Path(stdout).read_text().startswith("gibi230: segmenting")
    assert json.loads((tmp_path / "termination").read_text())["exitCode"] == 0


def test_a_verbatim_scripts_exit_code_comes_from_slurm_through_rimrock(rimrock_profile, tmp_path):
    from testbed.rimrock import service

    done = simulate(rimrock_profile, {"host": service.login_host(),
                                      "script": fig2_script(uuid.uuid4().hex[:8], code=5)}, tmp_path)
    assert done.returncode == 5, done.stderr
    assert "exit code 5" in json.loads((tmp_path / "termination").read_text())["message"]


def test_without_the_process_api_a_verbatim_script_ends_as_rimrock_says(rimrock_profile):
    """A site that does not offer /api/process: FINISHED ends 0, ERROR ends 1 (documented)."""
    from connector.backends.base import JobRequest, JobState
    from connector.backends.rimrock import RimrockBackend
    from connector.outcome import outcome_of
    from connector.profile import load_profile_dir
    from connector.spec import JobSpec, PodRef

    backend = RimrockBackend(load_profile_dir(rimrock_profile))
    backend._process_api = False
    ends = {}
    for code in (0, 5):
        spec = JobSpec(script=f"#!/bin/bash\nexit {code}\n", pod=PodRef("t", "p", str(uuid.uuid4())))
        request = JobRequest(spec, f"{_conf(rimrock_profile)['workdir']}/hpco-{spec.pod.uid}")
        handle = backend.submit(request)
        deadline = time.monotonic() + 60
        while not (status := backend.status(handle.job_id)).state.ended:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        ends[code] = (status.state, outcome_of(status).exit_code)
    backend.close()
    assert ends == {0: (JobState.COMPLETED, 0), 5: (JobState.FAILED, 1)}


def test_status_of_many_jobs_is_one_request(rimrock_profile):
    from connector.backends.base import JobRequest, JobState
    from connector.backends.rimrock import RimrockBackend
    from connector.profile import load_profile_dir
    from connector.spec import JobSpec, PodRef

    backend = RimrockBackend(load_profile_dir(rimrock_profile))
    ids = []
    try:
        for _ in range(3):
            spec = JobSpec(command=("sleep", "120"), runtime="none", pod=PodRef("t", "p", str(uuid.uuid4())))
            ids.append(backend.submit(JobRequest(spec, f"{_conf(rimrock_profile)['workdir']}/hpco-{spec.pod.uid}"))
                       .job_id)
        before = backend.requests
        started = time.monotonic()
        found = backend.statuses(ids)
        took = time.monotonic() - started
        assert backend.requests == before + 1
        assert {s.state for s in found.values()} <= {JobState.PENDING, JobState.RUNNING}
        print(f"status of {len(ids)} jobs: 1 request, {took * 1000:.0f} ms")
        before = backend.requests
        backend.cancel_many(ids)  # Rimrock has no batch cancel: one request per job
        assert backend.requests == before + len(ids)
    finally:
        for job_id in ids:
            subprocess.run(["scancel", job_id.split(".")[0]], check=False)
        backend.close()


def test_the_env_reaches_the_job_and_rests_nowhere(rimrock_profile, run_connector):
    secret = f"s3cret-{uuid.uuid4().hex}"
    run = run_connector({"command": ["bash", "-c", 'echo "got $API_TOKEN"'], "runtime": "none",
                         "env": {"API_TOKEN": secret}}, rimrock_profile)
    assert run.wait() == 0, run.log
    assert f"got {secret}\n" in run.stdout
    job_dir = Path(json.loads((run.state_dir / "job.json").read_text())["job_dir"])
    assert not (job_dir / "job.env").exists()  # sourced and removed by the script
    for path in job_dir.iterdir():  # the script Rimrock keeps, the output, the marker
        if path.name != "output.log":
            assert secret not in path.read_text(errors="replace"), path
    assert secret not in run.log


def _profile_copy(source: Path, tmp_path: Path, **changes) -> Path:
    import shutil

    target = tmp_path / f"profile-{uuid.uuid4().hex[:6]}"
    shutil.copytree(source, target)
    conf = _conf(source)
    for key, value in changes.items():
        if value is None:
            conf.pop(key, None)
        else:
            conf[key] = value
    (target / "configuration").write_text(json.dumps(conf))
    return target


@pytest.mark.parametrize("case, changes, key", [
    ("no endpoint", {"endpoint": None}, "endpoint"),
    ("endpoint not a URL", {"endpoint": "rimrock.example:443"}, "endpoint"),
    ("no host", {"host": None}, "host"),
    ("relative workdir", {"workdir": "hpc-offload"}, "workdir"),
])
def test_a_bad_profile_ends_with_the_bad_profile_code_and_names_the_key(rimrock_profile, run_connector,
                                                                      tmp_path, case, changes, key):
    profile = _profile_copy(rimrock_profile, tmp_path, **changes)
    uid = str(uuid.uuid4())
    run = run_connector({"command": ["true"], "runtime": "none"}, profile, uid=uid)
    assert run.wait(timeout=60) == 78, run.log
    assert f"`{key}`" in run.log, (case, run.log)
    assert _tagged(f"hpco-{uid}") == []


@pytest.mark.parametrize("content", ["", "not a proxy at all\n", "-----BEGIN CERTIFICATE-----\nAAAA\n"])
def test_a_missing_or_malformed_proxy_names_the_key(rimrock_profile, run_connector, tmp_path, content):
    profile = _profile_copy(rimrock_profile, tmp_path)
    if content:
        (profile / "proxy").write_text(content)
    else:
        (profile / "proxy").unlink()
    uid = str(uuid.uuid4())
    run = run_connector({"command": ["true"], "runtime": "none"}, profile, uid=uid)
    assert run.wait(timeout=60) == 78, run.log
    assert "`proxy`" in run.log
    assert not content or content.strip() not in run.log
    assert _tagged(f"hpco-{uid}") == []


def test_an_unreachable_endpoint_ends_unreachable_after_submit_timeout(rimrock_profile, run_connector, tmp_path):
    profile = _profile_copy(rimrock_profile, tmp_path, endpoint="http://127.0.0.1:9", submit_timeout=3)
    run = run_connector({"command": ["true"], "runtime": "none"}, profile)
    assert run.wait(timeout=90) == 69, run.log
    assert "127.0.0.1:9" in run.log and run.termination["reason"] == "HPCUnreachable"


def test_a_rotated_proxy_is_used_without_a_restart(rimrock_profile, run_connector, tmp_path):
    """Mid-run the Secret's proxy turns expired (Rimrock refuses it: the pod keeps following),
    then a fresh one arrives: the next request uses it and the run completes."""
    import datetime as dt

    from testbed.rimrock import pki, service

    profile = _profile_copy(rimrock_profile, tmp_path)
    run = run_connector({"command": ["bash", "-c", "for i in $(seq 1 10); do echo line $i; sleep 1; done"],
                         "runtime": "none"}, profile)
    run.wait_for_stderr("running")
    user = pki.load_certificates((service.CA_DIR / "user-hpcuser.pem").read_bytes())[0]
    key = pki.load_key((service.CA_DIR / "user-hpcuser.key").read_bytes())
    expired = pki.make_proxy(user, key, 60, not_before=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    (profile / "proxy").write_text(expired)
    run.wait_for_stderr("refused the proxy")
    (profile / "proxy").write_text(service.proxy(lifetime=3600))
    assert run.wait(timeout=120) == 0, run.log
    assert [x for x in run.stdout.splitlines() if x.startswith("line")] == [f"line {i}" for i in range(1, 11)]
    assert "contact with the HPC side restored" in run.log
