"""An in-memory workload manager for unit tests of the life cycle: no root, no SLURM.

Tests drive each job by hand (state, output, end) while a real `Connector` follows it in a
thread; the fake counts what the contract says must stay cheap (status and cancel requests).
It is no test of a backend: the contract suite (tests/contract/) runs the real ones.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from connector.backends.base import (
    Backend,
    Capability,
    FileStore,
    JobHandle,
    JobRequest,
    JobState,
    JobStatus,
    Progress,
)
from connector.errors import BackendError, TransientError
from connector.transport.base import READ_LIMIT


@dataclass
class FakeJob:
    job_id: str
    request: JobRequest
    state: JobState = JobState.PENDING
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    exit_code: int | None = None
    signal: int | None = None
    marker: int | None = None  # the end marker a rendered script writes
    payload_ended: bool = False
    requeued: bool = False
    cancel_requested: bool = False
    reason: str = ""


class MemoryFiles:
    """A FileStore over a dict (path -> bytes), for staging through the fake."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.dirs: set[str] = set()

    def upload(self, local_path: str, remote_path: str) -> None:
        with open(local_path, "rb") as handle:
            self.data[remote_path] = handle.read()

    def download(self, remote_path: str, local_path: str) -> None:
        with open(local_path, "wb") as handle:
            handle.write(self.data[remote_path])

    def mkdir(self, path: str, mode: int = 0o700) -> None:
        self.dirs.add(path.rstrip("/"))

    def remove(self, path: str) -> None:
        self.data.pop(path, None)

    def listdir(self, path: str) -> list[str]:
        prefix = path.rstrip("/") + "/"
        return sorted({key[len(prefix):].split("/")[0] for key in self.data if key.startswith(prefix)})

    def is_dir(self, path: str) -> bool:
        prefix = path.rstrip("/") + "/"
        return path.rstrip("/") in self.dirs or any(key.startswith(prefix) for key in self.data)

    def exists(self, path: str) -> bool:
        return path in self.data or self.is_dir(path)


class FakeBackend(Backend):
    type_name = "fake"
    capabilities = Capability.STREAM_OUTPUT | Capability.FINAL_OUTPUT | Capability.FILES

    def __init__(self, caps: Capability | None = None) -> None:
        from connector.profile import Profile

        super().__init__(Profile(backend="fake", configuration={"workdir": "/hpc/work"}))
        if caps is not None:
            self.capabilities = caps  # type: ignore[misc]
        self.jobs: dict[str, FakeJob] = {}
        self.lock = threading.Lock()
        self.status_requests = 0
        self.cancel_requests = 0
        self.submits = 0
        self.faults = 0  # the next N status requests fail transiently
        self.submit_error: Exception | None = None  # raised by every submit while set
        self.cancel_takes = 1  # status requests after a cancel until the job is CANCELLED (-1: never)
        self.fs = MemoryFiles()
        self.closed = False

    # --- what tests call --------------------------------------------------------------------

    def job(self) -> FakeJob:
        """The one job of a single-job test (waits for the submission)."""
        import time

        for _ in range(500):
            with self.lock:
                if self.jobs:
                    return next(iter(self.jobs.values()))
            time.sleep(0.01)
        raise AssertionError("the connector never submitted")

    def write(self, job: FakeJob, stdout: bytes = b"", stderr: bytes = b"") -> None:
        with self.lock:
            job.stdout += stdout
            job.stderr += stderr

    def end(self, job: FakeJob, state: JobState, code: int | None = 0, signal: int | None = 0,
            marker: bool = True) -> None:
        with self.lock:
            job.state, job.exit_code, job.signal = state, code, signal
            if marker and code is not None:
                job.marker = code

    # --- the contract -----------------------------------------------------------------------

    def submit(self, request: JobRequest) -> JobHandle:
        if self.submit_error is not None:
            raise self.submit_error
        with self.lock:
            self.submits += 1
            job_id = str(100 + len(self.jobs))
            self.jobs[job_id] = FakeJob(job_id, request)
        return JobHandle.rendered(job_id, request.job_dir)

    def statuses(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        with self.lock:
            self.status_requests += 1
            if self.faults > 0:
                self.faults -= 1
                raise TransientError("fake scheduler unreachable")
            result = {}
            for job_id in job_ids:
                job = self.jobs.get(job_id)
                if job is None or job.state is JobState.UNKNOWN:
                    result[job_id] = JobStatus(job_id, JobState.UNKNOWN)
                    continue
                if job.cancel_requested and not job.state.ended and self.cancel_takes >= 0:
                    if self.cancel_takes == 0:
                        job.state, job.exit_code, job.signal = JobState.CANCELLED, 0, 15
                    else:
                        self.cancel_takes -= 1
                result[job_id] = JobStatus(
                    job_id, job.state, job.state.value, job.reason,
                    exit_code=job.exit_code if job.state.ended else None,
                    signal=job.signal if job.state.ended else None,
                    payload_ended=job.payload_ended, requeued=job.requeued,
                    queue_position=1 if job.state is JobState.PENDING else None)
            return result

    def cancel_many(self, job_ids: Sequence[str]) -> None:
        with self.lock:
            self.cancel_requests += 1
            for job_id in job_ids:
                if job_id in self.jobs:
                    self.jobs[job_id].cancel_requested = True

    def find(self, request: JobRequest) -> JobHandle | None:
        with self.lock:
            for job in self.jobs.values():
                if job.request.tag == request.tag:
                    return JobHandle.rendered(job.job_id, job.request.job_dir)
        return None

    def workdir(self) -> str:
        return "/hpc/work"

    def render(self, request: JobRequest) -> str:
        return "#!/bin/sh\n"

    def _job_of(self, handle: JobHandle) -> FakeJob:
        return self.jobs[handle.job_id]

    def progress(self, handle: JobHandle, stdout_offset: int | None, stderr_offset: int | None,
                 marker: bool) -> Progress:
        if Capability.STREAM_OUTPUT not in self.capabilities:
            raise BackendError("no streaming")
        with self.lock:
            job = self._job_of(handle)
            out = bytes(job.stdout[stdout_offset:stdout_offset + READ_LIMIT]) if stdout_offset is not None else b""
            err = bytes(job.stderr[stderr_offset:stderr_offset + READ_LIMIT]) if stderr_offset is not None else b""
            return Progress(out, err, job.marker if marker else None)

    def read_output(self, handle: JobHandle, stream: str, offset: int, limit: int = READ_LIMIT) -> bytes:
        if not self.capabilities & (Capability.STREAM_OUTPUT | Capability.FINAL_OUTPUT):
            raise BackendError("no output")
        with self.lock:
            job = self._job_of(handle)
            data = job.stdout if stream == "stdout" else job.stderr
            return bytes(data[offset:offset + limit])

    def files(self) -> FileStore:
        if Capability.FILES not in self.capabilities:
            return super().files()
        return self.fs

    def close(self) -> None:
        self.closed = True
