"""examples/: every file passes `hpc-offload render`, workloads are offloaded, profiles are
well-formed and their Secrets hold placeholders only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from connector.profile import SECRET_KEYS, profile_from_values

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FILES = sorted(EXAMPLES.glob("*.yaml"))
WORKLOADS = {"Pod": (), "Job": ("spec", "template")}


def _render(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hpc_cli.main", "render", "-f", str(path),
                           *extra], capture_output=True, text=True, timeout=60,
                          cwd=EXAMPLES.parent)


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_examples_exist() -> None:
    names = {p.name for p in FILES}
    assert {"neuroblastoma-job.yaml", "profile-rimrock.yaml", "profile-slurm-ssh.yaml",
            "pod.yaml", "gpu-job.yaml", "staging-job.yaml"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_render_accepts(path: Path) -> None:
    out = _render(path)
    assert out.returncode == 0, out.stderr
    assert "warning" not in out.stderr
    before, after = _docs(path), [d for d in yaml.safe_load_all(out.stdout) if d]
    assert len(before) == len(after)
    for original, rendered in zip(before, after, strict=True):
        if original["kind"] not in WORKLOADS:
            assert rendered == original
            continue
        pod = rendered
        for key in WORKLOADS[original["kind"]]:
            pod = pod[key]
        assert pod["metadata"]["annotations"]["hpc.offload/status"] == "injected"


@pytest.mark.parametrize("path", [p for p in FILES
                                  if any(d["kind"] in WORKLOADS for d in _docs(p))],
                         ids=lambda p: p.name)
def test_render_script(path: Path) -> None:
    out = _render(path, "--script")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("#!/bin/bash\n")


def test_script_details() -> None:
    gpu = _render(EXAMPLES / "gpu-job.yaml", "--script").stdout
    assert "#SBATCH --gres=gpu:2" in gpu and "#SBATCH --time=02:00:00" in gpu
    nb = _render(EXAMPLES / "neuroblastoma-job.yaml", "--script").stdout
    assert "#SBATCH --partition=plgrid" in nb and "#SBATCH --cpus-per-task=8" in nb
    rendered = yaml.safe_load_all(_render(EXAMPLES / "staging-job.yaml").stdout)
    job = [d for d in rendered if d["kind"] == "Job"][0]
    spec = job["spec"]["template"]["metadata"]["annotations"]["hpc.offload/job-spec"]
    assert "/in/text.txt" in spec and "/out/counts.txt" in spec


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("profile-*.yaml")), ids=lambda p: p.name)
def test_profiles(path: Path) -> None:
    docs = _docs(path)
    cm = [d for d in docs if d["kind"] == "ConfigMap"][0]
    secret = [d for d in docs if d["kind"] == "Secret"][0]
    assert cm["metadata"]["name"] == secret["metadata"]["name"]
    data = cm["data"]
    profile = profile_from_values(data["name"], data["configuration"],
                                  data.get("monitoring_period"))
    assert profile.backend in ("rimrock", "slurm-ssh", "sge-ssh", "slurm-rest")
    if profile.backend == "rimrock":
        assert profile.setting("endpoint") and set(secret["stringData"]) == {"proxy"}
    elif profile.backend == "slurm-rest":
        for key in ("endpoint", "user", "host", "partition", "workdir", "runtime"):
            assert profile.setting(key), key
        assert set(secret["stringData"]) == {"token", "ssh-privatekey", "known_hosts"}
    else:
        queue = "queue" if profile.backend == "sge-ssh" else "partition"
        for key in ("host", "user", queue, "workdir", "runtime"):
            assert profile.setting(key), key
        assert set(secret["stringData"]) == {"ssh-privatekey", "known_hosts"}
    for key, value in secret["stringData"].items():
        assert key in SECRET_KEYS
        assert value.startswith("REPLACE-ME"), f"{key}: placeholders only, never a credential"
        assert "PRIVATE KEY-----" not in value
