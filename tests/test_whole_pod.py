"""Whole pods on the real testbed (issue 15): one real `hpc-connector run` per container, started
as the kubelet starts a pod's containers — init containers one after the other, each once the
one before it exited 0, then every app container at once — all following one HPC job.

Charliecloud runs the profile's image (its mount points must exist in the image: Charliecloud
0.31 cannot make them, docs/whole-pods.md); runtime `none` binds nothing and names each volume's
directory in HPCO_VOLUME_<NAME>. What is checked is what the pod would show — each container's
own output and exit code — and what the manager and the job directory say.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO, ConnectorRun

pytestmark = [pytest.mark.slurm]

PROFILES = ("slurm-local", "sge-local")


@dataclass
class Pod:
    """The connectors of one pod, by container name, in the order the kubelet started them."""

    uid: str
    work: Path
    runs: dict[str, ConnectorRun] = field(default_factory=dict)

    def wait(self, timeout: float = 180) -> dict[str, int]:
        return {name: run.wait(timeout) for name, run in self.runs.items()}

    def out(self, name: str) -> str:
        return self.runs[name].stdout

    def log(self) -> str:
        return "\n".join(f"--- {name}\n{run.log}" for name, run in self.runs.items())

    @property
    def job_id(self) -> str:
        leader = next(iter(self.runs.values()))
        return leader.job_id


def kubelet_volume(root: Path, files: dict[str, str]) -> None:
    """A ConfigMap/Secret volume as the kubelet's atomic writer leaves it: the keys are links
    into `..data`, a link to a timestamped directory."""
    stamp = root / "..2026_11_30_10_00_00.000000001"
    for key, text in files.items():
        (stamp / key).parent.mkdir(parents=True, exist_ok=True)
        (stamp / key).write_text(text)
    (root / "..data").symlink_to(stamp.name)
    for top in {key.split("/")[0] for key in files}:
        (root / top).symlink_to(f"..data/{top}")


def launch_pod(root: Path, profile_dir: Path, spec: dict, volumes: dict[str, dict[str, str]] | None = None,
               env: dict[str, str] | None = None, stop_sidecars: bool = True, uid: str | None = None,
               every_env: dict[str, str] | None = None, started: list[Pod] | None = None) -> Pod:
    """Start a pod's connectors as the kubelet would; `env` is the leader's (every container's
    variables, prefixed), `every_env` every container's (the relay's URL and token)."""
    uid = uid or str(uuid.uuid4())
    work = root / uid[:8]
    (work / "state").mkdir(parents=True)
    full = {"container": "*", "env_prefix": "HPCO_ENV_", **spec,
            "pod": {"namespace": "tests", "name": "whole", "uid": uid}}
    for part in full["parts"]:  # as the webhook writes it; the profile's image runs
        part.setdefault("image", "python:3.11-slim")
    (work / "job-spec.json").write_text(json.dumps(full))
    for name, content in (volumes or {}).items():
        (work / "volumes" / name).mkdir(parents=True)
        kubelet_volume(work / "volumes" / name, content)
    pod = Pod(uid, work)
    if started is not None:
        started.append(pod)
    parts = full["parts"]
    leader = next((p["name"] for p in parts if p.get("kind", "app") != "app"), parts[0]["name"])

    def start(part: dict) -> ConnectorRun:
        name = part["name"]
        environment = {**os.environ, "USER": os.environ.get("USER", "root"), **(every_env or {})}
        if name == leader:
            environment.update(env or {})
        argv = [sys.executable, "-m", "connector.cli", "run", "--spec", str(work / "job-spec.json"),
                "--profile", str(profile_dir), "--state-dir", str(work / "state"),
                "--termination-log", str(work / f"termination-{name}"), "--part", name,
                "--volumes-dir", str(work / "volumes"), *(["--leader"] if name == leader else [])]
        proc = subprocess.Popen(argv, cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        run = ConnectorRun(proc, full, work / "state" / f"part-{name}", work / f"termination-{name}")
        run.start_readers()
        pod.runs[name] = run
        return run

    sidecars = []
    for part in parts:  # the kubelet: init containers in order, each to its end
        kind = part.get("kind", "app")
        if kind == "init":
            if start(part).wait(timeout=180) != 0:
                return pod  # a failed init container: the pod fails, nothing else starts
        elif kind == "sidecar":
            sidecars.append(start(part))
    apps = [start(part) for part in parts if part.get("kind", "app") == "app"]
    if stop_sidecars and sidecars:
        for app in apps:
            app.wait(timeout=180)
        for sidecar in reversed(sidecars):  # the kubelet stops sidecars once the apps ended
            sidecar.proc.send_signal(signal.SIGTERM)
    return pod


def stop_pods(pods: list[Pod]) -> None:
    for pod in pods:
        for run in pod.runs.values():
            if run.proc.poll() is None:
                run.proc.kill()
                run.proc.wait()


@pytest.fixture
def run_pod(tmp_path, profiles):
    started: list[Pod] = []

    def launch(spec: dict, profile: str, **options) -> Pod:
        return launch_pod(tmp_path, profiles[profile], spec, started=started, **options)

    yield launch
    stop_pods(started)


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def shared_volume_spec(runtime: str) -> dict:
    """A writer and a reader sharing an emptyDir at /mnt (a mount point the image has)."""
    where = "$HPCO_VOLUME_SHARED" if runtime == "none" else "/mnt"
    return {"runtime": runtime, "volumes": [{"name": "shared", "kind": "emptyDir"}], "parts": [
        {"name": "writer", "command": sh(f"sleep 1; echo 'from the writer' > {where}/note.tmp; "
                                         f"mv {where}/note.tmp {where}/note; echo wrote"),
         "mounts": [{"volume": "shared", "path": "/mnt"}]},
        {"name": "reader", "command": sh(f"while [ ! -e {where}/note ]; do sleep 0.2; done; "
                                         f"echo read: $(cat {where}/note); echo reader-stderr >&2"),
         "mounts": [{"volume": "shared", "path": "/mnt", "read_only": True}]},
    ]}


@pytest.mark.parametrize("runtime", ["charliecloud", "none"])
@pytest.mark.parametrize("profile", PROFILES)
def test_two_containers_share_an_empty_dir(run_pod, runtime, profile):
    pod = run_pod(shared_volume_spec(runtime), profile)
    assert pod.wait() == {"writer": 0, "reader": 0}, pod.log()
    assert pod.out("writer") == "wrote\n"
    assert pod.out("reader") == "read: from the writer\n"
    reader = pod.runs["reader"]
    assert "reader-stderr\n" in reader.stderr_lines and "reader-stderr" not in reader.stdout
    assert "submitted HPC job" in pod.runs["writer"].log and "submitted HPC job" not in reader.log
    assert "found by its tag" in reader.log or "following HPC job" in reader.log
    assert pod.runs["writer"].job_id == reader.job_id  # one HPC job for the pod


@pytest.mark.parametrize("profile", ["slurm-local", "slurm-ssh", "sge-ssh-openssh"])
def test_config_map_and_secret_volumes_are_read_by_two_containers(run_pod, profile):
    """Both containers mount the ConfigMap and the Secret; the copies on the HPC side (over
    SFTP, the ssh client, or locally) are 0600 in 0700 directories while the job runs, and
    gone after it."""
    spec = {
        "runtime": "charliecloud",
        "volumes": [{"name": "config", "kind": "files"}, {"name": "creds", "kind": "files"}],
        "parts": [
            {"name": "app", "command": sh("cat /srv/settings.ini /srv/nested/deep.txt; cat /opt/token; sleep 3"),
             "mounts": [{"volume": "config", "path": "/srv", "read_only": True},
                        {"volume": "creds", "path": "/opt", "read_only": True}]},
            {"name": "reader", "command": sh("cat /media/settings.ini; cat /mnt/token; sleep 3"),
             "mounts": [{"volume": "config", "path": "/media"}, {"volume": "creds", "path": "/mnt"}]},
        ],
    }
    volumes = {"config": {"settings.ini": "mode = fast\n", "nested/deep.txt": "deep\n"},
               "creds": {"token": "s3cr3t-value\n"}}
    pod = run_pod(spec, profile, volumes=volumes)
    pod.runs["app"].wait_for_stderr("running", timeout=120)
    job_dir = Path(json.loads((pod.work / "state" / "part-app" / "job.json").read_text())["job_dir"])
    copied = {str(p.relative_to(job_dir / "volumes")): oct(p.stat().st_mode & 0o777)
              for p in (job_dir / "volumes").rglob("*")}
    assert copied == {"config": "0o700", "config/settings.ini": "0o600", "config/nested": "0o700",
                      "config/nested/deep.txt": "0o600", "creds": "0o700", "creds/token": "0o600"}
    assert oct(job_dir.stat().st_mode & 0o777) == "0o700"
    assert pod.wait() == {"app": 0, "reader": 0}, pod.log()
    assert pod.out("app") == "mode = fast\ndeep\ns3cr3t-value\n"
    assert pod.out("reader") == "mode = fast\ns3cr3t-value\n"
    assert not (job_dir / "volumes").exists()  # removed at the end, as the pod's volumes are
    assert "s3cr3t-value" not in (job_dir / "job.sh").read_text()
    assert "s3cr3t-value" not in pod.log()


@pytest.mark.parametrize("runtime", ["charliecloud", "none"])
def test_an_init_container_prepares_what_the_app_reads(run_pod, runtime):
    where = "$HPCO_VOLUME_WORK" if runtime == "none" else "/srv"
    spec = {
        "runtime": runtime,
        "volumes": [{"name": "work", "kind": "emptyDir"}],
        "parts": [
            {"name": "prepare", "kind": "init", "command": sh(f"echo input-data > {where}/input; "
                                                              "date +%s.%N; echo prepared")},
            {"name": "app", "command": sh(f"date +%s.%N; cat {where}/input; echo $GREETING")},
        ],
    }
    for part in spec["parts"]:
        part["mounts"] = [{"volume": "work", "path": "/srv"}]
    spec["parts"][1]["env_passthrough"] = ["GREETING"]
    pod = run_pod(spec, "slurm-local", env={"HPCO_ENV_1_GREETING": "hello from the pod",
                                           "HPCO_ENV_0_GREETING": "not the app's"})
    assert pod.wait() == {"prepare": 0, "app": 0}, pod.log()
    prepared_at, said = pod.out("prepare").split("\n", 1)
    assert said == "prepared\n"
    started_at, rest = pod.out("app").split("\n", 1)
    assert float(started_at) >= float(prepared_at)  # the app started after the init ended
    assert rest == "input-data\nhello from the pod\n"
    assert "submitted HPC job" in pod.runs["prepare"].log  # the init container leads


@pytest.mark.parametrize("profile", PROFILES)
def test_a_failing_second_container_fails_the_pod_with_its_own_code(run_pod, profile):
    spec = {"runtime": "none", "parts": [
        {"name": "fine", "command": sh("echo fine")},
        {"name": "broken", "command": sh("echo about to fail; echo 'Error: no input' >&2; exit 3")},
    ]}
    pod = run_pod(spec, profile)
    assert pod.wait() == {"fine": 0, "broken": 3}, pod.log()
    report = json.loads((pod.work / "termination-broken").read_text())
    assert report["exitCode"] == 3 and "container broken (app) exited 3" in report["message"]
    assert report["stderrTail"] == "Error: no input\n"
    assert json.loads((pod.work / "termination-fine").read_text())["exitCode"] == 0


def test_a_failing_init_container_ends_the_pod_before_the_apps(run_pod):
    spec = {"runtime": "none", "parts": [
        {"name": "check", "kind": "init", "command": sh("echo checking; exit 4")},
        {"name": "app", "command": sh("echo never")},
    ]}
    pod = run_pod(spec, "slurm-local")
    assert pod.wait() == {"check": 4}, pod.log()
    job_dir = Path(json.loads((pod.work / "state" / "part-check" / "job.json").read_text())["job_dir"])
    deadline = time.monotonic() + 30
    while not (job_dir / "exit-status").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert (job_dir / "exit-status").read_text() == "4\n"
    assert not (job_dir / "part-app.out").exists()  # the app never ran


def test_a_native_sidecar_runs_beside_the_app_and_stops_after_it(run_pod):
    spec = {"runtime": "none", "volumes": [{"name": "logs", "kind": "emptyDir"}], "parts": [
        {"name": "shipper", "kind": "sidecar",
         "command": sh("trap 'echo shipper stopped; exit 0' TERM; echo shipper up; "
                       "while :; do sleep 0.2; done")},
        {"name": "app", "command": sh("sleep 2; echo app done")},
    ]}
    pod = run_pod(spec, "slurm-local")
    assert pod.wait() == {"shipper": 0, "app": 0}, pod.log()
    assert pod.out("shipper") == "shipper up\nshipper stopped\n", pod.log()
    assert "cancelling" not in pod.runs["shipper"].log, pod.log()  # the job stopped it, nobody cancelled


def test_a_stop_that_arrives_as_a_connector_ends_does_not_kill_its_exit(run_pod):
    """The kubelet stops a native sidecar as the job stops it too: the connector may be on its
    way out with its part's code when SIGTERM comes; that code stays the container's."""
    spec = {"runtime": "none", "parts": [{"name": "only", "command": sh("echo done")}]}
    pod = run_pod(spec, "slurm-local")
    run = pod.runs["only"]
    deadline = time.monotonic() + 60
    while not any("hpc-connector INFO exit 0" in line for line in run.stderr_lines):
        assert time.monotonic() < deadline and run.proc.poll() is None, pod.log()
        time.sleep(0.002)
    run.proc.send_signal(signal.SIGTERM)
    assert run.wait() == 0, pod.log()


def test_a_signal_to_any_container_cancels_the_pods_job(run_pod):
    from testbed import api

    spec = {"runtime": "none", "parts": [{"name": "a", "command": sh("echo a; sleep 300")},
                                         {"name": "b", "command": sh("echo b; sleep 300")}]}
    pod = run_pod(spec, "slurm-local")
    pod.runs["b"].wait_for_stderr("running")
    job_id = pod.runs["b"].job_id
    assert int(job_id) in api.queued_job_ids()
    pod.runs["b"].proc.send_signal(signal.SIGTERM)  # the pod is deleted: every container gets it
    pod.runs["a"].proc.send_signal(signal.SIGTERM)
    assert pod.wait(timeout=90) == {"a": 143, "b": 143}, pod.log()
    assert int(job_id) not in api.queued_job_ids()


def test_followers_end_when_the_leader_cannot_submit(run_pod):
    """A ConfigMap volume the kubelet did not mount: the leader ends with a clear error before
    submitting, and the follower, which would otherwise wait, ends with the same code."""
    spec = {"runtime": "none", "volumes": [{"name": "config", "kind": "files"}], "parts": [
        {"name": "lead", "command": sh("true"), "mounts": [{"volume": "config", "path": "/srv"}]},
        {"name": "follow", "command": sh("true")}]}
    pod = run_pod(spec, "slurm-local")  # no volume directory given
    codes = pod.wait(timeout=60)
    assert codes["lead"] == 64 and codes["follow"] == 64, pod.log()
    assert "volume 'config': cannot read it" in pod.runs["lead"].log
    assert "container lead could not submit the pod's HPC job" in pod.runs["follow"].log
