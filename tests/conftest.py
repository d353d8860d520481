"""Shared fixtures: the real SLURM testbed and a way to run the real connector against it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def testbed_info():
    if os.geteuid() != 0:
        pytest.skip("the SLURM testbed needs root")
    from testbed import api

    return api.ensure_up()


@pytest.fixture(scope="session")
def profiles(testbed_info, tmp_path_factory) -> dict[str, Path]:
    """Profile directories as the connector sees them in a pod, one per backend type."""
    from testbed import profile

    dirs = {}
    # slurm-ssh twice, once per SSH client: paramiko, and the system OpenSSH client (the
    # default wherever `ssh` is installed, as here and in the project's image)
    for name, kind, client in (("slurm-ssh", "slurm-ssh", "paramiko"),
                               ("slurm-ssh-openssh", "slurm-ssh", "openssh"),
                               ("slurm-local", "slurm-local", None),
                               ("sge-ssh", "sge-ssh", "paramiko"),
                               ("sge-ssh-openssh", "sge-ssh", "openssh"),
                               ("sge-local", "sge-local", None)):
        directory = tmp_path_factory.mktemp(name)
        profile.write_dir(directory, kind, "127.0.0.1")
        if client:
            conf = json.loads((directory / "configuration").read_text())
            (directory / "configuration").write_text(json.dumps({**conf, "ssh_client": client}))
        dirs[name] = directory
    return dirs


@dataclass
class ConnectorRun:
    """A real `hpc-connector run` subprocess, its stdout lines timestamped as they arrive."""

    proc: subprocess.Popen
    spec: dict
    state_dir: Path
    termination_log: Path
    lines: list[tuple[float, str]] = field(default_factory=list)
    stderr_lines: list[str] = field(default_factory=list)

    def _pump(self, stream, sink, stamped: bool) -> None:
        for raw in iter(stream.readline, b""):
            text = raw.decode("utf-8", "surrogateescape")
            sink.append((time.monotonic(), text) if stamped else text)

    def start_readers(self) -> None:
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr_lines, False),
                         daemon=True).start()

    def wait(self, timeout: float = 120) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the connector still runs after {timeout:g} s; its log:\n{self.log}"
                                 ) from None
        time.sleep(0.1)  # let the readers drain
        return code

    def stop(self) -> None:
        """End a connector a test left running as the kubelet would (SIGTERM: it cancels its
        job and waits for the manager), so no job of a failed test holds the node's CPUs for
        the tests after it; SIGKILL only if that hangs."""
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def wait_for_stderr(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.stderr_lines):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"connector never logged {text!r}; stderr:\n{self.log}")

    @property
    def stdout(self) -> str:
        return "".join(text for _, text in self.lines)

    @property
    def log(self) -> str:
        return "".join(self.stderr_lines)

    @property
    def termination(self) -> dict:
        return json.loads(self.termination_log.read_text())

    @property
    def job_id(self) -> str:
        return json.loads((self.state_dir / "job.json").read_text())["job_id"]


@pytest.fixture
def run_connector(tmp_path):
    started: list[ConnectorRun] = []

    def launch(spec: dict, profile_dir: Path, state_dir: Path | None = None, env: dict | None = None,
               uid: str | None = None) -> ConnectorRun:
        spec = dict(spec)
        spec.setdefault("pod", {"namespace": "tests", "name": "t", "uid": uid or str(uuid.uuid4())})
        work = Path(tempfile_dir(tmp_path))
        spec_file = work / "job-spec.json"
        spec_file.write_text(json.dumps(spec))
        state_dir = state_dir or (work / "state")
        termination = work / "termination-log"
        environment = {**os.environ, "USER": os.environ.get("USER", "root"), **(env or {})}
        proc = subprocess.Popen(
            [sys.executable, "-m", "connector.cli", "run", "--spec", str(spec_file),
             "--profile", str(profile_dir), "--state-dir", str(state_dir),
             "--termination-log", str(termination)],
            cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        run = ConnectorRun(proc, spec, state_dir, termination)
        run.start_readers()
        started.append(run)
        return run

    yield launch
    for run in started:
        run.stop()


def tempfile_dir(base: Path) -> str:
    path = base / uuid.uuid4().hex[:8]
    path.mkdir()
    return str(path)
