"""The backend contract (paper requirement R5): one workload manager, in its own words.

The life cycle hands a backend a `JobRequest` (the job spec, the job directory, the variables
to forward) and gets a `JobHandle` back; the backend renders its own script and directives.
`status` and `cancel` take many jobs and cost one scheduler request for all of them, so one
session can follow thousands of jobs (the relay). What a backend can read back is declared in
`capabilities`: incremental output and the end marker (`STREAM_OUTPUT`), output only once the
job ended (`FINAL_OUTPUT`), files for staging (`FILES`). The life cycle adapts to what is
missing and never sees a transport.

A site adds a manager by subclassing `Backend` and registering it in the entry-point group
`hpc_offload.backends` (docs/backends.md); `tests/contract/` is the suite it must pass.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar, Protocol

from connector.errors import BackendError
from connector.profile import Profile
from connector.render import JobPaths
from connector.spec import JobSpec
from connector.transport.base import READ_LIMIT


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
    """What the life cycle needs to know, in no manager's words (`raw_state` is for messages)."""

    job_id: str
    state: JobState
    raw_state: str = ""
    reason: str = ""
    exit_code: int | None = None
    signal: int | None = None
    start_estimate: str | None = None
    queue_position: int | None = None
    node: str | None = None
    payload_ended: bool = False  # the payload exited; the manager is only cleaning up
    requeued: bool = False  # back in the queue after a node failure, preemption or requeue
    stderr_tail: str = ""  # the last lines of the job's stderr, where the backend can read it

    def with_(self, **changes: object) -> JobStatus:
        return replace(self, **changes)  # type: ignore[arg-type]


class Capability(enum.Flag):
    NONE = 0
    STREAM_OUTPUT = enum.auto()  # output and the end marker can be read while the job runs
    FINAL_OUTPUT = enum.auto()  # the whole output can be read once the job ended
    FILES = enum.auto()  # files can be copied both ways (stage-in / stage-out)
    SHELL = enum.auto()  # a command can run inside a running job's allocation
    PARTS = enum.auto()  # whole pods: renders the whole-pod script; a handle can follow one part


@dataclass(frozen=True)
class JobRequest:
    """One job to submit: the spec (profile defaults merged), where its files go, and the
    variables it gets (values may be secrets: never on a command line, in a script or a log)."""

    spec: JobSpec
    job_dir: str
    env: Mapping[str, str] = field(default_factory=dict)
    run: int = 0  # >0: the container restarted after its job ended; this is a new job
    part: str = ""  # a whole pod: the container whose part this connector follows ("": the job)

    @property
    def paths(self) -> JobPaths:
        return JobPaths(self.job_dir)

    @property
    def tag(self) -> str:
        """Names the job on the manager's side; carries the pod UID, so a restarted connector
        finds its job (`Backend.find`) instead of submitting twice."""
        return f"{self.spec.job_name}-r{self.run}" if self.run else self.spec.job_name


@dataclass(frozen=True)
class JobHandle:
    """A submitted job as the life cycle keeps it (in its state file): the id, the job
    directory, and where the job's stdout and stderr go on the HPC side (a verbatim script
    may send them anywhere; a REST service may name them)."""

    job_id: str
    job_dir: str
    stdout: str
    stderr: str | None = None  # None: stderr goes to stdout's file
    part: str = ""  # a whole pod's container: its own output files and exit marker

    @classmethod
    def rendered(cls, job_id: str, job_dir: str, part: str = "") -> JobHandle:
        paths = JobPaths(job_dir)
        if part:
            return cls(job_id, job_dir, paths.part_output(part), paths.part_error(part), part)
        return cls(job_id, job_dir, paths.output, paths.error)

    def for_part(self, part: str) -> JobHandle:
        """The same job, followed through one part's output and exit marker (a rendered
        whole-pod script writes them; `part` "" is the job itself)."""
        return JobHandle.rendered(self.job_id, self.job_dir, part) if part else self

    @property
    def exit_status(self) -> str:
        paths = JobPaths(self.job_dir)
        return paths.part_exit(self.part) if self.part else paths.exit_status

    @property
    def key(self) -> str:
        """What a session keys a followed handle by: the job, or one part of it."""
        return f"{self.job_id}~{self.part}" if self.part else self.job_id


@dataclass(frozen=True)
class Progress:
    """One tick's read: new stdout and stderr bytes from the given offsets, and the payload's
    exit status once a rendered script has written it (the cheap sign that the job ends)."""

    stdout: bytes = b""
    stderr: bytes = b""
    exit_status: int | None = None


