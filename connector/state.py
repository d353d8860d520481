"""The connector's memory across restarts: which job it submitted and how much output it
printed. Kept in the pod's emptyDir, which survives a container restart, so a restarted
connector reattaches instead of submitting twice and never prints a line twice."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class JobRecord:
    job_id: str
    job_dir: str
    backend: str
    log_offset: int = 0


class StateStore:
    def __init__(self, directory: str | Path | None) -> None:
        self.path = Path(directory) / "job.json" if directory else None

    def load(self) -> JobRecord | None:
        if self.path is None or not self.path.exists():
            return None
        try:
            data = json.loads(self.path.read_text())
            return JobRecord(**data)
        except (ValueError, TypeError):
            return None  # a torn write: fall back to finding the job by name

    def save(self, record: JobRecord) -> None:
        """Atomic replace, so a SIGKILL mid-write leaves the previous record."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(record)))
        os.replace(tmp, self.path)
