"""The connector's memory across restarts: which job it submitted and how much of its output
it printed. Kept in the pod's emptyDir, which survives a container restart, so a restarted
connector reattaches instead of submitting twice and never prints a line twice."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from connector.backends.base import JobHandle


@dataclass
class JobRecord:
    job_id: str
    job_dir: str
    backend: str
    log_offset: int = 0  # bytes of the job's stdout printed
    err_offset: int = 0  # bytes of the job's stderr printed
    stdout: str = ""  # where the job's stdout goes on the HPC side ("" : the rendered default)
    stderr: str | None = ""  # where its stderr goes; None: into stdout's file
    run: int = 0  # 0 first; one more for each restart of the container after an end
    ended: bool = False  # the job ended and its end was reported
    part: str = ""  # a whole pod: the container whose part of the job this connector follows

    @classmethod
    def of(cls, handle: JobHandle, backend: str, run: int = 0) -> JobRecord:
        return cls(handle.job_id, handle.job_dir, backend, stdout=handle.stdout, stderr=handle.stderr,
                   run=run, part=handle.part)

    @property
    def handle(self) -> JobHandle:
        rendered = JobHandle.rendered(self.job_id, self.job_dir, self.part)
        return JobHandle(self.job_id, self.job_dir, self.stdout or rendered.stdout,
                         rendered.stderr if self.stderr == "" else self.stderr, self.part)


class StateStore:
    def __init__(self, directory: str | Path | None) -> None:
        self.path = Path(directory) / "job.json" if directory else None

    def load(self) -> JobRecord | None:
        if self.path is None or not self.path.exists():
            return None
        try:
            data = json.loads(self.path.read_text())
            known = {f.name for f in fields(JobRecord)}
            return JobRecord(**{k: v for k, v in data.items() if k in known})
        except (ValueError, TypeError):
            return None  # a torn write: fall back to finding the job by its tag

    def save(self, record: JobRecord) -> None:
        """Atomic replace, so a SIGKILL mid-write leaves the previous record."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(record)))
        os.replace(tmp, self.path)
