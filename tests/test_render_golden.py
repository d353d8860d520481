"""Golden batch scripts, one per runtime, as the SLURM backend renders them: what a site admin
reviews before allowing a runtime. Regenerate with UPDATE_GOLDEN=1 after an intended change
and read the diff."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from connector.backends.base import JobRequest
from connector.backends.slurm_ssh import SlurmSSHBackend
from connector.profile import Profile
from connector.render import JobPaths, env_export_file, render_env_file
from connector.spec import JobSpec

GOLDEN = Path(__file__).parent / "golden" / "scripts"
PATHS = JobPaths("/home/alice/hpc-offload/hpco-0f1e2d3c-aaaa-bbbb-cccc-000000000001")
POD = {"namespace": "research", "name": "train-x7k2p", "uid": "0f1e2d3c-aaaa-bbbb-cccc-000000000001"}

CASES = {
    "singularity": {"runtime": "singularity", "image": "python:3.11-slim",
                    "command": ["python3", "train.py"], "args": ["--epochs", "3"],
                    "working_dir": "/work"},
    "singularity-entrypoint": {"runtime": "singularity", "image": "ghcr.io/org/app:1.2",
                               "args": ["serve", "--port=8080"]},
    "apptainer": {"runtime": "apptainer", "image": "python:3.11", "hpc_image": "/shared/sif/py311.sif",
                  "command": ["python3", "-c", "print('it''s $HOME')"]},
    "charliecloud": {"runtime": "charliecloud", "image": "/shared/ch/python3",
                     "command": ["python3", "-c", "import sys; print(sys.version)"],
                     "working_dir": "/tmp"},
    "podman": {"runtime": "podman", "image": "docker.io/library/python:3.11",
               "command": ["python3", "-m", "http.server"], "args": ["8000"],
               "env_passthrough": ["TOKEN", "MODE"], "working_dir": "/srv"},
    "enroot": {"runtime": "enroot", "image": "nvcr.io/nvidia/pytorch:24.01-py3",
               "command": ["python", "train.py"], "env_passthrough": ["WANDB_KEY"],
               "resources": {"gpus": 2, "cpus_per_task": 8, "memory_mb": 32768}},
    "mpi-tasks": {"runtime": "apptainer", "image": "python:3.11", "hpc_image": "/shared/sif/mpi.sif",
                  "command": ["python3", "solve.py"], "resources": {"nodes": 2, "tasks": 4, "gpus": 1}},
    "podman-gpu": {"runtime": "podman", "image": "docker.io/library/python:3.11",
                   "command": ["python3", "train.py"], "resources": {"gpus": 2}},
    "none": {"runtime": "none", "command": ["bash", "-c", "echo $(hostname) `date`; exit 3"],
             "working_dir": "/scratch/alice"},
    # issue 12 items 14 and 16: values a tool could read as options; `$(VAR)` references
    "enroot-options": {"runtime": "enroot", "image": "nvcr.io/nvidia/pytorch:24.01-py3",
                       "command": ["--container-mounts=/:/host", "-x"], "args": ["--help"],
                       "working_dir": "-"},
    "none-options": {"runtime": "none", "command": ["-c", "id"], "working_dir": "-"},
    "podman-references": {"runtime": "podman", "image": "docker.io/library/python:3.11",
                          "command": ["$(TOOL)", "--config=$(CONF)"],
                          "args": ["$$(CONF)", "$(MISSING)", "cost: $$5 $(CONF", "it's $(CONF)"],
                          "env_passthrough": ["TOOL", "CONF"], "working_dir": "-"},
    "singularity-references": {"runtime": "singularity", "image": "python:3.11",
                               "command": ["python3", "-c", "import sys; print(sys.argv)"],
                               "args": ["$(GREETING)", "pre-$(GREETING)-post", "$$(GREETING)"],
                               "env_passthrough": ["GREETING"], "working_dir": "-"},
    "resources": {"runtime": "singularity", "image": "python:3.11",
                  "command": ["python3", "-V"],
                  "resources": {"queue": "gpu", "account": "proj-42", "qos": "normal",
                                "time_limit": 7200, "nodes": 2, "tasks": 4, "cpus_per_task": 2,
                                "memory_mb": 4096, "gpus": 1,
                                "extra_args": ["--constraint=a100", "--exclusive"]}},
}


def render_script(spec: JobSpec, paths: JobPaths, env_names=()) -> str:
    backend = SlurmSSHBackend(Profile(backend="slurm-ssh"))
    return backend.render(JobRequest(spec, paths.job_dir, dict.fromkeys(env_names, "")))


def _render(name: str) -> str:
    spec = JobSpec.from_dict({**CASES[name], "pod": POD})
    return render_script(spec, PATHS, env_names=spec.env_passthrough)


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_script(name):
    text = _render(name)
    golden = GOLDEN / f"{name}.sh"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


@pytest.mark.parametrize("name", sorted(CASES))
def test_rendered_scripts_are_valid_bash(name):
    subprocess.run(["bash", "-n"], input=_render(name), text=True, check=True)


def test_verbatim_script_is_submitted_as_written():
    script = "#!/bin/bash\n#SBATCH --time=5\nsrun hostname\n"
    spec = JobSpec.from_dict({"script": script, "pod": POD})
    assert render_script(spec, PATHS) == script


def test_env_file_keeps_every_byte(tmp_path):
    env = {"A": "it's \"quoted\" $(rm -rf /) `id`\nline2 ünï ✓", "B": "", "C": "\\n"}
    path = tmp_path / "job.env"
    path.write_bytes(render_env_file(env))
    out = subprocess.run(["bash", "-c", f". {path}; printf '%s\\0' \"$A\" \"$B\" \"$C\""],
                         capture_output=True, check=True).stdout
    assert out.split(b"\0")[:3] == [v.encode() for v in (env["A"], env["B"], env["C"])]


def test_env_values_never_reach_the_script():
    spec = JobSpec.from_dict({**CASES["podman"], "env": {"TOKEN": "hunter2"}, "pod": POD})
    assert "hunter2" not in render_script(spec, PATHS, env_names=["TOKEN"])


def test_export_file_keeps_every_byte():
    """sbatch's --export-file format: NAME=value entries, NUL-separated; no shell parses it."""
    env = {"A": "it's \"quoted\" $(rm -rf /) `id`\nline2 ünï ✓", "B": ""}
    entries = env_export_file(env).split(b"\0")
    assert entries[-1] == b""
    assert dict(e.decode().split("=", 1) for e in entries[:-1]) == env