class FileStore(Protocol):
    """File access on the HPC side, for staging (capability `FILES`)."""

    def upload(self, local_path: str, remote_path: str) -> None: ...
    def write_file(self, path: str, data: bytes, mode: int = 0o600) -> None: ...
    def download(self, remote_path: str, local_path: str) -> None: ...
    def mkdir(self, path: str, mode: int = 0o700) -> None: ...
    def remove(self, path: str) -> None: ...
    def listdir(self, path: str) -> list[str]: ...
    def is_dir(self, path: str) -> bool: ...
    def exists(self, path: str) -> bool: ...


class Backend(ABC):
    """A workload manager. Subclasses implement the five job operations; the output and file
    operations come with the capabilities they declare."""

    type_name: ClassVar[str] = ""
    capabilities: ClassVar[Capability] = Capability.NONE

    def __init__(self, profile: Profile, runtime_dir: str | None = None) -> None:
        self.profile = profile
        self.runtime_dir = runtime_dir  # writable, private to this connector (sockets, key copies)
        self.scheduler_calls = 0  # requests that reach the workload manager's controller

    # --- job operations ---------------------------------------------------------------------

    @abstractmethod
    def submit(self, request: JobRequest) -> JobHandle:
        """Render the script (a verbatim `spec.script` is submitted as written), submit it,
        and return the handle. Raises BackendError when the manager refuses the job."""

    @abstractmethod
    def statuses(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        """The status of each job, in one scheduler request; a job the manager no longer
        knows is `UNKNOWN`."""

    @abstractmethod
    def cancel_many(self, job_ids: Sequence[str]) -> None:
        """Ask the manager to cancel these jobs, in one request (no error for ended jobs)."""

    @abstractmethod
    def find(self, request: JobRequest) -> JobHandle | None:
        """The job submitted earlier for this request (by its tag), if the manager knows it."""

    @classmethod
    def capabilities_for(cls, profile: Profile) -> Capability:
        """What an instance for this profile can do, known without making one (the relay's
        connector side asks). Fixed for most backends; slurm-rest's depend on SSH access."""
        return cls.capabilities

    def render(self, request: JobRequest) -> str:
        """The script this backend would submit for the request (`hpc-offload render
        --scripts` shows it; rendering needs no connection)."""
        raise BackendError(f"backend {self.type_name} does not render scripts")

    def status(self, job_id: str) -> JobStatus:
        return self.statuses([job_id])[job_id]

    def cancel(self, job_id: str) -> None:
        self.cancel_many([job_id])

    def workdir(self) -> str:
        """The absolute directory job directories are made in (profile `workdir`)."""
        configured = str(self.profile.setting("workdir", "hpc-offload"))
        if not configured.startswith("/"):
            raise BackendError(f"profile {self.profile.name!r}: workdir {configured!r} must be "
                               "an absolute path for this backend")
        return configured.rstrip("/")

    def where(self, handle: JobHandle) -> str:
        """Where a person finds the job's output on the HPC side (said in the pod log when
        the output cannot be read from here)."""
        return handle.stdout

    # --- output (STREAM_OUTPUT / FINAL_OUTPUT) ----------------------------------------------

    def progress(self, handle: JobHandle, stdout_offset: int | None, stderr_offset: int | None,
                 marker: bool) -> Progress:
        """What the life cycle reads every tick, in one round trip and with no scheduler call:
        new output from the offsets (None: not wanted) and, when asked, the end marker."""
        raise BackendError(f"backend {self.type_name} cannot read output while a job runs")

    def read_output(self, handle: JobHandle, stream: str, offset: int, limit: int = READ_LIMIT) -> bytes:
        """Bytes of the job's `stdout` or `stderr` from offset (empty when nothing new)."""
        raise BackendError(f"backend {self.type_name} cannot read a job's output")

    # --- a shell in the allocation (SHELL) ---------------------------------------------------

    def shell_argv(self, handle: JobHandle, command: Sequence[str], tty: bool) -> list[str]:
        """A local command that runs `command` inside the running job's allocation, with the
        caller's terminal (`kubectl hpc shell`)."""
        raise BackendError(f"backend {self.type_name} cannot open a shell in a job's allocation")

    # --- files (FILES) ----------------------------------------------------------------------

    def files(self) -> FileStore:
        """The HPC side's files, for staging."""
        raise BackendError(f"backend {self.type_name} cannot copy files (staging needs a backend "
                           "with file access, e.g. one reached over SSH)")

    def cleanup(self, handle: JobHandle) -> None:  # noqa: B027 - optional: nothing to remove
        """Remove what must not outlive the job (an env file left by a failed submission)."""

    def stats(self) -> dict[str, int]:
        """Counters for the debug line at the end of a run (and the benchmarks)."""
        return {"scheduler_calls": self.scheduler_calls}

    def close(self) -> None:  # noqa: B027 - optional for backends holding nothing
        """Release connections."""
