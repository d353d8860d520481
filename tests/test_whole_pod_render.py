"""Golden whole-pod scripts, one per runtime (tests/golden/scripts/whole-pod-*.sh), as SLURM
renders them — and one as Grid Engine does (the body is shared; only directives and the env
file differ). What a site admin reviews; regenerate with UPDATE_GOLDEN=1 and read the diff.
The rendered body is run with bash here too: the order Kubernetes gives a pod's containers."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from connector.backends.base import JobRequest
from connector.backends.sge_local import SgeLocalBackend
from connector.backends.slurm_ssh import SlurmSSHBackend
from connector.errors import SpecError
from connector.pod_render import part_env_names, volume_env_name
from connector.profile import Profile
from connector.render import JobPaths
from connector.spec import JobSpec

GOLDEN = Path(__file__).parent / "golden" / "scripts"
PATHS = JobPaths("/home/alice/hpc-offload/hpco-0f1e2d3c-aaaa-bbbb-cccc-000000000001")
POD = {"namespace": "research", "name": "pipeline-x7k2p", "uid": "0f1e2d3c-aaaa-bbbb-cccc-000000000001"}
RUNTIMES = ("singularity", "apptainer", "charliecloud", "podman", "enroot", "none")
ENV = {"HPCO_P1_MODE": "", "HPCO_P1_TOKEN": "", "HPCO_P3_LEVEL": ""}


def pod_spec(runtime: str) -> dict:
    """An init container, a native sidecar and two app containers sharing an emptyDir; a
    ConfigMap (one mount by subPath) and a Secret."""
    return {
        "container": "*", "runtime": runtime, "env_prefix": "HPCO_ENV_", "pod": POD,
        "resources": {"cpus_per_task": 2, "memory_mb": 2048, "time_limit": 3600},
        "volumes": [{"name": "data", "kind": "emptyDir"}, {"name": "config", "kind": "files"},
                    {"name": "creds", "kind": "files"}],
        "parts": [
            {"name": "fetch", "kind": "init", "image": "docker.io/library/busybox:1.36",
             "command": ["sh", "-c", "echo input > /data/input"],
             "mounts": [{"volume": "data", "path": "/data"}]},
            {"name": "train", "image": "docker.io/library/python:3.11",
             "command": ["python3", "train.py"], "args": ["--mode=$(MODE)"], "working_dir": "/data",
             "env_passthrough": ["MODE", "TOKEN"],
             "mounts": [{"volume": "data", "path": "/data"},
                        {"volume": "config", "path": "/etc/app/settings.ini", "sub_path": "settings.ini"},
                        {"volume": "creds", "path": "/secrets", "read_only": True}]},
            {"name": "logs", "kind": "sidecar", "image": "docker.io/library/busybox:1.36",
             "command": ["sh", "-c", "tail -F /logs/train.log"],
             "mounts": [{"volume": "data", "path": "/logs", "sub_path": "logs", "read_only": True}]},
            {"name": "report", "image": "docker.io/library/python:3.11",
             "command": ["python3", "-c", "print(open('/etc/app/settings.ini').read())"],
             "env_passthrough": ["LEVEL"], "mounts": [{"volume": "config", "path": "/etc/app"}]},
        ],
    }


def render(runtime: str, backend: type = SlurmSSHBackend) -> str:
    spec = JobSpec.from_dict(pod_spec(runtime))
    instance = backend(Profile(backend=backend.type_name))
    return instance.render(JobRequest(spec, PATHS.job_dir, ENV))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_golden_whole_pod_script(runtime):
    check(f"whole-pod-{runtime}.sh", render(runtime))


def test_golden_whole_pod_script_for_grid_engine():
    check("whole-pod-sge.sh", render("apptainer", SgeLocalBackend))


def check(name: str, text: str) -> None:
    golden = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_whole_pod_scripts_are_valid_bash(runtime):
    subprocess.run(["bash", "-n"], input=render(runtime), text=True, check=True)


def test_env_values_never_reach_the_script_and_each_part_gets_only_its_own():
    spec = JobSpec.from_dict(pod_spec("podman"))
    text = SlurmSSHBackend(Profile(backend="slurm-ssh")).render(
        JobRequest(spec, PATHS.job_dir, {"HPCO_P1_TOKEN": "hunter2", "HPCO_P3_LEVEL": "debug"}))
    assert "hunter2" not in text and "debug" not in text
    assert part_env_names(["HPCO_P1_TOKEN", "HPCO_P3_LEVEL", "HPCO_P11_X", "OTHER"], 1) == ["TOKEN"]
    train = text[text.index("hpco_part_1()"):text.index("hpco_part_2()")]
    assert 'export TOKEN="${HPCO_P1_TOKEN}"' in train and "LEVEL=" not in train
    assert "--env TOKEN" in train and "--env LEVEL" not in train


def test_bind_flags_per_runtime():
    text = {runtime: render(runtime) for runtime in RUNTIMES}
    vol = f"{PATHS.job_dir}/volumes"
    assert f"--bind={vol}/creds:/secrets:ro" in text["apptainer"]
    assert f"--bind={vol}/config/settings.ini:/etc/app/settings.ini:ro" in text["singularity"]
    assert f"--bind={vol}/data/logs:/logs " in text["charliecloud"]  # ch-run -b has no read-only form
    assert f"--volume={vol}/data:/data" in text["podman"]
    assert f"--container-mounts={vol}/data:/data,{vol}/config/settings.ini:/etc/app/settings.ini:ro" \
        in text["enroot"] and "srun --overlap" in text["enroot"]
    assert "--bind" not in text["none"] and f"export {volume_env_name('data')}={vol}/data" in text["none"]


def test_a_job_dir_a_bind_flag_cannot_carry_is_refused():
    spec = JobSpec.from_dict(pod_spec("apptainer"))
    with pytest.raises(SpecError, match="':' or ','"):
        SlurmSSHBackend(Profile(backend="slurm-ssh")).render(JobRequest(spec, "/scratch/a:b/hpco-x", {}))


def test_the_body_runs_the_containers_in_kubernetes_order(tmp_path):
    """Runtime `none`, bash only: the init container ends before anything else starts, the
    sidecar runs beside the apps and stops after them, each part's exit status is its own and
    the job's is the first failing app container's; the volumes are gone at the end."""
    spec = JobSpec.from_dict({
        "container": "*", "runtime": "none", "pod": POD,
        "volumes": [{"name": "data", "kind": "emptyDir"}],
        "parts": [
            {"name": "init", "kind": "init", "command": ["sh", "-c", "sleep 0.3; date +%s%N > $HPCO_VOLUME_DATA/t"],
             "mounts": [{"volume": "data", "path": "/data"}]},
            {"name": "side", "kind": "sidecar",
             "command": ["bash", "-c", "trap 'echo stopped; exit 0' TERM; while :; do sleep 0.05; done"]},
            {"name": "ok", "command": ["sh", "-c", "cat $HPCO_VOLUME_DATA/t; date +%s%N"],
             "mounts": [{"volume": "data", "path": "/data"}]},
            {"name": "bad", "command": ["sh", "-c", "sleep 0.5; echo oops >&2; exit 3"]},
        ]})
    paths = JobPaths(str(tmp_path / "job"))
    (tmp_path / "job").mkdir()
    script = SlurmSSHBackend(Profile(backend="slurm-ssh")).render(JobRequest(spec, paths.job_dir, {}))
    done = subprocess.run(["bash", "-c", script], cwd=paths.job_dir, capture_output=True, text=True, timeout=30)
    assert done.returncode == 3, done.stderr
    job = Path(paths.job_dir)
    codes = {p: (job / f"part-{p}.exit").read_text() for p in ("init", "side", "ok", "bad")}
    assert codes == {"init": "0\n", "side": "0\n", "ok": "0\n", "bad": "3\n"}
    written, started = (int(x) for x in (job / "part-ok.out").read_text().split())
    assert started > written  # the app container started after the init container ended
    assert (job / "part-side.out").read_text() == "stopped\n"
    assert (job / "part-side.exit").stat().st_mtime >= (job / "part-bad.exit").stat().st_mtime
    assert (job / "part-bad.err").read_text() == "oops\n"
    assert (job / "exit-status").read_text() == "3\n" and not (job / "volumes").exists()
