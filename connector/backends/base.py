"""The `Backend` base class (paper requirement R5): one workload manager, any transport.

A backend turns job operations (submit, status, cancel, find, logs) into the manager's
commands; file operations go through its transport. A site adds a manager by subclassing
and registering it in the entry-point group `hpc_offload.backends`.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from connector.profile import Profile
from connector.render import JobPaths
from connector.transport.base import READ_LIMIT, Transport


class JobState(enum.Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    NODE_FAIL = "NODE_FAIL"
    PREEMPTED = "PREEMPTED"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"
    UNKNOWN = "UNKNOWN"  # the manager no longer knows the job

    @property
    def ended(self) -> bool:
        return self not in (JobState.PENDING, JobState.RUNNING)


@dataclass(frozen=True)
class JobStatus:
    job_id: str
    state: JobState
    raw_state: str = ""
    reason: str = ""
    exit_code: int | None = None
    signal: int | None = None
    start_estimate: str | None = None
    queue_position: int | None = None
    node: str | None = None


class Backend(ABC):
    """A workload manager reached through a transport."""

    type_name: ClassVar[str] = ""

    def __init__(self, profile: Profile, runtime_dir: str | None = None) -> None:
        self.profile = profile
        self.runtime_dir = runtime_dir  # writable, private to this connector (sockets, key copies)
        self._transport: Transport | None = None
        self.scheduler_calls = 0  # requests that reach the workload manager's controller

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            self._transport = self.make_transport()
        return self._transport

    @abstractmethod
    def make_transport(self) -> Transport:
        """The link to the HPC side (local, SSH, …)."""

    # --- job operations ---------------------------------------------------------------------

    @abstractmethod
    def submit(self, script: str, paths: JobPaths, env_file: bytes, identity_args: list[str]) -> str:
        """Write the script and env file into the job dir and submit; returns the job id."""

    @abstractmethod
    def status(self, job_id: str) -> JobStatus: ...

    @abstractmethod
    def cancel(self, job_id: str) -> None: ...

    @abstractmethod
    def find(self, job_name: str) -> str | None:
        """The id of a job with this name (it carries the pod UID), if any is known."""

    def logs(self, paths: JobPaths, offset: int, limit: int = READ_LIMIT) -> bytes:
        """New output since offset (empty when nothing new or not yet created)."""
        return self.transport.read_from(paths.output, offset, limit) or b""

    def progress(self, paths: JobPaths, offset: int | None, marker: bool) -> tuple[bytes, int | None]:
        """What the connector reads every tick, in one round trip and with no scheduler call:
        new output from offset (None: not wanted) and, when asked, the payload's exit status
        once a rendered script wrote it (a cheap sign that the job is ending)."""
        reads = [(paths.output, offset, READ_LIMIT)] if offset is not None else []
        if marker:
            reads.append((paths.exit_status, 0, 64))
        results = self.transport.read_files(reads) if reads else []
        chunk = (results[0] or b"") if offset is not None else b""
        status = results[-1] if marker else None
        text = status.decode("ascii", "replace").strip() if status else ""
        return chunk, int(text) if text.isdigit() else None

    # --- files (staging) --------------------------------------------------------------------

    def workdir(self) -> str:
        """The absolute work directory: profile `workdir`, relative to the user's home."""
        configured = str(self.profile.setting("workdir", "hpc-offload"))
        if configured.startswith("/"):
            return configured.rstrip("/")
        return f"{self.transport.home().rstrip('/')}/{configured.strip('/')}"

    def upload(self, local_path: str, remote_path: str) -> None:
        self.transport.upload(local_path, remote_path)

    def download(self, remote_path: str, local_path: str) -> None:
        self.transport.download(remote_path, local_path)

    def remove(self, path: str) -> None:
        self.transport.remove(path)

    def listdir(self, path: str) -> list[str]:
        return self.transport.listdir(path)

    def mkdir(self, path: str) -> None:
        self.transport.mkdir(path)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
