"""The krew manifest of `kubectl hpc` (plugins/krew): its archive is reproducible and matches
the manifest's sha256, its version is the package's, and the launcher it installs runs the
plugin (and says what it needs when there is no usable Python)."""

from __future__ import annotations

import hashlib
import io
import os
import re
import runpy
import shutil
import subprocess
import tarfile
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
KREW = REPO / "plugins" / "krew"
MANIFEST = yaml.safe_load((KREW / "hpc.yaml").read_text())
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def archive() -> bytes:
    return runpy.run_path(str(KREW / "archive.py"))["archive_bytes"]()  # type: ignore[no-any-return]


def test_the_archive_is_reproducible_and_matches_the_manifest() -> None:
    data = archive()
    assert data == archive()
    platform = MANIFEST["spec"]["platforms"][0]
    assert platform["sha256"] == hashlib.sha256(data).hexdigest(), "run python plugins/krew/archive.py; update hpc.yaml"
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
        assert (tar.getmember(platform["bin"]).mode & 0o111) == 0o111
    assert [f["from"] for f in platform["files"]] == names == [platform["bin"]] == ["kubectl-hpc"]


def test_the_manifest_names_the_packages_version() -> None:
    assert MANIFEST["apiVersion"] == "krew.googlecontainertools.github.com/v1alpha2"
    assert MANIFEST["kind"] == "Plugin" and MANIFEST["metadata"]["name"] == "hpc"
    assert MANIFEST["spec"]["version"] == f"v{VERSION}"
    launcher = (KREW / "kubectl-hpc").read_text()
    assert re.search(r"^VERSION=(\S+)$", launcher, re.MULTILINE)[1] == VERSION  # type: ignore[index]
    assert f"v{VERSION}" in MANIFEST["spec"]["platforms"][0]["uri"]


def test_the_launcher_runs_the_plugin_from_its_environment(tmp_path: Path) -> None:
    # the environment the first run would make, here the test venv's own kubectl-hpc
    installed = shutil.which("kubectl-hpc")
    assert installed, "the package's console script kubectl-hpc is not on PATH"
    venv_bin = tmp_path / "kubectl-hpc" / VERSION / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "kubectl-hpc").symlink_to(installed)
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path)}
    proc = subprocess.run(["sh", str(KREW / "kubectl-hpc"), "--help"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    commands = [line.split()[0] for line in proc.stdout.split("Commands:")[1].strip().splitlines()]
    assert commands == ["jobs", "render", "shell"]


def test_the_launcher_says_what_it_needs(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path), "KUBECTL_HPC_PYTHON": str(tmp_path / "no-python")}
    proc = subprocess.run(["sh", str(KREW / "kubectl-hpc"), "jobs"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1
    assert "kubectl hpc needs Python >= 3.11 with venv" in proc.stderr and "KUBECTL_HPC_PYTHON" in proc.stderr
    assert not (tmp_path / "kubectl-hpc").exists()
